//! Finalize under writes, against real Chroma servers and the proxy as a process: a client
//! upserts through the proxy the whole time. `ctl finalize` is refused while a check fails
//! (the old store still primary; no verify recorded); after a cutover and a passing
//! `chroma-shift verify` it is accepted, survives a restart, and is undone within its window
//! (mirroring goes on: the old store gets the writes of the window). Finalized again with a
//! short window (`[finalize] retention` set through the environment), mirroring to the old
//! store stops at the window's end: writes after it reach the new store only, and no switch
//! is allowed any more. Each step is in the audit log.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use shift_testkit::collection::create_collection;
use shift_testkit::process::run_chroma_shift;
use shift_testkit::scrape::wait_drained;
use shift_testkit::stores::{ids_by_name, post_json, two_stores, DEFAULT_DB};
use shift_testkit::wait::wait_until;
use shift_testkit::{admin_call, Proxy, ProxyProcess, ADMIN_TOKEN};

const COLLECTION: &str = "finalized";
const BOUND: Duration = Duration::from_secs(60);
/// The retention of the first finalize (undone long before) and of the last one.
const LONG: &str = "1h";
const SHORT: &str = "3s";
const RETENTION_ENV: &str = "CHROMA_SHIFT_FINALIZE__RETENTION";

/// A client upserting new records through the proxy until stopped; the ids it saw acknowledged.
struct Writer {
    acked: Arc<Mutex<Vec<String>>>,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Prefix of the ids written from now on.
    era: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(proxy_url: String, collection: String) -> Writer {
        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let paused = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let era = Arc::new(Mutex::new("before".to_owned()));
        let n = Arc::new(AtomicU64::new(0));
        let task = {
            let (acked, paused, stop, era) =
                (acked.clone(), paused.clone(), stop.clone(), era.clone());
            tokio::spawn(async move {
                let url = format!("{proxy_url}{DEFAULT_DB}/collections/{collection}/upsert");
                while !stop.load(Ordering::Relaxed) {
                    if paused.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let i = n.fetch_add(1, Ordering::Relaxed);
                    let id = format!("{}-{i:06}", era.lock().unwrap());
                    let body = json!({
                        "ids": [id],
                        "embeddings": [[i as f32, 1.0, 0.5]],
                        "documents": [format!("record {i}")],
                    });
                    // During a restart writes fail; only acknowledged ones count.
                    if post_json(url.clone(), body).await.is_ok() {
                        acked.lock().unwrap().push(id);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        Writer {
            acked,
            paused,
            stop,
            era,
            task,
        }
    }

    fn acked(&self) -> Vec<String> {
        self.acked.lock().unwrap().clone()
    }

    fn set_era(&self, era: &str) {
        *self.era.lock().unwrap() = era.to_owned();
    }

    /// Waits until `n` more writes than now were acknowledged.
    async fn wait_more(&self, n: usize) -> anyhow::Result<()> {
        let target = self.acked().len() + n;
        wait_until("the writer to go on", BOUND, || async {
            Ok(self.acked().len() >= target)
        })
        .await
    }
}

async fn ctl(proxy: &ProxyProcess, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let mut all = vec!["ctl"];
    all.extend_from_slice(args);
    run_chroma_shift(&proxy.admin_url(), ADMIN_TOKEN, &all).await
}

async fn finalize_state(proxy: &ProxyProcess) -> anyhow::Result<Value> {
    let (code, status) = admin_call(
        &proxy.admin_url(),
        ADMIN_TOKEN,
        "GET",
        "/admin/status",
        None,
    )
    .await?;
    anyhow::ensure!(code.is_success(), "{status}");
    Ok(status["finalize"].clone())
}

async fn phase(proxy: &ProxyProcess) -> anyhow::Result<String> {
    Ok(finalize_state(proxy).await?["phase"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test]
async fn finalize_is_checked_undoable_and_stops_mirroring_to_the_old_store() -> anyhow::Result<()> {
    let (old, new) = two_stores().await?;
    let builder = Proxy::in_front_of(&old, &new);
    let mut proxy = ProxyProcess::start_with_env(builder, &[(RETENTION_ENV, LONG)]).await?;
    let collection = create_collection(&proxy.url(), json!({"name": COLLECTION})).await?;
    let mut writer = Writer::start(proxy.url(), collection.clone());
    writer.wait_more(20).await?;

    // Refused while checks fail: the old store is primary, and no verify was recorded.
    let (code, out, err) = ctl(&proxy, &["finalize"]).await?;
    assert_eq!(code, 1, "refused: {out}{err}");
    assert!(err.contains("new_is_primary"), "{err}");
    assert!(err.contains("verify: no verify recorded"), "{err}");
    assert_eq!(phase(&proxy).await?, "none");

    let (code, out, err) = ctl(&proxy, &["cutover"]).await?;
    assert_eq!(code, 0, "cutover: {out}{err}");
    let (code, _, err) = ctl(&proxy, &["finalize"]).await?;
    assert_eq!(code, 1, "still refused: no verify");
    assert!(!err.contains("new_is_primary"), "new is primary now: {err}");
    assert!(err.contains("verify: no verify recorded"), "{err}");

    // A passing verify, recorded by the proxy (the writer holds still while it compares).
    writer.paused.store(true, Ordering::Relaxed);
    wait_drained(&proxy.admin_url(), "old", BOUND).await?;
    let config = proxy.config_path().display().to_string();
    let (code, out, err) = run_chroma_shift(
        &proxy.admin_url(),
        ADMIN_TOKEN,
        &["verify", "--config", &config],
    )
    .await?;
    assert_eq!(code, 0, "verify: {out}{err}");
    writer.paused.store(false, Ordering::Relaxed);
    assert_eq!(
        finalize_state(&proxy).await?["last_verify"]["matches"],
        true
    );

    // Accepted: pending, durable across a restart, then undone within the window.
    let (code, out, err) = ctl(&proxy, &["finalize"]).await?;
    assert_eq!(code, 0, "finalize: {out}{err}");
    assert!(out.contains("pending until"), "{out}");
    proxy.stop().await?;
    proxy.restart().await?;
    assert_eq!(
        phase(&proxy).await?,
        "pending",
        "the finalize survives a restart"
    );
    writer.set_era("window");
    writer.wait_more(20).await?;
    let (code, out, err) = ctl(&proxy, &["finalize", "--undo"]).await?;
    assert_eq!(code, 0, "undo: {out}{err}");
    assert!(out.contains("undone at"), "{out}");
    let (code, _, err) = ctl(&proxy, &["finalize", "--undo"]).await?;
    assert_eq!(code, 1, "nothing left to undo");
    assert!(err.contains("no finalize is pending"), "{err}");

    // Writes of the window reached the old store: nothing was lost by the undo.
    writer.wait_more(10).await?;
    writer.paused.store(true, Ordering::Relaxed);
    // A write in flight when the writer paused lands within its request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    wait_drained(&proxy.admin_url(), "old", BOUND).await?;
    let on_old: BTreeSet<String> = ids_by_name(&old.url(), COLLECTION)
        .await?
        .into_iter()
        .collect();
    let acked = writer.acked();
    let window: Vec<&String> = acked
        .iter()
        .filter(|id| id.starts_with("window-"))
        .collect();
    assert!(!window.is_empty());
    for id in &window {
        assert!(
            on_old.contains(*id),
            "{id}, written in the window, is on the old store"
        );
    }

    // Again with a short window: the state says undone after a restart, then done on time.
    proxy.stop().await?;
    proxy.set_env(&[(RETENTION_ENV, SHORT)]);
    proxy.restart().await?;
    writer.paused.store(false, Ordering::Relaxed);
    assert_eq!(phase(&proxy).await?, "undone");
    let (code, out, err) = ctl(&proxy, &["finalize"]).await?;
    assert_eq!(code, 0, "finalize again: {out}{err}");
    wait_until("the window to end", BOUND, || async {
        Ok(phase(&proxy).await? == "done")
    })
    .await?;
    let (code, status, _) = ctl(&proxy, &["status"]).await?;
    assert_eq!(code, 0);
    assert!(status.contains("finalize     done at"), "{status}");

    // From now on the old store gets nothing; the new one gets everything.
    writer.set_era("after");
    writer.wait_more(30).await?;
    writer.stop.store(true, Ordering::Relaxed);
    (&mut writer.task).await?;
    wait_drained(&proxy.admin_url(), "old", BOUND).await?;
    let on_old: BTreeSet<String> = ids_by_name(&old.url(), COLLECTION)
        .await?
        .into_iter()
        .collect();
    let on_new: BTreeSet<String> = ids_by_name(&new.url(), COLLECTION)
        .await?
        .into_iter()
        .collect();
    let acked = writer.acked();
    let after: Vec<&String> = acked.iter().filter(|id| id.starts_with("after-")).collect();
    assert!(
        after.len() >= 20,
        "{} writes after the finalize",
        after.len()
    );
    for id in &after {
        assert!(on_new.contains(*id), "{id} is on the new store");
        assert!(
            !on_old.contains(*id),
            "{id}, written after the finalize, is not on the old store"
        );
    }
    for id in &acked {
        assert!(
            on_new.contains(id),
            "every acknowledged write is on the new store: {id}"
        );
    }

    // No way back to the retired store.
    let (code, out, _) = ctl(&proxy, &["rollback"]).await?;
    assert_eq!(code, 3, "a rollback is refused: {out}");
    assert!(out.contains("not_finalized"), "{out}");
    let (code, _, err) = ctl(&proxy, &["write-mode", "sync"]).await?;
    assert_eq!(code, 1, "no sync writes to the retired store");
    assert!(err.contains("finalized"), "{err}");

    let (code, audit, _) = ctl(&proxy, &["audit"]).await?;
    assert_eq!(code, 0);
    for action in ["finalize-undo", "verify", "finalize-window-end"] {
        assert!(audit.contains(action), "{action} is audited: {audit}");
    }
    assert!(
        audit.contains("refused: finalize refused; failing checks"),
        "{audit}"
    );
    Ok(())
}
