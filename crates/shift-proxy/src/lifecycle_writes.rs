//! Lifecycle writes: a tenant, database, collection or function change.
//!
//! The operation is looked at once, by [`plan`], which says how the primary's path names the
//! collection, what to queue when the primary's outcome is unknown (also what a crash leaves),
//! and what follows the primary's success ([`Applied`]). One execution carries any plan out,
//! through the same settlement task as record writes ([`crate::write_task`]), all under the
//! lifecycle lock (and the collection's lock when it names one).

use std::sync::Arc;

use http::Response;
use hyper::body::Incoming;
use serde_json::Value;
use shift_chroma::{paths, Operation};
use shift_config::{BackendName, MirrorMode};

use crate::body::ProxyBody;
use crate::collections::CollectionEntry;
use crate::error::{ProxyError, StateFailure};
use crate::failpoints::failpoint;
use crate::forward::{
    backend_path, read_whole, relay, relay_bytes, relay_json, resolve_failure, send, state_failure,
    Answered, BufferedRequest,
};
use crate::ids::ClientCollectionId;
use crate::mirror::MirrorOp;
use crate::passthrough::passthrough;
use crate::plane::DataPlaneState;
use crate::settle::{decide, PrimaryOutcome, SecondaryOutcome};
use crate::topology::Topology;
use crate::write_task::{
    carry_out, classify, detach, parse_body, record_intent, refuse_before_write, secondary_outcome,
    ClientAnswerTx, Guards, PendingWrite, Queued, Settled,
};

/// What a lifecycle write does, decided once from its operation.
struct LifecyclePlan {
    /// How the primary's path names the collection, when the change names one.
    segment: Option<String>,
    /// Queued when the outcome on the primary is unknown, and what a crash leaves.
    intent_op: MirrorOp,
    /// What follows the primary's success.
    applied: Applied,
}

/// What follows a lifecycle change the primary applied.
enum Applied {
    /// The answer's collection is registered in the map and ensured on the secondary.
    Create,
    /// The answer's collection, a fork of `source`, is registered and forked on the secondary.
    Fork { source: ClientCollectionId },
    /// The map takes the new name, if any; the secondary gets the same update.
    Update {
        collection: ClientCollectionId,
        new_name: Option<String>,
        body: Value,
    },
    /// The map marks the collection deleted; the secondary deletes it too.
    Delete {
        collection: Option<ClientCollectionId>,
        delete: MirrorOp,
    },
    /// The map marks every collection of the database deleted; the secondary gets the intent's op.
    DeleteDatabase { tenant: String, database: String },
    /// The secondary gets the intent's op.
    Mirror,
}

/// The request's parts a plan is made from.
struct Change<'a> {
    request: &'a BufferedRequest,
    tenant: &'a str,
    database: &'a str,
    body: &'a Value,
    existing: Option<&'a CollectionEntry>,
}

/// The plan of a lifecycle change; `None` when it changes nothing the proxy mirrors (Chroma
/// refuses such a body: a tenant without a name, ...), so the primary answers alone.
fn plan(change: Change<'_>, primary: BackendName) -> Option<LifecyclePlan> {
    let Change {
        request,
        tenant,
        database,
        body,
        existing,
    } = change;
    let client_id = || existing.map(|e| e.client_id.clone());
    let id_on_primary = || existing.and_then(|e| e.id_on(primary).map(|id| id.to_string()));
    // What an unknown outcome on a collection leaves: read it back from the primary.
    let reconcile_collection =
        |collection: Option<ClientCollectionId>, name: String| MirrorOp::ReconcileCollection {
            collection,
            tenant: tenant.to_owned(),
            database: database.to_owned(),
            name,
        };
    let existing_name = || {
        existing
            .map(|e| e.name.clone())
            .or_else(|| {
                request
                    .route
                    .params
                    .collection
                    .as_deref()
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    };
    let mirror = |intent_op: MirrorOp, segment: Option<String>| LifecyclePlan {
        segment,
        intent_op,
        applied: Applied::Mirror,
    };
    let plan = match request.route.operation {
        Operation::CreateCollection => LifecyclePlan {
            segment: None,
            intent_op: reconcile_collection(
                None,
                body["name"].as_str().unwrap_or_default().to_owned(),
            ),
            applied: Applied::Create,
        },
        Operation::ForkCollection => LifecyclePlan {
            segment: id_on_primary(),
            intent_op: reconcile_collection(client_id(), existing_name()),
            applied: Applied::Fork {
                source: client_id().unwrap_or_default(),
            },
        },
        Operation::UpdateCollection => LifecyclePlan {
            segment: id_on_primary(),
            intent_op: reconcile_collection(client_id(), existing_name()),
            applied: Applied::Update {
                collection: client_id().unwrap_or_default(),
                new_name: body["new_name"].as_str().map(str::to_owned),
                body: body.clone(),
            },
        },
        // Chroma deletes a collection by name.
        Operation::DeleteCollection => LifecyclePlan {
            segment: existing.map(|e| e.name.clone()),
            intent_op: reconcile_collection(client_id(), existing_name()),
            applied: Applied::Delete {
                collection: client_id(),
                delete: MirrorOp::DeleteCollection {
                    collection: client_id(),
                    tenant: tenant.to_owned(),
                    database: database.to_owned(),
                    name: existing.map(|e| e.name.clone()).unwrap_or_default(),
                },
            },
        },
        Operation::CreateTenant => mirror(
            MirrorOp::CreateTenant {
                name: body["name"].as_str()?.to_owned(),
            },
            None,
        ),
        Operation::UpdateTenant => mirror(
            MirrorOp::UpdateTenant {
                tenant: tenant.to_owned(),
                body: body.clone(),
            },
            None,
        ),
        Operation::CreateDatabase => mirror(
            MirrorOp::CreateDatabase {
                tenant: tenant.to_owned(),
                name: body["name"].as_str()?.to_owned(),
            },
            None,
        ),
        Operation::DeleteDatabase => LifecyclePlan {
            segment: None,
            intent_op: MirrorOp::DeleteDatabase {
                tenant: tenant.to_owned(),
                database: database.to_owned(),
            },
            applied: Applied::DeleteDatabase {
                tenant: tenant.to_owned(),
                database: database.to_owned(),
            },
        },
        Operation::AttachFunction | Operation::DetachFunction => {
            let collection = existing?;
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
            mirror(
                MirrorOp::Function {
                    collection: collection.client_id.clone(),
                    suffix,
                    body: body.clone(),
                },
                id_on_primary(),
            )
        }
        _ => return None,
    };
    Some(plan)
}

/// A tenant, database or collection change.
pub async fn lifecycle_write(
    plane: &Arc<DataPlaneState>,
    request: BufferedRequest,
) -> Result<Answered, ProxyError> {
    let pass = plane.gate.enter().await;
    let lifecycle = plane.locks.lifecycle().await;
    let topology = plane.topology.current();
    let primary = topology.primary;
    let params = &request.route.params;
    let tenant = params.tenant.as_deref().unwrap_or_default().to_owned();
    let database = params.database.as_deref().unwrap_or_default().to_owned();
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
        Some(segment) => {
            let by_name = request.route.operation == Operation::DeleteCollection;
            match find_collection(plane, &topology, by_name, &tenant, &database, segment).await? {
                Some(entry) => Some(entry),
                None => return passthrough(plane, &topology, request).await,
            }
        }
        None => None,
    };
    let collection_guard = match &existing {
        Some(entry) => Some(plane.locks.collection(&entry.client_id).await),
        None => None,
    };
    let change = Change {
        request: &request,
        tenant: &tenant,
        database: &database,
        body: &body,
        existing: existing.as_deref(),
    };
    let Some(plan) = plan(change, primary) else {
        return passthrough(plane, &topology, request).await;
    };
    let path = backend_path(plane, primary, &request, plan.segment.as_deref());
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
    let plane = plane.clone();
    detach(move |answer| async move { settle_lifecycle_write(&plane, write, plan, answer).await })
        .await
}

/// The entry a lifecycle write's collection segment names. Chroma deletes a collection by
/// name (`by_name`: a UUID-shaped segment is a name there too, so it is never looked up as an
/// id); every other change names it by id, in any UUID spelling.
async fn find_collection(
    plane: &DataPlaneState,
    topology: &Topology,
    by_name: bool,
    tenant: &str,
    database: &str,
    segment: &str,
) -> Result<Option<Arc<CollectionEntry>>, ProxyError> {
    if !by_name {
        let Some(id) = paths::canonical_id(segment) else {
            return Ok(None);
        };
        return plane
            .resolver
            .by_client_id(topology.primary, tenant, database, &id)
            .await
            .map(|e| e.filter(|e| !e.deleted))
            .map_err(resolve_failure);
    }
    if let Some(entry) = plane.resolver.map.by_name(tenant, database, segment) {
        return Ok(Some(entry));
    }
    match plane
        .resolver
        .fetch(topology.primary, tenant, database, segment)
        .await?
    {
        Some(object) => Ok(Some(
            plane
                .resolver
                .register(topology.primary, &object)
                .await
                .map_err(resolve_failure)?,
        )),
        None => Ok(None),
    }
}

/// From the intent on: the primary, the map and the answer, the secondary in sync mode, the
/// decision, the journal.
async fn settle_lifecycle_write(
    plane: &DataPlaneState,
    write: PendingWrite,
    plan: LifecyclePlan,
    answer: ClientAnswerTx,
) {
    let caller = write.request.caller.clone();
    let intent_bytes = plan.intent_op.to_bytes_as(caller.identity());
    let Some(intent) = record_intent(plane, intent_bytes, answer.is_closed()).await else {
        refuse_before_write(plane, answer);
        return;
    };
    let _live = plane.live_intents.hold(intent);
    failpoint("lifecycle::after_intent");
    let result = send(
        plane,
        write.primary,
        &write.request,
        &write.path,
        write.request.body.clone(),
    )
    .await;
    failpoint("lifecycle::after_primary");
    let mut outcome = classify(&result);
    // A whole answer from the primary, rather than a lost connection or a timeout.
    let answered = result.is_ok();
    let (primary_answer, op) = match result {
        Ok(response) if outcome == PrimaryOutcome::Applied => {
            match applied_change(plane, write.primary, &plan, response).await {
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
                && !plane.waits_in_journal(write.secondary, &op.lag_key()) =>
        {
            secondary_outcome(plane.applier.apply(write.secondary, op, &caller).await)
        }
        _ => (SecondaryOutcome::NotSent, None),
    };
    let mut decision = decide(
        outcome,
        secondary_outcome,
        plane.writes.on_secondary_failure,
    );
    if decision.after_grace && answered && rename_cannot_land(plane, write.primary, &plan).await {
        decision.after_grace = false;
    }
    let queued = Queued {
        write: vec![op.as_ref().unwrap_or(&plan.intent_op).encode_as(&caller)],
        reconcile: plan.intent_op,
    };
    let settled = Settled {
        intent,
        decision,
        queued,
        primary_answer,
        secondary_error,
    };
    carry_out(plane, write, settled, answer).await;
}

/// Whether a rename the primary answered with a 5xx is settled there for good, so its
/// reconciliation need not wait out `unknown_outcome_grace` with the lifecycle lock held: the
/// new name belongs to another collection on the primary. Chroma 1.5.9 answers a rename onto a
/// taken name with 500 (a UNIQUE constraint of its database) and changes nothing, metadata
/// included; such a rename cannot land later either while the name stays taken, and only a
/// lifecycle write could free it, which waits for this one's lock. Anything else (the name
/// free, held by this collection, or unreadable) keeps the grace.
async fn rename_cannot_land(
    plane: &DataPlaneState,
    primary: BackendName,
    plan: &LifecyclePlan,
) -> bool {
    let Applied::Update {
        collection,
        new_name: Some(new_name),
        ..
    } = &plan.applied
    else {
        return false;
    };
    let Some(entry) = plane.resolver.map.get(collection) else {
        return false;
    };
    let Some(own_id) = entry.id_on(primary) else {
        return false;
    };
    match plane
        .resolver
        .fetch(primary, &entry.tenant, &entry.database, new_name)
        .await
    {
        Ok(Some(holder)) => holder["id"]
            .as_str()
            .and_then(paths::canonical_id)
            .is_some_and(|id| Some(id) != paths::canonical_id(own_id)),
        _ => false,
    }
}

/// After the primary applied a lifecycle change: the map updated, the op to mirror, and the
/// answer for the client (collection objects carry the client's ids).
async fn applied_change(
    plane: &DataPlaneState,
    primary: BackendName,
    plan: &LifecyclePlan,
    response: Response<Incoming>,
) -> Result<(MirrorOp, Response<ProxyBody>), ProxyError> {
    let (parts, answer) = read_whole(primary, response).await?;
    let mut answer_json: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    let map = &plane.resolver.map;
    // A new collection (created or forked) enters the map from the primary's answer.
    let registered = match &plan.applied {
        Applied::Create | Applied::Fork { .. } => Some(
            plane
                .resolver
                .register(primary, &answer_json)
                .await
                .map_err(resolve_failure)?,
        ),
        _ => None,
    };
    let (op, rewrite) = match (&plan.applied, registered) {
        (Applied::Create, Some(entry)) => {
            let op = MirrorOp::EnsureCollection {
                collection: entry.client_id.clone(),
            };
            (op, true)
        }
        (Applied::Fork { source }, Some(fork)) => {
            let op = MirrorOp::ForkCollection {
                source: source.clone(),
                fork: fork.client_id.clone(),
                new_name: fork.name.clone(),
            };
            (op, true)
        }
        (
            Applied::Update {
                collection,
                new_name,
                body,
            },
            _,
        ) => {
            if let Some(new_name) = new_name {
                let new_name = new_name.clone();
                map.update(collection, |e| e.name = new_name)
                    .await
                    .map_err(state_failure)?;
            }
            let op = MirrorOp::UpdateCollection {
                collection: collection.clone(),
                body: body.clone(),
            };
            (op, false)
        }
        (Applied::Delete { collection, delete }, _) => {
            if let Some(id) = collection {
                map.update(id, |e| e.deleted = true)
                    .await
                    .map_err(state_failure)?;
            }
            (delete.clone(), false)
        }
        (Applied::DeleteDatabase { tenant, database }, _) => {
            // Its collections are gone with it.
            for entry in map.entries() {
                if &entry.tenant == tenant && &entry.database == database {
                    map.update(&entry.client_id, |e| e.deleted = true)
                        .await
                        .map_err(state_failure)?;
                }
            }
            (plan.intent_op.clone(), false)
        }
        // Create and fork registered above; every other plan mirrors its intent's op.
        (Applied::Create | Applied::Fork { .. } | Applied::Mirror, _) => {
            (plan.intent_op.clone(), false)
        }
    };
    let response = if rewrite {
        plane
            .resolver
            .rewrite_collections(primary, &mut answer_json)
            .await
            .map_err(resolve_failure)?;
        relay_json(parts, &answer_json)
    } else {
        relay_bytes(parts, answer)
    };
    Ok((op, response))
}
