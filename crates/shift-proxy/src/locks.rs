//! Order locks: writes that touch the same records are applied to both stores in the same
//! order. A write holds the locks of its records from before the primary write until its
//! mirror is durably queued (journaled mode) or applied (sync mode).
//!
//! Each collection has a shared/exclusive lock over the whole collection and a fixed set of
//! stripes that record ids hash to. A write by ids takes the collection lock shared and its
//! stripes in ascending order (so two writes never wait on each other in a cycle); a delete by
//! filter or a collection change takes the collection lock exclusively. Unrelated writes run
//! concurrently.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use tokio::sync::{
    Mutex as AsyncMutex, OwnedMutexGuard, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock,
};

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

    /// Locks the records `ids` of `collection`.
    pub async fn records(&self, collection: &str, ids: &[String]) -> OrderGuard {
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
    }

    /// Locks the whole of `collection`: no record of it is written meanwhile.
    pub async fn collection(&self, collection: &str) -> OrderGuard {
        let locks = self.collection_locks(collection);
        OrderGuard::Collection {
            _whole: locks.whole.clone().write_owned().await,
        }
    }

    /// Serializes lifecycle changes (create, rename, delete, fork; tenants and databases), so
    /// their mirrors are queued in the order the primary applied them.
    pub async fn lifecycle(&self) -> OwnedMutexGuard<()> {
        self.lifecycle.clone().lock_owned().await
    }
}

fn stripe(id: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    id.hash(&mut hasher);
    (hasher.finish() % STRIPES as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn same_records_wait_and_other_records_do_not() {
        let locks = Arc::new(OrderLocks::default());
        let held = locks.records("c", &["a".into()]).await;
        // An id on another stripe goes at once.
        let other = (0..)
            .map(|i| format!("id{i}"))
            .find(|id| stripe(id) != stripe("a"))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), locks.records("c", &[other]))
            .await
            .expect("an unrelated record waited");
        let waiting = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.records("c", &["b".into(), "a".into()]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a write of the same record did not wait"
        );
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_collection_lock_excludes_record_writes() {
        let locks = Arc::new(OrderLocks::default());
        let whole = locks.collection("c").await;
        let waiting = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.records("c", &["a".into()]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        // Another collection is not affected.
        tokio::time::timeout(Duration::from_secs(1), locks.records("d", &["a".into()]))
            .await
            .unwrap();
        drop(whole);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
    }
}
