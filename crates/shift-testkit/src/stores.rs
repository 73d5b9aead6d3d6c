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

/// POSTs JSON and fails unless the answer is a success; the answer's JSON.
pub async fn post_json(url: String, body: Value) -> anyhow::Result<Value> {
    let (status, answer) = http_json("POST", &url, Some(body)).await?;
    anyhow::ensure!(status.is_success(), "{url} answered {status}: {answer}");
    Ok(answer)
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
    let mut ids: Vec<String> = got["ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
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

/// The proxy in front of two stores with everything else at its defaults (journaled mode).
pub async fn proxy_in_front(old: &Chroma, new: &Chroma) -> anyhow::Result<crate::Proxy> {
    crate::Proxy::builder()
        .old(old.url())
        .new_store(new.url())
        .spawn()
        .await
}
