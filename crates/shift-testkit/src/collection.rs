//! One collection of a Chroma server (or of the proxy in front of two) over plain HTTP: create
//! it, find its id by name, read its records as JSON, count them.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::http_json;
use crate::stores::DEFAULT_DB;

/// `{url}/api/v2/tenants/default_tenant/databases/default_database/collections`.
pub fn collections_url(url: &str) -> String {
    format!("{url}{DEFAULT_DB}/collections")
}

/// Creates a collection in the default database with `body` (`{"name": ...}` and whatever else
/// the test needs, such as `"get_or_create": true`); its id. Fails unless the answer is a
/// success with an id.
pub async fn create_collection(url: &str, body: Value) -> anyhow::Result<String> {
    let (status, answer) = http_json("POST", &collections_url(url), Some(body.clone())).await?;
    anyhow::ensure!(status.is_success(), "create {body}: {status} {answer}");
    answer["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("create {body} answered no id: {answer}"))
}

/// [`create_collection`] of `{"name": name, "get_or_create": true}`: the collection `name`,
/// created unless it exists; its id.
pub async fn get_or_create_collection(url: &str, name: &str) -> anyhow::Result<String> {
    create_collection(url, json!({"name": name, "get_or_create": true})).await
}

/// The id of the collection `name` in the default database; fails when there is none.
pub async fn collection_id(url: &str, name: &str) -> anyhow::Result<String> {
    let (status, answer) =
        http_json("GET", &format!("{}/{name}", collections_url(url)), None).await?;
    anyhow::ensure!(status.is_success(), "get {name}: {status} {answer}");
    answer["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("get {name} answered no id: {answer}"))
}

/// The records of the collection at `collection_url` (`.../collections/{id}`), only `ids` when
/// given: id -> `{embedding, metadata, document, uri}`, as Chroma answers them.
pub async fn get_records(
    collection_url: &str,
    ids: Option<&[String]>,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut query = json!({"include": ["embeddings", "metadatas", "documents", "uris"]});
    if let Some(ids) = ids {
        query["ids"] = json!(ids);
    }
    let (status, got) = http_json("POST", &format!("{collection_url}/get"), Some(query)).await?;
    anyhow::ensure!(status.is_success(), "get {collection_url}: {status} {got}");
    let column = |field: &str, i: usize| got[field].get(i).cloned().unwrap_or(Value::Null);
    Ok(got["ids"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, id)| {
            (
                id.as_str().unwrap_or_default().to_owned(),
                json!({
                    "embedding": column("embeddings", i),
                    "metadata": column("metadatas", i),
                    "document": column("documents", i),
                    "uri": column("uris", i),
                }),
            )
        })
        .collect())
}

/// Every record of the collection `name` in the default database; fails when there is none.
pub async fn records_of(url: &str, name: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    let id = collection_id(url, name).await?;
    get_records(&format!("{}/{id}", collections_url(url)), None).await
}

/// [`records_of`], each record also holding its `"id"`: for tests that keep whole records as
/// they wrote them.
pub async fn records_with_ids(url: &str, name: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut records = records_of(url, name).await?;
    for (id, record) in records.iter_mut() {
        record["id"] = json!(id);
    }
    Ok(records)
}

/// How many records the collection `id` of the default database holds.
pub async fn count(url: &str, id: &str) -> anyhow::Result<u64> {
    let (status, answer) =
        http_json("GET", &format!("{}/{id}/count", collections_url(url)), None).await?;
    anyhow::ensure!(status.is_success(), "count {id}: {status} {answer}");
    answer
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("count {id} answered {answer}"))
}

/// Version `v` of the record `id`, every field set (the embedding exact in f32), its metadata
/// `metadata` with the version added: for tests that check which version each store holds.
pub fn versioned_record(id: &str, v: u64, mut metadata: Value) -> Value {
    metadata["version"] = json!(v);
    json!({
        "id": id,
        "embedding": [v as f32 * 0.5, 1.0, -0.25],
        "document": format!("{id} version {v}"),
        "metadata": metadata,
        "uri": format!("mem://{id}/{v}"),
    })
}

/// The body of an add or upsert of one record as [`versioned_record`] makes it.
pub fn record_body(r: &Value) -> Value {
    json!({
        "ids": [r["id"]],
        "embeddings": [r["embedding"]],
        "documents": [r["document"]],
        "metadatas": [r["metadata"]],
        "uris": [r["uri"]],
    })
}
