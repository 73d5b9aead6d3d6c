//! Finalize: the end of a migration. After a cutover the proxy would mirror every write to the
//! old store forever; `POST /admin/finalize` (`chroma-shift ctl finalize`) ends that.
//!
//! 1. Checks first ([`checks`]): the new store is primary, no dead letters are parked, the
//!    journal to the old store keeps up, and a passing `chroma-shift verify` was recorded
//!    recently (verify runs outside the proxy and records its result with
//!    `POST /admin/verify`, kept here with its time). Any failing check refuses the call.
//! 2. Accepted, it is *pending* for `[finalize] retention`: the old store still gets every
//!    write, so `POST /admin/finalize/undo` within the window loses nothing.
//! 3. At the window's end the topology's `mirror_stopped` is set (through the switch, persisted
//!    like every topology change): the data plane queues nothing more for the old store
//!    (`shift_proxy::retired`), writes run journaled with no canary or shadow reads, and no
//!    switch is allowed. A switch during the window (a rollback) cancels the finalize.
//!
//! The record is durable (the state store's checkpoints), shown in `/admin/status`, and every
//! call is audited by the admin API's audit layer; the end of the window is audited under the
//! actor `finalize`.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shift_config::{BackendName, FinalizeConfig, MirrorMode};
use shift_migrate::verify::VerifyReport;
use shift_proxy::replay::now_ms;
use shift_proxy::topology::{ReadPolicy, Topology};
use shift_proxy::DataPlaneState;
use shift_state::StoreError;
use tokio::sync::{watch, Mutex, Notify};

use crate::audit::{AuditLog, Outcome};
use crate::switch::{Check, TopologySwitch};

/// The state store key of the finalize record.
const RECORD_KEY: &str = "finalize/state";
/// The state store key of the last verify's result.
const VERIFY_KEY: &str = "finalize/last-verify";
/// The actor of the audit entry written when the window ends.
pub const FINALIZE_ACTOR: &str = "finalize";

/// Where a finalize stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalizePhase {
    /// Never asked.
    #[default]
    None,
    /// Accepted; mirroring to the old store stops at `until_ms`.
    Pending,
    /// Mirroring to the old store stopped at `ended_ms`.
    Done,
    /// Undone within the window (by an operator, or by a switch), at `ended_ms`.
    Undone,
}

/// The durable record of the last finalize.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalizeRecord {
    pub phase: FinalizePhase,
    /// When it was accepted (Unix milliseconds).
    pub requested_ms: Option<u64>,
    /// When the window ends (ended) and mirroring to the retired store stops.
    pub until_ms: Option<u64>,
    /// When it took effect, or was undone.
    pub ended_ms: Option<u64>,
    /// The store it retires.
    pub retired: Option<BackendName>,
    /// The topology's epoch when it was accepted: a switch during the window cancels it.
    pub epoch: Option<u64>,
    /// Why it was undone.
    pub note: Option<String>,
}

/// `GET /admin/finalize`, the answer of its POSTs, and the `finalize` section of the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinalizeStatus {
    #[serde(flatten)]
    pub record: FinalizeRecord,
    /// The checks a finalize needs, as they stand now.
    pub checks: Vec<Check>,
    /// `[finalize] retention`, in seconds.
    pub retention_s: f64,
    /// The last verify recorded.
    pub last_verify: Option<VerifyRecord>,
}

/// A verify's result, as `chroma-shift verify` records it (`POST /admin/verify`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyResult {
    /// Nothing diverged.
    pub matches: bool,
    /// The store compared against, and the one compared.
    pub source: BackendName,
    pub target: BackendName,
    /// Collections compared.
    pub collections: usize,
    /// Divergences found.
    pub divergences: usize,
    pub elapsed_seconds: f64,
}

impl From<&VerifyReport> for VerifyResult {
    fn from(report: &VerifyReport) -> VerifyResult {
        VerifyResult {
            matches: report.matches,
            source: report.source,
            target: report.target,
            collections: report.collections.len(),
            divergences: report.divergences.len(),
            elapsed_seconds: report.elapsed_seconds,
        }
    }
}

/// A verify's result as the proxy keeps it: with when it was recorded and in which epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyRecord {
    #[serde(flatten)]
    pub result: VerifyResult,
    /// When it was recorded (Unix milliseconds).
    pub at_ms: u64,
    /// The topology's epoch then.
    pub epoch: u64,
}

/// What the checks look at, read once.
#[derive(Debug, Clone)]
pub struct CheckInput {
    pub topology: Topology,
    pub dead_letters: u64,
    /// Entries waiting for the old store, and the age of the oldest (milliseconds).
    pub waiting: u64,
    pub oldest_age_ms: Option<u64>,
    pub verify: Option<VerifyRecord>,
    pub now_ms: u64,
}

/// The checks a finalize needs; it is refused unless every one passes.
pub fn checks(input: &CheckInput, config: &FinalizeConfig) -> Vec<Check> {
    let retired = BackendName::Old;
    let primary = input.topology.primary;
    let mut checks = vec![Check {
        name: "new_is_primary".into(),
        passed: primary == BackendName::New,
        detail: if primary == BackendName::New {
            "new is primary".to_owned()
        } else {
            format!("{primary} is primary: cut over to new first (chroma-shift ctl cutover)")
        },
    }];
    let max_age = config.max_lag_age.as_millis() as u64;
    let keeps_up = input.oldest_age_ms.is_none_or(|age| age <= max_age);
    checks.push(Check {
        name: "journal_lag".into(),
        passed: keeps_up,
        detail: match input.oldest_age_ms {
            None => format!("nothing waits for {retired}"),
            Some(age) => format!(
                "{} entries wait for {retired}, the oldest {:.1}s old (bound {:?})",
                input.waiting,
                age as f64 / 1000.0,
                config.max_lag_age
            ),
        },
    });
    checks.push(Check {
        name: "no_dead_letters".into(),
        passed: input.dead_letters == 0,
        detail: if input.dead_letters == 0 {
            "no dead letters".to_owned()
        } else {
            format!(
                "{} dead letters: writes a store refused; retry or drop them first",
                input.dead_letters
            )
        },
    });
    let max_age = config.verify_max_age.as_millis() as u64;
    let (passed, detail) = match &input.verify {
        None => (
            false,
            "no verify recorded: run chroma-shift verify --config ... with the admin token set"
                .to_owned(),
        ),
        Some(verify) => {
            let age = input.now_ms.saturating_sub(verify.at_ms);
            let age_text =
                humantime_serde::re::humantime::format_duration(Duration::from_secs(age / 1000));
            if !verify.result.matches {
                (
                    false,
                    format!(
                        "the last verify ({age_text} ago) found {} divergences; repair and verify again",
                        verify.result.divergences
                    ),
                )
            } else if age > max_age {
                (
                    false,
                    format!(
                        "the last passing verify is {age_text} old (bound {}); verify again",
                        humantime_serde::re::humantime::format_duration(config.verify_max_age)
                    ),
                )
            } else {
                (
                    true,
                    format!(
                        "verify passed {age_text} ago ({} collections)",
                        verify.result.collections
                    ),
                )
            }
        }
    };
    checks.push(Check {
        name: "verify".into(),
        passed,
        detail,
    });
    checks
}

/// Why a finalize call was refused.
#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    /// A check failed, or the phase does not allow the call (409).
    #[error("{0}")]
    Refused(String),
    /// The state store could not keep the record.
    #[error("cannot keep the finalize record: {0}")]
    State(#[from] StoreError),
}

/// Runs finalizes: the checks, the durable record, the end of the window.
#[derive(Debug)]
pub struct Finalizer {
    plane: Arc<DataPlaneState>,
    switch: Arc<TopologySwitch>,
    audit: Arc<AuditLog>,
    config: FinalizeConfig,
    /// One call (or the window's end) at a time.
    changing: Mutex<()>,
    /// Wakes the window's task when a finalize is accepted or undone.
    changed: Notify,
}

impl Finalizer {
    pub fn new(
        plane: Arc<DataPlaneState>,
        switch: Arc<TopologySwitch>,
        audit: Arc<AuditLog>,
        config: FinalizeConfig,
    ) -> Arc<Finalizer> {
        Arc::new(Finalizer {
            plane,
            switch,
            audit,
            config,
            changing: Mutex::new(()),
            changed: Notify::new(),
        })
    }

    fn load<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        Ok(self
            .plane
            .checkpoint(key)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    async fn save<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        // Plain values always serialize.
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.plane.save_checkpoint(key, bytes).await
    }

    /// The last finalize's record (the default one when none was asked).
    pub fn record(&self) -> Result<FinalizeRecord, StoreError> {
        Ok(self.load(RECORD_KEY)?.unwrap_or_default())
    }

    /// The last verify recorded.
    pub fn last_verify(&self) -> Result<Option<VerifyRecord>, StoreError> {
        self.load(VERIFY_KEY)
    }

    /// Keeps a verify's result with the time and epoch now.
    pub async fn record_verify(&self, result: VerifyResult) -> Result<VerifyRecord, StoreError> {
        let record = VerifyRecord {
            result,
            at_ms: now_ms(),
            epoch: self.plane.topology().epoch,
        };
        self.save(VERIFY_KEY, &record).await?;
        Ok(record)
    }

    /// The checks as they stand now.
    pub fn checks(&self) -> Result<Vec<Check>, StoreError> {
        let now = now_ms();
        let lag = self.plane.lag(BackendName::Old);
        let input = CheckInput {
            topology: (*self.plane.topology()).clone(),
            dead_letters: self.plane.dead_letter_count(),
            waiting: lag.entries,
            oldest_age_ms: lag.oldest_created_ms.map(|at| now.saturating_sub(at)),
            verify: self.last_verify()?,
            now_ms: now,
        };
        Ok(checks(&input, &self.config))
    }

    /// The record, the checks now and the last verify.
    pub fn status(&self) -> Result<FinalizeStatus, StoreError> {
        Ok(FinalizeStatus {
            record: self.record()?,
            checks: self.checks()?,
            retention_s: self.config.retention.as_secs_f64(),
            last_verify: self.last_verify()?,
        })
    }

    /// Accepts a finalize when every check passes: pending until the window ends.
    pub async fn request(&self) -> Result<FinalizeStatus, FinalizeError> {
        let _changing = self.changing.lock().await;
        let record = self.record()?;
        match record.phase {
            FinalizePhase::Pending => {
                return Err(FinalizeError::Refused(format!(
                    "a finalize is already pending until {}",
                    rfc3339(record.until_ms.unwrap_or_default())
                )))
            }
            FinalizePhase::Done => {
                return Err(FinalizeError::Refused(
                    "the migration is already finalized".to_owned(),
                ))
            }
            FinalizePhase::None | FinalizePhase::Undone => {}
        }
        let failed: Vec<String> = self
            .checks()?
            .into_iter()
            .filter(|check| !check.passed)
            .map(|check| format!("{}: {}", check.name, check.detail))
            .collect();
        if !failed.is_empty() {
            return Err(FinalizeError::Refused(format!(
                "finalize refused; failing checks: {}",
                failed.join("; ")
            )));
        }
        let now = now_ms();
        let record = FinalizeRecord {
            phase: FinalizePhase::Pending,
            requested_ms: Some(now),
            until_ms: Some(now.saturating_add(self.config.retention.as_millis() as u64)),
            ended_ms: None,
            retired: Some(BackendName::Old),
            epoch: Some(self.plane.topology().epoch),
            note: None,
        };
        self.save(RECORD_KEY, &record).await?;
        tracing::warn!(
            until = %rfc3339(record.until_ms.unwrap_or_default()),
            "finalize accepted: mirroring to the old store stops at the end of the retention window"
        );
        self.changed.notify_one();
        Ok(self.status()?)
    }

    /// Undoes a pending finalize: mirroring to the old store goes on.
    pub async fn undo(&self) -> Result<FinalizeStatus, FinalizeError> {
        let _changing = self.changing.lock().await;
        let record = self.record()?;
        match record.phase {
            FinalizePhase::Pending => {
                self.end_pending(record, "undone by an operator").await?;
                self.changed.notify_one();
                Ok(self.status()?)
            }
            FinalizePhase::Done => Err(FinalizeError::Refused(format!(
                "mirroring to the old store stopped at {}; it has missed writes since, so this cannot be undone",
                rfc3339(record.ended_ms.unwrap_or_default())
            ))),
            FinalizePhase::None | FinalizePhase::Undone => Err(FinalizeError::Refused(
                "no finalize is pending".to_owned(),
            )),
        }
    }

    async fn end_pending(&self, record: FinalizeRecord, note: &str) -> Result<(), StoreError> {
        let undone = FinalizeRecord {
            phase: FinalizePhase::Undone,
            ended_ms: Some(now_ms()),
            note: Some(note.to_owned()),
            ..record
        };
        self.save(RECORD_KEY, &undone).await?;
        tracing::warn!(note, "finalize undone: mirroring to the old store goes on");
        Ok(())
    }

    /// Ends the window when its time has come; how long until it does, while one is pending.
    pub async fn tick(&self) -> Result<Option<Duration>, FinalizeError> {
        let _changing = self.changing.lock().await;
        let record = self.record()?;
        if record.phase != FinalizePhase::Pending {
            return Ok(None);
        }
        let topology = self.plane.topology();
        let epoch = record.epoch.unwrap_or_default();
        if topology.epoch != epoch && !topology.mirror_stopped {
            let note = format!(
                "the primary changed during the window (epoch {epoch} -> {})",
                topology.epoch
            );
            self.end_pending(record, &note).await?;
            self.audit_end(&note, Outcome::Refused(note.clone())).await;
            return Ok(None);
        }
        let until = record.until_ms.unwrap_or_default();
        let now = now_ms();
        if now < until && !topology.mirror_stopped {
            return Ok(Some(Duration::from_millis(until - now)));
        }
        let stopped = self
            .switch
            .change_topology(move |topology| {
                if topology.epoch != epoch {
                    return topology;
                }
                Topology {
                    mirror_stopped: true,
                    mode: MirrorMode::Journaled,
                    reads: ReadPolicy::default(),
                    ..topology
                }
            })
            .await
            .map_err(|e| FinalizeError::Refused(e.to_string()))?;
        if !stopped.mirror_stopped {
            // A switch won the race; the next tick cancels.
            return Ok(Some(Duration::ZERO));
        }
        let done = FinalizeRecord {
            phase: FinalizePhase::Done,
            ended_ms: Some(now_ms()),
            ..record
        };
        self.save(RECORD_KEY, &done).await?;
        let detail = format!("mirroring to {} stopped", stopped.secondary());
        tracing::warn!(
            retired = %stopped.secondary(),
            "finalized: mirroring to the old store stopped; point applications at the new store and retire the proxy"
        );
        self.audit_end(&detail, Outcome::Done).await;
        Ok(None)
    }

    async fn audit_end(&self, detail: &str, outcome: Outcome) {
        if let Err(error) = self
            .audit
            .record(FINALIZE_ACTOR, "finalize-window-end", detail, outcome)
            .await
        {
            tracing::error!(target: "audit", %error, "the end of the finalize window is not in the audit log");
        }
    }

    /// Ends the window on time, until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let wait = match self.tick().await {
                Ok(Some(wait)) => wait.min(Duration::from_secs(60)),
                Ok(None) => Duration::from_secs(3600),
                Err(error) => {
                    tracing::error!(%error, "finalize: cannot end the window now; trying again");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.changed.notified() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }
}

/// Unix milliseconds as an RFC 3339 time (UTC).
pub fn rfc3339(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime_serde::re::humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> CheckInput {
        CheckInput {
            topology: Topology {
                epoch: 2,
                primary: BackendName::New,
                mode: MirrorMode::Journaled,
                reads: ReadPolicy::default(),
                paused: false,
                mirror_stopped: false,
            },
            dead_letters: 0,
            waiting: 3,
            oldest_age_ms: Some(200),
            verify: Some(VerifyRecord {
                result: VerifyResult {
                    matches: true,
                    source: BackendName::New,
                    target: BackendName::Old,
                    collections: 2,
                    divergences: 0,
                    elapsed_seconds: 1.0,
                },
                at_ms: 1_000_000,
                epoch: 2,
            }),
            now_ms: 1_060_000,
        }
    }

    fn failing(input: &CheckInput) -> Vec<String> {
        checks(input, &FinalizeConfig::default())
            .into_iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.into_owned())
            .collect()
    }

    #[test]
    fn every_check_passes_after_a_cutover_and_a_recent_verify() {
        assert!(failing(&input()).is_empty(), "{:?}", failing(&input()));
    }

    #[test]
    fn each_check_fails_on_its_own_condition() {
        let mut old_primary = input();
        old_primary.topology.primary = BackendName::Old;
        assert_eq!(failing(&old_primary), ["new_is_primary"]);

        let mut lagging = input();
        lagging.oldest_age_ms = Some(60_000);
        assert_eq!(failing(&lagging), ["journal_lag"]);

        let mut dead = input();
        dead.dead_letters = 1;
        assert_eq!(failing(&dead), ["no_dead_letters"]);

        let mut none = input();
        none.verify = None;
        assert_eq!(failing(&none), ["verify"]);

        let mut diverged = input();
        if let Some(v) = diverged.verify.as_mut() {
            v.result.matches = false;
        }
        assert_eq!(failing(&diverged), ["verify"]);

        let mut stale = input();
        stale.now_ms += 25 * 3600 * 1000;
        assert_eq!(failing(&stale), ["verify"]);
    }

    #[test]
    fn a_record_from_before_reads_as_none() {
        let record: FinalizeRecord = serde_json::from_str(r#"{"phase":"none"}"#).unwrap();
        assert_eq!(record, FinalizeRecord::default());
    }
}
