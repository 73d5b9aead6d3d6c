//! The migration endpoints: `/admin/backfill` starts a backfill inside the proxy, follows it,
//! cancels it; `/admin/repair` queues reconciliations of diverged records that `verify` found.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use shift_migrate::backfill::{BackfillRequest, Backfiller};

use crate::admin::{AdminState, StatusSection};

/// The backfill routes (behind the admin token, like every `/admin` route).
pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/admin/backfill", get(progress).post(start))
        .route("/admin/backfill/cancel", post(cancel))
        .route("/admin/repair", post(repair))
}

/// Records to bring in line on the secondary.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RepairRequest {
    /// The client's collection id.
    collection: String,
    /// Ids to make the secondary match the primary on: copied where the primary has them,
    /// deleted where it does not.
    ids: Vec<String>,
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
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "InvalidArgumentError", "message": format!("expected {{\"collection\": id, \"ids\": [...]}}: {e}")})),
            )
                .into_response()
        }
    };
    if state.plane.collection(&request.collection).is_none() {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "NotFoundError", "message": format!("collection {} is not in the collection map", request.collection)})),
        )
            .into_response();
    }
    let _pass = state.plane.pass_gate().await;
    let secondary = state.plane.topology().secondary();
    let entries: Vec<shift_store::NewEntry> = request
        .ids
        .chunks(1000)
        .map(|ids| {
            let op = shift_proxy::mirror::MirrorOp::Reconcile {
                collection: request.collection.clone().into(),
                ids: ids.to_vec(),
            };
            shift_store::NewEntry {
                target: secondary,
                collection: op.lag_key(),
                payload: op.to_bytes(),
            }
        })
        .collect();
    let queued = entries.len();
    match state.plane.append_journal(entries).await {
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(json!({"queued_entries": queued, "ids": request.ids.len(), "target": secondary})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "InternalError", "message": e.to_string()})),
        )
            .into_response(),
    }
}

fn no_backfill() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "NotFoundError", "message": "no backfill in this process"})),
    )
        .into_response()
}

async fn start(State(state): State<AdminState>, body: Bytes) -> Response {
    let Some(backfiller) = &state.backfill else {
        return no_backfill();
    };
    let request: BackfillRequest = if body.iter().all(u8::is_ascii_whitespace) {
        BackfillRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": "InvalidArgumentError", "message": format!("invalid backfill request: {e}")})),
                )
                    .into_response()
            }
        }
    };
    match backfiller.start(request) {
        Ok(progress) => (StatusCode::ACCEPTED, Json(progress)).into_response(),
        Err(e) => (
            StatusCode::CONFLICT,
            Json(json!({"error": "ConflictError", "message": e.to_string()})),
        )
            .into_response(),
    }
}

async fn progress(State(state): State<AdminState>) -> Response {
    match &state.backfill {
        Some(b) => Json(b.progress()).into_response(),
        None => no_backfill(),
    }
}

async fn cancel(State(state): State<AdminState>) -> Response {
    match &state.backfill {
        Some(b) => {
            b.cancel();
            Json(b.progress()).into_response()
        }
        None => no_backfill(),
    }
}

/// The backfill's part of `/admin/status`.
#[derive(Debug)]
pub struct BackfillSection(pub Arc<Backfiller>);

impl StatusSection for BackfillSection {
    fn status(&self) -> Value {
        serde_json::to_value(self.0.progress()).unwrap_or(Value::Null)
    }
}
