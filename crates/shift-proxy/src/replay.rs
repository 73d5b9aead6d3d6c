//! The replay worker: applies one target's journal to that store.
//!
//! Order is kept per collection (the journal's lag key), not across the whole journal: each
//! collection's record writes form a lane, applied strictly in seq order, and a lane that waits
//! for a retry never holds up another. A barrier is applied alone: everything before it first,
//! nothing after it before it is done. Barriers are the entries with an empty key (tenant and
//! database ops) and the collection lifecycle ops (create, modify, delete, fork): those name a
//! collection by its name on the store, which another lane's collection may share (a delete
//! then a re-create under the same name), or read another collection (a fork).
//!
//! Within a lane, consecutive compatible record writes are merged into one request (disjoint
//! ids, same kind, same client identity, within the store's `max_batch_size` and
//! [`MERGED_BYTES`]). Each entry is applied as the identity that wrote it (its backend token);
//! an entry of an identity no longer in the config is refused, so parked as a dead letter
//! whose reason names the identity. What a failure does (see [`crate::apply::classify`]):
//! - worth retrying (unreachable, 408, 429, 5xx but 501 and 505): that lane retries with
//!   exponential backoff and jitter ([`shift_chroma::retry::Backoff`]), honouring
//!   `Retry-After` up to `retry_max`;
//! - refused (another 4xx, 501, 505): a refused merged batch is retried entry by entry, and the
//!   refused entry is parked as a dead letter with its reason;
//! - halted (401, 403, a 404 of a path the proxy knows): the whole target stops, with an alert,
//!   the `chroma_shift_replay_stopped` gauge and the state on the [`ReplayBoard`]; the worker
//!   probes with the same op on a backoff and resumes by itself once the store takes it. The
//!   entries stay in the journal, so its lag keeps counting.
//!
//! Adds and upserts are merged and sent without a parse tree of their bodies
//! (`raw_records.rs`): their items' bytes are concatenated, so the secondary gets the floats as
//! the client wrote them. Other entries are decoded into a [`MirrorOp`] and merged as such.
//!
//! Memory: the worker holds at most `max_bytes` of journal payload (plus one entry), read with
//! [`ReplayJournal::read_bounded`], as the raw bytes of each entry, once; a merged request is decoded
//! from them for the time of one apply.
//! One lane holds at most a quarter of the budget, so a lane that waits cannot starve the
//! others; what a full lane cannot hold stays in the journal and is read again when it has room.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use shift_chroma::retry::Backoff;
use shift_config::BackendName;
use shift_state::{JournalEntry, Seq, StoreError};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::apply::{ApplyError, ApplyTarget, HaltCause};
use crate::auth::Caller;
use crate::coord::ReplayJournal;
use crate::metrics::{ProxyMetrics, ReplayMetrics};
use crate::mirror::{identity_of, MirrorOp};
use crate::topology::SharedTopology;

mod board;
mod journal_read;
mod lanes;
mod raw_records;

pub use board::{ReplayBoard, ReplayState, ReplayStop};
use lanes::merge_into;
pub use raw_records::RawBatch;
use raw_records::RawMerge;

/// Entries read from the journal at a time, at most.
const READ_AHEAD: usize = 512;
/// A merged body stops growing past this many bytes of payload, well under Chroma's default
/// 40 MiB request limit.
const MERGED_BYTES: usize = 8 * 1024 * 1024;
/// Wait after a failure of the state store itself (a read, a remove, a park).
const STORE_RETRY: Duration = Duration::from_secs(1);
/// How often a journal whose store is primary looks again (a switch back makes it secondary).
const PRIMARY_WAIT: Duration = Duration::from_secs(1);
/// Held entries checked for removal before a batch: the head. Only reconciliations are moved
/// out of a journal (by a forced switch), and they are never merged with other entries, so a
/// removed one is always alone at its lane's head.
const MAX_CHECKED: usize = 1;
/// Collections listed as waiting on the board, at most.
const BOARD_WAITING: usize = 20;

/// How the worker retries and paces itself.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    pub retry_initial: Duration,
    /// The longest wait between retries, and the cap on a store's `Retry-After`.
    pub retry_max: Duration,
    /// Requests per second at most; 0 is unlimited.
    pub rate_limit: u32,
    /// Journal payload bytes held in memory at once, at most (one entry may pass it).
    pub max_bytes: usize,
    /// Nothing is applied before this instant. Set after a start that recovered writes in
    /// flight at the last stop: their outcome on the primary is unknown, and their
    /// reconciliations must not read the primary before a commit it finishes late.
    pub hold_until: Option<Instant>,
}

impl ReplaySettings {
    /// The backoff between retries of a lane, and between probes of a store that refuses the
    /// proxy.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.retry_initial, self.retry_max)
    }
}

/// Called with the text of an alert (the control plane's alerter in the process).
pub type AlertSink = Arc<dyn Fn(String) + Send + Sync>;

/// Applies `target`'s journal to it until `stop` turns true.
pub struct ReplayWorker<A: ApplyTarget> {
    pub target: BackendName,
    /// The journal it reads and changes: the redb state, or a cluster's shared journal.
    pub store: Arc<dyn ReplayJournal>,
    pub applier: Arc<A>,
    pub metrics: ProxyMetrics,
    pub replay_metrics: ReplayMetrics,
    pub settings: ReplaySettings,
    /// Where the worker shows its state, for `/admin/status` and the switch.
    pub board: Arc<ReplayBoard>,
    /// Where a stop and a resume are announced.
    pub alert: AlertSink,
    /// Which store is primary now: a journal is applied only to the secondary.
    pub topology: SharedTopology,
}

// By hand: a derive would ask `A: Clone`, and `A` sits behind an `Arc`.
impl<A: ApplyTarget> Clone for ReplayWorker<A> {
    fn clone(&self) -> Self {
        ReplayWorker {
            target: self.target,
            store: self.store.clone(),
            applier: self.applier.clone(),
            metrics: self.metrics.clone(),
            replay_metrics: self.replay_metrics.clone(),
            settings: self.settings.clone(),
            board: self.board.clone(),
            alert: self.alert.clone(),
            topology: self.topology.clone(),
        }
    }
}

impl<A: ApplyTarget> std::fmt::Debug for ReplayWorker<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWorker")
            .field("target", &self.target)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// The worker.

/// A journal entry held in memory, undecoded: its payload is the one copy.
#[derive(Debug)]
struct Held {
    seq: Seq,
    payload: Vec<u8>,
}

/// One collection's entries, applied in seq order.
#[derive(Debug, Default)]
struct Lane {
    queue: VecDeque<Held>,
    /// Payload bytes in `queue`.
    bytes: usize,
    /// The first entry of this lane not held because the lane was full; it and the lane's later
    /// entries up to the read cursor are read again once the queue is empty.
    unread_from: Option<Seq>,
    /// When the head may be tried again, after a failure worth retrying.
    retry_at: Option<Instant>,
    /// Failures worth retrying since the head last applied: the next pause's place in the
    /// backoff.
    failures: u32,
    /// Entries at the head to apply one at a time: a merged batch of them was refused.
    singles: usize,
    /// The last failure worth retrying, for the board.
    last_error: Option<String>,
}

impl Lane {
    fn idle(&self) -> bool {
        self.queue.is_empty() && self.unread_from.is_none()
    }

    fn push(&mut self, entry: JournalEntry) {
        self.bytes += entry.payload.len();
        self.queue.push_back(Held {
            seq: entry.seq,
            payload: entry.payload,
        });
    }
}

/// What the worker does next.
enum Flow {
    Continue,
    /// Asked to stop.
    Stop,
}

/// The batch at a lane's head: the op for `count` entries merged.
struct Batch {
    op: Planned,
    count: usize,
    /// The identity its entries were written by (all the same).
    caller: Caller,
}

/// What one request of the replay applies.
enum Planned {
    /// Decoded entries, merged as ops.
    Op(MirrorOp),
    /// Adds or upserts merged at the byte level.
    Raw(RawBatch),
}

impl Planned {
    fn lag_key(&self) -> String {
        match self {
            Planned::Op(op) => op.lag_key(),
            Planned::Raw(raw) => raw.collection.to_string(),
        }
    }

    async fn apply<A: ApplyTarget>(
        &self,
        applier: &A,
        target: BackendName,
        caller: &Caller,
    ) -> Result<(), ApplyError> {
        match self {
            Planned::Op(op) => applier.apply(target, op, caller).await,
            Planned::Raw(raw) => applier.apply_raw(target, raw, caller).await,
        }
    }
}

/// The worker's state while it runs.
struct Run<'w, A: ApplyTarget> {
    worker: &'w ReplayWorker<A>,
    stop: watch::Receiver<bool>,
    lanes: BTreeMap<String, Lane>,
    /// The last seq read from the journal (held, or left for a full lane).
    cursor: Option<Seq>,
    /// Payload bytes held over all lanes.
    held: usize,
    /// A barrier is ahead or being applied: read nothing further until every lane is idle.
    barrier: bool,
    /// The lane served last, so lanes take turns.
    last_lane: Option<String>,
    /// One request per this interval, when rate limited.
    pacer: Option<tokio::time::Interval>,
}

impl<A: ApplyTarget> ReplayWorker<A> {
    pub fn spawn(self, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run(stop).await })
    }

    /// Replays until `stop` turns true.
    pub async fn run(&self, stop: watch::Receiver<bool>) {
        let pacer = (self.settings.rate_limit > 0).then(|| {
            // The config caps the rate; the floor keeps a zero period (a panic) impossible.
            let period =
                (Duration::from_secs(1) / self.settings.rate_limit).max(Duration::from_micros(1));
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        let mut run = Run {
            worker: self,
            stop,
            lanes: BTreeMap::new(),
            cursor: None,
            held: 0,
            barrier: false,
            last_lane: None,
            pacer,
        };
        run.go().await;
    }

    fn lane_cap(&self) -> usize {
        (self.settings.max_bytes / 4).max(1)
    }
}

impl<A: ApplyTarget> Run<'_, A> {
    fn target(&self) -> BackendName {
        self.worker.target
    }

    async fn go(&mut self) {
        if let Some(until) = self.worker.settings.hold_until {
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                _ = self.stop.changed() => return,
            }
        }
        let mut appended = self.worker.store.watch_appends(self.target());
        let mut appends_open = true;
        loop {
            if *self.stop.borrow() {
                return;
            }
            // Marked seen before reading, so an append after the read wakes the wait below.
            appended.borrow_and_update();
            if let Err(error) = self.fill() {
                tracing::error!(target = self.target().as_str(), %error, "cannot read the journal");
                if self.pause(STORE_RETRY).await {
                    return;
                }
                continue;
            }
            self.show();
            if let Some(key) = self.ready_lane() {
                if let Some(pacer) = self.pacer.as_mut() {
                    pacer.tick().await;
                }
                if let Flow::Stop = self.step(&key).await {
                    return;
                }
                self.last_lane = Some(key);
                continue;
            }
            let next_retry = self
                .lanes
                .values()
                .filter(|l| !l.queue.is_empty())
                .filter_map(|l| l.retry_at)
                .min();
            tokio::select! {
                () = sleep_until(next_retry) => {}
                changed = appended.changed(), if appends_open => appends_open = changed.is_ok(),
                changed = self.stop.changed() => if changed.is_err() {
                    return;
                },
            }
        }
    }

    /// Sleeps for `wait`; true when asked to stop meanwhile.
    async fn pause(&mut self, wait: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(wait) => *self.stop.borrow(),
            _ = self.stop.changed() => true,
        }
    }

    fn idle(&self) -> bool {
        self.lanes.values().all(Lane::idle)
    }

    /// The next lane with work that is not waiting for a retry, taking turns.
    fn ready_lane(&self) -> Option<String> {
        let now = Instant::now();
        let ready = |l: &Lane| !l.queue.is_empty() && l.retry_at.is_none_or(|at| at <= now);
        let after = self.last_lane.as_deref().unwrap_or("");
        let later = self
            .lanes
            .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .find(|(_, l)| ready(l));
        later
            .or_else(|| self.lanes.iter().find(|(_, l)| ready(l)))
            .map(|(k, _)| k.clone())
    }

    /// Builds the batch at the head of `key`'s lane: the head entry, merged with the following
    /// ones while they fit. An unreadable head is returned as its error.
    async fn batch(&self, key: &str) -> Result<Batch, (Seq, String)> {
        let lane = &self.lanes[key];
        if lane.singles == 0 {
            if let Some(batch) = self.raw_batch(lane).await {
                return Ok(batch);
            }
        }
        let head = &lane.queue[0];
        let mut op = MirrorOp::from_bytes(&head.payload)
            .map_err(|e| (head.seq, format!("unreadable journal entry: {e}")))?;
        let mut count = 1;
        let identity = identity_of(&head.payload);
        let caller = Caller::from_journal(identity);
        if lane.singles > 0 || !matches!(op, MirrorOp::Records { .. }) {
            let op = Planned::Op(op);
            return Ok(Batch { op, count, caller });
        }
        let max_records = self.worker.applier.max_batch(self.target()).await;
        let mut bytes = head.payload.len();
        for next in lane.queue.iter().skip(1) {
            // One request carries one identity's credential.
            if bytes + next.payload.len() > MERGED_BYTES || identity_of(&next.payload) != identity {
                break;
            }
            let Ok(next_op) = MirrorOp::from_bytes(&next.payload) else {
                break;
            };
            if !merge_into(&mut op, &next_op, max_records) {
                break;
            }
            bytes += next.payload.len();
            count += 1;
        }
        let op = Planned::Op(op);
        Ok(Batch { op, count, caller })
    }

    /// The batch at the head of a lane merged at the byte level, when its head is an add or
    /// an upsert that path reads: the same merge as [`Run::batch`]'s, without a parse tree.
    async fn raw_batch(&self, lane: &Lane) -> Option<Batch> {
        let head = &lane.queue[0];
        let mut merge = RawMerge::start(&head.payload)?;
        let max_records = self.worker.applier.max_batch(self.target()).await;
        // Too large for one request: the parse-tree path splits it.
        if merge.records() > max_records {
            return None;
        }
        let identity = identity_of(&head.payload);
        let (mut bytes, mut count) = (head.payload.len(), 1);
        for next in lane.queue.iter().skip(1) {
            if bytes + next.payload.len() > MERGED_BYTES || identity_of(&next.payload) != identity {
                break;
            }
            if !merge.push(&next.payload, max_records) {
                break;
            }
            bytes += next.payload.len();
            count += 1;
        }
        Some(Batch {
            op: Planned::Raw(merge.finish()),
            count,
            caller: Caller::from_journal(identity),
        })
    }

    /// Applies the batch at the head of `key`'s lane once, and does what its outcome says.
    async fn step(&mut self, key: &str) -> Flow {
        let target = self.target();
        // A switch may have moved entries out of this journal (a forced switch moves what
        // reads a dead store to that store's own journal): what is no longer there is not
        // applied, or a stale copy held here would overwrite newer writes.
        match self.drop_removed(key) {
            Ok(true) => return Flow::Continue,
            Ok(false) => {}
            Err(error) => {
                tracing::error!(target = target.as_str(), %error, "cannot read the journal");
                return if self.pause(STORE_RETRY).await {
                    Flow::Stop
                } else {
                    Flow::Continue
                };
            }
        }
        if self.worker.topology.current().primary == target {
            return self.hand_over(key).await;
        }
        let batch = match self.batch(key).await {
            Ok(batch) => batch,
            Err((seq, reason)) => {
                tracing::error!(target = target.as_str(), %seq, %reason, "parked");
                return self.park(key, 1, reason, "unreadable").await;
            }
        };
        // A span in the trace of the first entry's request (none unless `[tracing]` is on).
        let span = match crate::trace_ctx::enabled() {
            true => crate::trace_ctx::replay_span(
                target.as_str(),
                batch.count,
                self.lanes[key]
                    .queue
                    .iter()
                    .take(batch.count)
                    .map(|e| &e.payload[..]),
            ),
            false => tracing::Span::none(),
        };
        let apply = batch.op.apply(&*self.worker.applier, target, &batch.caller);
        let mut result = tokio::select! {
            result = tracing::Instrument::instrument(apply, span) => result,
            _ = self.stop.changed() => return Flow::Stop,
        };
        if let Err(ApplyError::Halted { reason, cause }) = result {
            result = match self.halted(&batch, cause, reason).await {
                Some(result) => result,
                None => return Flow::Stop,
            };
        }
        let (count, durable) = (batch.count, !lanes::removal_may_wait(&batch.op));
        let collection = batch.op.lag_key();
        drop(batch);
        match result {
            Ok(()) => {
                let seqs: Vec<Seq> = self.lanes[key]
                    .queue
                    .iter()
                    .take(count)
                    .map(|h| h.seq)
                    .collect();
                if let Flow::Stop = self.remove(&seqs, durable).await {
                    return Flow::Stop;
                }
                self.pop(key, count);
                if let Some(lane) = self.lanes.get_mut(key) {
                    lane.retry_at = None;
                    lane.failures = 0;
                    lane.last_error = None;
                }
                let name = target.as_str();
                let metrics = &self.worker.metrics;
                metrics
                    .replay_applied
                    .with_label_values(&[name])
                    .inc_by(count as u64);
                metrics.replay_requests.with_label_values(&[name]).inc();
                Flow::Continue
            }
            Err(ApplyError::Retry {
                reason,
                retry_after,
            }) => {
                self.worker
                    .metrics
                    .replay_retries
                    .with_label_values(&[target.as_str()])
                    .inc();
                let backoff = self.worker.settings.backoff();
                let lane = self.lanes.get_mut(key).expect("the lane being applied");
                // A store's Retry-After is honoured up to retry_max: a huge value must not
                // park the lane for hours.
                let pause = backoff.pause_after(lane.failures, retry_after);
                tracing::warn!(target = target.as_str(), collection, %reason, retry_in = ?pause, "replay failed; retrying");
                lane.failures = lane.failures.saturating_add(1);
                lane.retry_at = Some(Instant::now() + pause);
                lane.last_error = Some(reason);
                Flow::Continue
            }
            Err(ApplyError::Refused { .. }) if count > 1 => {
                // Find the entry the store refuses: apply them one at a time.
                if let Some(lane) = self.lanes.get_mut(key) {
                    lane.singles = count;
                }
                Flow::Continue
            }
            Err(ApplyError::Refused {
                reason,
                dimension_mismatch,
            }) => {
                if dimension_mismatch {
                    self.worker
                        .metrics
                        .collection_series
                        .dimension_mismatch(target.as_str(), &collection);
                }
                tracing::error!(
                    target = target.as_str(),
                    collection,
                    %reason,
                    dimension_mismatch,
                    "the store refused a mirrored write; parked as a dead letter"
                );
                let kind = if dimension_mismatch {
                    "dimension_mismatch"
                } else {
                    "refused"
                };
                self.park(key, 1, reason, kind).await
            }
            // `halted` returns only other outcomes.
            Err(ApplyError::Halted { .. }) => Flow::Continue,
        }
    }

    /// The target refuses the proxy: stop everything, announce it, and probe with `op` on a
    /// backoff until the store answers anything else, which is returned. `None`: asked to stop.
    async fn halted(
        &mut self,
        batch: &Batch,
        cause: HaltCause,
        reason: String,
    ) -> Option<Result<(), ApplyError>> {
        let (op, caller) = (&batch.op, &batch.caller);
        // Say whose key the store refused: the operator's or one identity's.
        let reason = match caller.identity() {
            Some(name) => format!("{reason} (sent with the token of client identity `{name}`)"),
            None => reason,
        };
        let target = self.target();
        let name = target.as_str();
        let gauge = self
            .worker
            .replay_metrics
            .stopped
            .with_label_values(&[name, cause.as_str()]);
        gauge.set(1);
        tracing::error!(target = name, cause = cause.as_str(), %reason, "the store refuses the proxy; replay stopped until it accepts again");
        (self.worker.alert)(format!(
            "chroma-shift: replay to the {name} store stopped ({}): {reason}. Writes stay queued in the journal; the replay resumes by itself once the store accepts them.",
            cause.as_str()
        ));
        self.worker.board.update(target, |s| {
            s.state = format!("stopped: {}", cause.as_str());
            s.stopped = Some(ReplayStop {
                cause,
                reason: reason.clone(),
                since_ms: now_ms(),
                probes: 0,
            });
        });
        let backoff = self.worker.settings.backoff();
        let mut failures = 0;
        let outcome = loop {
            if self.pause(backoff.pause(failures)).await {
                break None;
            }
            failures = failures.saturating_add(1);
            let result = tokio::select! {
                result = op.apply(&*self.worker.applier, target, caller) => result,
                _ = self.stop.changed() => break None,
            };
            match result {
                Err(ApplyError::Halted { reason, .. }) => {
                    self.worker.board.update(target, |s| {
                        if let Some(stop) = s.stopped.as_mut() {
                            stop.reason = reason;
                            stop.probes += 1;
                        }
                    });
                }
                other => break Some(other),
            }
        };
        gauge.set(0);
        self.worker.board.update(target, |s| {
            s.state = "running".to_owned();
            s.stopped = None;
        });
        if outcome.is_some() {
            tracing::info!(
                target = name,
                "the store accepts the proxy again; replay resumed"
            );
            (self.worker.alert)(format!("chroma-shift: replay to the {name} store resumed"));
        }
        outcome
    }

    /// Parks the head of `key`'s lane with `reason`.
    async fn park(&mut self, key: &str, count: usize, reason: String, kind: &str) -> Flow {
        let target = self.target();
        let seq = self.lanes[key].queue[0].seq;
        let parked = tokio::select! {
            parked = self.worker.store.park(target, seq, reason) => parked,
            _ = self.stop.changed() => return Flow::Stop,
        };
        match parked {
            Ok(()) | Err(StoreError::UnknownEntry { .. }) => {
                self.pop(key, count);
                self.worker
                    .metrics
                    .dead_letters
                    .with_label_values(&[target.as_str(), kind])
                    .inc();
            }
            Err(error) => {
                tracing::error!(target = target.as_str(), %error, "cannot park a dead letter; retrying");
                if let Some(lane) = self.lanes.get_mut(key) {
                    lane.retry_at = Some(Instant::now() + STORE_RETRY);
                }
            }
        }
        Flow::Continue
    }

    /// Removes applied entries (`durable`: see [`lanes::removal_may_wait`]), retrying on a store
    /// error until asked to stop (they are then applied again at the next start: harmless).
    async fn remove(&mut self, seqs: &[Seq], durable: bool) -> Flow {
        let worker = self.worker;
        loop {
            let removed = tokio::select! {
                removed = lanes::remove_applied(&worker.store, worker.target, seqs, durable) => removed,
                _ = self.stop.changed() => return Flow::Stop,
            };
            match removed {
                Ok(()) => return Flow::Continue,
                Err(error) => {
                    tracing::error!(target = self.target().as_str(), %error, "cannot remove applied entries; retrying");
                    if self.pause(STORE_RETRY).await {
                        return Flow::Stop;
                    }
                }
            }
        }
    }

    /// This store is primary now, yet its journal holds entries: a crash in the middle of a
    /// forced switch can leave reconciliations moved here for a swap that never happened.
    /// Applied here they would copy the secondary's records into the primary; in the other
    /// store's journal they do what they were queued for. Anything else waits (a switch back
    /// makes this store secondary again).
    async fn hand_over(&mut self, key: &str) -> Flow {
        let target = self.target();
        let Some(head) = self.lanes.get(key).and_then(|l| l.queue.front()) else {
            return Flow::Continue;
        };
        let (seq, payload) = (head.seq, head.payload.clone());
        let reads_source = MirrorOp::from_bytes(&payload).is_ok_and(|op| op.reads_the_source());
        if !reads_source {
            if let Some(lane) = self.lanes.get_mut(key) {
                lane.retry_at = Some(Instant::now() + PRIMARY_WAIT);
                lane.last_error = Some(format!("{target} is primary: its journal waits"));
            }
            tracing::warn!(target = target.as_str(), %seq, "a journal entry for the primary waits until it is secondary again");
            return Flow::Continue;
        }
        match self
            .worker
            .store
            .retarget(target, vec![(seq, payload)], target.other())
            .await
        {
            Ok(_) => {
                tracing::warn!(target = target.as_str(), %seq, "a reconciliation queued for the primary moved to the secondary's journal");
                self.pop(key, 1);
                Flow::Continue
            }
            Err(error) => {
                tracing::error!(target = target.as_str(), %error, "cannot move a reconciliation off the primary's journal");
                if self.pause(STORE_RETRY).await {
                    Flow::Stop
                } else {
                    Flow::Continue
                }
            }
        }
    }

    /// Drops `count` entries from the head of `key`'s lane, and the lane once idle.
    fn pop(&mut self, key: &str, count: usize) {
        let Some(lane) = self.lanes.get_mut(key) else {
            return;
        };
        for _ in 0..count {
            if let Some(held) = lane.queue.pop_front() {
                lane.bytes -= held.payload.len();
                self.held -= held.payload.len();
            }
        }
        lane.singles = lane.singles.saturating_sub(count);
        if lane.idle() {
            self.lanes.remove(key);
        }
    }

    /// Publishes the memory held and the waiting collections.
    fn show(&self) {
        let name = self.target().as_str();
        let metrics = &self.worker.replay_metrics;
        metrics
            .held_bytes
            .with_label_values(&[name])
            .set(i64::try_from(self.held).unwrap_or(i64::MAX));
        let waiting: Vec<(&String, &Lane)> = self
            .lanes
            .iter()
            .filter(|(_, l)| l.retry_at.is_some())
            .collect();
        metrics
            .waiting_collections
            .with_label_values(&[name])
            .set(i64::try_from(waiting.len()).unwrap_or(i64::MAX));
        self.worker.board.update(self.target(), |s| {
            s.held_bytes = self.held as u64;
            s.lanes = self.lanes.len();
            s.waiting = waiting
                .iter()
                .take(BOARD_WAITING)
                .map(|(k, l)| ((*k).clone(), l.last_error.clone().unwrap_or_default()))
                .collect();
        });
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;

#[cfg(test)]
mod identity_tests;
