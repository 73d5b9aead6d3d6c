//! The finalize routes (behind the admin token; every POST audited by the audit layer):
//! - `GET /admin/finalize`: the last finalize, the checks as they stand, the last verify;
//! - `POST /admin/finalize`: accept a finalize (202), or refuse it (409) naming the failing
//!   checks;
//! - `POST /admin/finalize/undo`: undo a pending one (409 when none is, or it took effect);
//! - `POST /admin/verify` records a verify's result ([`VerifyResult`]) with its time, which
//!   the finalize's checks read; `GET /admin/verify` answers the last one.
//!
//! Wire types: [`crate::finalize`], re-exported by [`crate::api`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::admin::{error, internal, reply, AdminState, StatusSection};
use crate::api::{ErrorKind, Status};
use crate::audit_layer::{detail_of, with_detail};
use crate::finalize::{FinalizeError, Finalizer, VerifyResult};

/// The finalize and verify-record routes.
pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/admin/finalize", get(status).post(request))
        .route("/admin/finalize/undo", post(undo))
        .route("/admin/verify", get(last_verify).post(record_verify))
}

fn no_finalizer() -> Response {
    error(
        StatusCode::NOT_FOUND,
        ErrorKind::NotFoundError,
        "no finalize in this process",
    )
}

fn answer(
    result: Result<crate::finalize::FinalizeStatus, FinalizeError>,
    ok: StatusCode,
) -> Response {
    match result {
        Ok(status) => reply(ok, &status),
        Err(FinalizeError::Refused(reason)) => {
            error(StatusCode::CONFLICT, ErrorKind::ConflictError, reason)
        }
        Err(e) => internal(e),
    }
}

async fn status(State(state): State<AdminState>) -> Response {
    match state.finalize.as_ref().map(|f| f.status()) {
        Some(Ok(status)) => reply(StatusCode::OK, &status),
        Some(Err(e)) => internal(e),
        None => no_finalizer(),
    }
}

async fn request(State(state): State<AdminState>) -> Response {
    match &state.finalize {
        Some(finalizer) => answer(finalizer.request().await, StatusCode::ACCEPTED),
        None => no_finalizer(),
    }
}

async fn undo(State(state): State<AdminState>) -> Response {
    match &state.finalize {
        Some(finalizer) => answer(finalizer.undo().await, StatusCode::OK),
        None => no_finalizer(),
    }
}

async fn record_verify(State(state): State<AdminState>, body: Bytes) -> Response {
    let Some(finalizer) = &state.finalize else {
        return no_finalizer();
    };
    let result: VerifyResult = match serde_json::from_slice(&body) {
        Ok(result) => result,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidArgumentError,
                format!(
                    "expected a verify result {{\"matches\": bool, \"source\": ..., ...}}: {e}"
                ),
            )
        }
    };
    let detail = detail_of(&result);
    let answer = match finalizer.record_verify(result).await {
        Ok(record) => reply(StatusCode::OK, &record),
        Err(e) => internal(e),
    };
    with_detail(answer, detail)
}

async fn last_verify(State(state): State<AdminState>) -> Response {
    match state.finalize.as_ref().map(|f| f.last_verify()) {
        Some(Ok(Some(record))) => reply(StatusCode::OK, &record),
        Some(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFoundError,
            "no verify recorded",
        ),
        Some(Err(e)) => internal(e),
        None => no_finalizer(),
    }
}

/// The finalize's part of `/admin/status`.
#[derive(Debug)]
pub struct FinalizeSection(pub Arc<Finalizer>);

impl StatusSection for FinalizeSection {
    fn fill(&self, status: &mut Status) {
        status.finalize = self.0.status().ok();
    }
}
