//! What the writer does after an I/O error (a full disk, a failing device): refuse at once,
//! reopen the file, and accept writes again as soon as the disk takes them, without a restart.
//!
//! redb latches an I/O error: after a failed commit its `Database` answers every later
//! transaction with "previous I/O error", reads included. So the writer drops the Database
//! (which releases the file lock), and on a backoff opens the file again, probes that a commit
//! of [`PROBE_BYTES`] goes through, and reads the counters back from the file, so that they
//! match what is on disk whatever the failed commit left there. Meanwhile every call fails
//! fast with [`StoreError::Unwritable`] (changes) or [`StoreError::Unavailable`] (reads), and
//! [`crate::StateStore::health`] says why.

use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use redb::{Database, Durability};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::open::{self, Loaded};
use crate::writer::{self, Counters, Op};
use crate::{schema, Shared, StoreError};

/// First wait before reopening; doubled after each failed attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between attempts: how long after space is freed writes may still be refused.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often queued calls are answered while waiting.
const TICK: Duration = Duration::from_millis(20);
/// The probe commit's size: a disk that cannot take this much would fail the next batch of
/// writes anyway, and a probe this size keeps the store from flapping between writable and
/// not on the few pages a nearly full file still has free.
const PROBE_BYTES: usize = 1024 * 1024;

/// Marks the store unwritable, so new calls are refused before they queue.
pub(crate) fn mark_unwritable(shared: &Shared, reason: &str) {
    shared.unwritable.send_replace(Some(reason.to_owned()));
}

/// Drops the database, then reopens it on a backoff until a probe commit succeeds; answers
/// every queued call with [`StoreError::Unwritable`] meanwhile. Returns `false` if the store
/// was dropped before that (the writer then stops).
pub(crate) fn reopen_until_writable(
    shared: &Shared,
    queue: &mut mpsc::Receiver<Op>,
    counters: &mut Counters,
    reason: &str,
) -> bool {
    let refused = StoreError::Unwritable {
        reason: reason.to_owned(),
    };
    // The old Database holds the file lock until it is dropped: drop it first.
    let old = shared
        .db
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    drop(old);

    let mut backoff = FIRST_BACKOFF;
    let mut attempts: u64 = 0;
    loop {
        if !wait_refusing(queue, backoff, &refused) {
            return false;
        }
        attempts += 1;
        match reopen(shared) {
            Ok((db, loaded)) => {
                install(shared, counters, db, loaded);
                shared.unwritable.send_replace(None);
                tracing::warn!(
                    attempts,
                    "the state disk can be written again: the state store reopened its file and accepts writes"
                );
                return true;
            }
            Err(err) => {
                // The first failures are expected (the disk is still full); say so at a low
                // level, and loudly once in a while.
                if attempts.is_power_of_two() {
                    tracing::warn!(error = %err, attempts, "the state disk still cannot be written; writes stay refused");
                } else {
                    tracing::debug!(error = %err, attempts, "state store reopen failed");
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Sleeps `wait` in ticks, answering whatever was queued. `false` once the queue is closed
/// and empty: the store was dropped.
fn wait_refusing(queue: &mut mpsc::Receiver<Op>, wait: Duration, refused: &StoreError) -> bool {
    let mut waited = Duration::ZERO;
    loop {
        loop {
            match queue.try_recv() {
                Ok(op) => writer::refuse(op, refused),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
        if waited >= wait {
            return true;
        }
        thread::sleep(TICK);
        waited += TICK;
    }
}

/// Opens the file, proves a commit goes through, and reads the counters back.
fn reopen(shared: &Shared) -> Result<(Database, Loaded), StoreError> {
    let db = open::open_db(&shared.opener, &shared.path)?;
    probe(&db)?;
    let loaded = open::load(&db)?;
    Ok((db, loaded))
}

/// Commits [`PROBE_BYTES`], then commits their removal.
fn probe(db: &Database) -> Result<(), StoreError> {
    let filler = vec![0u8; PROBE_BYTES];
    for write in [true, false] {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut table = txn.open_table(schema::PROBE)?;
            if write {
                table.insert(0, filler.as_slice())?;
            } else {
                table.remove(0)?;
            }
        }
        txn.commit()?;
    }
    Ok(())
}

/// Puts the reopened database and the counters read from it in place.
///
/// The seqs and intent ids handed out stay above every one handed out before: commits that
/// were not fsynced (settled intents) are lost with the old database, and a replay worker
/// that read their entries must not see a seq again for another entry.
fn install(shared: &Shared, counters: &mut Counters, db: Database, loaded: Loaded) {
    *counters = Counters {
        next_seq: loaded.counters.next_seq.max(counters.next_seq),
        next_intent: loaded.counters.next_intent.max(counters.next_intent),
        unsynced: false,
    };
    {
        let mut lag = shared.lag();
        *lag = loaded.book;
        shared.journal_bytes.store(lag.bytes(), Ordering::Relaxed);
    }
    shared
        .dead_letters
        .store(loaded.dead_letters, Ordering::Relaxed);
    shared
        .pending_intents
        .store(loaded.pending_intents, Ordering::Relaxed);
    for (slot, last) in loaded.last.into_iter().enumerate() {
        // Wakes the replay workers: the failed commit may have reached the disk after all,
        // and deferred removals lost with the old file bring applied entries back behind
        // their cursors (they read the journal again from its start).
        shared.appends[slot].send_modify(|seen| *seen = (*seen).max(last));
    }
    *shared
        .db
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(db);
}
