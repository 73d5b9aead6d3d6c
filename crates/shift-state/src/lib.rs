//! chroma-shift's durable state, embedded on one machine: the mirror journal, write intents,
//! dead letters, the collection-id map and a few other small key-values, in one redb file.
//!
//! The store is payload-agnostic: the proxy serializes its operations itself; the store keeps
//! bytes in order, durably. Every acknowledged change has been fsynced.
//!
//! Durable changes go through one writer thread that commits every request already queued in
//! one transaction (group commit, see `writer.rs`), so concurrent writers share one fsync.
//! Reads run on the caller's thread against a redb snapshot and never wait for the writer.
//!
//! How the proxy uses it, in journaled mode:
//! 1. [`StateStore::record_intent`] before sending a write to the primary, so a crash between the
//!    primary's answer and the journal append can be found at start ([`StateStore::pending_intents`]);
//! 2. on the primary's answer, [`StateStore::commit_intent`] appends the mirrored write to the
//!    journal and drops the intent in one transaction (or [`StateStore::discard_intent`] if the
//!    primary refused it); [`StateStore::settle_intent`] and
//!    [`StateStore::discard_intent_deferred`] do the same without an fsync of their own, for a
//!    caller whose recovery of the intent is as good as the settlement (one fsync per write);
//! 3. the replay worker pages the journal with [`StateStore::read`], applies entries to the
//!    secondary, [`StateStore::remove`]s them (or [`StateStore::remove_deferred`], for entries
//!    that are harmless to apply again), [`StateStore::park`]s permanent failures as dead letters,
//!    and sleeps on [`StateStore::watch_appends`] when it has caught up.
//!
//! Layout:
//! - `lib.rs`: [`StateStore`], the public types and the reads;
//! - `open.rs`: opening the file, the format check and migration, the counters read back;
//! - `ops.rs`: the requests a change sends to the writer;
//! - `writer.rs`: the group-commit writer thread;
//! - `recover.rs`: what the writer does after an I/O error (refuse, reopen, probe);
//! - `types.rs`: the public value types ([`Seq`], [`NewEntry`], [`DeadLetter`], ...);
//! - `schema.rs`: the redb tables and bookkeeping keys, everything that fixes the file layout;
//! - `codec.rs`: the byte layouts of journal entries and dead letters;
//! - `lag.rs`: in-memory lag accounting ([`Lag`]);
//! - `error.rs`: [`StoreError`].

mod codec;
mod error;
mod lag;
mod open;
mod ops;
mod recover;
mod schema;
mod types;
mod writer;

/// The first seq of a page that starts after `after` (from the first with `None`); `None` when
/// nothing can follow it.
fn first_after(after: Option<Seq>) -> Option<u64> {
    match after {
        None => Some(0),
        Some(Seq(seq)) => seq.checked_add(1),
    }
}

/// Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`); not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes `bytes` as a journal entry and as a dead letter, dropping the results.
    pub fn decode_values(bytes: &[u8]) {
        let _ = crate::codec::decode_entry(bytes);
        let _ = crate::codec::decode_dead_letter(crate::Seq(0), bytes);
    }
}

#[cfg(test)]
mod codec_props;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};
use shift_config::BackendName;
use tokio::sync::{mpsc, oneshot, watch};

pub use error::StoreError;
pub use lag::{CollectionLag, Lag};
pub use types::{
    CommitStats, DeadLetter, IntentId, JournalEntry, MapTable, NewEntry, Seq, StoreHealth,
    StoreOptions,
};

use lag::LagBook;
use open::Opener;
use writer::{Counters, EncodedEntry, Op, Reply};

/// State shared by the handles and the writer thread.
pub(crate) struct Shared {
    /// The open database; the file lock lives as long as it does. `None` while the writer
    /// reopens it after an I/O error. Readers hold the lock only to begin a transaction.
    db: RwLock<Option<Database>>,
    /// The database file, to reopen it.
    path: PathBuf,
    /// How to (re)open it.
    opener: Opener,
    /// See [`StoreOptions::max_journal_bytes`].
    max_journal_bytes: u64,
    /// `Some(reason)` while the state disk cannot be written; set and cleared by the writer,
    /// read by every call to refuse at once.
    unwritable: watch::Sender<Option<String>>,
    /// Payload bytes in both journals, as last committed (the lag book's total), so the cap
    /// is checked without the lag lock.
    journal_bytes: AtomicU64,
    /// Lag per target, changed by the writer after each commit.
    lag: Mutex<LagBook>,
    /// Entries in the dead-letter table, kept beside it so a metrics scrape reads no table.
    dead_letters: AtomicU64,
    /// Entries in the intent table, likewise.
    pending_intents: AtomicU64,
    /// See [`CommitStats`].
    commits: AtomicU64,
    durable_commits: AtomicU64,
    requests: AtomicU64,
    entries_appended: AtomicU64,
    /// Per target (old, new): the last seq committed to its journal, to wake replay workers.
    appends: [watch::Sender<Option<Seq>>; 2],
}

impl Shared {
    /// The lag book. A panic while it was held cannot leave it half-changed (each change is
    /// one map operation), so a poisoned lock is used as is.
    fn lag(&self) -> MutexGuard<'_, LagBook> {
        self.lag.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A read transaction on the current database; [`StoreError::Unavailable`] while it is
    /// being reopened or has failed with an I/O error.
    fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        let unavailable = |reason: String| StoreError::Unavailable { reason };
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let Some(db) = db.as_ref() else {
            let reason = self.unwritable.borrow().clone();
            return Err(unavailable(
                reason.unwrap_or_else(|| "the state file is closed".into()),
            ));
        };
        db.begin_read().map_err(|err| {
            let err = StoreError::from(err);
            match err.io_reason() {
                Some(reason) => unavailable(reason),
                None => err,
            }
        })
    }
}

/// The state store: a cheap handle (clone it freely) on one redb file owned by this process.
///
/// Async methods change durable state and return once it is fsynced; they may be cancelled,
/// but a cancelled change may still be committed, as with any write whose answer was lost.
/// Plain methods read a consistent snapshot without waiting for the writer; they are short
/// reads, mostly from redb's cache.
///
/// Dropping the last handle closes the queue, lets the writer finish what is queued, and waits
/// for it (one commit at most, plus the queue) so that the file lock is released when the drop
/// returns and the directory can be opened again at once.
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Handle>,
}

/// What the handles share. Fields drop in declaration order, which is the shutdown order.
struct Handle {
    /// The writer's queue; dropped first, which tells the writer to drain and stop.
    queue: mpsc::Sender<Op>,
    /// Tables and counters, also held by the writer.
    shared: Arc<Shared>,
    /// The database file, for messages.
    path: PathBuf,
    /// Dropped last: waits for the writer to finish and release the database.
    _writer: WriterThread,
}

/// Joins the writer thread when dropped.
struct WriterThread(Option<JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            // A panicked writer already answered nobody; its callers saw `Closed`.
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// Opens (creating if needed) `dir` and its `chroma-shift.redb`, reads the lag counters
    /// back from their summary table (no journal scan, except once to migrate a format-1
    /// file), and starts the writer thread. The journal's cap is the default; see
    /// [`open_with`](Self::open_with).
    ///
    /// Fails with [`StoreError::Locked`] if another process, or another open handle in this
    /// one, has the file. Must be called within a tokio runtime (the blocking work runs on its
    /// blocking pool).
    pub async fn open(dir: &Path) -> Result<StateStore, StoreError> {
        StateStore::open_with(dir, StoreOptions::default()).await
    }

    /// [`open`](Self::open) with options (the journal's size cap).
    pub async fn open_with(dir: &Path, options: StoreOptions) -> Result<StateStore, StoreError> {
        StateStore::open_inner(dir, options, open::file_opener()).await
    }

    async fn open_inner(
        dir: &Path,
        options: StoreOptions,
        opener: Opener,
    ) -> Result<StateStore, StoreError> {
        let dir = dir.to_owned();
        let opened =
            tokio::task::spawn_blocking(move || open_blocking(&dir, options, opener)).await;
        let (shared, counters, path) = match opened {
            Ok(result) => result?,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => return Err(StoreError::Closed),
        };
        let shared = Arc::new(shared);
        let (queue, ops) = mpsc::channel(writer::QUEUE_DEPTH);
        let thread = writer::spawn(shared.clone(), ops, counters)
            .map_err(|err| StoreError::Storage(Arc::new(redb::Error::Io(err))))?;
        Ok(StateStore {
            inner: Arc::new(Handle {
                queue,
                shared,
                path,
                _writer: WriterThread(Some(thread)),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Hands a change to the writer and waits for its commit; refused at once while the
    /// state disk cannot be written.
    async fn submit<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        if let Some(reason) = self.shared().unwritable.borrow().clone() {
            return Err(StoreError::Unwritable { reason });
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .queue
            .send(op(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    // --- Write intents ---

    /// Records that a write is about to be sent to the primary; durable before it returns.
    /// If the process dies before [`commit_intent`](Self::commit_intent) or
    /// [`discard_intent`](Self::discard_intent), the intent is found at the next start.
    ///
    /// Refused with [`StoreError::JournalFull`] while the journal is at its cap: this is where
    /// a write is admitted. The commit of an intent recorded before is not refused by the cap
    /// (its write may already be on the primary), so the cap can be exceeded by the writes in
    /// flight when it is reached.
    pub async fn record_intent(&self, payload: Vec<u8>) -> Result<IntentId, StoreError> {
        self.check_journal_cap()?;
        self.submit(|reply| Op::RecordIntent { payload, reply })
            .await
    }

    /// In one transaction, deletes the intent and appends `entries` to the journal; returns
    /// their seqs, in order. So a crash leaves either the intent or the entries, never both
    /// nor neither. [`StoreError::UnknownIntent`] if the intent is not pending (and then
    /// nothing is appended).
    pub async fn commit_intent(
        &self,
        id: IntentId,
        entries: Vec<NewEntry>,
    ) -> Result<Vec<Seq>, StoreError> {
        self.commit_intent_as(id, entries, true).await
    }

    /// [`commit_intent`](Self::commit_intent) without an fsync of its own: it returns once
    /// committed in memory (visible to reads, to the lag and to the replay), and is made
    /// durable by the next durable change (any other call that changes the state, from this
    /// process's next write intent to the replay's next remove) or when the store is closed.
    ///
    /// A crash (or an I/O error of the state disk) before that loses it whole, together with
    /// every later deferred settlement and nothing else: the intent is then pending again,
    /// as if the process had died before settling it, and its recovery (a reconciliation)
    /// takes the settlement's place. So this is for callers whose recovery of the intent is
    /// as good as the settlement; their write costs one fsync (the intent's) instead of two.
    pub async fn settle_intent(
        &self,
        id: IntentId,
        entries: Vec<NewEntry>,
    ) -> Result<Vec<Seq>, StoreError> {
        self.commit_intent_as(id, entries, false).await
    }

    async fn commit_intent_as(
        &self,
        id: IntentId,
        entries: Vec<NewEntry>,
        durable: bool,
    ) -> Result<Vec<Seq>, StoreError> {
        let entries = encode(entries)?;
        self.submit(|reply| Op::CommitIntent {
            id,
            entries,
            durable,
            reply,
        })
        .await
    }

    /// Deletes an intent whose write will not be mirrored (the primary refused it). Deleting
    /// an intent that is not pending is not an error.
    pub async fn discard_intent(&self, id: IntentId) -> Result<(), StoreError> {
        self.submit(|reply| Op::DiscardIntent {
            id,
            durable: true,
            reply,
        })
        .await
    }

    /// [`discard_intent`](Self::discard_intent) without an fsync of its own, as
    /// [`settle_intent`](Self::settle_intent): a crash may bring the intent back.
    pub async fn discard_intent_deferred(&self, id: IntentId) -> Result<(), StoreError> {
        self.submit(|reply| Op::DiscardIntent {
            id,
            durable: false,
            reply,
        })
        .await
    }

    /// Refuses before queueing while the journal is full; the writer checks again in the
    /// transaction, which is what counts.
    fn check_journal_cap(&self) -> Result<(), StoreError> {
        let shared = self.shared();
        let bytes = shared.journal_bytes.load(Ordering::Relaxed);
        let cap = shared.max_journal_bytes;
        if cap > 0 && bytes >= cap {
            return Err(StoreError::JournalFull { bytes, cap });
        }
        Ok(())
    }

    /// Whether the store can take writes now, and the journal's size against its cap.
    pub fn health(&self) -> StoreHealth {
        let shared = self.shared();
        StoreHealth {
            unwritable: shared.unwritable.borrow().clone(),
            journal_bytes: shared.journal_bytes.load(Ordering::Relaxed),
            max_journal_bytes: shared.max_journal_bytes,
            pending_intents: shared.pending_intents.load(Ordering::Relaxed),
        }
    }

    /// `Ok` when a new write can be journaled now; else the error it would get
    /// ([`StoreError::Unwritable`] or [`StoreError::JournalFull`]). For `/readyz`.
    pub fn writable(&self) -> Result<(), StoreError> {
        self.health().check()
    }

    /// `None` while the state disk can be written, `Some(reason)` while it cannot; changes
    /// when the store becomes unwritable and when it recovers, for alerts.
    pub fn watch_unwritable(&self) -> watch::Receiver<Option<String>> {
        self.shared().unwritable.subscribe()
    }

    /// Payload bytes in both journals, from a counter.
    pub fn journal_bytes(&self) -> u64 {
        self.shared().journal_bytes.load(Ordering::Relaxed)
    }

    /// The intents left by a previous run, in the order they were recorded, for replay at
    /// start.
    pub fn pending_intents(&self) -> Result<Vec<(IntentId, Vec<u8>)>, StoreError> {
        let txn = self.shared().begin_read()?;
        let table = txn.open_table(schema::INTENTS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (id, payload) = row?;
            out.push((IntentId(id.value()), payload.value().to_vec()));
        }
        Ok(out)
    }

    /// How many intents are pending (recorded, neither committed nor discarded); from a
    /// counter, cheap enough for every scrape.
    pub fn pending_intent_count(&self) -> u64 {
        self.shared().pending_intents.load(Ordering::Relaxed)
    }

    // --- The mirror journal ---

    /// Appends entries (to their targets' journals) and returns their seqs in order, once
    /// durable.
    ///
    /// Refused with [`StoreError::JournalFull`] while the journal is at its cap.
    pub async fn append(&self, entries: Vec<NewEntry>) -> Result<Vec<Seq>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.check_journal_cap()?;
        let entries = encode(entries)?;
        self.submit(|reply| Op::Append { entries, reply }).await
    }

    /// Up to `limit` entries of `target`'s journal with a seq above `after` (from the start
    /// with `None`), in seq order. To page, pass the last seq returned.
    pub fn read(
        &self,
        target: BackendName,
        after: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        // No byte bound: the payload bytes read never reach usize::MAX.
        self.read_bounded(target, after, limit, usize::MAX)
    }

    /// Like [`read`](Self::read), but also bounded by payload bytes: stops after the entry
    /// that brings the payload bytes read to `max_bytes` or more, so one read holds at most
    /// `max_bytes` plus one entry. Returns at least one entry when there is one (and
    /// `max_entries` is not zero), however large, so a large entry cannot stall a reader.
    pub fn read_bounded(
        &self,
        target: BackendName,
        after: Option<Seq>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        let Some(start) = first_after(after) else {
            return Ok(Vec::new());
        };
        let txn = self.shared().begin_read()?;
        let table = txn.open_table(schema::journal(target))?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for row in table.range(start..)?.take(max_entries) {
            let (key, value) = row?;
            let seq = Seq(key.value());
            let entry = writer::decode_journal(target, seq, value.value())?;
            bytes = bytes.saturating_add(entry.payload.len());
            out.push(JournalEntry {
                seq,
                target,
                collection: entry.collection.to_owned(),
                created_ms: entry.created_ms,
                payload: entry.payload.to_vec(),
            });
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// In one transaction, removes the entries `moves` names from `from`'s journal and appends
    /// each given payload, under the removed entry's lag key, to `to`'s journal with a new seq
    /// (in the order given; its creation time is this commit's). Returns the new seqs. Seqs no
    /// longer in `from`'s journal are skipped and their payload is not appended, so a crash or
    /// a concurrent remove never applies a write twice nor drops one.
    pub async fn retarget(
        &self,
        from: BackendName,
        moves: Vec<(Seq, Vec<u8>)>,
        to: BackendName,
    ) -> Result<Vec<Seq>, StoreError> {
        if moves.is_empty() {
            return Ok(Vec::new());
        }
        self.submit(|reply| Op::Retarget {
            from,
            moves,
            to,
            reply,
        })
        .await
    }

    /// Deletes applied entries from `target`'s journal. Seqs no longer there are skipped, so
    /// a replay worker that restarted may remove twice.
    pub async fn remove(&self, target: BackendName, seqs: &[Seq]) -> Result<(), StoreError> {
        self.remove_as(target, seqs, true).await
    }

    /// [`remove`](Self::remove) without an fsync of its own, as
    /// [`settle_intent`](Self::settle_intent): committed in memory at once (gone from reads
    /// and from the lag), durable with the next durable change or when the store is closed.
    /// A crash before that brings the entries back, with every entry removed by a later
    /// deferred remove and nothing else, and they are applied again: for a caller whose
    /// entries, applied again in order after anything applied since, leave the target as it
    /// was.
    pub async fn remove_deferred(
        &self,
        target: BackendName,
        seqs: &[Seq],
    ) -> Result<(), StoreError> {
        self.remove_as(target, seqs, false).await
    }

    async fn remove_as(
        &self,
        target: BackendName,
        seqs: &[Seq],
        durable: bool,
    ) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let seqs = seqs.to_vec();
        self.submit(|reply| Op::Remove {
            target,
            seqs,
            durable,
            reply,
        })
        .await
    }

    /// Moves one entry from `target`'s journal to the dead letters, with `reason` and the
    /// time, in one transaction. [`StoreError::UnknownEntry`] if it is not in the journal.
    pub async fn park(
        &self,
        target: BackendName,
        seq: Seq,
        reason: String,
    ) -> Result<(), StoreError> {
        codec::check_reason(&reason)?;
        self.submit(|reply| Op::Park {
            target,
            seq,
            reason,
            reply,
        })
        .await
    }

    /// Up to `limit` dead letters with a seq above `after` (from the first with `None`), in
    /// seq order.
    pub fn dead_letters(
        &self,
        after: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let Some(start) = first_after(after) else {
            return Ok(Vec::new());
        };
        let txn = self.shared().begin_read()?;
        let table = txn.open_table(schema::DEAD_LETTERS)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for row in table.range(start..)?.take(limit) {
            let (key, value) = row?;
            let seq = Seq(key.value());
            let letter = codec::decode_dead_letter(seq, value.value()).map_err(|reason| {
                StoreError::Corrupt {
                    table: "dead_letters",
                    key: seq.to_string(),
                    reason,
                }
            })?;
            out.push(letter);
        }
        Ok(out)
    }

    /// In one transaction, moves dead letter `seq` back to the end of its target's journal
    /// (a new seq, returned; the creation time is this commit's) for the replay to try again.
    /// [`StoreError::UnknownDeadLetter`] if there is none with that seq.
    pub async fn redrive_dead_letter(&self, seq: Seq) -> Result<Seq, StoreError> {
        self.submit(|reply| Op::RedriveDeadLetter { seq, reply })
            .await
    }

    /// Deletes dead letter `seq` and returns it, for the operator's record.
    /// [`StoreError::UnknownDeadLetter`] if there is none with that seq.
    pub async fn drop_dead_letter(&self, seq: Seq) -> Result<DeadLetter, StoreError> {
        self.submit(|reply| Op::DropDeadLetter { seq, reply }).await
    }

    /// How many dead letters there are; from a counter, cheap enough for every scrape.
    pub fn dead_letter_count(&self) -> u64 {
        self.shared().dead_letters.load(Ordering::Relaxed)
    }

    /// How far `target`'s journal is behind, from counters kept in step with every commit.
    pub fn lag(&self, target: BackendName) -> Lag {
        self.shared().lag().snapshot(target)
    }

    /// The last seq committed to `target`'s journal (`None` if none since open and the journal
    /// was empty at open), as a watch a replay worker sleeps on when it has caught up.
    ///
    /// Mark the value seen before reading, so an append between the read and the wait is not
    /// missed:
    ///
    /// ```ignore
    /// let mut appended = store.watch_appends(target);
    /// loop {
    ///     appended.borrow_and_update();
    ///     let batch = store.read(target, cursor, 256)?;
    ///     if batch.is_empty() {
    ///         appended.changed().await?; // woken by the next append
    ///         continue;
    ///     }
    ///     // apply, remove or park, advance `cursor`
    /// }
    /// ```
    pub fn watch_appends(&self, target: BackendName) -> watch::Receiver<Option<Seq>> {
        self.shared().appends[schema::slot(target)].subscribe()
    }

    /// The writer's counters since open; see [`CommitStats`].
    pub fn commit_stats(&self) -> CommitStats {
        let shared = self.shared();
        CommitStats {
            commits: shared.commits.load(Ordering::Relaxed),
            durable_commits: shared.durable_commits.load(Ordering::Relaxed),
            requests: shared.requests.load(Ordering::Relaxed),
            entries_appended: shared.entries_appended.load(Ordering::Relaxed),
        }
    }

    // --- Small key-values: the collection-id map, the topology, checkpoints ---

    /// The value under `key`, if any.
    pub fn get(&self, table: MapTable, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.shared().begin_read()?;
        let table = txn.open_table(schema::map(table))?;
        Ok(table.get(key)?.map(|value| value.value().to_vec()))
    }

    /// Sets `key` to `value`, durably.
    pub async fn put(&self, table: MapTable, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.submit(|reply| Op::Put {
            table,
            key,
            value,
            reply,
        })
        .await
    }

    /// Deletes `key`, durably; deleting a missing key is not an error.
    pub async fn delete(&self, table: MapTable, key: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.submit(|reply| Op::Delete { table, key, reply }).await
    }

    /// Every key and value of `table`, in key order. Meant for small tables (loading the
    /// collection map at start).
    pub fn scan(&self, table: MapTable) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.shared().begin_read()?;
        let table = txn.open_table(schema::map(table))?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (key, value) = row?;
            out.push((key.value().to_owned(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// At most `limit` keys and values of `table` from one end: the first in key order, or,
    /// with `last`, the last ones, last first. For tables kept in key order of age (the audit
    /// log), where only the newest or the oldest are wanted.
    pub fn scan_end(
        &self,
        table: MapTable,
        limit: usize,
        last: bool,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.shared().begin_read()?;
        let table = txn.open_table(schema::map(table))?;
        let rows = table.iter()?;
        let rows: Box<dyn Iterator<Item = _>> = if last {
            Box::new(rows.rev())
        } else {
            Box::new(rows)
        };
        let mut out = Vec::new();
        for row in rows.take(limit) {
            let (key, value) = row?;
            out.push((key.value().to_owned(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// How many keys `table` holds.
    pub fn count(&self, table: MapTable) -> Result<u64, StoreError> {
        let txn = self.shared().begin_read()?;
        let table = txn.open_table(schema::map(table))?;
        Ok(redb::ReadableTableMetadata::len(&table)?)
    }
}

/// Encodes entries on the caller's task, keeping the copy of each payload off the writer.
fn encode(entries: Vec<NewEntry>) -> Result<Vec<EncodedEntry>, StoreError> {
    entries
        .into_iter()
        .map(|entry| {
            Ok(EncodedEntry {
                bytes: codec::encode_entry(entry.target, &entry.collection, &entry.payload)?,
                payload_len: entry.payload.len() as u64,
                target: entry.target,
                collection: entry.collection,
            })
        })
        .collect()
}

/// Opens the file, checks (or migrates) its format, creates missing tables and reads the
/// in-memory counters back. Blocking.
fn open_blocking(
    dir: &Path,
    options: StoreOptions,
    opener: Opener,
) -> Result<(Shared, Counters, PathBuf), StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_owned(),
        source: Arc::new(source),
    })?;
    let path = dir.join(schema::FILE_NAME);
    let db = open::open_db(&opener, &path)?;
    let loaded = open::load(&db)?;
    tracing::info!(
        path = %path.display(),
        journal_old = loaded.book.entries(BackendName::Old),
        journal_new = loaded.book.entries(BackendName::New),
        journal_bytes = loaded.book.bytes(),
        dead_letters = loaded.dead_letters,
        pending_intents = loaded.pending_intents,
        "state store opened"
    );
    let shared = Shared {
        db: RwLock::new(Some(db)),
        path: path.clone(),
        opener,
        max_journal_bytes: options.max_journal_bytes,
        unwritable: watch::channel(None).0,
        journal_bytes: AtomicU64::new(loaded.book.bytes()),
        lag: Mutex::new(loaded.book),
        dead_letters: AtomicU64::new(loaded.dead_letters),
        pending_intents: AtomicU64::new(loaded.pending_intents),
        commits: AtomicU64::new(0),
        durable_commits: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        entries_appended: AtomicU64::new(0),
        appends: loaded.last.map(|seq| watch::channel(seq).0),
    };
    Ok((shared, loaded.counters, path))
}
