//! Tests of the shadow runner and its score.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::json;
use shift_config::BackendName;

use super::*;
use crate::backend::Backends;
use crate::metrics::ProxyMetrics;

fn shadows(queue: usize, samples: usize) -> Arc<ShadowReads> {
    let metrics = ProxyMetrics::register(&prometheus::Registry::new()).unwrap();
    Arc::new(ShadowReads::new(
        ShadowSettings {
            timeout: Duration::from_millis(50),
            queue,
            samples,
        },
        metrics,
    ))
}

fn collection() -> CollectionRef {
    CollectionRef {
        id: "c1".into(),
        name: "docs".into(),
    }
}

fn request(read: ShadowedRead) -> ShadowRequest {
    ShadowRequest {
        collection: collection(),
        read,
        primary: BackendName::Old,
        secondary: BackendName::New,
        method: Method::POST,
        path: "/".into(),
        headers: HeaderMap::new(),
        body: Bytes::new(),
        caller: crate::auth::Caller::Operator,
    }
}

#[test]
fn the_sample_ring_keeps_the_latest() {
    let shadows = shadows(4, 2);
    for n in [10u64, 11, 12] {
        shadows.settle(
            &request(ShadowedRead::Count),
            Ok(Bytes::from(n.to_string())),
            Some(Ok((StatusCode::OK, Bytes::from_static(b"9")))),
        );
    }
    let samples = shadows.samples(10);
    let described: Vec<&str> = samples.iter().map(|s| s.description.as_str()).collect();
    assert_eq!(described, ["count 12 vs 9", "count 11 vs 9"]);
    let status = shadows.status();
    assert_eq!(status["totals"]["mismatch"], json!(3));
    assert_eq!(status["samples_kept"], json!(2));
    assert_eq!(status["collections"][0]["name"], json!("docs"));
    assert_eq!(
        status["recent_mismatches"][0]["collection"]["id"],
        json!("c1")
    );
    let count = shadows
        .metrics
        .shadow_reads
        .with_label_values(&["c1", "collection_count", "mismatch"])
        .get();
    assert_eq!(count, 3);
}

#[test]
fn outcomes_other_than_a_comparison_are_counted() {
    let shadows = shadows(4, 2);
    let r = request(ShadowedRead::Count);
    shadows.settle(
        &r,
        Err(SkipReason::PrimaryFailed),
        Some(Ok((StatusCode::OK, Bytes::from_static(b"1")))),
    );
    shadows.settle(&r, Ok(Bytes::from_static(b"1")), None);
    let huge = Bytes::from(vec![b' '; MAX_COMPARED_BODY as usize + 1]);
    shadows.settle(
        &r,
        Ok(huge),
        Some(Ok((StatusCode::OK, Bytes::from_static(b"1")))),
    );
    shadows.settle(
        &r,
        Ok(Bytes::from_static(b"1")),
        Some(Ok((StatusCode::NOT_FOUND, Bytes::from_static(b"gone")))),
    );
    shadows.settle(
        &r,
        Ok(Bytes::from_static(b"1")),
        Some(Ok((StatusCode::OK, Bytes::from_static(b"1")))),
    );
    shadows.skip(&collection(), ShadowedRead::Query, SkipReason::Lagging);
    let status = shadows.status();
    assert_eq!(
        status["totals"],
        json!({"match": 1, "mismatch": 0, "error": 1, "timeout": 1, "dropped": 0, "skipped": 3})
    );
    assert_eq!(
        status["skipped"],
        json!({"lagging": 1, "primary_failed": 1, "too_large": 1})
    );
    assert_eq!(status["samples_kept"], json!(0));
    assert!(status["collections"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("404"));
}

#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    let shadows = shadows(0, 2);
    let backends = Arc::new(test_backends());
    assert!(shadows
        .start(backends, request(ShadowedRead::Get))
        .is_none());
    assert_eq!(shadows.status()["totals"]["dropped"], json!(1));
}

#[tokio::test]
async fn a_shadow_runs_in_the_background_and_times_out() {
    // Nothing answers on the secondary's address within the timeout (a listener that never
    // accepts would do; a closed port answers at once, so use one that accepts and stalls).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _stall = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let backends = Arc::new(backends_at(&format!("http://{addr}")));
    let shadows = shadows(1, 2);
    let handoff = shadows
        .start(backends.clone(), request(ShadowedRead::Count))
        .unwrap();
    // The queue holds one: a second is dropped while the first runs.
    assert!(shadows
        .start(backends, request(ShadowedRead::Count))
        .is_none());
    handoff.answered(Bytes::from_static(b"3"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    // Counted, then the permit goes back when the task ends.
    while shadows.status()["totals"]["timeout"] != json!(1)
        || shadows.status()["queue"]["running"] != json!(0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            shadows.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(shadows.status()["totals"]["dropped"], json!(1));
}

fn backends_at(new: &str) -> Backends {
    let config = |url: &str| shift_config::BackendConfig {
        url: url.parse().unwrap(),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        pool_idle_timeout: Duration::from_secs(30),
        pool_max_idle: 2,
        auth: None,
        ca_file: None,
    };
    Backends {
        old: crate::Backend::new(BackendName::Old, &config("http://127.0.0.1:9"), None).unwrap(),
        new: crate::Backend::new(BackendName::New, &config(new), None).unwrap(),
    }
}

fn test_backends() -> Backends {
    backends_at("http://127.0.0.1:10")
}
