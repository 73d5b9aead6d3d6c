//! The collection-id map. Chroma gives each collection a random id per store and a client cannot
//! choose it, so the proxy gives clients one stable id per collection and remembers each
//! store's own id for it.
//!
//! The client id is the id of the store where the proxy first saw the collection: the old
//! store's id for everything that existed before the migration, so applications keep the ids
//! they already hold, before and after a cutover. Entries are durable in a
//! [`CollectionMapStore`] (the state's `Collections` table when embedded) and indexed in
//! memory by client id, by store id, and by name.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shift_config::BackendName;
use shift_state::StoreError;

use crate::coord::CollectionMapStore;
use crate::ids::{BackendCollectionId, ClientCollectionId};

/// One collection as the proxy knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionEntry {
    /// The id clients use.
    pub client_id: ClientCollectionId,
    /// The client's tenant and database names (the old store's).
    pub tenant: String,
    pub database: String,
    /// The current name.
    pub name: String,
    /// The old store's id, once known.
    pub old: Option<BackendCollectionId>,
    /// The new store's id, once known.
    pub new: Option<BackendCollectionId>,
    /// The body that creates the collection on a store that lacks it (metadata, schema or
    /// configuration, as the source store reported them).
    pub create: Value,
    /// Deleted on the primary; the entry stays until the delete reached the other store, so
    /// queued writes can still be translated.
    #[serde(default)]
    pub deleted: bool,
}

impl CollectionEntry {
    /// `backend`'s own id of the collection, once known.
    pub fn id_on(&self, backend: BackendName) -> Option<&BackendCollectionId> {
        match backend {
            BackendName::Old => self.old.as_ref(),
            BackendName::New => self.new.as_ref(),
        }
    }

    pub fn set_id(&mut self, backend: BackendName, id: BackendCollectionId) {
        match backend {
            BackendName::Old => self.old = Some(id),
            BackendName::New => self.new = Some(id),
        }
    }
}

type NameKey = (String, String, String);

#[derive(Debug, Default)]
struct Index {
    by_client: HashMap<ClientCollectionId, Arc<CollectionEntry>>,
    by_store: HashMap<(BackendName, BackendCollectionId), ClientCollectionId>,
    by_name: HashMap<NameKey, ClientCollectionId>,
}

impl Index {
    fn insert(&mut self, entry: Arc<CollectionEntry>) {
        if let Some(previous) = self.by_client.remove(&entry.client_id) {
            self.unlink(&previous);
        }
        for backend in [BackendName::Old, BackendName::New] {
            if let Some(id) = entry.id_on(backend) {
                self.by_store
                    .insert((backend, id.clone()), entry.client_id.clone());
            }
        }
        if !entry.deleted {
            self.by_name
                .insert(name_key(&entry), entry.client_id.clone());
        }
        self.by_client.insert(entry.client_id.clone(), entry);
    }

    fn unlink(&mut self, entry: &CollectionEntry) {
        for backend in [BackendName::Old, BackendName::New] {
            if let Some(id) = entry.id_on(backend) {
                let key = (backend, id.clone());
                if self.by_store.get(&key) == Some(&entry.client_id) {
                    self.by_store.remove(&key);
                }
            }
        }
        let key = name_key(entry);
        if self.by_name.get(&key) == Some(&entry.client_id) {
            self.by_name.remove(&key);
        }
    }
}

fn name_key(entry: &CollectionEntry) -> NameKey {
    (
        entry.tenant.clone(),
        entry.database.clone(),
        entry.name.clone(),
    )
}

/// The durable map from client ids to each store's ids.
#[derive(Debug)]
pub struct CollectionIdMap {
    store: Arc<dyn CollectionMapStore>,
    index: RwLock<Index>,
    /// Serializes changes, so the durable table and the index change in the same order.
    writer: tokio::sync::Mutex<()>,
}

impl CollectionIdMap {
    /// Loads every entry from `store`.
    pub async fn load(store: Arc<dyn CollectionMapStore>) -> Result<CollectionIdMap, StoreError> {
        let mut index = Index::default();
        for entry in store.load().await? {
            index.insert(Arc::new(entry));
        }
        Ok(CollectionIdMap {
            store,
            index: RwLock::new(index),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, client_id: &str) -> Option<Arc<CollectionEntry>> {
        self.read().by_client.get(client_id).cloned()
    }

    /// The entry a store's own id belongs to.
    pub fn by_store_id(&self, backend: BackendName, id: &str) -> Option<Arc<CollectionEntry>> {
        let index = self.read();
        let client = index
            .by_store
            .get(&(backend, BackendCollectionId::from(id)))?;
        index.by_client.get(client).cloned()
    }

    /// The live entry of that name.
    pub fn by_name(
        &self,
        tenant: &str,
        database: &str,
        name: &str,
    ) -> Option<Arc<CollectionEntry>> {
        let index = self.read();
        let key = (tenant.to_owned(), database.to_owned(), name.to_owned());
        let client = index.by_name.get(&key)?;
        index.by_client.get(client).cloned()
    }

    /// How many collections the map holds.
    pub fn len(&self) -> usize {
        self.read().by_client.len()
    }

    /// Whether the map holds no collection.
    pub fn is_empty(&self) -> bool {
        self.read().by_client.is_empty()
    }

    /// Every entry (for status pages and tests).
    pub fn entries(&self) -> Vec<Arc<CollectionEntry>> {
        self.read().by_client.values().cloned().collect()
    }

    /// Stores `entry` durably, replacing the one with the same client id.
    pub async fn put(&self, entry: CollectionEntry) -> Result<Arc<CollectionEntry>, StoreError> {
        let _writer = self.writer.lock().await;
        self.put_locked(entry).await
    }

    /// Stores a new collection's `entry` unless its client id is taken (by another replica,
    /// in a cluster); the entry that holds, indexed.
    pub async fn create(&self, entry: CollectionEntry) -> Result<Arc<CollectionEntry>, StoreError> {
        let _writer = self.writer.lock().await;
        let entry = self.store.create_if_absent(entry).await?;
        Ok(self.index(entry))
    }

    async fn put_locked(&self, entry: CollectionEntry) -> Result<Arc<CollectionEntry>, StoreError> {
        self.store.put(&entry).await?;
        Ok(self.index(entry))
    }

    fn index(&self, entry: CollectionEntry) -> Arc<CollectionEntry> {
        let entry = Arc::new(entry);
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(entry.clone());
        entry
    }

    /// Changes the entry of `client_id` with `change`, durably; `None` when there is none.
    pub async fn update(
        &self,
        client_id: &str,
        change: impl FnOnce(&mut CollectionEntry),
    ) -> Result<Option<Arc<CollectionEntry>>, StoreError> {
        let _writer = self.writer.lock().await;
        let Some(current) = self.get(client_id) else {
            return Ok(None);
        };
        let mut entry = (*current).clone();
        change(&mut entry);
        self.put_locked(entry).await.map(Some)
    }

    /// Forgets `client_id`.
    pub async fn remove(&self, client_id: &str) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        self.store.remove(client_id).await?;
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = index.by_client.remove(client_id) {
            index.unlink(&entry);
        }
        Ok(())
    }

    /// Forgets everything (after a reset of both stores).
    pub async fn clear(&self) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        let ids: Vec<ClientCollectionId> = self.read().by_client.keys().cloned().collect();
        for id in &ids {
            self.store.remove(id).await?;
        }
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = Index::default();
        Ok(())
    }
}
