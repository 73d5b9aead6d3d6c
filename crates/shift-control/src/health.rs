//! The health monitor: a heartbeat to each backend on an interval, the result kept on a
//! board that `/readyz` and the `chroma_shift_backend_up` gauge read.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use shift_config::{BackendName, HealthConfig};
use shift_proxy::{Backends, ProxyMetrics};
use tokio::time::Instant;

use crate::alerts::Alerter;
use crate::audit::{AuditLog, Outcome};
use crate::switch::{Direction, SwitchRequest, TopologySwitch};

/// The last heartbeat of one backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendHealth {
    /// The last heartbeat answered 200 in time.
    pub up: bool,
    /// When the last heartbeat finished; `None` before the first.
    #[serde(with = "unix_millis")]
    pub checked_at: Option<SystemTime>,
    /// How long the last heartbeat took, in milliseconds.
    pub latency_ms: f64,
    /// Heartbeats failed in a row.
    pub consecutive_failures: u32,
    /// When the current run of failures began.
    #[serde(with = "unix_millis")]
    pub unhealthy_since: Option<SystemTime>,
    /// Why the last heartbeat failed.
    pub error: Option<String>,
    /// When the current run of failures began, on the runtime's clock: what the outage timers
    /// measure (the wall clock above is for people, and can jump).
    #[serde(skip)]
    pub down_since: Option<Instant>,
}

impl BackendHealth {
    fn unknown() -> BackendHealth {
        BackendHealth {
            up: false,
            checked_at: None,
            latency_ms: 0.0,
            consecutive_failures: 0,
            unhealthy_since: None,
            error: Some("not checked yet".to_owned()),
            down_since: None,
        }
    }
}

/// The latest health of both backends.
#[derive(Debug)]
pub struct HealthBoard {
    old: ArcSwap<BackendHealth>,
    new: ArcSwap<BackendHealth>,
}

impl Default for HealthBoard {
    fn default() -> Self {
        HealthBoard::new()
    }
}

impl HealthBoard {
    /// A board with both backends not checked yet.
    pub fn new() -> HealthBoard {
        HealthBoard {
            old: ArcSwap::from_pointee(BackendHealth::unknown()),
            new: ArcSwap::from_pointee(BackendHealth::unknown()),
        }
    }

    /// Records one heartbeat's result: up, or down with `error` (a run of failures keeps the
    /// time it began).
    pub fn record(&self, name: BackendName, result: Result<(), String>, latency_ms: f64) {
        let previous = self.get(name);
        let health = match result {
            Ok(()) => BackendHealth {
                up: true,
                checked_at: Some(SystemTime::now()),
                latency_ms,
                consecutive_failures: 0,
                unhealthy_since: None,
                error: None,
                down_since: None,
            },
            Err(error) => BackendHealth {
                up: false,
                checked_at: Some(SystemTime::now()),
                latency_ms,
                consecutive_failures: previous.consecutive_failures.saturating_add(1),
                unhealthy_since: previous.unhealthy_since.or(Some(SystemTime::now())),
                error: Some(error),
                down_since: previous.down_since.or(Some(Instant::now())),
            },
        };
        self.slot(name).store(Arc::new(health));
    }

    fn slot(&self, name: BackendName) -> &ArcSwap<BackendHealth> {
        match name {
            BackendName::Old => &self.old,
            BackendName::New => &self.new,
        }
    }

    pub fn get(&self, name: BackendName) -> Arc<BackendHealth> {
        self.slot(name).load_full()
    }
}

/// Probes both backends on an interval.
#[derive(Debug, Clone)]
pub struct HealthMonitor {
    backends: Arc<Backends>,
    config: HealthConfig,
    metrics: ProxyMetrics,
    board: Arc<HealthBoard>,
}

impl HealthMonitor {
    pub fn new(backends: Arc<Backends>, config: HealthConfig, metrics: ProxyMetrics) -> Self {
        HealthMonitor {
            backends,
            config,
            metrics,
            board: Arc::new(HealthBoard::new()),
        }
    }

    pub fn board(&self) -> Arc<HealthBoard> {
        self.board.clone()
    }

    /// Probes both backends once, at the same time.
    pub async fn probe_all(&self) {
        tokio::join!(self.probe(BackendName::Old), self.probe(BackendName::New));
    }

    async fn probe(&self, name: BackendName) {
        let started = std::time::Instant::now();
        let result = self.backends.get(name).heartbeat(self.config.timeout).await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let previous = self.board.get(name);
        match &result {
            Ok(()) if !previous.up && previous.checked_at.is_some() => {
                tracing::info!(backend = %name, "backend is up again");
            }
            Ok(()) => {}
            Err(error) => {
                if previous.up || previous.checked_at.is_none() {
                    tracing::warn!(backend = %name, %error, "backend heartbeat failed");
                }
                self.metrics
                    .backend_errors
                    .with_label_values(&[name.as_str(), "heartbeat"])
                    .inc();
            }
        }
        let up = result.is_ok();
        self.board
            .record(name, result.map_err(|e| e.to_string()), latency_ms);
        self.metrics
            .backend_up
            .with_label_values(&[name.as_str()])
            .set(i64::from(up));
    }

    /// Probes on every interval until the task is aborted; alerts on long outages, and rolls
    /// back by itself when configured to and the new primary stays down.
    pub fn spawn(
        self,
        switch: Arc<TopologySwitch>,
        alerts: Alerter,
        audit: Arc<AuditLog>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(self.config.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut outage_alerted = [false, false];
            loop {
                ticker.tick().await;
                self.probe_all().await;
                for (slot, name) in [BackendName::Old, BackendName::New].into_iter().enumerate() {
                    let health = self.board.get(name);
                    let down_for = down_for(&health);
                    if down_for.is_some_and(|d| d >= self.config.outage_alert_after)
                        && !outage_alerted[slot]
                    {
                        outage_alerted[slot] = true;
                        alerts.send(&format!(
                            "chroma-shift: the {name} store has been unhealthy for {}s: {}",
                            down_for.unwrap_or_default().as_secs(),
                            health.error.as_deref().unwrap_or("no answer")
                        ));
                    }
                    if health.up && outage_alerted[slot] {
                        outage_alerted[slot] = false;
                        alerts.send(&format!("chroma-shift: the {name} store is healthy again"));
                    }
                }
                if self.config.auto_rollback {
                    auto_rollback(&self.config, &self.board, &switch, &alerts, &audit).await;
                }
            }
        })
    }
}

/// Rolls back by itself when the new store is primary and has been down for
/// `auto_rollback_after` while the old store answers: a forced rollback, which moves what
/// only the new store can settle to its own journal, so it goes through while the new store
/// is dead (see [`TopologySwitch::switch`]). Returns whether it switched. A try is an admin
/// action of its own: the audit log gets it with the actor [`AUTO_ROLLBACK_ACTOR`].
pub async fn auto_rollback(
    config: &HealthConfig,
    board: &HealthBoard,
    switch: &TopologySwitch,
    alerts: &Alerter,
    audit: &AuditLog,
) -> bool {
    let topology = switch.current();
    // After a finalize the old store is retired: no way back (and no refusal every probe).
    if topology.primary != BackendName::New || topology.mirror_stopped {
        return false;
    }
    let primary = board.get(BackendName::New);
    let old = board.get(BackendName::Old);
    let Some(down) = down_for(&primary) else {
        return false;
    };
    if down < config.auto_rollback_after || !old.up {
        return false;
    }
    tracing::error!(
        down_s = down.as_secs(),
        "the new primary stayed unhealthy; rolling back"
    );
    let request = SwitchRequest {
        force: true,
        ..SwitchRequest::default()
    };
    let detail = format!(
        "{} (the new store unhealthy for {}s)",
        crate::audit_layer::detail_of(&request),
        down.as_secs()
    );
    let result = switch.switch(Direction::Rollback, request).await;
    let outcome = match &result {
        Ok(report) if report.switched => Outcome::Done,
        Ok(report) => Outcome::Refused(report.refused.clone().unwrap_or_default()),
        Err(error) => Outcome::Failed(error.to_string()),
    };
    if let Err(error) = audit
        .record(AUTO_ROLLBACK_ACTOR, "rollback", detail, outcome)
        .await
    {
        tracing::error!(target: "audit", %error, "the automatic rollback is not in the audit log");
    }
    match result {
        Ok(report) if report.switched => {
            let mut text = format!(
                "chroma-shift auto-rollback: the new store was unhealthy for {}s ({}); the old store is primary again (epoch {})",
                down.as_secs(),
                primary.error.as_deref().unwrap_or("no answer"),
                report.epoch
            );
            for note in &report.notes {
                text.push_str("; ");
                text.push_str(note);
            }
            alerts.send(&text);
            true
        }
        Ok(report) => {
            alerts.send(&format!(
                "chroma-shift auto-rollback refused: {}",
                report.refused.unwrap_or_default()
            ));
            false
        }
        Err(error) => {
            alerts.send(&format!("chroma-shift auto-rollback failed: {error}"));
            false
        }
    }
}

/// Who the audit log says rolled back when the health monitor did.
pub const AUTO_ROLLBACK_ACTOR: &str = "auto-rollback";

/// How long a backend has been unhealthy, if it is, on the runtime's clock.
fn down_for(health: &BackendHealth) -> Option<std::time::Duration> {
    if health.up {
        return None;
    }
    health.down_since.map(|since| since.elapsed())
}

mod unix_millis {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn serialize<S: serde::Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            Some(d) => serializer.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let millis: Option<u64> = serde::Deserialize::deserialize(deserializer)?;
        Ok(millis.map(|ms| UNIX_EPOCH + std::time::Duration::from_millis(ms)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::switch::tests::{fixture, reconcile};

    /// An audit log in a fresh temp dir (kept while the guard lives).
    async fn audit_log() -> (AuditLog, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = shift_state::StateStore::open(dir.path()).await.unwrap();
        (AuditLog::new(store, 100), dir)
    }

    fn config(after: Duration) -> HealthConfig {
        HealthConfig {
            auto_rollback: true,
            auto_rollback_after: after,
            ..HealthConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn auto_rollback_waits_for_the_outage_to_last_then_goes_while_the_new_store_is_dead() {
        let f = fixture(BackendName::New);
        // A write failed on the dead primary: its reconciliation reads the new store.
        f.state.push(BackendName::Old, &reconcile("c", "failed"));
        let alerts = Alerter::log_only();
        let (audit, _dir) = audit_log().await;
        let config = config(Duration::from_secs(60));
        f.health
            .record(BackendName::New, Err("connection refused".into()), 1.0);
        tokio::time::advance(Duration::from_secs(59)).await;
        // Later failures keep the time the outage began.
        f.health
            .record(BackendName::New, Err("connection refused".into()), 1.0);
        assert!(!auto_rollback(&config, &f.health, &f.switch, &alerts, &audit).await);
        assert_eq!(f.topology.current().primary, BackendName::New);

        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(auto_rollback(&config, &f.health, &f.switch, &alerts, &audit).await);
        assert_eq!(f.topology.current().primary, BackendName::Old);
        assert_eq!(f.state.ops(BackendName::New), [reconcile("c", "failed")]);
        // Old is primary now: nothing more to do.
        assert!(!auto_rollback(&config, &f.health, &f.switch, &alerts, &audit).await);
        // The one try is in the audit log, by the monitor.
        let entries = audit.recent(10).unwrap();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].actor, AUTO_ROLLBACK_ACTOR);
        assert_eq!(entries[0].action, "rollback");
        assert_eq!(entries[0].outcome, Outcome::Done);
        assert!(entries[0].detail.contains("\"force\":true"), "{entries:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_auto_rollback_while_the_old_store_is_down_too_or_the_new_one_recovered() {
        let f = fixture(BackendName::New);
        let alerts = Alerter::log_only();
        let (audit, _dir) = audit_log().await;
        let config = config(Duration::from_secs(10));
        f.health.record(BackendName::New, Err("down".into()), 1.0);
        f.health.record(BackendName::Old, Err("down".into()), 1.0);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!auto_rollback(&config, &f.health, &f.switch, &alerts, &audit).await);
        f.health.record(BackendName::Old, Ok(()), 1.0);
        f.health.record(BackendName::New, Ok(()), 1.0);
        assert!(!auto_rollback(&config, &f.health, &f.switch, &alerts, &audit).await);
        // A new outage starts its own clock.
        f.health.record(BackendName::New, Err("down".into()), 1.0);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!auto_rollback(&config, &f.health, &f.switch, &alerts, &audit).await);
        assert_eq!(f.topology.current().primary, BackendName::New);
        assert!(audit.recent(10).unwrap().is_empty(), "nothing was tried");
    }

    #[tokio::test(start_paused = true)]
    async fn no_auto_rollback_to_a_retired_store_after_a_finalize() {
        let f = fixture(BackendName::New);
        let finalized = shift_proxy::topology::Topology {
            mirror_stopped: true,
            ..(*f.topology.current()).clone()
        };
        f.topology.replace(std::sync::Arc::new(finalized));
        let alerts = Alerter::log_only();
        let (audit, _dir) = audit_log().await;
        let config = config(Duration::from_secs(10));
        f.health.record(BackendName::New, Err("down".into()), 1.0);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!auto_rollback(&config, &f.health, &f.switch, &alerts, &audit).await);
        assert_eq!(f.topology.current().primary, BackendName::New);
        assert!(audit.recent(10).unwrap().is_empty(), "nothing was tried");
    }
}
