//! What a switch needs of the durable state, narrowed to a trait so the switch's phases can be
//! tested against an in-memory fake with paused time; [`StateStore`] is the one real implementation.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use shift_config::BackendName;
use shift_proxy::topology::Topology;
use shift_state::{JournalEntry, MapTable, Seq, StateStore, StoreError};

/// The key of the topology in the store's `Topology` table.
pub(crate) const TOPOLOGY_KEY: &str = "current";
/// The topology persisted by an earlier run, if any. One that cannot be read stops the start:
/// falling back on the config's primary after a cutover would send writes to the store that
/// stopped being primary.
pub fn restore(store: &StateStore) -> Result<Option<Topology>, StoreError> {
    store
        .get(MapTable::Topology, TOPOLOGY_KEY)?
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|_| StoreError::Corrupt {
                table: "topology",
                key: TOPOLOGY_KEY.to_owned(),
                reason: "not a topology",
            })
        })
        .transpose()
}

/// A store call's future.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What a switch needs of the durable state: the journal's depth and entries, the counts that
/// gate a switch, the move of entries between journals, and the persisted topology. Narrow so
/// the switch's phases can be tested with paused time; [`StateStore`] is the one real implementation.
pub trait SwitchState: Send + Sync + fmt::Debug {
    /// Journal entries waiting for `target`.
    fn waiting(&self, target: BackendName) -> u64;
    /// Dead letters, for either target.
    fn dead_letters(&self) -> u64;
    /// Write intents not yet settled (journaled or discarded).
    fn pending_intents(&self) -> Result<u64, StoreError>;
    /// Up to `limit` entries of `target`'s journal after `after`, in order.
    fn read(
        &self,
        target: BackendName,
        after: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, StoreError>;
    /// Moves entries from `from`'s journal to the end of `to`'s, in one transaction; their new
    /// seqs, in order.
    fn retarget(
        &self,
        from: BackendName,
        moves: Vec<(Seq, Vec<u8>)>,
        to: BackendName,
    ) -> StoreFuture<'_, Vec<Seq>>;
    /// Makes `topology` the one restored at the next start.
    fn persist(&self, topology: &Topology) -> StoreFuture<'_, ()>;
}

impl SwitchState for StateStore {
    fn waiting(&self, target: BackendName) -> u64 {
        self.lag(target).entries
    }

    fn dead_letters(&self) -> u64 {
        self.dead_letter_count()
    }

    fn pending_intents(&self) -> Result<u64, StoreError> {
        Ok(self.pending_intent_count())
    }

    fn read(
        &self,
        target: BackendName,
        after: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        StateStore::read(self, target, after, limit)
    }

    fn retarget(
        &self,
        from: BackendName,
        moves: Vec<(Seq, Vec<u8>)>,
        to: BackendName,
    ) -> StoreFuture<'_, Vec<Seq>> {
        Box::pin(StateStore::retarget(self, from, moves, to))
    }

    fn persist(&self, topology: &Topology) -> StoreFuture<'_, ()> {
        // A tree of plain values always serializes.
        let bytes = serde_json::to_vec(topology).unwrap_or_default();
        Box::pin(async move { self.put(MapTable::Topology, TOPOLOGY_KEY, bytes).await })
    }
}
