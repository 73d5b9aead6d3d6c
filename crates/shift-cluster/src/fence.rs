//! The lease fence on the journal: a replica whose membership lease ran out takes no write.
//! Every write records its intent before the primary sees it, so refusing the intent refuses
//! the write (503 in Chroma's error shape, nothing applied anywhere); reads are untouched.
//! Writes whose intent was recorded before the deadline finish (their outcome is journaled).

use std::sync::Arc;

use shift_config::BackendName;
use shift_proxy::coord::{StateCall, WriteJournal};
use shift_state::{IntentId, Lag, NewEntry, StoreError};

use crate::clock::LeaseClock;

/// A journal that refuses new writes while the membership lease is not held.
#[derive(Debug)]
pub struct LeaseFencedJournal {
    inner: Arc<dyn WriteJournal>,
    clock: Arc<LeaseClock>,
}

impl LeaseFencedJournal {
    /// Fences `inner` with the lease `clock`.
    pub fn new(inner: Arc<dyn WriteJournal>, clock: Arc<LeaseClock>) -> LeaseFencedJournal {
        LeaseFencedJournal { inner, clock }
    }

    fn check(&self) -> Result<(), StoreError> {
        match self.clock.lapsed_for() {
            None => Ok(()),
            Some(lapsed) => Err(StoreError::Coordination {
                reason: format!(
                    "this replica's membership lease in etcd ran out {} ms ago: it takes no writes until it renews it; other replicas do",
                    lapsed.as_millis()
                ),
            }),
        }
    }
}

impl WriteJournal for LeaseFencedJournal {
    fn record_intent(&self, payload: Vec<u8>) -> StateCall<'_, IntentId> {
        match self.check() {
            Ok(()) => self.inner.record_intent(payload),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }

    fn commit_intent(&self, id: IntentId, entries: Vec<NewEntry>) -> StateCall<'_, ()> {
        self.inner.commit_intent(id, entries)
    }

    fn discard_intent(&self, id: IntentId) -> StateCall<'_, ()> {
        self.inner.discard_intent(id)
    }

    fn settle_intent(&self, id: IntentId, entries: Vec<NewEntry>) -> StateCall<'_, ()> {
        self.inner.settle_intent(id, entries)
    }

    fn discard_intent_deferred(&self, id: IntentId) -> StateCall<'_, ()> {
        self.inner.discard_intent_deferred(id)
    }

    fn append(&self, entries: Vec<NewEntry>) -> StateCall<'_, ()> {
        match self.check() {
            Ok(()) => self.inner.append(entries),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
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
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn intents_are_refused_past_the_lease_deadline_and_taken_after_a_renewal() {
        let dir = tempfile::tempdir().unwrap();
        let state = shift_state::StateStore::open(dir.path()).await.unwrap();
        let clock = Arc::new(LeaseClock::default());
        let journal = LeaseFencedJournal::new(Arc::new(state), clock.clone());
        let refused = journal.record_intent(b"w".to_vec()).await.unwrap_err();
        assert!(refused.is_retryable_unavailable(), "{refused}");
        assert!(refused.to_string().contains("lease"), "{refused}");
        clock.renewed(tokio::time::Instant::now(), Duration::from_secs(3));
        let id = journal.record_intent(b"w".to_vec()).await.unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        // A write past the gate before the deadline still settles.
        journal.discard_intent(id).await.unwrap();
        assert!(journal.record_intent(b"w".to_vec()).await.is_err());
        assert_eq!(journal.pending_intent_count(), 0);
    }
}
