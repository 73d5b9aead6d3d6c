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
//! 1. [`Store::record_intent`] before sending a write to the primary, so a crash between the
//!    primary's answer and the journal append can be found at start ([`Store::pending_intents`]);
//! 2. on the primary's answer, [`Store::commit_intent`] appends the mirrored write to the
//!    journal and drops the intent in one transaction (or [`Store::discard_intent`] if the
//!    primary refused it);
//! 3. the replay worker pages the journal with [`Store::read`], applies entries to the
//!    secondary, [`Store::remove`]s them, [`Store::park`]s permanent failures as dead letters,
//!    and sleeps on [`Store::watch_appends`] when it has caught up.
//!
//! Layout:
//! - `lib.rs`: [`Store`], the public types and the reads;
//! - `writer.rs`: the group-commit writer thread;
//! - `schema.rs`: the redb tables and bookkeeping keys, everything that fixes the file layout;
//! - `codec.rs`: the byte layouts of journal entries and dead letters;
//! - `lag.rs`: in-memory lag accounting ([`Lag`]);
//! - `error.rs`: [`StoreError`].

mod codec;
mod error;
mod lag;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use redb::{
    Builder, Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
};
use shift_config::BackendName;
use tokio::sync::{mpsc, oneshot, watch};

pub use error::StoreError;
pub use lag::{CollectionLag, Lag};

use lag::{LagBook, LagChange};
use writer::{Counters, EncodedEntry, Op, Reply};

/// redb's page cache. Its default (1 GiB) is sized for a database server; the journal's hot
/// part is its tail, and the maps are small.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

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

/// A pending write intent. Increasing, so [`Store::pending_intents`] returns them in the order
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
    /// Its position; pass it to [`Store::remove`] once applied.
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
    /// Why it was parked, as given to [`Store::park`] (for example the backend's answer).
    pub reason: String,
    /// The write, as journaled.
    pub payload: Vec<u8>,
}

/// Counters of the group-commit writer since open, for benchmarks: `requests / commits` is
/// the group-commit factor (write calls sharing one fsync).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions committed, each one fsync.
    pub commits: u64,
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

/// State shared by the handles and the writer thread.
pub(crate) struct Shared {
    /// The open database; the file lock lives as long as it does.
    db: Database,
    /// Lag per target, changed by the writer after each commit.
    lag: Mutex<LagBook>,
    /// Entries in the dead-letter table, kept beside it so a metrics scrape reads no table.
    dead_letters: AtomicU64,
    /// Entries in the intent table, likewise.
    pending_intents: AtomicU64,
    /// See [`CommitStats`].
    commits: AtomicU64,
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
pub struct Store {
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

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) `dir` and its `chroma-shift.redb`, rebuilds the lag counters
    /// with one scan of the journals, and starts the writer thread.
    ///
    /// Fails with [`StoreError::Locked`] if another process, or another open handle in this
    /// one, has the file. Must be called within a tokio runtime (the blocking work runs on its
    /// blocking pool).
    pub async fn open(dir: &Path) -> Result<Store, StoreError> {
        let dir = dir.to_owned();
        let opened = tokio::task::spawn_blocking(move || open_blocking(&dir)).await;
        let (shared, counters, path) = match opened {
            Ok(result) => result?,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => return Err(StoreError::Closed),
        };
        let shared = Arc::new(shared);
        let (queue, ops) = mpsc::channel(writer::QUEUE_DEPTH);
        let thread = writer::spawn(shared.clone(), ops, counters)
            .map_err(|err| StoreError::Storage(Arc::new(redb::Error::Io(err))))?;
        Ok(Store {
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

    /// Hands a change to the writer and waits for its commit.
    async fn submit<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
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
    pub async fn record_intent(&self, payload: Vec<u8>) -> Result<IntentId, StoreError> {
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
        let entries = encode(entries)?;
        self.submit(|reply| Op::CommitIntent { id, entries, reply })
            .await
    }

    /// Deletes an intent whose write will not be mirrored (the primary refused it). Deleting
    /// an intent that is not pending is not an error.
    pub async fn discard_intent(&self, id: IntentId) -> Result<(), StoreError> {
        self.submit(|reply| Op::DiscardIntent { id, reply }).await
    }

    /// The intents left by a previous run, in the order they were recorded, for replay at
    /// start.
    pub fn pending_intents(&self) -> Result<Vec<(IntentId, Vec<u8>)>, StoreError> {
        let txn = self.shared().db.begin_read()?;
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
    pub async fn append(&self, entries: Vec<NewEntry>) -> Result<Vec<Seq>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
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
        let start = match after {
            None => 0,
            Some(Seq(seq)) => match seq.checked_add(1) {
                Some(next) => next,
                None => return Ok(Vec::new()),
            },
        };
        let txn = self.shared().db.begin_read()?;
        let table = txn.open_table(schema::journal(target))?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for row in table.range(start..)?.take(limit) {
            let (key, value) = row?;
            let seq = Seq(key.value());
            let entry = writer::decode_journal(target, seq, value.value())?;
            out.push(JournalEntry {
                seq,
                target,
                collection: entry.collection.to_owned(),
                created_ms: entry.created_ms,
                payload: entry.payload.to_vec(),
            });
        }
        Ok(out)
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
        let start = match after {
            None => 0,
            Some(Seq(seq)) => match seq.checked_add(1) {
                Some(next) => next,
                None => return Ok(Vec::new()),
            },
        };
        let txn = self.shared().db.begin_read()?;
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
        if seqs.is_empty() {
            return Ok(());
        }
        let seqs = seqs.to_vec();
        self.submit(|reply| Op::Remove {
            target,
            seqs,
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
        let start = match after {
            None => 0,
            Some(Seq(seq)) => match seq.checked_add(1) {
                Some(next) => next,
                None => return Ok(Vec::new()),
            },
        };
        let txn = self.shared().db.begin_read()?;
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
            requests: shared.requests.load(Ordering::Relaxed),
            entries_appended: shared.entries_appended.load(Ordering::Relaxed),
        }
    }

    // --- Small key-values: the collection-id map, the topology, checkpoints ---

    /// The value under `key`, if any.
    pub fn get(&self, table: MapTable, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.shared().db.begin_read()?;
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
        let txn = self.shared().db.begin_read()?;
        let table = txn.open_table(schema::map(table))?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (key, value) = row?;
            out.push((key.value().to_owned(), value.value().to_vec()));
        }
        Ok(out)
    }
}

/// Encodes entries on the caller's task, keeping the copy of each payload off the writer.
fn encode(entries: Vec<NewEntry>) -> Result<Vec<EncodedEntry>, StoreError> {
    entries
        .into_iter()
        .map(|entry| {
            Ok(EncodedEntry {
                bytes: codec::encode_entry(entry.target, &entry.collection, &entry.payload)?,
                target: entry.target,
                collection: entry.collection,
            })
        })
        .collect()
}

/// Opens the file, checks its format, creates missing tables and rebuilds the in-memory
/// counters. Blocking.
fn open_blocking(dir: &Path) -> Result<(Shared, Counters, PathBuf), StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_owned(),
        source: Arc::new(source),
    })?;
    let path = dir.join(schema::FILE_NAME);
    let db = Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(&path)
        .map_err(|err| match err {
            DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.clone() },
            other => other.into(),
        })?;

    let stored = prepare(&db)?;

    // One scan of each journal rebuilds the lag book; the largest keys guard the counters.
    let txn = db.begin_read()?;
    let mut book = LagBook::default();
    let mut last = [None; 2];
    for target in schema::TARGETS {
        let table = txn.open_table(schema::journal(target))?;
        for row in table.iter()? {
            let (key, value) = row?;
            let seq = Seq(key.value());
            let entry = writer::decode_journal(target, seq, value.value())?;
            book.apply(LagChange::Added {
                target,
                collection: entry.collection.to_owned(),
                seq,
                created_ms: entry.created_ms,
            });
            last[schema::slot(target)] = Some(seq);
        }
    }
    let dead = txn.open_table(schema::DEAD_LETTERS)?;
    let dead_count = dead.len()?;
    let last_dead = dead.last()?.map(|(key, _)| key.value());
    let intents = txn.open_table(schema::INTENTS)?;
    let intent_count = intents.len()?;
    let last_intent = intents.last()?.map(|(key, _)| key.value());

    // The persisted counters are the truth; the keys only guard against them lagging.
    let largest_seq = last
        .iter()
        .flatten()
        .map(|seq| seq.0)
        .chain(last_dead)
        .max();
    let counters = Counters {
        next_seq: stored.next_seq.max(largest_seq.map_or(1, |seq| seq + 1)),
        next_intent: stored.next_intent.max(last_intent.map_or(1, |id| id + 1)),
    };
    tracing::info!(
        path = %path.display(),
        journal_old = book.snapshot(BackendName::Old).entries,
        journal_new = book.snapshot(BackendName::New).entries,
        dead_letters = dead_count,
        pending_intents = intent_count,
        "state store opened"
    );

    let shared = Shared {
        db,
        lag: Mutex::new(book),
        dead_letters: AtomicU64::new(dead_count),
        pending_intents: AtomicU64::new(intent_count),
        commits: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        entries_appended: AtomicU64::new(0),
        appends: last.map(|seq| watch::channel(seq).0),
    };
    Ok((shared, counters, path))
}

/// In one write transaction: checks or records the format, creates every table (a read
/// transaction cannot open a table never created), and reads the persisted counters.
fn prepare(db: &Database) -> Result<Counters, StoreError> {
    let txn = db.begin_write()?;
    let counters = {
        let mut meta = txn.open_table(schema::META)?;
        let format = meta.get(schema::FORMAT_KEY)?.map(|v| v.value());
        match format {
            None => {
                meta.insert(schema::FORMAT_KEY, schema::FORMAT)?;
            }
            Some(found) if found == schema::FORMAT => {}
            Some(found) => {
                return Err(StoreError::UnsupportedFormat {
                    found,
                    supported: schema::FORMAT,
                })
            }
        }
        for table in [
            schema::JOURNAL_OLD,
            schema::JOURNAL_NEW,
            schema::INTENTS,
            schema::DEAD_LETTERS,
        ] {
            txn.open_table(table)?;
        }
        for table in schema::MAP_TABLES {
            txn.open_table(schema::map(table))?;
        }
        let next_seq = meta.get(schema::NEXT_SEQ_KEY)?.map_or(1, |v| v.value());
        let next_intent = meta.get(schema::NEXT_INTENT_KEY)?.map_or(1, |v| v.value());
        Counters {
            next_seq,
            next_intent,
        }
    };
    txn.commit()?;
    Ok(counters)
}
