//! The transparent data plane in front of a real Chroma: bad input, limits, auth, shutdown.

use http::StatusCode;
use serde_json::json;
use shift_testkit::{http_json, Chroma, Proxy};

const COLLECTIONS: &str = "/api/v2/tenants/default_tenant/databases/default_database/collections";

#[tokio::test]
async fn heartbeat_and_collections_pass_through() -> anyhow::Result<()> {
    let chroma = Chroma::spawn().await?;
    let proxy = Proxy::builder().old(chroma.url()).spawn().await?;
    let (status, body) =
        http_json("GET", &format!("{}/api/v2/heartbeat", proxy.url()), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(body["nanosecond heartbeat"].is_u64(), "{body}");
    let (status, created) = http_json(
        "POST",
        &format!("{}{COLLECTIONS}", proxy.url()),
        Some(json!({"name": "through-proxy"})),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{created}");
    let (_, direct) = http_json(
        "GET",
        &format!("{}{COLLECTIONS}/through-proxy", chroma.url()),
        None,
    )
    .await?;
    assert_eq!(direct["id"], created["id"]);
    Ok(())
}
