//! The write path: every write the primary applies reaches the secondary too.
//!
//! A write takes its order locks, records an intent (durable, before the primary sees the
//! write), sends the write, and then, still under the locks:
//! - `journaled` mode: on the primary's success, turns the intent into a journal entry for the
//!   secondary in the same transaction, before the client gets its answer;
//! - `sync` mode: sends to the secondary at the same time and answers when both answered; a
//!   secondary failure falls back to the journal (or fails the request, as configured).
//!
//! When the primary's outcome is unknown (a timeout, a reset connection, a 5xx), the journal
//! gets a reconciliation of the write's records instead, which copies whatever the primary
//! ended up holding. An intent left behind by a crash is turned into the same reconciliation
//! at start ([`recover_intents`]), so a write in flight at a crash ends up on both stores or on
//! neither.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};
use shift_chroma::error::{kind, ChromaError};
use shift_chroma::payload::{get_response_ids, retain_records, DeleteSelection};
use shift_chroma::{paths, Operation, Route};
use shift_config::{BackendName, MirrorMode, SecondaryFailure};
use shift_store::{IntentId, NewEntry, Store, StoreError};

use crate::apply::{Applier, ApplyError};
use crate::body::{self, ProxyBody};
use crate::collections::CollectionEntry;
use crate::error::{error_response, BackendError, BackendErrorKind, ProxyError};
use crate::headers::strip_hop_by_hop;
use crate::locks::{OrderGuard, OrderLocks};
use crate::metrics::ProxyMetrics;
use crate::mirror::{ids_of, EncodedOp, MirrorOp, RecordKind};
use crate::resolve::{ResolveError, Resolver};
use crate::topology::{SharedTopology, Topology};

/// What the read and write paths share.
#[derive(Debug)]
pub struct Mirror {
    pub topology: SharedTopology,
    pub store: Store,
    pub resolver: Arc<Resolver>,
    pub applier: Arc<Applier>,
    pub locks: Arc<OrderLocks>,
    pub metrics: ProxyMetrics,
    /// Sync mode: what a write does when only the secondary failed.
    pub on_secondary_failure: SecondaryFailure,
    /// Whether `POST /api/v2/reset` is allowed through.
    pub allow_reset: bool,
    /// Closed by a cutover or a pause; every write passes it first.
    pub gate: Arc<crate::gate::WriteGate>,
    /// Runs shadow reads and keeps the score of shadow and canary reads.
    pub shadow: Arc<crate::shadow::ShadowReads>,
}

/// A request already read: what the write path needs of it.
#[derive(Debug)]
pub struct BufferedRequest {
    pub route: Route,
    pub method: Method,
    /// The client's path and query.
    pub path: String,
    /// Headers to forward (hop-by-hop and, unless configured, client credentials removed).
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The primary's answer, and who answered.
pub struct Answered {
    pub response: Response<ProxyBody>,
    pub backend: BackendName,
}

/// How a primary write ended.
enum PrimaryOutcome {
    /// A 2xx: applied.
    Applied(Response<Incoming>),
    /// A 4xx: refused, nothing changed.
    Refused(Response<Incoming>),
    /// A 5xx, a timeout, a reset: it may or may not have been applied.
    Unknown(Result<Response<Incoming>, BackendError>),
}

fn outcome(result: Result<Response<Incoming>, BackendError>) -> PrimaryOutcome {
    match result {
        Ok(r) if r.status().is_success() => PrimaryOutcome::Applied(r),
        Ok(r) if r.status().is_client_error() => PrimaryOutcome::Refused(r),
        other => PrimaryOutcome::Unknown(other),
    }
}

/// Streams a backend's answer to the client.
pub fn relay(response: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body::stream(body))
}

/// A JSON answer built from a backend's head and a rewritten body.
pub fn relay_json(mut parts: http::response::Parts, value: &Value) -> Response<ProxyBody> {
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    Response::from_parts(parts, body::full(bytes))
}

fn store_failure(error: StoreError) -> ProxyError {
    tracing::error!(%error, "the durable state cannot be written");
    ProxyError::State(error.to_string())
}

pub(crate) fn resolve_failure(error: ResolveError) -> ProxyError {
    match error {
        ResolveError::Backend(e) => ProxyError::Backend(e),
        ResolveError::Store(e) => store_failure(e),
    }
}

impl Mirror {
    pub(crate) fn backend_path(
        &self,
        backend: BackendName,
        request: &BufferedRequest,
        collection: Option<&str>,
    ) -> String {
        let params = &request.route.params;
        let ns = params.tenant.as_deref().map(|tenant| {
            self.resolver
                .namespaces
                .to_backend(backend, tenant, params.database.as_deref())
        });
        paths::rewrite(
            &request.path,
            paths::SegmentRewrite {
                tenant: ns.as_ref().map(|n| n.tenant.as_str()),
                database: ns.as_ref().and_then(|n| n.database.as_deref()),
                collection,
            },
        )
    }

    async fn send(
        &self,
        backend: BackendName,
        request: &BufferedRequest,
        path: &str,
        body: Bytes,
    ) -> Result<Response<Incoming>, BackendError> {
        self.resolver
            .backends
            .get(backend)
            .send(request.method.clone(), path, request.headers.clone(), body)
            .await
    }

    fn count(&self, mode: MirrorMode, outcome: &str) {
        let mode = match mode {
            MirrorMode::Journaled => "journaled",
            MirrorMode::Sync => "sync",
        };
        self.metrics
            .mirrored_writes
            .with_label_values(&[mode, outcome])
            .inc();
    }

    /// Queues `op` for the secondary, turning the intent into journal entries.
    async fn journal(
        &self,
        intent: IntentId,
        secondary: BackendName,
        ops: Vec<EncodedOp>,
    ) -> Result<(), ProxyError> {
        let entries = ops
            .into_iter()
            .map(|op| NewEntry {
                target: secondary,
                collection: op.lag_key,
                payload: op.bytes,
            })
            .collect();
        self.store
            .commit_intent(intent, entries)
            .await
            .map(|_| ())
            .map_err(store_failure)
    }

    async fn discard(&self, intent: IntentId) -> Result<(), ProxyError> {
        self.store
            .discard_intent(intent)
            .await
            .map_err(store_failure)
    }

    /// Whether writes to `collection` must queue behind entries already waiting for the
    /// secondary (sync mode goes direct only when nothing of the collection waits).
    fn has_backlog(&self, secondary: BackendName, collection: &str) -> bool {
        self.store
            .lag(secondary)
            .collections
            .get(collection)
            .is_some_and(|lag| lag.entries > 0)
    }

    /// The entry of the collection a record write names, registered if new. `None` when the
    /// segment is not a collection id the stores know: the primary answers that itself.
    async fn collection_for_write(
        &self,
        topology: &Topology,
        request: &BufferedRequest,
    ) -> Result<Option<Arc<CollectionEntry>>, ProxyError> {
        let params = &request.route.params;
        let (Some(tenant), Some(database), Some(segment)) = (
            params.tenant.as_deref(),
            params.database.as_deref(),
            params.collection.as_deref(),
        ) else {
            return Ok(None);
        };
        if uuid::Uuid::parse_str(segment).is_err() {
            return Ok(None);
        }
        let entry = self
            .resolver
            .by_client_id(topology.primary, tenant, database, segment)
            .await
            .map_err(resolve_failure)?;
        Ok(entry.filter(|e| !e.deleted && e.id_on(topology.primary).is_some()))
    }

    /// An add, upsert, update or delete.
    pub async fn record_write(&self, request: BufferedRequest) -> Result<Answered, ProxyError> {
        // Past the gate before reading the topology: a write held by a cutover goes to the
        // new primary.
        let _pass = self.gate.enter().await;
        let topology = self.topology.load_full();
        let (primary, secondary) = (topology.primary, topology.secondary());
        let Some(kind) = RecordKind::from_operation(request.route.operation) else {
            return self.passthrough(&topology, request).await;
        };
        let Some(entry) = self.collection_for_write(&topology, &request).await? else {
            return self.passthrough(&topology, request).await;
        };
        let collection = entry.client_id.clone();
        let primary_id = entry.id_on(primary).unwrap_or_default().to_owned();
        let path = self.backend_path(primary, &request, Some(&primary_id));

        // Lock, and find the records the write touches. A body the proxy cannot read goes to
        // the primary as it is: Chroma answers it, and nothing is mirrored.
        let (guard, mirror_body): (OrderGuard, Value) = match kind {
            RecordKind::Delete => {
                let Ok(selection) = DeleteSelection::parse(&request.body) else {
                    return self.passthrough(&topology, request).await;
                };
                if selection.is_filtered() {
                    let guard = self.locks.collection(&collection).await;
                    match self
                        .resolve_filtered_delete(primary, &entry, &primary_id, &selection)
                        .await?
                    {
                        Ok(ids) => (guard, json!({ "ids": ids })),
                        // The primary refused the filter: pass its answer on.
                        Err(refusal) => {
                            return Ok(Answered {
                                response: refusal,
                                backend: primary,
                            })
                        }
                    }
                } else {
                    let ids = selection.ids.clone().unwrap_or_default();
                    let guard = self.locks.records(&collection, &ids).await;
                    (guard, json!({ "ids": ids }))
                }
            }
            _ => {
                let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
                    return self.passthrough(&topology, request).await;
                };
                let guard = self.locks.records(&collection, &ids_of(&body)).await;
                (guard, body)
            }
        };
        let (mirror_body, primary_body) = if kind == RecordKind::Update {
            self.update_of_existing(primary, &entry, &primary_id, mirror_body, &request.body)
                .await?
        } else {
            (mirror_body, request.body.clone())
        };
        let op = MirrorOp::Records {
            kind,
            collection: collection.clone(),
            body: mirror_body,
        };
        let reconcile = MirrorOp::Reconcile {
            collection: collection.clone(),
            ids: ids_of(match &op {
                MirrorOp::Records { body, .. } => body,
                _ => &Value::Null,
            }),
        };
        // Serialized once: the intent and the journal entry hold the same bytes.
        let encoded = op.encode();
        let intent = self
            .store
            .record_intent(encoded.bytes.clone())
            .await
            .map_err(store_failure)?;

        let direct = topology.mode == MirrorMode::Sync && !self.has_backlog(secondary, &collection);
        let response = if direct {
            let (primary_result, secondary_result) = tokio::join!(
                self.send(primary, &request, &path, primary_body),
                self.applier.apply(secondary, &op),
            );
            self.settle_sync(
                intent,
                secondary,
                primary_result,
                secondary_result,
                encoded,
                reconcile,
            )
            .await?
        } else {
            let result = self.send(primary, &request, &path, primary_body).await;
            self.settle_journaled(topology.mode, intent, secondary, result, encoded, reconcile)
                .await?
        };
        drop(guard);
        Ok(Answered {
            response,
            backend: primary,
        })
    }

    async fn settle_journaled(
        &self,
        mode: MirrorMode,
        intent: IntentId,
        secondary: BackendName,
        result: Result<Response<Incoming>, BackendError>,
        op: EncodedOp,
        reconcile: MirrorOp,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        match outcome(result) {
            PrimaryOutcome::Applied(response) => {
                self.journal(intent, secondary, vec![op]).await?;
                self.count(mode, "journaled");
                Ok(relay(response))
            }
            PrimaryOutcome::Refused(response) => {
                self.discard(intent).await?;
                self.count(mode, "not_mirrored");
                Ok(relay(response))
            }
            PrimaryOutcome::Unknown(result) => {
                self.settle_unknown(mode, intent, secondary, result, reconcile)
                    .await
            }
        }
    }

    /// The primary may or may not have applied the write: queue a reconciliation of its
    /// records, and pass the primary's answer (or its failure) on.
    async fn settle_unknown(
        &self,
        mode: MirrorMode,
        intent: IntentId,
        secondary: BackendName,
        result: Result<Response<Incoming>, BackendError>,
        reconcile: MirrorOp,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        self.journal(intent, secondary, vec![reconcile.encode()])
            .await?;
        self.count(mode, "reconcile_queued");
        match result {
            Ok(response) => Ok(relay(response)),
            Err(error) => Err(ProxyError::Backend(error)),
        }
    }

    async fn settle_sync(
        &self,
        intent: IntentId,
        secondary: BackendName,
        primary: Result<Response<Incoming>, BackendError>,
        secondary_result: Result<(), ApplyError>,
        op: EncodedOp,
        reconcile: MirrorOp,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mode = MirrorMode::Sync;
        match (outcome(primary), secondary_result) {
            (PrimaryOutcome::Applied(response), Ok(())) => {
                self.discard(intent).await?;
                self.count(mode, "applied");
                Ok(relay(response))
            }
            (PrimaryOutcome::Applied(response), Err(error)) => {
                tracing::warn!(%secondary, %error, "sync write failed on the secondary");
                match self.on_secondary_failure {
                    SecondaryFailure::Journal => {
                        self.journal(intent, secondary, vec![op]).await?;
                        self.count(mode, "fallback_journaled");
                        Ok(relay(response))
                    }
                    SecondaryFailure::Fail => {
                        // The primary has it: the journal brings the secondary in line, and the
                        // client, told it failed, may retry (the write is idempotent).
                        self.journal(intent, secondary, vec![reconcile.encode()])
                            .await?;
                        self.count(mode, "failed");
                        Err(ProxyError::Backend(BackendError {
                            backend: secondary,
                            kind: BackendErrorKind::Transport(format!(
                                "the write was applied on the primary but failed on the secondary ({error}); it is queued for the secondary"
                            )),
                        }))
                    }
                }
            }
            (PrimaryOutcome::Refused(response), secondary_result) => {
                if secondary_result.is_ok() {
                    // The secondary took what the primary refused: undo that by copying the
                    // primary's state of those records.
                    self.journal(intent, secondary, vec![reconcile.encode()])
                        .await?;
                    self.count(mode, "reconcile_queued");
                } else {
                    self.discard(intent).await?;
                    self.count(mode, "not_mirrored");
                }
                Ok(relay(response))
            }
            (PrimaryOutcome::Unknown(result), _) => {
                self.settle_unknown(mode, intent, secondary, result, reconcile)
                    .await
            }
        }
    }

    /// An `update` carrying embeddings, restricted to the ids the primary holds, for both
    /// stores: the body for the mirror and the bytes for the primary. Read under the records'
    /// order locks, so no write of those ids interleaves.
    ///
    /// Chroma documents that an update of a missing id is ignored, and its metadata and
    /// document are; but in Chroma 1.5.9 the embedding of such an update comes back later:
    /// after `update(ids=["r"], embeddings=[Y])` of a missing `r`, then `add(ids=["r"],
    /// embeddings=[X])`, any read of the collection followed by any write turns `r`'s embedding
    /// into `Y` (its document and metadata stay the add's). Whether that happens depends on
    /// the reads between the writes, which only the primary sees, so the two stores end up
    /// with different embeddings for `r`. Never sending an update for an id the store lacks
    /// leaves nothing for the bug to bring back. An update naming only missing ids goes on with
    /// no records (Chroma answers it as before, except that it no longer checks the dimension
    /// of embeddings it would ignore). A body the proxy cannot restrict goes as it is.
    async fn update_of_existing(
        &self,
        primary: BackendName,
        entry: &CollectionEntry,
        primary_id: &str,
        body: Value,
        raw: &Bytes,
    ) -> Result<(Value, Bytes), ProxyError> {
        let carries_embeddings = body
            .get("embeddings")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty());
        let ids = ids_of(&body);
        if !carries_embeddings || ids.is_empty() {
            return Ok((body, raw.clone()));
        }
        let ns = self
            .resolver
            .namespaces
            .to_backend(primary, &entry.tenant, Some(&entry.database));
        let path = paths::collection_verb(
            &ns.tenant,
            ns.database.as_deref().unwrap_or(&entry.database),
            primary_id,
            "get",
        );
        let answer = self
            .resolver
            .backends
            .get(primary)
            .call(
                Method::POST,
                &path,
                Some(&json!({"ids": ids, "include": []})),
            )
            .await?;
        let existing: std::collections::HashSet<String> = match answer
            .status
            .is_success()
            .then(|| get_response_ids(&answer.body).ok())
            .flatten()
        {
            Some(found) => found.into_iter().collect(),
            // The primary answers the write itself.
            None => return Ok((body, raw.clone())),
        };
        if ids.iter().all(|id| existing.contains(id)) {
            return Ok((body, raw.clone()));
        }
        match retain_records(&body, |id| existing.contains(id)) {
            Some(restricted) => {
                let bytes = Bytes::from(serde_json::to_vec(&restricted).unwrap_or_default());
                Ok((restricted, bytes))
            }
            None => Ok((body, raw.clone())),
        }
    }

    /// The ids a filtered delete removes, read from the primary under the collection lock; or
    /// the primary's refusal of the filter.
    async fn resolve_filtered_delete(
        &self,
        primary: BackendName,
        entry: &CollectionEntry,
        primary_id: &str,
        selection: &DeleteSelection,
    ) -> Result<Result<Vec<String>, Response<ProxyBody>>, ProxyError> {
        let ns = self
            .resolver
            .namespaces
            .to_backend(primary, &entry.tenant, Some(&entry.database));
        let path = paths::collection_verb(
            &ns.tenant,
            ns.database.as_deref().unwrap_or(&entry.database),
            primary_id,
            "get",
        );
        let answer = self
            .resolver
            .backends
            .get(primary)
            .call(Method::POST, &path, Some(&selection.resolving_get()))
            .await?;
        if !answer.status.is_success() {
            let mut response = Response::new(body::full(answer.body.clone()));
            *response.status_mut() = answer.status;
            *response.headers_mut() = answer.headers;
            strip_hop_by_hop(response.headers_mut());
            response.headers_mut().remove(http::header::CONTENT_LENGTH);
            return Ok(Err(response));
        }
        let ids = get_response_ids(&answer.body).map_err(|e| {
            ProxyError::Backend(BackendError {
                backend: primary,
                kind: BackendErrorKind::Transport(format!("unreadable get answer: {e}")),
            })
        })?;
        Ok(Ok(ids))
    }

    /// Sends the request to the primary as it is (with namespaces renamed), mirroring nothing.
    pub async fn passthrough(
        &self,
        topology: &Topology,
        request: BufferedRequest,
    ) -> Result<Answered, ProxyError> {
        let path = self.backend_path(topology.primary, &request, None);
        let response = self
            .send(topology.primary, &request, &path, request.body.clone())
            .await?;
        Ok(Answered {
            response: relay(response),
            backend: topology.primary,
        })
    }

    /// A tenant, database or collection change.
    pub async fn lifecycle_write(&self, request: BufferedRequest) -> Result<Answered, ProxyError> {
        let _pass = self.gate.enter().await;
        let _lifecycle = self.locks.lifecycle().await;
        let topology = self.topology.load_full();
        let (primary, secondary) = (topology.primary, topology.secondary());
        let params = request.route.params.clone();
        let tenant = params.tenant.clone().unwrap_or_default();
        let database = params.database.clone().unwrap_or_default();
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);

        // The collection the change is about, when it names one.
        let existing = match &params.collection {
            Some(segment) => match self
                .map_segment(&topology, &tenant, &database, segment)
                .await?
            {
                Some(entry) => Some(entry),
                None if request.route.operation != Operation::DeleteCollection => {
                    return self.passthrough(&topology, request).await;
                }
                None => None,
            },
            None => None,
        };
        let _collection_guard = match &existing {
            Some(entry) => Some(self.locks.collection(&entry.client_id).await),
            None => None,
        };
        let segment = existing
            .as_ref()
            .and_then(|e| match request.route.operation {
                // Chroma deletes by name; every other collection change by id.
                Operation::DeleteCollection => Some(e.name.clone()),
                _ => e.id_on(primary).map(str::to_owned),
            });
        let path = self.backend_path(primary, &request, segment.as_deref());

        // What to queue if the outcome on the primary is unknown (and what a crash leaves).
        let intent_op = match request.route.operation {
            Operation::CreateCollection => MirrorOp::ReconcileCollection {
                collection: None,
                tenant: tenant.clone(),
                database: database.clone(),
                name: body["name"].as_str().unwrap_or_default().to_owned(),
            },
            Operation::DeleteCollection
            | Operation::UpdateCollection
            | Operation::ForkCollection => MirrorOp::ReconcileCollection {
                collection: existing.as_ref().map(|e| e.client_id.clone()),
                tenant: tenant.clone(),
                database: database.clone(),
                name: existing
                    .as_ref()
                    .map(|e| e.name.clone())
                    .or_else(|| params.collection.clone())
                    .unwrap_or_default(),
            },
            _ => match self.simple_op(&request, &tenant, &database, &body, existing.as_deref()) {
                Some(op) => op,
                None => return self.passthrough(&topology, request).await,
            },
        };
        let intent = self
            .store
            .record_intent(intent_op.to_bytes())
            .await
            .map_err(store_failure)?;
        let result = self
            .send(primary, &request, &path, request.body.clone())
            .await;
        let response = match outcome(result) {
            PrimaryOutcome::Applied(response) => response,
            PrimaryOutcome::Refused(response) => {
                self.discard(intent).await?;
                return Ok(Answered {
                    response: relay(response),
                    backend: primary,
                });
            }
            PrimaryOutcome::Unknown(result) => {
                self.journal(intent, secondary, vec![intent_op.encode()])
                    .await?;
                return match result {
                    Ok(response) => Ok(Answered {
                        response: relay(response),
                        backend: primary,
                    }),
                    Err(error) => Err(ProxyError::Backend(error)),
                };
            }
        };

        // Applied on the primary: update the map, then mirror.
        let (parts, answer) = response.into_parts();
        let answer = answer
            .collect()
            .await
            .map_err(|e| {
                ProxyError::Backend(BackendError {
                    backend: primary,
                    kind: BackendErrorKind::Transport(e.to_string()),
                })
            })?
            .to_bytes();
        let mut answer_json: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        let op = match request.route.operation {
            Operation::CreateCollection => {
                let entry = self
                    .resolver
                    .register(primary, &answer_json)
                    .await
                    .map_err(resolve_failure)?;
                MirrorOp::EnsureCollection {
                    collection: entry.client_id.clone(),
                }
            }
            Operation::UpdateCollection => {
                let entry = existing
                    .as_ref()
                    .map(|e| e.client_id.clone())
                    .unwrap_or_default();
                if let Some(new_name) = body["new_name"].as_str() {
                    let new_name = new_name.to_owned();
                    self.resolver
                        .map
                        .update(&entry, |e| e.name = new_name)
                        .await
                        .map_err(store_failure)?;
                }
                MirrorOp::UpdateCollection {
                    collection: entry,
                    body: body.clone(),
                }
            }
            Operation::DeleteCollection => {
                let client_id = existing.as_ref().map(|e| e.client_id.clone());
                if let Some(id) = &client_id {
                    self.resolver
                        .map
                        .update(id, |e| e.deleted = true)
                        .await
                        .map_err(store_failure)?;
                }
                MirrorOp::DeleteCollection {
                    collection: client_id,
                    tenant: tenant.clone(),
                    database: database.clone(),
                    name: existing
                        .as_ref()
                        .map(|e| e.name.clone())
                        .or_else(|| params.collection.clone())
                        .unwrap_or_default(),
                }
            }
            Operation::ForkCollection => {
                let fork = self
                    .resolver
                    .register(primary, &answer_json)
                    .await
                    .map_err(resolve_failure)?;
                MirrorOp::ForkCollection {
                    source: existing
                        .as_ref()
                        .map(|e| e.client_id.clone())
                        .unwrap_or_default(),
                    fork: fork.client_id.clone(),
                    new_name: fork.name.clone(),
                }
            }
            _ => intent_op,
        };
        let mirrored = if topology.mode == MirrorMode::Sync
            && !self.has_backlog(secondary, &op.lag_key())
        {
            match self.applier.apply(secondary, &op).await {
                Ok(()) => {
                    self.discard(intent).await?;
                    true
                }
                Err(error) => {
                    tracing::warn!(%secondary, %error, "sync lifecycle write failed on the secondary; queued");
                    false
                }
            }
        } else {
            false
        };
        if !mirrored {
            self.journal(intent, secondary, vec![op.encode()]).await?;
        }
        self.count(
            topology.mode,
            if mirrored { "applied" } else { "journaled" },
        );

        let response = match request.route.operation {
            Operation::CreateCollection | Operation::ForkCollection => {
                self.resolver
                    .rewrite_collections(primary, &mut answer_json)
                    .await
                    .map_err(resolve_failure)?;
                relay_json(parts, &answer_json)
            }
            _ => {
                let mut parts = parts;
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body::full(answer))
            }
        };
        Ok(Answered {
            response,
            backend: primary,
        })
    }

    /// The mirror op of a tenant, database or function change.
    fn simple_op(
        &self,
        request: &BufferedRequest,
        tenant: &str,
        database: &str,
        body: &Value,
        collection: Option<&CollectionEntry>,
    ) -> Option<MirrorOp> {
        let op = match request.route.operation {
            Operation::CreateTenant => MirrorOp::CreateTenant {
                name: body["name"].as_str()?.to_owned(),
            },
            Operation::UpdateTenant => MirrorOp::UpdateTenant {
                tenant: tenant.to_owned(),
                body: body.clone(),
            },
            Operation::CreateDatabase => MirrorOp::CreateDatabase {
                tenant: tenant.to_owned(),
                name: body["name"].as_str()?.to_owned(),
            },
            Operation::DeleteDatabase => MirrorOp::DeleteDatabase {
                tenant: tenant.to_owned(),
                database: database.to_owned(),
            },
            Operation::AttachFunction | Operation::DetachFunction => {
                let collection = collection?;
                let path = request.path.split('?').next().unwrap_or_default();
                let marker = format!(
                    "/{}/",
                    request
                        .route
                        .params
                        .collection
                        .as_deref()
                        .unwrap_or_default()
                );
                let suffix = path.split_once(&marker)?.1.to_owned();
                MirrorOp::Function {
                    collection: collection.client_id.clone(),
                    suffix,
                    body: body.clone(),
                }
            }
            _ => return None,
        };
        Some(op)
    }

    /// The entry a path segment names: a client id, or a name on the routes that take one.
    async fn map_segment(
        &self,
        topology: &Topology,
        tenant: &str,
        database: &str,
        segment: &str,
    ) -> Result<Option<Arc<CollectionEntry>>, ProxyError> {
        if uuid::Uuid::parse_str(segment).is_ok() {
            return self
                .resolver
                .by_client_id(topology.primary, tenant, database, segment)
                .await
                .map(|e| e.filter(|e| !e.deleted))
                .map_err(resolve_failure);
        }
        if let Some(entry) = self.resolver.map.by_name(tenant, database, segment) {
            return Ok(Some(entry));
        }
        match self
            .resolver
            .fetch(topology.primary, tenant, database, segment)
            .await?
        {
            Some(object) => Ok(Some(
                self.resolver
                    .register(topology.primary, &object)
                    .await
                    .map_err(resolve_failure)?,
            )),
            None => Ok(None),
        }
    }

    /// `POST /api/v2/reset`: both stores or neither; refused unless the config allows it.
    pub async fn reset(&self, request: BufferedRequest) -> Result<Answered, ProxyError> {
        if !self.allow_reset {
            return Ok(Answered {
                response: error_response(
                    StatusCode::FORBIDDEN,
                    ChromaError::new(
                        "AuthorizationError",
                        "Reset is disabled at chroma-shift; set [mirror] allow_reset = true to reset both stores",
                    ),
                ),
                backend: self.topology.load().primary,
            });
        }
        let _pass = self.gate.enter().await;
        let _lifecycle = self.locks.lifecycle().await;
        let topology = self.topology.load_full();
        let (primary, secondary) = (topology.primary, topology.secondary());
        // Queued writes would land after the reset: wait for them first.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.store.lag(secondary).entries > 0 {
            if tokio::time::Instant::now() > deadline {
                return Ok(Answered {
                    response: error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ChromaError::new(
                            kind::INTERNAL,
                            "Reset refused: the secondary store still has queued writes; try again when the journal is empty",
                        ),
                    ),
                    backend: primary,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let response = self
            .send(primary, &request, "/api/v2/reset", Bytes::new())
            .await?;
        if response.status().is_success() {
            let answer = self
                .resolver
                .backends
                .get(secondary)
                .call(Method::POST, "/api/v2/reset", None)
                .await?;
            self.resolver.map.clear().await.map_err(store_failure)?;
            if !answer.status.is_success() {
                return Err(ProxyError::Backend(BackendError {
                    backend: secondary,
                    kind: BackendErrorKind::Transport(format!(
                        "the primary was reset, the secondary refused: {} {}",
                        answer.status,
                        answer.text()
                    )),
                }));
            }
        }
        Ok(Answered {
            response: relay(response),
            backend: primary,
        })
    }
}

/// Turns the intents a crash left behind into journal entries that bring the secondary in line
/// with the primary, before any traffic is served.
pub async fn recover_intents(store: &Store, secondary: BackendName) -> Result<usize, StoreError> {
    let pending = store.pending_intents()?;
    let count = pending.len();
    for (id, payload) in pending {
        match MirrorOp::from_bytes(&payload) {
            Ok(op) => {
                let op = op.recovery();
                store
                    .commit_intent(
                        id,
                        vec![NewEntry {
                            target: secondary,
                            collection: op.lag_key(),
                            payload: op.to_bytes(),
                        }],
                    )
                    .await?;
            }
            Err(error) => {
                tracing::error!(intent = ?id, %error, "unreadable intent dropped");
                store.discard_intent(id).await?;
            }
        }
    }
    if count > 0 {
        tracing::warn!(count, %secondary, "recovered writes in flight at the last stop; queued reconciliations");
    }
    Ok(count)
}
