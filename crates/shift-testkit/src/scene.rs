//! Setting a scene through a running proxy for the operator-surface tests (the status page, the
//! dashboard): records, a dead letter, the new store down and back, each step waited for in
//! `/admin/status`.

use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};

use crate::collection::create_collection;
use crate::stores::{post_json, DEFAULT_DB};
use crate::wait::wait_until;
use crate::{Chroma, Proxy};

/// Bound on a wait: only turns a hang into a failure.
const BOUND: Duration = Duration::from_secs(90);

/// The proxy's `/admin/status`.
pub async fn status(proxy: &Proxy) -> anyhow::Result<Value> {
    let (code, status) = proxy.admin("GET", "/admin/status", None).await?;
    anyhow::ensure!(code == StatusCode::OK, "status: {code} {status}");
    Ok(status)
}

/// Waits until `/admin/status` satisfies `check`; the status then.
pub async fn wait_status(
    proxy: &Proxy,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    wait_until(what, BOUND, || async { Ok(check(&status(proxy).await?)) }).await?;
    status(proxy).await
}

/// The elements of a JSON array; none when it is not one.
pub fn items(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

/// An add body of `n` 3-dimensional records `{prefix}-{i}` with documents.
pub fn records(prefix: &str, n: usize) -> Value {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let embeddings: Vec<[f32; 3]> = (0..n).map(|i| [i as f32, 1.0, 0.5]).collect();
    let documents: Vec<String> = ids.iter().map(|id| format!("document {id}")).collect();
    json!({"ids": ids, "embeddings": embeddings, "documents": documents})
}

/// `n` queries near the records of [`records`] on the collection at `collection_url`.
pub async fn queries(collection_url: &str, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        post_json(
            format!("{collection_url}/query"),
            json!({"query_embeddings": [[i as f32, 1.0, 0.5]], "n_results": 3}),
        )
        .await?;
    }
    Ok(())
}

/// A dead letter toward the new store: the collection `dims` already holds 3-dimensional
/// records there, so the proxy's 8-dimensional add (record `eight`, kept by the old store) is
/// refused for good. The client's id of `dims`, once the letter is parked.
pub async fn dimension_dead_letter(proxy: &Proxy, new: &Chroma) -> anyhow::Result<String> {
    let parked = status(proxy).await?["dead_letters"]["count"]
        .as_u64()
        .unwrap_or(0);
    let new_dims = create_collection(&new.url(), json!({"name": "dims"})).await?;
    post_json(
        format!("{}{DEFAULT_DB}/collections/{new_dims}/add", new.url()),
        json!({"ids": ["three"], "embeddings": [[0.1, 0.2, 0.3]]}),
    )
    .await?;
    let dims = create_collection(&proxy.url(), json!({"name": "dims"})).await?;
    post_json(
        format!("{}{DEFAULT_DB}/collections/{dims}/add", proxy.url()),
        json!({"ids": ["eight"], "embeddings": [vec![0.5_f32; 8]]}),
    )
    .await?;
    wait_status(proxy, "a dead letter", |s| {
        s["dead_letters"]["count"].as_u64() == Some(parked + 1)
    })
    .await?;
    Ok(dims)
}

/// Kills the new store and waits until the proxy's heartbeat saw it down.
pub async fn stop_new_store(proxy: &Proxy, new: &mut Chroma) -> anyhow::Result<()> {
    new.stop().await?;
    wait_status(proxy, "the new store seen down", |s| {
        s["backends"]["new"]["up"] == false
    })
    .await?;
    Ok(())
}

/// Starts the new store again and waits until the proxy sees it up with nothing waiting for it.
pub async fn restart_new_store(proxy: &Proxy, new: &mut Chroma) -> anyhow::Result<()> {
    new.restart().await?;
    wait_status(proxy, "the new store up and caught up", |s| {
        s["backends"]["new"]["up"] == true && s["journal"]["new"]["entries"] == 0
    })
    .await?;
    Ok(())
}
