//! Applying a [`MirrorOp`] to one store: the replay worker and the sync write path share it, so
//! a write reaches the secondary the same way whichever path carries it.
//!
//! Every op is safe to apply more than once: record writes carry fixed ids, creates use
//! `get_or_create` or accept "already exists", deletes accept "not found". That is what makes
//! retries and the replay after a crash correct. How a store's answer sorts is in [`outcome`].

mod outcome;

use outcome::{accept, check, check_scoped};
pub use outcome::{classify, ApplyError, HaltCause, NotFound};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use serde_json::{json, Value};
use shift_chroma::paths;
use shift_chroma::payload::split_record_body;
use shift_config::BackendName;

use crate::auth::Caller;
use crate::backend::Answer;
use crate::collections::CollectionEntry;
use crate::coord::OrderScope;
use crate::ids::BackendCollectionId;
use crate::mirror::{MirrorOp, RecordKind};
use crate::replay::RawBatch;
use crate::resolve::Resolver;

tokio::task_local! {
    /// On whose behalf the op [`Applier::apply`] is applying reaches the stores. Scoped to
    /// that one call, so the op's many helpers need not each carry it; `call` reads it.
    static CALLER: Caller;
}

/// Records per request when a store does not say its `max_batch_size`.
const FALLBACK_BATCH: usize = 1000;

/// Applies mirror ops to a store.
#[derive(Debug)]
pub struct Applier {
    pub resolver: Arc<Resolver>,
    pub locks: Arc<dyn OrderScope>,
    /// Most records per request set in the config; 0 leaves it to each store.
    configured_batch: usize,
    /// Each store's `max_batch_size`, asked once.
    batch_sizes: Mutex<HashMap<BackendName, usize>>,
}

impl Applier {
    pub fn new(
        resolver: Arc<Resolver>,
        locks: Arc<dyn OrderScope>,
        configured_batch: usize,
    ) -> Applier {
        Applier {
            resolver,
            locks,
            configured_batch,
            batch_sizes: Mutex::new(HashMap::new()),
        }
    }

    /// The most records `target` takes in one request.
    pub async fn max_batch(&self, target: BackendName) -> usize {
        let known = self
            .batch_sizes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&target)
            .copied();
        let store_limit = match known {
            Some(size) => size,
            None => {
                let asked = self
                    .resolver
                    .backends
                    .get(target)
                    .call(Method::GET, "/api/v2/pre-flight-checks", None)
                    .await
                    .ok()
                    .filter(|a| a.status.is_success())
                    .and_then(|a| a.json()["max_batch_size"].as_u64())
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|n| *n > 0);
                match asked {
                    Some(size) => {
                        self.batch_sizes
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(target, size);
                        size
                    }
                    None => FALLBACK_BATCH,
                }
            }
        };
        match self.configured_batch {
            0 => store_limit,
            n => n.min(store_limit),
        }
    }

    fn entry(&self, collection: &str) -> Result<Arc<CollectionEntry>, ApplyError> {
        self.resolver.map.get(collection).ok_or_else(|| {
            ApplyError::refused(format!(
                "collection {collection} is not in the collection map"
            ))
        })
    }

    /// The target's tenant and database for a client's.
    /// The target's tenant, database and id for the client's `collection`, created on the
    /// target first when it is missing there.
    async fn locate(
        &self,
        target: BackendName,
        collection: &str,
    ) -> Result<(String, String, BackendCollectionId), ApplyError> {
        let entry = self.entry(collection)?;
        let id = self.ensure(target, &entry).await?;
        let (tenant, database) = self.namespace(target, &entry.tenant, &entry.database);
        Ok((tenant, database, id))
    }

    fn namespace(&self, target: BackendName, tenant: &str, database: &str) -> (String, String) {
        let ns = self
            .resolver
            .namespaces
            .to_backend(target, tenant, Some(database));
        (
            ns.tenant,
            ns.database.unwrap_or_else(|| database.to_owned()),
        )
    }

    /// Sends a request of the op being applied, as its caller (the operator outside
    /// [`Applier::apply`]: a collection created for the backfill).
    async fn call(
        &self,
        target: BackendName,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ApplyError> {
        let caller = CALLER.try_with(Caller::clone).unwrap_or_default();
        Ok(self
            .resolver
            .backends
            .get(target)
            .call_as(&caller, method, path, body)
            .await?)
    }

    /// The target's id of the collection, creating the collection there if it lacks it.
    pub async fn ensure(
        &self,
        target: BackendName,
        entry: &CollectionEntry,
    ) -> Result<BackendCollectionId, ApplyError> {
        if let Some(id) = entry.id_on(target) {
            return Ok(id.clone());
        }
        let (tenant, database) = self.namespace(target, &entry.tenant, &entry.database);
        let mut body = entry.create.clone();
        body["name"] = Value::from(entry.name.clone());
        body["get_or_create"] = Value::Bool(true);
        let path = paths::collections(&tenant, &database);
        let mut answer = self.call(target, Method::POST, &path, Some(&body)).await?;
        // Chroma answers a missing tenant or database with 404 or with 400 "... does not exist".
        let missing_namespace = answer.status == StatusCode::NOT_FOUND
            || (answer.status == StatusCode::BAD_REQUEST
                && answer.text().contains("does not exist"));
        if missing_namespace {
            // A renamed namespace may not exist on the target yet: create it, then try again.
            self.create_namespace(target, &tenant, &database).await?;
            answer = self.call(target, Method::POST, &path, Some(&body)).await?;
        }
        let answer = check(target, "create collection", answer)?;
        let id = answer.json()["id"]
            .as_str()
            .map(BackendCollectionId::from)
            .ok_or_else(|| ApplyError::refused("create collection answered without an id"))?;
        let stored = id.clone();
        self.resolver
            .map
            .update(&entry.client_id, |e| e.set_id(target, stored))
            .await
            .map_err(ApplyError::retry_later)?;
        Ok(id)
    }

    async fn create_namespace(
        &self,
        target: BackendName,
        tenant: &str,
        database: &str,
    ) -> Result<(), ApplyError> {
        self.create_tenant(target, tenant).await?;
        self.create_database(target, tenant, database).await
    }

    /// Creates a tenant (target's names); one that exists already is fine.
    async fn create_tenant(&self, target: BackendName, tenant: &str) -> Result<(), ApplyError> {
        let body = json!({ "name": tenant });
        let answer = self
            .call(target, Method::POST, &paths::tenants(), Some(&body))
            .await?;
        accept(target, "create tenant", answer, StatusCode::CONFLICT)
    }

    /// Creates a database (target's names); one that exists already is fine.
    async fn create_database(
        &self,
        target: BackendName,
        tenant: &str,
        database: &str,
    ) -> Result<(), ApplyError> {
        let (path, body) = (paths::databases(tenant), json!({ "name": database }));
        let answer = self.call(target, Method::POST, &path, Some(&body)).await?;
        accept(target, "create database", answer, StatusCode::CONFLICT)
    }

    /// Applies `op` to `target` on behalf of `caller`: every request it makes to either
    /// store (the target, and the source a reconciliation reads) carries `caller`'s
    /// credential.
    ///
    /// An op of an identity the config no longer has is refused (the replay parks it as a dead
    /// letter naming the identity): it would otherwise reach the store with a credential the
    /// client never had, the operator's.
    pub async fn apply(
        &self,
        target: BackendName,
        op: &MirrorOp,
        caller: &Caller,
    ) -> Result<(), ApplyError> {
        self.check_identity(target, caller)?;
        CALLER
            .scope(caller.clone(), self.apply_op(target, op))
            .await
    }

    /// Refuses a caller whose identity the config no longer has (see [`Applier::apply`]).
    fn check_identity(&self, target: BackendName, caller: &Caller) -> Result<(), ApplyError> {
        match caller.identity() {
            Some(name) if !self.resolver.backends.get(target).knows_identity(name) => {
                Err(ApplyError::refused(gone_identity(name)))
            }
            _ => Ok(()),
        }
    }

    /// Applies adds or upserts merged at the byte level: their body is sent as it is, within
    /// the target's batch size (the replay made sure), as [`Applier::apply`] would send them.
    pub async fn apply_raw(
        &self,
        target: BackendName,
        raw: &RawBatch,
        caller: &Caller,
    ) -> Result<(), ApplyError> {
        self.check_identity(target, caller)?;
        let send = async {
            let (tenant, database, id) = self.locate(target, &raw.collection).await?;
            let path = paths::collection_verb(&tenant, &database, &id, raw.kind.verb());
            let body = raw.body.clone();
            let answer = self
                .resolver
                .backends
                .get(target)
                .call_as_json(caller, Method::POST, &path, body)
                .await?;
            check(target, raw.kind.verb(), answer).map(|_| ())
        };
        CALLER.scope(caller.clone(), send).await
    }

    async fn apply_op(&self, target: BackendName, op: &MirrorOp) -> Result<(), ApplyError> {
        match op {
            MirrorOp::Records {
                kind,
                collection,
                body,
            } => self.records(target, *kind, collection, body).await,
            MirrorOp::Reconcile { collection, ids } => {
                self.reconcile(target, collection, ids).await
            }
            MirrorOp::EnsureCollection { collection } => {
                let entry = self.entry(collection)?;
                self.ensure(target, &entry).await.map(|_| ())
            }
            MirrorOp::UpdateCollection { collection, body } => {
                let (tenant, database, id) = self.locate(target, collection).await?;
                let answer = self
                    .call(
                        target,
                        Method::PUT,
                        &paths::collection(&tenant, &database, &id),
                        Some(body),
                    )
                    .await?;
                check(target, "update collection", answer).map(|_| ())
            }
            MirrorOp::DeleteCollection {
                collection,
                tenant,
                database,
                name,
            }
            | MirrorOp::ReconcileCollection {
                collection,
                tenant,
                database,
                name,
            } => {
                let named = NamedCollection {
                    client_id: collection.as_deref(),
                    tenant,
                    database,
                    name,
                };
                if matches!(op, MirrorOp::DeleteCollection { .. }) {
                    self.delete_collection(target, named).await
                } else {
                    self.reconcile_collection(target, named).await
                }
            }
            MirrorOp::ForkCollection {
                source,
                fork,
                new_name,
            } => {
                let (tenant, database, id) = self.locate(target, source).await?;
                let path = paths::collection_verb(&tenant, &database, &id, "fork");
                let answer = self
                    .call(
                        target,
                        Method::POST,
                        &path,
                        Some(&json!({"new_name": new_name})),
                    )
                    .await?;
                let answer = check(target, "fork collection", answer)?;
                if let Some(fork_id) = answer.json()["id"].as_str() {
                    let fork_id = BackendCollectionId::from(fork_id);
                    self.resolver
                        .map
                        .update(fork, |e| e.set_id(target, fork_id))
                        .await
                        .map_err(ApplyError::retry_later)?;
                }
                Ok(())
            }
            MirrorOp::CreateTenant { name } => {
                let ns = self.resolver.namespaces.to_backend(target, name, None);
                self.create_tenant(target, &ns.tenant).await
            }
            MirrorOp::UpdateTenant { tenant, body } => {
                let ns = self.resolver.namespaces.to_backend(target, tenant, None);
                let path = paths::tenant(&ns.tenant);
                let answer = self.call(target, Method::PATCH, &path, Some(body)).await?;
                check(target, "update tenant", answer).map(|_| ())
            }
            MirrorOp::CreateDatabase { tenant, name } => {
                let (tenant, database) = self.namespace(target, tenant, name);
                self.create_database(target, &tenant, &database).await
            }
            MirrorOp::DeleteDatabase { tenant, database } => {
                let (tenant, database) = self.namespace(target, tenant, database);
                let path = paths::database(&tenant, &database);
                let answer = self.call(target, Method::DELETE, &path, None).await?;
                accept(target, "delete database", answer, StatusCode::NOT_FOUND)
            }
            MirrorOp::ForgetMissing {
                collection,
                body,
                ids,
            } => {
                let (tenant, database, id) = self.locate(target, collection).await?;
                for (verb, body) in [("update", body.clone()), ("delete", json!({ "ids": ids }))] {
                    let path = paths::collection_verb(&tenant, &database, &id, verb);
                    let answer = self.call(target, Method::POST, &path, Some(&body)).await?;
                    check(target, verb, answer)?;
                }
                Ok(())
            }
            MirrorOp::Function {
                collection,
                suffix,
                body,
            } => {
                let (tenant, database, id) = self.locate(target, collection).await?;
                let path = format!("{}/{suffix}", paths::collection(&tenant, &database, &id));
                let answer = self.call(target, Method::POST, &path, Some(body)).await?;
                // A 404 here names the function, not the collection (just ensured).
                check_scoped(target, "function", answer, NotFound::Refused).map(|_| ())
            }
        }
    }

    async fn records(
        &self,
        target: BackendName,
        kind: RecordKind,
        collection: &str,
        body: &Value,
    ) -> Result<(), ApplyError> {
        // A write naming no record changes nothing; Chroma refuses it (a delete with empty
        // `ids` is "Either ids or where must be specified"), which would park a harmless
        // entry as a dead letter. A delete by filter that matched nothing resolves to this.
        if body
            .get("ids")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            return Ok(());
        }
        let (tenant, database, id) = self.locate(target, collection).await?;
        let path = paths::collection_verb(&tenant, &database, &id, kind.verb());
        let max = self.max_batch(target).await;
        for part in split_record_body(body, max) {
            let part = if kind == RecordKind::Update {
                match self
                    .update_of_existing(target, &tenant, &database, &id, part)
                    .await?
                {
                    Some(part) => part,
                    None => continue,
                }
            } else {
                part
            };
            let answer = self.call(target, Method::POST, &path, Some(&part)).await?;
            check(target, kind.verb(), answer)?;
        }
        Ok(())
    }

    /// An update that carries embeddings, restricted to the ids the target holds (`None` when
    /// it holds none of them). Chroma 1.5.9 keeps the embedding of an update of a missing id
    /// and brings it back when the id is added later (see the write path's note on updates);
    /// on the secondary that is common before the backfill has copied the old records, and the
    /// backfill's copy would then be overwritten by the stale embedding.
    async fn update_of_existing(
        &self,
        target: BackendName,
        tenant: &str,
        database: &str,
        id: &str,
        part: Value,
    ) -> Result<Option<Value>, ApplyError> {
        let carries_embeddings = part
            .get("embeddings")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty());
        if !carries_embeddings {
            return Ok(Some(part));
        }
        let ids = crate::mirror::ids_of(&part);
        let path = paths::collection_verb(tenant, database, id, "get");
        let answer = self
            .call(
                target,
                Method::POST,
                &path,
                Some(&json!({"ids": ids, "include": []})),
            )
            .await?;
        let answer = check(target, "get", answer)?;
        let existing: HashSet<String> = shift_chroma::payload::get_response_ids(&answer.body)
            .map_err(|e| ApplyError::refused(e.to_string()))?
            .into_iter()
            .collect();
        if existing.is_empty() {
            return Ok(None);
        }
        if ids.iter().all(|i| existing.contains(i)) {
            return Ok(Some(part));
        }
        Ok(shift_chroma::payload::retain_records(&part, |i| existing.contains(i)).or(Some(part)))
    }

    /// Copies what the source holds for `ids` to the target, and deletes there what the source
    /// does not hold, under the records' order locks so no live write interleaves.
    async fn reconcile(
        &self,
        target: BackendName,
        collection: &str,
        ids: &[String],
    ) -> Result<(), ApplyError> {
        let Some(entry) = self.resolver.map.get(collection) else {
            tracing::warn!(
                collection,
                "reconcile of a collection the map does not know; nothing to do"
            );
            return Ok(());
        };
        let _order = self.locks.records(collection, ids).await;
        let source = target.other();
        let max = self
            .max_batch(target)
            .await
            .min(self.max_batch(source).await);
        let target_id = self.ensure(target, &entry).await?;
        let (t_tenant, t_database) = self.namespace(target, &entry.tenant, &entry.database);
        for chunk in ids.chunks(max.max(1)) {
            let found = match entry.id_on(source) {
                Some(source_id) => {
                    let (s_tenant, s_database) =
                        self.namespace(source, &entry.tenant, &entry.database);
                    let path = paths::collection_verb(&s_tenant, &s_database, source_id, "get");
                    let query = json!({"ids": chunk, "include": ["embeddings", "metadatas", "documents", "uris"]});
                    let answer = self.call(source, Method::POST, &path, Some(&query)).await?;
                    // Chroma answers a missing tenant or database with 404 or with 400 "... does not exist".
                    let missing_namespace = answer.status == StatusCode::NOT_FOUND
                        || (answer.status == StatusCode::BAD_REQUEST
                            && answer.text().contains("does not exist"));
                    if missing_namespace {
                        Value::Null
                    } else {
                        check(source, "get", answer)?.json()
                    }
                }
                None => Value::Null,
            };
            let found_ids: HashSet<&str> = found["ids"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if !found_ids.is_empty() {
                let mut upsert = serde_json::Map::new();
                for field in ["ids", "embeddings", "metadatas", "documents", "uris"] {
                    if let Some(values) = found.get(field).filter(|v| v.is_array()) {
                        upsert.insert(field.to_owned(), values.clone());
                    }
                }
                let path = paths::collection_verb(&t_tenant, &t_database, &target_id, "upsert");
                let answer = self
                    .call(target, Method::POST, &path, Some(&Value::Object(upsert)))
                    .await?;
                check(target, "upsert", answer)?;
            }
            let missing: Vec<&String> = chunk
                .iter()
                .filter(|id| !found_ids.contains(id.as_str()))
                .collect();
            if !missing.is_empty() {
                let path = paths::collection_verb(&t_tenant, &t_database, &target_id, "delete");
                let answer = self
                    .call(target, Method::POST, &path, Some(&json!({"ids": missing})))
                    .await?;
                check(target, "delete", answer)?;
            }
        }
        Ok(())
    }

    async fn delete_collection(
        &self,
        target: BackendName,
        NamedCollection {
            client_id,
            tenant,
            database,
            name,
        }: NamedCollection<'_>,
    ) -> Result<(), ApplyError> {
        let (t_tenant, t_database) = self.namespace(target, tenant, database);
        let answer = self
            .call(
                target,
                Method::DELETE,
                &paths::collection(&t_tenant, &t_database, name),
                None,
            )
            .await?;
        accept(target, "delete collection", answer, StatusCode::NOT_FOUND)?;
        if let Some(client_id) = client_id {
            if self.resolver.map.get(client_id).is_some_and(|e| e.deleted) {
                self.resolver
                    .map
                    .remove(client_id)
                    .await
                    .map_err(ApplyError::retry_later)?;
            }
        }
        Ok(())
    }

    /// Makes the target's copy of a collection match the source's: present with the same name
    /// and metadata, or absent.
    async fn reconcile_collection(
        &self,
        target: BackendName,
        named: NamedCollection<'_>,
    ) -> Result<(), ApplyError> {
        let source = target.other();
        let known = named.client_id.and_then(|c| self.resolver.map.get(c));
        let (tenant, database, name) = match &known {
            Some(e) => (e.tenant.clone(), e.database.clone(), e.name.clone()),
            None => (
                named.tenant.to_owned(),
                named.database.to_owned(),
                named.name.to_owned(),
            ),
        };
        // By id when the source's id is known: `.../collections/{x}` takes `x` as a name, and a
        // UUID-shaped name is found nowhere, which would read as "deleted".
        let found = match known.as_ref().and_then(|e| e.id_on(source)) {
            Some(id) => {
                self.resolver
                    .fetch_by_id(source, &tenant, &database, id)
                    .await?
            }
            None => {
                self.resolver
                    .fetch(source, &tenant, &database, &name)
                    .await?
            }
        };
        match found {
            Some(object) => {
                let entry = self.resolver.register(source, &object).await?;
                let id = self.ensure(target, &entry).await?;
                let (t_tenant, t_database) = self.namespace(target, &tenant, &database);
                let mut change = json!({"new_name": object["name"]});
                if object["metadata"].is_object() {
                    change["new_metadata"] = object["metadata"].clone();
                }
                let answer = self
                    .call(
                        target,
                        Method::PUT,
                        &paths::collection(&t_tenant, &t_database, &id),
                        Some(&change),
                    )
                    .await?;
                check(target, "update collection", answer).map(|_| ())
            }
            None => {
                let gone = NamedCollection {
                    tenant: &tenant,
                    database: &database,
                    name: &name,
                    ..named
                };
                self.delete_collection(target, gone).await
            }
        }
    }
}

/// What the replay needs from a store: apply an op, and how many records one request may
/// carry. [`Applier`] is the real one; the replay's tests script a fake.
pub trait ApplyTarget: Send + Sync + 'static {
    fn apply(
        &self,
        target: BackendName,
        op: &MirrorOp,
        caller: &Caller,
    ) -> impl std::future::Future<Output = Result<(), ApplyError>> + Send;
    fn max_batch(&self, target: BackendName) -> impl std::future::Future<Output = usize> + Send;
    /// Applies adds or upserts merged at the byte level; by default as the op they decode to.
    fn apply_raw(
        &self,
        target: BackendName,
        raw: &RawBatch,
        caller: &Caller,
    ) -> impl std::future::Future<Output = Result<(), ApplyError>> + Send {
        async move {
            let op = MirrorOp::Records {
                kind: raw.kind,
                collection: raw.collection.clone(),
                body: serde_json::from_slice(&raw.body)
                    .map_err(|e| ApplyError::refused(format!("unreadable merged body: {e}")))?,
            };
            self.apply(target, &op, caller).await
        }
    }
}

impl ApplyTarget for Applier {
    fn apply(
        &self,
        target: BackendName,
        op: &MirrorOp,
        caller: &Caller,
    ) -> impl std::future::Future<Output = Result<(), ApplyError>> + Send {
        Applier::apply(self, target, op, caller)
    }

    fn max_batch(&self, target: BackendName) -> impl std::future::Future<Output = usize> + Send {
        Applier::max_batch(self, target)
    }

    fn apply_raw(
        &self,
        target: BackendName,
        raw: &RawBatch,
        caller: &Caller,
    ) -> impl std::future::Future<Output = Result<(), ApplyError>> + Send {
        Applier::apply_raw(self, target, raw, caller)
    }
}

/// Why an op of the identity `name`, gone from the config, is not applied.
pub fn gone_identity(name: &str) -> String {
    format!(
        "written by the client identity `{name}`, which is no longer in \
         server.client_auth.identities: not applied with another credential; add the identity \
         back and retry the dead letter, or apply it by hand"
    )
}

/// A collection as a lifecycle entry names it: the client's id when known, and its names.
#[derive(Clone, Copy)]
struct NamedCollection<'a> {
    client_id: Option<&'a str>,
    tenant: &'a str,
    database: &'a str,
    name: &'a str,
}
