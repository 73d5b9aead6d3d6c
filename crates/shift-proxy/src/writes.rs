//! The write path: every write the primary applies reaches the secondary too.
//!
//! A write takes its order locks and then hands itself to a task of its own, which records an
//! intent (durable, before the primary sees the write), sends the write, and settles it by the
//! decision table in [`crate::settle`]: a journal entry for the secondary (in journaled mode,
//! in the same transaction that drops the intent, before the client gets its answer), a
//! reconciliation, or nothing. In sync mode the secondary gets the write at the same time.
//!
//! The task, not the client's connection, owns everything from the intent on: a client that
//! hangs up, an HTTP/2 stream reset or the end of the shutdown grace cannot drop a write
//! between the primary's answer and the journal. When the primary's outcome is unknown (a
//! timeout, a connection lost mid-request, a 5xx), the records stay locked for
//! `unknown_outcome_grace` and then the journal gets a reconciliation of them, which copies
//! whatever the primary ended up holding. An intent left behind by a crash is turned into the
//! same reconciliation at start ([`recover_intents`]); one left behind by a state store that
//! could not write, once it can ([`settle_orphaned_intents`]). So a write in flight at a crash
//! ends up on both stores or on neither.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

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
use tokio::sync::{oneshot, watch, OwnedMutexGuard};

use crate::apply::{Applier, ApplyError};
use crate::body::{self, ProxyBody};
use crate::collections::CollectionEntry;
use crate::error::{
    error_response, BackendError, BackendErrorKind, ClientError, ProxyError, StateFailure,
};
use crate::failpoints::failpoint;
use crate::gate::WritePass;
use crate::headers::strip_hop_by_hop;
use crate::locks::{OrderGuard, OrderLocks};
use crate::metrics::ProxyMetrics;
use crate::mirror::{ids_of, EncodedOp, MirrorOp, RecordKind};
use crate::resolve::{ResolveError, Resolver};
use crate::settle::{
    decide, ClientAnswer, Decision, JournalAction, PrimaryOutcome, SecondaryOutcome,
};
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
    /// How long a write's records stay locked after an unknown outcome on the primary.
    pub unknown_outcome_grace: Duration,
    /// The intents a settlement task owns; the others are orphans to settle.
    pub live_intents: LiveIntents,
    /// The state store's last error, for the answer of a write it refused.
    pub last_state_error: Mutex<String>,
}

/// Sends the client its answer from the settlement task.
type ClientAnswerTx = oneshot::Sender<Result<Answered, ProxyError>>;

/// A write on its way, owned by its settlement task: dropping it releases the gate pass and
/// the order locks, so a switch waits for it and no write of the same records overtakes it.
struct PendingWrite {
    _pass: WritePass,
    _guards: Guards,
    mode: MirrorMode,
    primary: BackendName,
    secondary: BackendName,
    /// The primary's path for the request.
    path: String,
    request: BufferedRequest,
}

/// The order locks a write holds.
enum Guards {
    Records {
        _records: OrderGuard,
    },
    Lifecycle {
        _lifecycle: OwnedMutexGuard<()>,
        _collection: Option<OrderGuard>,
    },
}

/// What a lifecycle write's settlement needs of the request.
struct LifecycleChange {
    tenant: String,
    database: String,
    body: Value,
    existing: Option<Arc<CollectionEntry>>,
    /// Queued when the outcome is unknown, and what a crash leaves.
    intent_op: MirrorOp,
}

/// What the journal may get for a write.
struct Queued {
    write: Vec<EncodedOp>,
    reconcile: MirrorOp,
}

/// The intents whose settlement task is running.
#[derive(Debug, Default)]
pub struct LiveIntents(Mutex<HashSet<IntentId>>);

/// Marks an intent live while it exists.
struct LiveIntent<'a> {
    set: &'a LiveIntents,
    id: IntentId,
}

impl Drop for LiveIntent<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
    }
}

impl LiveIntents {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<IntentId>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hold(&self, id: IntentId) -> LiveIntent<'_> {
        self.lock().insert(id);
        LiveIntent { set: self, id }
    }

    /// Whether a task owns `id`.
    pub fn contains(&self, id: IntentId) -> bool {
        self.lock().contains(&id)
    }

    /// Writes being settled now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    ProxyError::State(StateFailure::Unavailable(error.to_string()))
}

/// How a refusal of a body the proxy cannot read begins. Chroma refuses most such bodies
/// itself, but takes some (invalid UTF-8, a lone surrogate or deep nesting in a field it
/// ignores) that the proxy could not mirror as they were applied.
pub const UNMIRRORABLE: &str =
    "chroma-shift cannot mirror this write: its body is not JSON chroma-shift can read (Chroma ignores unknown fields, but their bytes must still be valid JSON within 128 levels)";

/// A write's body as JSON, or a refusal in Chroma's shape (the proxy could not mirror it).
fn parse_body(bytes: &[u8]) -> Result<Value, ClientError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ClientError::Unmirrorable(format!("{UNMIRRORABLE}: {e}")))
}

/// The primary's outcome from what [`Mirror::send`] returned.
fn classify(result: &Result<Response<Incoming>, BackendError>) -> PrimaryOutcome {
    match result {
        Ok(response) => PrimaryOutcome::classify(Some(response.status()), true),
        Err(error) => {
            PrimaryOutcome::classify(None, !matches!(error.kind, BackendErrorKind::Connect(_)))
        }
    }
}

/// The secondary's outcome of a sync-mode apply, and its error.
fn secondary_outcome(result: Result<(), ApplyError>) -> (SecondaryOutcome, Option<ApplyError>) {
    match result {
        Ok(()) => (SecondaryOutcome::Applied, None),
        Err(error @ ApplyError::Refused { .. }) => (SecondaryOutcome::Refused, Some(error)),
        Err(error) => (SecondaryOutcome::Failed, Some(error)),
    }
}

/// What the client hears once the write is settled.
fn client_answer(
    decision: Decision,
    primary: BackendName,
    secondary: BackendName,
    primary_answer: Result<Response<ProxyBody>, ProxyError>,
    secondary_error: Option<ApplyError>,
) -> Result<Answered, ProxyError> {
    match decision.client {
        ClientAnswer::Primary => primary_answer.map(|response| Answered {
            response,
            backend: primary,
        }),
        ClientAnswer::SecondaryFailed => Err(ProxyError::Backend(BackendError {
            backend: secondary,
            kind: BackendErrorKind::Transport(format!(
                "the write was applied on the primary but failed on the secondary ({}); it is queued for the secondary",
                secondary_error.map(|e| e.to_string()).unwrap_or_default()
            )),
        })),
    }
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
        // Chroma takes an id in any UUID spelling here; the map knows the canonical one.
        let Some(id) = paths::canonical_id(segment) else {
            return Ok(None);
        };
        let entry = self
            .resolver
            .by_client_id(topology.primary, tenant, database, &id)
            .await
            .map_err(resolve_failure)?;
        Ok(entry.filter(|e| !e.deleted && e.id_on(topology.primary).is_some()))
    }

    /// An add, upsert, update or delete.
    pub async fn record_write(
        self: &Arc<Self>,
        request: BufferedRequest,
    ) -> Result<Answered, ProxyError> {
        // Past the gate before reading the topology: a write held by a cutover goes to the
        // new primary.
        let pass = self.gate.enter().await;
        let topology = self.topology.load_full();
        let primary = topology.primary;
        let Some(kind) = RecordKind::from_operation(request.route.operation) else {
            return self.passthrough(&topology, request).await;
        };
        // A collection the stores do not know: the primary answers (a 404), nothing changes.
        let Some(entry) = self.collection_for_write(&topology, &request).await? else {
            return self.passthrough(&topology, request).await;
        };
        let collection = entry.client_id.clone();
        let primary_id = entry.id_on(primary).unwrap_or_default().to_owned();
        let path = self.backend_path(primary, &request, Some(&primary_id));

        // Lock, and find the records the write touches. A body the proxy cannot read is
        // refused as Chroma refuses it: it could not be mirrored.
        let (guard, mirror_body): (OrderGuard, Value) = match kind {
            RecordKind::Delete => {
                let selection = DeleteSelection::parse(&request.body)
                    .map_err(|e| ClientError::Unmirrorable(format!("{UNMIRRORABLE}: {e}")))?;
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
                let body = parse_body(&request.body)?;
                let guard = self.locks.records(&collection, &ids_of(&body)).await;
                (guard, body)
            }
        };
        let (mirror_body, missing) = if kind == RecordKind::Update {
            self.update_of_existing(primary, &entry, &primary_id, mirror_body)
                .await?
        } else {
            (mirror_body, None)
        };
        // What the primary also gets for the ids it lacks, for the secondary after the update.
        let (missing, forget) = match missing {
            Some((ids, body)) => (
                ids.clone(),
                Some(MirrorOp::ForgetMissing {
                    collection: collection.clone(),
                    body,
                    ids,
                }),
            ),
            None => (Vec::new(), None),
        };
        let op = MirrorOp::Records {
            kind,
            collection: collection.clone(),
            body: mirror_body,
        };
        let reconcile = MirrorOp::Reconcile {
            collection: collection.clone(),
            ids: match &op {
                MirrorOp::Records { body, .. } => ids_of(body),
                _ => Vec::new(),
            },
        };
        let secondary = topology.secondary();
        let sync = topology.mode == MirrorMode::Sync && !self.has_backlog(secondary, &collection);
        let write = PendingWrite {
            _pass: pass,
            _guards: Guards::Records { _records: guard },
            mode: topology.mode,
            primary,
            secondary,
            path,
            request,
        };
        let this = self.clone();
        self.detach(move |answer| async move {
            this.settle_record_write(write, op, reconcile, sync, (missing, forget), answer)
                .await
        })
        .await
    }

    /// Runs a write's settlement in a task of its own, so that it runs to the end whatever
    /// happens to the client's connection, and waits for the client's answer.
    async fn detach<F, Fut>(&self, work: F) -> Result<Answered, ProxyError>
    where
        F: FnOnce(ClientAnswerTx) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        tokio::spawn(work(tx));
        rx.await.unwrap_or_else(|_| {
            Err(ProxyError::Internal(
                "the write's settlement task ended without an answer; see the proxy's log"
                    .to_owned(),
            ))
        })
    }

    /// From the intent on: primary (and secondary in sync mode), the decision, the journal.
    async fn settle_record_write(
        self: Arc<Self>,
        write: PendingWrite,
        op: MirrorOp,
        reconcile: MirrorOp,
        sync: bool,
        (missing, forget): (Vec<String>, Option<MirrorOp>),
        answer: ClientAnswerTx,
    ) {
        let encoded = op.encode();
        let Some(intent) = self
            .record_intent(encoded.bytes.clone(), answer.is_closed())
            .await
        else {
            let _ = answer.send(Err(ProxyError::State(StateFailure::BeforeWrite(
                self.last_state_error(),
            ))));
            return;
        };
        let _live = self.live_intents.hold(intent);
        failpoint("write::after_intent");
        let body = write.request.body.clone();
        let (primary_result, secondary_outcome, secondary_error) = if sync {
            let (p, s) = tokio::join!(
                self.send(write.primary, &write.request, &write.path, body),
                self.applier.apply(write.secondary, &op),
            );
            // What the primary also got for the ids it lacked follows on the secondary.
            let s = match (s, &forget) {
                (Ok(()), Some(forget)) if classify(&p) == PrimaryOutcome::Applied => {
                    self.applier.apply(write.secondary, forget).await
                }
                (s, _) => s,
            };
            let (outcome, error) = secondary_outcome(s);
            (p, outcome, error)
        } else {
            let p = self
                .send(write.primary, &write.request, &write.path, body)
                .await;
            (p, SecondaryOutcome::NotSent, None)
        };
        failpoint("write::after_primary");
        let outcome = classify(&primary_result);
        if outcome == PrimaryOutcome::Applied && !missing.is_empty() {
            self.forget_missing_updates(&write, &missing).await;
        }
        let decision = decide(outcome, secondary_outcome, self.on_secondary_failure);
        self.carry_out(
            write,
            intent,
            decision,
            Queued {
                write: forget.into_iter().fold(vec![encoded], |mut ops, op| {
                    ops.push(op.encode());
                    ops
                }),
                reconcile,
            },
            primary_result.map(relay).map_err(ProxyError::Backend),
            secondary_error,
            answer,
        )
        .await;
    }

    /// Records the intent; `None` (and the error kept for the answer) when the state store
    /// cannot. `client_gone` only labels the log line.
    async fn record_intent(&self, payload: Vec<u8>, client_gone: bool) -> Option<IntentId> {
        match self.store.record_intent(payload).await {
            Ok(intent) => Some(intent),
            Err(error) => {
                tracing::error!(%error, client_gone, "cannot record a write intent; the write is refused");
                *self
                    .last_state_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = error.to_string();
                None
            }
        }
    }

    fn last_state_error(&self) -> String {
        self.last_state_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Carries a decision out: journal or discard the intent, answer the client, and after an
    /// unknown outcome wait out the grace (records still locked) before queuing the
    /// reconciliation, so the primary has settled when it is read.
    #[allow(clippy::too_many_arguments)]
    async fn carry_out(
        &self,
        write: PendingWrite,
        intent: IntentId,
        decision: Decision,
        queued: Queued,
        primary_answer: Result<Response<ProxyBody>, ProxyError>,
        secondary_error: Option<ApplyError>,
        answer: ClientAnswerTx,
    ) {
        let (primary, secondary) = (write.primary, write.secondary);
        if decision.after_grace {
            // The client hears the primary's failure now; the records stay locked meanwhile.
            let _ = answer.send(client_answer(
                decision,
                primary,
                secondary,
                primary_answer,
                secondary_error,
            ));
            tokio::time::sleep(self.unknown_outcome_grace).await;
            failpoint("write::before_reconcile");
            if let Err(error) = self
                .journal(intent, secondary, vec![queued.reconcile.encode()])
                .await
            {
                tracing::error!(%error, %intent, "cannot queue a reconciliation; the intent is settled once the state store can write");
            }
            self.count(write.mode, decision.label);
            drop(write);
            return;
        }
        failpoint("write::before_commit");
        let settled = match decision.journal {
            JournalAction::Write => self.journal(intent, secondary, queued.write).await,
            JournalAction::Reconcile => {
                self.journal(intent, secondary, vec![queued.reconcile.encode()])
                    .await
            }
            JournalAction::Discard => self.discard(intent).await,
        };
        failpoint("write::after_commit");
        self.count(write.mode, decision.label);
        let answer_now = match settled {
            Ok(()) => client_answer(
                decision,
                primary,
                secondary,
                primary_answer,
                secondary_error,
            ),
            // The primary applied it and it is not queued: never acknowledged. The intent left
            // behind is settled once the state store can write.
            Err(error)
                if decision.journal == JournalAction::Write
                    || decision.client == ClientAnswer::SecondaryFailed =>
            {
                Err(ProxyError::State(StateFailure::AfterPrimary(
                    error.to_string(),
                )))
            }
            // The primary did not apply it: its answer is still true, and the intent left
            // behind is settled later (a harmless reconciliation).
            Err(error) => {
                tracing::error!(%error, %intent, "cannot settle a write intent now; it is settled later");
                client_answer(
                    decision,
                    primary,
                    secondary,
                    primary_answer,
                    secondary_error,
                )
            }
        };
        let _ = answer.send(answer_now);
        drop(write);
    }

    /// After an update the primary applied for ids it lacked, deletes those ids there (still
    /// under the records' locks). They are missing, so nothing is lost; but Chroma 1.5.9 keeps
    /// the embedding of an update of a missing id and brings it back when the id is added
    /// later (see [`Mirror::update_of_existing`]), and a delete after the update clears it
    /// (seen on a real 1.5.9 server).
    async fn forget_missing_updates(&self, write: &PendingWrite, missing: &[String]) {
        let path = write
            .path
            .rsplit_once("/update")
            .map(|(collection, _)| format!("{collection}/delete"))
            .unwrap_or_default();
        let result = self
            .resolver
            .backends
            .get(write.primary)
            .call(Method::POST, &path, Some(&json!({ "ids": missing })))
            .await;
        match result {
            Ok(answer) if answer.status.is_success() => {}
            Ok(answer) => {
                tracing::warn!(status = %answer.status, "could not clear an update of missing ids on the primary")
            }
            Err(error) => {
                tracing::warn!(%error, "could not clear an update of missing ids on the primary")
            }
        }
    }

    /// An `update` carrying embeddings, restricted for the mirror to the ids the primary
    /// holds; and, when it names ids the primary lacks, those ids with the update restricted to
    /// them (one parse of the body for both). Read under the records' order locks,
    /// so no write of those ids interleaves.
    ///
    /// Chroma documents that an update of a missing id is ignored, and its metadata and
    /// document are; but in Chroma 1.5.9 the embedding of such an update comes back later:
    /// after `update(ids=["r"], embeddings=[Y])` of a missing `r`, then `add(ids=["r"],
    /// embeddings=[X])`, any read of the collection followed by any write turns `r`'s embedding
    /// into `Y` (its document and metadata stay the add's). Whether that happens depends on
    /// the reads between the writes, which only the primary sees, so the two stores would end
    /// up with different embeddings for `r`. So the primary gets the update as the client sent
    /// it (Chroma checks and answers it itself: dimensions, duplicate ids, metadata shapes),
    /// then a delete of the missing ids, which clears what the bug would bring back
    /// ([`Mirror::forget_missing_updates`]); the mirror never carries them.
    async fn update_of_existing(
        &self,
        primary: BackendName,
        entry: &CollectionEntry,
        primary_id: &str,
        body: Value,
    ) -> Result<(Value, Option<(Vec<String>, Value)>), ProxyError> {
        let carries_embeddings = body
            .get("embeddings")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty());
        let ids = ids_of(&body);
        if !carries_embeddings || ids.is_empty() {
            return Ok((body, None));
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
        let existing: HashSet<String> = match answer
            .status
            .is_success()
            .then(|| get_response_ids(&answer.body).ok())
            .flatten()
        {
            Some(found) => found.into_iter().collect(),
            // The primary answers the write itself.
            None => return Ok((body, None)),
        };
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !existing.contains(*id))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok((body, None));
        }
        let for_missing = retain_records(&body, |id| !existing.contains(id)).unwrap_or(Value::Null);
        let restricted = retain_records(&body, |id| existing.contains(id)).unwrap_or(body);
        Ok((restricted, Some((missing, for_missing))))
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
    pub async fn lifecycle_write(
        self: &Arc<Self>,
        request: BufferedRequest,
    ) -> Result<Answered, ProxyError> {
        let pass = self.gate.enter().await;
        let lifecycle = self.locks.lifecycle().await;
        let topology = self.topology.load_full();
        let primary = topology.primary;
        let operation = request.route.operation;
        let params = request.route.params.clone();
        let tenant = params.tenant.clone().unwrap_or_default();
        let database = params.database.clone().unwrap_or_default();
        // A body the proxy cannot read could not be mirrored as the primary took it: refuse it
        // as Chroma refuses it.
        let body: Value = if request.body.is_empty() {
            Value::Null
        } else {
            parse_body(&request.body)?
        };

        // The collection the change is about, when it names one. One the stores do not know:
        // the primary answers (a 404 or a 400), nothing changes.
        let existing = match &params.collection {
            Some(segment) => match self
                .map_segment(&topology, operation, &tenant, &database, segment)
                .await?
            {
                Some(entry) => Some(entry),
                None => return self.passthrough(&topology, request).await,
            },
            None => None,
        };
        let collection_guard = match &existing {
            Some(entry) => Some(self.locks.collection(&entry.client_id).await),
            None => None,
        };
        let segment = existing.as_ref().and_then(|e| match operation {
            // Chroma deletes by name; every other collection change by id.
            Operation::DeleteCollection => Some(e.name.clone()),
            _ => e.id_on(primary).map(str::to_owned),
        });
        let path = self.backend_path(primary, &request, segment.as_deref());

        // What to queue if the outcome on the primary is unknown (and what a crash leaves).
        let intent_op = match operation {
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
                // Chroma refuses such a body (a tenant without a name, ...): nothing changes.
                None => return self.passthrough(&topology, request).await,
            },
        };
        let write = PendingWrite {
            _pass: pass,
            _guards: Guards::Lifecycle {
                _lifecycle: lifecycle,
                _collection: collection_guard,
            },
            mode: topology.mode,
            primary,
            secondary: topology.secondary(),
            path,
            request,
        };
        let change = LifecycleChange {
            tenant,
            database,
            body,
            existing,
            intent_op,
        };
        let this = self.clone();
        self.detach(move |answer| async move {
            this.settle_lifecycle_write(write, change, answer).await
        })
        .await
    }

    async fn settle_lifecycle_write(
        self: Arc<Self>,
        write: PendingWrite,
        change: LifecycleChange,
        answer: ClientAnswerTx,
    ) {
        let Some(intent) = self
            .record_intent(change.intent_op.to_bytes(), answer.is_closed())
            .await
        else {
            let _ = answer.send(Err(ProxyError::State(StateFailure::BeforeWrite(
                self.last_state_error(),
            ))));
            return;
        };
        let _live = self.live_intents.hold(intent);
        failpoint("lifecycle::after_intent");
        let result = self
            .send(
                write.primary,
                &write.request,
                &write.path,
                write.request.body.clone(),
            )
            .await;
        failpoint("lifecycle::after_primary");
        let mut outcome = classify(&result);
        let (primary_answer, op) = match result {
            Ok(response) if outcome == PrimaryOutcome::Applied => {
                match self.applied_change(&write, &change, response).await {
                    Ok((op, response)) => (Ok(response), Some(op)),
                    Err(error) => {
                        // Applied, but its answer or the map could not be read or written:
                        // the reconciliation brings the secondary in line.
                        tracing::error!(%error, "a lifecycle write applied on the primary could not be followed up; reconciling");
                        outcome = PrimaryOutcome::Unknown;
                        let error = match error {
                            ProxyError::State(StateFailure::Unavailable(reason)) => {
                                ProxyError::State(StateFailure::AfterPrimary(reason))
                            }
                            other => other,
                        };
                        (Err(error), None)
                    }
                }
            }
            other => (other.map(relay).map_err(ProxyError::Backend), None),
        };
        let (secondary_outcome, secondary_error) = match &op {
            Some(op)
                if write.mode == MirrorMode::Sync
                    && !self.has_backlog(write.secondary, &op.lag_key()) =>
            {
                secondary_outcome(self.applier.apply(write.secondary, op).await)
            }
            _ => (SecondaryOutcome::NotSent, None),
        };
        let decision = decide(outcome, secondary_outcome, self.on_secondary_failure);
        let queued = Queued {
            write: vec![op.as_ref().unwrap_or(&change.intent_op).encode()],
            reconcile: change.intent_op,
        };
        self.carry_out(
            write,
            intent,
            decision,
            queued,
            primary_answer,
            secondary_error,
            answer,
        )
        .await;
    }

    /// After the primary applied a lifecycle change: the map updated, the op to mirror, and the
    /// answer for the client (collection objects carry the client's ids).
    async fn applied_change(
        &self,
        write: &PendingWrite,
        change: &LifecycleChange,
        response: Response<Incoming>,
    ) -> Result<(MirrorOp, Response<ProxyBody>), ProxyError> {
        let primary = write.primary;
        let operation = write.request.route.operation;
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
        let existing_id = || {
            change
                .existing
                .as_ref()
                .map(|e| e.client_id.clone())
                .unwrap_or_default()
        };
        let op = match operation {
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
                let entry = existing_id();
                if let Some(new_name) = change.body["new_name"].as_str() {
                    let new_name = new_name.to_owned();
                    self.resolver
                        .map
                        .update(&entry, |e| e.name = new_name)
                        .await
                        .map_err(store_failure)?;
                }
                MirrorOp::UpdateCollection {
                    collection: entry,
                    body: change.body.clone(),
                }
            }
            Operation::DeleteCollection => {
                let client_id = change.existing.as_ref().map(|e| e.client_id.clone());
                if let Some(id) = &client_id {
                    self.resolver
                        .map
                        .update(id, |e| e.deleted = true)
                        .await
                        .map_err(store_failure)?;
                }
                MirrorOp::DeleteCollection {
                    collection: client_id,
                    tenant: change.tenant.clone(),
                    database: change.database.clone(),
                    name: change
                        .existing
                        .as_ref()
                        .map(|e| e.name.clone())
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
                    source: existing_id(),
                    fork: fork.client_id.clone(),
                    new_name: fork.name.clone(),
                }
            }
            Operation::DeleteDatabase => {
                // Its collections are gone with it.
                for entry in self.resolver.map.entries() {
                    if entry.tenant == change.tenant && entry.database == change.database {
                        self.resolver
                            .map
                            .update(&entry.client_id, |e| e.deleted = true)
                            .await
                            .map_err(store_failure)?;
                    }
                }
                change.intent_op.clone()
            }
            _ => change.intent_op.clone(),
        };
        let response = match operation {
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
        Ok((op, response))
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

    /// The entry a lifecycle write's collection segment names. Chroma deletes a collection by
    /// name (a UUID-shaped segment is a name there too, so it is never looked up as an id);
    /// every other change names it by id, in any UUID spelling.
    async fn map_segment(
        &self,
        topology: &Topology,
        operation: Operation,
        tenant: &str,
        database: &str,
        segment: &str,
    ) -> Result<Option<Arc<CollectionEntry>>, ProxyError> {
        if operation != Operation::DeleteCollection {
            let Some(id) = paths::canonical_id(segment) else {
                return Ok(None);
            };
            return self
                .resolver
                .by_client_id(topology.primary, tenant, database, &id)
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
            // The primary's collections are gone whatever the secondary says: forget their ids
            // first, so no later write is sent to an id that no longer exists.
            self.resolver.map.clear().await.map_err(store_failure)?;
            let answer = self
                .resolver
                .backends
                .get(secondary)
                .call(Method::POST, "/api/v2/reset", None)
                .await?;
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
        settle_as_reconciliation(store, id, &payload, secondary).await?;
    }
    if count > 0 {
        tracing::warn!(count, %secondary, "recovered writes in flight at the last stop; queued reconciliations");
    }
    Ok(count)
}

/// An intent whose write may or may not have reached the primary becomes a reconciliation.
async fn settle_as_reconciliation(
    store: &Store,
    id: IntentId,
    payload: &[u8],
    secondary: BackendName,
) -> Result<(), StoreError> {
    match MirrorOp::from_bytes(payload) {
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
                .await
                .map(|_| ())
        }
        Err(error) => {
            tracing::error!(intent = %id, %error, "unreadable intent dropped");
            store.discard_intent(id).await
        }
    }
}

/// How often [`settle_orphaned_intents`] looks.
const ORPHAN_SWEEP: Duration = Duration::from_secs(1);

/// Settles, without a restart, the intents no task owns: those whose journal commit failed
/// (the state store could not write) or whose task died. An intent must be seen orphaned in
/// two sweeps in a row, so one recorded a moment before its task marked it live is left alone.
/// Runs until `stop` turns true.
pub async fn settle_orphaned_intents(mirror: Arc<Mirror>, mut stop: watch::Receiver<bool>) {
    let mut suspects: HashSet<IntentId> = HashSet::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(ORPHAN_SWEEP) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        if mirror.store.pending_intent_count() <= mirror.live_intents.len() as u64
            && suspects.is_empty()
        {
            continue;
        }
        let pending = match mirror.store.pending_intents() {
            Ok(pending) => pending,
            Err(error) => {
                tracing::warn!(%error, "cannot read pending intents");
                continue;
            }
        };
        let mut seen = HashSet::new();
        for (id, payload) in pending {
            if mirror.live_intents.contains(id) {
                continue;
            }
            if !suspects.contains(&id) {
                seen.insert(id);
                continue;
            }
            let secondary = mirror.topology.load().secondary();
            match settle_as_reconciliation(&mirror.store, id, &payload, secondary).await {
                Ok(()) => {
                    mirror.metrics.orphaned_intents.inc();
                    tracing::warn!(intent = %id, %secondary, "settled an orphaned write intent as a reconciliation");
                }
                Err(error) => {
                    tracing::warn!(intent = %id, %error, "cannot settle an orphaned intent yet");
                    seen.insert(id);
                }
            }
        }
        suspects = seen;
    }
}
