//! A rollback while the new primary is dead, against real Chroma servers: cutover; the new
//! Chroma is killed while a client keeps writing (some writes fail); a forced rollback (and,
//! in the second test, the automatic one) switches back to the old store without waiting on
//! the dead one; writes flow to the old store; the new Chroma comes back on the same data and
//! port, and the reconciliations that waited for it in its own queue bring it in line: every
//! acknowledged write is on both stores, whole records equal, and the stores are equal.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use shift_testkit::collection::{
    create_collection, record_body, records_with_ids, versioned_record,
};
use shift_testkit::scrape::wait_drained;
use shift_testkit::stores::{two_stores, DEFAULT_DB};
use shift_testkit::wait::wait_until;
use shift_testkit::{http_json, Proxy};

const DB: &str = DEFAULT_DB;
const COLLECTION: &str = "faults";
/// Turns a hang into a failure; never a statement about speed.
const BOUND: Duration = Duration::from_secs(60);

/// One record, version `v` of id `id`: every field set, embeddings exact in f32.
fn record(id: &str, v: u64) -> Value {
    versioned_record(id, v, json!({"writer": "rollback_faults"}))
}

/// What the client saw: the last acknowledged version of each id, and counts.
#[derive(Debug, Default)]
struct Seen {
    acked: BTreeMap<String, Value>,
    /// Every id a write was attempted for.
    attempted: Vec<String>,
}

struct Writer {
    seen: Arc<Mutex<Seen>>,
    acks: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Upserts one record at a time through the proxy: mostly new ids, every fourth a new
/// version of an id written earlier; a failed write is written again once writes succeed.
fn start_writer(base: String, collection_id: String) -> Writer {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let acks = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (seen, acks, errors, stop) = (seen.clone(), acks.clone(), errors.clone(), stop.clone());
        tokio::spawn(async move {
            let url = format!("{base}/collections/{collection_id}/upsert");
            let mut n: u64 = 0;
            // Failed writes, retried (as clients do) once writes succeed again: after the
            // rollback, on the old store, while their reconciliations wait for the new one.
            let mut failed: Vec<String> = Vec::new();
            let mut retrying = false;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = if retrying && !failed.is_empty() {
                    failed.remove(0)
                } else if n.is_multiple_of(4) && n > 8 {
                    format!("w-{}", n - 7)
                } else {
                    format!("w-{n}")
                };
                let r = record(&id, n);
                seen.lock().unwrap().attempted.push(id.clone());
                match http_json("POST", &url, Some(record_body(&r))).await {
                    Ok((status, _)) if status.is_success() => {
                        seen.lock().unwrap().acked.insert(id, r);
                        acks.fetch_add(1, Ordering::Relaxed);
                        retrying = true;
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        failed.push(id);
                        retrying = false;
                    }
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    Writer {
        seen,
        acks,
        errors,
        stop,
        task,
    }
}

async fn wait_count(counter: &AtomicU64, at_least: u64, what: &str) -> anyhow::Result<()> {
    wait_until(what, BOUND, || async {
        Ok(counter.load(Ordering::Relaxed) >= at_least)
    })
    .await
}

/// How the rollback happens.
#[derive(Debug, Clone, Copy)]
enum Rollback {
    /// `POST /admin/rollback {"force": true}` once the proxy sees the new store down.
    Forced,
    /// The health monitor's, after `auto_rollback_after`.
    Automatic,
}

async fn status(proxy: &Proxy) -> anyhow::Result<Value> {
    let (code, state) = proxy.admin("GET", "/admin/status", None).await?;
    anyhow::ensure!(code == StatusCode::OK, "{state}");
    Ok(state)
}

async fn rollback_while_the_new_primary_is_dead(how: Rollback) -> anyhow::Result<()> {
    let (old, mut new) = two_stores().await?;
    let health = match how {
        Rollback::Forced => "interval = \"200ms\"\ntimeout = \"300ms\"",
        Rollback::Automatic => {
            "interval = \"200ms\"\ntimeout = \"300ms\"\nauto_rollback = true\nauto_rollback_after = \"1s\""
        }
    };
    let proxy = Proxy::in_front_of(&old, &new)
        .health_toml(health)
        // Quick replay retries: each store's worker tries again soon after the new store
        // returns, whichever journal it holds.
        .toml("[mirror]\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\n")
        .spawn()
        .await?;
    let base = format!("{}{DB}", proxy.url());
    let collection_id = create_collection(&proxy.url(), json!({"name": COLLECTION})).await?;
    let (code, report) = proxy.admin("POST", "/admin/cutover", None).await?;
    anyhow::ensure!(
        code == StatusCode::OK && report["switched"] == true,
        "{report}"
    );

    let writer = start_writer(base.clone(), collection_id.clone());
    wait_count(&writer.acks, 20, "writes acknowledged by the new primary").await?;
    new.stop().await?;
    wait_count(&writer.errors, 3, "writes failing on the dead primary").await?;
    wait_until("the proxy to see the new store down", BOUND, || async {
        Ok(status(&proxy).await?["backends"]["new"]["up"] == false)
    })
    .await?;

    // An operator's repair queued during the outage: a reconciliation for the old store that
    // reads the dead one, so the rollback must move it to the new store's queue.
    let (code, queued) = proxy
        .admin(
            "POST",
            "/admin/repair",
            Some(json!({"collection": collection_id, "ids": ["w-1", "w-2", "w-3"]})),
        )
        .await?;
    anyhow::ensure!(code == StatusCode::ACCEPTED, "{queued}");
    assert_eq!(queued["target"], "old", "{queued}");

    let report = match how {
        Rollback::Forced => {
            let (code, report) = proxy
                .admin(
                    "POST",
                    "/admin/rollback",
                    Some(json!({"force": true, "timeout": "30s"})),
                )
                .await?;
            assert_eq!(code, StatusCode::OK, "{report}");
            Some(report)
        }
        Rollback::Automatic => None,
    };
    wait_until("the old store to be primary again", BOUND, || async {
        Ok(status(&proxy).await?["topology"]["primary"] == "old")
    })
    .await?;
    if let Some(report) = &report {
        assert_eq!(report["switched"], true, "{report}");
        assert_eq!(report["to"], "old");
        // The repair, and the reconciliation of a write in flight when the store died (one
        // whose connection it refused is known not applied and needs none).
        let moved = report["moved_entries"].as_u64().unwrap_or(0);
        let noted = report["notes"].as_array().into_iter().flatten().any(|n| {
            n.as_str()
                .unwrap_or("")
                .contains("wait for new in its own queue")
        });
        assert!(moved >= 1, "the repair was not moved: {report}");
        assert!(noted, "{report}");
    }
    // Held writes were released, and writes flow to the old store, acknowledged.
    wait_until("the held writes to be released", BOUND, || async {
        Ok(status(&proxy).await?["writes_held"] == 0)
    })
    .await?;
    let acked_at_rollback = writer.acks.load(Ordering::Relaxed);
    wait_count(
        &writer.acks,
        acked_at_rollback + 20,
        "writes acknowledged by the old primary",
    )
    .await?;
    writer.stop.store(true, Ordering::Relaxed);
    writer.task.await?;

    // The new store returns on its data and port; what waited for it is applied.
    new.restart().await?;
    wait_drained(&proxy.admin_url(), "new", BOUND).await?;
    wait_drained(&proxy.admin_url(), "old", BOUND).await?;
    let state = status(&proxy).await?;
    assert_eq!(state["dead_letters"]["count"], 0, "{state}");

    let seen = std::mem::take(&mut *writer.seen.lock().unwrap());
    let (on_old, on_new) = (
        records_with_ids(&old.url(), COLLECTION).await?,
        records_with_ids(&new.url(), COLLECTION).await?,
    );
    for (id, expected) in &seen.acked {
        assert_eq!(on_old.get(id), Some(expected), "acknowledged {id} on old");
        assert_eq!(on_new.get(id), Some(expected), "acknowledged {id} on new");
    }
    assert!(
        on_old.keys().all(|id| seen.attempted.contains(id)),
        "a record nobody wrote"
    );
    assert_eq!(on_old, on_new, "the stores differ");
    let errors = writer.errors.load(Ordering::Relaxed);
    assert!(errors >= 3);
    eprintln!(
        "{how:?} rollback: {} ids acknowledged, {errors} writes failed, report {}",
        seen.acked.len(),
        report.map(|r| json!({"writes_held_ms": r["writes_held_ms"], "moved": r["moved_entries"], "drained": r["drained_entries"]})).unwrap_or_default()
    );
    Ok(())
}

#[tokio::test]
async fn a_forced_rollback_goes_through_while_the_new_primary_is_dead() -> anyhow::Result<()> {
    rollback_while_the_new_primary_is_dead(Rollback::Forced).await
}

#[tokio::test]
async fn auto_rollback_goes_through_while_the_new_primary_is_dead() -> anyhow::Result<()> {
    rollback_while_the_new_primary_is_dead(Rollback::Automatic).await
}
