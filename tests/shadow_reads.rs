//! Shadow and canary reads, end to end: the proxy in front of two real Chroma servers.
//!
//! - shadows against a secondary that lacks some records (and holds one changed document):
//!   the mismatch metrics and the admin API's samples name the collection and what differs,
//!   an untouched collection shows only matches, and every client answer equals what the old
//!   store answers directly;
//! - shadows of a secondary slower than the shadow timeout: the client's reads take the
//!   primary's time, the shadows time out or are dropped at the queue bound, all counted;
//! - canaries: with nothing queued for the new store, reads are served by it; with the new
//!   store down they fall back to the primary; with writes queued for it they stay on the
//!   primary, and the client reads its own write (and shadows of it are skipped as lagging).

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{json, Value};
use shift_config::BackendName;
use shift_testkit::collection::{collection_id, create_collection};
use shift_testkit::faulty::two_stores_one_faulty;
use shift_testkit::scrape::{counter, metric, wait_drained};
use shift_testkit::stores::two_stores_and_proxy;
use shift_testkit::wait::wait_until;
use shift_testkit::{http_json, Fault, Hold, Proxy};

const DB: &str = "/api/v2/tenants/default_tenant/databases/default_database";
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// Bound on the wait for background shadows to be counted.
const SHADOW_LIMIT: Duration = Duration::from_secs(60);

/// Fast retries, so the replay catches up quickly.
const JOURNALED: &str =
    "[mirror]\nmode = \"journaled\"\nretry_initial = \"50ms\"\nretry_max = \"1s\"\n";

/// Record `i`: an embedding on a spiral (so distances to any query differ), a document and a
/// metadata.
fn record_embedding(i: usize) -> Vec<f32> {
    let t = i as f32 * 0.7;
    vec![t.cos(), t.sin(), i as f32 / 10.0]
}

fn records(range: std::ops::Range<usize>) -> Value {
    json!({
        "ids": range.clone().map(|i| format!("r{i}")).collect::<Vec<_>>(),
        "embeddings": range.clone().map(record_embedding).collect::<Vec<_>>(),
        "documents": range.clone().map(|i| format!("document {i}")).collect::<Vec<_>>(),
        "metadatas": range.map(|i| json!({"bucket": i % 3})).collect::<Vec<_>>(),
    })
}

async fn call(method: &str, url: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let (status, answer) = http_json(method, url, body).await?;
    anyhow::ensure!(
        status.is_success(),
        "{method} {url} answered {status}: {answer}"
    );
    Ok(answer)
}

/// Creates `name` through the proxy with `n` records; its client id.
async fn populated(proxy: &Proxy, name: &str, n: usize) -> anyhow::Result<String> {
    let id = create_collection(&proxy.url(), json!({"name": name})).await?;
    call(
        "POST",
        &format!("{}{DB}/collections/{id}/add", proxy.url()),
        Some(records(0..n)),
    )
    .await?;
    Ok(id)
}

/// The three reads, as the same requests to any Chroma URL and collection id.
struct Reads;

impl Reads {
    fn query_body() -> Value {
        // Queries at records that the secondary will lack, so they are in the top 10.
        json!({
            "query_embeddings": [record_embedding(3), record_embedding(10), record_embedding(20)],
            "n_results": 10,
            "include": ["distances", "documents", "metadatas"],
        })
    }

    fn get_body() -> Value {
        json!({"include": ["documents", "metadatas"]})
    }

    /// query, get, count answers of `url` for collection `id`.
    async fn all(url: &str, id: &str) -> anyhow::Result<[Value; 3]> {
        let base = format!("{url}{DB}/collections/{id}");
        let query = call("POST", &format!("{base}/query"), Some(Self::query_body())).await?;
        let get = call("POST", &format!("{base}/get"), Some(Self::get_body())).await?;
        let count = call("GET", &format!("{base}/count"), None).await?;
        Ok([query, get, count])
    }
}

const OPERATIONS: [&str; 3] = ["collection_query", "collection_get", "collection_count"];

async fn shadow_count(
    proxy: &Proxy,
    collection: &str,
    operation: &str,
    outcome: &str,
) -> anyhow::Result<f64> {
    counter(
        &proxy.admin_url(),
        "chroma_shift_shadow_reads_total",
        &[
            ("collection", collection),
            ("operation", operation),
            ("outcome", outcome),
        ],
    )
    .await
}

async fn set_reads(proxy: &Proxy, canary: f64, shadow: f64) -> anyhow::Result<()> {
    let (status, answer) = proxy
        .admin(
            "POST",
            "/admin/read-policy",
            Some(json!({"canary_percent": canary, "shadow_percent": shadow})),
        )
        .await?;
    anyhow::ensure!(
        status == StatusCode::OK,
        "read-policy answered {status}: {answer}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadows_of_a_secondary_missing_records_show_mismatches_and_leave_clients_alone(
) -> anyhow::Result<()> {
    let started = Instant::now();
    let (old, new, proxy) = two_stores_and_proxy(JOURNALED).await?;
    let diverged = populated(&proxy, "diverged", 40).await?;
    let steady = populated(&proxy, "steady", 40).await?;
    wait_drained(&proxy.admin_url(), "new", DRAIN_LIMIT).await?;

    // Behind the proxy's back: the new store loses five records and one document changes.
    let new_id = collection_id(&new.url(), "diverged").await?;
    let on_new = format!("{}{DB}/collections/{new_id}", new.url());
    call(
        "POST",
        &format!("{on_new}/delete"),
        Some(json!({"ids": ["r3", "r4", "r10", "r11", "r20"]})),
    )
    .await?;
    call(
        "POST",
        &format!("{on_new}/update"),
        Some(json!({"ids": ["r30"], "documents": ["changed on the new store"]})),
    )
    .await?;

    set_reads(&proxy, 0.0, 100.0).await?;
    // The client ids are the old store's ids: what the old store answers directly is what the
    // clients must get.
    for id in [&diverged, &steady] {
        for round in 0..3 {
            let through_proxy = Reads::all(&proxy.url(), id).await?;
            let direct = Reads::all(&old.url(), id).await?;
            assert_eq!(
                through_proxy, direct,
                "round {round}: the proxy's answers differ from the primary's"
            );
        }
    }
    let [_, get, count] = Reads::all(&proxy.url(), &diverged).await?;
    assert_eq!(count, json!(40), "the client sees the primary's count");
    assert_eq!(get["ids"].as_array().map(Vec::len), Some(40));

    // The shadows run in the background: wait for them to be counted.
    for operation in OPERATIONS {
        wait_until(&format!("a {operation} mismatch"), SHADOW_LIMIT, || async {
            Ok(shadow_count(&proxy, &diverged, operation, "mismatch").await? >= 3.0)
        })
        .await?;
        wait_until(&format!("a {operation} match"), SHADOW_LIMIT, || async {
            Ok(shadow_count(&proxy, &steady, operation, "match").await? >= 3.0)
        })
        .await?;
        // Identical collections never look different: HNSW noise stays under the floor.
        assert_eq!(
            shadow_count(&proxy, &steady, operation, "mismatch").await?,
            0.0
        );
        for outcome in ["error", "timeout", "dropped", "skipped"] {
            assert_eq!(
                shadow_count(&proxy, &diverged, operation, outcome).await?,
                0.0,
                "{operation} {outcome}"
            );
        }
    }
    let admin = proxy.admin_url();
    let below_one = metric(
        &admin,
        "chroma_shift_shadow_recall_bucket",
        &[("collection", &diverged), ("le", "0.99")],
    )
    .await?;
    assert!(
        below_one.unwrap_or(0.0) >= 3.0,
        "recall below 1: {below_one:?}"
    );
    let steady_below_one = metric(
        &admin,
        "chroma_shift_shadow_recall_bucket",
        &[("collection", &steady), ("le", "0.99")],
    )
    .await?;
    assert_eq!(steady_below_one, Some(0.0));

    // The admin API names the collection and says what differs.
    let (status, body) = proxy.admin("GET", "/admin/status", None).await?;
    assert_eq!(status, StatusCode::OK);
    let section = &body["shadow"];
    let samples = section["recent_mismatches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!samples.is_empty(), "no samples: {section}");
    for sample in &samples {
        assert_eq!(sample["collection"]["id"], json!(diverged), "{sample}");
        assert_eq!(sample["collection"]["name"], json!("diverged"), "{sample}");
        assert_eq!(sample["primary"], json!("old"));
        assert_eq!(sample["secondary"], json!("new"));
    }
    let (_, detail) = proxy.admin("GET", "/admin/shadow", None).await?;
    assert_eq!(
        detail["read_policy"]["shadow_percent"],
        json!(100.0),
        "{detail}"
    );
    let descriptions: Vec<String> = detail["recent_mismatches"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            format!(
                "{}: {}",
                s["operation"],
                s["description"].as_str().unwrap_or("")
            )
        })
        .collect();
    eprintln!("mismatch samples: {descriptions:#?}");
    let has = |needle: &str| descriptions.iter().any(|d| d.contains(needle));
    assert!(has("count 40 vs 35"), "{descriptions:#?}");
    assert!(
        has("get: 5 ids only on primary [r3, r4, r10, r11, r20]; 1 differs in content [r30] (documents)"),
        "{descriptions:#?}"
    );
    assert!(has("recall@10 0."), "{descriptions:#?}");
    assert!(has("missing [r3"), "{descriptions:#?}");
    let totals = &section["totals"];
    assert!(totals["mismatch"].as_u64().unwrap_or(0) >= 9, "{totals}");
    assert!(totals["match"].as_u64().unwrap_or(0) >= 9, "{totals}");
    let scores = section["collections"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let score = scores
        .iter()
        .find(|c| c["collection"] == json!(diverged))
        .cloned()
        .unwrap_or_default();
    assert_eq!(score["name"], json!("diverged"));
    assert!(score["recall_min"].as_f64().unwrap_or(1.0) < 1.0, "{score}");
    let steady_score = scores
        .iter()
        .find(|c| c["collection"] == json!(steady))
        .cloned()
        .unwrap_or_default();
    assert_eq!(steady_score["recall_min"], json!(1.0), "{steady_score}");
    assert!(
        steady_score["drift_max"].as_f64().unwrap_or(1.0) <= 1e-3,
        "{steady_score}"
    );

    eprintln!("shadow reads: {:?}", started.elapsed());
    Ok(())
}

/// A secondary slower than the shadow timeout: the client's reads take the primary's time;
/// shadows time out, and those over the queue bound are dropped; all counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_shadows_never_slow_the_client_and_are_counted() -> anyhow::Result<()> {
    let started = Instant::now();
    let (_old, _new, slow_new, builder) = two_stores_one_faulty(BackendName::New).await?;
    let proxy = builder
        .toml(JOURNALED)
        .toml("[reads]\nshadow_timeout = \"1s\"\nshadow_queue = 2\n")
        .spawn()
        .await?;
    let id = populated(&proxy, "slow", 20).await?;
    wait_drained(&proxy.admin_url(), "new", DRAIN_LIMIT).await?;

    // The secondary holds every request until the end of the test: a shadow can only time out
    // or be dropped, and a client read that waited for its shadow would never be answered.
    let hold = Hold::new();
    slow_new.set_default(Fault::Held(hold.clone(), Box::new(Fault::Forward)));
    set_reads(&proxy, 0.0, 100.0).await?;
    let url = format!("{}{DB}/collections/{id}/count", proxy.url());
    let reads: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { call("GET", &url, None).await })
        })
        .collect();
    for read in reads {
        let answer = tokio::time::timeout(SHADOW_LIMIT, read)
            .await
            .map_err(|_| anyhow::anyhow!("a client read waited for its held shadow"))??;
        assert_eq!(answer?, json!(20));
    }
    assert!(hold.arrived() >= 1, "no shadow reached the secondary");

    // The shadows that got one of the two places time out (the secondary never answers); the
    // others were dropped. None can match.
    wait_until("every shadow to be counted", SHADOW_LIMIT, || async {
        let timeouts = shadow_count(&proxy, &id, "collection_count", "timeout").await?;
        let dropped = shadow_count(&proxy, &id, "collection_count", "dropped").await?;
        Ok(timeouts + dropped >= 6.0)
    })
    .await?;
    let timeouts = shadow_count(&proxy, &id, "collection_count", "timeout").await?;
    let dropped = shadow_count(&proxy, &id, "collection_count", "dropped").await?;
    assert!(timeouts >= 1.0, "{timeouts} timeouts, {dropped} dropped");
    assert_eq!(timeouts + dropped, 6.0);
    assert_eq!(
        shadow_count(&proxy, &id, "collection_count", "match").await?,
        0.0
    );
    let (_, status) = proxy.admin("GET", "/admin/status", None).await?;
    let last_error = status["shadow"]["collections"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(last_error.contains("did not answer within"), "{status}");
    eprintln!("slow shadows: {:?}", started.elapsed());
    Ok(())
}

/// Reads answered 200 by `backend`.
async fn requests(proxy: &Proxy, backend: &str, operation: &str) -> anyhow::Result<f64> {
    counter(
        &proxy.admin_url(),
        "chroma_shift_requests_total",
        &[
            ("backend", backend),
            ("operation", operation),
            ("status", "200"),
        ],
    )
    .await
}

async fn canaries(proxy: &Proxy, collection: &str, outcome: &str) -> anyhow::Result<f64> {
    counter(
        &proxy.admin_url(),
        "chroma_shift_canary_reads_total",
        &[("collection", collection), ("outcome", outcome)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_reads_go_to_a_caught_up_secondary_and_stay_on_the_primary_otherwise(
) -> anyhow::Result<()> {
    let started = Instant::now();
    let (old, mut new, proxy) = two_stores_and_proxy(JOURNALED).await?;
    let id = populated(&proxy, "canaried", 30).await?;
    wait_drained(&proxy.admin_url(), "new", DRAIN_LIMIT).await?;
    set_reads(&proxy, 100.0, 0.0).await?;

    // Caught up: the new store answers, and its answers are the old store's.
    for _ in 0..3 {
        let through_proxy = Reads::all(&proxy.url(), &id).await?;
        let direct = Reads::all(&old.url(), &id).await?;
        assert_eq!(through_proxy, direct);
    }
    for operation in OPERATIONS {
        assert_eq!(
            requests(&proxy, "new", operation).await?,
            3.0,
            "{operation}"
        );
        assert_eq!(
            requests(&proxy, "old", operation).await?,
            0.0,
            "{operation}"
        );
    }
    assert_eq!(canaries(&proxy, &id, "served").await?, 9.0);

    // The new store down, nothing queued for it: the canary fails over to the primary and the
    // client gets its answer.
    new.stop().await?;
    let count_url = format!("{}{DB}/collections/{id}/count", proxy.url());
    assert_eq!(call("GET", &count_url, None).await?, json!(30));
    assert_eq!(requests(&proxy, "old", "collection_count").await?, 1.0);
    assert_eq!(canaries(&proxy, &id, "fallback").await?, 1.0);

    // A write queued for the new store: reads stay on the primary, so the client reads its own
    // write, and the canary counts why.
    call(
        "POST",
        &format!("{}{DB}/collections/{id}/add", proxy.url()),
        Some(records(30..31)),
    )
    .await?;
    let depth = metric(
        &proxy.admin_url(),
        "chroma_shift_journal_depth",
        &[("target", "new"), ("collection", &id)],
    )
    .await?;
    assert!(depth.unwrap_or(0.0) >= 1.0, "journal depth {depth:?}");
    assert_eq!(call("GET", &count_url, None).await?, json!(31));
    let got = call(
        "POST",
        &format!("{}{DB}/collections/{id}/get", proxy.url()),
        Some(json!({"ids": ["r30"], "include": ["documents"]})),
    )
    .await?;
    assert_eq!(got["documents"], json!(["document 30"]));
    assert_eq!(canaries(&proxy, &id, "skipped_lagging").await?, 2.0);
    assert_eq!(requests(&proxy, "old", "collection_count").await?, 2.0);
    assert_eq!(requests(&proxy, "old", "collection_get").await?, 1.0);
    assert_eq!(requests(&proxy, "new", "collection_count").await?, 3.0);

    // Shadows of a lagging collection are skipped, not reported as mismatches.
    set_reads(&proxy, 0.0, 100.0).await?;
    assert_eq!(call("GET", &count_url, None).await?, json!(31));
    assert_eq!(
        shadow_count(&proxy, &id, "collection_count", "skipped").await?,
        1.0
    );
    let lagging = metric(
        &proxy.admin_url(),
        "chroma_shift_shadow_skipped_total",
        &[("reason", "lagging")],
    )
    .await?;
    assert_eq!(lagging, Some(1.0));

    let (_, status) = proxy.admin("GET", "/admin/status", None).await?;
    assert_eq!(
        status["shadow"]["skipped"],
        json!({"lagging": 1}),
        "{status}"
    );
    assert_eq!(
        status["shadow"]["canary"],
        json!({"served": 9, "fallback": 1, "skipped_lagging": 2}),
        "{status}"
    );
    eprintln!("canary reads: {:?}", started.elapsed());
    Ok(())
}
