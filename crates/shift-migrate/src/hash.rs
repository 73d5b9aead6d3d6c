//! Content hashes of records, for comparing two stores without holding both copies.
//!
//! Each field gets its own SHA-256 so a difference can be named (embedding, metadata,
//! document, uri); the record's hash is the hash of the four. Every field is framed as a
//! presence byte and a length prefix, so "absent", "empty" and a value that merely shares a
//! prefix with its neighbour's never hash alike.

use ring::digest::{Context, SHA256};
use serde_json::Value;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// The per-field hashes of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordDigest {
    /// The embedding's f32 values as little-endian bytes: Chroma stores f32, so two stores
    /// given the same values hold the same bits.
    pub embedding: Digest,
    /// The metadata as canonical JSON ([`canonical_json`]); no metadata and `{}` hash alike.
    pub metadata: Digest,
    pub document: Digest,
    pub uri: Digest,
}

/// Which field of a record differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Embedding,
    Metadata,
    Document,
    Uri,
}

impl RecordDigest {
    /// Hashes one record's fields; `None` for a field the store did not return.
    pub fn of(
        embedding: Option<&[f32]>,
        metadata: Option<&Value>,
        document: Option<&str>,
        uri: Option<&str>,
    ) -> RecordDigest {
        let embedding_bytes = embedding.map(|values| {
            values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
        });
        let metadata_text = metadata
            .filter(|m| !is_empty_metadata(m))
            .map(canonical_json);
        RecordDigest {
            embedding: field_digest(embedding_bytes.as_deref()),
            metadata: field_digest(metadata_text.as_deref().map(str::as_bytes)),
            document: field_digest(document.map(str::as_bytes)),
            uri: field_digest(uri.map(str::as_bytes)),
        }
    }

    /// The record's content hash: the four field hashes, in order, hashed again.
    pub fn record(&self) -> Digest {
        let mut context = Context::new(&SHA256);
        for digest in [&self.embedding, &self.metadata, &self.document, &self.uri] {
            context.update(digest);
        }
        to_array(context.finish())
    }

    /// The fields that differ from `other`, in field order.
    pub fn differences(&self, other: &RecordDigest) -> Vec<Field> {
        let mut fields = Vec::new();
        if self.embedding != other.embedding {
            fields.push(Field::Embedding);
        }
        if self.metadata != other.metadata {
            fields.push(Field::Metadata);
        }
        if self.document != other.document {
            fields.push(Field::Document);
        }
        if self.uri != other.uri {
            fields.push(Field::Uri);
        }
        fields
    }
}

/// `None` and `{}` both mean "no metadata"; stores differ in which they answer.
fn is_empty_metadata(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

/// SHA-256 of a framed field: a presence byte, then the length (u64, little endian) and the
/// bytes.
fn field_digest(bytes: Option<&[u8]>) -> Digest {
    let mut context = Context::new(&SHA256);
    match bytes {
        None => context.update(&[0]),
        Some(bytes) => {
            context.update(&[1]);
            context.update(&(bytes.len() as u64).to_le_bytes());
            context.update(bytes);
        }
    }
    to_array(context.finish())
}

/// SHA-256 of arbitrary bytes (the query sample picks ids by it).
pub fn sha256(bytes: &[u8]) -> Digest {
    to_array(ring::digest::digest(&SHA256, bytes))
}

fn to_array(digest: ring::digest::Digest) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// JSON with object keys sorted at every level and no whitespace, so equal values always
/// give equal text. Numbers print as serde_json prints them (shortest round-trip form), so
/// `0.1` and `0.10000000000000001` agree, while an integer and a float stay distinct, as they
/// are to Chroma's filters.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Hex of a digest, for reports.
pub fn hex(digest: &Digest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, {"q": 2, "p": 1}], "x": null}}"#)
                .unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a": {"x": null, "y": [1, {"p": 1, "q": 2}]}, "b": 1}"#)
                .unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":null,"y":[1,{"p":1,"q":2}]},"b":1}"#
        );
    }

    #[test]
    fn canonical_json_compares_numbers_as_values() {
        let a: Value = serde_json::from_str(r#"{"f": 0.1, "e": 1e2}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"f": 0.10000000000000001, "e": 100.0}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        // An integer and a float are different metadata to Chroma.
        assert_ne!(
            canonical_json(&json!({"n": 1})),
            canonical_json(&json!({"n": 1.0}))
        );
        // Escapes are canonical too.
        assert_eq!(canonical_json(&json!({"k\"": "a\nb"})), r#"{"k\"":"a\nb"}"#);
    }

    #[test]
    fn each_field_is_hashed_on_its_own() {
        let meta = json!({"topic": "a", "n": 1});
        let base = RecordDigest::of(Some(&[0.1, 0.2]), Some(&meta), Some("doc"), None);
        let same = RecordDigest::of(
            Some(&[0.1, 0.2]),
            Some(&json!({"n": 1, "topic": "a"})),
            Some("doc"),
            None,
        );
        assert_eq!(base, same);
        assert_eq!(base.record(), same.record());

        let embedding = RecordDigest::of(Some(&[0.1, 0.25]), Some(&meta), Some("doc"), None);
        assert_eq!(base.differences(&embedding), vec![Field::Embedding]);
        let metadata = RecordDigest::of(
            Some(&[0.1, 0.2]),
            Some(&json!({"topic": "b", "n": 1})),
            Some("doc"),
            None,
        );
        assert_eq!(base.differences(&metadata), vec![Field::Metadata]);
        let document = RecordDigest::of(Some(&[0.1, 0.2]), Some(&meta), Some("doc2"), None);
        assert_eq!(base.differences(&document), vec![Field::Document]);
        let uri = RecordDigest::of(Some(&[0.1, 0.2]), Some(&meta), Some("doc"), Some("s3://x"));
        assert_eq!(base.differences(&uri), vec![Field::Uri]);
        assert_ne!(base.record(), uri.record());
    }

    #[test]
    fn absent_empty_and_shifted_values_hash_apart() {
        let none = RecordDigest::of(None, None, None, None);
        let empty = RecordDigest::of(Some(&[]), None, Some(""), Some(""));
        assert_eq!(
            none.differences(&empty),
            vec![Field::Embedding, Field::Document, Field::Uri]
        );
        // No metadata and an empty map are the same thing.
        assert_eq!(
            RecordDigest::of(None, Some(&json!({})), None, None),
            RecordDigest::of(None, Some(&Value::Null), None, None)
        );
        assert_eq!(none, RecordDigest::of(None, Some(&json!({})), None, None));
        // Moving a character from the document to the uri changes both field hashes.
        let a = RecordDigest::of(None, None, Some("ab"), Some("c"));
        let b = RecordDigest::of(None, None, Some("a"), Some("bc"));
        assert_ne!(a.record(), b.record());
    }

    #[test]
    fn embeddings_hash_their_f32_bits() {
        // The same f64 text rounds to the same f32 on both sides; a one-ulp change shows.
        let x: f32 = "0.30000001".parse().unwrap();
        let y = f32::from_bits(x.to_bits() + 1);
        let a = RecordDigest::of(Some(&[x]), None, None, None);
        let b = RecordDigest::of(Some(&[0.3_f64 as f32]), None, None, None);
        let c = RecordDigest::of(Some(&[y]), None, None, None);
        assert_eq!(a, b);
        assert_eq!(a.differences(&c), vec![Field::Embedding]);
        assert_eq!(hex(&sha256(b"")).len(), 64);
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
