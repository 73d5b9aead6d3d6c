//! Order locks: writes that touch the same records are applied to both stores in the same
//! order. A write holds the locks of its records from before the primary write until its
//! mirror is durably queued (journaled mode) or applied (sync mode).
//!
//! Each collection has a shared/exclusive lock over the whole collection and a fixed set of
//! stripes that record ids hash to. A write by ids takes the collection lock shared and its
//! stripes in ascending order (so two writes never wait on each other in a cycle); a delete by
//! filter or a collection change takes the collection lock exclusively. Unrelated writes run
//! concurrently. [`OrderLocks`] is the in-process [`OrderScope`](crate::coord::OrderScope).
//!
//! A collection's table (512 stripes, about 40 KiB) lives only while a write holds or waits
//! for one of its locks: every holder and waiter carries a [`TableRef`], and the last one to
//! let go removes the table. 25,000 collections written once would otherwise keep about
//! 1 GiB; an idle collection keeps nothing, and the next write makes a fresh table (no lock
//! of it is held, so nothing is reordered).

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
    /// Shared with every [`TableRef`], which removes its collection's entry when it is the last.
    collections: Arc<Mutex<HashMap<String, Arc<CollectionLocks>>>>,
    lifecycle: Arc<AsyncMutex<()>>,
}

/// Held while a write is ordered; dropping it lets the next write of the same records go.
/// Fields drop in order: the locks first, then the table reference (which may free the table).
#[derive(Debug)]
pub enum OrderGuard {
    Records {
        _stripes: Vec<OwnedMutexGuard<()>>,
        _whole: OwnedRwLockReadGuard<()>,
        _table: TableRef,
    },
    Collection {
        _whole: OwnedRwLockWriteGuard<()>,
        _table: TableRef,
    },
}

/// A use of one collection's lock table, by a write that holds or waits for its locks. The
/// last use to end removes the table from [`OrderLocks`].
pub struct TableRef {
    owner: Arc<Mutex<HashMap<String, Arc<CollectionLocks>>>>,
    collection: String,
    locks: Option<Arc<CollectionLocks>>,
}

impl Drop for TableRef {
    fn drop(&mut self) {
        let mut table = self.owner.lock().unwrap_or_else(|e| e.into_inner());
        self.locks.take();
        // Every reference is cloned under this mutex, so one left (the table's own) means no
        // write holds or waits for this collection's locks, and none can start meanwhile.
        if table
            .get(&self.collection)
            .is_some_and(|locks| Arc::strong_count(locks) == 1)
        {
            table.remove(&self.collection);
        }
    }
}

impl std::fmt::Debug for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableRef")
            .field("collection", &self.collection)
            .finish_non_exhaustive()
    }
}

impl TableRef {
    fn locks(&self) -> &Arc<CollectionLocks> {
        self.locks.as_ref().expect("held until dropped")
    }
}

impl OrderLocks {
    fn collection_locks(&self, collection: &str) -> TableRef {
        let mut table = self.collections.lock().unwrap_or_else(|e| e.into_inner());
        let locks = table
            .entry(collection.to_owned())
            .or_insert_with(|| {
                Arc::new(CollectionLocks {
                    whole: Arc::new(RwLock::new(())),
                    stripes: (0..STRIPES)
                        .map(|_| Arc::new(AsyncMutex::new(())))
                        .collect(),
                })
            })
            .clone();
        TableRef {
            owner: self.collections.clone(),
            collection: collection.to_owned(),
            locks: Some(locks),
        }
    }

    /// Collections whose lock table exists now: those a write holds or waits for.
    pub fn tables(&self) -> usize {
        self.collections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl OrderScope for OrderLocks {
    fn try_records(&self, collection: &str, ids: &[String]) -> Option<OrderGuard> {
        let table = self.collection_locks(collection);
        let locks = table.locks();
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
            _table: table,
        })
    }

    fn wait_records<'a>(
        &'a self,
        collection: &'a str,
        ids: &'a [String],
    ) -> Pending<'a, OrderGuard> {
        Box::pin(async move {
            let table = self.collection_locks(collection);
            let locks = table.locks();
            let whole = locks.whole.clone().read_owned().await;
            let stripes: BTreeSet<usize> = ids.iter().map(|id| stripe(id)).collect();
            let mut guards = Vec::with_capacity(stripes.len());
            for index in stripes {
                guards.push(locks.stripes[index].clone().lock_owned().await);
            }
            OrderGuard::Records {
                _stripes: guards,
                _whole: whole,
                _table: table,
            }
        })
    }

    fn collection<'a>(&'a self, collection: &'a str) -> Pending<'a, OrderGuard> {
        Box::pin(async move {
            let table = self.collection_locks(collection);
            let whole = table.locks().whole.clone();
            OrderGuard::Collection {
                _whole: whole.write_owned().await,
                _table: table,
            }
        })
    }

    fn lifecycle(&self) -> Pending<'_, LifecycleGuard> {
        Box::pin(self.lifecycle.clone().lock_owned())
    }

    fn tracked_collections(&self) -> usize {
        self.tables()
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

    #[tokio::test(start_paused = true)]
    async fn a_table_lives_while_a_write_holds_or_waits_and_no_longer() {
        let order = OrderLocks::default();
        let locks: &dyn OrderScope = &order;
        let a: [String; 1] = ["a".into()];
        let held = locks.records("c", &a).await;
        let whole = locks.collection("d").await;
        assert_eq!(order.tables(), 2);
        // A waiter keeps the table too; it was not made twice.
        let mut waiting = Box::pin(locks.records("c", &a));
        assert!(poll_once(waiting.as_mut()).await.is_none());
        drop(held);
        assert_eq!(order.tables(), 2, "the waiter's table went away");
        let second = poll_once(waiting.as_mut())
            .await
            .expect("the waiter did not get the freed record");
        drop(waiting);
        drop(second);
        drop(whole);
        assert_eq!(order.tables(), 0, "an idle collection kept its lock table");
        // A refused try and a cancelled wait leave nothing behind either.
        let held = locks.records("c", &a).await;
        assert!(locks.try_records("c", &a).is_none());
        let mut cancelled = Box::pin(locks.collection("c"));
        assert!(poll_once(cancelled.as_mut()).await.is_none());
        drop(cancelled);
        assert_eq!(order.tables(), 1);
        drop(held);
        assert_eq!(locks.tracked_collections(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn many_collections_written_once_keep_no_tables() {
        let order = OrderLocks::default();
        let locks: &dyn OrderScope = &order;
        for i in 0..10_000 {
            let guard = locks.records(&format!("c{i}"), &[format!("id{i}")]).await;
            drop(guard);
        }
        assert_eq!(order.tables(), 0);
    }
}
