//! Finding the map entry of a collection: by the client's id, by a name, or from a collection
//! object a store answered with. Collections the proxy has not seen yet (created before it, or
//! directly on a store) are registered on first sight.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::Value;
use shift_chroma::paths;
use shift_chroma::payload::{create_body_like, CollectionView};
use shift_config::BackendName;

use crate::backend::Backends;
use crate::collections::{CollectionEntry, CollectionIdMap};
use crate::error::BackendError;
use crate::ids::{BackendCollectionId, ClientCollectionId};
use crate::namespace::NamespaceMap;

/// Why a collection could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("the collection map could not be written: {0}")]
    StateStore(#[from] shift_state::StoreError),
}

/// Resolves collections against the map, asking the stores on a miss.
#[derive(Debug)]
pub struct Resolver {
    pub backends: Arc<Backends>,
    pub map: Arc<CollectionIdMap>,
    pub namespaces: NamespaceMap,
}

impl Resolver {
    /// `GET .../collections/{id or name}` on `backend`, in the client's namespace. `None` when
    /// the store does not have it.
    pub async fn fetch(
        &self,
        backend: BackendName,
        tenant: &str,
        database: &str,
        id_or_name: &str,
    ) -> Result<Option<Value>, BackendError> {
        let ns = self.namespaces.to_backend(backend, tenant, Some(database));
        let path = paths::collection(
            &ns.tenant,
            ns.database.as_deref().unwrap_or(database),
            id_or_name,
        );
        self.lookup(backend, &path, id_or_name).await
    }

    /// A collection object at `path`, `None` when the store answers that it has none.
    async fn lookup(
        &self,
        backend: BackendName,
        path: &str,
        id_or_name: &str,
    ) -> Result<Option<Value>, BackendError> {
        let answer = self
            .backends
            .get(backend)
            .call(Method::GET, path, None)
            .await?;
        match answer.status {
            s if s.is_success() => Ok(Some(answer.json())),
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => Ok(None),
            status => Err(BackendError {
                backend,
                kind: crate::error::BackendErrorKind::Transport(format!(
                    "looking up collection {id_or_name} answered {status}: {}",
                    answer.text()
                )),
            }),
        }
    }

    /// `GET .../collections/by-id/{id}` on `backend`, in the client's namespace. `None` when
    /// the store does not have it.
    pub async fn fetch_by_id(
        &self,
        backend: BackendName,
        tenant: &str,
        database: &str,
        id: &str,
    ) -> Result<Option<Value>, BackendError> {
        let ns = self.namespaces.to_backend(backend, tenant, Some(database));
        let path =
            paths::collection_by_id(&ns.tenant, ns.database.as_deref().unwrap_or(database), id);
        self.lookup(backend, &path, id).await
    }

    /// The entry a client's collection id stands for. An id the map does not know is looked up
    /// on `primary`, then on the other store (an id from before a cutover), and registered.
    pub async fn by_client_id(
        &self,
        primary: BackendName,
        tenant: &str,
        database: &str,
        client_id: &str,
    ) -> Result<Option<Arc<CollectionEntry>>, ResolveError> {
        if let Some(entry) = self.map.get(client_id) {
            return Ok(Some(entry));
        }
        for backend in [primary, primary.other()] {
            let found = match self.fetch_by_id(backend, tenant, database, client_id).await {
                Ok(found) => found,
                Err(error) if backend == primary => return Err(error.into()),
                // The other store only helps with ids from before a cutover; when it cannot
                // answer, the request goes on with the id as it is.
                Err(_) => None,
            };
            // Something that is not a collection object is no collection: the request goes
            // on as it is, and the store answers it.
            if let Some(object) =
                found.filter(|o| serde_json::from_value::<CollectionView>(o.clone()).is_ok())
            {
                // The entry may carry another client id when the map knew the collection by
                // name from the other store: it is still the collection meant.
                return Ok(Some(self.register(backend, &object).await?));
            }
        }
        Ok(None)
    }

    /// The entry of a collection object `backend` answered with, registered or linked by name
    /// when new. Its client id is the store's id when nothing else is known of it.
    pub async fn register(
        &self,
        backend: BackendName,
        object: &Value,
    ) -> Result<Arc<CollectionEntry>, ResolveError> {
        let view: CollectionView = match serde_json::from_value(object.clone()) {
            Ok(view) => view,
            Err(e) => {
                return Err(ResolveError::Backend(BackendError {
                    backend,
                    kind: crate::error::BackendErrorKind::Transport(format!(
                        "unexpected collection object: {e}"
                    )),
                }))
            }
        };
        if let Some(entry) = self.map.by_store_id(backend, &view.id) {
            if !entry.deleted {
                return Ok(entry);
            }
        }
        let ns = self
            .namespaces
            .to_client(backend, &view.tenant, Some(&view.database));
        let database = ns.database.unwrap_or_else(|| view.database.clone());
        if let Some(existing) = self.map.by_name(&ns.tenant, &database, &view.name) {
            if existing.id_on(backend).map(|id| id.as_str()) != Some(view.id.as_str()) {
                let id = BackendCollectionId::from(view.id.clone());
                if let Some(linked) = self
                    .map
                    .update(&existing.client_id, |e| e.set_id(backend, id))
                    .await?
                {
                    return Ok(linked);
                }
            } else {
                return Ok(existing);
            }
        }
        let mut entry = CollectionEntry {
            client_id: ClientCollectionId::from(view.id.clone()),
            tenant: ns.tenant,
            database,
            name: view.name.clone(),
            old: None,
            new: None,
            create: create_body_like(object, &view.name),
            deleted: false,
        };
        entry.set_id(backend, BackendCollectionId::from(view.id.clone()));
        Ok(self.map.create(entry).await?)
    }

    /// Rewrites the collection objects of an answer from `backend` (one object or an array of
    /// them) to the client's ids and names, registering those not seen before.
    pub async fn rewrite_collections(
        &self,
        backend: BackendName,
        value: &mut Value,
    ) -> Result<(), ResolveError> {
        match value {
            Value::Array(items) => {
                for item in items {
                    self.rewrite_one(backend, item).await?;
                }
            }
            Value::Object(_) => self.rewrite_one(backend, value).await?,
            _ => {}
        }
        Ok(())
    }

    async fn rewrite_one(
        &self,
        backend: BackendName,
        object: &mut Value,
    ) -> Result<(), ResolveError> {
        if object.get("id").and_then(Value::as_str).is_none() {
            return Ok(());
        }
        let entry = self.register(backend, object).await?;
        if let Some(map) = object.as_object_mut() {
            map.insert("id".into(), Value::from(entry.client_id.as_str()));
            map.insert("tenant".into(), Value::from(entry.tenant.clone()));
            map.insert("database".into(), Value::from(entry.database.clone()));
        }
        Ok(())
    }
}
