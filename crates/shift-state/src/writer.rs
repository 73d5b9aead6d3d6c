//! The group-commit writer.
//!
//! Every durable change goes through one thread. It takes all the requests already queued (up
//! to [`MAX_BATCH`]), applies them in order in one redb write transaction, commits it with
//! `Durability::Immediate` (one fsync for the whole batch), and only then answers each caller.
//! While one batch is being synced the next one queues up, so under load many writers share
//! each fsync, and alone a writer pays one fsync as it would anyway.
//!
//! A batch made only of deferred changes ([`crate::StateStore::settle_intent`],
//! [`crate::StateStore::remove_deferred`] and their kin) commits
//! with `Durability::None`: no fsync; redb makes it durable with the next durable commit (any
//! batch with another request in it), and the writer makes one durable commit before it stops
//! if the last was not. A crash loses at most the deferred commits after the last durable one,
//! in commit order, so what it leaves is always a prefix of what was answered.
//!
//! A plain thread rather than a tokio task: a commit blocks on fsync, which must not stall a
//! runtime worker, and the loop has nothing else to wait for.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Durability, ReadableTable, Table, WriteTransaction};
use shift_config::BackendName;
use tokio::sync::mpsc;

use crate::lag::CollectionState;
pub(crate) use crate::ops::{Counters, EncodedEntry, Op, Reply};
use crate::{codec, recover, schema, DeadLetter, IntentId, MapTable, Seq, Shared, StoreError};

/// Most requests in one transaction: bounds the time a batch holds its callers and the memory
/// of one transaction.
pub(crate) const MAX_BATCH: usize = 1024;

/// Requests that may wait for the writer before callers are made to wait to enqueue: the
/// back-pressure that keeps a slow disk from growing an unbounded queue.
pub(crate) const QUEUE_DEPTH: usize = 4 * MAX_BATCH;

/// Starts the writer thread. It runs until every sender of `queue` is dropped and the queue
/// is drained.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    queue: mpsc::Receiver<Op>,
    counters: Counters,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("shift-state-writer".into())
        .spawn(move || run(&shared, queue, counters))
}

fn run(shared: &Shared, mut queue: mpsc::Receiver<Op>, mut counters: Counters) {
    let mut ops = Vec::with_capacity(MAX_BATCH);
    // Blocks for the first request, then takes whatever else is already queued.
    while queue.blocking_recv_many(&mut ops, MAX_BATCH) > 0 {
        if let Some(reason) = commit_batch(shared, &mut counters, std::mem::take(&mut ops)) {
            // redb latches an I/O error: every later transaction of this Database fails. Only
            // a new Database can write again, once the disk can.
            if !recover::reopen_until_writable(shared, &mut queue, &mut counters, &reason) {
                return;
            }
        }
    }
    if counters.unsynced {
        sync_before_stop(shared);
    }
}

/// Makes the deferred commits durable before the writer stops, so a clean stop leaves no
/// settled intent to be recovered. (redb's close would too; this one is counted and logged.)
fn sync_before_stop(shared: &Shared) {
    let db = shared
        .db
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(db) = db.as_ref() else { return };
    let synced = db.begin_write().map_err(StoreError::from).and_then(|txn| {
        // A new transaction's durability is `Immediate`.
        txn.commit().map_err(StoreError::from)
    });
    match synced {
        Ok(()) => {
            shared.commits.fetch_add(1, Ordering::Relaxed);
            shared.durable_commits.fetch_add(1, Ordering::Relaxed);
        }
        Err(error) => {
            tracing::error!(%error, "cannot make the last settled intents durable at stop; the next start reconciles them")
        }
    }
}

/// Commits one batch and answers its callers. Returns the I/O error that failed it, if one
/// did: the store is then unwritable until the writer has reopened the file.
fn commit_batch(shared: &Shared, counters: &mut Counters, ops: Vec<Op>) -> Option<String> {
    let requests = ops.len() as u64;
    let durable = ops.iter().any(Op::durable);
    let mut batch = Batch::new(
        *counters,
        shared.journal_bytes.load(Ordering::Relaxed),
        shared.max_journal_bytes,
    );
    let outcome = {
        let db = shared
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match db.as_ref() {
            Some(db) => batch.write(db, ops, durable),
            // Only while recovering, which answers the queue itself; kept total anyway.
            None => {
                batch.skip(ops);
                Err(StoreError::Unwritable {
                    reason: "the state file is closed for reopening".into(),
                })
            }
        }
    };
    if let Err(err) = outcome {
        // Nothing of a failed transaction reached the counters: they are set only below.
        return match err.io_reason() {
            Some(reason) => {
                tracing::error!(error = %err, requests, "state store commit failed: the state disk cannot be written; refusing writes until it can");
                // Refuse new calls before answering these, so no caller sees a success after
                // an error it could have seen first.
                recover::mark_unwritable(shared, &reason);
                batch.answer(Err(&StoreError::Unwritable {
                    reason: reason.clone(),
                }));
                Some(reason)
            }
            None => {
                tracing::error!(error = %err, requests, "state store commit failed; the batch's writes are refused");
                batch.answer(Err(&err));
                None
            }
        };
    }

    // Publish before answering, so a caller that saw its write acknowledged also sees it in
    // lag() and wakes any replay worker.
    counters.next_seq = batch.next_seq;
    counters.next_intent = batch.next_intent;
    counters.unsynced = !durable;
    {
        let mut lag = shared.lag();
        for (target, collection, state) in batch.lag.drain(..) {
            lag.set(target, collection, state);
        }
        shared.journal_bytes.store(lag.bytes(), Ordering::Relaxed);
    }
    add_signed(&shared.dead_letters, batch.dead_letters);
    add_signed(&shared.pending_intents, batch.intents);
    shared.commits.fetch_add(1, Ordering::Relaxed);
    if durable {
        shared.durable_commits.fetch_add(1, Ordering::Relaxed);
    }
    shared.requests.fetch_add(requests, Ordering::Relaxed);
    shared
        .entries_appended
        .fetch_add(batch.appended, Ordering::Relaxed);
    for (slot, last) in batch.last_appended.iter().enumerate() {
        if let Some(seq) = last {
            shared.appends[slot].send_replace(Some(*seq));
        }
    }
    batch.answer(Ok(()));
    None
}

/// Adds a batch's net change to a counter.
fn add_signed(counter: &std::sync::atomic::AtomicU64, delta: i64) {
    if delta >= 0 {
        counter.fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
    } else {
        counter.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
    }
}

/// Why one request of a batch did not apply.
enum Failure {
    /// This request is refused (an unknown intent); the rest of the batch goes on. The request
    /// changed nothing before it was refused.
    Refused(StoreError),
    /// The transaction cannot go on; every request of the batch gets this error.
    Fatal(StoreError),
}

impl From<redb::StorageError> for Failure {
    fn from(err: redb::StorageError) -> Self {
        Failure::Fatal(err.into())
    }
}

/// A request's outcome as its answer, and the error that abandons the batch when it is fatal.
fn settle<T>(
    result: Result<T, Failure>,
    done: impl FnOnce(Result<T, StoreError>) -> Done,
) -> (Done, Option<StoreError>) {
    match result {
        Ok(value) => (done(Ok(value)), None),
        Err(Failure::Refused(err)) => (done(Err(err)), None),
        Err(Failure::Fatal(err)) => (done(Err(err.clone())), Some(err)),
    }
}

/// What happened to a journal entry, for its index and the lag counts.
#[derive(Clone, Copy)]
enum Change {
    Added,
    Removed,
}

/// A request applied (or not) inside the transaction, waiting for the commit to answer it.
enum Done {
    Intent(Reply<IntentId>, Result<IntentId, StoreError>),
    Seqs(Reply<Vec<Seq>>, Result<Vec<Seq>, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
    Seq(Reply<Seq>, Result<Seq, StoreError>),
    Letter(Reply<DeadLetter>, Result<DeadLetter, StoreError>),
}

impl Done {
    /// A request the batch never reached; its result is overridden by the batch's error.
    fn skipped(op: Op) -> Done {
        match op {
            Op::RecordIntent { reply, .. } => Done::Intent(reply, never()),
            Op::CommitIntent { reply, .. }
            | Op::Append { reply, .. }
            | Op::Retarget { reply, .. } => Done::Seqs(reply, never()),
            Op::RedriveDeadLetter { reply, .. } => Done::Seq(reply, never()),
            Op::DropDeadLetter { reply, .. } => Done::Letter(reply, never()),
            Op::DiscardIntent { reply, .. }
            | Op::Remove { reply, .. }
            | Op::Park { reply, .. }
            | Op::Put { reply, .. }
            | Op::Delete { reply, .. } => Done::Unit(reply, never()),
        }
    }

    /// Answers the caller: its own result if the batch committed, the batch's error if not.
    /// A caller that stopped waiting is not an error: its write stands or falls with the batch.
    fn answer(self, batch: Result<(), &StoreError>) {
        let batch = batch.map_err(Clone::clone);
        match self {
            Done::Intent(tx, own) => drop(tx.send(batch.and(own))),
            Done::Seqs(tx, own) => drop(tx.send(batch.and(own))),
            Done::Unit(tx, own) => drop(tx.send(batch.and(own))),
            Done::Seq(tx, own) => drop(tx.send(batch.and(own))),
            Done::Letter(tx, own) => drop(tx.send(batch.and(own))),
        }
    }
}

/// Answers a request without applying it.
pub(crate) fn refuse(op: Op, err: &StoreError) {
    Done::skipped(op).answer(Err(err));
}

/// The placeholder result of a request never applied.
fn never<T>() -> Result<T, StoreError> {
    Err(StoreError::Closed)
}

/// The redb tables a batch writes, opened once per transaction.
struct Tables<'txn> {
    meta: Table<'txn, &'static str, u64>,
    journals: [Table<'txn, u64, &'static [u8]>; 2],
    intents: Table<'txn, u64, &'static [u8]>,
    dead: Table<'txn, u64, &'static [u8]>,
    index: Table<'txn, (u8, &'static str, u64), u64>,
    summary: Table<'txn, (u8, &'static str), (u64, u64)>,
    maps: [Table<'txn, &'static str, &'static [u8]>; 4],
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            meta: txn.open_table(schema::META)?,
            journals: [
                txn.open_table(schema::JOURNAL_OLD)?,
                txn.open_table(schema::JOURNAL_NEW)?,
            ],
            intents: txn.open_table(schema::INTENTS)?,
            dead: txn.open_table(schema::DEAD_LETTERS)?,
            index: txn.open_table(schema::LAG_INDEX)?,
            summary: txn.open_table(schema::LAG_SUMMARY)?,
            maps: [
                txn.open_table(schema::map(MapTable::Collections))?,
                txn.open_table(schema::map(MapTable::Topology))?,
                txn.open_table(schema::map(MapTable::Checkpoints))?,
                txn.open_table(schema::map(MapTable::Audit))?,
            ],
        })
    }

    fn journal(&mut self, target: BackendName) -> &mut Table<'txn, u64, &'static [u8]> {
        &mut self.journals[schema::slot(target)]
    }

    fn map(&mut self, table: MapTable) -> &mut Table<'txn, &'static str, &'static [u8]> {
        let index = match table {
            MapTable::Collections => 0,
            MapTable::Topology => 1,
            MapTable::Checkpoints => 2,
            MapTable::Audit => 3,
        };
        &mut self.maps[index]
    }
}

/// What one transaction did, held back until it commits.
struct Batch {
    /// The counters as committed before this batch, to write them only if they moved.
    before: Counters,
    next_seq: u64,
    next_intent: u64,
    /// One commit time for the whole batch: its entries became durable together.
    now_ms: u64,
    /// Payload bytes in the journals, as this transaction would leave them.
    journal_bytes: u64,
    /// `[state] max_journal_bytes`; 0 is no cap.
    cap: u64,
    /// Net change per (target slot, collection) of entries and payload bytes.
    touched: HashMap<(usize, String), (i64, i64)>,
    /// What the touched collections hold after the commit, for the lag book.
    lag: Vec<(BackendName, String, Option<CollectionState>)>,
    /// Net change of the dead-letter count.
    dead_letters: i64,
    /// Net change of the pending-intent count.
    intents: i64,
    appended: u64,
    last_appended: [Option<Seq>; 2],
    done: Vec<Done>,
}

impl Batch {
    fn new(counters: Counters, journal_bytes: u64, cap: u64) -> Batch {
        Batch {
            before: counters,
            next_seq: counters.next_seq,
            next_intent: counters.next_intent,
            now_ms: now_ms(),
            journal_bytes,
            cap,
            touched: HashMap::new(),
            lag: Vec::new(),
            dead_letters: 0,
            intents: 0,
            appended: 0,
            last_appended: [None; 2],
            done: Vec::new(),
        }
    }

    fn answer(self, batch: Result<(), &StoreError>) {
        for done in self.done {
            done.answer(batch);
        }
    }

    fn skip(&mut self, ops: impl IntoIterator<Item = Op>) {
        self.done.extend(ops.into_iter().map(Done::skipped));
    }

    /// Applies every request and commits, with an fsync if `durable`; every request leaves a
    /// [`Done`] behind either way.
    fn write(
        &mut self,
        db: &redb::Database,
        ops: Vec<Op>,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut txn = match db.begin_write() {
            Ok(txn) => txn,
            Err(err) => {
                self.skip(ops);
                return Err(err.into());
            }
        };
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        if let Err(err) = txn.set_durability(durability) {
            self.skip(ops);
            return Err(err.into());
        }
        // Dropping an uncommitted transaction rolls it back.
        self.apply_all(&txn, ops)?;
        txn.commit()?;
        Ok(())
    }

    fn apply_all(&mut self, txn: &WriteTransaction, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut tables = match Tables::open(txn) {
            Ok(tables) => tables,
            Err(err) => {
                self.skip(ops);
                return Err(err);
            }
        };
        let mut ops = ops.into_iter();
        while let Some(op) = ops.next() {
            if let Err(err) = self.apply(&mut tables, op) {
                self.skip(ops);
                return Err(err);
            }
        }
        self.settle_lag(&mut tables)?;
        if self.next_seq != self.before.next_seq {
            tables.meta.insert(schema::NEXT_SEQ_KEY, self.next_seq)?;
        }
        if self.next_intent != self.before.next_intent {
            tables
                .meta
                .insert(schema::NEXT_INTENT_KEY, self.next_intent)?;
        }
        Ok(())
    }

    /// Applies one request; `Err` only when the whole batch must be abandoned.
    fn apply(&mut self, t: &mut Tables<'_>, op: Op) -> Result<(), StoreError> {
        let (done, fatal) = match op {
            Op::RecordIntent { payload, reply } => {
                settle(self.record_intent(t, &payload), |r| Done::Intent(reply, r))
            }
            Op::CommitIntent {
                id, entries, reply, ..
            } => settle(self.commit_intent(t, id, entries), |r| Done::Seqs(reply, r)),
            Op::DiscardIntent { id, reply, .. } => {
                settle(self.discard_intent(t, id), |r| Done::Unit(reply, r))
            }
            Op::Append { entries, reply } => {
                settle(self.append_new(t, entries), |r| Done::Seqs(reply, r))
            }
            Op::Remove {
                target,
                seqs,
                reply,
                ..
            } => settle(self.remove(t, target, &seqs), |r| Done::Unit(reply, r)),
            Op::Park {
                target,
                seq,
                reason,
                reply,
            } => settle(self.park(t, target, seq, &reason), |r| Done::Unit(reply, r)),
            Op::Put {
                table,
                key,
                value,
                reply,
            } => {
                let r = t.map(table).insert(key.as_str(), value.as_slice());
                settle(r.map(|_| ()).map_err(Failure::from), |r| {
                    Done::Unit(reply, r)
                })
            }
            Op::Delete { table, key, reply } => {
                let r = t.map(table).remove(key.as_str());
                settle(r.map(|_| ()).map_err(Failure::from), |r| {
                    Done::Unit(reply, r)
                })
            }
            Op::Retarget {
                from,
                moves,
                to,
                reply,
            } => settle(self.retarget(t, from, moves, to), |r| Done::Seqs(reply, r)),
            Op::RedriveDeadLetter { seq, reply } => {
                settle(self.redrive(t, seq), |r| Done::Seq(reply, r))
            }
            Op::DropDeadLetter { seq, reply } => {
                settle(self.drop_dead_letter(t, seq), |r| Done::Letter(reply, r))
            }
        };
        self.done.push(done);
        fatal.map_or(Ok(()), Err)
    }

    fn record_intent(&mut self, t: &mut Tables<'_>, payload: &[u8]) -> Result<IntentId, Failure> {
        // The cap is checked where a write is admitted, before the primary sees it; the
        // intent's commit is not refused, since by then the primary has applied the write.
        self.check_cap()?;
        let id = self.next_intent;
        self.next_intent += 1;
        t.intents.insert(id, payload)?;
        self.intents += 1;
        Ok(IntentId(id))
    }

    fn discard_intent(&mut self, t: &mut Tables<'_>, id: IntentId) -> Result<(), Failure> {
        if t.intents.remove(id.0)?.is_some() {
            self.intents -= 1;
        }
        Ok(())
    }

    fn commit_intent(
        &mut self,
        t: &mut Tables<'_>,
        id: IntentId,
        entries: Vec<EncodedEntry>,
    ) -> Result<Vec<Seq>, Failure> {
        // Checked first, so a refused commit appends nothing.
        if t.intents.remove(id.0)?.is_none() {
            return Err(Failure::Refused(StoreError::UnknownIntent(id)));
        }
        self.intents -= 1;
        self.append(t, entries)
    }

    /// Refuses a new write while the journal is at or over its cap. Changes nothing.
    fn check_cap(&self) -> Result<(), Failure> {
        if self.cap > 0 && self.journal_bytes >= self.cap {
            return Err(Failure::Refused(StoreError::JournalFull {
                bytes: self.journal_bytes,
                cap: self.cap,
            }));
        }
        Ok(())
    }

    /// Appends new writes, refused whole while the journal is full.
    fn append_new(
        &mut self,
        t: &mut Tables<'_>,
        entries: Vec<EncodedEntry>,
    ) -> Result<Vec<Seq>, Failure> {
        self.check_cap()?;
        self.append(t, entries)
    }

    fn append(
        &mut self,
        t: &mut Tables<'_>,
        entries: Vec<EncodedEntry>,
    ) -> Result<Vec<Seq>, Failure> {
        let mut seqs = Vec::with_capacity(entries.len());
        for mut entry in entries {
            let seq = Seq(self.next_seq);
            self.next_seq += 1;
            codec::stamp_created_ms(&mut entry.bytes, self.now_ms);
            t.journal(entry.target)
                .insert(seq.0, entry.bytes.as_slice())?;
            self.last_appended[schema::slot(entry.target)] = Some(seq);
            self.appended += 1;
            let at = (entry.target, entry.collection.as_str(), seq);
            self.reindex(t, Change::Added, at, entry.payload_len)?;
            seqs.push(seq);
        }
        Ok(seqs)
    }

    /// Indexes a journal entry just inserted, or unindexes one just removed.
    fn reindex(
        &mut self,
        t: &mut Tables<'_>,
        change: Change,
        (target, collection, seq): (BackendName, &str, Seq),
        payload_len: u64,
    ) -> Result<(), Failure> {
        let key = (schema::slot_key(target), collection, seq.0);
        let sign = match change {
            Change::Added => {
                t.index.insert(key, self.now_ms)?;
                self.journal_bytes += payload_len;
                1
            }
            Change::Removed => {
                t.index.remove(key)?;
                self.journal_bytes = self.journal_bytes.saturating_sub(payload_len);
                -1
            }
        };
        let delta = self
            .touched
            .entry((schema::slot(target), collection.to_owned()))
            .or_default();
        delta.0 += sign;
        delta.1 += sign * payload_len as i64;
        Ok(())
    }

    /// Writes the touched collections' new totals to `lag.summary` and reads each one's new
    /// oldest entry from `lag.index`, for the lag book once committed.
    fn settle_lag(&mut self, t: &mut Tables<'_>) -> Result<(), StoreError> {
        for ((slot, collection), (entries, bytes)) in std::mem::take(&mut self.touched) {
            let target = schema::TARGETS[slot];
            let key = (schema::slot_key(target), collection.as_str());
            let (old_entries, old_bytes) = t.summary.get(key)?.map_or((0, 0), |v| v.value());
            let entries = old_entries.saturating_add_signed(entries);
            let bytes = old_bytes.saturating_add_signed(bytes);
            let state = if entries == 0 {
                t.summary.remove(key)?;
                None
            } else {
                t.summary.insert(key, (entries, bytes))?;
                let slot = schema::slot_key(target);
                let oldest = t
                    .index
                    .range((slot, collection.as_str(), 0)..=(slot, collection.as_str(), u64::MAX))?
                    .next()
                    .transpose()?
                    .map_or(self.now_ms, |(_, created)| created.value());
                Some(CollectionState {
                    entries,
                    bytes,
                    oldest_created_ms: oldest,
                })
            };
            self.lag.push((target, collection, state));
        }
        Ok(())
    }

    fn remove(
        &mut self,
        t: &mut Tables<'_>,
        target: BackendName,
        seqs: &[Seq],
    ) -> Result<(), Failure> {
        for &seq in seqs {
            // Removing an entry that is already gone is not an error: a replay worker that
            // restarted may remove twice.
            self.take(t, target, seq, |_| ())?;
        }
        Ok(())
    }

    /// Removes `seq` from `target`'s journal and unindexes it: its collection and what `with`
    /// makes of it, or `None` when it is gone already.
    fn take<R>(
        &mut self,
        t: &mut Tables<'_>,
        target: BackendName,
        seq: Seq,
        with: impl FnOnce(&codec::EntryView<'_>) -> R,
    ) -> Result<Option<(String, R)>, Failure> {
        let Some(old) = t.journal(target).remove(seq.0)? else {
            return Ok(None);
        };
        let entry = decode_journal(target, seq, old.value()).map_err(Failure::Fatal)?;
        let made = with(&entry);
        let (collection, len) = (entry.collection.to_owned(), entry.payload.len() as u64);
        drop(old);
        self.reindex(t, Change::Removed, (target, &collection, seq), len)?;
        Ok(Some((collection, made)))
    }

    fn park(
        &mut self,
        t: &mut Tables<'_>,
        target: BackendName,
        seq: Seq,
        reason: &str,
    ) -> Result<(), Failure> {
        let now_ms = self.now_ms;
        let Some((_, letter)) = self.take(t, target, seq, |e| {
            codec::encode_dead_letter(e, now_ms, reason)
        })?
        else {
            return Err(Failure::Refused(StoreError::UnknownEntry { target, seq }));
        };
        t.dead.insert(seq.0, letter.as_slice())?;
        self.dead_letters += 1;
        Ok(())
    }
}

impl Batch {
    /// Moves entries from one target's journal to the other's, each with a new payload.
    fn retarget(
        &mut self,
        t: &mut Tables<'_>,
        from: BackendName,
        moves: Vec<(Seq, Vec<u8>)>,
        to: BackendName,
    ) -> Result<Vec<Seq>, Failure> {
        let mut appended = Vec::with_capacity(moves.len());
        for (seq, payload) in moves {
            // An entry already applied, parked or moved is skipped, like a second remove.
            let Some((collection, ())) = self.take(t, from, seq, |_| ())? else {
                continue;
            };
            let bytes = codec::encode_entry(to, &collection, &payload).map_err(Failure::Fatal)?;
            let mut seqs = self.append(
                t,
                vec![EncodedEntry {
                    target: to,
                    collection,
                    payload_len: payload.len() as u64,
                    bytes,
                }],
            )?;
            appended.append(&mut seqs);
        }
        Ok(appended)
    }

    /// Puts a dead letter back at the end of its target's journal.
    fn redrive(&mut self, t: &mut Tables<'_>, seq: Seq) -> Result<Seq, Failure> {
        let letter = self.take_dead_letter(t, seq)?;
        let bytes = codec::encode_entry(letter.target, &letter.collection, &letter.payload)
            .map_err(Failure::Fatal)?;
        let seqs = self.append(
            t,
            vec![EncodedEntry {
                target: letter.target,
                collection: letter.collection,
                payload_len: letter.payload.len() as u64,
                bytes,
            }],
        )?;
        Ok(seqs[0])
    }

    fn drop_dead_letter(&mut self, t: &mut Tables<'_>, seq: Seq) -> Result<DeadLetter, Failure> {
        self.take_dead_letter(t, seq)
    }

    /// Deletes a dead letter and returns it; refused if there is none with that seq.
    fn take_dead_letter(&mut self, t: &mut Tables<'_>, seq: Seq) -> Result<DeadLetter, Failure> {
        let Some(old) = t.dead.remove(seq.0)? else {
            return Err(Failure::Refused(StoreError::UnknownDeadLetter(seq)));
        };
        let letter = codec::decode_dead_letter(seq, old.value()).map_err(|reason| {
            Failure::Fatal(StoreError::Corrupt {
                table: "dead_letters",
                key: seq.to_string(),
                reason,
            })
        })?;
        self.dead_letters -= 1;
        Ok(letter)
    }
}

/// Decodes a stored journal entry, naming where it sits if it does not decode.
pub(crate) fn decode_journal(
    target: BackendName,
    seq: Seq,
    bytes: &[u8],
) -> Result<codec::EntryView<'_>, StoreError> {
    codec::decode_entry(bytes).map_err(|reason| StoreError::Corrupt {
        table: match target {
            BackendName::Old => "journal.old",
            BackendName::New => "journal.new",
        },
        key: seq.to_string(),
        reason,
    })
}

/// Wall-clock milliseconds: created and parked times must mean the same after a restart.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
