//! Request bodies: deterministic embeddings and `add` bodies with fresh ids.

use bytes::Bytes;
use serde_json::{json, Value};

/// Dimensions of every embedding the benches send.
pub const DIM: usize = 384;
/// Records in one `add` request.
pub const ADD_BATCH: usize = 10;
/// Results of one query.
pub const N_RESULTS: usize = 10;

/// A deterministic generator of embeddings (splitmix64), so every run sends the same vectors.
pub struct Vectors(pub u64);

impl Vectors {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A unit vector with components uniform before normalisation.
    pub fn embedding(&mut self) -> Vec<f32> {
        let mut v: Vec<f32> = (0..DIM)
            .map(|_| (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect();
        let norm = v
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(f32::EPSILON);
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

/// The body of an add of `ids`.
pub fn add_body(vectors: &mut Vectors, ids: &[String]) -> Value {
    let embeddings: Vec<Vec<f32>> = ids.iter().map(|_| vectors.embedding()).collect();
    let documents: Vec<String> = ids.iter().map(|id| format!("document {id}")).collect();
    let metadatas: Vec<Value> = (0..ids.len())
        .map(|i| json!({"group": i % 10, "source": "bench"}))
        .collect();
    json!({
        "ids": ids,
        "embeddings": embeddings,
        "documents": documents,
        "metadatas": metadatas,
    })
}

/// A query of one embedding for [`N_RESULTS`] results with documents, metadatas, distances.
pub fn query_body(vectors: &mut Vectors) -> Value {
    json!({
        "query_embeddings": [vectors.embedding()],
        "n_results": N_RESULTS,
        "include": ["documents", "metadatas", "distances"],
    })
}

/// New add bodies of [`ADD_BATCH`] records with ids never used before (`{prefix}-N`).
pub struct AddBodies {
    pub vectors: Vectors,
    pub next_id: u64,
    pub prefix: String,
}

impl AddBodies {
    pub fn new(seed: u64, prefix: &str) -> AddBodies {
        AddBodies {
            vectors: Vectors(seed),
            next_id: 0,
            prefix: prefix.to_owned(),
        }
    }

    /// The next `count` bodies as JSON values.
    pub fn take_values(&mut self, count: usize) -> Vec<Value> {
        (0..count)
            .map(|_| {
                let ids: Vec<String> = (0..ADD_BATCH)
                    .map(|_| {
                        self.next_id += 1;
                        format!("{}-{}", self.prefix, self.next_id)
                    })
                    .collect();
                add_body(&mut self.vectors, &ids)
            })
            .collect()
    }

    /// The next `count` bodies, serialized.
    pub fn take(&mut self, count: usize) -> anyhow::Result<Vec<Bytes>> {
        self.take_values(count)
            .iter()
            .map(|body| Ok(Bytes::from(serde_json::to_vec(body)?)))
            .collect()
    }
}
