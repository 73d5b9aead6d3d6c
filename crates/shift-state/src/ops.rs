//! What callers ask of the writer thread: one [`Op`] per durable change, each with the
//! channel its answer goes back on.

use shift_config::BackendName;
use tokio::sync::oneshot;

use crate::{DeadLetter, IntentId, MapTable, Seq, StoreError};

/// Where the writer answers one caller.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A journal entry encoded by its caller (so the payload is copied outside the writer), with
/// the fields the writer needs beside the bytes.
#[derive(Debug)]
pub(crate) struct EncodedEntry {
    pub target: BackendName,
    /// Kept for the lag book.
    pub collection: String,
    /// The payload's length, counted against the journal's size cap.
    pub payload_len: u64,
    /// [`codec::encode_entry`]'s output; the writer stamps the commit time into it.
    pub bytes: Vec<u8>,
}

/// One durable change asked of the writer.
#[derive(Debug)]
pub(crate) enum Op {
    RecordIntent {
        payload: Vec<u8>,
        reply: Reply<IntentId>,
    },
    CommitIntent {
        id: IntentId,
        entries: Vec<EncodedEntry>,
        /// Whether the caller waits for an fsync; see [`crate::StateStore::settle_intent`].
        durable: bool,
        reply: Reply<Vec<Seq>>,
    },
    DiscardIntent {
        id: IntentId,
        /// Likewise.
        durable: bool,
        reply: Reply<()>,
    },
    Append {
        entries: Vec<EncodedEntry>,
        reply: Reply<Vec<Seq>>,
    },
    Remove {
        target: BackendName,
        seqs: Vec<Seq>,
        /// Whether the caller waits for an fsync; see [`crate::StateStore::remove_deferred`].
        durable: bool,
        reply: Reply<()>,
    },
    Park {
        target: BackendName,
        seq: Seq,
        reason: String,
        reply: Reply<()>,
    },
    Put {
        table: MapTable,
        key: String,
        value: Vec<u8>,
        reply: Reply<()>,
    },
    Delete {
        table: MapTable,
        key: String,
        reply: Reply<()>,
    },
    Retarget {
        from: BackendName,
        moves: Vec<(Seq, Vec<u8>)>,
        to: BackendName,
        reply: Reply<Vec<Seq>>,
    },
    RedriveDeadLetter {
        seq: Seq,
        reply: Reply<Seq>,
    },
    DropDeadLetter {
        seq: Seq,
        reply: Reply<DeadLetter>,
    },
}

impl Op {
    /// Whether the batch holding this change must be fsynced before it is answered. Only the
    /// settlement of an intent and the removal of applied entries may wait for the next
    /// durable commit: what a crash leaves instead (the intent, already on disk; the entries,
    /// applied again) is as good (see [`crate::StateStore::settle_intent`] and
    /// [`crate::StateStore::remove_deferred`]).
    pub(crate) fn durable(&self) -> bool {
        match self {
            Op::CommitIntent { durable, .. }
            | Op::DiscardIntent { durable, .. }
            | Op::Remove { durable, .. } => *durable,
            _ => true,
        }
    }
}

/// The next ids to hand out, as last committed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counters {
    pub next_seq: u64,
    pub next_intent: u64,
    /// Whether a commit since the last durable one was not fsynced: the writer then makes
    /// one durable commit before it stops.
    pub unsynced: bool,
}
