//! Record writes (add, upsert, update, delete): every write the primary applies reaches the
//! secondary too.
//!
//! A write takes its order locks and then hands itself to a task of its own
//! ([`crate::write_task`]), which records an intent (durable, before the primary sees the
//! write), sends the write, and settles it by the decision table in [`crate::settle`]: a
//! journal entry for the secondary (in journaled mode, in the same transaction that drops the
//! intent, before the client gets its answer), a reconciliation, or nothing. In sync mode the
//! secondary gets the write at the same time.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response};
use serde_json::{json, Value};
use shift_chroma::paths;
use shift_chroma::payload::{get_response_ids, retain_records, DeleteSelection};
use shift_config::{BackendName, MirrorMode};

use crate::apply::ApplyError;
use crate::auth::Caller;
use crate::backend::Answer;
use crate::body::{self, ProxyBody};
use crate::body_ids::record_ids;
use crate::collections::CollectionEntry;
use crate::error::{BackendError, BackendErrorKind, ProxyError};
use crate::failpoints::failpoint;
use crate::forward::{backend_path, relay, resolve_failure, send, Answered, BufferedRequest};
use crate::headers::strip_hop_by_hop;
use crate::ids::ClientCollectionId;
use crate::locks::OrderGuard;
use crate::mirror::{ids_of, EncodedOp, MirrorOp, RecordKind};
use crate::passthrough::passthrough;
use crate::plane::DataPlaneState;
use crate::replay::RawBatch;
use crate::settle::{PrimaryOutcome, SecondaryOutcome};
use crate::topology::Topology;
use crate::window::WindowWrite;
use crate::write_task::{
    carry_out, classify, detach, parse_body, record_intent, refuse_before_write, secondary_outcome,
    unmirrorable, ClientAnswerTx, Guards, PendingWrite, Queued, Settled,
};

/// What the primary also gets for ids it lacks in an update: those ids, and the op that
/// brings the secondary in line after it.
type Missing = (Vec<String>, Option<MirrorOp>);

/// An add, upsert, update or delete.
pub async fn record_write(
    plane: &Arc<DataPlaneState>,
    request: BufferedRequest,
) -> Result<Answered, ProxyError> {
    // Past the gate before reading the topology: a write held by a cutover goes to the
    // new primary.
    let pass = plane.gate.enter().await;
    let topology = plane.topology.current();
    let primary = topology.primary;
    let Some(kind) = RecordKind::from_operation(request.route.operation) else {
        return passthrough(plane, &topology, request).await;
    };
    // A collection the stores do not know: the primary answers (a 404), nothing changes.
    let Some(entry) = collection_for_write(plane, &topology, &request).await? else {
        return passthrough(plane, &topology, request).await;
    };
    // During a switch's sync window the write gives its pass back before it waits for its
    // locks, and passes the gate again to settle (see `crate::window`).
    let (pass, mut window) = plane.window.admit(pass, primary);
    let collection = entry.client_id.clone();
    if let Some(window) = window
        .as_ref()
        .filter(|_| topology.mode == MirrorMode::Sync)
    {
        crate::window::behind_the_queue(plane, window, topology.secondary(), &collection).await;
    }
    let primary_id = entry.id_on(primary).cloned().unwrap_or_default();
    let path = backend_path(plane, primary, &request, Some(&primary_id));

    // Lock, and find the records the write touches. A body the proxy cannot read is
    // refused as Chroma refuses it: it could not be mirrored. An add or upsert is mirrored
    // as it was sent, so only its ids are read (no parse tree); other bodies are rewritten.
    let (guard, ids, rewritten): (OrderGuard, Vec<String>, Option<Value>) = match kind {
        RecordKind::Delete => {
            let selection = DeleteSelection::parse(&request.body).map_err(unmirrorable)?;
            if selection.is_filtered() {
                let guard = plane.locks.collection(&collection).await;
                let found = resolve_filtered_delete(
                    plane,
                    &request.caller,
                    (primary, &entry, &primary_id),
                    &selection,
                )
                .await?;
                match found {
                    Ok(ids) => {
                        let body = json!({ "ids": ids });
                        (guard, ids, Some(body))
                    }
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
                let guard = plane.locks.records(&collection, &ids).await;
                let body = json!({ "ids": ids });
                (guard, ids, Some(body))
            }
        }
        RecordKind::Add | RecordKind::Upsert => {
            let ids = record_ids(&request.body).map_err(unmirrorable)?;
            let guard = plane.locks.records(&collection, &ids).await;
            (guard, ids, None)
        }
        RecordKind::Update => {
            let body = parse_body(&request.body)?;
            let ids = ids_of(&body);
            let guard = plane.locks.records(&collection, &ids).await;
            (guard, ids, Some(body))
        }
    };
    // A window write that waited for its locks while the window ended (the primary changed,
    // or the switch went on without it) has sent nothing: it goes again through the gate.
    // Checked with the locks held, so every write of these records through a new primary
    // comes after it (see `crate::window`).
    if window.is_some() && (!plane.window.is_open() || plane.topology.current().primary != primary)
    {
        drop((guard, window, pass));
        return Box::pin(record_write(plane, request)).await;
    }
    // An update of ids the primary lacks is restricted to those it holds; any other update
    // goes to the mirror as it was sent.
    let (rewritten, missing) = match rewritten {
        Some(body) if kind == RecordKind::Update => {
            let on_primary = (primary, &*entry, primary_id.as_str());
            match update_of_existing(plane, &request.caller, on_primary, body).await? {
                (restricted, Some(missing)) => (Some(restricted), Some(missing)),
                (_, None) => (None, None),
            }
        }
        rewritten => (rewritten, None),
    };
    // What the primary also gets for the ids it lacks, for the secondary after the update.
    let missing: Missing = match missing {
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
    let records = ids.len();
    let reconcile = MirrorOp::Reconcile {
        collection: collection.clone(),
        ids: rewritten.as_ref().map_or(ids, ids_of),
    };
    // Unless the body was rewritten, the request's bytes are the only copy of it held while
    // the primary works: the journal's copy is encoded from them when needed.
    let op = match rewritten {
        None => Mirrored::AsSent {
            kind,
            collection: collection.clone(),
            records,
        },
        Some(body) => Mirrored::Rewritten(MirrorOp::Records {
            kind,
            collection: collection.clone(),
            body,
        }),
    };
    let secondary = topology.secondary();
    let sync = topology.mode == MirrorMode::Sync && !plane.waits_in_journal(secondary, &collection);
    if let Some(window) = window.as_mut().filter(|_| !sync) {
        window.journaled();
    }
    let write = PendingWrite {
        _pass: pass,
        _guards: Guards::Records { _records: guard },
        mode: topology.mode,
        primary,
        secondary,
        path,
        request,
    };
    let plane = plane.clone();
    detach(move |answer| async move {
        let mirroring = Mirroring {
            op,
            reconcile,
            sync,
            missing,
            window,
        };
        settle_record_write(&plane, write, mirroring, answer).await
    })
    .await
}

/// The entry of the collection a record write names, registered if new. `None` when the
/// segment is not a collection id the stores know: the primary answers that itself.
async fn collection_for_write(
    plane: &DataPlaneState,
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
    let entry = plane
        .resolver
        .by_client_id(topology.primary, tenant, database, &id)
        .await
        .map_err(resolve_failure)?;
    Ok(entry.filter(|e| !e.deleted && e.id_on(topology.primary).is_some()))
}

/// What a record write mirrors: the client's body as it was sent, or a body the proxy
/// rewrote. Encoded when needed rather than held encoded, so a large write holds one copy of
/// its body (the request's bytes) while the primary works on it.
enum Mirrored {
    /// The op is `Records` of `kind` with the request's own body.
    AsSent {
        kind: RecordKind,
        collection: ClientCollectionId,
        /// How many ids the body names.
        records: usize,
    },
    Rewritten(MirrorOp),
}

impl Mirrored {
    /// The payload for the journal, written by `caller`.
    fn encode(&self, body: &[u8], caller: &Caller) -> EncodedOp {
        match self {
            Mirrored::AsSent {
                kind, collection, ..
            } => MirrorOp::encode_records(*kind, collection, body, caller),
            Mirrored::Rewritten(op) => op.encode_as(caller),
        }
    }

    /// The op, for a sync-mode apply.
    fn op(&self, body: &[u8]) -> Cow<'_, MirrorOp> {
        match self {
            Mirrored::AsSent {
                kind, collection, ..
            } => Cow::Owned(MirrorOp::Records {
                kind: *kind,
                collection: collection.clone(),
                // Parsed before, on the write path: it reads.
                body: serde_json::from_slice(body).unwrap_or(Value::Null),
            }),
            Mirrored::Rewritten(op) => Cow::Borrowed(op),
        }
    }

    /// Applies the write to the secondary in sync mode. An add or upsert sent as it was is
    /// sent to the secondary as the primary got it, the client's bytes (no parse tree, no
    /// re-serialization of its floats), when one request can carry it; anything else as its
    /// op.
    async fn apply_sync(
        &self,
        plane: &DataPlaneState,
        secondary: BackendName,
        body: &Bytes,
        caller: &Caller,
    ) -> Result<(), ApplyError> {
        if let Mirrored::AsSent {
            kind: kind @ (RecordKind::Add | RecordKind::Upsert),
            collection,
            records,
        } = self
        {
            // A body naming no record, or more than one request holds, takes the op's path
            // (which skips the one and splits the other).
            if *records > 0 && *records <= plane.applier.max_batch(secondary).await {
                let raw = RawBatch {
                    kind: *kind,
                    collection: collection.clone(),
                    body: body.clone(),
                    records: *records,
                };
                return plane.applier.apply_raw(secondary, &raw, caller).await;
            }
        }
        let op = self.op(body);
        plane.applier.apply(secondary, &op, caller).await
    }
}

/// How a record write is mirrored, decided on the write path.
struct Mirroring {
    op: Mirrored,
    reconcile: MirrorOp,
    /// Sent to the secondary at once (sync mode, nothing of its collection queued).
    sync: bool,
    missing: Missing,
    /// A write of a switch's sync window.
    window: Option<WindowWrite>,
}

/// From the intent on: primary (and secondary in sync mode), the decision, the journal.
async fn settle_record_write(
    plane: &DataPlaneState,
    mut write: PendingWrite,
    mirroring: Mirroring,
    answer: ClientAnswerTx,
) {
    let Mirroring {
        op: mirrored,
        reconcile,
        sync,
        missing: (missing, forget),
        window,
    } = mirroring;
    let caller = write.request.caller.clone();
    // The intent is what its recovery would make of the write in full, the reconciliation of
    // its records: a few hundred bytes for a write of any size (see `crate::write_task`).
    let intent_bytes = reconcile.to_bytes_as(caller.identity());
    let Some(intent) = record_intent(plane, intent_bytes, answer.is_closed()).await else {
        refuse_before_write(plane, answer);
        return;
    };
    let _live = plane.live_intents.hold(intent);
    failpoint("write::after_intent");
    let body = write.request.body.clone();
    let (primary_result, secondary_outcome, secondary_error) = if sync {
        let (p, s) = tokio::join!(
            send(plane, write.primary, &write.request, &write.path, body),
            mirrored.apply_sync(plane, write.secondary, &write.request.body, &caller),
        );
        // What the primary also got for the ids it lacked follows on the secondary.
        let s = match (s, &forget) {
            (Ok(()), Some(forget)) if classify(&p) == PrimaryOutcome::Applied => {
                plane.applier.apply(write.secondary, forget, &caller).await
            }
            (s, _) => s,
        };
        let (outcome, error) = secondary_outcome(s);
        (p, outcome, error)
    } else {
        let p = send(plane, write.primary, &write.request, &write.path, body).await;
        (p, SecondaryOutcome::NotSent, None)
    };
    failpoint("write::after_primary");
    let outcome = classify(&primary_result);
    if outcome == PrimaryOutcome::Applied && !missing.is_empty() {
        forget_missing_updates(plane, &write, &missing).await;
    }
    // A window write settles wholly before or wholly after a switch's flip.
    let settling = crate::window::pass_to_settle(plane, window.as_ref()).await;
    let (decision, primary_answer) = crate::window::decide_write(
        plane,
        &mut write,
        window.as_ref(),
        (outcome, secondary_outcome),
        primary_result.map(relay).map_err(ProxyError::Backend),
    );
    let settled = Settled {
        intent,
        decision,
        queued: Queued {
            // Encoded again now rather than held through the primary's work.
            write: forget.into_iter().fold(
                vec![mirrored.encode(&write.request.body, &caller)],
                |mut ops, op| {
                    ops.push(op.encode_as(&caller));
                    ops
                },
            ),
            reconcile,
        },
        primary_answer,
        secondary_error,
    };
    carry_out(plane, write, settled, answer).await;
    drop((settling, window));
}

/// After an update the primary applied for ids it lacked, deletes those ids there (still
/// under the records' locks). They are missing, so nothing is lost; but Chroma 1.5.9 keeps
/// the embedding of an update of a missing id and brings it back when the id is added
/// later (see [`update_of_existing`]), and a delete after the update clears it (seen on a
/// real 1.5.9 server).
async fn forget_missing_updates(plane: &DataPlaneState, write: &PendingWrite, missing: &[String]) {
    let path = write
        .path
        .rsplit_once("/update")
        .map(|(collection, _)| format!("{collection}/delete"))
        .unwrap_or_default();
    let result = plane
        .resolver
        .backends
        .get(write.primary)
        .call_as(
            &write.request.caller,
            Method::POST,
            &path,
            Some(&json!({ "ids": missing })),
        )
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

/// A collection on the primary: the primary, the collection's entry and its id there.
type OnPrimary<'a> = (BackendName, &'a CollectionEntry, &'a str);

/// A `get` on the collection in the primary, on behalf of `caller`, read whole.
async fn get_on_primary(
    plane: &DataPlaneState,
    caller: &Caller,
    (primary, entry, primary_id): OnPrimary<'_>,
    query: &Value,
) -> Result<Answer, ProxyError> {
    let ns = plane
        .resolver
        .namespaces
        .to_backend(primary, &entry.tenant, Some(&entry.database));
    let path = paths::collection_verb(
        &ns.tenant,
        ns.database.as_deref().unwrap_or(&entry.database),
        primary_id,
        "get",
    );
    let answer = plane
        .resolver
        .backends
        .get(primary)
        .call_as(caller, Method::POST, &path, Some(query))
        .await?;
    Ok(answer)
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
/// ([`forget_missing_updates`]); the mirror never carries them.
async fn update_of_existing(
    plane: &DataPlaneState,
    caller: &Caller,
    on_primary: OnPrimary<'_>,
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
    let query = json!({"ids": ids, "include": []});
    let answer = get_on_primary(plane, caller, on_primary, &query).await?;
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
    plane: &DataPlaneState,
    caller: &Caller,
    on_primary: OnPrimary<'_>,
    selection: &DeleteSelection,
) -> Result<Result<Vec<String>, Response<ProxyBody>>, ProxyError> {
    let answer = get_on_primary(plane, caller, on_primary, &selection.resolving_get()).await?;
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
            backend: on_primary.0,
            kind: BackendErrorKind::Transport(format!("unreadable get answer: {e}")),
        })
    })?;
    Ok(Ok(ids))
}
