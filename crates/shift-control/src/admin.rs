//! The admin listener's server side, never on the data port (the wire types are in
//! [`crate::api`], the client in [`crate::client`]):
//! - `/metrics`, `/healthz`, `/readyz`, open, for Prometheus and probes;
//! - `/admin/...`, JSON in and out, every call with `Authorization: Bearer <admin token>`:
//!   status, cutover, rollback, write mode, read policy, pause and resume, dead letters (list,
//!   retry, drop), shadow reads.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus::{Encoder, Registry, TextEncoder};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use shift_proxy::shadow::ShadowReads;
use shift_proxy::DataPlaneState;

use crate::admin_auth::AdminAuth;
use crate::api::{
    ApiError, AuditEntries, AuditPage, CollectionLag, DeadLetter, DeadLetterPage, DeadLetterRef,
    DeadLetterSummary, DeadLetters, Direction, Dropped, ErrorKind, JournalLag, Liveness,
    PendingIntents, PerBackend, ReadPolicy, Readiness, ReadinessState, Retried, ShadowDetail,
    StateStatus, Status, SwitchRequest, TopologyChanged, TopologyStatus, WriteModeRequest,
};
use crate::audit::{AuditLog, Outcome};
use crate::audit_layer::{detail_of, guard, with_detail, with_outcome};
use crate::health::HealthBoard;
use crate::switch::{ChangeError, TopologySwitch};

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
    /// The admin tokens and their holders' names; `None` when the admin API is off.
    pub auth: Option<AdminAuth>,
    /// Where every admin action is recorded.
    pub audit: Arc<AuditLog>,
    /// The backfill runner, when this process runs one.
    pub backfill: Option<Arc<shift_migrate::backfill::Backfiller>>,
    /// Extra status sections (shadow reads, backfill, replay), each filling its own part of
    /// [`Status`].
    pub sections: Arc<Vec<Arc<dyn StatusSection>>>,
    /// Ends the migration after a cutover (`/admin/finalize`), when this process runs it.
    pub finalize: Option<Arc<crate::finalize::Finalizer>>,
}

/// A part of `/admin/status` owned by another component.
pub trait StatusSection: Send + Sync + std::fmt::Debug {
    /// Writes this component's part of the status.
    fn fill(&self, status: &mut Status);
}

/// Shadow and canary reads: totals per collection and the recent mismatches.
#[derive(Debug)]
struct ShadowStatus(Arc<ShadowReads>);

impl StatusSection for ShadowStatus {
    fn fill(&self, status: &mut Status) {
        status.shadow = Some(self.0.status());
    }
}

/// The `shadow` section of `/admin/status`.
pub fn shadow_section(plane: &DataPlaneState) -> Arc<dyn StatusSection> {
    Arc::new(ShadowStatus(plane.shadow_reads().clone()))
}

/// The replay of each target: running or stopped (and why), what waits for a retry.
#[derive(Debug)]
struct ReplayStatus(Arc<shift_proxy::replay::ReplayBoard>);

impl StatusSection for ReplayStatus {
    fn fill(&self, status: &mut Status) {
        status.replay = Some(self.0.status());
    }
}

/// The `replay` section of `/admin/status`.
pub fn replay_section(board: Arc<shift_proxy::replay::ReplayBoard>) -> Arc<dyn StatusSection> {
    Arc::new(ReplayStatus(board))
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
        .merge(crate::finalize_api::routes())
        .route("/admin/shadow", get(shadow))
        .route("/admin/audit", get(audit_entries));
    let admin = guard(admin, state.auth.clone(), state.audit.clone());
    let router = if state.auth.is_some() {
        open.merge(admin)
    } else {
        open
    };
    let router = router.merge(crate::ui::routes());
    router.fallback(not_found).with_state(state)
}

/// An answer with `body` as JSON.
pub(crate) fn reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (status, Json(body)).into_response()
}

/// An error answer in the admin API's shape.
pub(crate) fn error(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Response {
    let body = ApiError {
        error: kind,
        message: message.into(),
    };
    reply(status, &body)
}

/// A failure inside the proxy.
pub(crate) fn internal(e: impl std::fmt::Display) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::InternalError,
        e.to_string(),
    )
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut buffer) {
        Ok(()) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            buffer,
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

/// Alive: the process answers.
async fn healthz() -> Response {
    let alive = Liveness {
        status: "ok".to_owned(),
    };
    reply(StatusCode::OK, &alive)
}

/// Ready: the primary's last heartbeat succeeded and the state store can journal a write (its
/// disk can be written and the journal is under its cap). The secondary's health is shown but
/// does not decide, since writes to it can wait in the journal.
async fn readyz(State(state): State<AdminState>) -> Response {
    let primary = state.plane.topology().primary;
    let backends = PerBackend::from_fn(|name| (*state.health.get(name)).clone());
    let primary_up = backends.get(primary).up;
    let store = state.plane.state_health();
    let store_refusal = store.check().err().map(|e| e.to_string());
    let ready = primary_up && store_refusal.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready,
        primary,
        backends,
        state: ReadinessState {
            writable: store.unwritable.is_none(),
            journal_bytes: store.journal_bytes,
            max_journal_bytes: store.max_journal_bytes,
            reason: store_refusal,
        },
    };
    reply(status, &body)
}

async fn status(State(state): State<AdminState>) -> Response {
    let topology = state.plane.topology();
    let now = shift_proxy::replay::now_ms();
    let age = |oldest: u64| now.saturating_sub(oldest) as f64 / 1000.0;
    let journal = PerBackend::from_fn(|target| {
        let lag = state.plane.lag(target);
        JournalLag {
            entries: lag.entries,
            oldest_age_s: lag.oldest_created_ms.map(age),
            collections: lag
                .collections
                .iter()
                .map(|(key, c)| {
                    let name = state.plane.collection(key).map(|e| e.name.clone());
                    let lag = CollectionLag {
                        entries: c.entries,
                        oldest_age_s: age(c.oldest_created_ms),
                        name,
                    };
                    (key.clone(), lag)
                })
                .collect(),
        }
    });
    let first = state
        .plane
        .dead_letters(None, 20)
        .unwrap_or_default()
        .into_iter()
        .map(|d| DeadLetterRef {
            seq: d.seq.0,
            target: d.target,
            collection: d.collection,
            reason: d.reason,
            parked_ms: Some(d.parked_ms),
        })
        .collect();
    let mut body = Status {
        topology: TopologyStatus::from(&*topology),
        backends: PerBackend::from_fn(|name| (*state.health.get(name)).clone()),
        journal,
        writes_held: state.plane.writes_held(),
        // Writes whose intent is recorded and not yet settled: being settled by their task
        // now, or orphans the sweeper settles (the state store could not write).
        pending_intents: PendingIntents {
            settling: state.plane.settling(),
            recorded: state.plane.recorded_intents(),
        },
        dead_letters: DeadLetterSummary {
            count: state.plane.dead_letter_count(),
            first,
        },
        state: StateStatus::from(&state.plane.state_health()),
        collections: state.plane.collection_count(),
        shadow: None,
        replay: None,
        backfill: None,
        finalize: None,
        // The newest admin actions; the whole log is `GET /admin/audit`.
        audit: state.audit.recent(STATUS_AUDIT_ENTRIES).ok(),
    };
    for section in state.sections.iter() {
        section.fill(&mut body);
    }
    reply(StatusCode::OK, &body)
}

/// How many of the newest audit entries `/admin/status` shows.
const STATUS_AUDIT_ENTRIES: usize = 10;

/// `GET /admin/audit?limit=N`: the newest admin actions, newest first.
async fn audit_entries(State(state): State<AdminState>, Query(page): Query<AuditPage>) -> Response {
    let limit = page.limit.unwrap_or(100).min(state.audit.keep());
    match state.audit.recent(limit) {
        Ok(entries) => reply(StatusCode::OK, &AuditEntries { entries }),
        Err(e) => internal(e),
    }
}

/// A body that may be empty: the default request then.
pub(crate) fn optional_body<T: Default + DeserializeOwned>(body: &Bytes) -> serde_json::Result<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
}

async fn switch(state: AdminState, direction: Direction, body: Bytes) -> Response {
    let request: SwitchRequest = match optional_body(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorKind::InvalidArgumentError,
                format!("invalid body: {e}"),
            )
        }
    };
    let detail = detail_of(&request);
    let answer = match state.switch.switch(direction, request).await {
        // A refusal is an answer, not a failure of the API: 409 says "not now".
        Ok(report) => match &report.refused {
            Some(reason) => with_outcome(
                reply(StatusCode::CONFLICT, &report),
                Outcome::Refused(reason.clone()),
            ),
            None => reply(StatusCode::OK, &report),
        },
        Err(e) => internal(e),
    };
    with_detail(answer, detail)
}

async fn cutover(State(state): State<AdminState>, body: Bytes) -> Response {
    switch(state, Direction::Cutover, body).await
}

async fn rollback(State(state): State<AdminState>, body: Bytes) -> Response {
    switch(state, Direction::Rollback, body).await
}

fn changed(result: Result<Arc<shift_proxy::topology::Topology>, ChangeError>) -> Response {
    match result {
        Ok(topology) => {
            let body = TopologyChanged {
                topology: (*topology).clone(),
            };
            reply(StatusCode::OK, &body)
        }
        Err(ChangeError::Refused(reason)) => error(
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidArgumentError,
            reason,
        ),
        Err(e) => internal(e),
    }
}

/// After a finalize nothing reaches the retired store: no sync writes, no canary or shadow reads.
fn refused_when_finalized(state: &AdminState, what: &str) -> Option<Response> {
    state.plane.topology().mirror_stopped.then(|| {
        error(
            StatusCode::CONFLICT,
            ErrorKind::ConflictError,
            format!("the migration is finalized: {what} would reach the retired store"),
        )
    })
}

async fn write_mode(State(state): State<AdminState>, body: Bytes) -> Response {
    match serde_json::from_slice::<WriteModeRequest>(&body) {
        Ok(request) if request.mode == shift_config::MirrorMode::Sync => {
            match refused_when_finalized(&state, "sync writes") {
                Some(refusal) => with_detail(refusal, detail_of(&request)),
                None => with_detail(
                    changed(state.switch.set_mode(request.mode).await),
                    detail_of(&request),
                ),
            }
        }
        Ok(request) => with_detail(
            changed(state.switch.set_mode(request.mode).await),
            detail_of(&request),
        ),
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidArgumentError,
            format!("expected {{\"mode\": \"journaled\" | \"sync\"}}: {e}"),
        ),
    }
}

async fn read_policy(State(state): State<AdminState>, body: Bytes) -> Response {
    match serde_json::from_slice::<ReadPolicy>(&body) {
        Ok(policy) if policy != ReadPolicy::default() => {
            match refused_when_finalized(&state, "canary or shadow reads") {
                Some(refusal) => with_detail(refusal, detail_of(&policy)),
                None => with_detail(
                    changed(state.switch.set_reads(policy).await),
                    detail_of(&policy),
                ),
            }
        }
        Ok(policy) => with_detail(
            changed(state.switch.set_reads(policy).await),
            detail_of(&policy),
        ),
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidArgumentError,
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

async fn dead_letters(
    State(state): State<AdminState>,
    Query(page): Query<DeadLetterPage>,
) -> Response {
    let limit = page.limit.unwrap_or(100).min(1000);
    match state
        .plane
        .dead_letters(page.after.map(shift_state::Seq), limit)
    {
        Ok(letters) => {
            let body = DeadLetters {
                dead_letters: letters.into_iter().map(DeadLetter::from).collect(),
            };
            reply(StatusCode::OK, &body)
        }
        Err(e) => internal(e),
    }
}

/// The admin API's answer to a dead-letter route whose seq is not a number.
fn bad_dead_letter_seq(raw: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        ErrorKind::InvalidArgumentError,
        format!("a dead letter's seq is a positive integer, got {raw:?}"),
    )
}

/// A store error of the dead-letter routes in the admin API's error shape.
fn dead_letter_error(e: shift_state::StoreError) -> Response {
    match e {
        shift_state::StoreError::UnknownDeadLetter(_) => error(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFoundError,
            e.to_string(),
        ),
        e if e.is_retryable_unavailable() => {
            let mut answer = error(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Unavailable,
                e.to_string(),
            );
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            answer
        }
        e => internal(e),
    }
}

/// The dead letter `seq`, for the operator's record of what is re-driven or dropped.
fn find_dead_letter(
    state: &AdminState,
    seq: shift_state::Seq,
) -> Result<shift_state::DeadLetter, shift_state::StoreError> {
    let after = seq.0.checked_sub(1).map(shift_state::Seq);
    state
        .plane
        .dead_letters(after, 1)?
        .into_iter()
        .find(|letter| letter.seq == seq)
        .ok_or(shift_state::StoreError::UnknownDeadLetter(seq))
}

/// Puts a dead letter back at the end of its target's journal, for the replay to try again.
async fn retry_dead_letter(State(state): State<AdminState>, Path(raw): Path<String>) -> Response {
    with_detail(
        redrive(&state, &raw).await,
        format!("seq={}", raw.chars().take(40).collect::<String>()),
    )
}

async fn redrive(state: &AdminState, raw: &str) -> Response {
    let Ok(seq) = raw.parse().map(shift_state::Seq) else {
        return bad_dead_letter_seq(raw);
    };
    let letter = match find_dead_letter(state, seq) {
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
            let body = Retried {
                retried: DeadLetterRef {
                    seq: seq.0,
                    target: letter.target,
                    collection: letter.collection,
                    reason: letter.reason,
                    parked_ms: None,
                },
                journal_seq: requeued.0,
            };
            reply(StatusCode::OK, &body)
        }
        Err(e) => dead_letter_error(e),
    }
}

/// Deletes a dead letter for good; logged as an operator action with what was dropped.
async fn drop_dead_letter(State(state): State<AdminState>, Path(raw): Path<String>) -> Response {
    with_detail(
        drop_letter(&state, &raw).await,
        format!("seq={}", raw.chars().take(40).collect::<String>()),
    )
}

async fn drop_letter(state: &AdminState, raw: &str) -> Response {
    let Ok(seq) = raw.parse().map(shift_state::Seq) else {
        return bad_dead_letter_seq(raw);
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
            let body = Dropped {
                dropped: DeadLetter::from(letter),
            };
            reply(StatusCode::OK, &body)
        }
        Err(e) => dead_letter_error(e),
    }
}

/// Shadow and canary reads, with every mismatch sample kept and the read policy in force.
async fn shadow(State(state): State<AdminState>) -> Response {
    let report = match state.plane.shadow_reads().detail() {
        Value::Object(report) => report,
        other => return internal(format!("the shadow report is not an object: {other}")),
    };
    let body = ShadowDetail {
        report,
        read_policy: state.plane.topology().reads,
    };
    reply(StatusCode::OK, &body)
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        ErrorKind::NotFoundError,
        "No such admin route",
    )
}
