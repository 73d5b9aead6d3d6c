//! The crate's one error type.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use shift_config::BackendName;

use crate::{IntentId, Seq};

/// Why the state store could not do what was asked.
///
/// Every variant is the proxy's own fault or its disk's, never a backend's. It is `Clone`
/// because one failed group commit answers every caller of the batch with the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another process (or another handle in this one) holds the state directory. Only one
    /// proxy may own a journal: two would replay the same writes twice.
    #[error(
        "the state file {path} is in use by another chroma-shift process; one process owns a state directory"
    )]
    Locked {
        /// The database file whose lock is held.
        path: PathBuf,
    },
    /// The state directory could not be created.
    #[error("cannot create the state directory {path}: {source}")]
    CreateDir {
        /// The directory asked for.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: Arc<io::Error>,
    },
    /// redb failed: an I/O error, a full disk, or a damaged file. A retry helps only if the
    /// cause was transient (disk space freed).
    #[error("the state database failed: {0}")]
    Storage(#[source] Arc<redb::Error>),
    /// The file was written by a newer chroma-shift whose layout this build cannot read.
    #[error(
        "the state database has format {found}, this build reads format {supported}; upgrade chroma-shift"
    )]
    UnsupportedFormat {
        /// The format recorded in the file.
        found: u64,
        /// The format this build writes and reads.
        supported: u64,
    },
    /// A stored value does not decode. redb checksums its pages, so this means a bug or a file
    /// edited by hand; the store refuses to guess.
    #[error("corrupt value in table `{table}` at key {key}: {reason}")]
    Corrupt {
        /// The redb table holding the value.
        table: &'static str,
        /// The key, as text.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `commit_intent` named an intent that is not pending (already committed or discarded).
    #[error("write intent {0} is not pending")]
    UnknownIntent(IntentId),
    /// `park` named a journal entry that is not in the journal (already applied or parked).
    #[error("journal entry {seq} for {target} is not in the journal")]
    UnknownEntry {
        /// The journal asked for.
        target: BackendName,
        /// The entry asked for.
        seq: Seq,
    },
    /// `redrive_dead_letter` or `drop_dead_letter` named a dead letter that does not exist
    /// (already re-driven or dropped).
    #[error("there is no dead letter {0}")]
    UnknownDeadLetter(Seq),
    /// A string is longer than the value layout can record (4 GiB).
    #[error("{what} is too long to store ({len} bytes)")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The state disk cannot be written (a commit failed with an I/O error, for example a full
    /// disk). The store reopens its file and probes on a backoff until a write succeeds again;
    /// meanwhile every change is refused at once without touching the file.
    #[error(
        "the state disk cannot be written ({reason}): this change was not committed; chroma-shift reopens its state file on its own and accepts writes again once the disk can be written"
    )]
    Unwritable {
        /// The I/O error that made the store unwritable, as text.
        reason: String,
    },
    /// The state file is closed while the store reopens it after a disk error (see
    /// [`StoreError::Unwritable`]); reads fail until it is open again.
    #[error(
        "the state database cannot be read now: it is being reopened after a disk error ({reason}); retry shortly"
    )]
    Unavailable {
        /// The error that made the store reopen its file.
        reason: String,
    },
    /// The journal holds `max_journal_bytes` or more of payload: new writes are refused until
    /// the replay drains it (the secondary is down or slower than the writes).
    #[error(
        "the mirror journal holds {bytes} bytes of writes waiting for the secondary, at or over its cap of {cap} bytes ([state] max_journal_bytes); new writes are refused until the replay drains it"
    )]
    JournalFull {
        /// Payload bytes in the journals now.
        bytes: u64,
        /// The configured cap.
        cap: u64,
    },
    /// The writer thread has stopped: the store is being dropped, or the writer panicked.
    #[error("the state store is closed")]
    Closed,
    /// The cluster mode's coordination (etcd) cannot take the change now: it is out of reach,
    /// or this replica's membership lease ran out (it refuses writes until it holds one again).
    #[error(
        "the cluster coordination cannot take this change now ({reason}); nothing was changed. Retry shortly"
    )]
    Coordination {
        /// What failed, as text.
        reason: String,
    },
}

impl StoreError {
    /// Whether the store refused for a reason that passes by itself (a disk that cannot be
    /// written, a full journal): callers answer 503 with Retry-After, not 500. Nothing was
    /// stored when this is true.
    pub fn is_retryable_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unwritable { .. }
                | StoreError::Unavailable { .. }
                | StoreError::JournalFull { .. }
                | StoreError::Coordination { .. }
        )
    }

    /// The text of an I/O error from the file, if that is what this is: the errors after
    /// which redb's Database refuses every later transaction and must be reopened.
    pub(crate) fn io_reason(&self) -> Option<String> {
        let StoreError::Storage(err) = self else {
            return None;
        };
        match &**err {
            redb::Error::Io(io) => Some(io.to_string()),
            redb::Error::PreviousIo => Some("an earlier write to the state file failed".into()),
            redb::Error::DatabaseClosed => Some("the state file was closed".into()),
            _ => None,
        }
    }
}

// redb has one error type per operation; all of them fold into `redb::Error`.
macro_rules! from_redb {
    ($($ty:ty),* $(,)?) => {$(
        impl From<$ty> for StoreError {
            fn from(err: $ty) -> Self {
                StoreError::Storage(Arc::new(redb::Error::from(err)))
            }
        }
    )*};
}

from_redb!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError,
);

impl From<redb::Error> for StoreError {
    fn from(err: redb::Error) -> Self {
        StoreError::Storage(Arc::new(err))
    }
}
