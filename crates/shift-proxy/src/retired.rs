//! The journal as the write path sees it: once a migration is finalized (the topology's
//! `mirror_stopped`), nothing more is queued for the retired secondary. One place for every
//! way an entry reaches the journal (a client write's commit, a reconciliation, a repair), so
//! none of them keeps feeding a store that was retired.

use std::sync::Arc;

use shift_config::BackendName;
use shift_state::{IntentId, Lag, NewEntry, StoreError};

use crate::coord::{StateCall, WriteJournal};
use crate::topology::SharedTopology;

/// A [`WriteJournal`] that drops the entries for a retired secondary.
#[derive(Debug)]
pub struct RetiringJournal {
    inner: Arc<dyn WriteJournal>,
    /// Read at each commit: a write settled after the finalize took effect queues nothing.
    topology: SharedTopology,
}

impl RetiringJournal {
    pub fn new(inner: Arc<dyn WriteJournal>, topology: SharedTopology) -> RetiringJournal {
        RetiringJournal { inner, topology }
    }

    /// What an intent's settlement still journals: `None` when it had entries and all were for
    /// the retired store (the intent is then only dropped).
    fn retained(&self, entries: Vec<NewEntry>) -> Option<Vec<NewEntry>> {
        let had_entries = !entries.is_empty();
        let entries = self.kept(entries);
        (!had_entries || !entries.is_empty()).then_some(entries)
    }

    /// `entries` without those for a retired store.
    fn kept(&self, mut entries: Vec<NewEntry>) -> Vec<NewEntry> {
        let topology = self.topology.current();
        if topology.mirror_stopped {
            let retired = topology.secondary();
            entries.retain(|entry| entry.target != retired);
        }
        entries
    }
}

impl WriteJournal for RetiringJournal {
    fn record_intent(&self, payload: Vec<u8>) -> StateCall<'_, IntentId> {
        self.inner.record_intent(payload)
    }

    fn commit_intent(&self, id: IntentId, entries: Vec<NewEntry>) -> StateCall<'_, ()> {
        match self.retained(entries) {
            Some(entries) => self.inner.commit_intent(id, entries),
            None => self.inner.discard_intent(id),
        }
    }

    fn discard_intent(&self, id: IntentId) -> StateCall<'_, ()> {
        self.inner.discard_intent(id)
    }

    fn settle_intent(&self, id: IntentId, entries: Vec<NewEntry>) -> StateCall<'_, ()> {
        match self.retained(entries) {
            Some(entries) => self.inner.settle_intent(id, entries),
            None => self.inner.discard_intent_deferred(id),
        }
    }

    fn discard_intent_deferred(&self, id: IntentId) -> StateCall<'_, ()> {
        self.inner.discard_intent_deferred(id)
    }

    fn append(&self, entries: Vec<NewEntry>) -> StateCall<'_, ()> {
        self.inner.append(self.kept(entries))
    }

    fn pending_intents(&self) -> Result<Vec<(IntentId, Vec<u8>)>, StoreError> {
        self.inner.pending_intents()
    }

    fn pending_intent_count(&self) -> u64 {
        self.inner.pending_intent_count()
    }

    fn lag(&self, target: BackendName) -> Lag {
        self.inner.lag(target)
    }

    fn dead_letter_count(&self) -> u64 {
        self.inner.dead_letter_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{shared, ReadPolicy, Topology};
    use shift_config::MirrorMode;
    use shift_state::StateStore;

    fn entry(target: BackendName) -> NewEntry {
        NewEntry {
            target,
            collection: "c".to_owned(),
            payload: b"{}".to_vec(),
        }
    }

    #[tokio::test]
    async fn a_finalized_topology_queues_nothing_for_the_retired_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).await.unwrap();
        let mut topology = Topology {
            epoch: 2,
            primary: BackendName::New,
            mode: MirrorMode::Journaled,
            reads: ReadPolicy::default(),
            paused: false,
            mirror_stopped: false,
        };
        let live = shared(topology.clone());
        let journal = RetiringJournal::new(Arc::new(store.clone()), live.clone());
        let intent = journal.record_intent(b"w1".to_vec()).await.unwrap();
        journal
            .commit_intent(intent, vec![entry(BackendName::Old)])
            .await
            .unwrap();
        assert_eq!(
            journal.lag(BackendName::Old).entries,
            1,
            "mirrored while live"
        );

        topology.mirror_stopped = true;
        live.replace(Arc::new(topology));
        let intent = journal.record_intent(b"w2".to_vec()).await.unwrap();
        journal
            .commit_intent(intent, vec![entry(BackendName::Old)])
            .await
            .unwrap();
        // A record write's deferred settlement, as write_task.rs makes it.
        let deferred = journal.record_intent(b"w3".to_vec()).await.unwrap();
        journal
            .settle_intent(deferred, vec![entry(BackendName::Old)])
            .await
            .unwrap();
        journal.append(vec![entry(BackendName::Old)]).await.unwrap();
        assert_eq!(
            journal.lag(BackendName::Old).entries,
            1,
            "nothing new queued"
        );
        assert_eq!(journal.pending_intent_count(), 0, "the intents are settled");
    }
}
