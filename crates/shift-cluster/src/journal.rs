//! The journal in NATS JetStream ([`JetStreamJournal`], the cluster's [`WriteJournal`]): one
//! stream ([`JournalStream`]) holds every replica's write intents and every collection's
//! mirrored writes, so a replica that dies, with its disk or not, leaves nothing stuck, and a
//! collection's new owner appends after the old owner's entries, in the same subject.
//!
//! Subjects, under the stream's prefix `p`:
//!
//! ```text
//! p.intent.<member>.<start>      a replica process's write intents (IntentId = stream sequence)
//! p.j.<store>.<collection>       the mirrored writes waiting for a store, one collection each
//! p.dead.<store>.<collection>    the dead letters
//! ```
//!
//! A message carries its kind (`Chroma-Shift-Kind`: entry, marker, intent, dead), its lag key
//! and creation time, and, when its collection's owner appended it, the owner
//! (`Chroma-Shift-Owner`: `<member>/<start>`).
//!
//! # Ownership and fencing
//!
//! A collection's owner (rendezvous hashing over the live members, [`crate::owner`]) appends to
//! its subjects with the sequence it last saw (`Nats-Expected-Last-Subject-Sequence`). Before
//! its first append to a subject it *acquires* it: it appends a marker at the sequence it read.
//! When the server answers that the subject moved, the owner reads what was appended since:
//! a message of another owner (a marker or an owned entry) means another replica took the
//! collection over, and this replica is fenced (`Fenced`: the write is refused with a 503 in
//! Chroma's shape, its intent left for the new owner); entries without an owner (collection
//! creates and tenant or database changes, handled where they arrive) are only passed. A
//! fenced replica acquires again once its view of the members changed. The replay keeps the
//! owner's last owned message of each subject (`release`), so the fence outlives the purges
//! of applied entries; a drained subject keeps one marker.
//!
//! A new owner takes the collection's writes at once, after its marker, rather than holding
//! them for the takeover grace: the old owner's writes that may still land on the primary
//! afterwards all have intents in the stream (an intent is durable before the primary sees
//! its write), and the new owner turns those into reconciliations only once they are older
//! than the grace, so they are journaled after the new owner's entries and read the primary
//! after the old writes landed; the secondary ends with what the primary holds. What waits
//! out the grace is the replay of the collection (`replay_source.rs`), so the old owner's
//! worker, if alive, has stopped before the new one applies.
//!
//! Every append carries a message id derived from what it settles (`i<intent>-<n>` for an
//! intent's entries, whoever appends them): a retry after a lost acknowledgement, or a
//! recovery that repeats a settlement that landed, stores once within the duplicate window.
//!
//! # Crash argument, per await point of a write
//!
//! 1. `record_intent` (publish to the replica's intent subject): before it is acknowledged,
//!    the primary has not seen the write and the client has no answer; after, the intent is
//!    in the stream (replicated, `sync_interval: always`), whatever happens to this replica.
//! 2. the primary works (the write task): a crash leaves the intent. The process that
//!    recorded it is gone, so the collection's owner adopts it once it is older than
//!    `takeover_grace` (`crate::intents`): a reconciliation of its records, read from the
//!    primary when the replay applies it, later than any write of the dead process could still
//!    land there.
//! 3. `settle_intent` appends the entries, then deletes the intent. A crash between the two
//!    leaves both: the adopted intent becomes a reconciliation after the entry, which it
//!    repeats harmlessly (or the de-duplication drops it, same message id). A fenced append
//!    leaves the intent alone, likewise adopted by the new owner, and the client gets a 503
//!    (its write may be on the primary: the reconciliation copies whatever it holds).
//! 4. after the delete: as in the embedded journal. Settlements are never deferred here
//!    (`settle_intent` is as durable as `commit_intent`): there is no cheaper commit to defer.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::Deserialize;
use shift_config::BackendName;
use shift_proxy::coord::{LiveTopology, StateCall, WriteJournal};
use shift_state::{IntentId, Lag, NewEntry, StoreError};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::owner::owner;
use crate::stream::{token, JournalStream, Published, StreamError};
use crate::view::MemberView;

/// A message's kind.
pub(crate) const KIND: &str = "Chroma-Shift-Kind";
/// The owner that appended a message (`<member>/<start>`); absent on unowned appends.
pub(crate) const OWNER: &str = "Chroma-Shift-Owner";
/// A message's lag key (the collection), as given (subjects carry it as a token).
pub(crate) const COLLECTION: &str = "Chroma-Shift-Collection";
/// When a message was appended (Unix milliseconds).
pub(crate) const CREATED: &str = "Chroma-Shift-Created";
/// Why a dead letter was parked.
pub(crate) const REASON: &str = "Chroma-Shift-Reason";

pub(crate) const ENTRY: &str = "entry";
pub(crate) const MARKER: &str = "marker";
pub(crate) const INTENT: &str = "intent";
pub(crate) const DEAD: &str = "dead";

/// Tries at an append whose subject keeps moving under it (other replicas' unowned appends).
const MOVED_TRIES: usize = 16;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A header's value as text.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|value| value.as_str())
}

fn unavailable(reason: impl std::fmt::Display) -> StoreError {
    StoreError::Coordination {
        reason: reason.to_string(),
    }
}

fn stream_error(error: StreamError) -> StoreError {
    unavailable(format!("the journal in NATS JetStream: {error}"))
}

/// The collection of a record write's payload (`records` or `reconcile`), read without a
/// parse tree of its body; `None` for any other op.
pub(crate) fn records_collection(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Head {
        collection: String,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Op {
        Records(Head),
        Reconcile(Head),
    }
    let op = shift_proxy::mirror::op_json(payload);
    if !(op.starts_with(b"{\"records\":") || op.starts_with(b"{\"reconcile\":")) {
        return None;
    }
    match serde_json::from_slice::<Op>(op).ok()? {
        Op::Records(head) | Op::Reconcile(head) => Some(head.collection),
    }
}

/// The lag key of an intent's or entry's payload (its collection; empty for a tenant or
/// database change); `None` when it does not decode.
pub(crate) fn lag_key_of(payload: &[u8]) -> Option<String> {
    records_collection(payload).or_else(|| {
        shift_proxy::mirror::MirrorOp::from_bytes(payload)
            .ok()
            .map(|op| op.lag_key())
    })
}

/// What this replica knows of one journal subject.
#[derive(Debug, Default)]
pub(crate) struct SubjectState {
    /// The subject's last sequence as this replica's appends left it; `None` until acquired.
    expected: Option<u64>,
    /// This replica's last owned message in the subject: purges keep it (the fence).
    last_owned: Option<u64>,
}

/// What the journal, the replay and the intent adoption share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) stream: JournalStream,
    pub(crate) me: String,
    /// `<member>/<start>`: this process.
    pub(crate) writer: String,
    pub(crate) intent_subject: String,
    pub(crate) members: Arc<MemberView>,
    pub(crate) topology: Arc<dyn LiveTopology>,
    pub(crate) takeover_grace: Duration,
    /// This process's intents not settled yet, with when they were recorded.
    pending: Mutex<BTreeMap<IntentId, (Vec<u8>, Instant)>>,
    counter: AtomicU64,
    subjects: Mutex<HashMap<String, Arc<tokio::sync::Mutex<SubjectState>>>>,
    /// Subjects this replica was fenced from, with the live members it saw then and when.
    fenced: Mutex<HashMap<String, (Vec<String>, Instant)>>,
    /// Lag per store (`[old, new]`) and the dead letters, kept by the replay's reader.
    pub(crate) lag: Mutex<[Lag; 2]>,
    pub(crate) dead_letters: AtomicU64,
    /// Woken at each local append, so the replay reads it at once.
    pub(crate) appended: Notify,
}

pub(crate) fn slot(target: BackendName) -> usize {
    match target {
        BackendName::Old => 0,
        BackendName::New => 1,
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(
        stream: JournalStream,
        me: String,
        members: Arc<MemberView>,
        topology: Arc<dyn LiveTopology>,
        takeover_grace: Duration,
    ) -> Shared {
        // A process start: its intents are its own, and the owners adopt a dead start's.
        static STARTS: AtomicU64 = AtomicU64::new(0);
        let start = format!(
            "{:x}{:04x}{}",
            now_ms(),
            std::process::id() & 0xffff,
            STARTS.fetch_add(1, Ordering::Relaxed)
        );
        let writer = format!("{me}/{start}");
        let intent_subject = stream.under(&format!("intent.{}.{start}", token(&me)));
        Shared {
            stream,
            me,
            writer,
            intent_subject,
            members,
            topology,
            takeover_grace,
            pending: Mutex::default(),
            counter: AtomicU64::new(0),
            subjects: Mutex::default(),
            fenced: Mutex::default(),
            lag: Mutex::default(),
            dead_letters: AtomicU64::new(0),
            appended: Notify::new(),
        }
    }

    /// The subject of `collection`'s writes waiting for `target`.
    pub(crate) fn subject_of(&self, target: BackendName, collection: &str) -> String {
        self.stream
            .under(&format!("j.{}.{}", target.as_str(), token(collection)))
    }

    fn live_ids(&self) -> Vec<String> {
        self.members.live().iter().map(|m| m.id.clone()).collect()
    }

    /// Whether this replica owns `collection` in its view of the members.
    pub(crate) fn owns(&self, collection: &str) -> bool {
        owner(&self.members.live(), collection).is_some_and(|m| m.id == self.me)
    }

    fn next_id(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    fn state(&self, subject: &str) -> Arc<tokio::sync::Mutex<SubjectState>> {
        lock(&self.subjects)
            .entry(subject.to_owned())
            .or_default()
            .clone()
    }

    /// Whether this replica is fenced from `subject` with the members it sees now; a fence
    /// seen with other members, or older than the takeover grace, is forgotten (the next
    /// append acquires again). The grace matters when the fence was seen with the members
    /// this replica sees for good: a replica that rejoined after a pause, the rendezvous
    /// owner again, is fenced by what the interim owner appended meanwhile; the interim
    /// owner's view has caught up within the grace, and should it still append, the
    /// acquisition fences it in turn (its write refused, its intent adopted).
    fn is_fenced(&self, subject: &str) -> bool {
        let mut fenced = lock(&self.fenced);
        match fenced.get(subject) {
            Some((members, since))
                if *members == self.live_ids() && since.elapsed() < self.takeover_grace =>
            {
                true
            }
            Some(_) => {
                fenced.remove(subject);
                false
            }
            None => false,
        }
    }

    fn fenced_error(&self, collection: &str) -> StoreError {
        unavailable(format!(
            "another replica took over collection {collection:?} (its journal moved on): this replica no longer takes its writes; retry"
        ))
    }

    fn headers(&self, kind: &str, collection: &str, owned: bool) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(KIND, kind);
        headers.insert(COLLECTION, collection);
        headers.insert(CREATED, now_ms().to_string().as_str());
        if owned {
            headers.insert(OWNER, self.writer.as_str());
        }
        headers
    }

    /// Appends `entry` under `message_id`: fenced when this replica owns its collection,
    /// passed on the subject's last sequence otherwise (a record write of a collection it
    /// does not own is refused). Returns the entry's stream sequence.
    pub(crate) async fn append(
        &self,
        entry: NewEntry,
        message_id: &str,
    ) -> Result<u64, StoreError> {
        let subject = self.subject_of(entry.target, &entry.collection);
        if !self.owns(&entry.collection) {
            if records_collection(&entry.payload).is_some() {
                return Err(self.fenced_error(&entry.collection));
            }
            return self.append_unowned(&subject, entry, message_id).await;
        }
        if self.is_fenced(&subject) {
            return Err(self.fenced_error(&entry.collection));
        }
        let state = self.state(&subject);
        let mut state = state.lock().await;
        let payload = Bytes::from(entry.payload);
        for _ in 0..MOVED_TRIES {
            let expected = self
                .acquire(&subject, &entry.collection, &mut state)
                .await?;
            let headers = self.headers(ENTRY, &entry.collection, true);
            let published = self
                .stream
                .publish(
                    &subject,
                    Some(expected),
                    message_id,
                    headers,
                    payload.clone(),
                )
                .await
                .map_err(stream_error)?;
            match published {
                Published::Stored(appended) => {
                    state.expected = Some(appended.sequence);
                    state.last_owned = Some(appended.sequence);
                    self.appended.notify_one();
                    return Ok(appended.sequence);
                }
                Published::Moved => {
                    if self.moved_on(&subject, expected, &mut state).await? {
                        lock(&self.fenced)
                            .insert(subject.clone(), (self.live_ids(), Instant::now()));
                        *state = SubjectState::default();
                        tracing::warn!(
                            collection = entry.collection,
                            "fenced: another replica appended to this collection's journal as its owner"
                        );
                        return Err(self.fenced_error(&entry.collection));
                    }
                }
            }
        }
        Err(unavailable(format!(
            "the journal of collection {:?} kept moving under this replica's appends; retry",
            entry.collection
        )))
    }

    /// The sequence to append at, acquiring the subject first (a marker at the sequence read,
    /// which fences the previous owner) when this replica has not yet.
    async fn acquire(
        &self,
        subject: &str,
        collection: &str,
        state: &mut SubjectState,
    ) -> Result<u64, StoreError> {
        if let Some(expected) = state.expected {
            return Ok(expected);
        }
        for _ in 0..MOVED_TRIES {
            let last = self.stream.last(subject).await.map_err(stream_error)?;
            let read = last.map_or(0, |m| m.sequence);
            let id = format!("m-{}-{}", self.writer, self.next_id());
            let headers = self.headers(MARKER, collection, true);
            match self
                .stream
                .publish(subject, Some(read), &id, headers, Bytes::new())
                .await
                .map_err(stream_error)?
            {
                Published::Stored(marker) => {
                    tracing::info!(
                        collection,
                        sequence = marker.sequence,
                        "took over the journal of a collection"
                    );
                    state.expected = Some(marker.sequence);
                    state.last_owned = Some(marker.sequence);
                    return Ok(marker.sequence);
                }
                Published::Moved => continue,
            }
        }
        Err(unavailable(format!(
            "cannot take over the journal of collection {collection:?}: it keeps moving; retry"
        )))
    }

    /// After the subject moved past `expected`: true when another owner appended since (this
    /// replica is fenced); otherwise `state` is brought to the subject's last sequence.
    async fn moved_on(
        &self,
        subject: &str,
        expected: u64,
        state: &mut SubjectState,
    ) -> Result<bool, StoreError> {
        let mut position = expected;
        while let Some(message) = self
            .stream
            .next_after(subject, position)
            .await
            .map_err(stream_error)?
        {
            position = message.sequence;
            if let Some(owner) = header(&message.headers, OWNER) {
                if owner != self.writer {
                    return Ok(true);
                }
            }
        }
        // The subject's last sequence now (messages above `expected` were read; purges may
        // have removed the ones below).
        let last = self.stream.last(subject).await.map_err(stream_error)?;
        state.expected = Some(last.map_or(0, |m| m.sequence));
        Ok(false)
    }

    async fn append_unowned(
        &self,
        subject: &str,
        entry: NewEntry,
        message_id: &str,
    ) -> Result<u64, StoreError> {
        let payload = Bytes::from(entry.payload);
        for _ in 0..MOVED_TRIES {
            let last = self.stream.last(subject).await.map_err(stream_error)?;
            let headers = self.headers(ENTRY, &entry.collection, false);
            match self
                .stream
                .publish(
                    subject,
                    Some(last.map_or(0, |m| m.sequence)),
                    message_id,
                    headers,
                    payload.clone(),
                )
                .await
                .map_err(stream_error)?
            {
                Published::Stored(appended) => return Ok(appended.sequence),
                Published::Moved => continue,
            }
        }
        Err(unavailable(format!(
            "the journal of {:?} kept moving under this replica's appends; retry",
            entry.collection
        )))
    }

    /// The replay applied (or parked) `subject`'s entries up to `sequence`: removes them,
    /// but never this replica's last owned message (the fence); a subject drained to its last
    /// message keeps a marker instead.
    pub(crate) async fn release(
        &self,
        subject: &str,
        collection: &str,
        sequence: u64,
    ) -> Result<(), StoreError> {
        let owned = self.owns(collection) && !self.is_fenced(subject);
        if !owned {
            return self
                .stream
                .purge_below(subject, sequence + 1)
                .await
                .map_err(stream_error);
        }
        let state = self.state(subject);
        let mut state = state.lock().await;
        let expected = self.acquire(subject, collection, &mut state).await?;
        let keep = state.last_owned.unwrap_or(u64::MAX);
        self.stream
            .purge_below(subject, (sequence + 1).min(keep))
            .await
            .map_err(stream_error)?;
        if sequence < expected {
            // Entries above it wait; the last owned message stays.
            return Ok(());
        }
        // Drained up to the subject's last message as far as this replica knows: a marker
        // holds the fence and everything below it goes (unless entries came since).
        let id = format!("m-{}-{}", self.writer, self.next_id());
        let headers = self.headers(MARKER, collection, true);
        if let Published::Stored(marker) = self
            .stream
            .publish(subject, Some(sequence), &id, headers, Bytes::new())
            .await
            .map_err(stream_error)?
        {
            state.expected = Some(marker.sequence);
            state.last_owned = Some(marker.sequence);
            self.stream
                .purge_below(subject, marker.sequence)
                .await
                .map_err(stream_error)?;
        }
        Ok(())
    }

    async fn record(&self, payload: Vec<u8>) -> Result<IntentId, StoreError> {
        if let Some(collection) = records_collection(&payload) {
            let secondary = self.topology.current().secondary();
            let subject = self.subject_of(secondary, &collection);
            if !self.owns(&collection) || self.is_fenced(&subject) {
                return Err(self.fenced_error(&collection));
            }
        }
        let id = format!("{}-n{}", self.writer, self.next_id());
        let collection = lag_key_of(&payload).unwrap_or_default();
        let headers = self.headers(INTENT, &collection, false);
        let published = self
            .stream
            .publish(
                &self.intent_subject,
                None,
                &id,
                headers,
                Bytes::copy_from_slice(&payload),
            )
            .await
            .map_err(stream_error)?;
        let Published::Stored(appended) = published else {
            return Err(unavailable("the intent was not stored; retry"));
        };
        let id = IntentId(appended.sequence);
        lock(&self.pending).insert(id, (payload, Instant::now()));
        Ok(id)
    }

    async fn commit(&self, id: IntentId, entries: Vec<NewEntry>) -> Result<(), StoreError> {
        for (n, entry) in entries.into_iter().enumerate() {
            self.append(entry, &format!("i{}-{n}", id.0)).await?;
        }
        self.forget(id).await
    }

    async fn forget(&self, id: IntentId) -> Result<(), StoreError> {
        self.stream.delete(id.0).await.map_err(stream_error)?;
        lock(&self.pending).remove(&id);
        Ok(())
    }

    /// This process's intents older than `age` that are gone from the stream (another
    /// replica adopted them after this one was fenced) are forgotten.
    pub(crate) async fn forget_adopted(&self, age: Duration) -> Result<(), StoreError> {
        let old: Vec<IntentId> = lock(&self.pending)
            .iter()
            .filter(|(_, (_, at))| at.elapsed() > age)
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            let found = self
                .stream
                .next_after(&self.intent_subject, id.0 - 1)
                .await
                .map_err(stream_error)?;
            if found.map(|m| m.sequence) != Some(id.0) {
                tracing::warn!(intent = %id, "an intent of this replica was settled by the collection's new owner");
                lock(&self.pending).remove(&id);
            }
        }
        Ok(())
    }
}

/// The cluster's journal on NATS JetStream.
#[derive(Debug, Clone)]
pub struct JetStreamJournal {
    pub(crate) shared: Arc<Shared>,
}

impl WriteJournal for JetStreamJournal {
    fn record_intent(&self, payload: Vec<u8>) -> StateCall<'_, IntentId> {
        Box::pin(self.shared.record(payload))
    }

    fn commit_intent(&self, id: IntentId, entries: Vec<NewEntry>) -> StateCall<'_, ()> {
        Box::pin(self.shared.commit(id, entries))
    }

    fn discard_intent(&self, id: IntentId) -> StateCall<'_, ()> {
        Box::pin(self.shared.forget(id))
    }

    /// As durable as [`commit_intent`](Self::commit_intent): nothing cheaper to defer to.
    fn settle_intent(&self, id: IntentId, entries: Vec<NewEntry>) -> StateCall<'_, ()> {
        Box::pin(self.shared.commit(id, entries))
    }

    fn discard_intent_deferred(&self, id: IntentId) -> StateCall<'_, ()> {
        Box::pin(self.shared.forget(id))
    }

    fn append(&self, entries: Vec<NewEntry>) -> StateCall<'_, ()> {
        Box::pin(async move {
            let batch = self.shared.next_id();
            for (n, entry) in entries.into_iter().enumerate() {
                let id = format!("{}-a{batch}-{n}", self.shared.writer);
                self.shared.append(entry, &id).await?;
            }
            Ok(())
        })
    }

    fn pending_intents(&self) -> Result<Vec<(IntentId, Vec<u8>)>, StoreError> {
        Ok(lock(&self.shared.pending)
            .iter()
            .map(|(id, (payload, _))| (*id, payload.clone()))
            .collect())
    }

    fn pending_intent_count(&self) -> u64 {
        lock(&self.shared.pending).len() as u64
    }

    fn lag(&self, target: BackendName) -> Lag {
        lock(&self.shared.lag)[slot(target)].clone()
    }

    fn dead_letter_count(&self) -> u64 {
        self.shared.dead_letters.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use shift_proxy::ids::ClientCollectionId;
    use shift_proxy::mirror::{MirrorOp, RecordKind};

    use super::*;

    #[test]
    fn a_record_writes_collection_is_read_and_other_ops_are_not_record_writes() {
        let op = MirrorOp::Records {
            kind: RecordKind::Add,
            collection: ClientCollectionId::from("c1"),
            body: json!({ "ids": ["a"], "embeddings": [[1.0]] }),
        };
        assert_eq!(records_collection(&op.to_bytes()).as_deref(), Some("c1"));
        assert_eq!(
            records_collection(&op.clone().recovery().to_bytes_as(Some("reader"))).as_deref(),
            Some("c1")
        );
        assert_eq!(lag_key_of(&op.to_bytes()).as_deref(), Some("c1"));
        let tenant = MirrorOp::CreateTenant { name: "t".into() };
        assert_eq!(records_collection(&tenant.to_bytes()), None);
        assert_eq!(lag_key_of(&tenant.to_bytes()).as_deref(), Some(""));
        assert_eq!(lag_key_of(b"not json"), None);
    }
}
