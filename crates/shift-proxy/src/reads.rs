//! The read path: reads go to the primary with the client's collection id translated to the
//! primary's, and answers that carry collection objects come back with the client's ids.
//!
//! Record reads of one collection (query, get, count) may also, as the topology's read policy
//! says:
//! - be served by the secondary (a canary), but only when nothing of that collection waits in
//!   the secondary's journal, so a client always reads its own writes; when the secondary fails
//!   or refuses, the primary answers instead;
//! - be sent to the secondary as well (a shadow) and compared in the background
//!   ([`crate::shadow`]), again only when the secondary has caught up on that collection, since
//!   a lagging secondary would show mismatches that are only lag. The primary's answer to a
//!   shadowed read is read whole (the comparison needs it) and given to the client at once;
//!   one that declares more than [`MAX_COMPARED_BODY`] streams as usual and is not compared.

use std::sync::Arc;

use http::Response;
use serde_json::Value;
use shift_chroma::Operation;
use shift_config::BackendName;

use crate::collections::CollectionEntry;
use crate::error::ProxyError;
use crate::forward::{
    backend_path, read_whole, relay, relay_bytes, relay_json, resolve_failure, send_driven,
    Answered, BufferedRequest,
};
use crate::plane::DataPlaneState;
use crate::shadow::{
    CanaryOutcome, CollectionRef, PrimaryHandoff, ShadowRequest, ShadowedRead, SkipReason,
    MAX_COMPARED_BODY,
};

/// Reads whose answer holds collection objects.
fn returns_collections(operation: Operation) -> bool {
    matches!(
        operation,
        Operation::GetCollection
            | Operation::GetCollectionById
            | Operation::GetCollectionByCrn
            | Operation::ListCollections
    )
}

/// True for `percent` percent of calls.
fn roll(percent: f64) -> bool {
    percent > 0.0 && fastrand::f64() * 100.0 < percent
}

/// A read: to the primary, or a canary or shadow share of it to the secondary too.
pub async fn read(
    plane: &DataPlaneState,
    request: BufferedRequest,
) -> Result<Answered, ProxyError> {
    let topology = plane.topology.current();
    let primary = topology.primary;
    let params = &request.route.params;

    // A client id the map knows (or can find) is sent as the primary's id; anything else
    // (a name, an id no store has) goes as it is and Chroma answers it.
    let mut entry = None;
    if let (Some(tenant), Some(database), Some(segment)) = (
        params.tenant.as_deref(),
        params.database.as_deref(),
        params.collection.as_deref(),
    ) {
        if uuid::Uuid::parse_str(segment).is_ok() {
            entry = plane
                .resolver
                .by_client_id(primary, tenant, database, segment)
                .await
                .map_err(resolve_failure)?
                .filter(|e| !e.deleted);
        }
    }
    let collection = entry.as_deref().and_then(|e| e.id_on(primary).cloned());

    // A canary or a shadow, for a record read of a collection the primary has.
    let mut shadow = None;
    if let (Some(read), Some(entry), Some(_)) = (
        ShadowedRead::of(request.route.operation),
        entry.as_deref(),
        collection.as_deref(),
    ) {
        let secondary = topology.secondary();
        if roll(topology.reads.canary_percent) {
            if let Some(answered) = canary(plane, entry, secondary, &request).await {
                return Ok(answered);
            }
        } else if roll(topology.reads.shadow_percent) {
            shadow = start_shadow(plane, read, entry, primary, secondary, &request);
        }
    }

    let path = backend_path(plane, primary, &request, collection.as_deref());
    let response = send_driven(plane, primary, &request, &path).await?;
    if let Some(shadow) = shadow {
        if response.status().is_success() {
            let declared = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|len| len > MAX_COMPARED_BODY) {
                shadow.skipped(SkipReason::TooLarge);
            } else {
                return answer_shadowed(primary, response, shadow).await;
            }
        }
        // Dropping the handoff counts the shadow as skipped: nothing to compare with.
    }
    if !returns_collections(request.route.operation) || !response.status().is_success() {
        return Ok(Answered {
            response: relay(response),
            backend: primary,
        });
    }
    let (parts, bytes) = read_whole(primary, response).await?;
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(Answered {
            response: relay_bytes(parts, bytes),
            backend: primary,
        });
    };
    plane
        .resolver
        .rewrite_collections(primary, &mut value)
        .await
        .map_err(resolve_failure)?;
    Ok(Answered {
        response: relay_json(parts, &value),
        backend: primary,
    })
}

/// Serves a read from the secondary when it has caught up on the collection; `None` when
/// the primary must answer (skipped, or the secondary failed: the client never pays for a
/// canary).
async fn canary(
    plane: &DataPlaneState,
    entry: &CollectionEntry,
    secondary: BackendName,
    request: &BufferedRequest,
) -> Option<Answered> {
    let collection = CollectionRef::of(entry);
    let Some(id) = entry.id_on(secondary) else {
        plane
            .shadow
            .canary(&collection, CanaryOutcome::SkippedUnmapped);
        return None;
    };
    // A parked write (a dead letter) leaves no lag but a secondary that may differ: canaries
    // wait until an operator has dealt with it. Coarse (any dead letter), and safe.
    if plane.waits_in_journal(secondary, &entry.client_id) || plane.journal.dead_letter_count() > 0
    {
        plane
            .shadow
            .canary(&collection, CanaryOutcome::SkippedLagging);
        return None;
    }
    let path = backend_path(plane, secondary, request, Some(id));
    let result = send_driven(plane, secondary, request, &path).await;
    match result {
        Ok(response) if response.status().is_success() => {
            plane.shadow.canary(&collection, CanaryOutcome::Served);
            Some(Answered {
                response: relay(response),
                backend: secondary,
            })
        }
        Ok(response) => {
            tracing::warn!(
                %secondary,
                collection = %collection.id,
                status = response.status().as_u16(),
                "canary read refused by the secondary; the primary answers"
            );
            plane.shadow.canary(&collection, CanaryOutcome::Fallback);
            None
        }
        Err(error) => {
            tracing::warn!(%error, collection = %collection.id, "canary read failed; the primary answers");
            plane
                .metrics
                .backend_errors
                .with_label_values(&[secondary.as_str(), error.label()])
                .inc();
            plane.shadow.canary(&collection, CanaryOutcome::Fallback);
            None
        }
    }
}

/// Sends the shadow of a read to the secondary now, when the secondary can answer it
/// truthfully; counts it as skipped or dropped otherwise.
fn start_shadow(
    plane: &DataPlaneState,
    read: ShadowedRead,
    entry: &CollectionEntry,
    primary: BackendName,
    secondary: BackendName,
    request: &BufferedRequest,
) -> Option<PrimaryHandoff> {
    let collection = CollectionRef::of(entry);
    let Some(id) = entry.id_on(secondary) else {
        plane.shadow.skip(&collection, read, SkipReason::Unmapped);
        return None;
    };
    if plane.waits_in_journal(secondary, &entry.client_id) {
        plane.shadow.skip(&collection, read, SkipReason::Lagging);
        return None;
    }
    let path = backend_path(plane, secondary, request, Some(id));
    plane.shadow.start(
        Arc::clone(&plane.resolver.backends),
        ShadowRequest {
            collection,
            read,
            primary,
            secondary,
            method: request.method.clone(),
            path,
            headers: request.headers.clone(),
            body: request.body.clone(),
            caller: request.caller.clone(),
        },
    )
}

/// The primary's answer to a shadowed read: read whole, handed to the shadow, and given to
/// the client without waiting for the comparison.
async fn answer_shadowed(
    primary: BackendName,
    response: Response<crate::driven::DrivenBody>,
    shadow: PrimaryHandoff,
) -> Result<Answered, ProxyError> {
    let (parts, bytes) = read_whole(primary, response).await?;
    shadow.answered(bytes.clone());
    Ok(Answered {
        response: relay_bytes(parts, bytes),
        backend: primary,
    })
}
