//! Order locks: writes that touch the same records are applied to both stores in the same
//! order. A write holds the locks of its records from before the primary write until its
//! mirror is durably queued (journaled mode) or applied (sync mode).
//!
//! Each collection has a shared/exclusive lock over the whole collection and a fixed set of
//! stripes that record ids hash to. A write by ids takes the collection lock shared and its
//! stripes in ascending order (so two writes never wait on each other in a cycle); a delete by
//! filter or a collection change takes the collection lock exclusively. Unrelated writes run
//! concurrently. [`OrderLocks`] is the in-process [`OrderScope`](crate::coord::OrderScope).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use tokio::sync::{
    Mutex as AsyncMutex, OwnedMutexGuard, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock,
};

use crate::coord::{OrderScope, Pending};

/// Held while a lifecycle change is ordered.
pub type LifecycleGuard = OwnedMutexGuard<()>;

/// Stripes per collection: enough that unrelated batches rarely share one.
const STRIPES: usize = 512;

#[derive(Debug)]
struct CollectionLocks {
    whole: Arc<RwLock<()>>,
    stripes: Vec<Arc<AsyncMutex<()>>>,
}

/// The lock table of every collection, and one lock for tenant, database and collection
/// lifecycle changes.
#[derive(Debug, Default)]
pub struct OrderLocks {
    collections: Mutex<HashMap<String, Arc<CollectionLocks>>>,
    lifecycle: Arc<AsyncMutex<()>>,
}

/// Held while a write is ordered; dropping it lets the next write of the same records go.
#[derive(Debug)]
pub enum OrderGuard {
    Records {
        _stripes: Vec<OwnedMutexGuard<()>>,
        _whole: OwnedRwLockReadGuard<()>,
    },
    Collection {
        _whole: OwnedRwLockWriteGuard<()>,
    },
}

impl OrderLocks {
    fn collection_locks(&self, collection: &str) -> Arc<CollectionLocks> {
        let mut table = self.collections.lock().unwrap_or_else(|e| e.into_inner());
        table
            .entry(collection.to_owned())
            .or_insert_with(|| {
                Arc::new(CollectionLocks {
                    whole: Arc::new(RwLock::new(())),
                    stripes: (0..STRIPES)
                        .map(|_| Arc::new(AsyncMutex::new(())))
                        .collect(),
                })
            })
            .clone()
    }
}

impl OrderScope for OrderLocks {
    fn try_records(&self, collection: &str, ids: &[String]) -> Option<OrderGuard> {
        let locks = self.collection_locks(collection);
        let whole = locks.whole.clone().try_read_owned().ok()?;
        let stripes: BTreeSet<usize> = ids.iter().map(|id| stripe(id)).collect();
        let mut guards = Vec::with_capacity(stripes.len());
        for index in stripes {
            // One held: give back what was taken, and wait in order instead.
            guards.push(locks.stripes[index].clone().try_lock_owned().ok()?);
        }
        Some(OrderGuard::Records {
            _stripes: guards,
            _whole: whole,
        })
    }

    fn wait_records<'a>(
        &'a self,
        collection: &'a str,
        ids: &'a [String],
    ) -> Pending<'a, OrderGuard> {
        Box::pin(async move {
            let locks = self.collection_locks(collection);
            let whole = locks.whole.clone().read_owned().await;
            let stripes: BTreeSet<usize> = ids.iter().map(|id| stripe(id)).collect();
            let mut guards = Vec::with_capacity(stripes.len());
            for index in stripes {
                guards.push(locks.stripes[index].clone().lock_owned().await);
            }
            OrderGuard::Records {
                _stripes: guards,
                _whole: whole,
            }
        })
    }

    fn collection<'a>(&'a self, collection: &'a str) -> Pending<'a, OrderGuard> {
        Box::pin(async move {
            let locks = self.collection_locks(collection);
            OrderGuard::Collection {
                _whole: locks.whole.clone().write_owned().await,
            }
        })
    }

    fn lifecycle(&self) -> Pending<'_, LifecycleGuard> {
        Box::pin(self.lifecycle.clone().lock_owned())
    }
}

fn stripe(id: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    id.hash(&mut hasher);
    (hasher.finish() % STRIPES as u64) as usize
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    /// Polls a future once: its output if it is ready. A lock that is free is taken on the
    /// first poll; one that is held leaves the future pending, with no clock involved.
    pub(crate) async fn poll_once<F: Future>(future: Pin<&mut F>) -> Option<F::Output> {
        let mut future = future;
        std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn same_records_wait_and_other_records_do_not() {
        let locks: &dyn OrderScope = &OrderLocks::default();
        let held = locks.records("c", &["a".into()]).await;
        // An id on another stripe goes at once.
        let other = (0..)
            .map(|i| format!("id{i}"))
            .find(|id| stripe(id) != stripe("a"))
            .unwrap();
        let other = [other];
        let unrelated = std::pin::pin!(locks.records("c", &other));
        assert!(
            poll_once(unrelated).await.is_some(),
            "an unrelated record waited"
        );
        let same: [String; 2] = ["b".into(), "a".into()];
        let mut waiting = Box::pin(locks.records("c", &same));
        assert!(
            poll_once(waiting.as_mut()).await.is_none(),
            "a write of the same record did not wait"
        );
        drop(held);
        assert!(
            poll_once(waiting.as_mut()).await.is_some(),
            "the waiting write did not go once the record was free"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_collection_lock_excludes_record_writes() {
        let locks: &dyn OrderScope = &OrderLocks::default();
        let whole = locks.collection("c").await;
        let a: [String; 1] = ["a".into()];
        let mut waiting = Box::pin(locks.records("c", &a));
        assert!(poll_once(waiting.as_mut()).await.is_none());
        // Another collection is not affected.
        let other = std::pin::pin!(locks.records("d", &a));
        assert!(poll_once(other).await.is_some());
        drop(whole);
        assert!(poll_once(waiting.as_mut()).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_write_holds_off_a_collection_lock() {
        let locks: &dyn OrderScope = &OrderLocks::default();
        let record = locks.records("c", &["a".into()]).await;
        let mut whole = Box::pin(locks.collection("c"));
        assert!(poll_once(whole.as_mut()).await.is_none());
        drop(record);
        assert!(poll_once(whole.as_mut()).await.is_some());
    }
}
