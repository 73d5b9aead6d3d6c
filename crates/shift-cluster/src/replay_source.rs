//! The replay's side of the JetStream journal ([`JetStreamReplay`], the cluster's
//! [`ReplayJournal`]): each replica replays the subjects of the collections it owns, so one
//! worker applies a collection at a time, and a new owner starts on a collection only
//! `takeover_grace` after it got it (the old owner's worker, if alive, drops the collection's
//! entries from its read-ahead as soon as its view changes, and finishes at most the batch it
//! was applying).
//!
//! A reader task keeps, per store, the owned subjects' entries read ahead (within a byte
//! budget) and serves the worker's synchronous reads from them; it also keeps the lag and the
//! dead-letter count every replica reads (the subjects' message counts, without the marker a
//! drained subject keeps), so no request calls NATS. Entries get seqs of this read-ahead,
//! increasing in the order they are read: a collection acquired later is read from its first
//! entry, after what was read before, and a collection's entries keep their stream order.
//!
//! Applies are idempotent (an add is an upsert on the secondary, a delete of a missing id is
//! fine, a reconciliation copies the primary), so the entries a crash leaves unremoved are
//! applied again by the next owner, harmlessly.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use shift_config::BackendName;
use shift_proxy::coord::{ReplayJournal, StateCall};
use shift_state::{CollectionLag, JournalEntry, Lag, NewEntry, Seq, StoreError};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::journal::{
    header, lock, now_ms, slot, Shared, COLLECTION, CREATED, DEAD, KIND, MARKER, REASON,
};
use crate::stream::token;

/// How often the reader looks when no local append woke it.
const READ_EVERY: Duration = Duration::from_millis(200);

/// One entry read ahead.
#[derive(Debug)]
struct Held {
    stream_seq: u64,
    subject: String,
    collection: String,
    created_ms: u64,
    payload: Vec<u8>,
}

/// What one subject's count last told.
#[derive(Debug, Clone)]
struct SubjectInfo {
    count: usize,
    collection: String,
    /// Markers among its first and last messages (they wait for no store). Markers sit
    /// there: an owner's first append follows one, a drained subject keeps one, and the
    /// purge of applied entries takes those below.
    markers: usize,
    oldest_created_ms: u64,
}

/// One store's read-ahead.
#[derive(Debug, Default)]
struct Buffer {
    next: u64,
    entries: BTreeMap<u64, Held>,
    bytes: usize,
    /// Per subject, the stream sequence read up to.
    positions: HashMap<String, u64>,
    /// Per subject, since when this replica owns it.
    owned_since: HashMap<String, Instant>,
    subjects: HashMap<String, SubjectInfo>,
}

impl Buffer {
    fn drop_subject(&mut self, subject: &str) {
        let before = self.entries.len();
        let mut freed = 0;
        self.entries.retain(|_, held| {
            let keep = held.subject != subject;
            if !keep {
                freed += held.payload.len();
            }
            keep
        });
        self.bytes -= freed;
        if self.entries.len() != before {
            tracing::info!(
                subject,
                "a collection moved to another replica: its entries are left to it"
            );
        }
        self.positions.remove(subject);
        self.owned_since.remove(subject);
    }
}

/// The cluster's replay journal.
#[derive(Debug)]
pub struct JetStreamReplay {
    shared: Arc<Shared>,
    buffers: [Mutex<Buffer>; 2],
    appended: [watch::Sender<Option<Seq>>; 2],
    budget: usize,
}

impl JetStreamReplay {
    pub(crate) fn new(shared: Arc<Shared>, budget: usize) -> JetStreamReplay {
        JetStreamReplay {
            shared,
            buffers: Default::default(),
            appended: [watch::channel(None).0, watch::channel(None).0],
            budget,
        }
    }

    /// Reads ahead and keeps the lag, until aborted.
    pub(crate) async fn run(self: Arc<Self>) {
        loop {
            for target in [BackendName::Old, BackendName::New] {
                if let Err(error) = self.read(target).await {
                    tracing::warn!(target = target.as_str(), %error, "cannot read the journal in NATS JetStream; retrying");
                }
            }
            match self
                .shared
                .stream
                .subject_counts(&self.shared.stream.under("dead.>"))
                .await
            {
                Ok(counts) => {
                    let total: usize = counts.values().sum();
                    self.shared
                        .dead_letters
                        .store(total as u64, Ordering::Relaxed);
                }
                Err(error) => tracing::warn!(%error, "cannot count the dead letters"),
            }
            tokio::select! {
                () = self.shared.appended.notified() => {}
                () = tokio::time::sleep(READ_EVERY) => {}
            }
        }
    }

    /// One pass over `target`'s subjects: their lag, and the owned ones' new entries.
    pub(crate) async fn read(&self, target: BackendName) -> Result<(), StoreError> {
        let stream = &self.shared.stream;
        let nats = |error: crate::stream::StreamError| StoreError::Coordination {
            reason: error.to_string(),
        };
        let prefix = stream.under(&format!("j.{}.", target.as_str()));
        let counts = stream
            .subject_counts(&format!("{prefix}>"))
            .await
            .map_err(nats)?;
        let known = lock(&self.buffers[slot(target)]).subjects.clone();
        let mut subjects = HashMap::new();
        for (subject, count) in counts {
            if count == 0 {
                continue;
            }
            // Read again when the count moved, or when a small subject held entries: applying
            // its last entry swaps it for a marker without changing the count. A drained
            // subject (markers only) is not read until its count moves.
            let info = match known.get(&subject) {
                Some(info) if info.count == count && (count > 3 || info.markers >= count) => {
                    info.clone()
                }
                _ => {
                    let first = stream.next_after(&subject, 0).await.map_err(nats)?;
                    let last = stream.last(&subject).await.map_err(nats)?;
                    let (Some(first), Some(last)) = (first, last) else {
                        continue;
                    };
                    let fallback = subject[prefix.len()..].to_owned();
                    SubjectInfo {
                        count,
                        collection: header(&first.headers, COLLECTION)
                            .map_or(fallback, str::to_owned),
                        markers: if first.sequence == last.sequence {
                            usize::from(header(&last.headers, KIND) == Some(MARKER))
                        } else {
                            usize::from(header(&first.headers, KIND) == Some(MARKER))
                                + usize::from(header(&last.headers, KIND) == Some(MARKER))
                        },
                        oldest_created_ms: header(&first.headers, CREATED)
                            .and_then(|c| c.parse().ok())
                            .unwrap_or_else(now_ms),
                    }
                }
            };
            subjects.insert(subject, info);
        }
        self.publish_lag(target, &subjects);
        // The owned subjects' new entries, in stream order.
        let now = Instant::now();
        let mut ready = Vec::new();
        {
            let mut buffer = lock(&self.buffers[slot(target)]);
            let gone: Vec<String> = buffer
                .owned_since
                .keys()
                .filter(|s| {
                    subjects
                        .get(*s)
                        .is_none_or(|info| !self.shared.owns(&info.collection))
                })
                .cloned()
                .collect();
            for subject in gone {
                buffer.drop_subject(&subject);
            }
            for (subject, info) in &subjects {
                if !self.shared.owns(&info.collection) {
                    continue;
                }
                let since = *buffer.owned_since.entry(subject.clone()).or_insert(now);
                if now.duration_since(since) >= self.shared.takeover_grace {
                    ready.push((subject.clone(), buffer.positions.get(subject).copied()));
                }
            }
            buffer.subjects = subjects;
        }
        let mut read = Vec::new();
        let mut bytes = lock(&self.buffers[slot(target)]).bytes;
        for (subject, position) in ready {
            let mut position = position.unwrap_or(0);
            while bytes < self.budget {
                let Some(message) = stream.next_after(&subject, position).await.map_err(nats)?
                else {
                    break;
                };
                position = message.sequence;
                if header(&message.headers, KIND) == Some(MARKER) {
                    continue;
                }
                bytes += message.payload.len();
                read.push(Held {
                    stream_seq: message.sequence,
                    collection: header(&message.headers, COLLECTION)
                        .unwrap_or_default()
                        .to_owned(),
                    created_ms: header(&message.headers, CREATED)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or_else(now_ms),
                    subject: subject.clone(),
                    payload: message.payload.to_vec(),
                });
            }
            lock(&self.buffers[slot(target)])
                .positions
                .insert(subject, position);
        }
        if read.is_empty() {
            return Ok(());
        }
        read.sort_by_key(|held| held.stream_seq);
        let mut buffer = lock(&self.buffers[slot(target)]);
        let mut last = None;
        for held in read {
            if !buffer.owned_since.contains_key(&held.subject) {
                continue;
            }
            buffer.next += 1;
            let seq = buffer.next;
            buffer.bytes += held.payload.len();
            buffer.entries.insert(seq, held);
            last = Some(Seq(seq));
        }
        drop(buffer);
        if last.is_some() {
            self.appended[slot(target)].send_replace(last);
        }
        Ok(())
    }

    fn publish_lag(&self, target: BackendName, subjects: &HashMap<String, SubjectInfo>) {
        let mut lag = Lag::default();
        for info in subjects.values() {
            let entries = info.count.saturating_sub(info.markers) as u64;
            if entries == 0 {
                continue;
            }
            lag.entries += entries;
            lag.oldest_created_ms = Some(
                lag.oldest_created_ms
                    .map_or(info.oldest_created_ms, |o| o.min(info.oldest_created_ms)),
            );
            let collection =
                lag.collections
                    .entry(info.collection.clone())
                    .or_insert(CollectionLag {
                        entries: 0,
                        oldest_created_ms: info.oldest_created_ms,
                    });
            collection.entries += entries;
            collection.oldest_created_ms = collection.oldest_created_ms.min(info.oldest_created_ms);
        }
        lock(&self.shared.lag)[slot(target)] = lag;
    }

    /// Removes the entries `seqs` from the stream (per subject, up to the highest one), then
    /// from the read-ahead; on a failure they stay in both, to remove again.
    async fn take(&self, target: BackendName, seqs: &[Seq]) -> Result<(), StoreError> {
        let mut highest: BTreeMap<String, (String, u64)> = BTreeMap::new();
        {
            let buffer = lock(&self.buffers[slot(target)]);
            for seq in seqs {
                if let Some(held) = buffer.entries.get(&seq.0) {
                    let top = highest
                        .entry(held.subject.clone())
                        .or_insert((held.collection.clone(), held.stream_seq));
                    top.1 = top.1.max(held.stream_seq);
                }
            }
        }
        for (subject, (collection, sequence)) in highest {
            self.shared.release(&subject, &collection, sequence).await?;
        }
        let mut buffer = lock(&self.buffers[slot(target)]);
        for seq in seqs {
            if let Some(held) = buffer.entries.remove(&seq.0) {
                buffer.bytes -= held.payload.len();
            }
        }
        Ok(())
    }

    fn held(&self, target: BackendName, seq: Seq) -> Option<(String, String, u64, u64, Vec<u8>)> {
        lock(&self.buffers[slot(target)])
            .entries
            .get(&seq.0)
            .map(|h| {
                (
                    h.subject.clone(),
                    h.collection.clone(),
                    h.stream_seq,
                    h.created_ms,
                    h.payload.clone(),
                )
            })
    }
}

impl ReplayJournal for JetStreamReplay {
    fn read_bounded(
        &self,
        target: BackendName,
        after: Option<Seq>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        let buffer = lock(&self.buffers[slot(target)]);
        let from = after.map_or(0, |s| s.0 + 1);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (seq, held) in buffer.entries.range(from..).take(max_entries) {
            bytes = bytes.saturating_add(held.payload.len());
            out.push(JournalEntry {
                seq: Seq(*seq),
                target,
                collection: held.collection.clone(),
                created_ms: held.created_ms,
                payload: held.payload.clone(),
            });
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Applied entries leave the stream, all of a subject's up to the highest given (a
    /// collection's entries are applied in order; `journal.rs` keeps the owner's fence).
    fn remove<'a>(&'a self, target: BackendName, seqs: &'a [Seq]) -> StateCall<'a, ()> {
        Box::pin(async move { self.take(target, seqs).await })
    }

    /// A purge from the stream is durable as it is acknowledged: there is no cheaper kind.
    fn remove_deferred<'a>(&'a self, target: BackendName, seqs: &'a [Seq]) -> StateCall<'a, ()> {
        self.remove(target, seqs)
    }

    fn park(&self, target: BackendName, seq: Seq, reason: String) -> StateCall<'_, ()> {
        Box::pin(async move {
            let Some((_, collection, stream_seq, created, payload)) = self.held(target, seq) else {
                return Err(StoreError::UnknownEntry { target, seq });
            };
            let dead = self.shared.stream.under(&format!(
                "dead.{}.{}",
                target.as_str(),
                token(&collection)
            ));
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(KIND, DEAD);
            headers.insert(COLLECTION, collection.as_str());
            headers.insert(CREATED, created.to_string().as_str());
            headers.insert(REASON, reason.replace(['\r', '\n'], " ").as_str());
            self.shared
                .stream
                .publish(
                    &dead,
                    None,
                    &format!("d{stream_seq}"),
                    headers,
                    Bytes::from(payload),
                )
                .await
                .map_err(|e| StoreError::Coordination {
                    reason: e.to_string(),
                })?;
            self.take(target, &[seq]).await
        })
    }

    /// Each entry is appended to `to`'s journal under its collection (de-duplicated by its
    /// sequence here), then removed from `from`'s; the new entries' stream sequences.
    fn retarget(
        &self,
        from: BackendName,
        moves: Vec<(Seq, Vec<u8>)>,
        to: BackendName,
    ) -> StateCall<'_, Vec<Seq>> {
        Box::pin(async move {
            let mut moved = Vec::new();
            for (seq, payload) in moves {
                let Some((_, collection, stream_seq, _, _)) = self.held(from, seq) else {
                    continue;
                };
                let entry = NewEntry {
                    target: to,
                    collection,
                    payload,
                };
                let appended = self
                    .shared
                    .append(entry, &format!("rt{stream_seq}"))
                    .await?;
                self.take(from, &[seq]).await?;
                moved.push(Seq(appended));
            }
            Ok(moved)
        })
    }

    fn watch_appends(&self, target: BackendName) -> watch::Receiver<Option<Seq>> {
        self.appended[slot(target)].subscribe()
    }

    fn lag(&self, target: BackendName) -> Lag {
        lock(&self.shared.lag)[slot(target)].clone()
    }
}
