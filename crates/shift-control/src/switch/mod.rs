//! Changing the topology at runtime: cutover, rollback, write mode, read policy, pause.
//!
//! A cutover (and a rollback, its mirror image), after Vitess's SwitchTraffic and gh-ost's
//! cut-over:
//! 1. refuse, saying why, when the target is unhealthy, its journal lag is above the bound,
//!    or dead letters exist (a forced switch overrides the last two and a down primary);
//!    Then catch up ([`catch_up`]): writes still flowing, wait (within `[cutover]
//!    catch_up_timeout`) until at most `catch_up_lag` entries wait for the target, so little is
//!    left to drain with writes held; if the lag does not come down, go on anyway;
//!    With `[cutover] sync_window`, then mirror writes synchronously until nothing waits for
//!    the target ([`window`]): the writes in flight at the close need not be waited for;
//! 2. close the write gate: writes in flight finish and settle their intents (a sync window's
//!    writes go on, keeping their records' order), new writes are held (not rejected);
//!    backfill batches and repairs pass the same gate;
//! 3. forced, with the current primary down: move what only that store can settle out of the
//!    target's journal into its own ([`reads_the_source`]), so nothing waits on it;
//! 4. drain the target's journal to zero within the timeout; on timeout, move back what was
//!    moved, open the gate and leave everything as it was;
//! 5. persist the new topology (primary swapped, epoch bumped), then swap it in; from now on
//!    writes are mirrored the other way, so a rollback loses nothing;
//! 6. open the gate: the held writes go to the new primary.
//!
//! Every change runs on its own task: an admin client that hangs up cannot stop a switch
//! between persisting the topology and swapping it in (the two would then disagree until the
//! next start), nor leave a pause's gate closed with a topology that says it is open.
//! Every change is persisted before it takes effect and restored at start.
//!
//! Every wait is bounded: a change waits for the one under way, the gate, the intents and the
//! drain within its timeout, then says why it gave up and holds nothing. A write in flight
//! ends on its own: each of its backend calls (the answer's body included) is bounded by its
//! store's `request_timeout`, and one that times out is an unknown outcome (reconciled after
//! the grace), so a stalled store delays a switch by at most that, never forever.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shift_config::{BackendName, MirrorMode};
use shift_proxy::coord::WriteGate;
use shift_proxy::failpoints::failpoint;
use shift_proxy::gate::ClosedGate;
use shift_proxy::mirror::MirrorOp;
use shift_proxy::topology::{ReadPolicy, SharedTopology, Topology};
use shift_proxy::window::SyncWindow;
use shift_proxy::DataPlaneState;
use shift_state::StoreError;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::alerts::Alerter;
use crate::health::HealthBoard;

/// How often the drain is checked while writes are held (a read of in-memory counters: every
/// poll interval a drained journal goes unnoticed is a longer hold).
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// Whether applying `op` to a store reads the other store (the source), so it cannot finish
/// while the source is down. Checked against `shift_proxy::apply::Applier::apply`, variant by
/// variant (no wildcard: a new variant must be decided here):
///
/// | op                    | reads the source | what it reads                                  |
/// |-----------------------|------------------|------------------------------------------------|
/// | `Records`             | no               | the body it carries; an update reads the target's ids |
/// | `Reconcile`           | yes              | the source's records for its ids               |
/// | `EnsureCollection`    | no               | the map entry's `create` body                  |
/// | `UpdateCollection`    | no               | its body; `ensure` uses the map entry          |
/// | `DeleteCollection`    | no               | its names; the map                             |
/// | `ReconcileCollection` | yes              | the source's collection (`Resolver::fetch`)    |
/// | `ForkCollection`      | no               | the target's copy of the source collection     |
/// | `CreateTenant`, `UpdateTenant`, `CreateDatabase`, `DeleteDatabase` | no | their names and body |
/// | `Function`            | no               | its body                                       |
///
/// A reconciliation means "make the target hold what the other store holds". Moved to the
/// other store's journal it converges that store to this one instead, which is what a switch
/// away from a dead store needs: those are writes whose client was not told they succeeded
/// (acknowledged writes are `Records`, applied without reading the source).
pub fn reads_the_source(op: &MirrorOp) -> bool {
    op.reads_the_source()
}

/// Which way a switch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the old store to the new one.
    Cutover,
    /// Back to the old store.
    Rollback,
}

impl Direction {
    /// The store that becomes primary.
    pub fn target(self) -> BackendName {
        match self {
            Direction::Cutover => BackendName::New,
            Direction::Rollback => BackendName::Old,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Direction::Cutover => "cutover",
            Direction::Rollback => "rollback",
        }
    }
}

/// What the caller asks of a switch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    /// Only say what would happen.
    #[serde(default)]
    pub dry_run: bool,
    /// Most journal entries waiting for the target; the config's bound when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag: Option<u64>,
    /// How long writes may be held while the journal drains, e.g. "30s".
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Go even though the current primary is down, dead letters exist or the lag is above
    /// the bound. With the primary down, what only it can settle waits for it in its own
    /// journal (see [`reads_the_source`]).
    #[serde(default)]
    pub force: bool,
}

/// One check before a switch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: std::borrow::Cow<'static, str>,
    pub passed: bool,
    pub detail: String,
}

/// What a switch did, or would do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchReport {
    pub direction: Direction,
    pub dry_run: bool,
    /// Whether the primary changed.
    pub switched: bool,
    pub from: BackendName,
    pub to: BackendName,
    pub epoch: u64,
    pub checks: Vec<Check>,
    /// The steps, in order.
    pub plan: Vec<String>,
    /// How long writes were held, in milliseconds.
    pub writes_held_ms: f64,
    /// Of which closing the gate: the writes in flight finishing, in milliseconds.
    #[serde(default)]
    pub closing_ms: f64,
    /// When each step of the hold ended (gate closed, intents settled, drained, committed,
    /// reopened), so the hold can be read step by step.
    #[serde(default)]
    pub hold: HoldSteps,
    /// The catch-up before the gate closed, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<CatchUpReport>,
    /// The sync window before the gate closed, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowReport>,
    /// Journal entries applied to the target while writes were held.
    pub drained_entries: u64,
    /// Entries moved from the target's journal to the old primary's, because applying them
    /// needs the old primary, which is down: they are reconciled when it returns.
    pub moved_entries: u64,
    /// What an operator should know about the switch, in sentences.
    pub notes: Vec<String>,
    /// Why it did not switch, when it did not.
    pub refused: Option<String>,
}

/// Settings a switch falls back on.
#[derive(Debug, Clone)]
pub struct SwitchDefaults {
    pub max_lag: u64,
    pub timeout: Duration,
    /// The catch-up before the gate closes waits for at most this many entries to be left.
    pub catch_up_lag: u64,
    /// How long the catch-up may wait; zero turns it off.
    pub catch_up_timeout: Duration,
}

/// Owns every change of the topology.
#[derive(Debug, Clone)]
pub struct TopologySwitch {
    core: Arc<SwitchCore>,
}

/// What a change needs, shared with the task it runs on.
#[derive(Debug)]
struct SwitchCore {
    /// The live topology every request reads.
    topology: SharedTopology,
    /// The write gate a switch and a pause close.
    gate: Arc<dyn WriteGate>,
    /// The journal, the counts that gate a switch, the persisted topology.
    state: Arc<dyn SwitchState>,
    /// The last heartbeats; a switch reads them and never waits on a store itself.
    health: Arc<HealthBoard>,
    alerts: Alerter,
    defaults: SwitchDefaults,
    /// One change at a time.
    changing: Mutex<()>,
    /// The data plane's sync window, when a switch may open one (`[cutover] sync_window`).
    window: std::sync::OnceLock<Arc<SyncWindow>>,
    /// The gate held closed by a pause, until resume.
    pause: Mutex<Option<ClosedGate>>,
    /// Cluster mode: a change of primary commits through every replica ([`cluster`]).
    commit: std::sync::OnceLock<Arc<dyn crate::primary_commit::PrimaryCommit>>,
}

/// Why a topology change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    Refused(String),
    #[error("cannot persist the topology: {0}")]
    StateStore(#[from] StoreError),
}

impl TopologySwitch {
    pub fn new(
        plane: Arc<DataPlaneState>,
        health: Arc<HealthBoard>,
        alerts: Alerter,
        defaults: SwitchDefaults,
    ) -> Self {
        TopologySwitch::from_parts(
            plane.live_topology().clone(),
            plane.gate().clone(),
            Arc::new(plane.state().clone()),
            health,
            alerts,
            defaults,
        )
    }

    /// A switch over the given parts (tests use a fake [`SwitchState`]).
    pub fn from_parts(
        topology: SharedTopology,
        gate: Arc<dyn WriteGate>,
        state: Arc<dyn SwitchState>,
        health: Arc<HealthBoard>,
        alerts: Alerter,
        defaults: SwitchDefaults,
    ) -> Self {
        TopologySwitch {
            core: Arc::new(SwitchCore {
                topology,
                gate,
                state,
                health,
                alerts,
                defaults,
                changing: Mutex::new(()),
                pause: Mutex::new(None),
                commit: std::sync::OnceLock::new(),
                window: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Lets a switch open `window` (`[cutover] sync_window`) before closing the gate; only
    /// where this process's writes are all the writes (no cluster) and a target's error is
    /// journaled, not answered (`on_secondary_failure = "journal"`). Set once.
    pub fn with_sync_window(self, window: Arc<SyncWindow>) -> Self {
        let _ = self.core.window.set(window);
        self
    }

    pub fn current(&self) -> Arc<Topology> {
        self.core.topology.current()
    }

    /// Runs a change on its own task, so a caller that goes away cannot stop it halfway.
    async fn detached<T, F, Fut>(&self, change: F) -> Result<T, ChangeError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<SwitchCore>) -> Fut,
        Fut: Future<Output = Result<T, ChangeError>> + Send + 'static,
    {
        match tokio::spawn(change(self.core.clone())).await {
            Ok(result) => result,
            Err(error) => Err(ChangeError::Refused(format!(
                "the change stopped unexpectedly: {error}"
            ))),
        }
    }

    /// Re-applies a persisted pause at start.
    pub async fn restore_pause(&self) {
        if self.current().paused {
            *self.core.pause.lock().await = Some(self.core.gate.close().await);
            tracing::warn!(
                "writes are paused (restored from the last run); resume through the admin API"
            );
        }
    }

    /// A cutover or a rollback.
    pub async fn switch(
        &self,
        direction: Direction,
        request: SwitchRequest,
    ) -> Result<SwitchReport, ChangeError> {
        self.detached(move |core| async move { core.switch(direction, request).await })
            .await
    }

    /// Sets the write mode.
    pub async fn set_mode(&self, mode: MirrorMode) -> Result<Arc<Topology>, ChangeError> {
        self.change_topology(move |topology| Topology { mode, ..topology })
            .await
    }

    /// Sets the read policy.
    pub async fn set_reads(&self, reads: ReadPolicy) -> Result<Arc<Topology>, ChangeError> {
        for percent in [reads.canary_percent, reads.shadow_percent] {
            if !(0.0..=100.0).contains(&percent) {
                return Err(ChangeError::Refused(
                    "percentages must be between 0 and 100".to_owned(),
                ));
            }
        }
        self.change_topology(move |topology| Topology { reads, ..topology })
            .await
    }

    /// Persists and installs `change` of the current topology, one change at a time.
    pub(crate) async fn change_topology(
        &self,
        change: impl FnOnce(Topology) -> Topology + Send + 'static,
    ) -> Result<Arc<Topology>, ChangeError> {
        self.detached(move |core| async move {
            let _changing = core.one_change_at_a_time(core.defaults.timeout).await?;
            let next = change((*core.current()).clone());
            core.persist_and_swap(next).await?;
            Ok(core.current())
        })
        .await
    }

    /// Holds every write at the gate until [`TopologySwitch::resume`].
    pub async fn pause(&self) -> Result<Arc<Topology>, ChangeError> {
        self.detached(|core| async move {
            let limit = core.defaults.timeout;
            let _changing = core.one_change_at_a_time(limit).await?;
            let mut pause = core.pause.lock().await;
            let closed_here = pause.is_none();
            if closed_here {
                // A write whose store stalls holds its pass until its own limit: wait no longer
                // than a switch would, and say so.
                let Ok(closed) = tokio::time::timeout(limit, core.gate.close()).await else {
                    return Err(ChangeError::Refused(format!(
                        "writes in flight did not finish within {limit:?}; not paused"
                    )));
                };
                *pause = Some(closed);
            }
            let next = Topology {
                paused: true,
                ..(*core.current()).clone()
            };
            if let Err(error) = core.persist_and_swap(next).await {
                // Not persisted, not paused: a gate left closed here would hold every write
                // while the status says they flow.
                if closed_here {
                    pause.take();
                }
                return Err(error.into());
            }
            core.alerts
                .send("chroma-shift: writes paused by an operator");
            Ok(core.current())
        })
        .await
    }

    /// Lets held writes go.
    pub async fn resume(&self) -> Result<Arc<Topology>, ChangeError> {
        self.detached(|core| async move {
            let _changing = core.one_change_at_a_time(core.defaults.timeout).await?;
            let next = Topology {
                paused: false,
                ..(*core.current()).clone()
            };
            core.persist_and_swap(next).await?;
            core.pause.lock().await.take();
            core.alerts.send("chroma-shift: writes resumed");
            Ok(core.current())
        })
        .await
    }
}

impl SwitchCore {
    fn current(&self) -> Arc<Topology> {
        self.topology.current()
    }

    /// Waits (at most `limit`) for the change under way, if any, to end: every change waits
    /// within its own bound, so one stuck behind a stalled store cannot hold the next forever.
    async fn one_change_at_a_time(
        &self,
        limit: Duration,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, ChangeError> {
        tokio::time::timeout(limit, self.changing.lock())
            .await
            .map_err(|_| {
                ChangeError::Refused(format!(
                    "another topology change is still running after {limit:?}; try again"
                ))
            })
    }

    /// Persists `topology`, then swaps it in: a crash between the two restarts on the new one,
    /// which nothing has used yet (a switch holds the gate closed meanwhile).
    async fn persist_and_swap(&self, topology: Topology) -> Result<(), StoreError> {
        self.state.persist(&topology).await?;
        failpoint("switch::persisted");
        self.topology.replace(Arc::new(topology));
        Ok(())
    }

    async fn switch(
        &self,
        direction: Direction,
        request: SwitchRequest,
    ) -> Result<SwitchReport, ChangeError> {
        let timeout = request.timeout.unwrap_or(self.defaults.timeout);
        let _changing = self.one_change_at_a_time(timeout).await?;
        let current = self.current();
        let to = direction.target();
        let from = current.primary;
        let force = request.force;
        let max_lag = request.max_lag.unwrap_or(self.defaults.max_lag);
        // Forced away from a store that is down: what needs it moves to its own journal.
        let may_move = force && from != to;
        let checks = self.checks(direction, &current, &request, max_lag);
        let (catch_up_lag, catch_up_timeout) =
            (self.defaults.catch_up_lag, self.defaults.catch_up_timeout);
        let mut plan = vec![format!(
            "check: {to} healthy, at most {max_lag} journal entries waiting for it, no dead letters"
        )];
        plan.extend(catch_up::plan_step(to, catch_up_lag, catch_up_timeout));
        let opens_window = self.window.get().is_some() && !catch_up_timeout.is_zero();
        // The window waits no longer than the switch was given to close its gate: a switch
        // asked with a short timeout answers in about that time.
        let window_limit = catch_up_timeout.min(timeout);
        if opens_window {
            plan.push(window::plan_step(to, window_limit));
        }
        plan.push(
            "close the write gate: let in-flight writes finish and settle, hold new ones"
                .to_owned(),
        );
        if may_move {
            plan.push(format!(
                "if {from} is down: move the reconciliations waiting for {to} (they read {from}) to {from}'s journal; {from} is brought in line when it returns"
            ));
        }
        plan.extend([
            format!("drain the journal to {to} to zero within {timeout:?}; on timeout release and change nothing"),
            format!("make {to} primary, epoch {} -> {}, persist; mirror writes to {from} from then on", current.epoch, current.epoch + 1),
            format!("release the held writes to {to}"),
        ]);
        let mut report = SwitchReport {
            direction,
            dry_run: request.dry_run,
            switched: false,
            from,
            to,
            epoch: current.epoch,
            checks: checks.clone(),
            plan,
            writes_held_ms: 0.0,
            closing_ms: 0.0,
            hold: HoldSteps::default(),
            catch_up: None,
            window: None,
            drained_entries: 0,
            moved_entries: 0,
            notes: Vec::new(),
            refused: None,
        };
        if let Some(failed) = checks.iter().find(|c| !c.passed) {
            report.refused = Some(format!("{}: {}", failed.name, failed.detail));
            return Ok(report);
        }
        if request.dry_run {
            return Ok(report);
        }

        // Forced away from a store that is down, what reads it never drains: no catch-up.
        let from_down = may_move && !self.health.get(from).up;
        if !catch_up_timeout.is_zero() && !from_down {
            let caught = catch_up::catch_up(&*self.state, to, catch_up_lag, catch_up_timeout).await;
            report
                .notes
                .extend(catch_up::note(to, &caught, catch_up_timeout));
            report.catch_up = Some(caught);
        }
        if let Some(commit) = self.commit.get() {
            let committed = self.commit_in_cluster(&**commit, report, &current, from_down, timeout);
            return Ok(committed.await);
        }
        let mut window = match self.window.get() {
            Some(window) if opens_window && !from_down => {
                let mut open = OpenWindow::open(window, &self.topology, &*self.state, to);
                if let Err(reason) = open
                    .ready(&*self.state, &*self.gate, to, window_limit)
                    .await
                {
                    report.window = Some(open.report.clone());
                    report.refused = Some(format!("{reason}; nothing changed"));
                    return Ok(report);
                }
                // Not ready in time: it ends, and the switch goes on as without it.
                report.window = Some(open.report.clone());
                open.report.ready.then_some(open)
            }
            _ => None,
        };
        let mut hold = HoldClock::start();
        let deadline = Instant::now() + timeout;
        let Ok(gate) = tokio::time::timeout(timeout, self.gate.close()).await else {
            report.refused = Some(format!(
                "writes in flight did not finish within {timeout:?}"
            ));
            return Ok(report);
        };
        failpoint("switch::gate_closed");
        report.closing_ms = hold.stamp(|s| &mut s.gate_closed_ms);
        // Writes past the gate have settled, but a settlement that outlives its request
        // (a client that hung up) may still be journaling: wait for every intent.
        // Window writes in flight settle on their own, the window open or not.
        let window_writes = || self.window.get().map_or(0, |w| w.in_flight_total()) as u64;
        if let Err(reason) = self.settle_intents(deadline, window_writes).await {
            drop(gate);
            report.writes_held_ms = hold.stamp(|s| &mut s.reopened_ms);
            report.hold = hold.steps;
            report.refused = Some(format!("{reason}; nothing changed"));
            return Ok(report);
        }
        hold.stamp(|s| &mut s.intents_settled_ms);
        let before = self.state.waiting(to);
        let moved = match self.drain(to, from, may_move, deadline).await {
            Ok(moved) => moved,
            Err(DrainError::StateStore(error, moved)) => {
                let restored = self.move_back(from, moved.entries, to).await;
                drop(gate);
                restored?;
                return Err(error.into());
            }
            Err(DrainError::Timeout(waiting, moved)) => {
                // Back where they were: with `from` still primary, a reconciliation in its
                // journal would copy the secondary's records into the primary.
                let restored = self.move_back(from, moved.entries, to).await;
                drop(gate);
                report.writes_held_ms = hold.stamp(|s| &mut s.reopened_ms);
                report.hold = hold.steps;
                report.refused = Some(format!(
                    "the journal to {to} did not drain within {timeout:?} ({waiting} entries left); nothing changed"
                ));
                tracing::warn!(
                    ?direction,
                    waiting,
                    "switch abandoned: the journal did not drain in time"
                );
                restored?;
                return Ok(report);
            }
        };
        failpoint("switch::drained");
        hold.stamp(|s| &mut s.drained_ms);
        // `current`, read before any window opened, has the persisted mode.
        let next = Topology {
            epoch: current.epoch + 1,
            primary: to,
            ..(*current).clone()
        };
        if let Some(window) = window.as_mut() {
            window.flip();
        }
        if let Err(error) = self.persist_and_swap(next).await {
            let restored = self.move_back(from, moved.entries, to).await;
            drop(gate);
            restored?;
            return Err(error.into());
        }
        hold.stamp(|s| &mut s.committed_ms);
        drop(gate);
        report.writes_held_ms = hold.stamp(|s| &mut s.reopened_ms);
        if let Some(open) = window.take() {
            let (done, note) = open.settle(from, timeout).await;
            if done.old_primary_settled_ms.is_some() {
                hold.stamp(|s| &mut s.old_primary_settled_ms);
            }
            report.window = Some(done);
            report.notes.extend(note);
        }
        report.hold = hold.steps;
        report.switched = true;
        report.epoch = current.epoch + 1;
        report.drained_entries = before.saturating_sub(moved.entries.len() as u64);
        report.moved_entries = moved.entries.len() as u64;
        if moved.records > 0 {
            report.notes.push(format!(
                "{} reconciliations wait for {from} in its own queue: writes whose outcome on {from} was unknown when it went down; {from} is brought in line with {to} when it returns",
                moved.records
            ));
        }
        if moved.collections > 0 {
            report.notes.push(format!(
                "{} collection reconciliations wait for {from} in its own queue",
                moved.collections
            ));
        }
        tracing::warn!(
            ?direction,
            primary = %to,
            epoch = report.epoch,
            writes_held_ms = report.writes_held_ms,
            hold = %report.hold.summary(),
            moved = report.moved_entries,
            "topology switched"
        );
        let mut alert = format!(
            "chroma-shift {}: {to} is primary now (epoch {}); writes were held {:.0} ms",
            direction.verb(),
            report.epoch,
            report.writes_held_ms
        );
        for note in &report.notes {
            alert.push_str("; ");
            alert.push_str(note);
        }
        self.alerts.send(&alert);
        Ok(report)
    }

    /// The checks before a switch; `force` overrides the ones about the current primary's
    /// health, the lag bound and dead letters (and says so).
    fn checks(
        &self,
        direction: Direction,
        current: &Topology,
        request: &SwitchRequest,
        max_lag: u64,
    ) -> Vec<Check> {
        let to = direction.target();
        let from = current.primary;
        let force = request.force;
        let forced = |passed: bool, detail: String| {
            if passed || !force {
                (passed, detail)
            } else {
                (true, format!("{detail} (overridden: forced)"))
            }
        };
        let target_health = self.health.get(to);
        let from_health = self.health.get(from);
        let lag = self.state.waiting(to);
        let dead = self.state.dead_letters();
        let mut checks = vec![
            Check {
                name: "direction".into(),
                passed: from != to,
                detail: if from != to {
                    format!("{from} is primary; {to} becomes primary")
                } else {
                    format!("{to} is already primary")
                },
            },
            Check {
                name: "target_healthy".into(),
                passed: target_health.up,
                detail: match &target_health.error {
                    None => format!("{to} answers its heartbeat"),
                    Some(e) => format!("{to} is unhealthy: {e}"),
                },
            },
        ];
        if current.mirror_stopped {
            // Finalized: the secondary has missed every write since; never forced.
            checks.push(Check {
                name: "not_finalized".into(),
                passed: false,
                detail: format!(
                    "the migration is finalized: {} is retired",
                    current.secondary()
                ),
            });
        }
        let (passed, detail) = forced(
            lag <= max_lag,
            format!("{lag} entries wait for {to} (bound {max_lag})"),
        );
        checks.push(Check {
            name: "journal_lag".into(),
            passed,
            detail,
        });
        let (passed, detail) = forced(
            dead == 0,
            if dead == 0 {
                "no dead letters".to_owned()
            } else {
                format!("{dead} dead letters: writes a store refused; retry or drop them first")
            },
        );
        checks.push(Check {
            name: "no_dead_letters".into(),
            passed,
            detail,
        });
        // Informational: intents are writes in flight; the switch waits for them to settle
        // after closing the gate (within the timeout).
        let (passed, detail) = match self.state.pending_intents() {
            Ok(n) => (
                true,
                format!("{n} writes in flight; they settle before the switch"),
            ),
            Err(e) => (false, format!("cannot read the pending intents: {e}")),
        };
        checks.push(Check {
            name: "pending_intents".into(),
            passed,
            detail,
        });
        checks.push(Check {
            name: "not_paused".into(),
            passed: !current.paused,
            detail: if current.paused {
                "writes are paused; resume first".to_owned()
            } else {
                "writes flow".to_owned()
            },
        });
        let (passed, detail) = forced(
            from_health.up || from == to,
            if from_health.up {
                format!("{from} answers its heartbeat")
            } else {
                format!("{from} is unhealthy; use force to switch anyway")
            },
        );
        checks.push(Check {
            name: "primary_healthy".into(),
            passed,
            detail,
        });
        checks
    }
}

mod catch_up;
#[cfg(test)]
mod catch_up_tests;
mod cluster;
mod drain;
mod hold;
mod moves;
mod state;
#[cfg(test)]
pub(crate) mod tests;
mod window;
#[cfg(test)]
mod window_tests;

pub use catch_up::CatchUpReport;
use drain::DrainError;
use hold::HoldClock;
pub use hold::HoldSteps;

pub use state::{restore, StoreFuture, SwitchState};
use window::OpenWindow;
pub use window::WindowReport;
