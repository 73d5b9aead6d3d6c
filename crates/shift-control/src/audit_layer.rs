//! Every admin action goes into the audit log, by one layer rather than by each handler: a
//! call to an `/admin` route that changes something (any method but `GET` and `HEAD`) is run
//! on a task of its own, so a caller that hangs up stops neither the action nor its record,
//! and when it ends the log gets
//! - who: the [`Actor`] that `authorize` found;
//! - what: the action, named from the route (`/admin/cutover` is `cutover`,
//!   `/admin/dead-letters/{seq}/retry` is `dead-letters-retry`);
//! - the detail: what the handler put in its answer's extensions as an [`AuditDetail`] (its
//!   parameters, short and free of secrets);
//! - the outcome: an [`Outcome`] the handler put in its answer's extensions, else read from the
//!   answer: 2xx done, 4xx refused and 5xx failed, with the message of the error answer.
//!
//! The entry is durable before the caller hears the answer. When the state store cannot take
//! it, the answer stays what it was (the action happened) and carries
//! `x-chroma-shift-audit: not-recorded`; the log line under the `audit` target is written
//! either way.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;

use crate::admin::internal;
use crate::admin_auth::{authorize, Actor, AdminAuth};
use crate::api::ApiError;
use crate::audit::{AuditLog, Outcome};

/// The detail of an admin action, put by its handler in its answer's extensions.
#[derive(Debug, Clone, Default)]
pub struct AuditDetail(pub String);

/// Adds the detail of the action to its answer.
pub(crate) fn with_detail(mut response: Response, detail: impl Into<String>) -> Response {
    response.extensions_mut().insert(AuditDetail(detail.into()));
    response
}

/// A request as the detail of its action: its compact JSON, without the fields left unset
/// (`null`, `[]`).
pub(crate) fn detail_of<T: serde::Serialize>(request: &T) -> String {
    let mut value = serde_json::to_value(request).unwrap_or_default();
    if let serde_json::Value::Object(fields) = &mut value {
        fields.retain(|_, field| {
            !field.is_null() && field.as_array().is_none_or(|list| !list.is_empty())
        });
    }
    value.to_string()
}

/// The header an answer carries when its action could not be recorded.
pub const AUDIT_HEADER: &str = "x-chroma-shift-audit";

/// The longest error message kept in an entry.
const MAX_REASON: usize = 500;

/// The two layers every `/admin` route passes: `authorize` (outer) finds who calls, then
/// [`audit`] records what the call changed; a call refused for its token is not an action (it
/// is counted and logged by `authorize`).
pub(crate) fn guard<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    auth: Option<AdminAuth>,
    log: Arc<AuditLog>,
) -> Router<S> {
    routes
        .route_layer(middleware::from_fn_with_state(log, audit))
        .route_layer(middleware::from_fn_with_state(auth, authorize))
}

/// Records the admin action of a changing call (see the module's doc).
pub(crate) async fn audit(
    State(log): State<Arc<AuditLog>>,
    request: Request,
    next: Next,
) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let action = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |p| action_name(p.as_str()),
    );
    let actor = request
        .extensions()
        .get::<Actor>()
        .map_or_else(|| "unknown".to_owned(), |actor| actor.0.to_string());
    let task = tokio::spawn(async move {
        let response = next.run(request).await;
        let detail = response
            .extensions()
            .get::<AuditDetail>()
            .cloned()
            .unwrap_or_default();
        let (outcome, mut response) = outcome(response).await;
        if let Err(error) = log.record(&actor, &action, detail.0, outcome).await {
            tracing::error!(
                target: "audit",
                %error,
                actor,
                action,
                "the admin action is not in the audit log: the state store did not take it"
            );
            response
                .headers_mut()
                .insert(AUDIT_HEADER, HeaderValue::from_static("not-recorded"));
        }
        response
    });
    match task.await {
        Ok(response) => response,
        Err(error) => internal(format!("the admin action stopped unexpectedly: {error}")),
    }
}

/// `/admin/dead-letters/{seq}/retry` is `dead-letters-retry`: the route's fixed segments after
/// `/admin`, joined by `-`.
fn action_name(route: &str) -> String {
    route
        .trim_start_matches("/admin")
        .split('/')
        .filter(|segment| !segment.is_empty() && !segment.starts_with('{'))
        .collect::<Vec<_>>()
        .join("-")
}

/// How the action ended, and the answer to send on (rebuilt when its body was read).
async fn outcome(response: Response) -> (Outcome, Response) {
    if let Some(outcome) = response.extensions().get::<Outcome>() {
        return (outcome.clone(), response);
    }
    let status = response.status();
    if status.is_success() || status.is_informational() || status.is_redirection() {
        return (Outcome::Done, response);
    }
    let (parts, body) = response.into_parts();
    // The admin API's answers are built whole in memory: reading one takes nothing more, and
    // no limit can cut an answer short on its way to the caller.
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut reason = serde_json::from_slice::<ApiError>(&bytes)
        .map(|e| e.message)
        .unwrap_or_else(|_| status.to_string());
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    let outcome = if status.is_server_error() {
        Outcome::Failed(reason)
    } else {
        Outcome::Refused(reason)
    };
    (outcome, Response::from_parts(parts, Body::from(bytes)))
}

/// Adds the outcome of the action to its answer, for an answer whose status does not say it
/// (a refusal answered with a report, not an error).
pub(crate) fn with_outcome(mut response: Response, outcome: Outcome) -> Response {
    response.extensions_mut().insert(outcome);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    /// An error answer in the admin API's shape.
    fn answer(status: StatusCode, message: &str) -> Response {
        crate::admin::error(status, crate::api::ErrorKind::InvalidArgumentError, message)
    }

    /// The admin router's layers around stand-in handlers, without a socket; calls come from
    /// 10.0.0.9.
    async fn guarded() -> (Router, Arc<AuditLog>, tempfile::TempDir) {
        use axum::extract::ConnectInfo;
        use axum::extract::Path;
        use axum::response::IntoResponse;
        use axum::routing::{get, post};

        let dir = tempfile::tempdir().unwrap();
        let store = shift_state::StateStore::open(dir.path()).await.unwrap();
        let log = Arc::new(AuditLog::new(store, 100));
        let tokens = vec![
            (
                "alice".to_owned(),
                shift_config::Secret::new("tok-a".into()),
            ),
            ("ci".to_owned(), shift_config::Secret::new("tok-c".into())),
        ];
        let limits = crate::admin_auth::FailureLimits {
            limit: 2,
            window: std::time::Duration::from_secs(60),
            peers: 10,
        };
        let routes = Router::new()
            .route(
                "/admin/things/{id}/poke",
                post(|Path(id): Path<String>| async move {
                    with_detail(StatusCode::OK.into_response(), format!("id={id}"))
                }),
            )
            .route(
                "/admin/refuse",
                post(|| async {
                    let kind = crate::api::ErrorKind::ConflictError;
                    crate::admin::error(StatusCode::CONFLICT, kind, "not now")
                }),
            )
            .route("/admin/look", get(|| async { StatusCode::OK }))
            .route(
                "/admin/slow",
                post(|| async {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    StatusCode::OK
                }),
            );
        let auth = AdminAuth::new(tokens, limits);
        // What `into_make_service_with_connect_info` puts in every request.
        let peer = ConnectInfo(std::net::SocketAddr::from(([10, 0, 0, 9], 4000)));
        let router = guard(routes, Some(auth), log.clone()).layer(axum::Extension(peer));
        (router, log, dir)
    }

    async fn call(router: &Router, method: &str, path: &str, token: &str) -> Response {
        use tower::ServiceExt;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        router.clone().oneshot(request).await.unwrap()
    }

    /// Actor, action, detail and outcome of each entry, oldest first.
    fn entries(log: &AuditLog) -> Vec<(String, String, String, Outcome)> {
        let mut rows: Vec<_> = log
            .recent(100)
            .unwrap()
            .into_iter()
            .map(|e| (e.actor, e.action, e.detail, e.outcome))
            .collect();
        rows.reverse();
        rows
    }

    fn row(
        actor: &str,
        action: &str,
        detail: &str,
        outcome: Outcome,
    ) -> (String, String, String, Outcome) {
        (actor.into(), action.into(), detail.into(), outcome)
    }

    #[tokio::test]
    async fn changing_calls_are_recorded_by_actor_and_reads_and_refused_logins_are_not() {
        let (router, log, _dir) = guarded().await;
        assert_eq!(
            call(&router, "POST", "/admin/things/7/poke", "tok-a")
                .await
                .status(),
            200
        );
        assert_eq!(
            call(&router, "GET", "/admin/look", "tok-a").await.status(),
            200
        );
        assert_eq!(
            call(&router, "POST", "/admin/refuse", "tok-c")
                .await
                .status(),
            409
        );
        assert_eq!(
            call(&router, "POST", "/admin/refuse", "nope")
                .await
                .status(),
            401
        );
        assert_eq!(
            entries(&log),
            [
                row("alice", "things-poke", "id=7", Outcome::Done),
                row("ci", "refuse", "", Outcome::Refused("not now".into())),
            ]
        );
        // Past the limit the peer is refused, right token or not, and nothing is recorded.
        assert_eq!(
            call(&router, "POST", "/admin/refuse", "nope")
                .await
                .status(),
            401
        );
        let limited = call(&router, "POST", "/admin/things/8/poke", "tok-a").await;
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after = limited.headers()["retry-after"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            retry_after
                .parse::<u64>()
                .is_ok_and(|s| (1..=60).contains(&s)),
            "{retry_after}"
        );
        assert_eq!(entries(&log).len(), 2);
    }

    #[tokio::test]
    async fn an_action_whose_caller_hangs_up_still_ends_and_is_recorded() {
        let (router, log, _dir) = guarded().await;
        let gone = std::time::Duration::from_millis(20);
        let call = tokio::time::timeout(gone, call(&router, "POST", "/admin/slow", "tok-c"));
        assert!(call.await.is_err(), "the caller hung up first");
        // Bounded only to turn a hang into a failure.
        for _ in 0..500 {
            if !entries(&log).is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(entries(&log), [row("ci", "slow", "", Outcome::Done)]);
    }

    #[test]
    fn a_detail_leaves_out_what_was_not_set() {
        let request = serde_json::json!({"tenant": null, "collections": [], "restart": false});
        assert_eq!(detail_of(&request), r#"{"restart":false}"#);
        assert_eq!(detail_of(&"plain"), r#""plain""#);
    }

    #[test]
    fn actions_are_named_from_their_routes() {
        assert_eq!(action_name("/admin/cutover"), "cutover");
        assert_eq!(
            action_name("/admin/dead-letters/{seq}/retry"),
            "dead-letters-retry"
        );
        assert_eq!(action_name("/admin/backfill/cancel"), "backfill-cancel");
    }

    #[tokio::test]
    async fn outcomes_come_from_the_status_and_the_error_message() {
        let (done, _) = outcome(answer(StatusCode::OK, "fine")).await;
        assert_eq!(done, Outcome::Done);
        let (refused, kept) = outcome(answer(StatusCode::NOT_FOUND, "no such seq")).await;
        assert_eq!(refused, Outcome::Refused("no such seq".into()));
        let body = axum::body::to_bytes(kept.into_body(), 1024).await.unwrap();
        assert!(
            String::from_utf8_lossy(&body).contains("no such seq"),
            "the answer's body is passed on"
        );
        let (failed, _) = outcome(answer(StatusCode::INTERNAL_SERVER_ERROR, "disk")).await;
        assert_eq!(failed, Outcome::Failed("disk".into()));
        let stated = with_outcome(
            answer(StatusCode::CONFLICT, "report"),
            Outcome::Refused("lag".into()),
        );
        assert_eq!(outcome(stated).await.0, Outcome::Refused("lag".into()));
        let long = "x".repeat(2000);
        let (Outcome::Refused(cut), _) = outcome(answer(StatusCode::BAD_REQUEST, &long)).await
        else {
            panic!("a 400 is a refusal");
        };
        assert!(cut.len() <= MAX_REASON + '…'.len_utf8());
    }
}
