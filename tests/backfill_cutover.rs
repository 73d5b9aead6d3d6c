//! A backfill running when a cutover happens, against real Chroma servers: the old store holds
//! a collection the new one lacks; the backfill copies it slowly while a client writes through
//! the proxy (new versions of the records being copied, and new records); the cutover makes the
//! new store primary midway. The backfill's batches pass the write gate, so the cutover waits
//! for the batches in flight, and the next batch finds the primary changed and stops the
//! backfill as `aborted`: nothing read from the old store is written into the new primary.
//! Checked: the new primary holds the last acknowledged version of every record the client
//! wrote, and nothing that differs from the old store; after a rollback the backfill runs
//! again to its end, and both stores hold the same records, each acknowledged write included.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{json, Value};
use shift_testkit::collection::{create_collection, records_with_ids, versioned_record};
use shift_testkit::knobs::seed_from_env;
use shift_testkit::scrape::wait_drained;
use shift_testkit::stores::{post_json, two_stores, DEFAULT_DB};
use shift_testkit::wait::wait_until;
use shift_testkit::{http_json, Proxy};

const DB: &str = DEFAULT_DB;
const COLLECTION: &str = "catalog";
/// Records on the old store before the proxy starts.
const SEEDED: u64 = 3000;
const BOUND: Duration = Duration::from_secs(60);

fn record(id: &str, v: u64) -> Value {
    versioned_record(id, v, json!({}))
}

fn body_of(records: &[Value]) -> Value {
    let field = |name: &str| records.iter().map(|r| r[name].clone()).collect::<Vec<_>>();
    json!({
        "ids": field("id"),
        "embeddings": field("embedding"),
        "documents": field("document"),
        "metadatas": field("metadata"),
        "uris": field("uri"),
    })
}

async fn backfill(proxy: &Proxy) -> anyhow::Result<Value> {
    let (code, progress) = proxy.admin("GET", "/admin/backfill", None).await?;
    anyhow::ensure!(code == StatusCode::OK, "{progress}");
    Ok(progress)
}

async fn backfill_end(proxy: &Proxy) -> anyhow::Result<Value> {
    let started = Instant::now();
    loop {
        let progress = backfill(proxy).await?;
        if progress["state"] != "running" {
            return Ok(progress);
        }
        anyhow::ensure!(
            started.elapsed() < BOUND,
            "the backfill never ended: {progress}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_cutover_during_a_backfill_never_puts_stale_data_in_the_new_primary() -> anyhow::Result<()>
{
    let seed = seed_from_env("CHROMA_SHIFT_SEED");
    eprintln!("seed {seed} (set CHROMA_SHIFT_SEED to replay)");
    let (old, new) = two_stores().await?;
    // The data from before dual writes: on the old store only.
    let old_id = create_collection(&old.url(), json!({"name": COLLECTION})).await?;
    let seeded: Vec<Value> = (0..SEEDED)
        .map(|i| record(&format!("s-{i:05}"), 0))
        .collect();
    for chunk in seeded.chunks(500) {
        post_json(
            format!("{}{DB}/collections/{old_id}/add", old.url()),
            body_of(chunk),
        )
        .await?;
    }

    let proxy = Proxy::in_front_of(&old, &new).spawn().await?;
    let base = format!("{}{DB}", proxy.url());
    let (code, started) = proxy
        .admin(
            "POST",
            "/admin/backfill",
            Some(json!({"batch_size": 50, "rate_limit": 200, "concurrency": 2})),
        )
        .await?;
    anyhow::ensure!(code == StatusCode::ACCEPTED, "{started}");
    // The proxy knows the collection once the backfill registered it.
    wait_until("the backfill to register the collection", BOUND, || async {
        Ok(backfill(&proxy).await?["collections"][0]["client_id"].is_string())
    })
    .await?;
    let client_id = backfill(&proxy).await?["collections"][0]["client_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // A client writes new versions of seeded records (ahead of the backfill too) and new ones.
    let acked: Arc<Mutex<BTreeMap<String, Value>>> = Arc::default();
    let acks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, acks, stop) = (acked.clone(), acks.clone(), stop.clone());
        let url = format!("{base}/collections/{client_id}/upsert");
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = if n.is_multiple_of(3) {
                    format!("n-{n}")
                } else {
                    format!("s-{:05}", rng.u64(0..SEEDED))
                };
                let r = record(&id, n);
                if let Ok((status, _)) =
                    http_json("POST", &url, Some(body_of(std::slice::from_ref(&r)))).await
                {
                    if status.is_success() {
                        acked.lock().unwrap().insert(id, r);
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    wait_until("the backfill to be well under way", BOUND, || async {
        Ok(backfill(&proxy).await?["done_records"]
            .as_u64()
            .unwrap_or(0)
            >= 600)
    })
    .await?;
    let (code, report) = proxy.admin("POST", "/admin/cutover", None).await?;
    assert_eq!(code, StatusCode::OK, "{report}");
    assert_eq!(report["switched"], true, "{report}");
    let at_cutover = acks.load(Ordering::Relaxed);
    let progress = backfill_end(&proxy).await?;
    assert_eq!(progress["state"], "aborted", "{progress}");
    assert!(
        progress["error"]
            .as_str()
            .unwrap_or_default()
            .contains("primary changed from old to new"),
        "{progress}"
    );
    let done = progress["done_records"].as_u64().unwrap_or(0);
    assert!(
        done < SEEDED,
        "the backfill finished before the cutover: {progress}"
    );
    wait_until("writes acknowledged by the new primary", BOUND, || async {
        Ok(acks.load(Ordering::Relaxed) >= at_cutover + 30)
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    wait_drained(&proxy.admin_url(), "old", BOUND).await?;

    // The new primary: every acknowledged write at its last version, and nothing that the
    // old store (which got every write since, through the journal) does not hold.
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let (on_old, on_new) = (
        records_with_ids(&old.url(), COLLECTION).await?,
        records_with_ids(&new.url(), COLLECTION).await?,
    );
    for (id, expected) in &acked {
        assert_eq!(on_new.get(id), Some(expected), "{id} on the new primary");
        assert_eq!(on_old.get(id), Some(expected), "{id} on the old store");
    }
    for (id, record) in &on_new {
        assert_eq!(
            on_old.get(id),
            Some(record),
            "{id}: stale on the new primary"
        );
    }

    // Back to the old store, and the backfill again, to its end: the stores are equal.
    let (code, report) = proxy.admin("POST", "/admin/rollback", None).await?;
    assert_eq!(code, StatusCode::OK, "{report}");
    let (code, started) = proxy
        .admin("POST", "/admin/backfill", Some(json!({})))
        .await?;
    anyhow::ensure!(code == StatusCode::ACCEPTED, "{started}");
    let progress = backfill_end(&proxy).await?;
    assert_eq!(progress["state"], "succeeded", "{progress}");
    wait_drained(&proxy.admin_url(), "new", BOUND).await?;
    let (on_old, on_new) = (
        records_with_ids(&old.url(), COLLECTION).await?,
        records_with_ids(&new.url(), COLLECTION).await?,
    );
    assert_eq!(
        on_old.len() as u64,
        SEEDED + acked.keys().filter(|id| id.starts_with("n-")).count() as u64
    );
    for (id, expected) in &acked {
        assert_eq!(
            on_new.get(id),
            Some(expected),
            "{id} on new after the backfill"
        );
    }
    assert_eq!(on_old, on_new, "the stores differ");
    eprintln!(
        "backfill aborted at {done}/{SEEDED} records by the cutover; {} ids written by the client",
        acked.len()
    );
    Ok(())
}
