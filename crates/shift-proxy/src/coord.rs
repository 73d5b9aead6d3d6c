//! The seams between the request path and what holds state or coordinates it: the order
//! scope, the write gate, the live topology, the collection-id map's durable side, and the
//! journal of write intents and mirrored writes.
//!
//! The request path ([`crate::reads`], [`crate::record_writes`], [`crate::lifecycle_writes`],
//! [`crate::write_task`]) reaches them only through these traits, held by
//! [`crate::plane::DataPlaneState`] as `Arc<dyn ...>`. The embedded implementations are the
//! default and the only ones today: [`OrderLocks`](crate::locks::OrderLocks),
//! [`LocalWriteGate`](crate::gate::LocalWriteGate),
//! [`LocalTopology`](crate::topology::LocalTopology), and the redb state
//! ([`shift_state::StateStore`]) for the map and the journal (in [`crate::embedded`]). A cluster
//! mode (etcd for the topology, the gate's coordination and the map; NATS JetStream for the
//! journal) plugs in here.
//!
//! Cost: what every request calls is synchronous and allocates nothing (the topology, the
//! gate and the order scope when free, the lag). A future is boxed where a network call would
//! be: when a write waits at a closed gate or behind a held lock, and for the journal and
//! map calls, each of which waits on a durable commit anyway.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use shift_config::BackendName;
use shift_state::{IntentId, JournalEntry, Lag, NewEntry, Seq, StoreError};
use tokio::sync::watch;

use crate::collections::CollectionEntry;
use crate::gate::{ClosedGate, WritePass};
use crate::locks::{LifecycleGuard, OrderGuard};
use crate::topology::Topology;

/// A call that may wait on something outside the process.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A call to the durable state.
pub type StateCall<'a, T> = Pending<'a, Result<T, StoreError>>;

/// Per-record write order: writes that touch the same records reach both stores in the same
/// order. A guard is held from before the primary write until the mirror is durably queued or
/// applied. A cluster gives each collection to one replica (its owner) and forwards the other
/// replicas' writes to it, so the order scope itself stays in the process that holds it.
pub trait OrderScope: Send + Sync + Debug {
    /// Locks records `ids` of `collection` if none is held now: the way every uncontended
    /// write goes, with no allocation. `None` leaves nothing held.
    fn try_records(&self, collection: &str, ids: &[String]) -> Option<OrderGuard>;
    /// Waits for the records `ids` of `collection`; ids are taken in one global order, so two
    /// writes never wait on each other in a cycle.
    fn wait_records<'a>(
        &'a self,
        collection: &'a str,
        ids: &'a [String],
    ) -> Pending<'a, OrderGuard>;
    /// The whole of `collection`: no record of it is written while held (a delete by filter,
    /// a collection change, a backfill batch's re-read).
    fn collection<'a>(&'a self, collection: &'a str) -> Pending<'a, OrderGuard>;
    /// Serializes lifecycle changes (tenants, databases, collections), so their mirrors are
    /// queued in the order the primary applied them.
    fn lifecycle(&self) -> Pending<'_, LifecycleGuard>;
    /// Collections whose order state is kept now (held or waited for); idle ones keep none.
    fn tracked_collections(&self) -> usize;
}

impl dyn OrderScope + '_ {
    /// Locks the records `ids` of `collection`, at once when they are free.
    pub async fn records(&self, collection: &str, ids: &[String]) -> OrderGuard {
        match self.try_records(collection, ids) {
            Some(guard) => guard,
            None => self.wait_records(collection, ids).await,
        }
    }
}

/// The write gate: every write passes it, a cutover or a pause closes it. Closing waits for
/// the writes past the gate; writes arriving meanwhile are held (never refused) and go on,
/// in order, when it opens, to whichever store is primary by then. In a cluster each replica
/// passes its writes through its own gate and a coordinator closes every replica's.
pub trait WriteGate: Send + Sync + Debug {
    /// A pass when the gate is open: the way every write goes, with no allocation.
    fn try_enter(&self) -> Option<WritePass>;
    /// Waits at the closed gate for a pass; the write counts as held meanwhile.
    fn wait(&self) -> Pending<'_, WritePass>;
    /// Closes the gate once every write past it has finished; dropping the answer opens it.
    fn close(&self) -> Pending<'_, ClosedGate>;
    /// Writes waiting at the closed gate now.
    fn held(&self) -> usize;
    /// Passes out now (writes past the gate holding their pass), where the gate counts them:
    /// a switch's sync window flips only once none is out (see [`crate::window`]).
    fn passes(&self) -> Option<usize> {
        None
    }
}

impl dyn WriteGate + '_ {
    /// Passes the gate, waiting while it is closed.
    pub async fn enter(&self) -> WritePass {
        match self.try_enter() {
            Some(pass) => pass,
            None => self.wait().await,
        }
    }
}

/// The live topology: which store is primary, how writes reach the other, how reads are
/// spread. A request reads it once and keeps that one from start to end.
pub trait LiveTopology: Send + Sync + Debug {
    /// The topology now: a pointer copy, no wait.
    fn current(&self) -> Arc<Topology>;
    /// Makes `topology` current here and tells the subscribers. Its one owner (the switch)
    /// persists or commits it first and holds the gate closed around a change of primary; in a
    /// cluster each replica calls it when it sees the committed change.
    fn replace(&self, topology: Arc<Topology>);
    /// A receiver that sees every topology made current from now on.
    fn subscribe(&self) -> watch::Receiver<Arc<Topology>>;
}

/// The durable side of the collection-id map (the in-memory index in front of it is
/// [`crate::collections::CollectionIdMap`]). Entries are keyed by the client's collection id.
pub trait CollectionMapStore: Send + Sync + Debug {
    /// Every entry, to build the index at start.
    fn load(&self) -> StateCall<'_, Vec<CollectionEntry>>;
    /// Stores `entry` unless a live (not deleted) one with its client id exists; the entry
    /// stored after the call (the earlier live one wins). Two replicas that register the same
    /// collection at once end up with the same entry.
    fn create_if_absent(&self, entry: CollectionEntry) -> StateCall<'_, CollectionEntry>;
    /// Stores `entry`, replacing the one with its client id.
    fn put<'a>(&'a self, entry: &'a CollectionEntry) -> StateCall<'a, ()>;
    /// Forgets the entry of `client_id`.
    fn remove<'a>(&'a self, client_id: &'a str) -> StateCall<'a, ()>;
}

/// The journal: write intents (durable before the primary sees a write) and, per target
/// store, the mirrored writes waiting for it. Every call that changes it resolves once the
/// change is durable; one that cannot be made durable fails (and the write is refused or
/// reported, never acknowledged without its journal entry).
pub trait WriteJournal: Send + Sync + Debug {
    /// Records that a write is about to go to the primary. Refused while the journal is full
    /// or the state cannot be written.
    fn record_intent(&self, payload: Vec<u8>) -> StateCall<'_, IntentId>;
    /// Drops the intent and appends `entries`, atomically: a crash leaves one or the other.
    fn commit_intent(&self, id: IntentId, entries: Vec<NewEntry>) -> StateCall<'_, ()>;
    /// Drops an intent whose write is not mirrored.
    fn discard_intent(&self, id: IntentId) -> StateCall<'_, ()>;
    /// [`commit_intent`](Self::commit_intent), but it may resolve before the change is
    /// durable: a crash may then lose it, and only it and later ones, leaving the intent
    /// pending. For a caller whose recovery of the intent is as good as the settlement (see
    /// `write_task.rs`). An implementation without a cheaper deferred commit makes it durable;
    /// a wrapper passes it on (no default: a default would silently make a wrapped journal
    /// durable again).
    fn settle_intent(&self, id: IntentId, entries: Vec<NewEntry>) -> StateCall<'_, ()>;
    /// [`discard_intent`](Self::discard_intent), likewise possibly before it is durable.
    fn discard_intent_deferred(&self, id: IntentId) -> StateCall<'_, ()>;
    /// Appends entries outside a client write (a repair).
    fn append(&self, entries: Vec<NewEntry>) -> StateCall<'_, ()>;
    /// The intents not settled yet, with their payloads (recovery, the orphan sweep).
    fn pending_intents(&self) -> Result<Vec<(IntentId, Vec<u8>)>, StoreError>;
    /// How many intents are not settled yet; cheap.
    fn pending_intent_count(&self) -> u64;
    /// What waits for `target`, in total and per collection; cheap, read per request.
    fn lag(&self, target: BackendName) -> Lag;
    /// Writes a store refused, parked for an operator; cheap.
    fn dead_letter_count(&self) -> u64;
}

/// The seams a data plane is built on.
#[derive(Debug, Clone)]
pub struct Coordination {
    /// Per-record write order.
    pub order: Arc<dyn OrderScope>,
    /// The gate every write passes, closed by a cutover or a pause.
    pub gate: Arc<dyn WriteGate>,
    /// Which store is primary.
    pub topology: Arc<dyn LiveTopology>,
    /// The collection-id map's durable side.
    pub collections: Arc<dyn CollectionMapStore>,
    /// Write intents and the journals of mirrored writes.
    pub journal: Arc<dyn WriteJournal>,
}

/// What the replay worker ([`crate::replay`]) reads and changes in one target's journal. The
/// embedded implementation is the redb state ([`shift_state::StateStore`], in
/// [`crate::embedded`]); a cluster serves the entries of the collections this replica owns from
/// a shared journal. The reads are synchronous: an implementation over the network serves them
/// from what it read ahead.
pub trait ReplayJournal: Send + Sync + Debug {
    /// Up to `max_entries` entries of `target`'s journal with a seq above `after` (from the
    /// start with `None`), in seq order, stopping after the entry that brings the payload bytes
    /// to `max_bytes` (at least one entry when there is one).
    fn read_bounded(
        &self,
        target: BackendName,
        after: Option<Seq>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<JournalEntry>, StoreError>;
    /// [`read_bounded`](Self::read_bounded) without a byte bound.
    fn read(
        &self,
        target: BackendName,
        after: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        self.read_bounded(target, after, limit, usize::MAX)
    }
    /// Removes applied entries; seqs no longer there are skipped.
    fn remove<'a>(&'a self, target: BackendName, seqs: &'a [Seq]) -> StateCall<'a, ()>;
    /// [`remove`](Self::remove), but it may resolve before the removal is durable: a crash
    /// may bring the entries back, to be applied again (only for entries whose re-apply is
    /// harmless: `replay/lanes.rs`'s `removal_may_wait`). An implementation without a cheaper
    /// deferred removal removes durably (no default, as for [`WriteJournal::settle_intent`]).
    fn remove_deferred<'a>(&'a self, target: BackendName, seqs: &'a [Seq]) -> StateCall<'a, ()>;
    /// Moves one entry to the dead letters with `reason`
    /// ([`StoreError::UnknownEntry`] when it is not in the journal).
    fn park(&self, target: BackendName, seq: Seq, reason: String) -> StateCall<'_, ()>;
    /// Moves entries of `from`'s journal to `to`'s (a reconciliation queued for a store that
    /// is primary now); seqs no longer in `from`'s journal are skipped.
    fn retarget(
        &self,
        from: BackendName,
        moves: Vec<(Seq, Vec<u8>)>,
        to: BackendName,
    ) -> StateCall<'_, Vec<Seq>>;
    /// A receiver that changes when entries are appended to `target`'s journal.
    fn watch_appends(&self, target: BackendName) -> watch::Receiver<Option<Seq>>;
    /// What waits for `target`; cheap.
    fn lag(&self, target: BackendName) -> Lag;
}
