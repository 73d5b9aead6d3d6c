//! Small helpers for tests that talk to Chroma servers (and the proxy) over plain HTTP.

use serde_json::{json, Value};

use crate::{http_json, Chroma};

/// The default tenant's default database, as a path prefix.
pub const DEFAULT_DB: &str = "/api/v2/tenants/default_tenant/databases/default_database";

/// Two fresh Chroma servers, started at the same time: the old and the new store.
pub async fn two_stores() -> anyhow::Result<(Chroma, Chroma)> {
    let (old, new) = tokio::join!(Chroma::spawn(), Chroma::spawn());
    Ok((old?, new?))
}

/// Two fresh stores and the proxy in front of them, with `toml` appended to its config (whole
/// sections such as `[mirror]`; empty for the defaults).
pub async fn two_stores_and_proxy(toml: &str) -> anyhow::Result<(Chroma, Chroma, crate::Proxy)> {
    let (old, new) = two_stores().await?;
    let proxy = crate::Proxy::in_front_of(&old, &new)
        .toml(toml)
        .spawn()
        .await?;
    Ok((old, new, proxy))
}

/// POSTs JSON and fails unless the answer is a success; the answer's JSON.
pub async fn post_json(url: String, body: Value) -> anyhow::Result<Value> {
    let (status, answer) = http_json("POST", &url, Some(body)).await?;
    anyhow::ensure!(status.is_success(), "{url} answered {status}: {answer}");
    Ok(answer)
}

/// GETs JSON and fails unless the answer is a success; the answer's JSON.
pub async fn get_json(url: &str) -> anyhow::Result<Value> {
    let (status, answer) = http_json("GET", url, None).await?;
    anyhow::ensure!(status.is_success(), "{url} answered {status}: {answer}");
    Ok(answer)
}

/// The strings of a JSON array (none when it is not one).
pub fn strings(array: &Value) -> Vec<String> {
    array
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The string `field` of each object of a JSON array, in order (objects without it skipped).
pub fn field_of_each<'a>(array: &'a Value, field: &str) -> Vec<&'a str> {
    array
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item[field].as_str())
        .collect()
}

/// The sorted ids of a collection (by id), read directly from a store's database.
pub async fn record_ids(
    url: &str,
    db_path: &str,
    collection_id: &str,
) -> anyhow::Result<Vec<String>> {
    let got = post_json(
        format!("{url}{db_path}/collections/{collection_id}/get"),
        json!({"include": []}),
    )
    .await?;
    let mut ids = strings(&got["ids"]);
    ids.sort();
    Ok(ids)
}

/// The sorted ids of the collection `name` in the default database of a store.
pub async fn ids_by_name(url: &str, name: &str) -> anyhow::Result<Vec<String>> {
    let (_, collection) = http_json(
        "GET",
        &format!("{url}{DEFAULT_DB}/collections/{name}"),
        None,
    )
    .await?;
    let id = collection["id"].as_str().unwrap_or_default().to_owned();
    record_ids(url, DEFAULT_DB, &id).await
}

// ---------------------------------------------------------------------------------------------
// Whole-record comparison of two stores.
//
// Every collection of the compared databases is read directly from each store: its name,
// metadata, configuration and dimension, and every record's id, embedding, metadata, document
// and uri. Embeddings are equal only when every component has the same f32 bits (as Chroma's
// JSON gives them, parsed into f32): no tolerance, so a wrong or stale embedding is a
// difference. Metadata, documents and uris are compared as JSON values.

/// Records read and compared per request.
const PAGE: usize = 500;
/// Mismatches shown in a failure message.
const SHOWN: usize = 12;

/// One record as a store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The embedding's f32 components (compared by bits).
    pub embedding: Option<Vec<f32>>,
    pub metadata: Value,
    pub document: Value,
    pub uri: Value,
}

impl Record {
    /// Equal field by field, embeddings by f32 bits; the first differing field's name.
    pub fn differs_from(&self, other: &Record) -> Option<&'static str> {
        let bits = |e: &Option<Vec<f32>>| {
            e.as_ref()
                .map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>())
        };
        if bits(&self.embedding) != bits(&other.embedding) {
            Some("embedding")
        } else if self.metadata != other.metadata {
            Some("metadata")
        } else if self.document != other.document {
            Some("document")
        } else if self.uri != other.uri {
            Some("uri")
        } else {
            None
        }
    }

    fn show(&self) -> String {
        format!(
            "embedding {} metadata {} document {} uri {}",
            show_embedding(&self.embedding),
            self.metadata,
            self.document,
            self.uri
        )
    }
}

fn show_embedding(embedding: &Option<Vec<f32>>) -> String {
    match embedding {
        None => "none".to_owned(),
        Some(v) if v.len() <= 8 => format!("{v:?}"),
        Some(v) => format!("{:?}.. ({} dims)", &v[..8], v.len()),
    }
}

/// A collection's description (without its records).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionInfo {
    pub name: String,
    /// The store's own id (differs between stores; not compared).
    pub id: String,
    pub metadata: Value,
    pub configuration: Value,
    pub dimension: Value,
}

/// A whole collection: its description and every record by id.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionDump {
    pub info: CollectionInfo,
    pub records: std::collections::BTreeMap<String, Record>,
}

/// Every collection of one database, by name.
pub type DatabaseDump = std::collections::BTreeMap<String, CollectionDump>;

/// `/api/v2/tenants/T/databases/D`.
pub fn db_path(tenant: &str, database: &str) -> String {
    format!("/api/v2/tenants/{tenant}/databases/{database}")
}

/// The collections of a database, by name (up to 10,000).
pub async fn list_collections(
    url: &str,
    db_path: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, CollectionInfo>> {
    let list = get_json(&format!("{url}{db_path}/collections?limit=10000")).await?;
    let mut out = std::collections::BTreeMap::new();
    for c in list.as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or_default().to_owned();
        out.insert(
            name.clone(),
            CollectionInfo {
                name,
                id: c["id"].as_str().unwrap_or_default().to_owned(),
                metadata: c["metadata"].clone(),
                configuration: c["configuration_json"].clone(),
                dimension: c["dimension"].clone(),
            },
        );
    }
    Ok(out)
}

/// Every id of a collection, sorted, read in pages.
pub async fn all_ids(url: &str, db_path: &str, collection_id: &str) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    loop {
        let got = post_json(
            format!("{url}{db_path}/collections/{collection_id}/get"),
            json!({"include": [], "limit": 10_000, "offset": ids.len()}),
        )
        .await?;
        let page = strings(&got["ids"]);
        let done = page.len() < 10_000;
        ids.extend(page);
        if done {
            break;
        }
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// The full records of `ids` (those the store holds).
pub async fn records_by_id(
    url: &str,
    db_path: &str,
    collection_id: &str,
    ids: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, Record>> {
    let mut out = std::collections::BTreeMap::new();
    for chunk in ids.chunks(PAGE) {
        let got = post_json(
            format!("{url}{db_path}/collections/{collection_id}/get"),
            json!({"ids": chunk, "include": ["embeddings", "metadatas", "documents", "uris"]}),
        )
        .await?;
        let at = |field: &str, i: usize| got[field].get(i).cloned().unwrap_or(Value::Null);
        for (i, id) in got["ids"].as_array().into_iter().flatten().enumerate() {
            let embedding = got["embeddings"].get(i).and_then(Value::as_array).map(|v| {
                v.iter()
                    .map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32))
                    .collect()
            });
            out.insert(
                id.as_str().unwrap_or_default().to_owned(),
                Record {
                    embedding,
                    metadata: at("metadatas", i),
                    document: at("documents", i),
                    uri: at("uris", i),
                },
            );
        }
    }
    Ok(out)
}

/// Every collection of a database with every record (for small stores: it is all in memory).
pub async fn dump_database(url: &str, db_path: &str) -> anyhow::Result<DatabaseDump> {
    let mut out = DatabaseDump::new();
    for (name, info) in list_collections(url, db_path).await? {
        let ids = all_ids(url, db_path, &info.id).await?;
        let records = records_by_id(url, db_path, &info.id, &ids).await?;
        out.insert(name, CollectionDump { info, records });
    }
    Ok(out)
}

/// What a comparison covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compared {
    pub collections: usize,
    pub records: usize,
    /// Records per collection name (on the first store).
    pub per_collection: std::collections::BTreeMap<String, usize>,
}

/// Compares databases of two stores record by record: each `(a_db, b_db)` pair of database
/// paths (the same path on both stores, or a renamed namespace). Fails with a readable diff of
/// the first mismatches: collections only on one side, collection metadata, configuration or
/// dimension, ids only on one side, and records whose fields differ (embeddings by exact f32
/// bits). Reads in pages, so large collections fit.
pub async fn compare_stores(
    a_url: &str,
    b_url: &str,
    dbs: &[(&str, &str)],
) -> anyhow::Result<Compared> {
    compare_stores_skipping(a_url, b_url, dbs, &[]).await
}

/// [`compare_stores`], leaving out the collections named in `skip` (a test that made them
/// differ on purpose).
pub async fn compare_stores_skipping(
    a_url: &str,
    b_url: &str,
    dbs: &[(&str, &str)],
    skip: &[&str],
) -> anyhow::Result<Compared> {
    let mut compared = Compared::default();
    let mut problems: Vec<String> = Vec::new();
    let mut total_problems = 0usize;
    let mut note = |problems: &mut Vec<String>, text: String| {
        total_problems += 1;
        if problems.len() < SHOWN {
            problems.push(text);
        }
    };
    for (a_db, b_db) in dbs {
        let (mut a_list, mut b_list) = (
            list_collections(a_url, a_db).await?,
            list_collections(b_url, b_db).await?,
        );
        for name in skip {
            a_list.remove(*name);
            b_list.remove(*name);
        }
        for name in a_list.keys().filter(|n| !b_list.contains_key(*n)) {
            note(
                &mut problems,
                format!("collection {a_db}/{name}: only on A"),
            );
        }
        for name in b_list.keys().filter(|n| !a_list.contains_key(*n)) {
            note(
                &mut problems,
                format!("collection {b_db}/{name}: only on B"),
            );
        }
        for (name, a_info) in &a_list {
            let Some(b_info) = b_list.get(name) else {
                continue;
            };
            compared.collections += 1;
            for (what, a, b) in [
                ("metadata", &a_info.metadata, &b_info.metadata),
                (
                    "configuration",
                    &a_info.configuration,
                    &b_info.configuration,
                ),
                ("dimension", &a_info.dimension, &b_info.dimension),
            ] {
                if a != b {
                    note(
                        &mut problems,
                        format!("collection {name}: {what} differs\n  A: {a}\n  B: {b}"),
                    );
                }
            }
            let a_ids = all_ids(a_url, a_db, &a_info.id).await?;
            let b_ids = all_ids(b_url, b_db, &b_info.id).await?;
            let b_set: std::collections::BTreeSet<&String> = b_ids.iter().collect();
            let a_set: std::collections::BTreeSet<&String> = a_ids.iter().collect();
            let only_a: Vec<&String> = a_ids.iter().filter(|i| !b_set.contains(i)).collect();
            let only_b: Vec<&String> = b_ids.iter().filter(|i| !a_set.contains(i)).collect();
            if !only_a.is_empty() || !only_b.is_empty() {
                note(
                    &mut problems,
                    format!(
                        "collection {name}: {} records on A, {} on B; only on A ({}, first 10): {:?}; only on B ({}, first 10): {:?}",
                        a_ids.len(),
                        b_ids.len(),
                        only_a.len(),
                        &only_a[..only_a.len().min(10)],
                        only_b.len(),
                        &only_b[..only_b.len().min(10)],
                    ),
                );
            }
            let common: Vec<String> = a_ids
                .iter()
                .filter(|i| b_set.contains(i))
                .cloned()
                .collect();
            compared.records += a_ids.len();
            compared.per_collection.insert(name.clone(), a_ids.len());
            for chunk in common.chunks(PAGE) {
                let a_records = records_by_id(a_url, a_db, &a_info.id, chunk).await?;
                let b_records = records_by_id(b_url, b_db, &b_info.id, chunk).await?;
                for id in chunk {
                    match (a_records.get(id), b_records.get(id)) {
                        (Some(a), Some(b)) => {
                            if let Some(field) = a.differs_from(b) {
                                note(
                                    &mut problems,
                                    format!(
                                        "collection {name}, record {id}: {field} differs\n  A: {}\n  B: {}",
                                        a.show(),
                                        b.show()
                                    ),
                                );
                            }
                        }
                        (a, b) => note(
                            &mut problems,
                            format!(
                                "collection {name}, record {id}: listed but not read back (A {}, B {})",
                                a.is_some(),
                                b.is_some()
                            ),
                        ),
                    }
                }
            }
        }
    }
    anyhow::ensure!(
        problems.is_empty(),
        "the stores differ: A={a_url} B={b_url}, {total_problems} mismatches (first {}):\n{}",
        problems.len(),
        problems.join("\n")
    );
    Ok(compared)
}

/// Both stores hold the same collections and records in the default database (see
/// [`compare_stores`]); what was compared.
pub async fn assert_same_records(a_url: &str, b_url: &str) -> anyhow::Result<Compared> {
    compare_stores(a_url, b_url, &[(DEFAULT_DB, DEFAULT_DB)]).await
}

// ---------------------------------------------------------------------------------------------
// The acknowledged-write log of tests/python/writers.py (`--mode owned --acked FILE`).
//
// Each writer writes only ids of its own (`w{writer}-{n}`), so its ops on them are totally
// ordered, and logs every op after the client call returned, one JSON line each, in order:
// {"writer", "seq", "collection", "op", "ok", ...the call's arguments}. `ok: false` marks a
// call that failed (the proxy killed mid-call): its outcome is unknown, so the ids it named
// (all of the writer's ids in that collection for a delete by where) are *uncertain* and not
// checked; the writer never touches an uncertain id again.

/// What the log says a record must be at the end: `None` when it must be absent.
pub type Expected = std::collections::BTreeMap<(String, String), Option<Record>>;

/// Replays an acknowledged-write log into the final state it implies, per (collection, id),
/// and the (collection, id) pairs whose state is uncertain.
pub fn expected_from_log(
    text: &str,
) -> anyhow::Result<(Expected, std::collections::BTreeSet<(String, String)>)> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut by_writer: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let entry: Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("acked log line {}: {e}: {line}", n + 1))?;
        by_writer
            .entry(entry["writer"].as_u64().unwrap_or(0))
            .or_default()
            .push(entry);
    }
    let mut state: Expected = BTreeMap::new();
    let mut uncertain: BTreeSet<(String, String)> = BTreeSet::new();
    for (writer, entries) in by_writer {
        let mut last_seq = None;
        for entry in entries {
            let seq = entry["seq"].as_u64();
            anyhow::ensure!(
                seq > last_seq,
                "writer {writer}: log out of order at {entry}"
            );
            last_seq = seq;
            let collection = entry["collection"].as_str().unwrap_or_default().to_owned();
            let ids = strings(&entry["ids"]);
            let op = entry["op"].as_str().unwrap_or_default();
            let key = |id: &String| (collection.clone(), id.clone());
            if entry["ok"] != true {
                if op == "delete_where" {
                    let prefix = format!("w{writer}-");
                    for k in state.keys() {
                        if k.0 == collection && k.1.starts_with(&prefix) {
                            uncertain.insert(k.clone());
                        }
                    }
                }
                uncertain.extend(ids.iter().map(key));
                continue;
            }
            let field = |name: &str, i: usize| entry[name].get(i).cloned();
            match op {
                "add" | "upsert" | "update" => {
                    for (i, id) in ids.iter().enumerate() {
                        let embedding = field("embeddings", i).and_then(|e| {
                            e.as_array().map(|v| {
                                v.iter()
                                    .map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32))
                                    .collect::<Vec<f32>>()
                            })
                        });
                        let current = state.get(&key(id)).cloned().flatten();
                        let next = match (op, current) {
                            // An add of an existing id changes nothing; the writers never
                            // make one, but the model says what Chroma does.
                            ("add", Some(existing)) => Some(existing),
                            ("update", None) => None,
                            (_, Some(existing)) => Some(Record {
                                embedding: embedding.or(existing.embedding),
                                metadata: merge_metadata(&existing.metadata, field("metadatas", i)),
                                document: field("documents", i).unwrap_or(existing.document),
                                uri: field("uris", i).unwrap_or(existing.uri),
                            }),
                            (_, None) => Some(Record {
                                embedding,
                                metadata: field("metadatas", i).unwrap_or(Value::Null),
                                document: field("documents", i).unwrap_or(Value::Null),
                                uri: field("uris", i).unwrap_or(Value::Null),
                            }),
                        };
                        state.insert(key(id), next);
                    }
                }
                "delete_ids" => {
                    for id in &ids {
                        state.insert(key(id), None);
                    }
                }
                "delete_where" => {
                    // The writers delete by {"$and": [{"writer": w}, {"bucket": b}]}.
                    let bucket = entry["bucket"].clone();
                    for (k, record) in state.iter_mut() {
                        let matches = record.as_ref().is_some_and(|r| {
                            r.metadata["writer"] == json!(writer) && r.metadata["bucket"] == bucket
                        });
                        if k.0 == collection && matches {
                            *record = None;
                        }
                    }
                }
                other => anyhow::bail!("acked log: unknown op {other:?} in {entry}"),
            }
        }
    }
    Ok((state, uncertain))
}

/// Chroma's update of metadata: the given keys replace or add, the others stay (a `null`
/// value removes its key).
fn merge_metadata(existing: &Value, update: Option<Value>) -> Value {
    let Some(update) = update else {
        return existing.clone();
    };
    let Some(fields) = update.as_object() else {
        return existing.clone();
    };
    let mut merged = existing.as_object().cloned().unwrap_or_default();
    for (k, v) in fields {
        if v.is_null() {
            merged.remove(k);
        } else {
            merged.insert(k.clone(), v.clone());
        }
    }
    if merged.is_empty() {
        Value::Null
    } else {
        Value::Object(merged)
    }
}

/// What [`check_acked_log`] checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckedChecked {
    /// Records whose final state the log fixes (present or absent), checked on every store.
    pub checked: usize,
    /// Of those, records that must be present.
    pub present: usize,
    /// Records left uncertain by failed calls (not checked).
    pub uncertain: usize,
}

/// Checks every record an acknowledged-write log fixes against each store's default
/// database, record by record: present with exactly the logged content (embeddings by f32
/// bits), or absent. Fails with the first mismatches.
pub async fn check_acked_log(
    log: &std::path::Path,
    stores: &[(&str, &str)],
) -> anyhow::Result<AckedChecked> {
    let text = std::fs::read_to_string(log)
        .map_err(|e| anyhow::anyhow!("cannot read the acked log {}: {e}", log.display()))?;
    let (expected, uncertain) = expected_from_log(&text)?;
    let mut problems = Vec::new();
    let mut total = 0usize;
    for (label, url) in stores {
        let dump = dump_database(url, DEFAULT_DB).await?;
        for ((collection, id), want) in &expected {
            if uncertain.contains(&(collection.clone(), id.clone())) {
                continue;
            }
            let got = dump
                .get(collection)
                .and_then(|c| c.records.get(id))
                .cloned();
            let wrong = match (want, &got) {
                (None, None) => false,
                (Some(w), Some(g)) => w.differs_from(g).is_some(),
                _ => true,
            };
            if wrong {
                total += 1;
                if problems.len() < SHOWN {
                    let show =
                        |r: &Option<Record>| r.as_ref().map_or("absent".to_owned(), Record::show);
                    problems.push(format!(
                        "{label} store, collection {collection}, record {id}:\n  acknowledged: {}\n  store holds:  {}",
                        show(want),
                        show(&got)
                    ));
                }
            }
        }
    }
    anyhow::ensure!(
        problems.is_empty(),
        "{total} records differ from the acknowledged writes (first {}):\n{}",
        problems.len(),
        problems.join("\n")
    );
    let checked = expected.keys().filter(|k| !uncertain.contains(*k)).count();
    let present = expected
        .iter()
        .filter(|(k, v)| v.is_some() && !uncertain.contains(*k))
        .count();
    Ok(AckedChecked {
        checked,
        present,
        uncertain: uncertain.len(),
    })
}

/// Every record of the collection `name` in the default database of the store at `url`, as
/// JSON: id -> {embedding, metadata, document, uri}, embeddings as Chroma answers them. Empty
/// when the store has no such collection. For tests that compare against the records they
/// wrote (values exact in f32).
pub async fn records_json(
    url: &str,
    name: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, Value>> {
    let collections = format!(
        "{url}{}/collections",
        db_path("default_tenant", "default_database")
    );
    let (status, collection) =
        crate::http_json("GET", &format!("{collections}/{name}"), None).await?;
    if status == http::StatusCode::NOT_FOUND {
        return Ok(std::collections::BTreeMap::new());
    }
    anyhow::ensure!(
        status.is_success(),
        "get collection {name}: {status} {collection}"
    );
    let id = collection["id"].as_str().unwrap_or_default();
    crate::collection::get_records(&format!("{collections}/{id}"), None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(value: Value) -> String {
        format!("{value}\n")
    }

    #[test]
    fn the_log_replays_to_each_records_final_state() {
        let log = [
            json!({"writer": 0, "seq": 0, "collection": "c", "op": "add", "ok": true,
                "ids": ["w0-0", "w0-1", "w0-2"],
                "embeddings": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                "metadatas": [{"writer": 0, "bucket": 1}, {"writer": 0, "bucket": 2}, {"writer": 0, "bucket": 1}],
                "documents": ["a", "b", "c"]}),
            // Metadata only: the embedding and document stay.
            json!({"writer": 0, "seq": 1, "collection": "c", "op": "update", "ok": true,
                "ids": ["w0-1"], "metadatas": [{"writer": 0, "bucket": 3}]}),
            json!({"writer": 0, "seq": 2, "collection": "c", "op": "delete_where", "ok": true,
                "ids": [], "bucket": 1}),
            json!({"writer": 1, "seq": 0, "collection": "c", "op": "upsert", "ok": true,
                "ids": ["w1-0"], "embeddings": [[0.5, 0.5]], "metadatas": [{"writer": 1, "bucket": 1}],
                "documents": ["x"]}),
            // A failed call leaves its ids uncertain.
            json!({"writer": 1, "seq": 1, "collection": "c", "op": "failed", "ok": false,
                "ids": ["w1-0", "w1-1"]}),
        ]
        .into_iter()
        .map(line)
        .collect::<String>();
        let (state, uncertain) = expected_from_log(&log).unwrap();
        let key = |id: &str| ("c".to_owned(), id.to_owned());
        assert_eq!(state[&key("w0-0")], None, "deleted by where");
        assert_eq!(state[&key("w0-2")], None, "deleted by where");
        let kept = state[&key("w0-1")].clone().unwrap();
        assert_eq!(kept.embedding, Some(vec![3.0, 4.0]));
        assert_eq!(kept.metadata, json!({"writer": 0, "bucket": 3}));
        assert_eq!(kept.document, json!("b"));
        assert!(uncertain.contains(&key("w1-0")) && uncertain.contains(&key("w1-1")));
        assert!(!uncertain.contains(&key("w0-1")));
    }

    #[test]
    fn a_log_out_of_order_is_refused() {
        let log = [
            json!({"writer": 0, "seq": 1, "collection": "c", "op": "delete_ids", "ok": true, "ids": ["a"]}),
            json!({"writer": 0, "seq": 0, "collection": "c", "op": "delete_ids", "ok": true, "ids": ["a"]}),
        ]
        .into_iter()
        .map(line)
        .collect::<String>();
        assert!(expected_from_log(&log).is_err());
    }

    #[test]
    fn embeddings_differ_by_one_bit() {
        let a = Record {
            embedding: Some(vec![0.1, 0.2]),
            metadata: Value::Null,
            document: json!("d"),
            uri: Value::Null,
        };
        let mut b = a.clone();
        assert_eq!(a.differs_from(&b), None);
        b.embedding = Some(vec![0.1, f32::from_bits(0.2_f32.to_bits() + 1)]);
        assert_eq!(a.differs_from(&b), Some("embedding"));
        let mut c = a.clone();
        c.metadata = json!({"k": 1});
        assert_eq!(a.differs_from(&c), Some("metadata"));
    }
}
