//! Changing the topology at runtime: cutover, rollback, write mode, read policy, pause.
//!
//! A cutover (and a rollback, its mirror image), after Vitess's SwitchTraffic and gh-ost's
//! cut-over:
//! 1. refuse, saying why, when the target is unhealthy or its journal lag is above the bound;
//! 2. close the write gate: writes in flight finish, new writes are held (not rejected);
//! 3. drain the target's journal to zero within the timeout; on timeout, open the gate and
//!    leave everything as it was;
//! 4. swap primary and secondary, bump the epoch, persist; from now on writes are mirrored
//!    the other way, so a rollback loses nothing;
//! 5. open the gate: the held writes go to the new primary.
//!
//! Every change is persisted before it takes effect and restored at start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shift_config::{BackendName, MirrorMode};
use shift_proxy::gate::ClosedGate;
use shift_proxy::topology::{ReadPolicy, Topology};
use shift_proxy::writes::Mirror;
use shift_store::{MapTable, Store, StoreError};
use tokio::sync::Mutex;

use crate::alerts::Alerter;
use crate::health::HealthBoard;

/// The key of the topology in the store's `Topology` table.
const TOPOLOGY_KEY: &str = "current";

/// The topology persisted by an earlier run, if any.
pub fn restore(store: &Store) -> Result<Option<Topology>, StoreError> {
    Ok(store
        .get(MapTable::Topology, TOPOLOGY_KEY)?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
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
}

/// What the caller asks of a switch.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    /// Only say what would happen.
    #[serde(default)]
    pub dry_run: bool,
    /// Most journal entries waiting for the target; the config's bound when absent.
    #[serde(default)]
    pub max_lag: Option<u64>,
    /// How long writes may be held while the journal drains, e.g. "30s".
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Rollback only: go even though the current primary is down (its queued writes wait for
    /// it in the journal).
    #[serde(default)]
    pub force: bool,
}

/// One check before a switch.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// What a switch did, or would do.
#[derive(Debug, Clone, Serialize)]
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
    /// Journal entries applied to the target while writes were held.
    pub drained_entries: u64,
    /// Why it did not switch, when it did not.
    pub refused: Option<String>,
}

/// Settings a switch falls back on.
#[derive(Debug, Clone)]
pub struct SwitchDefaults {
    pub max_lag: u64,
    pub timeout: Duration,
}

/// Owns every change of the topology.
#[derive(Debug)]
pub struct TopologySwitch {
    mirror: Arc<Mirror>,
    health: Arc<HealthBoard>,
    alerts: Alerter,
    defaults: SwitchDefaults,
    /// One change at a time.
    changing: Mutex<()>,
    /// The gate held closed by a pause, until resume.
    pause: Mutex<Option<ClosedGate>>,
}

/// Why a topology change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    Refused(String),
    #[error("cannot persist the topology: {0}")]
    Store(#[from] StoreError),
}

impl TopologySwitch {
    pub fn new(
        mirror: Arc<Mirror>,
        health: Arc<HealthBoard>,
        alerts: Alerter,
        defaults: SwitchDefaults,
    ) -> Self {
        TopologySwitch {
            mirror,
            health,
            alerts,
            defaults,
            changing: Mutex::new(()),
            pause: Mutex::new(None),
        }
    }

    pub fn current(&self) -> Arc<Topology> {
        self.mirror.topology.load_full()
    }

    async fn persist_and_swap(&self, topology: Topology) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(&topology).unwrap_or_default();
        self.mirror
            .store
            .put(MapTable::Topology, TOPOLOGY_KEY, bytes)
            .await?;
        self.mirror.topology.store(Arc::new(topology));
        Ok(())
    }

    /// Re-applies a persisted pause at start.
    pub async fn restore_pause(&self) {
        if self.current().paused {
            *self.pause.lock().await = Some(self.mirror.gate.close().await);
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
        let _changing = self.changing.lock().await;
        let current = self.current();
        let to = direction.target();
        let from = current.primary;
        let max_lag = request.max_lag.unwrap_or(self.defaults.max_lag);
        let timeout = request.timeout.unwrap_or(self.defaults.timeout);
        let lag = self.mirror.store.lag(to);
        let target_health = self.health.get(to);
        let from_health = self.health.get(from);

        let mut checks = vec![
            Check {
                name: "direction",
                passed: from != to,
                detail: if from != to {
                    format!("{from} is primary; {to} becomes primary")
                } else {
                    format!("{to} is already primary")
                },
            },
            Check {
                name: "target_healthy",
                passed: target_health.up,
                detail: match &target_health.error {
                    None => format!("{to} answers its heartbeat"),
                    Some(e) => format!("{to} is unhealthy: {e}"),
                },
            },
            Check {
                name: "journal_lag",
                passed: lag.entries <= max_lag,
                detail: format!("{} entries wait for {to} (bound {max_lag})", lag.entries),
            },
            Check {
                name: "not_paused",
                passed: !current.paused,
                detail: if current.paused {
                    "writes are paused; resume first".to_owned()
                } else {
                    "writes flow".to_owned()
                },
            },
        ];
        if direction == Direction::Cutover || !request.force {
            checks.push(Check {
                name: "primary_healthy",
                passed: from_health.up || from == to,
                detail: if from_health.up {
                    format!("{from} answers its heartbeat")
                } else {
                    format!(
                        "{from} is unhealthy{}",
                        if direction == Direction::Rollback {
                            "; use force to roll back anyway"
                        } else {
                            ""
                        }
                    )
                },
            });
        }
        let plan = vec![
            format!("check: {to} healthy, at most {max_lag} journal entries waiting for it"),
            "close the write gate: let in-flight writes finish, hold new ones".to_owned(),
            format!("drain the journal to {to} to zero within {timeout:?}; on timeout release and change nothing"),
            format!("make {to} primary, epoch {} -> {}, persist; mirror writes to {from} from then on", current.epoch, current.epoch + 1),
            format!("release the held writes to {to}"),
        ];
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
            drained_entries: 0,
            refused: None,
        };
        if let Some(failed) = checks.iter().find(|c| !c.passed) {
            report.refused = Some(format!("{}: {}", failed.name, failed.detail));
            return Ok(report);
        }
        if request.dry_run {
            return Ok(report);
        }

        let held_since = Instant::now();
        let deadline = held_since + timeout;
        let gate = match tokio::time::timeout(timeout, self.mirror.gate.close()).await {
            Ok(gate) => gate,
            Err(_) => {
                report.refused = Some(format!(
                    "writes in flight did not finish within {timeout:?}"
                ));
                return Ok(report);
            }
        };
        let before = self.mirror.store.lag(to).entries;
        loop {
            let waiting = self.mirror.store.lag(to).entries;
            if waiting == 0 {
                break;
            }
            if Instant::now() >= deadline {
                drop(gate);
                report.writes_held_ms = held_since.elapsed().as_secs_f64() * 1000.0;
                report.refused = Some(format!(
                    "the journal to {to} did not drain within {timeout:?} ({waiting} entries left); nothing changed"
                ));
                tracing::warn!(
                    ?direction,
                    waiting,
                    "switch abandoned: the journal did not drain in time"
                );
                return Ok(report);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let next = Topology {
            epoch: current.epoch + 1,
            primary: to,
            ..(*current).clone()
        };
        if let Err(error) = self.persist_and_swap(next).await {
            drop(gate);
            return Err(error.into());
        }
        drop(gate);
        report.switched = true;
        report.epoch = current.epoch + 1;
        report.drained_entries = before;
        report.writes_held_ms = held_since.elapsed().as_secs_f64() * 1000.0;
        tracing::warn!(
            ?direction,
            primary = %to,
            epoch = report.epoch,
            writes_held_ms = report.writes_held_ms,
            "topology switched"
        );
        self.alerts.send(&format!(
            "chroma-shift {}: {to} is primary now (epoch {}); writes were held {:.0} ms",
            match direction {
                Direction::Cutover => "cutover",
                Direction::Rollback => "rollback",
            },
            report.epoch,
            report.writes_held_ms
        ));
        Ok(report)
    }

    /// Sets the write mode.
    pub async fn set_mode(&self, mode: MirrorMode) -> Result<Arc<Topology>, ChangeError> {
        let _changing = self.changing.lock().await;
        let next = Topology {
            mode,
            ..(*self.current()).clone()
        };
        self.persist_and_swap(next).await?;
        Ok(self.current())
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
        let _changing = self.changing.lock().await;
        let next = Topology {
            reads,
            ..(*self.current()).clone()
        };
        self.persist_and_swap(next).await?;
        Ok(self.current())
    }

    /// Holds every write at the gate until [`TopologySwitch::resume`].
    pub async fn pause(&self) -> Result<Arc<Topology>, ChangeError> {
        let _changing = self.changing.lock().await;
        let mut pause = self.pause.lock().await;
        if pause.is_none() {
            *pause = Some(self.mirror.gate.close().await);
        }
        let next = Topology {
            paused: true,
            ..(*self.current()).clone()
        };
        self.persist_and_swap(next).await?;
        self.alerts
            .send("chroma-shift: writes paused by an operator");
        Ok(self.current())
    }

    /// Lets held writes go.
    pub async fn resume(&self) -> Result<Arc<Topology>, ChangeError> {
        let _changing = self.changing.lock().await;
        let next = Topology {
            paused: false,
            ..(*self.current()).clone()
        };
        self.persist_and_swap(next).await?;
        self.pause.lock().await.take();
        self.alerts.send("chroma-shift: writes resumed");
        Ok(self.current())
    }
}
