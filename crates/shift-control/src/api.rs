//! The admin API's wire types: the request and response of every `/admin` route, `/readyz`
//! and `/healthz`, and the error every route answers with. The server ([`crate::admin`],
//! [`crate::migrate_api`]) builds its answers from them and the client ([`crate::client`])
//! reads them back, so the JSON has one definition.
//!
//! They live in shift-control, not in a crate of their own, because most of them are the
//! control plane's own types (a switch's [`SwitchReport`], a backend's [`BackendHealth`], a
//! backfill's [`BackfillProgress`], the [`Topology`]): moving those down would split the
//! modules that own them, and every user of the client (the `chroma-shift` binary, which also
//! serves, and the benches, which run the proxy) links the server anyway.
//!
//! The shadow reads and replay sections are shaped by the modules that own them
//! (`shift_proxy::shadow`, `shift_proxy::replay`); this module carries them as they are.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shift_config::{BackendName, MirrorMode};

pub use crate::audit::{AuditEntry, Outcome};
pub use crate::finalize::{
    FinalizePhase, FinalizeRecord, FinalizeStatus, VerifyRecord, VerifyResult,
};
pub use crate::health::BackendHealth;
pub use crate::switch::{Check, Direction, SwitchReport, SwitchRequest};
pub use shift_migrate::backfill::{
    BackfillProgress, BackfillRequest, BackfillState, CollectionProgress,
};
pub use shift_proxy::topology::{ReadPolicy, Topology};

/// What kind of error an admin route answers with, named as Chroma names its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// No such route or object, or the admin API is off (404).
    NotFoundError,
    /// A missing or wrong admin token (401).
    AuthError,
    /// A body or parameter the route cannot take (400).
    InvalidArgumentError,
    /// Another run holds what the call needs, such as a running backfill (409).
    ConflictError,
    /// The state store cannot answer now; a retry may help (503).
    Unavailable,
    /// Too many failed admin logins from the caller's address; retry after `Retry-After` (429).
    RateLimitError,
    /// A failure inside the proxy (500).
    InternalError,
}

/// Every error answer: `{"error": kind, "message": text}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// What kind of error.
    pub error: ErrorKind,
    /// What went wrong, for people.
    pub message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.error, self.message)
    }
}

/// A value for each backend, keyed `old` and `new`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerBackend<T> {
    pub old: T,
    pub new: T,
}

impl<T> PerBackend<T> {
    /// Builds both from one function of the backend's name.
    pub fn from_fn(mut value: impl FnMut(BackendName) -> T) -> PerBackend<T> {
        PerBackend {
            old: value(BackendName::Old),
            new: value(BackendName::New),
        }
    }

    /// The value of `backend`.
    pub fn get(&self, backend: BackendName) -> &T {
        match backend {
            BackendName::Old => &self.old,
            BackendName::New => &self.new,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Probes.

/// `GET /healthz`: the process answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz` (200 when ready, 503 when not).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Readiness {
    /// The primary is up and the state store can journal a write.
    pub ready: bool,
    /// The store that decides readiness.
    pub primary: BackendName,
    /// Both backends' last heartbeats (the secondary's is shown, it does not decide).
    pub backends: PerBackend<BackendHealth>,
    /// The state store's part of the answer.
    pub state: ReadinessState,
}

/// The state store in `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadinessState {
    /// Its disk can be written.
    pub writable: bool,
    /// Payload bytes in the journals.
    pub journal_bytes: u64,
    /// The cap on them; 0 is no cap.
    pub max_journal_bytes: u64,
    /// Why a write would be refused now, if it would.
    pub reason: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Status.

/// `GET /admin/status`: topology, backends, journal lag, dead letters, state store, and the
/// sections of the components this process runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub topology: TopologyStatus,
    /// Each backend's last heartbeat.
    pub backends: PerBackend<BackendHealth>,
    /// What waits in each target's journal.
    pub journal: PerBackend<JournalLag>,
    /// Writes held at the gate now.
    pub writes_held: usize,
    /// Writes whose intent is recorded and not yet settled.
    pub pending_intents: PendingIntents,
    pub dead_letters: DeadLetterSummary,
    /// The state store's ability to take writes.
    pub state: StateStatus,
    /// Collections in the collection-id map.
    pub collections: usize,
    /// Shadow and canary reads, as `shift_proxy::shadow` reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Value>,
    /// Each target's replay, as `shift_proxy::replay` reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Value>,
    /// The backfill of this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillProgress>,
    /// The newest admin actions, newest first (`None` when the state store cannot be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Vec<AuditEntry>>,
    /// The end of the migration: the last finalize, its checks now, the last verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalize: Option<FinalizeStatus>,
}

/// The topology as `/admin/status` shows it: with the secondary spelled out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopologyStatus {
    /// Bumped on every change of primary.
    pub epoch: u64,
    pub primary: BackendName,
    pub secondary: BackendName,
    pub write_mode: MirrorMode,
    pub read_policy: ReadPolicy,
    /// Writes are held by an operator's pause.
    pub paused: bool,
}

impl From<&Topology> for TopologyStatus {
    fn from(topology: &Topology) -> TopologyStatus {
        TopologyStatus {
            epoch: topology.epoch,
            primary: topology.primary,
            secondary: topology.secondary(),
            write_mode: topology.mode,
            read_policy: topology.reads,
            paused: topology.paused,
        }
    }
}

/// What waits in one target's journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalLag {
    pub entries: u64,
    /// Age of the oldest entry, in seconds; `None` when the journal is empty.
    pub oldest_age_s: Option<f64>,
    /// The same per collection key (a client collection id, or a lag key of a tenant or
    /// database write).
    pub collections: std::collections::BTreeMap<String, CollectionLag>,
}

/// What waits in one target's journal for one collection key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionLag {
    pub entries: u64,
    pub oldest_age_s: f64,
    /// The collection's name, when the key is a collection the map knows.
    pub name: Option<String>,
}

/// Writes whose intent is recorded and not yet settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingIntents {
    /// Being settled by their task now.
    pub settling: usize,
    /// Recorded in the state store, orphans included (the sweeper settles those).
    pub recorded: u64,
}

/// The dead letters in `/admin/status`: how many, and the first few.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterSummary {
    pub count: u64,
    pub first: Vec<DeadLetterRef>,
}

/// The state store in `/admin/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateStatus {
    pub writable: bool,
    /// The I/O error that stopped writes, while they are stopped.
    pub unwritable_reason: Option<String>,
    pub journal_bytes: u64,
    /// 0 is no cap.
    pub max_journal_bytes: u64,
    /// The journal is at its cap: new writes are refused until it drains.
    pub journal_full: bool,
    pub pending_intents: u64,
}

impl From<&shift_state::StoreHealth> for StateStatus {
    fn from(health: &shift_state::StoreHealth) -> StateStatus {
        StateStatus {
            writable: health.unwritable.is_none(),
            unwritable_reason: health.unwritable.clone(),
            journal_bytes: health.journal_bytes,
            max_journal_bytes: health.max_journal_bytes,
            journal_full: health.journal_full(),
            pending_intents: health.pending_intents,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Topology changes.

/// `POST /admin/write-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteModeRequest {
    pub mode: MirrorMode,
}

/// The answer of `write-mode`, `read-policy`, `pause` and `resume`: the topology now in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopologyChanged {
    pub topology: Topology,
}

// `POST /admin/cutover` and `/admin/rollback` take a [`SwitchRequest`] (an empty body is the
// default one) and answer a [`SwitchReport`]: 200, or 409 when it was refused.
// `POST /admin/read-policy` takes a [`ReadPolicy`].

// ---------------------------------------------------------------------------------------------
// Dead letters.

/// `GET /admin/dead-letters?after=SEQ&limit=N`: a page, oldest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterPage {
    /// Only letters with a seq above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// At most this many (100 when absent, 1000 at most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// The answer of `GET /admin/dead-letters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetters {
    pub dead_letters: Vec<DeadLetter>,
}

/// A mirrored write a store refused, with the write itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Its seq in the journal.
    pub seq: u64,
    /// The backend that refused it.
    pub target: BackendName,
    /// Its lag key.
    pub collection: String,
    /// When it was journaled (Unix milliseconds).
    pub created_ms: u64,
    /// When it was parked (Unix milliseconds).
    pub parked_ms: u64,
    /// Why it was parked.
    pub reason: String,
    /// The write as journaled (`null` when it cannot be read as JSON).
    pub op: Value,
    /// The client identity that wrote it, whose backend token it is applied with (`None`:
    /// the operator's credential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl From<shift_state::DeadLetter> for DeadLetter {
    fn from(letter: shift_state::DeadLetter) -> DeadLetter {
        DeadLetter {
            seq: letter.seq.0,
            target: letter.target,
            op: serde_json::from_slice(shift_proxy::mirror::op_json(&letter.payload))
                .unwrap_or(Value::Null),
            identity: shift_proxy::mirror::identity_of(&letter.payload).map(str::to_owned),
            collection: letter.collection,
            created_ms: letter.created_ms,
            parked_ms: letter.parked_ms,
            reason: letter.reason,
        }
    }
}

/// A dead letter named without its write: in the status, and in a retry's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRef {
    pub seq: u64,
    pub target: BackendName,
    pub collection: String,
    pub reason: String,
    /// When it was parked (Unix milliseconds); in the status only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_ms: Option<u64>,
}

/// The answer of `POST /admin/dead-letters/{seq}/retry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retried {
    /// The letter put back.
    pub retried: DeadLetterRef,
    /// Its new seq at the end of its target's journal.
    pub journal_seq: u64,
}

/// The answer of `POST /admin/dead-letters/{seq}/drop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dropped {
    /// The letter deleted for good.
    pub dropped: DeadLetter,
}

// ---------------------------------------------------------------------------------------------
// Shadow reads.

/// `GET /admin/shadow`: the shadow reads' report with every mismatch sample kept, and the read
/// policy in force.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShadowDetail {
    /// As `shift_proxy::shadow` reports it.
    #[serde(flatten)]
    pub report: serde_json::Map<String, Value>,
    pub read_policy: ReadPolicy,
}

// ---------------------------------------------------------------------------------------------
// Migration: backfill and repair.

// `POST /admin/backfill` takes a [`BackfillRequest`] (an empty body is the default one) and
// answers 202 with the [`BackfillProgress`] (409 while another runs); `GET /admin/backfill`
// and `POST /admin/backfill/cancel` answer the progress.

/// `POST /admin/repair`: records to bring in line on the secondary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairRequest {
    /// The client's collection id.
    pub collection: String,
    /// Ids to make the secondary match the primary on: copied where the primary has them,
    /// deleted where it does not.
    pub ids: Vec<String>,
}

/// The answer of `POST /admin/repair` (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairQueued {
    /// Journal entries queued (a thousand ids each at most).
    pub queued_entries: usize,
    /// Ids queued.
    pub ids: usize,
    /// The store they are brought in line on.
    pub target: BackendName,
}

// ---------------------------------------------------------------------------------------------
// Audit log.

/// `GET /admin/audit?limit=N`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    /// The newest this many (100 when absent; `[admin] audit_keep` at most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// The answer of `GET /admin/audit`: admin actions, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntries {
    pub entries: Vec<AuditEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_chromas_shape() {
        let error = ApiError {
            error: ErrorKind::NotFoundError,
            message: "no".to_owned(),
        };
        assert_eq!(
            serde_json::to_value(&error).unwrap(),
            serde_json::json!({"error": "NotFoundError", "message": "no"})
        );
    }

    #[test]
    fn a_shadow_detail_keeps_the_report_beside_the_policy() {
        let wire = serde_json::json!({
            "totals": {"match": 3},
            "read_policy": {"canary_percent": 0.0, "shadow_percent": 5.0},
        });
        let detail: ShadowDetail = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(detail.read_policy.shadow_percent, 5.0);
        assert_eq!(serde_json::to_value(&detail).unwrap(), wire);
    }

    #[test]
    fn a_switch_request_sends_only_what_is_set() {
        let request = SwitchRequest {
            dry_run: true,
            timeout: Some(std::time::Duration::from_secs(30)),
            ..SwitchRequest::default()
        };
        let wire = serde_json::to_value(&request).unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"dry_run": true, "timeout": "30s", "force": false})
        );
        let back: SwitchRequest = serde_json::from_value(wire).unwrap();
        assert_eq!(back.timeout, request.timeout);
    }
}
