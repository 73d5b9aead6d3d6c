//! The data plane's shared state: one handle, [`DataPlaneState`], that every request and every
//! background task of the proxy (replay, backfill, the control plane) holds.
//!
//! Its fields are private to this crate: the operation modules ([`crate::reads`],
//! [`crate::record_writes`], [`crate::lifecycle_writes`], [`crate::passthrough`],
//! [`crate::reset`]) work on them directly, everything outside the crate goes through the
//! methods below (the gate, the topology, the collections, the lag and the intents).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use shift_config::{BackendName, SecondaryFailure};
use shift_state::{DeadLetter, Lag, MapTable, NewEntry, Seq, StateStore, StoreError, StoreHealth};

use crate::coord::{Coordination, OrderScope, WriteGate, WriteJournal};

use crate::apply::{Applier, ApplyError};
use crate::backend::Backends;
use crate::collections::{CollectionEntry, CollectionIdMap};
use crate::gate::{ClosedGate, WritePass};
use crate::ids::BackendCollectionId;
use crate::intents::LiveIntents;
use crate::locks::OrderGuard;
use crate::metrics::ProxyMetrics;
use crate::namespace::NamespaceMap;
use crate::resolve::{ResolveError, Resolver};
use crate::shadow::ShadowReads;
use crate::topology::{SharedTopology, Topology};
use crate::window::SyncWindow;

/// How writes behave; from the `[mirror]` config.
#[derive(Debug, Clone)]
pub struct WriteSettings {
    /// Sync mode: what a write does when only the secondary failed.
    pub on_secondary_failure: SecondaryFailure,
    /// Whether `POST /api/v2/reset` is allowed through.
    pub allow_reset: bool,
    /// How long a write's records stay locked after an unknown outcome on the primary.
    pub unknown_outcome_grace: Duration,
    /// Records per batch a store is sent when a mirrored write is applied.
    pub apply_batch_records: usize,
}

/// What a [`DataPlaneState`] is built from.
#[derive(Debug)]
pub struct PlaneParts {
    /// The order scope, the gate, the topology, the collection map's durable side and the
    /// journal ([`Coordination::embedded`] for one process).
    pub coordination: Coordination,
    /// The durable state, for what is not on the request path: dead letters and backfill
    /// checkpoints, and the control plane's switch and alerts.
    pub state: StateStore,
    /// The one HTTP client of each store.
    pub backends: Arc<Backends>,
    /// Tenant and database renames between the stores.
    pub namespaces: NamespaceMap,
    /// The data plane's Prometheus metrics.
    pub metrics: ProxyMetrics,
    /// Runs shadow reads and keeps the score of shadow and canary reads.
    pub shadow: Arc<ShadowReads>,
    /// How writes behave.
    pub writes: WriteSettings,
}

/// What the read and write paths share, and what the control plane and the migration tools
/// act on.
#[derive(Debug)]
pub struct DataPlaneState {
    /// Which store is primary; read once per request.
    pub(crate) topology: SharedTopology,
    /// Write intents and the journals of mirrored writes.
    pub(crate) journal: Arc<dyn WriteJournal>,
    /// The durable state, off the request path (see [`PlaneParts::state`]).
    pub(crate) state: StateStore,
    /// Collection lookups and registration, with the stores' clients and the namespace map.
    pub(crate) resolver: Arc<Resolver>,
    /// Applies mirrored ops to a store (sync mode at once; the replay worker later).
    pub(crate) applier: Arc<Applier>,
    /// Per-record write order, shared with the applier and the backfill.
    pub(crate) locks: Arc<dyn OrderScope>,
    /// Counts mirrored writes, backend errors and orphaned intents.
    pub(crate) metrics: ProxyMetrics,
    /// Closed by a cutover or a pause; every write passes it first.
    pub(crate) gate: Arc<dyn WriteGate>,
    /// Runs shadow reads and keeps the score of shadow and canary reads.
    pub(crate) shadow: Arc<ShadowReads>,
    /// How writes behave.
    pub(crate) writes: WriteSettings,
    /// The intents a settlement task owns; the others are orphans to settle.
    pub(crate) live_intents: LiveIntents,
    /// The state store's last error, for the answer of a write it refused.
    pub(crate) last_state_error: Mutex<String>,
    /// A switch's sync window (see [`crate::window`]).
    pub(crate) window: Arc<SyncWindow>,
}

impl DataPlaneState {
    /// Loads the collection map and builds the handle.
    pub async fn new(parts: PlaneParts) -> Result<Arc<DataPlaneState>, StoreError> {
        let coordination = parts.coordination;
        let map = Arc::new(CollectionIdMap::load(coordination.collections).await?);
        let resolver = Arc::new(Resolver {
            backends: parts.backends,
            map,
            namespaces: parts.namespaces,
        });
        let applier = Arc::new(Applier::new(
            resolver.clone(),
            coordination.order.clone(),
            parts.writes.apply_batch_records,
        ));
        // Finalize's hook: nothing is queued for a retired secondary.
        let journal = Arc::new(crate::retired::RetiringJournal::new(
            coordination.journal,
            coordination.topology.clone(),
        ));
        Ok(Arc::new(DataPlaneState {
            topology: coordination.topology,
            journal,
            state: parts.state,
            resolver,
            applier,
            locks: coordination.order,
            metrics: parts.metrics,
            gate: coordination.gate,
            shadow: parts.shadow,
            writes: parts.writes,
            live_intents: LiveIntents::default(),
            last_state_error: Mutex::default(),
            window: Arc::default(),
        }))
    }

    // --- Topology ---

    /// The topology now.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.current()
    }

    /// The live topology, for the one owner of its changes (the control plane's switch) and
    /// the replay workers that follow it.
    pub fn live_topology(&self) -> &SharedTopology {
        &self.topology
    }

    // --- Write gate ---

    /// Passes the write gate, waiting while it is closed. Anything that writes to a store
    /// outside the request path holds a pass, as client writes do.
    pub async fn pass_gate(&self) -> WritePass {
        self.gate.enter().await
    }

    /// Closes the write gate once every write past it has finished; dropping the answer opens
    /// it again.
    pub async fn close_gate(&self) -> ClosedGate {
        self.gate.close().await
    }

    /// Writes waiting at the closed gate now.
    pub fn writes_held(&self) -> usize {
        self.gate.held()
    }

    /// A switch's sync window.
    pub fn window(&self) -> &Arc<SyncWindow> {
        &self.window
    }

    /// The gate itself, for the switch that closes it around a change of topology.
    pub fn gate(&self) -> &Arc<dyn WriteGate> {
        &self.gate
    }

    /// Locks records of a collection as a client write of them would.
    pub async fn order_records(&self, collection: &str, ids: &[String]) -> OrderGuard {
        self.locks.records(collection, ids).await
    }

    // --- Collections ---

    /// The map entry of a client's collection id.
    pub fn collection(&self, client_id: &str) -> Option<Arc<CollectionEntry>> {
        self.resolver.map.get(client_id)
    }

    /// Every collection in the map.
    pub fn collections(&self) -> Vec<Arc<CollectionEntry>> {
        self.resolver.map.entries()
    }

    /// How many collections the map holds.
    pub fn collection_count(&self) -> usize {
        self.resolver.map.entries().len()
    }

    /// How many collections each per-collection structure holds now.
    pub fn tracked_collections(&self) -> crate::collection_series::TrackedCollections {
        crate::collection_series::TrackedCollections {
            order_locks: self.locks.tracked_collections(),
            metric_series: self.metrics.collection_series.tracked(),
            shadow_scores: self.shadow.tracked(),
            collection_map: self.resolver.map.len(),
        }
    }

    /// Registers (or finds) the collection a store answered with.
    pub async fn register_collection(
        &self,
        backend: BackendName,
        object: &serde_json::Value,
    ) -> Result<Arc<CollectionEntry>, ResolveError> {
        self.resolver.register(backend, object).await
    }

    /// Forgets `backend`'s id of a collection (the store lost it; it is created again); the
    /// entry as it is now, `None` when the map has none.
    pub async fn forget_collection_on(
        &self,
        client_id: &str,
        backend: BackendName,
    ) -> Result<Option<Arc<CollectionEntry>>, StoreError> {
        self.resolver
            .map
            .update(client_id, |e| match backend {
                BackendName::Old => e.old = None,
                BackendName::New => e.new = None,
            })
            .await
    }

    /// Makes sure `target` has the collection, created like the primary's if not.
    pub async fn ensure_collection(
        &self,
        target: BackendName,
        entry: &CollectionEntry,
    ) -> Result<BackendCollectionId, ApplyError> {
        self.applier.ensure(target, entry).await
    }

    /// The one HTTP client of each store.
    pub fn backends(&self) -> &Arc<Backends> {
        &self.resolver.backends
    }

    /// Tenant and database renames between the stores.
    pub fn namespaces(&self) -> &NamespaceMap {
        &self.resolver.namespaces
    }

    /// Applies mirrored ops to a store; the replay workers share it.
    pub fn applier(&self) -> &Arc<Applier> {
        &self.applier
    }

    // --- Durable state: journal, intents, dead letters ---

    /// The durable state, for the tasks that own parts of it off the request path (the switch
    /// moves journals, the replay applies them, the state alerts watch its health).
    pub fn state(&self) -> &StateStore {
        &self.state
    }

    /// What waits in `target`'s journal, in total and per collection.
    pub fn lag(&self, target: BackendName) -> Lag {
        self.journal.lag(target)
    }

    /// Whether writes of `collection` (a journal lag key) wait in `target`'s journal: a
    /// sync-mode write then queues behind them, and a canary or shadow read skips the target.
    pub fn waits_in_journal(&self, target: BackendName, collection: &str) -> bool {
        self.journal
            .lag(target)
            .collections
            .get(collection)
            .is_some_and(|lag| lag.entries > 0)
    }

    /// Whether the state store can write, and why not.
    pub fn state_health(&self) -> StoreHealth {
        self.state.health()
    }

    /// Appends entries to the journals, durably.
    pub async fn append_journal(&self, entries: Vec<NewEntry>) -> Result<(), StoreError> {
        self.journal.append(entries).await
    }

    /// Writes whose settlement task is running now.
    pub fn settling(&self) -> usize {
        self.live_intents.len()
    }

    /// Intents recorded and not yet settled (the settling ones, and orphans).
    pub fn recorded_intents(&self) -> u64 {
        self.journal.pending_intent_count()
    }

    /// Writes a store refused, parked for an operator.
    pub fn dead_letter_count(&self) -> u64 {
        self.journal.dead_letter_count()
    }

    /// Up to `limit` dead letters with a seq above `after`, in seq order.
    pub fn dead_letters(
        &self,
        after: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.state.dead_letters(after, limit)
    }

    /// Sends a dead letter back to the end of its journal; its new seq.
    pub async fn redrive_dead_letter(&self, seq: Seq) -> Result<Seq, StoreError> {
        self.state.redrive_dead_letter(seq).await
    }

    /// Drops a dead letter for good.
    pub async fn drop_dead_letter(&self, seq: Seq) -> Result<DeadLetter, StoreError> {
        self.state.drop_dead_letter(seq).await
    }

    /// A backfill checkpoint.
    pub fn checkpoint(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.state.get(MapTable::Checkpoints, key)
    }

    /// Saves a backfill checkpoint.
    pub async fn save_checkpoint(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.state.put(MapTable::Checkpoints, key, value).await
    }

    // --- Reads ---

    /// Runs shadow reads and keeps the score of shadow and canary reads.
    pub fn shadow_reads(&self) -> &Arc<ShadowReads> {
        &self.shadow
    }

    /// The state store's last error, for the answer of a write it refused.
    pub(crate) fn last_state_error(&self) -> String {
        self.last_state_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_last_state_error(&self, error: String) {
        *self
            .last_state_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
    }
}
