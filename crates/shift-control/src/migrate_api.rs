//! The migration endpoints: `/admin/backfill` starts a backfill inside the proxy, follows it,
//! cancels it; `/admin/repair` queues reconciliations of diverged records that `verify` found.
//! Their wire types are in [`crate::api`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use shift_migrate::backfill::Backfiller;

use crate::admin::{error, internal, optional_body, reply, AdminState, StatusSection};
use crate::api::{BackfillRequest, ErrorKind, RepairQueued, RepairRequest, Status};
use crate::audit_layer::{detail_of, with_detail};

/// The backfill routes (behind the admin token, like every `/admin` route).
pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/admin/backfill", get(progress).post(start))
        .route("/admin/backfill/cancel", post(cancel))
        .route("/admin/repair", post(repair))
}

/// Queues a reconciliation of `ids` for the secondary, in the journal: ordered with live
/// writes, applied under the records' order locks by the replay worker.
///
/// The append passes the write gate and reads the topology under its pass, like a client
/// write: a switch waits for it (and drains it) or holds it until the new topology is in,
/// so the reconciliation always goes to the store that is secondary when it is applied and
/// copies from the primary. Without the gate, one queued for the old secondary just after a
/// cutover would land in the new primary's journal and copy the old store's records into it.
async fn repair(State(state): State<AdminState>, body: Bytes) -> Response {
    let request: RepairRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidArgumentError,
                format!("expected {{\"collection\": id, \"ids\": [...]}}: {e}"),
            )
        }
    };
    // The ids may be many: the detail names how many.
    let detail = format!(
        "collection={} ids={}",
        request.collection,
        request.ids.len()
    );
    if state.plane.collection(&request.collection).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFoundError,
            format!(
                "collection {} is not in the collection map",
                request.collection
            ),
        );
    }
    let _pass = state.plane.pass_gate().await;
    let secondary = state.plane.topology().secondary();
    let entries: Vec<shift_state::NewEntry> = request
        .ids
        .chunks(1000)
        .map(|ids| {
            let op = shift_proxy::mirror::MirrorOp::Reconcile {
                collection: request.collection.clone().into(),
                ids: ids.to_vec(),
            };
            shift_state::NewEntry {
                target: secondary,
                collection: op.lag_key(),
                payload: op.to_bytes(),
            }
        })
        .collect();
    let queued = RepairQueued {
        queued_entries: entries.len(),
        ids: request.ids.len(),
        target: secondary,
    };
    let answer = match state.plane.append_journal(entries).await {
        Ok(_) => reply(StatusCode::ACCEPTED, &queued),
        Err(e) => internal(e),
    };
    with_detail(answer, detail)
}

fn no_backfill() -> Response {
    error(
        StatusCode::NOT_FOUND,
        ErrorKind::NotFoundError,
        "no backfill in this process",
    )
}

async fn start(State(state): State<AdminState>, body: Bytes) -> Response {
    let Some(backfiller) = &state.backfill else {
        return no_backfill();
    };
    let request: BackfillRequest = match optional_body(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidArgumentError,
                format!("invalid backfill request: {e}"),
            )
        }
    };
    let detail = detail_of(&request);
    if state.plane.topology().mirror_stopped {
        let refusal = error(
            StatusCode::CONFLICT,
            ErrorKind::ConflictError,
            "the migration is finalized: a backfill would write to the retired store",
        );
        return with_detail(refusal, detail);
    }
    let answer = match backfiller.start(request) {
        Ok(progress) => reply(StatusCode::ACCEPTED, &progress),
        Err(e) => error(
            StatusCode::CONFLICT,
            ErrorKind::ConflictError,
            e.to_string(),
        ),
    };
    with_detail(answer, detail)
}

async fn progress(State(state): State<AdminState>) -> Response {
    match &state.backfill {
        Some(b) => reply(StatusCode::OK, &b.progress()),
        None => no_backfill(),
    }
}

async fn cancel(State(state): State<AdminState>) -> Response {
    match &state.backfill {
        Some(b) => {
            b.cancel();
            reply(StatusCode::OK, &b.progress())
        }
        None => no_backfill(),
    }
}

/// The backfill's part of `/admin/status`.
#[derive(Debug)]
pub struct BackfillSection(pub Arc<Backfiller>);

impl StatusSection for BackfillSection {
    fn fill(&self, status: &mut Status) {
        status.backfill = Some(self.0.progress());
    }
}
