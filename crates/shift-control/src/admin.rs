//! The admin listener: `/metrics`, `/healthz`, `/readyz`. Never on the data port.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::json;
use shift_config::BackendName;

use crate::health::HealthBoard;

/// What the admin handlers read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Every metric of the process.
    pub registry: Registry,
    /// The backends' latest heartbeats.
    pub health: Arc<HealthBoard>,
    /// The store that serves traffic; readiness follows its health.
    pub primary: BackendName,
}

/// The admin router, callable in tests without a socket.
pub fn app(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut buffer) {
        Ok(()) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            buffer,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "InternalError", "message": e.to_string()})),
        )
            .into_response(),
    }
}

/// Alive: the process answers.
async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Ready: the primary's last heartbeat succeeded. The secondary's health is shown but does not
/// decide, since writes to it can wait in the journal.
async fn readyz(State(state): State<AdminState>) -> Response {
    let old = state.health.get(BackendName::Old);
    let new = state.health.get(BackendName::New);
    let ready = match state.primary {
        BackendName::Old => old.up,
        BackendName::New => new.up,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "primary": state.primary,
        "backends": {"old": *old, "new": *new},
    });
    (status, Json(body)).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "NotFoundError", "message": "No such admin route"})),
    )
        .into_response()
}
