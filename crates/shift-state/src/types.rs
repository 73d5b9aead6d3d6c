//! The public value types of the store: positions, entries, dead letters, options, health.

use std::fmt;

use shift_config::BackendName;

use crate::StoreError;

/// How a store is opened, beyond its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// The journal's size cap, in payload bytes over both targets (`[state]
    /// max_journal_bytes`); 0 is no cap. At or over it, new writes are refused with
    /// [`StoreError::JournalFull`] until the replay drains the journal.
    pub max_journal_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_journal_bytes: shift_config::StateConfig::default()
                .max_journal_bytes
                .as_u64(),
        }
    }
}

impl StoreOptions {
    /// The options `[state]` configures.
    pub fn from_config(config: &shift_config::StateConfig) -> StoreOptions {
        StoreOptions {
            max_journal_bytes: config.max_journal_bytes.as_u64(),
        }
    }
}

/// Whether the store can take writes now, for readiness probes and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    /// `None` while the state disk can be written; otherwise the I/O error that stopped it.
    /// The store reopens its file on a backoff and clears this by itself once a write goes
    /// through again.
    pub unwritable: Option<String>,
    /// Payload bytes in the journals (both targets).
    pub journal_bytes: u64,
    /// The cap on `journal_bytes`; 0 is no cap.
    pub max_journal_bytes: u64,
    /// Write intents recorded and not yet committed or discarded.
    pub pending_intents: u64,
}

impl StoreHealth {
    /// The journal is at or over its cap: new writes are refused until it drains.
    pub fn journal_full(&self) -> bool {
        self.max_journal_bytes > 0 && self.journal_bytes >= self.max_journal_bytes
    }

    /// `Ok` when new writes can be journaled; otherwise the error a write would get now.
    pub fn check(&self) -> Result<(), StoreError> {
        if let Some(reason) = &self.unwritable {
            return Err(StoreError::Unwritable {
                reason: reason.clone(),
            });
        }
        if self.journal_full() {
            return Err(StoreError::JournalFull {
                bytes: self.journal_bytes,
                cap: self.max_journal_bytes,
            });
        }
        Ok(())
    }
}

/// The position of an entry in the mirror journal. Global across both targets and strictly
/// increasing, across restarts too, so it orders every mirrored write ever journaled. The
/// first is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A pending write intent. Increasing, so [`crate::StateStore::pending_intents`] returns them in the order
/// they were recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IntentId(pub u64);

impl fmt::Display for IntentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The small key-value tables. Fixed rather than named by callers, so a typo cannot create a
/// table and every table is created at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapTable {
    /// The collection-id map: the client-visible id and each backend's id of a collection.
    Collections,
    /// The persisted topology (primary, secondary, epoch, modes).
    Topology,
    /// Backfill and verify checkpoints, so a restarted job resumes where it stopped.
    Checkpoints,
    /// The audit log of admin actions, keyed so that keys sort by time.
    Audit,
}

/// A mirrored write to journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// The backend it must be applied to (the secondary at the time it was written).
    pub target: BackendName,
    /// The key its lag is counted under, normally the client-visible collection id; may be
    /// empty for writes that belong to no collection.
    pub collection: String,
    /// The write, serialized by the proxy; the store never looks inside.
    pub payload: Vec<u8>,
}

/// A journal entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// Its position; pass it to [`crate::StateStore::remove`] once applied.
    pub seq: Seq,
    /// The backend it must be applied to.
    pub target: BackendName,
    /// Its lag key, as given in [`NewEntry::collection`].
    pub collection: String,
    /// When its batch was committed (Unix milliseconds), for replication-delay metrics.
    pub created_ms: u64,
    /// The write, as given.
    pub payload: Vec<u8>,
}

/// A journal entry the replay worker gave up on, kept for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The seq it had in the journal; dead letters are listed in this order.
    pub seq: Seq,
    /// The backend that refused it.
    pub target: BackendName,
    /// Its lag key.
    pub collection: String,
    /// When it was journaled (Unix milliseconds).
    pub created_ms: u64,
    /// When it was parked (Unix milliseconds).
    pub parked_ms: u64,
    /// Why it was parked, as given to [`crate::StateStore::park`] (for example the backend's answer).
    pub reason: String,
    /// The write, as journaled.
    pub payload: Vec<u8>,
}

/// Counters of the group-commit writer since open, for benchmarks: `requests / commits` is
/// the group-commit factor (write calls sharing one fsync).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions committed.
    pub commits: u64,
    /// Those of them committed with an fsync (all but the batches made only of deferred
    /// settlements, [`crate::StateStore::settle_intent`]): the fsyncs the state cost.
    pub durable_commits: u64,
    /// Write calls (append, put, remove, ...) answered by those commits.
    pub requests: u64,
    /// Journal entries appended by those commits (by `append` and `commit_intent`).
    pub entries_appended: u64,
}

impl CommitStats {
    /// Write calls per commit; 1.0 means no sharing, 0.0 before the first commit.
    pub fn requests_per_commit(&self) -> f64 {
        if self.commits == 0 {
            0.0
        } else {
            self.requests as f64 / self.commits as f64
        }
    }
}
