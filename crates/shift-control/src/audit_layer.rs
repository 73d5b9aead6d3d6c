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

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;

use crate::admin::{internal, AdminState};
use crate::admin_auth::Actor;
use crate::api::ApiError;
use crate::audit::Outcome;

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

/// Records the admin action of a changing call (see the module's doc).
pub(crate) async fn audit(
    State(state): State<AdminState>,
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
        if let Err(error) = state.audit.record(&actor, &action, detail.0, outcome).await {
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
