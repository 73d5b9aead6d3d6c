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
//! A collection's table (512 stripes, about 45 KiB) is kept only while it may be in use:
//! every holder and waiter of its locks keeps a reference to it, and a sweep drops the tables
//! nobody references. The sweep runs when the table has doubled since the last one (so its
//! cost is constant per new table, and it never holds more than twice the collections in use,
//! plus [`MIN_SWEEP`]) and when its size is read. A collection written again keeps its table
//! between sweeps, so the way every uncontended write goes allocates nothing; 25,000
//! collections written once no longer keep about 1 GiB, and a table swept away had no lock
//! held or awaited, so a fresh one reorders nothing.

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

/// Tables kept before the first sweep: a sweep of fewer is not worth its scan.
const MIN_SWEEP: usize = 64;

/// One collection's locks. Shared by the table and by every write that holds or waits for
/// one of them; the sweep drops the tables only the table references.
struct CollectionLocks {
    whole: Arc<RwLock<()>>,
    stripes: Vec<Arc<AsyncMutex<()>>>,
}

impl std::fmt::Debug for CollectionLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectionLocks").finish_non_exhaustive()
    }
}

/// The lock tables of the collections in use.
#[derive(Debug)]
struct Tables {
    by_collection: HashMap<String, Arc<CollectionLocks>>,
    /// The next sweep runs when a new table would make this many.
    sweep_at: usize,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            by_collection: HashMap::new(),
            sweep_at: MIN_SWEEP,
        }
    }
}

impl Tables {
    /// Drops the tables no write holds or waits for. Every reference is cloned under the
    /// mutex this runs under, so a count of one (the table's own) cannot grow meanwhile.
    fn sweep(&mut self) {
        self.by_collection
            .retain(|_, locks| Arc::strong_count(locks) > 1);
        self.sweep_at = (self.by_collection.len() * 2).max(MIN_SWEEP);
    }
}

/// The lock table of every collection in use, and one lock for tenant, database and
/// collection lifecycle changes.
#[derive(Debug, Default)]
pub struct OrderLocks {
    tables: Mutex<Tables>,
    lifecycle: Arc<AsyncMutex<()>>,
}

/// Held while a write is ordered; dropping it lets the next write of the same records go.
#[derive(Debug)]
pub enum OrderGuard {
    Records {
        _stripes: Vec<OwnedMutexGuard<()>>,
        _whole: OwnedRwLockReadGuard<()>,
        /// Keeps the table from the sweep.
        _table: TableRef,
    },
    Collection {
        _whole: OwnedRwLockWriteGuard<()>,
        _table: TableRef,
    },
}

/// A write's reference to its collection's lock table: while any is out, the sweep keeps it.
#[derive(Debug)]
pub struct TableRef(Arc<CollectionLocks>);

impl OrderLocks {
    fn collection_locks(&self, collection: &str) -> TableRef {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(locks) = tables.by_collection.get(collection) {
            return TableRef(locks.clone());
        }
        if tables.by_collection.len() >= tables.sweep_at {
            tables.sweep();
        }
        let locks = Arc::new(CollectionLocks {
            whole: Arc::new(RwLock::new(())),
            stripes: (0..STRIPES)
                .map(|_| Arc::new(AsyncMutex::new(())))
                .collect(),
        });
        tables
            .by_collection
            .insert(collection.to_owned(), locks.clone());
        TableRef(locks)
    }

    /// Collections with a lock table once the unused ones are swept: those a write holds or
    /// waits for.
    pub fn tables(&self) -> usize {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.sweep();
        tables.by_collection.len()
    }
}

impl OrderScope for OrderLocks {
    fn try_records(&self, collection: &str, ids: &[String]) -> Option<OrderGuard> {
        let table = self.collection_locks(collection);
        let locks = &table.0;
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
            let locks = &table.0;
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
            let whole = table.0.whole.clone();
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
            let kept = order.tables.lock().unwrap().by_collection.len();
            assert!(
                kept <= MIN_SWEEP,
                "{kept} tables kept for one collection in use"
            );
        }
        assert_eq!(order.tables(), 0);
        // One collection written over and over keeps its one table: no allocation per write.
        let first = locks.records("hot", &["a".into()]).await;
        let table = match &first {
            OrderGuard::Records { _table, .. } => Arc::as_ptr(&_table.0),
            OrderGuard::Collection { .. } => unreachable!(),
        };
        drop(first);
        let again = locks.records("hot", &["a".into()]).await;
        match &again {
            OrderGuard::Records { _table, .. } => assert_eq!(Arc::as_ptr(&_table.0), table),
            OrderGuard::Collection { .. } => unreachable!(),
        }
    }
}
