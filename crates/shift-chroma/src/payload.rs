//! Views of Chroma request and response bodies: only what the proxy must know of them (record
//! ids, delete filters, collection objects), and merging record batches for the mirror.
//!
//! Embeddings come in two forms: arrays of floats, or (from the Python client) base64 strings
//! of little-endian f32. Bodies are kept as the client sent them; merging keeps each form.

use serde::Deserialize;
use serde_json::{Map, Value};

/// A body that is not what its operation expects.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(String);

/// The record ids of an add, upsert, update or delete body.
pub fn record_ids(body: &[u8]) -> Result<Vec<String>, PayloadError> {
    #[derive(Deserialize)]
    struct Ids {
        #[serde(default)]
        ids: Option<Vec<String>>,
    }
    let ids: Ids = serde_json::from_slice(body)
        .map_err(|e| PayloadError(format!("Failed to parse the request body as JSON: {e}")))?;
    Ok(ids.ids.unwrap_or_default())
}

/// What a delete body selects.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DeleteSelection {
    pub ids: Option<Vec<String>>,
    #[serde(rename = "where")]
    pub where_: Option<Value>,
    pub where_document: Option<Value>,
    pub limit: Option<u32>,
}

impl DeleteSelection {
    pub fn parse(body: &[u8]) -> Result<DeleteSelection, PayloadError> {
        serde_json::from_slice(body)
            .map_err(|e| PayloadError(format!("Failed to parse the request body as JSON: {e}")))
    }

    /// A delete by filter: which records it removes depends on the store's state, so the proxy
    /// resolves the ids on the primary first.
    pub fn is_filtered(&self) -> bool {
        let set = |v: &Option<Value>| match v {
            None | Some(Value::Null) => false,
            Some(Value::Object(m)) => !m.is_empty(),
            Some(_) => true,
        };
        set(&self.where_) || set(&self.where_document) || self.limit.is_some()
    }

    /// The `get` body that lists the ids this delete would remove.
    pub fn resolving_get(&self) -> Value {
        let mut get = Map::new();
        if let Some(ids) = &self.ids {
            get.insert("ids".into(), Value::from(ids.clone()));
        }
        if let Some(w) = self.where_.clone().filter(|w| !w.is_null()) {
            get.insert("where".into(), w);
        }
        if let Some(w) = self.where_document.clone().filter(|w| !w.is_null()) {
            get.insert("where_document".into(), w);
        }
        if let Some(limit) = self.limit {
            get.insert("limit".into(), Value::from(limit));
        }
        get.insert("include".into(), Value::Array(Vec::new()));
        Value::Object(get)
    }
}

/// The ids of a `get` answer.
pub fn get_response_ids(body: &[u8]) -> Result<Vec<String>, PayloadError> {
    record_ids(body)
}

/// The per-record arrays of a record write, in body order.
const RECORD_FIELDS: [&str; 5] = ["ids", "embeddings", "metadatas", "documents", "uris"];

/// Merges two add (or two upsert) bodies into one, when that means the same as applying them
/// one after the other: ids disjoint, embeddings in the same form. `None` otherwise.
pub fn merge_record_bodies(first: &Value, second: &Value) -> Option<Value> {
    let mut merged = first.clone();
    append_record_body(&mut merged, second).then_some(merged)
}

/// Appends `next`'s records to `into` in place, when applying the two one after the other
/// means the same as applying the merged body: only per-record arrays, ids disjoint,
/// embeddings in the same form, arrays as long as their ids. False, and `into` untouched,
/// otherwise. In place, so merging many bodies costs their size once, not quadratically.
pub fn append_record_body(into: &mut Value, next: &Value) -> bool {
    let (Some(a), Some(b)) = (into.as_object(), next.as_object()) else {
        return false;
    };
    // Only the per-record arrays may be present; anything else (a future flag) is not merged.
    if a.keys()
        .chain(b.keys())
        .any(|k| !RECORD_FIELDS.contains(&k.as_str()))
    {
        return false;
    }
    let (Some(ids_a), Some(ids_b)) = (
        a.get("ids").and_then(Value::as_array),
        b.get("ids").and_then(Value::as_array),
    ) else {
        return false;
    };
    let seen: std::collections::HashSet<&str> = ids_a.iter().filter_map(Value::as_str).collect();
    if ids_b
        .iter()
        .filter_map(Value::as_str)
        .any(|id| seen.contains(id))
    {
        return false;
    }
    if embedding_form(a.get("embeddings")) != embedding_form(b.get("embeddings")) {
        return false;
    }
    let (len_a, len_b) = (ids_a.len(), ids_b.len());
    let lengths_fit = RECORD_FIELDS.iter().all(|field| {
        present(a.get(*field)).is_none_or(|v| v.len() == len_a)
            && present(b.get(*field)).is_none_or(|v| v.len() == len_b)
    });
    if !lengths_fit {
        return false;
    }
    let Some(a) = into.as_object_mut() else {
        return false;
    };
    for field in RECORD_FIELDS {
        let from_b = present(b.get(field));
        if present(a.get(field)).is_none() && from_b.is_none() {
            continue;
        }
        // A missing optional array stands for nulls (embeddings are absent on both or neither).
        let slot = a.entry(field.to_owned()).or_insert(Value::Null);
        if !slot.is_array() {
            *slot = Value::Array(vec![Value::Null; len_a]);
        }
        if let Value::Array(items) = slot {
            match from_b {
                Some(more) => items.extend(more.iter().cloned()),
                None => items.extend(std::iter::repeat_n(Value::Null, len_b)),
            }
        }
    }
    true
}

fn present(value: Option<&Value>) -> Option<&Vec<Value>> {
    value.and_then(Value::as_array)
}

/// How embeddings are written: floats, base64 strings, absent, or mixed.
#[derive(Debug, PartialEq, Eq)]
enum EmbeddingForm {
    Absent,
    Floats,
    Base64,
    Other,
}

fn embedding_form(value: Option<&Value>) -> EmbeddingForm {
    let Some(array) = value.and_then(Value::as_array) else {
        return EmbeddingForm::Absent;
    };
    if array.iter().all(Value::is_array) {
        EmbeddingForm::Floats
    } else if array.iter().all(Value::is_string) {
        EmbeddingForm::Base64
    } else {
        EmbeddingForm::Other
    }
}

/// Splits a record-write body into bodies of at most `max` records each, in order.
pub fn split_record_body(body: &Value, max: usize) -> Vec<Value> {
    let count = record_count(body);
    let max = max.max(1);
    if count <= max {
        return vec![body.clone()];
    }
    let Some(object) = body.as_object() else {
        return vec![body.clone()];
    };
    (0..count)
        .step_by(max)
        .map(|start| {
            let end = (start + max).min(count);
            let part = object
                .iter()
                .map(|(key, value)| {
                    let value = match value.as_array() {
                        Some(array)
                            if RECORD_FIELDS.contains(&key.as_str()) && array.len() == count =>
                        {
                            Value::Array(array[start..end].to_vec())
                        }
                        _ => value.clone(),
                    };
                    (key.clone(), value)
                })
                .collect();
            Value::Object(part)
        })
        .collect()
}

/// A record write restricted to the records whose id `keep` accepts: every per-record array
/// (`ids`, `embeddings`, `metadatas`, `documents`, `uris`) filtered alike, other keys kept as
/// they are. `None` when the body is not a well-formed record write (no `ids` of strings, or a
/// per-record array of another length): Chroma should answer such a body itself.
pub fn retain_records(body: &Value, keep: impl Fn(&str) -> bool) -> Option<Value> {
    let object = body.as_object()?;
    let mask: Vec<bool> = object
        .get("ids")?
        .as_array()?
        .iter()
        .map(|id| id.as_str().map(&keep))
        .collect::<Option<_>>()?;
    let mut restricted = Map::new();
    for (key, value) in object {
        let value = match value {
            Value::Array(items) if RECORD_FIELDS.contains(&key.as_str()) => {
                if items.len() != mask.len() {
                    return None;
                }
                Value::Array(
                    items
                        .iter()
                        .zip(&mask)
                        .filter(|(_, kept)| **kept)
                        .map(|(item, _)| item.clone())
                        .collect(),
                )
            }
            other => other.clone(),
        };
        restricted.insert(key.clone(), value);
    }
    Some(Value::Object(restricted))
}

/// The number of records in a record-write body.
pub fn record_count(body: &Value) -> usize {
    body.get("ids")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// What the proxy needs of a collection object.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CollectionView {
    pub id: String,
    pub name: String,
    pub tenant: String,
    pub database: String,
}

/// The body that creates, on another store, a collection like `collection` (a collection object
/// as Chroma returns it): same name, metadata, and schema (or configuration when there is no
/// schema; Chroma refuses both at once).
///
/// Metadata with legacy `hnsw:*` keys (what LangChain sends) goes alone: Chroma 1.5.9 turns
/// those keys into a configuration and then refuses it next to a schema ("Cannot set both
/// collection config and schema simultaneously"); from the metadata alone it derives the same
/// configuration and schema as on the first store (seen on a real server).
pub fn create_body_like(collection: &Value, name: &str) -> Value {
    let mut body = Map::new();
    body.insert("name".into(), Value::from(name));
    body.insert("get_or_create".into(), Value::Bool(true));
    let metadata = collection.get("metadata").filter(|m| !m.is_null());
    if let Some(metadata) = metadata {
        body.insert("metadata".into(), metadata.clone());
    }
    let legacy = metadata
        .and_then(Value::as_object)
        .is_some_and(|m| m.keys().any(|k| k.starts_with("hnsw:")));
    if legacy {
        return Value::Object(body);
    }
    match collection.get("schema").filter(|s| !s.is_null()) {
        Some(schema) => {
            body.insert("schema".into(), schema.clone());
        }
        None => {
            if let Some(config) = collection
                .get("configuration_json")
                .filter(|c| !c.is_null())
            {
                body.insert("configuration".into(), config.clone());
            }
        }
    }
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn legacy_hnsw_metadata_creates_without_schema_or_configuration() {
        let answer = json!({
            "name": "c",
            "metadata": {"hnsw:space": "cosine", "team": "a"},
            "schema": {"defaults": {}},
            "configuration_json": {"hnsw": {"space": "cosine"}},
        });
        assert_eq!(
            create_body_like(&answer, "c"),
            json!({"name": "c", "get_or_create": true, "metadata": {"hnsw:space": "cosine", "team": "a"}})
        );
        let plain = json!({"name": "c", "metadata": {"team": "a"}, "schema": {"defaults": {}}});
        assert_eq!(
            create_body_like(&plain, "c"),
            json!({"name": "c", "get_or_create": true, "metadata": {"team": "a"}, "schema": {"defaults": {}}})
        );
    }

    #[test]
    fn retained_records_keep_their_fields_aligned() {
        let body = json!({
            "ids": ["a", "b", "c"],
            "embeddings": ["AACAPw==", "AAAAQA==", "AABAQA=="],
            "metadatas": [{"n": 1}, null, {"n": 3}],
            "documents": null,
        });
        assert_eq!(
            retain_records(&body, |id| id != "b"),
            Some(json!({
                "ids": ["a", "c"],
                "embeddings": ["AACAPw==", "AABAQA=="],
                "metadatas": [{"n": 1}, {"n": 3}],
                "documents": null,
            }))
        );
        assert_eq!(
            retain_records(&body, |_| false),
            Some(json!({"ids": [], "embeddings": [], "metadatas": [], "documents": null}))
        );
        // Not a well-formed write: left to Chroma.
        let ragged = json!({"ids": ["a", "b"], "embeddings": [[1.0]]});
        assert_eq!(retain_records(&ragged, |_| true), None);
        assert_eq!(retain_records(&json!({"ids": [1]}), |_| true), None);
    }

    #[test]
    fn ids_are_read_from_any_record_write() {
        let body = br#"{"ids":["a","b"],"embeddings":["AACAPw=="],"documents":null}"#;
        assert_eq!(record_ids(body).unwrap(), ["a", "b"]);
        assert!(record_ids(br#"{"where":{"k":1}}"#).unwrap().is_empty());
        assert!(record_ids(b"{bad").is_err());
    }

    #[test]
    fn filtered_deletes_are_told_apart_from_deletes_by_id() {
        let by_ids = DeleteSelection::parse(br#"{"ids":["a"],"where":null}"#).unwrap();
        assert!(!by_ids.is_filtered());
        let by_where = DeleteSelection::parse(br#"{"ids":["a"],"where":{"k":{"$eq":1}}}"#).unwrap();
        assert!(by_where.is_filtered());
        assert_eq!(
            by_where.resolving_get(),
            json!({"ids": ["a"], "where": {"k": {"$eq": 1}}, "include": []})
        );
        let by_document =
            DeleteSelection::parse(br#"{"where_document":{"$contains":"x"}}"#).unwrap();
        assert!(by_document.is_filtered());
    }

    #[test]
    fn disjoint_batches_merge_and_fill_missing_optional_arrays() {
        let a = json!({"ids": ["a"], "embeddings": [[1.0, 2.0]], "documents": ["x"]});
        let b = json!({"ids": ["b", "c"], "embeddings": [[3.0, 4.0], [5.0, 6.0]], "metadatas": [{"k": 1}, null]});
        let merged = merge_record_bodies(&a, &b).unwrap();
        assert_eq!(
            merged,
            json!({
                "ids": ["a", "b", "c"],
                "embeddings": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                "metadatas": [null, {"k": 1}, null],
                "documents": ["x", null, null],
            })
        );
        assert_eq!(record_count(&merged), 3);
    }

    #[test]
    fn overlapping_ids_or_mixed_forms_do_not_merge() {
        let a = json!({"ids": ["a"], "embeddings": [[1.0]]});
        assert!(merge_record_bodies(&a, &json!({"ids": ["a"], "embeddings": [[2.0]]})).is_none());
        assert!(
            merge_record_bodies(&a, &json!({"ids": ["b"], "embeddings": ["AACAPw=="]})).is_none()
        );
        assert!(merge_record_bodies(&a, &json!({"ids": ["b"]})).is_none());
        assert!(merge_record_bodies(
            &a,
            &json!({"ids": ["b"], "embeddings": [[2.0]], "extra": 1})
        )
        .is_none());
    }

    #[test]
    fn large_bodies_split_in_order() {
        let body =
            json!({"ids": ["a", "b", "c"], "embeddings": [[1.0], [2.0], [3.0]], "documents": null});
        let parts = split_record_body(&body, 2);
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[0],
            json!({"ids": ["a", "b"], "embeddings": [[1.0], [2.0]], "documents": null})
        );
        assert_eq!(
            parts[1],
            json!({"ids": ["c"], "embeddings": [[3.0]], "documents": null})
        );
        assert_eq!(split_record_body(&body, 5), vec![body]);
    }

    #[test]
    fn a_collection_is_recreated_with_its_schema_or_else_its_configuration() {
        let with_schema = json!({"id": "x", "name": "n", "metadata": {"k": "v"}, "schema": {"keys": {}}, "configuration_json": {"hnsw": {}}});
        assert_eq!(
            create_body_like(&with_schema, "n"),
            json!({"name": "n", "get_or_create": true, "metadata": {"k": "v"}, "schema": {"keys": {}}})
        );
        let without = json!({"id": "x", "name": "n", "metadata": null, "schema": null, "configuration_json": {"hnsw": {"space": "l2"}}});
        assert_eq!(
            create_body_like(&without, "m"),
            json!({"name": "m", "get_or_create": true, "configuration": {"hnsw": {"space": "l2"}}})
        );
    }
}
