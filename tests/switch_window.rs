//! A switch's sync window against real Chroma servers (`[cutover] sync_window`, on by
//! default): writers upsert a small pool of ids from several tasks at once (so writes of the
//! same record overlap) while the primary is switched back and forth; at the end both stores
//! hold the same records, each record's value is one no later acknowledged write superseded
//! (per-record order kept across the flips), and every acknowledged write is there. Then the
//! target fails writes while a window is open: the switch is abandoned, nothing is lost, and
//! the next switch goes through.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{json, Value};
use shift_testkit::collection::{
    create_collection, record_body, records_with_ids, versioned_record,
};
use shift_testkit::faulty::{Fault, FaultyBackend, Hold};
use shift_testkit::scrape::wait_drained;
use shift_testkit::stores::{assert_same_records, two_stores, DEFAULT_DB};
use shift_testkit::wait::wait_until;
use shift_testkit::{http_json, Proxy};

const DB: &str = DEFAULT_DB;
/// Turns a hang into a failure; never a statement about speed.
const BOUND: Duration = Duration::from_secs(60);
/// Ids the writers share.
const POOL: u64 = 12;

/// One write: the version written, when it was sent and answered, whether it succeeded.
#[derive(Debug, Clone, Copy)]
struct Write {
    version: u64,
    sent: Instant,
    answered: Instant,
    acked: bool,
}

/// Writers upserting ids `r-0`..`r-{POOL}` of one collection, each write a new version.
struct Writers {
    acked: Arc<Mutex<BTreeMap<String, Vec<Write>>>>,
    acks: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start_writers(base: &str, collection_id: &str, count: u64) -> Writers {
    let acked = Arc::new(Mutex::new(BTreeMap::<String, Vec<Write>>::new()));
    let (acks, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let version = Arc::new(AtomicU64::new(0));
    let url = format!("{base}/collections/{collection_id}/upsert");
    let tasks = (0..count)
        .map(|w| {
            let (acked, acks, errors, stop, version, url) = (
                acked.clone(),
                acks.clone(),
                errors.clone(),
                stop.clone(),
                version.clone(),
                url.clone(),
            );
            tokio::spawn(async move {
                let mut n = w;
                while !stop.load(Ordering::Relaxed) {
                    n += 5;
                    let id = format!("r-{}", n % POOL);
                    let v = version.fetch_add(1, Ordering::Relaxed) + 1;
                    let r = versioned_record(&id, v, json!({"writer": w}));
                    let sent = Instant::now();
                    let ok = matches!(
                        http_json("POST", &url, Some(record_body(&r))).await,
                        Ok((status, _)) if status.is_success()
                    );
                    let counter = if ok { &acks } else { &errors };
                    counter.fetch_add(1, Ordering::Relaxed);
                    acked.lock().unwrap().entry(id).or_default().push(Write {
                        version: v,
                        sent,
                        answered: Instant::now(),
                        acked: ok,
                    });
                }
            })
        })
        .collect();
    Writers {
        acked,
        acks,
        errors,
        stop,
        tasks,
    }
}

impl Writers {
    async fn wait_acks(&self, more_than: u64) -> anyhow::Result<()> {
        wait_until("writes acknowledged", BOUND, || async {
            Ok(self.acks.load(Ordering::Relaxed) > more_than)
        })
        .await
    }

    async fn stop(self) -> anyhow::Result<BTreeMap<String, Vec<Write>>> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await?;
        }
        Ok(std::mem::take(&mut *self.acked.lock().unwrap()))
    }
}

/// Both stores hold the same records; every id with an acknowledged write is there; and each
/// holds a version written to it that no acknowledged write superseded: an acknowledged write
/// sent after that version's write was answered came after it, so it (or a later one) would
/// be what the store holds.
async fn check_stores(
    old: &str,
    new: &str,
    name: &str,
    written: &BTreeMap<String, Vec<Write>>,
) -> anyhow::Result<()> {
    assert_same_records(old, new).await?;
    for url in [old, new] {
        let records = records_with_ids(url, name).await?;
        for (id, writes) in written {
            let Some(held) = records
                .get(id)
                .and_then(|r| r["metadata"]["version"].as_u64())
            else {
                anyhow::ensure!(
                    writes.iter().all(|w| !w.acked),
                    "{url} lost {id}: {writes:?}"
                );
                continue;
            };
            let held_write = writes.iter().find(|w| w.version == held).ok_or_else(|| {
                anyhow::anyhow!("{url} holds version {held} of {id}, never written to it")
            })?;
            let superseded = writes
                .iter()
                .find(|w| w.acked && w.sent > held_write.answered);
            anyhow::ensure!(
                superseded.is_none(),
                "{url} holds version {held} of {id} ({held_write:?}), but {superseded:?} was sent after it was answered: per-record order broken"
            );
        }
    }
    Ok(())
}

async fn switch(proxy: &Proxy, verb: &str) -> anyhow::Result<Value> {
    let (code, report) = proxy.admin("POST", &format!("/admin/{verb}"), None).await?;
    anyhow::ensure!(code == StatusCode::OK, "{verb}: {code} {report}");
    Ok(report)
}

async fn write_mode(proxy: &Proxy) -> anyhow::Result<Value> {
    let (code, status) = proxy.admin("GET", "/admin/status", None).await?;
    anyhow::ensure!(code == StatusCode::OK, "{status}");
    Ok(status["topology"]["write_mode"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_writers_across_window_switches_leave_both_stores_identical_and_in_order(
) -> anyhow::Result<()> {
    let (old, new) = two_stores().await?;
    let proxy = Proxy::in_front_of(&old, &new).spawn().await?;
    let name = "window_overlap";
    let collection_id = create_collection(&proxy.url(), json!({"name": name})).await?;
    let base = format!("{}{DB}", proxy.url());
    let writers = start_writers(&base, &collection_id, 6);
    let mut in_flight_at_flips = 0;
    for (i, verb) in ["cutover", "rollback", "cutover", "rollback", "cutover"]
        .into_iter()
        .enumerate()
    {
        writers.wait_acks(20 * (i as u64 + 1)).await?;
        let report = switch(&proxy, verb).await?;
        assert_eq!(report["switched"], true, "{report}");
        let window = &report["window"];
        assert!(window.is_object(), "no sync window: {report}");
        assert_eq!(window["journaled"], 0, "{report}");
        in_flight_at_flips += window["in_flight_at_flip"].as_u64().unwrap_or(0);
    }
    writers.wait_acks(120).await?;
    let errors = writers.errors.load(Ordering::Relaxed);
    let acked = writers.stop().await?;
    // Back to journaled once the windows ended, with the new store primary.
    assert_eq!(write_mode(&proxy).await?, "journaled");
    wait_drained(&proxy.admin_url(), "old", BOUND).await?;
    wait_drained(&proxy.admin_url(), "new", BOUND).await?;
    check_stores(&old.url(), &new.url(), name, &acked).await?;
    eprintln!(
        "{} ids, {} acknowledged writes, {errors} errors, {in_flight_at_flips} window writes in flight at the flips",
        acked.len(),
        acked.values().map(Vec::len).sum::<usize>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_failing_writes_during_the_window_abandons_the_switch_and_loses_nothing(
) -> anyhow::Result<()> {
    let (old, new) = two_stores().await?;
    let faulty_old = FaultyBackend::proxying(&old.url()).await?;
    let faulty_new = FaultyBackend::proxying(&new.url()).await?;
    let proxy = Proxy::builder()
        .old(faulty_old.url())
        .new_store(faulty_new.url())
        // The window may stay open a while: the held write keeps it from getting ready.
        .toml("[mirror]\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\n[cutover]\ncatch_up_timeout = \"40s\"\ntimeout = \"50s\"\n")
        .spawn()
        .await?;
    let name = "window_target_fails";
    let collection_id = create_collection(&proxy.url(), json!({"name": name})).await?;
    let held_id = create_collection(&proxy.url(), json!({"name": "window_held"})).await?;
    let base = format!("{}{DB}", proxy.url());

    // A write held on the old primary before the switch: while it is in flight (not a window
    // write), the window stays open, so the test sees it open.
    let hold = Hold::new();
    faulty_old.push_write_faults([Fault::Held(hold.clone(), Box::new(Fault::Forward))]);
    let held_write = tokio::spawn({
        let url = format!("{base}/collections/{held_id}/upsert");
        let r = versioned_record("held", 1, json!({}));
        async move { http_json("POST", &url, Some(record_body(&r))).await }
    });
    hold.wait_arrived(1, BOUND).await?;

    let writers = start_writers(&base, &collection_id, 4);
    writers.wait_acks(20).await?;
    let cutover = tokio::spawn({
        let admin = proxy.admin_url();
        async move {
            shift_testkit::admin_call(
                &admin,
                shift_testkit::ADMIN_TOKEN,
                "POST",
                "/admin/cutover",
                None,
            )
            .await
        }
    });
    wait_until("the sync window to open", BOUND, || async {
        Ok(write_mode(&proxy).await? == "sync")
    })
    .await?;
    // Nothing queued for the target: the next record writes it sees are the window's (sync),
    // and it fails them.
    wait_drained(&proxy.admin_url(), "new", BOUND).await?;
    faulty_new.push_write_faults(
        (0..3).map(|_| Fault::Status(StatusCode::INTERNAL_SERVER_ERROR, "{}".to_owned())),
    );
    let (code, report) = cutover.await??;
    // Refused: 409, with the report.
    assert_eq!(code, StatusCode::CONFLICT, "{report}");
    assert_eq!(report["switched"], false, "{report}");
    let refused = report["refused"].as_str().unwrap_or_default();
    assert!(refused.contains("sync window"), "{report}");
    assert!(
        report["window"]["journaled"].as_u64() >= Some(1),
        "{report}"
    );
    assert_eq!(write_mode(&proxy).await?, "journaled");
    hold.release();
    let (status, answer) = held_write.await??;
    assert!(status.is_success(), "{answer}");

    // The next switch goes through, with a window, the writers still going.
    writers
        .wait_acks(writers.acks.load(Ordering::Relaxed) + 20)
        .await?;
    let report = switch(&proxy, "cutover").await?;
    assert_eq!(report["switched"], true, "{report}");
    assert!(report["window"].is_object(), "{report}");
    writers
        .wait_acks(writers.acks.load(Ordering::Relaxed) + 20)
        .await?;
    let acked = writers.stop().await?;
    wait_drained(&proxy.admin_url(), "old", BOUND).await?;
    wait_drained(&proxy.admin_url(), "new", BOUND).await?;
    check_stores(&old.url(), &new.url(), name, &acked).await?;
    Ok(())
}
