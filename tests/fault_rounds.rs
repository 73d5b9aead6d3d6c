//! A randomized fault run: bounded rounds of random faults under concurrent writers with
//! overlapping ids, with a cutover or a rollback in each round, against real Chroma servers.
//!
//! Faults: `kill -9` of the proxy (then a restart), SIGSTOP/SIGCONT of either store, client
//! hang-ups, and answers from a fault-injecting shim in front of each store (500 before or
//! after applying, 429 with Retry-After, connection resets, slow answers).
//!
//! Afterwards both stores must hold the same records, and every record must be explained by
//! the writes the clients made: the last acknowledged write of a record is there, unless a
//! write that overlapped it or was never acknowledged replaced it.
//!
//! The run prints its seed. Replay a failure with `CHROMA_SHIFT_FAULT_SEED=<seed>`; make it
//! longer with `CHROMA_SHIFT_FAULT_ROUNDS=<n>` (`scripts/fault-rounds.sh` runs many).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shift_config::BackendName;
use shift_testkit::knobs::{env_or, seed_from_env};
use shift_testkit::stores::two_stores;
use shift_testkit::{admin_call, http_json, Fault, FaultyBackend, Proxy, ProxyProcess};

const COLLECTIONS: &str = "/api/v2/tenants/default_tenant/databases/default_database/collections";
const NAME: &str = "rounds";
/// Ids the writers share.
const IDS: usize = 24;
const WRITERS: usize = 3;
/// Bound on the final convergence: only turns a hang into a failure.
const CONVERGE: Duration = Duration::from_secs(180);

/// One write a client made, and what it heard.
#[derive(Debug, Clone)]
struct Op {
    /// Per id: the record it leaves (`None`: deleted).
    effects: Vec<(String, Option<Value>)>,
    started: Instant,
    ended: Instant,
    acknowledged: bool,
}

fn seed() -> u64 {
    seed_from_env("CHROMA_SHIFT_FAULT_SEED")
}

fn rounds() -> usize {
    env_or("CHROMA_SHIFT_FAULT_ROUNDS", 6)
}

/// The record an upsert of `id` tagged `tag` leaves, as read back.
fn record(id: usize, tag: &str) -> Value {
    json!({
        "embedding": [id as f64, 0.5, -1.0],
        "metadata": {"tag": tag},
        "document": format!("{id} {tag}"),
        "uri": null,
    })
}

/// One writer: random upserts and deletes of shared ids until `stop`, some with a client that
/// hangs up early.
async fn writer(
    index: usize,
    seed: u64,
    url: Arc<Mutex<String>>,
    collection: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Op>>>,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let ids: Vec<usize> = {
            let mut ids: Vec<usize> = (0..rng.usize(1..=3)).map(|_| rng.usize(0..IDS)).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let tag = format!("w{index}-{n}");
        let (verb, body, effects) = if rng.u8(0..4) == 0 {
            let effects = ids.iter().map(|i| (format!("id{i}"), None)).collect();
            let body = json!({"ids": ids.iter().map(|i| format!("id{i}")).collect::<Vec<_>>()});
            ("delete", body, effects)
        } else {
            let effects = ids
                .iter()
                .map(|i| (format!("id{i}"), Some(record(*i, &tag))))
                .collect();
            let body = json!({
                "ids": ids.iter().map(|i| format!("id{i}")).collect::<Vec<_>>(),
                "embeddings": ids.iter().map(|i| vec![*i as f64, 0.5, -1.0]).collect::<Vec<_>>(),
                "metadatas": ids.iter().map(|_| json!({"tag": tag})).collect::<Vec<_>>(),
                "documents": ids.iter().map(|i| format!("{i} {tag}")).collect::<Vec<_>>(),
            });
            ("upsert", body, effects)
        };
        // One request in ten hangs up after a random moment.
        let patience = if rng.u8(0..10) == 0 {
            Duration::from_millis(rng.u64(20..400))
        } else {
            Duration::from_secs(30)
        };
        let target = format!(
            "{}{COLLECTIONS}/{collection}/{verb}",
            url.lock().unwrap().clone()
        );
        let started = Instant::now();
        let answer = tokio::time::timeout(patience, http_json("POST", &target, Some(body))).await;
        let acknowledged = matches!(&answer, Ok(Ok((status, _))) if status.is_success());
        log.lock().unwrap().push(Op {
            effects,
            started,
            ended: Instant::now(),
            acknowledged,
        });
        tokio::time::sleep(Duration::from_millis(rng.u64(0..30))).await;
    }
}

/// Every record of the collection on `url`: id -> record.
async fn records(url: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    shift_testkit::stores::records_json(url, NAME).await
}

/// Checks each record against the writes: its value must be what the last acknowledged write
/// of it left, or what a write that was not acknowledged or that overlapped that one left.
fn explained(stored: &BTreeMap<String, Value>, log: &[Op]) -> Result<(), String> {
    for i in 0..IDS {
        let id = format!("id{i}");
        let ops: Vec<(&Op, &Option<Value>)> = log
            .iter()
            .flat_map(|op| {
                op.effects
                    .iter()
                    .filter(|(e, _)| *e == id)
                    .map(move |(_, effect)| (op, effect))
            })
            .collect();
        let last_acked = ops
            .iter()
            .filter(|(op, _)| op.acknowledged)
            .max_by_key(|(op, _)| op.ended);
        let mut candidates: Vec<&Option<Value>> = match last_acked {
            Some((last, effect)) => {
                let mut c = vec![*effect];
                c.extend(
                    ops.iter()
                        .filter(|(op, _)| !op.acknowledged || op.ended > last.started)
                        .map(|(_, e)| *e),
                );
                c
            }
            None => {
                let mut c: Vec<&Option<Value>> = ops.iter().map(|(_, e)| *e).collect();
                c.push(&None);
                c
            }
        };
        candidates.dedup();
        let actual = stored.get(&id).cloned();
        if !candidates.iter().any(|c| **c == actual) {
            return Err(format!(
                "{id} holds {actual:?}, which no write explains; the last acknowledged write left {:?}",
                last_acked.map(|(_, e)| e)
            ));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_faults_with_switches_lose_no_acknowledged_write() -> anyhow::Result<()> {
    let seed = seed();
    let rounds = rounds();
    eprintln!(
        "fault_rounds: seed {seed}, {rounds} rounds (replay with CHROMA_SHIFT_FAULT_SEED={seed})"
    );
    let mut rng = fastrand::Rng::with_seed(seed);

    let (mut old, mut new) = two_stores().await?;
    let (old_url, new_url) = (old.url(), new.url());
    let (shim_old, shim_new) = tokio::try_join!(
        FaultyBackend::proxying(&old_url),
        FaultyBackend::proxying(&new_url)
    )?;
    let builder = Proxy::builder()
        .old(shim_old.url())
        .new_store(shim_new.url())
        .toml("[mirror]\nmode = \"journaled\"\nretry_initial = \"50ms\"\nretry_max = \"1s\"\nunknown_outcome_grace = \"300ms\"\n[cutover]\ntimeout = \"15s\"\nmax_lag = 100000\n");
    // A store stopped with SIGSTOP answers nothing: time out soon, as an unknown outcome.
    let env = [
        ("CHROMA_SHIFT_BACKENDS__OLD__REQUEST_TIMEOUT", "2s"),
        ("CHROMA_SHIFT_BACKENDS__NEW__REQUEST_TIMEOUT", "2s"),
    ];
    let mut proxy = ProxyProcess::start_with_env(builder, &env).await?;
    let (status, created) = http_json(
        "POST",
        &format!("{}{COLLECTIONS}", proxy.url()),
        Some(json!({"name": NAME})),
    )
    .await?;
    anyhow::ensure!(status.is_success(), "{status} {created}");
    let collection = created["id"].as_str().unwrap_or_default().to_owned();

    let url = Arc::new(Mutex::new(proxy.url()));
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            tokio::spawn(writer(
                i,
                seed.wrapping_add(i as u64 + 1),
                url.clone(),
                collection.clone(),
                stop.clone(),
                log.clone(),
            ))
        })
        .collect();

    let mut primary = BackendName::Old;
    let begun = Instant::now();
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(rng.u64(200..800))).await;
        let fault = rng.u8(0..5);
        let pause = Duration::from_millis(rng.u64(300..1500));
        let description = match fault {
            0 => {
                proxy.kill9().await?;
                tokio::time::sleep(Duration::from_millis(rng.u64(0..300))).await;
                proxy.restart().await?;
                "kill -9 of the proxy".to_owned()
            }
            1 | 2 => {
                let (store, which) = if fault == 1 {
                    (&old, "old")
                } else {
                    (&new, "new")
                };
                let pid = store
                    .pid()
                    .ok_or_else(|| anyhow::anyhow!("{which} is not running"))?;
                signal("STOP", pid)?;
                tokio::time::sleep(pause).await;
                signal("CONT", pid)?;
                format!("SIGSTOP of the {which} store for {pause:?}")
            }
            _ => {
                let shim = if rng.bool() { &shim_old } else { &shim_new };
                let faults: Vec<Fault> = (0..rng.usize(1..6))
                    .map(|_| match rng.u8(0..5) {
                        0 => Fault::Status(
                            http::StatusCode::INTERNAL_SERVER_ERROR,
                            r#"{"error":"InternalError","message":"injected"}"#.to_owned(),
                        ),
                        1 => Fault::ForwardThen(Box::new(Fault::Status(
                            http::StatusCode::SERVICE_UNAVAILABLE,
                            r#"{"error":"InternalError","message":"injected after applying"}"#
                                .to_owned(),
                        ))),
                        2 => Fault::TooManyRequests {
                            retry_after_secs: 1,
                        },
                        3 => Fault::Reset,
                        _ => Fault::SlowAnswer(Duration::from_millis(rng.u64(100..1500))),
                    })
                    .collect();
                let text = format!("{} write faults on {}", faults.len(), shim.url());
                shim.push_write_faults(faults);
                text
            }
        };
        // A cutover or a rollback, whichever changes the primary.
        let (path, to) = match primary {
            BackendName::Old => ("/admin/cutover", BackendName::New),
            BackendName::New => ("/admin/rollback", BackendName::Old),
        };
        let (status, report) = switch(&proxy.admin_url(), path).await?;
        if status.is_success() && report["switched"] == json!(true) {
            primary = to;
        }
        eprintln!(
            "round {round} (seed {seed}, {:?} in): {description}; {path} -> {status} switched={} refused={}",
            begun.elapsed(),
            report["switched"],
            report["refused"]
        );
    }

    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await?;
    }
    // Faults still queued hit the replay's writes: retried, so they only delay convergence.
    shim_old.set_default(Fault::Forward);
    shim_new.set_default(Fault::Forward);
    for store in [&mut old, &mut new] {
        if let Some(pid) = store.pid() {
            signal("CONT", pid)?;
        }
    }

    let log = log.lock().unwrap().clone();
    let acknowledged = log.iter().filter(|op| op.acknowledged).count();
    eprintln!("{} writes, {acknowledged} acknowledged", log.len());
    anyhow::ensure!(
        acknowledged > 20,
        "the load did not run: {acknowledged} acknowledged writes"
    );

    // Both stores converge, and what they hold is explained by the writes.
    let deadline = Instant::now() + CONVERGE;
    loop {
        let both = async { anyhow::Ok((records(&old.url()).await?, records(&new.url()).await?)) };
        match both.await {
            Ok((on_old, on_new)) if on_old == on_new => {
                if let Err(why) = explained(&on_old, &log) {
                    anyhow::bail!("seed {seed}: {why}");
                }
                break;
            }
            Ok((on_old, on_new)) if Instant::now() > deadline => anyhow::bail!(
                "seed {seed}: the stores did not converge\nold: {}\nnew: {}\nproxy log:\n{}",
                serde_json::to_string(&on_old)?,
                serde_json::to_string(&on_new)?,
                proxy.log_tail(60)
            ),
            Err(error) if Instant::now() > deadline => anyhow::bail!("seed {seed}: {error}"),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    Ok(())
}

/// A switch through the admin API; a proxy restarted a moment ago may not listen there yet.
async fn switch(admin: &str, path: &str) -> anyhow::Result<(http::StatusCode, Value)> {
    let mut tries = 0;
    loop {
        let answer = admin_call(
            admin,
            shift_testkit::ADMIN_TOKEN,
            "POST",
            path,
            Some(json!({"timeout": "15s"})),
        )
        .await;
        match answer {
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Sends `kill -SIG pid`.
fn signal(signal: &str, pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}
