//! The replay worker against a real journal and a scripted store ([`Fake`]), on paused time:
//! every wait below is virtual, so backoffs and `Retry-After` are measured exactly.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;

use prometheus::core::Collector;
use serde_json::json;
use shift_state::{NewEntry, StateStore};

use super::lanes::is_barrier;
use super::*;
use crate::mirror::RecordKind;

/// A store that answers as scripted, and logs every op it is sent.
#[derive(Default)]
struct Fake {
    /// Answers per lag key, in order; success once used up.
    script: Mutex<HashMap<String, VecDeque<ApplyError>>>,
    /// Lag keys whose ops are answered "retry" until removed.
    failing: Mutex<HashSet<String>>,
    /// While set, every op gets this answer.
    everything: Mutex<Option<ApplyError>>,
    /// A record id the store refuses for good (in any batch that holds it).
    refused_id: Option<String>,
    /// Every op sent.
    log: Mutex<Vec<Attempt>>,
    /// What the replay held when each op was sent.
    held: Mutex<Option<prometheus::IntGauge>>,
    held_samples: Mutex<Vec<i64>>,
}

#[derive(Debug, Clone)]
struct Attempt {
    at: Instant,
    key: String,
    ids: Vec<String>,
    ok: bool,
}

fn retry(reason: &str) -> ApplyError {
    ApplyError::Retry {
        reason: reason.to_owned(),
        retry_after: None,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fake {
    fn answer(&self, op: &MirrorOp) -> Result<(), ApplyError> {
        let key = op.lag_key();
        if let Some(error) = lock(&self.everything).clone() {
            return Err(error);
        }
        if let Some(error) = lock(&self.script)
            .get_mut(&key)
            .and_then(VecDeque::pop_front)
        {
            return Err(error);
        }
        if lock(&self.failing).contains(&key) {
            return Err(retry("scripted failure"));
        }
        if let (Some(bad), MirrorOp::Records { body, .. }) = (&self.refused_id, op) {
            if crate::mirror::ids_of(body).contains(bad) {
                return Err(ApplyError::Refused {
                    reason: format!("record {bad} refused"),
                    dimension_mismatch: false,
                });
            }
        }
        Ok(())
    }

    /// A fake that fails every write to the collection `key` until told otherwise.
    fn failing(key: &str) -> Fake {
        let fake = Fake::default();
        lock(&fake.failing).insert(key.into());
        fake
    }

    /// A fake that answers its first `times` writes to the collection `key` with a
    /// retryable 503.
    fn failing_503(key: &str, times: usize) -> Fake {
        let fake = Fake::default();
        let answers = (0..times).map(|_| retry("503")).collect();
        lock(&fake.script).insert(key.into(), answers);
        fake
    }

    fn attempts(&self, key: &str) -> Vec<Attempt> {
        lock(&self.log)
            .iter()
            .filter(|a| a.key == key)
            .cloned()
            .collect()
    }

    /// The ids applied with success, in order, over all collections.
    fn applied_ids(&self) -> Vec<String> {
        lock(&self.log)
            .iter()
            .filter(|a| a.ok)
            .flat_map(|a| a.ids.clone())
            .collect()
    }
}

impl ApplyTarget for Fake {
    fn apply(
        &self,
        _target: BackendName,
        op: &MirrorOp,
        _caller: &Caller,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send {
        let result = self.answer(op);
        if let Some(gauge) = lock(&self.held).as_ref() {
            lock(&self.held_samples).push(gauge.get());
        }
        let ids = match op {
            MirrorOp::Records { body, .. } => crate::mirror::ids_of(body),
            other => vec![format!("{other:?}")],
        };
        lock(&self.log).push(Attempt {
            at: Instant::now(),
            key: op.lag_key(),
            ids,
            ok: result.is_ok(),
        });
        std::future::ready(result)
    }

    fn max_batch(&self, _target: BackendName) -> impl Future<Output = usize> + Send {
        std::future::ready(100)
    }
}

fn settings() -> ReplaySettings {
    ReplaySettings {
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_secs(2),
        rate_limit: 0,
        max_bytes: 1024 * 1024,
        hold_until: None,
    }
}

struct Harness {
    /// The worker's view of which store is primary (the other one, unless a test says so).
    topology: crate::topology::SharedTopology,
    store: StateStore,
    _dir: tempfile::TempDir,
    fake: Arc<Fake>,
    board: Arc<ReplayBoard>,
    alerts: Arc<Mutex<Vec<String>>>,
    metrics: ProxyMetrics,
    replay_metrics: ReplayMetrics,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

const TARGET: BackendName = BackendName::New;

impl Harness {
    async fn start(fake: Fake, settings: ReplaySettings) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).await.unwrap();
        let fake = Arc::new(fake);
        let board = Arc::new(ReplayBoard::default());
        let alerts = Arc::new(Mutex::new(Vec::new()));
        let sink = alerts.clone();
        let metrics = ProxyMetrics::register(&prometheus::Registry::new()).unwrap();
        let replay_metrics = ReplayMetrics::unregistered().unwrap();
        *lock(&fake.held) = Some(
            replay_metrics
                .held_bytes
                .with_label_values(&[TARGET.as_str()]),
        );
        let topology = crate::topology::shared(crate::topology::Topology {
            epoch: 1,
            primary: TARGET.other(),
            mode: shift_config::MirrorMode::Journaled,
            reads: Default::default(),
            paused: false,
            mirror_stopped: false,
        });
        let worker = ReplayWorker {
            target: TARGET,
            store: Arc::new(store.clone()),
            applier: fake.clone(),
            metrics: metrics.clone(),
            replay_metrics: replay_metrics.clone(),
            settings,
            board: board.clone(),
            alert: Arc::new(move |text| lock(&sink).push(text)),
            topology: topology.clone(),
        };
        let (stop, stopped) = watch::channel(false);
        let task = worker.spawn(stopped);
        Harness {
            topology,
            store,
            _dir: dir,
            fake,
            board,
            alerts,
            metrics,
            replay_metrics,
            stop,
            task: Some(task),
        }
    }

    async fn append(&self, op: &MirrorOp) -> Seq {
        self.store
            .append(vec![NewEntry {
                target: TARGET,
                collection: op.lag_key(),
                payload: op.to_bytes(),
            }])
            .await
            .unwrap()[0]
    }

    /// Appends in one commit, so the worker reads them together.
    async fn append_all(&self, ops: &[MirrorOp]) -> Vec<Seq> {
        let entries = ops
            .iter()
            .map(|op| NewEntry {
                target: TARGET,
                collection: op.lag_key(),
                payload: op.to_bytes(),
            })
            .collect();
        self.store.append(entries).await.unwrap()
    }

    fn depth(&self) -> u64 {
        self.store.lag(TARGET).entries
    }

    fn depth_of(&self, key: &str) -> u64 {
        self.store
            .lag(TARGET)
            .collections
            .get(key)
            .map_or(0, |c| c.entries)
    }

    /// Waits (in virtual time) until `done` holds; a bound turns a hang into a failure.
    async fn until(&self, what: &str, done: impl Fn(&Harness) -> bool) {
        for _ in 0..100_000 {
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: not reached; attempts {:?}", lock(&self.fake.log));
    }

    fn counter(&self, counter: &prometheus::IntCounterVec, labels: &[&str]) -> u64 {
        counter.with_label_values(labels).get()
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the worker ends when told to")
                .unwrap();
        }
    }
}

fn upsert(collection: &str, ids: &[&str]) -> MirrorOp {
    MirrorOp::Records {
        kind: RecordKind::Upsert,
        collection: collection.into(),
        body: json!({"ids": ids, "embeddings": ids.iter().map(|_| [1.0]).collect::<Vec<_>>()}),
    }
}

fn gaps(attempts: &[Attempt]) -> Vec<Duration> {
    attempts.windows(2).map(|w| w[1].at - w[0].at).collect()
}

#[tokio::test(start_paused = true)]
async fn a_failure_worth_retrying_is_retried_with_growing_backoff() {
    let h = Harness::start(Fake::failing_503("a", 3), settings()).await;
    h.append(&upsert("a", &["a1"])).await;
    h.until("drained", |h| h.depth() == 0).await;

    let attempts = h.fake.attempts("a");
    assert_eq!(attempts.len(), 4, "{attempts:?}");
    assert!(attempts[3].ok);
    // Full jitter: each wait is between half and all of 100 ms, 200 ms, 400 ms.
    for (gap, wait) in gaps(&attempts).into_iter().zip([100, 200, 400]) {
        let wait = Duration::from_millis(wait);
        assert!(
            gap >= wait / 2 && gap <= wait + Duration::from_millis(2),
            "{gap:?} for {wait:?}"
        );
    }
    assert_eq!(h.counter(&h.metrics.replay_retries, &["new"]), 3);
    // Counted just after the entry leaves the journal.
    h.until("counted", |h| {
        h.counter(&h.metrics.replay_applied, &["new"]) == 1
    })
    .await;
    h.stop().await;
}

// After a recovery, nothing is applied before the hold: reconciliations wait out late commits.
#[tokio::test(start_paused = true)]
async fn nothing_is_applied_before_the_hold_after_a_recovery_ends() {
    let until = Instant::now() + Duration::from_secs(2);
    let settings = ReplaySettings {
        hold_until: Some(until),
        ..settings()
    };
    let h = Harness::start(Fake::default(), settings).await;
    h.append(&upsert("a", &["a1"])).await;
    h.until("drained", |h| h.depth() == 0).await;
    let at: Vec<Instant> = h.fake.attempts("a").iter().map(|a| a.at).collect();
    assert!(at.len() == 1 && at[0] >= until, "{at:?}");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_capped_at_retry_max() {
    let fake = Fake::default();
    let slow_down = |secs| ApplyError::Retry {
        reason: "429".into(),
        retry_after: Some(Duration::from_secs(secs)),
    };
    lock(&fake.script).insert("a".into(), VecDeque::from([slow_down(1), slow_down(3600)]));
    let h = Harness::start(fake, settings()).await;
    h.append(&upsert("a", &["a1"])).await;
    h.until("drained", |h| h.depth() == 0).await;

    let gaps = gaps(&h.fake.attempts("a"));
    assert_eq!(gaps.len(), 2);
    let close =
        |gap: Duration, want: Duration| gap >= want && gap <= want + Duration::from_millis(2);
    assert!(close(gaps[0], Duration::from_secs(1)), "{gaps:?}");
    // An hour asked, retry_max (2 s) waited.
    assert!(close(gaps[1], Duration::from_secs(2)), "{gaps:?}");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_merged_batch_is_split_and_only_the_bad_entry_is_parked() {
    let fake = Fake {
        refused_id: Some("bad".into()),
        ..Fake::default()
    };
    let h = Harness::start(fake, settings()).await;
    // Appended together, so they are merged into one request.
    let seqs = h
        .append_all(&[
            upsert("a", &["a1"]),
            upsert("a", &["bad"]),
            upsert("a", &["a3"]),
        ])
        .await;
    let bad = seqs[1];
    h.until("drained", |h| h.depth() == 0).await;

    let attempts = h.fake.attempts("a");
    assert_eq!(attempts[0].ids, ["a1", "bad", "a3"], "{attempts:?}");
    assert!(!attempts[0].ok);
    assert_eq!(h.fake.applied_ids(), ["a1", "a3"]);
    let letters = h.store.dead_letters(None, 10).unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].seq, bad);
    assert!(
        letters[0].reason.contains("record bad refused"),
        "{}",
        letters[0].reason
    );
    // Counted just after the entry is parked.
    h.until("counted", |h| {
        h.counter(&h.metrics.dead_letters, &["new", "refused"]) == 1
    })
    .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_permanent_refusal_is_parked_with_its_reason_and_later_writes_follow() {
    let fake = Fake::default();
    let not_implemented = ApplyError::Refused {
        reason: "not implemented by the target: 501".into(),
        dimension_mismatch: false,
    };
    lock(&fake.script).insert("a".into(), VecDeque::from([not_implemented]));
    let h = Harness::start(fake, settings()).await;
    let function = MirrorOp::Function {
        collection: "a".into(),
        suffix: "functions/attach".into(),
        body: json!({"name": "f"}),
    };
    let parked = h.append(&function).await;
    h.append(&upsert("a", &["a1"])).await;
    h.append(&upsert("b", &["b1"])).await;
    h.until("drained", |h| h.depth() == 0).await;

    // Across collections the order is free; within `a` the write after the parked one follows.
    let mut applied = h.fake.applied_ids();
    applied.sort();
    assert_eq!(applied, ["a1", "b1"]);
    let letters = h.store.dead_letters(None, 10).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].seq, parked);
    assert!(letters[0]
        .reason
        .starts_with("not implemented by the target"));
    // Parked at once, never retried.
    assert_eq!(h.counter(&h.metrics.replay_retries, &["new"]), 0);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_collection_waiting_for_retries_does_not_block_another() {
    let h = Harness::start(Fake::failing("a"), settings()).await;
    h.append(&upsert("a", &["a1"])).await;
    h.append(&upsert("b", &["b1"])).await;
    h.append(&MirrorOp::Records {
        kind: RecordKind::Delete,
        collection: "b".into(),
        body: json!({"ids": ["b1"]}),
    })
    .await;
    h.append(&upsert("c", &["c1"])).await;
    h.until("b and c applied", |h| h.depth() == 1).await;
    h.until("a retried a few times", |h| h.fake.attempts("a").len() >= 3)
        .await;

    assert_eq!(h.depth_of("a"), 1);
    assert!(h.fake.applied_ids().starts_with(&["b1".to_owned()]));
    let waiting = h.board.get(TARGET).waiting;
    assert!(waiting.contains_key("a"), "{waiting:?}");
    assert_eq!(
        h.replay_metrics
            .waiting_collections
            .with_label_values(&["new"])
            .get(),
        1
    );
    // The store takes `a` again: it follows.
    lock(&h.fake.failing).clear();
    h.until("drained", |h| h.depth() == 0).await;
    assert_eq!(h.fake.applied_ids().last().map(String::as_str), Some("a1"));
    assert_eq!(h.store.dead_letter_count(), 0);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_barrier_waits_for_everything_before_it_and_holds_everything_after() {
    let h = Harness::start(Fake::failing_503("a", 3), settings()).await;
    h.append(&upsert("a", &["a1"])).await;
    h.append(&MirrorOp::CreateTenant { name: "t".into() }).await;
    h.append(&upsert("b", &["b1"])).await;
    h.until("drained", |h| h.depth() == 0).await;

    let applied = h.fake.applied_ids();
    assert_eq!(applied.len(), 3, "{applied:?}");
    assert_eq!(applied[0], "a1");
    assert!(applied[1].contains("CreateTenant"), "{applied:?}");
    assert_eq!(applied[2], "b1");
    // b was not even tried before the barrier was applied.
    let log = lock(&h.fake.log).clone();
    let barrier_at = log.iter().position(|a| a.key.is_empty()).unwrap();
    let b_first = log.iter().position(|a| a.key == "b").unwrap();
    assert!(b_first > barrier_at, "{log:?}");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn unauthorized_stops_the_target_without_dead_letters_and_resumes_by_itself() {
    let fake = Fake::default();
    *lock(&fake.everything) = Some(ApplyError::Halted {
        reason: "new store answered add with 401 Unauthorized".into(),
        cause: HaltCause::Unauthorized,
    });
    let h = Harness::start(fake, settings()).await;
    for i in 0..5 {
        h.append(&upsert("a", &[&format!("a{i}")])).await;
        h.append(&upsert("b", &[&format!("b{i}")])).await;
    }
    let stopped = |h: &Harness| {
        h.replay_metrics
            .stopped
            .with_label_values(&["new", "unauthorized"])
            .get()
    };
    h.until("stopped", |h| stopped(h) == 1).await;
    h.until("probed", |h| {
        h.board.stopped(TARGET).is_some_and(|s| s.probes >= 3)
    })
    .await;
    let state = h.board.get(TARGET);
    assert_eq!(state.state, "stopped: unauthorized");
    assert!(state.stopped.unwrap().reason.contains("401"));
    assert!(
        lock(&h.alerts)[0].contains("stopped (unauthorized)"),
        "{:?}",
        lock(&h.alerts)
    );
    // Nothing parked, nothing applied, the lag still counts every write; and only one lane
    // probes (the others wait with it).
    assert_eq!(h.store.dead_letter_count(), 0);
    assert_eq!(h.depth(), 10);
    assert!(h.fake.applied_ids().is_empty());
    assert_eq!(
        lock(&h.fake.log)
            .iter()
            .map(|a| a.key.clone())
            .collect::<HashSet<_>>()
            .len(),
        1
    );

    *lock(&h.fake.everything) = None;
    h.until("drained", |h| h.depth() == 0).await;
    assert_eq!(stopped(&h), 0);
    assert_eq!(h.board.get(TARGET).state, "running");
    assert!(h.board.stopped(TARGET).is_none());
    assert!(lock(&h.alerts).iter().any(|a| a.contains("resumed")));
    assert_eq!(h.store.dead_letter_count(), 0);
    let mut applied = h.fake.applied_ids();
    applied.sort();
    assert_eq!(applied.len(), 10);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn memory_held_stays_within_the_budget_and_order_is_kept_per_collection() {
    const ENTRY: usize = 10 * 1024;
    const BUDGET: usize = 64 * 1024;
    // `b` fails for a while: its lane fills to its share and the rest waits in the journal.
    let fake = Fake::failing_503("b", 5);
    let h = Harness::start(
        fake,
        ReplaySettings {
            max_bytes: BUDGET,
            ..settings()
        },
    )
    .await;
    let document = "x".repeat(ENTRY);
    let mut expected: HashMap<&str, Vec<String>> = HashMap::new();
    for i in 0..60 {
        let key = ["a", "b", "c"][i % 3];
        let id = format!("{key}{i}");
        // Adds of one id each, each too big to merge with the next under the lane's share.
        h.append(&MirrorOp::Records {
            kind: RecordKind::Add,
            collection: key.into(),
            body: json!({"ids": [id], "documents": [document]}),
        })
        .await;
        expected.entry(key).or_default().push(id);
    }
    h.until("drained", |h| h.depth() == 0).await;

    let samples = lock(&h.fake.held_samples).clone();
    let most = samples.iter().copied().max().unwrap_or(0);
    assert!(
        most as usize <= BUDGET + ENTRY + 1024,
        "held {most} bytes with a budget of {BUDGET}"
    );
    let applied = h.fake.applied_ids();
    for (key, ids) in expected {
        let got: Vec<&String> = applied.iter().filter(|i| i.starts_with(key)).collect();
        let want: Vec<&String> = ids.iter().collect();
        assert_eq!(got, want, "order of {key}");
    }
    assert_eq!(h.store.dead_letter_count(), 0);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stop_ends_the_worker_while_a_collection_waits_and_while_stopped() {
    let h = Harness::start(Fake::failing("a"), settings()).await;
    h.append(&upsert("a", &["a1"])).await;
    h.until("retrying", |h| h.fake.attempts("a").len() >= 2)
        .await;
    h.stop().await;

    let fake = Fake::default();
    *lock(&fake.everything) = Some(ApplyError::Halted {
        reason: "403".into(),
        cause: HaltCause::Unauthorized,
    });
    let h = Harness::start(fake, settings()).await;
    h.append(&upsert("a", &["a1"])).await;
    h.until("stopped", |h| h.board.stopped(TARGET).is_some())
        .await;
    h.stop().await;
}

#[test]
fn consecutive_compatible_writes_merge() {
    let a = upsert("c", &["a"]);
    let b = upsert("c", &["b"]);
    let mut merged = a.clone();
    assert!(merge_into(&mut merged, &b, 10));
    assert_eq!(merged, upsert("c", &["a", "b"]));
    let delete = |ids: &[&str]| MirrorOp::Records {
        kind: RecordKind::Delete,
        collection: "c".into(),
        body: json!({"ids": ids}),
    };
    let mut d = delete(&["a"]);
    assert!(merge_into(&mut d, &delete(&["a", "b"]), 10));
    assert_eq!(d, delete(&["a", "a", "b"]));
}

#[test]
fn writes_that_must_stay_apart_do_not_merge() {
    let a = upsert("c", &["a"]);
    let other_kind = MirrorOp::Records {
        kind: RecordKind::Add,
        collection: "c".into(),
        body: json!({"ids": ["b"], "embeddings": [[2.0]]}),
    };
    let delete = MirrorOp::Records {
        kind: RecordKind::Delete,
        collection: "c".into(),
        body: json!({"ids": ["b"]}),
    };
    for second in [upsert("c", &["a"]), other_kind, upsert("d", &["b"]), delete] {
        let mut merged = a.clone();
        assert!(!merge_into(&mut merged, &second, 10), "{second:?}");
        assert_eq!(merged, a, "untouched");
    }
    let mut merged = a.clone();
    assert!(
        !merge_into(&mut merged, &upsert("c", &["x", "y"]), 2),
        "the batch limit"
    );
}

#[test]
fn the_board_reads_running_until_told_otherwise() {
    let board = ReplayBoard::default();
    assert_eq!(board.get(BackendName::Old).state, "running");
    assert_eq!(board.status()["new"]["state"], "running");
    let _ = ReplayMetrics::unregistered().unwrap().stopped.collect();
}

#[test]
fn barriers_are_told_from_the_serde_tag() {
    let entry = |op: &MirrorOp| JournalEntry {
        seq: Seq(1),
        target: TARGET,
        collection: op.lag_key(),
        created_ms: 0,
        payload: op.to_bytes(),
    };
    let lane_ops = [
        upsert("c", &["a"]),
        MirrorOp::Reconcile {
            collection: "c".into(),
            ids: vec!["a".into()],
        },
        MirrorOp::Function {
            collection: "c".into(),
            suffix: "functions/attach".into(),
            body: json!({}),
        },
    ];
    for op in &lane_ops {
        assert!(!is_barrier(&entry(op)), "{op:?}");
    }
    let barriers = [
        MirrorOp::EnsureCollection {
            collection: "c".into(),
        },
        MirrorOp::UpdateCollection {
            collection: "c".into(),
            body: json!({"new_name": "d"}),
        },
        MirrorOp::DeleteCollection {
            collection: Some("c".into()),
            tenant: "t".into(),
            database: "d".into(),
            name: "n".into(),
        },
        MirrorOp::ForkCollection {
            source: "c".into(),
            fork: "f".into(),
            new_name: "n".into(),
        },
        MirrorOp::CreateTenant { name: "t".into() },
    ];
    for op in &barriers {
        assert!(is_barrier(&entry(op)), "{op:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_collection_delete_waits_for_other_collections_before_a_recreate_follows() {
    let h = Harness::start(Fake::failing_503("old", 2), settings()).await;
    h.append_all(&[
        upsert("old", &["o1"]),
        MirrorOp::DeleteCollection {
            collection: Some("old".into()),
            tenant: "t".into(),
            database: "d".into(),
            name: "docs".into(),
        },
        MirrorOp::EnsureCollection {
            collection: "new".into(),
        },
        upsert("new", &["n1"]),
    ])
    .await;
    h.until("drained", |h| h.depth() == 0).await;
    let order: Vec<String> = lock(&h.fake.log)
        .iter()
        .filter(|a| a.ok)
        .map(|a| a.ids.join(","))
        .collect();
    assert_eq!(order.len(), 4, "{order:?}");
    assert_eq!(order[0], "o1");
    assert!(order[1].starts_with("DeleteCollection"), "{order:?}");
    assert!(order[2].starts_with("EnsureCollection"), "{order:?}");
    assert_eq!(order[3], "n1");
}

fn reconcile(collection: &str, ids: &[&str]) -> MirrorOp {
    MirrorOp::Reconcile {
        collection: collection.into(),
        ids: ids.iter().map(|id| (*id).to_owned()).collect(),
    }
}

/// A forced switch moves a reconciliation out of this journal while the worker retries it:
/// the copy the worker holds is never applied again.
#[tokio::test(start_paused = true)]
async fn an_entry_moved_out_of_the_journal_is_not_applied() {
    let h = Harness::start(Fake::failing("a"), settings()).await;
    let op = reconcile("a", &["x"]);
    let seq = h.append(&op).await;
    h.until("first attempt", |h| !h.fake.attempts("a").is_empty())
        .await;
    h.store
        .retarget(TARGET, vec![(seq, op.to_bytes())], TARGET.other())
        .await
        .unwrap();
    let tried = h.fake.attempts("a").len();
    lock(&h.fake.failing).remove("a");
    h.append(&upsert("b", &["b1"])).await;
    h.until("b applied", |h| {
        h.depth() == 0 && !h.fake.attempts("b").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        h.fake.attempts("a").len(),
        tried,
        "the moved entry was applied"
    );
    assert_eq!(h.store.lag(TARGET.other()).entries, 1);
    h.stop().await;
}

/// After a crash in the middle of a forced switch the store may be primary again with
/// reconciliations in its journal: they go to the other store's journal, never applied to
/// the primary; other entries wait until it is secondary again.
#[tokio::test(start_paused = true)]
async fn the_primarys_journal_is_not_applied_to_it() {
    let h = Harness::start(Fake::default(), settings()).await;
    let mut primary = (*h.topology.current()).clone();
    primary.primary = TARGET;
    h.topology.replace(Arc::new(primary.clone()));
    h.append(&reconcile("a", &["x"])).await;
    h.append(&upsert("b", &["b1"])).await;
    h.until("the reconciliation moved", |h| h.depth_of("a") == 0)
        .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(lock(&h.fake.log).is_empty(), "applied to the primary");
    assert_eq!(h.store.lag(TARGET.other()).entries, 1);
    assert_eq!(h.depth_of("b"), 1, "the write waits");

    primary.primary = TARGET.other();
    h.topology.replace(Arc::new(primary));
    h.until("b applied once secondary", |h| h.depth_of("b") == 0)
        .await;
    assert_eq!(h.fake.attempts("b").len(), 1);
    assert!(h.fake.attempts("a").is_empty());
    h.stop().await;
}
