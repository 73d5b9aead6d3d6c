//! The audit log of admin actions: who (the admin token's name), what, when, and the outcome.
//!
//! Kept in the state store, so it survives restarts, and written to the log under the `audit`
//! target as it happens. Bounded: the oldest entries beyond [`AuditLog::keep`] are removed as
//! new ones come. Entries never hold a token or a request body, only names and a short detail.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shift_state::{MapTable, StateStore, StoreError};

/// One admin action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When it finished (Unix milliseconds).
    pub at_ms: u64,
    /// Who asked: the name of the admin token used.
    pub actor: String,
    /// What was asked, e.g. `cutover`, `rollback`, `pause`, `repair`.
    pub action: String,
    /// The request's parameters, short and free of secrets (e.g. `dry_run=false force=false`).
    pub detail: String,
    /// How it ended.
    pub outcome: Outcome,
}

/// How an admin action ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    /// Done.
    Done,
    /// Refused before anything changed (a failed check, a bad request), with why.
    Refused(String),
    /// Started but failed, with why.
    Failed(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Done => f.write_str("done"),
            Outcome::Refused(why) => write!(f, "refused: {why}"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// The audit log over a state store.
#[derive(Debug)]
pub struct AuditLog {
    /// Where the entries are kept.
    store: StateStore,
    /// How many entries are kept.
    keep: usize,
    /// Breaks ties between entries of the same millisecond, so keys never collide.
    counter: AtomicU64,
}

/// How many entries are kept by default.
pub const DEFAULT_KEEP: usize = 10_000;

impl AuditLog {
    pub fn new(store: StateStore, keep: usize) -> AuditLog {
        AuditLog {
            store,
            keep: keep.max(1),
            counter: AtomicU64::new(0),
        }
    }

    /// How many entries are kept.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// Records an action: to the log at once, then durably. A state store that cannot write
    /// fails the record (the caller says so in its answer); the log line is written anyway.
    pub async fn record(
        &self,
        actor: &str,
        action: &str,
        detail: impl Into<String>,
        outcome: Outcome,
    ) -> Result<AuditEntry, StoreError> {
        let entry = AuditEntry {
            at_ms: now_ms(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            detail: detail.into(),
            outcome,
        };
        tracing::info!(
            target: "audit",
            actor = %entry.actor,
            action = %entry.action,
            detail = %entry.detail,
            outcome = %entry.outcome,
            "admin action"
        );
        let n = self.counter.fetch_add(1, Ordering::Relaxed) % 1_000_000;
        let key = format!("{:020}-{n:06}", entry.at_ms);
        let value = serde_json::to_vec(&entry).expect("an audit entry serializes");
        self.store.put(MapTable::Audit, &key, value).await?;
        self.prune().await?;
        Ok(entry)
    }

    /// The newest `limit` entries, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = self.store.scan_end(MapTable::Audit, limit, true)?;
        Ok(rows
            .iter()
            .filter_map(|(_, value)| serde_json::from_slice(value).ok())
            .collect())
    }

    /// Removes the oldest entries beyond `keep`.
    async fn prune(&self) -> Result<(), StoreError> {
        let count = usize::try_from(self.store.count(MapTable::Audit)?).unwrap_or(usize::MAX);
        let excess = count.saturating_sub(self.keep);
        for (key, _) in self.store.scan_end(MapTable::Audit, excess, false)? {
            self.store.delete(MapTable::Audit, &key).await?;
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_survive_a_reopen_newest_first_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path()).await.unwrap();
            let log = AuditLog::new(store, 3);
            log.record("alice", "pause", "", Outcome::Done)
                .await
                .unwrap();
            log.record(
                "bob",
                "cutover",
                "dry_run=false",
                Outcome::Refused("lag 12".into()),
            )
            .await
            .unwrap();
            for action in ["resume", "rollback"] {
                log.record("alice", action, "", Outcome::Done)
                    .await
                    .unwrap();
            }
        }
        let store = StateStore::open(dir.path()).await.unwrap();
        let log = AuditLog::new(store, 3);
        let recent = log.recent(10).unwrap();
        let actions: Vec<&str> = recent.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            ["rollback", "resume", "cutover"],
            "the oldest was pruned"
        );
        assert_eq!(recent[2].actor, "bob");
        assert_eq!(recent[2].outcome, Outcome::Refused("lag 12".into()));
        assert_eq!(log.recent(1).unwrap().len(), 1);
    }

    #[test]
    fn outcome_serializes_with_its_reason() {
        let json = serde_json::to_value(Outcome::Failed("timeout".into())).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"status": "failed", "reason": "timeout"})
        );
        let json = serde_json::to_value(Outcome::Done).unwrap();
        assert_eq!(json, serde_json::json!({"status": "done"}));
    }
}
