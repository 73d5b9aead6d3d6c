//! The embedded (single-process) implementations of [`crate::coord`]'s traits: the redb state
//! ([`StateStore`]) as the collection map's durable side and as the journal, and
//! [`Coordination::embedded`], which puts them together with the in-process order locks, gate
//! and topology.

use std::sync::Arc;

use shift_config::BackendName;
use shift_state::{IntentId, JournalEntry, Lag, MapTable, NewEntry, Seq, StateStore, StoreError};

use crate::collections::CollectionEntry;
use crate::coord::{CollectionMapStore, Coordination, ReplayJournal, StateCall, WriteJournal};
use crate::gate::LocalWriteGate;
use crate::locks::OrderLocks;
use crate::topology::{LocalTopology, Topology};

impl CollectionMapStore for StateStore {
    fn load(&self) -> StateCall<'_, Vec<CollectionEntry>> {
        Box::pin(async move {
            let mut entries = Vec::new();
            for (key, bytes) in StateStore::scan(self, MapTable::Collections)? {
                match serde_json::from_slice::<CollectionEntry>(&bytes) {
                    Ok(entry) => entries.push(entry),
                    Err(error) => {
                        tracing::error!(%error, key, "unreadable collection-map entry skipped")
                    }
                }
            }
            Ok(entries)
        })
    }

    /// One process owns the state directory and the map serializes its changes, so a read
    /// before the write is enough.
    fn create_if_absent(&self, entry: CollectionEntry) -> StateCall<'_, CollectionEntry> {
        Box::pin(async move {
            if let Some(bytes) = StateStore::get(self, MapTable::Collections, &entry.client_id)? {
                match serde_json::from_slice::<CollectionEntry>(&bytes) {
                    Ok(existing) if !existing.deleted => return Ok(existing),
                    _ => {}
                }
            }
            StateStore::put(
                self,
                MapTable::Collections,
                &entry.client_id,
                encode(&entry),
            )
            .await?;
            Ok(entry)
        })
    }

    fn put<'a>(&'a self, entry: &'a CollectionEntry) -> StateCall<'a, ()> {
        Box::pin(StateStore::put(
            self,
            MapTable::Collections,
            &entry.client_id,
            encode(entry),
        ))
    }

    fn remove<'a>(&'a self, client_id: &'a str) -> StateCall<'a, ()> {
        Box::pin(StateStore::delete(self, MapTable::Collections, client_id))
    }
}

fn encode(entry: &CollectionEntry) -> Vec<u8> {
    serde_json::to_vec(entry).unwrap_or_default()
}

impl WriteJournal for StateStore {
    fn record_intent(&self, payload: Vec<u8>) -> StateCall<'_, IntentId> {
        Box::pin(StateStore::record_intent(self, payload))
    }

    fn commit_intent(&self, id: IntentId, entries: Vec<NewEntry>) -> StateCall<'_, ()> {
        Box::pin(async move {
            StateStore::commit_intent(self, id, entries)
                .await
                .map(|_| ())
        })
    }

    fn discard_intent(&self, id: IntentId) -> StateCall<'_, ()> {
        Box::pin(StateStore::discard_intent(self, id))
    }

    /// Committed without an fsync; the next durable commit (the next write's intent, the
    /// replay's remove) or the close makes it durable.
    fn settle_intent(&self, id: IntentId, entries: Vec<NewEntry>) -> StateCall<'_, ()> {
        Box::pin(async move {
            StateStore::settle_intent(self, id, entries)
                .await
                .map(|_| ())
        })
    }

    fn discard_intent_deferred(&self, id: IntentId) -> StateCall<'_, ()> {
        Box::pin(StateStore::discard_intent_deferred(self, id))
    }

    fn append(&self, entries: Vec<NewEntry>) -> StateCall<'_, ()> {
        Box::pin(async move { StateStore::append(self, entries).await.map(|_| ()) })
    }

    fn pending_intents(&self) -> Result<Vec<(IntentId, Vec<u8>)>, StoreError> {
        StateStore::pending_intents(self)
    }

    fn pending_intent_count(&self) -> u64 {
        StateStore::pending_intent_count(self)
    }

    fn lag(&self, target: BackendName) -> Lag {
        StateStore::lag(self, target)
    }

    fn dead_letter_count(&self) -> u64 {
        StateStore::dead_letter_count(self)
    }
}

impl Coordination {
    /// Everything in this process: the order locks, the gate and the topology in memory, the
    /// collection map and the journal in the redb `state`.
    pub fn embedded(state: &StateStore, topology: Topology) -> Coordination {
        Coordination {
            order: Arc::new(OrderLocks::default()),
            gate: Arc::new(LocalWriteGate::default()),
            topology: Arc::new(LocalTopology::new(topology)),
            collections: Arc::new(state.clone()),
            journal: Arc::new(state.clone()),
        }
    }
}

impl ReplayJournal for StateStore {
    fn read_bounded(
        &self,
        target: BackendName,
        after: Option<Seq>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        StateStore::read_bounded(self, target, after, max_entries, max_bytes)
    }

    fn read(
        &self,
        target: BackendName,
        after: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        StateStore::read(self, target, after, limit)
    }

    fn remove<'a>(&'a self, target: BackendName, seqs: &'a [Seq]) -> StateCall<'a, ()> {
        Box::pin(StateStore::remove(self, target, seqs))
    }

    fn remove_deferred<'a>(&'a self, target: BackendName, seqs: &'a [Seq]) -> StateCall<'a, ()> {
        Box::pin(StateStore::remove_deferred(self, target, seqs))
    }

    fn park(&self, target: BackendName, seq: Seq, reason: String) -> StateCall<'_, ()> {
        Box::pin(StateStore::park(self, target, seq, reason))
    }

    fn retarget(
        &self,
        from: BackendName,
        moves: Vec<(Seq, Vec<u8>)>,
        to: BackendName,
    ) -> StateCall<'_, Vec<Seq>> {
        Box::pin(StateStore::retarget(self, from, moves, to))
    }

    fn watch_appends(&self, target: BackendName) -> tokio::sync::watch::Receiver<Option<Seq>> {
        StateStore::watch_appends(self, target)
    }

    fn lag(&self, target: BackendName) -> Lag {
        StateStore::lag(self, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collections::CollectionIdMap;
    use crate::ids::ClientCollectionId;

    /// An entry as builds before the id newtypes wrote it: the same bytes still load.
    const OLD_ENTRY: &str = r#"{"client_id":"c1","tenant":"t","database":"d","name":"n","old":"c1","new":"n1","create":{"name":"n"},"deleted":false}"#;

    #[tokio::test]
    async fn a_state_dir_from_before_opens_and_a_live_entry_is_kept_on_create() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateStore::open(dir.path()).await.unwrap();
        StateStore::put(
            &state,
            MapTable::Collections,
            "c1",
            OLD_ENTRY.as_bytes().to_vec(),
        )
        .await
        .unwrap();
        let map = CollectionIdMap::load(Arc::new(state.clone()))
            .await
            .unwrap();
        let entry = map.get("c1").expect("the old entry loads");
        assert_eq!(
            entry.id_on(BackendName::New).map(|id| id.as_str()),
            Some("n1")
        );
        assert_eq!(
            map.by_store_id(BackendName::New, "n1").unwrap().client_id,
            "c1"
        );
        // Written back, it is the same bytes.
        map.put((*entry).clone()).await.unwrap();
        let bytes = StateStore::get(&state, MapTable::Collections, "c1")
            .unwrap()
            .unwrap();
        assert_eq!(String::from_utf8(bytes).unwrap(), OLD_ENTRY);

        // Created again (as a second replica would), the live entry wins.
        let mut other = (*entry).clone();
        other.name = "other".into();
        let kept = map.create(other).await.unwrap();
        assert_eq!(kept.name, "n");
        // A deleted one does not.
        map.update("c1", |e| e.deleted = true).await.unwrap();
        let mut fresh = (*entry).clone();
        fresh.client_id = ClientCollectionId::from("c1");
        fresh.name = "fresh".into();
        assert_eq!(map.create(fresh).await.unwrap().name, "fresh");
    }
}
