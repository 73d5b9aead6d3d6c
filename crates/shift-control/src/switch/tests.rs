//! The switch's phases against an in-memory [`SwitchState`], with paused time: nothing here
//! sleeps for real, and the only clock is the runtime's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex as StdMutex;

use serde_json::json;
use shift_proxy::gate::LocalWriteGate;
use shift_proxy::mirror::RecordKind;
use shift_proxy::topology::shared;
use shift_state::{JournalEntry, MapTable, Seq, StateStore};

use super::*;

/// The journals, counts and persisted topology of a store, in memory.
#[derive(Debug, Default)]
pub(crate) struct FakeState {
    inner: StdMutex<FakeInner>,
}

#[derive(Debug, Default)]
pub(crate) struct FakeInner {
    journals: HashMap<BackendName, BTreeMap<u64, Vec<u8>>>,
    next_seq: u64,
    dead_letters: u64,
    pub(crate) pending_intents: u64,
    pub(crate) persisted: Option<Topology>,
    fail_persist: bool,
}

impl FakeState {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, FakeInner> {
        self.inner.lock().unwrap()
    }

    pub fn push(&self, target: BackendName, op: &MirrorOp) {
        let mut inner = self.lock();
        inner.next_seq += 1;
        let seq = inner.next_seq;
        inner
            .journals
            .entry(target)
            .or_default()
            .insert(seq, op.to_bytes());
    }

    pub fn ops(&self, target: BackendName) -> Vec<MirrorOp> {
        self.lock()
            .journals
            .get(&target)
            .map(|j| {
                j.values()
                    .map(|p| MirrorOp::from_bytes(p).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What a replay worker does while the other store is down: applies what does not read
    /// it, and is stuck on the rest.
    pub fn apply_readable(&self, target: BackendName) {
        let mut inner = self.lock();
        if let Some(journal) = inner.journals.get_mut(&target) {
            journal.retain(|_, payload| reads_the_source(&MirrorOp::from_bytes(payload).unwrap()));
        }
    }

    /// What a replay worker does as it goes: applies the oldest entries of `target`'s journal
    /// until only `left` remain.
    pub fn keep_last(&self, target: BackendName, left: usize) {
        let mut inner = self.lock();
        if let Some(journal) = inner.journals.get_mut(&target) {
            while journal.len() > left {
                journal.pop_first();
            }
        }
    }

    pub(crate) fn persisted(&self) -> Option<Topology> {
        self.lock().persisted.clone()
    }
}

impl SwitchState for FakeState {
    fn waiting(&self, target: BackendName) -> u64 {
        self.lock()
            .journals
            .get(&target)
            .map_or(0, |j| j.len() as u64)
    }

    fn dead_letters(&self) -> u64 {
        self.lock().dead_letters
    }

    fn pending_intents(&self) -> Result<u64, StoreError> {
        Ok(self.lock().pending_intents)
    }

    fn read(
        &self,
        target: BackendName,
        after: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        let start = after.map_or(0, |s| s.0 + 1);
        Ok(self
            .lock()
            .journals
            .get(&target)
            .map(|j| {
                j.range(start..)
                    .take(limit)
                    .map(|(seq, payload)| JournalEntry {
                        seq: Seq(*seq),
                        target,
                        collection: String::new(),
                        created_ms: 0,
                        payload: payload.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn retarget(
        &self,
        from: BackendName,
        moves: Vec<(Seq, Vec<u8>)>,
        to: BackendName,
    ) -> StoreFuture<'_, Vec<Seq>> {
        let mut inner = self.lock();
        let mut seqs = Vec::new();
        for (seq, payload) in moves {
            inner.journals.entry(from).or_default().remove(&seq.0);
            inner.next_seq += 1;
            let next = inner.next_seq;
            inner.journals.entry(to).or_default().insert(next, payload);
            seqs.push(Seq(next));
        }
        Box::pin(async move { Ok(seqs) })
    }

    fn persist(&self, topology: &Topology) -> StoreFuture<'_, ()> {
        let mut inner = self.lock();
        let result = if inner.fail_persist {
            Err(StoreError::Closed)
        } else {
            inner.persisted = Some(topology.clone());
            Ok(())
        };
        Box::pin(async move { result })
    }
}

pub(crate) struct Fixture {
    pub switch: TopologySwitch,
    pub state: Arc<FakeState>,
    pub gate: Arc<dyn WriteGate>,
    pub health: Arc<HealthBoard>,
    pub topology: SharedTopology,
}

impl Fixture {
    /// Replaces the live topology with `change` of it.
    fn change_topology(&self, change: impl FnOnce(&mut Topology)) {
        let mut topology = (*self.topology.current()).clone();
        change(&mut topology);
        self.topology.replace(Arc::new(topology));
    }

    /// Runs a switch to its end; its report.
    pub(crate) async fn run(&self, direction: Direction, request: SwitchRequest) -> SwitchReport {
        self.switch.switch(direction, request).await.unwrap()
    }

    /// Records a failed heartbeat of `backend`.
    pub(crate) fn down(&self, backend: BackendName) {
        self.health.record(backend, Err("refused".into()), 1.0);
    }
}

/// Starts a switch on its own task, as an admin request does.
pub(crate) fn spawn_switch(
    f: &Fixture,
    direction: Direction,
    request: SwitchRequest,
) -> tokio::task::JoinHandle<Result<SwitchReport, ChangeError>> {
    let switch = f.switch.clone();
    tokio::spawn(async move { switch.switch(direction, request).await })
}

/// New is the primary and old's journal holds a reconciliation: a forced rollback, started.
fn rolling_back_over_a_reconciliation() -> (
    Fixture,
    tokio::task::JoinHandle<Result<SwitchReport, ChangeError>>,
) {
    let f = fixture(BackendName::New);
    f.state.push(BackendName::Old, &reconcile("c", "x"));
    let running = spawn_switch(&f, Direction::Rollback, forced());
    (f, running)
}

/// A switch request that gives up after `seconds`.
fn within(seconds: u64) -> SwitchRequest {
    SwitchRequest {
        timeout: Some(Duration::from_secs(seconds)),
        ..SwitchRequest::default()
    }
}

/// A switch request with `force` set.
pub(crate) fn forced() -> SwitchRequest {
    SwitchRequest {
        force: true,
        ..SwitchRequest::default()
    }
}

pub(crate) fn fixture(primary: BackendName) -> Fixture {
    fixture_with(
        primary,
        SwitchDefaults {
            max_lag: 100,
            timeout: Duration::from_secs(5),
            // Off, so the phases after the gate closes are tested on their own; the catch-up
            // tests (`catch_up_tests.rs`) turn it on.
            catch_up_lag: 0,
            catch_up_timeout: Duration::ZERO,
        },
    )
}

/// A fixture whose switch falls back on `defaults`.
pub(crate) fn fixture_with(primary: BackendName, defaults: SwitchDefaults) -> Fixture {
    let state = Arc::new(FakeState::default());
    let gate: Arc<dyn WriteGate> = Arc::new(LocalWriteGate::default());
    let health = Arc::new(HealthBoard::new());
    health.record(BackendName::Old, Ok(()), 1.0);
    health.record(BackendName::New, Ok(()), 1.0);
    let topology = shared(Topology {
        epoch: 1,
        primary,
        mode: MirrorMode::Journaled,
        reads: ReadPolicy::default(),
        paused: false,
        mirror_stopped: false,
    });
    let switch = TopologySwitch::from_parts(
        topology.clone(),
        gate.clone(),
        state.clone(),
        health.clone(),
        Alerter::log_only(),
        defaults,
    );
    Fixture {
        switch,
        state,
        gate,
        health,
        topology,
    }
}

pub(crate) fn records(collection: &str, id: &str) -> MirrorOp {
    MirrorOp::Records {
        kind: RecordKind::Upsert,
        collection: collection.into(),
        body: json!({"ids": [id], "embeddings": [[1.0, 2.0]]}),
    }
}

pub(crate) fn reconcile(collection: &str, id: &str) -> MirrorOp {
    MirrorOp::Reconcile {
        collection: collection.into(),
        ids: vec![id.into()],
    }
}

/// The gate lets a write through at once.
pub(crate) async fn gate_is_open(gate: &Arc<dyn WriteGate>) -> bool {
    tokio::time::timeout(Duration::from_millis(1), gate.enter())
        .await
        .is_ok()
}

fn assert_unchanged(f: &Fixture, primary: BackendName) {
    let topology = f.topology.current();
    assert_eq!((topology.primary, topology.epoch), (primary, 1));
    assert_eq!(f.state.persisted(), None);
}

#[tokio::test(start_paused = true)]
async fn each_failed_check_refuses_the_switch_and_changes_nothing() {
    type Setup = fn(&Fixture);
    let cases: [(&str, Setup, SwitchRequest); 6] = [
        (
            "direction",
            |f| f.change_topology(|t| t.primary = BackendName::New),
            SwitchRequest::default(),
        ),
        (
            "target_healthy",
            |f| f.down(BackendName::New),
            SwitchRequest::default(),
        ),
        (
            "journal_lag",
            |f| {
                for i in 0..3 {
                    f.state
                        .push(BackendName::New, &records("c", &i.to_string()));
                }
            },
            SwitchRequest {
                max_lag: Some(2),
                ..SwitchRequest::default()
            },
        ),
        (
            "no_dead_letters",
            |f| f.state.lock().dead_letters = 1,
            SwitchRequest::default(),
        ),
        (
            "not_paused",
            |f| f.change_topology(|t| t.paused = true),
            SwitchRequest::default(),
        ),
        (
            "primary_healthy",
            |f| f.down(BackendName::Old),
            SwitchRequest::default(),
        ),
    ];
    for (name, setup, request) in cases {
        let f = fixture(BackendName::Old);
        setup(&f);
        let primary = f.topology.current().primary;
        let report = f.run(Direction::Cutover, request).await;
        assert!(!report.switched, "{name}");
        let refused = report.refused.unwrap_or_default();
        assert!(refused.starts_with(name), "{name}: {refused}");
        let check = report.checks.iter().find(|c| c.name == name).unwrap();
        assert!(!check.passed, "{name}");
        assert_eq!(f.topology.current().primary, primary, "{name}");
        assert_eq!(f.state.persisted(), None, "{name}");
        assert!(
            gate_is_open(&f.gate).await,
            "{name}: the gate stayed closed"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn force_overrides_dead_letters_lag_and_a_down_primary_but_not_a_down_target() {
    let f = fixture(BackendName::New);
    f.state.lock().dead_letters = 2;
    f.down(BackendName::New);
    let forced = forced();
    let report = f.run(Direction::Rollback, forced.clone()).await;
    assert!(report.switched, "{report:?}");
    let overridden: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.detail.contains("overridden"))
        .map(|c| c.name.as_ref())
        .collect();
    assert_eq!(overridden, ["no_dead_letters", "primary_healthy"]);

    let f = fixture(BackendName::New);
    f.down(BackendName::Old);
    let report = f.run(Direction::Rollback, forced).await;
    assert!(!report.switched);
    assert!(report.refused.unwrap().starts_with("target_healthy"));
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_says_the_plan_and_changes_nothing() {
    let f = fixture(BackendName::Old);
    f.state.push(BackendName::New, &records("c", "a"));
    let report = f
        .run(
            Direction::Cutover,
            SwitchRequest {
                dry_run: true,
                ..SwitchRequest::default()
            },
        )
        .await;
    assert!(!report.switched && report.refused.is_none());
    assert!(report.plan.len() >= 5, "{:?}", report.plan);
    assert_unchanged(&f, BackendName::Old);
    assert_eq!(f.state.waiting(BackendName::New), 1);
}

#[tokio::test(start_paused = true)]
async fn writes_are_held_while_the_journal_drains_then_go_to_the_new_primary() {
    let f = fixture(BackendName::Old);
    f.state.push(BackendName::New, &records("c", "a"));
    f.state.push(BackendName::New, &records("c", "b"));
    let running = spawn_switch(&f, Direction::Cutover, SwitchRequest::default());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Gate closed, journal not drained: a write waits, and nothing has changed yet.
    let held = {
        let gate = f.gate.clone();
        let topology = f.topology.clone();
        tokio::spawn(async move {
            let _pass = gate.enter().await;
            topology.current().primary
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(f.gate.held(), 1, "the write was not held");
    assert!(!running.is_finished());
    assert_unchanged(&f, BackendName::Old);

    // The replay applies the two entries: the switch goes on.
    f.state.apply_readable(BackendName::New);
    f.state.lock().journals.clear();
    let report = running.await.unwrap().unwrap();
    assert!(report.switched, "{report:?}");
    assert_eq!(report.drained_entries, 2);
    assert_eq!(report.epoch, 2);
    assert!(report.writes_held_ms >= 400.0, "{report:?}");
    // The hold's steps, in order: the 400 ms went to the drain.
    let h = &report.hold;
    let steps = [
        h.gate_closed_ms,
        h.intents_settled_ms,
        h.drained_ms,
        h.committed_ms,
        h.reopened_ms,
    ]
    .map(|ms| ms.expect("every step reached"));
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{h:?}");
    assert!(steps[1] < 400.0 && steps[2] >= 400.0, "{h:?}");
    assert_eq!(h.reopened_ms, Some(report.writes_held_ms));
    let persisted = f.state.persisted().expect("persisted");
    assert_eq!((persisted.primary, persisted.epoch), (BackendName::New, 2));
    assert_eq!(*f.topology.current(), persisted);
    // The held write went on, to the new primary.
    assert_eq!(held.await.unwrap(), BackendName::New);
    assert_eq!(f.gate.held(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_journal_that_does_not_drain_in_time_leaves_everything_as_it_was() {
    let f = fixture(BackendName::Old);
    f.state.push(BackendName::New, &records("c", "a"));
    let report = f.run(Direction::Cutover, within(2)).await;
    assert!(!report.switched);
    let refused = report.refused.unwrap();
    assert!(
        refused.contains("did not drain") && refused.contains("1 entries left"),
        "{refused}"
    );
    // The hold says where it stopped: settled, never drained, reopened at the limit.
    let h = &report.hold;
    assert!(h.intents_settled_ms.is_some() && h.drained_ms.is_none() && h.committed_ms.is_none());
    assert!(h.reopened_ms.is_some_and(|ms| ms >= 2000.0), "{h:?}");
    assert_unchanged(&f, BackendName::Old);
    assert_eq!(f.state.waiting(BackendName::New), 1);
    assert!(gate_is_open(&f.gate).await);
}

#[tokio::test(start_paused = true)]
async fn writes_in_flight_that_do_not_settle_in_time_abandon_the_switch() {
    let f = fixture(BackendName::Old);
    f.state.lock().pending_intents = 1;
    let report = f.run(Direction::Cutover, within(1)).await;
    assert!(!report.switched);
    assert!(report.refused.unwrap().contains("did not settle"));
    assert_unchanged(&f, BackendName::Old);
    assert!(gate_is_open(&f.gate).await);
}

/// The new primary is dead; the journal to the old store holds acknowledged writes and the
/// reconciliations of failed ones, which read the dead store.
fn dead_new_primary() -> Fixture {
    let f = fixture(BackendName::New);
    f.health
        .record(BackendName::New, Err("connection refused".into()), 1.0);
    f.state.push(BackendName::Old, &records("c", "acked-1"));
    f.state.push(BackendName::Old, &reconcile("c", "failed-1"));
    f.state.push(
        BackendName::Old,
        &MirrorOp::ReconcileCollection {
            collection: Some("d".into()),
            tenant: "t".into(),
            database: "db".into(),
            name: "n".into(),
        },
    );
    f.state.push(BackendName::Old, &records("c", "acked-2"));
    f.state.push(BackendName::Old, &reconcile("c", "failed-2"));
    f
}

#[tokio::test(start_paused = true)]
async fn a_forced_rollback_moves_what_needs_the_dead_store_to_its_own_queue() {
    let f = dead_new_primary();
    let replay = {
        let state = f.state.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                state.apply_readable(BackendName::Old);
            }
        })
    };
    let report = f.run(Direction::Rollback, forced()).await;
    replay.abort();
    assert!(report.switched, "{report:?}");
    assert_eq!(report.moved_entries, 3);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.starts_with("2 reconciliations wait for new in its own queue")),
        "{:?}",
        report.notes
    );
    assert_eq!(f.state.waiting(BackendName::Old), 0);
    let moved = f.state.ops(BackendName::New);
    assert_eq!(moved.len(), 3);
    assert!(moved.iter().all(reads_the_source), "{moved:?}");
    assert_eq!(moved[0], reconcile("c", "failed-1"));
    assert_eq!(moved[2], reconcile("c", "failed-2"));
    assert_eq!(f.topology.current().primary, BackendName::Old);
    assert!(gate_is_open(&f.gate).await);
}

#[tokio::test(start_paused = true)]
async fn a_forced_rollback_that_times_out_moves_the_reconciliations_back() {
    let f = dead_new_primary();
    // No replay: the acknowledged writes never drain.
    let report = f
        .run(
            Direction::Rollback,
            SwitchRequest {
                force: true,
                timeout: Some(Duration::from_secs(1)),
                ..SwitchRequest::default()
            },
        )
        .await;
    assert!(!report.switched);
    assert!(report.refused.unwrap().contains("2 entries left"));
    assert_eq!(
        f.state.waiting(BackendName::New),
        0,
        "moved entries left behind"
    );
    assert_eq!(f.state.waiting(BackendName::Old), 5);
    let topology = f.topology.current();
    assert_eq!((topology.primary, topology.epoch), (BackendName::New, 1));
}

#[tokio::test(start_paused = true)]
async fn a_rollback_with_both_stores_up_drains_reconciliations_where_they_are() {
    let (f, running) = rolling_back_over_a_reconciliation();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        f.state.waiting(BackendName::New),
        0,
        "moved though new is up"
    );
    f.state.lock().journals.clear();
    let report = running.await.unwrap().unwrap();
    assert!(report.switched && report.moved_entries == 0, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_goes_away_does_not_stop_a_switch_halfway() {
    let f = fixture(BackendName::Old);
    f.state.push(BackendName::New, &records("c", "a"));
    let caller = spawn_switch(&f, Direction::Cutover, SwitchRequest::default());
    tokio::time::sleep(Duration::from_millis(100)).await;
    caller.abort();
    f.state.lock().journals.clear();
    // The switch runs on: persisted and swapped in together.
    for _ in 0..100 {
        if f.state.persisted().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let persisted = f
        .state
        .persisted()
        .expect("the switch stopped with its caller");
    assert_eq!(*f.topology.current(), persisted);
    assert!(gate_is_open(&f.gate).await);
}

#[tokio::test(start_paused = true)]
async fn a_pause_that_cannot_be_persisted_leaves_the_gate_open() {
    let f = fixture(BackendName::Old);
    f.state.lock().fail_persist = true;
    assert!(f.switch.pause().await.is_err());
    assert!(!f.topology.current().paused);
    assert!(gate_is_open(&f.gate).await, "writes held while not paused");
    f.state.lock().fail_persist = false;
    assert!(f.switch.pause().await.unwrap().paused);
    assert!(!gate_is_open(&f.gate).await);
    assert!(!f.switch.resume().await.unwrap().paused);
    assert!(gate_is_open(&f.gate).await);
}

/// A write whose store stalls keeps its gate pass: every change waits for it within its own
/// bound, says why it gave up, and leaves no lock held; once the write ends, a switch goes.
#[tokio::test(start_paused = true)]
async fn a_stalled_write_in_flight_bounds_every_change_and_holds_nothing_after() {
    let f = fixture(BackendName::Old);
    let stalled = f.gate.enter().await;
    let pausing = {
        let switch = f.switch.clone();
        tokio::spawn(async move { switch.pause().await })
    };
    tokio::task::yield_now().await;
    // Behind the pause (which holds the change lock while it waits): refused in its own time.
    let behind = spawn_switch(&f, Direction::Cutover, within(1));
    let refused = behind.await.unwrap().unwrap_err().to_string();
    assert!(refused.contains("another topology change"), "{refused}");
    let refused = pausing.await.unwrap().unwrap_err().to_string();
    assert!(refused.contains("did not finish"), "{refused}");
    assert!(!f.topology.current().paused);
    let report = f.run(Direction::Cutover, within(1)).await;
    assert!(report.refused.unwrap().contains("did not finish"));
    assert_unchanged(&f, BackendName::Old);
    assert!(
        gate_is_open(&f.gate).await,
        "a refused change left the gate closed"
    );
    drop(stalled);
    assert!(f.run(Direction::Cutover, within(1)).await.switched);
}

#[test]
fn only_reconciliations_read_the_source() {
    let ops = [
        (records("c", "a"), false),
        (reconcile("c", "a"), true),
        (
            MirrorOp::EnsureCollection {
                collection: "c".into(),
            },
            false,
        ),
        (
            MirrorOp::UpdateCollection {
                collection: "c".into(),
                body: json!({}),
            },
            false,
        ),
        (
            MirrorOp::DeleteCollection {
                collection: None,
                tenant: "t".into(),
                database: "d".into(),
                name: "n".into(),
            },
            false,
        ),
        (
            MirrorOp::ReconcileCollection {
                collection: None,
                tenant: "t".into(),
                database: "d".into(),
                name: "n".into(),
            },
            true,
        ),
        (
            MirrorOp::ForkCollection {
                source: "c".into(),
                fork: "f".into(),
                new_name: "n".into(),
            },
            false,
        ),
        (MirrorOp::CreateTenant { name: "t".into() }, false),
        (
            MirrorOp::DeleteDatabase {
                tenant: "t".into(),
                database: "d".into(),
            },
            false,
        ),
    ];
    for (op, reads) in ops {
        assert_eq!(reads_the_source(&op), reads, "{op:?}");
    }
}

#[tokio::test]
async fn an_unreadable_persisted_topology_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).await.unwrap();
    assert_eq!(restore(&store).unwrap(), None);
    let topology = Topology {
        epoch: 4,
        primary: BackendName::New,
        mode: MirrorMode::Journaled,
        reads: ReadPolicy::default(),
        paused: true,
        mirror_stopped: false,
    };
    SwitchState::persist(&store, &topology).await.unwrap();
    assert_eq!(restore(&store).unwrap(), Some(topology));
    store
        .put(
            MapTable::Topology,
            state::TOPOLOGY_KEY,
            b"{\"epoch\":".to_vec(),
        )
        .await
        .unwrap();
    assert!(matches!(restore(&store), Err(StoreError::Corrupt { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_forced_switch_moves_once_the_primary_is_seen_down_during_the_drain() {
    let (f, running) = rolling_back_over_a_reconciliation();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!running.is_finished());
    assert_eq!(f.state.waiting(BackendName::New), 0);
    // The next heartbeat finds the new store dead.
    f.health
        .record(BackendName::New, Err("connection refused".into()), 1.0);
    let report = running.await.unwrap().unwrap();
    assert!(report.switched, "{report:?}");
    assert_eq!(report.moved_entries, 1);
    assert_eq!(report.drained_entries, 0);
    assert_eq!(f.state.ops(BackendName::New), [reconcile("c", "x")]);
}
