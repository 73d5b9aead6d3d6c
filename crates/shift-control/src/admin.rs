//! The admin listener, never on the data port:
//! - `/metrics`, `/healthz`, `/readyz`, open, for Prometheus and probes;
//! - `/admin/...`, JSON in and out, every call with `Authorization: Bearer <admin token>`:
//!   status, cutover, rollback, write mode, read policy, pause and resume, dead letters (list,
//!   retry, drop), shadow reads.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus::{Encoder, Registry, TextEncoder};
use serde::Deserialize;
use serde_json::{json, Value};
use shift_config::{BackendName, MirrorMode};
use shift_proxy::auth::ClientAuth;
use shift_proxy::shadow::ShadowReads;
use shift_proxy::topology::ReadPolicy;
use shift_proxy::DataPlaneState;

use crate::health::HealthBoard;
use crate::switch::{ChangeError, Direction, SwitchRequest, TopologySwitch};

/// What the admin handlers read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Every metric of the process.
    pub registry: Registry,
    /// The backends' latest heartbeats.
    pub health: Arc<HealthBoard>,
    /// The data plane's shared state: topology, journals, collection map.
    pub plane: Arc<DataPlaneState>,
    /// Every topology change goes through it.
    pub switch: Arc<TopologySwitch>,
    /// The admin token; `None` when the admin API is off.
    pub token: Option<ClientAuth>,
    /// The backfill runner, when this process runs one.
    pub backfill: Option<Arc<shift_migrate::backfill::Backfiller>>,
    /// Extra status sections (shadow reads, backfill), by name.
    pub sections: Arc<Vec<(&'static str, Arc<dyn StatusSection>)>>,
}

/// A part of `/admin/status` owned by another component.
pub trait StatusSection: Send + Sync + std::fmt::Debug {
    fn status(&self) -> Value;
}

/// Shadow and canary reads: totals per collection and the recent mismatches.
#[derive(Debug)]
struct ShadowStatus(Arc<ShadowReads>);

impl StatusSection for ShadowStatus {
    fn status(&self) -> Value {
        self.0.status()
    }
}

/// The `shadow` section of `/admin/status`.
pub fn shadow_section(plane: &DataPlaneState) -> (&'static str, Arc<dyn StatusSection>) {
    (
        "shadow",
        Arc::new(ShadowStatus(plane.shadow_reads().clone())),
    )
}

/// The replay of each target: running or stopped (and why), what waits for a retry.
#[derive(Debug)]
struct ReplayStatus(Arc<shift_proxy::replay::ReplayBoard>);

impl StatusSection for ReplayStatus {
    fn status(&self) -> Value {
        self.0.status()
    }
}

/// The `replay` section of `/admin/status`.
pub fn replay_section(
    board: Arc<shift_proxy::replay::ReplayBoard>,
) -> (&'static str, Arc<dyn StatusSection>) {
    ("replay", Arc::new(ReplayStatus(board)))
}

/// The admin router, callable in tests without a socket.
pub fn app(state: AdminState) -> Router {
    let open = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let admin = Router::new()
        .route("/admin/status", get(status))
        .route("/admin/cutover", post(cutover))
        .route("/admin/rollback", post(rollback))
        .route("/admin/write-mode", post(write_mode))
        .route("/admin/read-policy", post(read_policy))
        .route("/admin/pause", post(pause))
        .route("/admin/resume", post(resume))
        .route("/admin/dead-letters", get(dead_letters))
        .route("/admin/dead-letters/{seq}/retry", post(retry_dead_letter))
        .route("/admin/dead-letters/{seq}/drop", post(drop_dead_letter))
        .merge(crate::migrate_api::routes())
        .route("/admin/shadow", get(shadow))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let router = if state.token.is_some() {
        open.merge(admin)
    } else {
        open
    };
    router.fallback(not_found).with_state(state)
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": kind, "message": message.into()})),
    )
        .into_response()
}

/// Every `/admin` call needs the admin token.
async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            "the admin API is off",
        );
    };
    match token.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => error(StatusCode::UNAUTHORIZED, "AuthError", e.to_string()),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut buffer) {
        Ok(()) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            buffer,
        )
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        ),
    }
}

/// Alive: the process answers.
async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Ready: the primary's last heartbeat succeeded and the state store can journal a write (its
/// disk can be written and the journal is under its cap). The secondary's health is shown but
/// does not decide, since writes to it can wait in the journal.
async fn readyz(State(state): State<AdminState>) -> Response {
    let primary = state.plane.topology().primary;
    let old = state.health.get(BackendName::Old);
    let new = state.health.get(BackendName::New);
    let primary_up = match primary {
        BackendName::Old => old.up,
        BackendName::New => new.up,
    };
    let store = state.plane.state_health();
    let store_refusal = store.check().err().map(|e| e.to_string());
    let ready = primary_up && store_refusal.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "primary": primary,
        "backends": {"old": *old, "new": *new},
        "state": {
            "writable": store.unwritable.is_none(),
            "journal_bytes": store.journal_bytes,
            "max_journal_bytes": store.max_journal_bytes,
            "reason": store_refusal,
        },
    });
    (status, Json(body)).into_response()
}

async fn status(State(state): State<AdminState>) -> Response {
    let topology = state.plane.topology();
    let now = shift_proxy::replay::now_ms();
    let age = |oldest: u64| now.saturating_sub(oldest) as f64 / 1000.0;
    let mut journal = serde_json::Map::new();
    for target in [BackendName::Old, BackendName::New] {
        let lag = state.plane.lag(target);
        let collections: serde_json::Map<String, Value> = lag
            .collections
            .iter()
            .map(|(key, c)| {
                let name = state.plane.collection(key).map(|e| e.name.clone());
                (
                    key.clone(),
                    json!({"entries": c.entries, "oldest_age_s": age(c.oldest_created_ms), "name": name}),
                )
            })
            .collect();
        journal.insert(
            target.as_str().to_owned(),
            json!({
                "entries": lag.entries,
                "oldest_age_s": lag.oldest_created_ms.map(age),
                "collections": collections,
            }),
        );
    }
    let recent: Vec<Value> = state
        .plane
        .dead_letters(None, 20)
        .unwrap_or_default()
        .into_iter()
        .map(|d| json!({"seq": d.seq.0, "target": d.target, "collection": d.collection, "reason": d.reason, "parked_ms": d.parked_ms}))
        .collect();
    let mut body = json!({
        "topology": {
            "epoch": topology.epoch,
            "primary": topology.primary,
            "secondary": topology.secondary(),
            "write_mode": topology.mode,
            "read_policy": topology.reads,
            "paused": topology.paused,
        },
        "backends": {
            "old": *state.health.get(BackendName::Old),
            "new": *state.health.get(BackendName::New),
        },
        "journal": journal,
        "writes_held": state.plane.writes_held(),
        // Writes whose intent is recorded and not yet settled: being settled by their task
        // now, or orphans the sweeper settles (the state store could not write).
        "pending_intents": {
            "settling": state.plane.settling(),
            "recorded": state.plane.recorded_intents(),
        },
        "dead_letters": {"count": state.plane.dead_letter_count(), "first": recent},
        "state": store_state(&state.plane.state_health()),
        "collections": state.plane.collection_count(),
    });
    for (name, section) in state.sections.iter() {
        body[*name] = section.status();
    }
    Json(body).into_response()
}

/// The state store's ability to take writes, for `/admin/status`.
fn store_state(health: &shift_store::StoreHealth) -> Value {
    json!({
        "writable": health.unwritable.is_none(),
        "unwritable_reason": health.unwritable,
        "journal_bytes": health.journal_bytes,
        "max_journal_bytes": health.max_journal_bytes,
        "journal_full": health.journal_full(),
        "pending_intents": health.pending_intents,
    })
}

/// A switch's body may be empty.
fn switch_request(body: &Bytes) -> Result<SwitchRequest, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(SwitchRequest::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))
}

async fn switch(state: AdminState, direction: Direction, body: Bytes) -> Response {
    let request = match switch_request(&body) {
        Ok(request) => request,
        Err(reason) => return error(StatusCode::BAD_REQUEST, "InvalidArgumentError", reason),
    };
    match state.switch.switch(direction, request).await {
        Ok(report) => {
            // A refusal is an answer, not a failure of the API: 409 says "not now".
            let status = if report.refused.is_some() {
                StatusCode::CONFLICT
            } else {
                StatusCode::OK
            };
            (status, Json(report)).into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        ),
    }
}

async fn cutover(State(state): State<AdminState>, body: Bytes) -> Response {
    switch(state, Direction::Cutover, body).await
}

async fn rollback(State(state): State<AdminState>, body: Bytes) -> Response {
    switch(state, Direction::Rollback, body).await
}

fn changed(result: Result<Arc<shift_proxy::topology::Topology>, ChangeError>) -> Response {
    match result {
        Ok(topology) => Json(json!({"topology": *topology})).into_response(),
        Err(ChangeError::Refused(reason)) => {
            error(StatusCode::BAD_REQUEST, "InvalidArgumentError", reason)
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteModeRequest {
    mode: MirrorMode,
}

async fn write_mode(State(state): State<AdminState>, body: Bytes) -> Response {
    match serde_json::from_slice::<WriteModeRequest>(&body) {
        Ok(request) => changed(state.switch.set_mode(request.mode).await),
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            "InvalidArgumentError",
            format!("expected {{\"mode\": \"journaled\" | \"sync\"}}: {e}"),
        ),
    }
}

async fn read_policy(State(state): State<AdminState>, body: Bytes) -> Response {
    match serde_json::from_slice::<ReadPolicy>(&body) {
        Ok(policy) => changed(state.switch.set_reads(policy).await),
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            "InvalidArgumentError",
            format!("expected {{\"canary_percent\": N, \"shadow_percent\": N}}: {e}"),
        ),
    }
}

async fn pause(State(state): State<AdminState>) -> Response {
    changed(state.switch.pause().await)
}

async fn resume(State(state): State<AdminState>) -> Response {
    changed(state.switch.resume().await)
}

#[derive(Debug, Deserialize)]
struct Page {
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn dead_letters(State(state): State<AdminState>, Query(page): Query<Page>) -> Response {
    let limit = page.limit.unwrap_or(100).min(1000);
    match state
        .plane
        .dead_letters(page.after.map(shift_store::Seq), limit)
    {
        Ok(letters) => {
            let letters: Vec<Value> = letters
                .into_iter()
                .map(|d| {
                    json!({
                        "seq": d.seq.0,
                        "target": d.target,
                        "collection": d.collection,
                        "created_ms": d.created_ms,
                        "parked_ms": d.parked_ms,
                        "reason": d.reason,
                        "op": serde_json::from_slice::<Value>(&d.payload).unwrap_or(Value::Null),
                    })
                })
                .collect();
            Json(json!({"dead_letters": letters})).into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        ),
    }
}

/// The admin API's answer to a dead-letter route whose seq is not a number.
fn bad_dead_letter_seq(raw: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "InvalidArgumentError",
        format!("a dead letter's seq is a positive integer, got {raw:?}"),
    )
}

/// A store error of the dead-letter routes in the admin API's error shape.
fn dead_letter_error(e: shift_store::StoreError) -> Response {
    match e {
        shift_store::StoreError::UnknownDeadLetter(_) => {
            error(StatusCode::NOT_FOUND, "NotFoundError", e.to_string())
        }
        e if e.is_retryable_unavailable() => {
            let mut answer = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                e.to_string(),
            );
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            answer
        }
        e => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        ),
    }
}

/// The dead letter `seq`, for the operator's record of what is re-driven or dropped.
fn find_dead_letter(
    state: &AdminState,
    seq: shift_store::Seq,
) -> Result<shift_store::DeadLetter, shift_store::StoreError> {
    let after = seq.0.checked_sub(1).map(shift_store::Seq);
    state
        .plane
        .dead_letters(after, 1)?
        .into_iter()
        .find(|letter| letter.seq == seq)
        .ok_or(shift_store::StoreError::UnknownDeadLetter(seq))
}

/// Puts a dead letter back at the end of its target's journal, for the replay to try again.
async fn retry_dead_letter(State(state): State<AdminState>, Path(raw): Path<String>) -> Response {
    let Ok(seq) = raw.parse().map(shift_store::Seq) else {
        return bad_dead_letter_seq(&raw);
    };
    let letter = match find_dead_letter(&state, seq) {
        Ok(letter) => letter,
        Err(e) => return dead_letter_error(e),
    };
    match state.plane.redrive_dead_letter(seq).await {
        Ok(requeued) => {
            tracing::warn!(
                operator_action = "dead_letter_retry",
                seq = seq.0,
                requeued_as = requeued.0,
                target = %letter.target,
                collection = %letter.collection,
                reason = %letter.reason,
                "an operator re-drove a dead letter: it is back in the journal"
            );
            Json(json!({
                "retried": {"seq": seq.0, "target": letter.target, "collection": letter.collection, "reason": letter.reason},
                "journal_seq": requeued.0,
            }))
            .into_response()
        }
        Err(e) => dead_letter_error(e),
    }
}

/// Deletes a dead letter for good; logged as an operator action with what was dropped.
async fn drop_dead_letter(State(state): State<AdminState>, Path(raw): Path<String>) -> Response {
    let Ok(seq) = raw.parse().map(shift_store::Seq) else {
        return bad_dead_letter_seq(&raw);
    };
    match state.plane.drop_dead_letter(seq).await {
        Ok(letter) => {
            tracing::warn!(
                operator_action = "dead_letter_drop",
                seq = seq.0,
                target = %letter.target,
                collection = %letter.collection,
                reason = %letter.reason,
                created_ms = letter.created_ms,
                parked_ms = letter.parked_ms,
                "an operator dropped a dead letter: this write will not reach its target"
            );
            Json(json!({
                "dropped": {
                    "seq": seq.0,
                    "target": letter.target,
                    "collection": letter.collection,
                    "reason": letter.reason,
                    "created_ms": letter.created_ms,
                    "parked_ms": letter.parked_ms,
                    "op": serde_json::from_slice::<Value>(&letter.payload).unwrap_or(Value::Null),
                }
            }))
            .into_response()
        }
        Err(e) => dead_letter_error(e),
    }
}

/// Shadow and canary reads, with every mismatch sample kept and the read policy in force.
async fn shadow(State(state): State<AdminState>) -> Response {
    let mut body = state.plane.shadow_reads().detail();
    body["read_policy"] = json!(state.plane.topology().reads);
    Json(body).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NotFoundError",
        "No such admin route",
    )
}
