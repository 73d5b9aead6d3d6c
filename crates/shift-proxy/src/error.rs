//! What can go wrong on the request path, who is at fault, and the answer a client gets.
//!
//! Every error the proxy answers itself is mapped here, in one place, to a status and a body in
//! Chroma's error shape.

use std::time::Duration;

use http::{header, Response, StatusCode};
use shift_chroma::error::{kind, ChromaError};
use shift_config::BackendName;

use crate::admission::Refusal;
use crate::body::{self, ProxyBody};

/// An error answered by the proxy instead of a backend.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client sent something the proxy refuses; retrying the same request will not help.
    #[error(transparent)]
    Client(#[from] RefusedRequest),
    /// A backend could not answer; a retry may help.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The proxy's durable state could not be written; a retry may help.
    #[error(transparent)]
    State(#[from] StateFailure),
    /// Admission refused the request: overload (a retry after a pause may pass) or a body
    /// outside the limits.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A bug in the proxy; the log says more.
    #[error("chroma-shift failed: {0}")]
    Internal(String),
}

/// Where in a write the state store failed, which decides what the client is told.
#[derive(Debug, thiserror::Error)]
pub enum StateFailure {
    /// Before the primary saw the write: nothing was applied anywhere.
    #[error("chroma-shift cannot record the write durably ({0}); it was not applied to any store. Retry later")]
    BeforeWrite(String),
    /// After the primary applied it: it could not be queued for the other store yet.
    #[error("the primary store applied the write, but chroma-shift could not queue it for the other store ({0}); the other store is brought in line once the state store can write again. Retry later to be sure")]
    AfterPrimary(String),
    /// A read or lookup the proxy needed could not be recorded (the collection map).
    #[error("chroma-shift cannot write its state ({0}); nothing was applied. Retry later")]
    Unavailable(String),
}

/// A request the proxy refuses, by the client's fault: retrying it as it is will not help.
#[derive(Debug, thiserror::Error)]
pub enum RefusedRequest {
    #[error("Request body is larger than the proxy's limit of {limit} bytes (server.max_body)")]
    BodyTooLarge { limit: u64 },
    #[error("Could not read the request body: {0}")]
    BodyUnreadable(String),
    #[error("Missing client credentials: send `Authorization: Bearer <token>` or `X-Chroma-Token: <token>`")]
    MissingCredentials,
    #[error("Invalid client credentials")]
    InvalidCredentials,
    /// A write whose body the proxy cannot read (so it cannot mirror it); Chroma refuses these
    /// bodies too.
    #[error("{0}")]
    Unmirrorable(String),
    /// A request target that is not a path (`*`, `http://host/...`).
    #[error("chroma-shift takes request targets of the form /path (got {0:?})")]
    RequestTarget(String),
    /// A write to a route Chroma 1.5.9 does not have: it would reach one store only.
    #[error("No such route: {0} (chroma-shift forwards only the writes of Chroma's v2 API, under /api/v2/)")]
    UnknownWriteRoute(String),
}

/// A backend that failed to answer.
#[derive(Debug, thiserror::Error)]
#[error("{backend} store {kind}")]
pub struct BackendError {
    /// Which store failed.
    pub backend: BackendName,
    /// How it failed.
    pub kind: BackendErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendErrorKind {
    #[error("is unreachable: {0}")]
    Connect(String),
    #[error("did not answer within {0:?}")]
    Timeout(Duration),
    #[error("failed mid-request: {0}")]
    Transport(String),
    #[error("rejected the request the proxy built: {0}")]
    Request(String),
}

impl BackendError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self.kind {
            BackendErrorKind::Connect(_) => "connect",
            BackendErrorKind::Timeout(_) => "timeout",
            BackendErrorKind::Transport(_) => "transport",
            BackendErrorKind::Request(_) => "request",
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Client(RefusedRequest::BodyTooLarge { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ProxyError::Client(
                RefusedRequest::BodyUnreadable(_)
                | RefusedRequest::Unmirrorable(_)
                | RefusedRequest::RequestTarget(_),
            ) => StatusCode::BAD_REQUEST,
            ProxyError::Client(RefusedRequest::UnknownWriteRoute(_)) => StatusCode::NOT_FOUND,
            ProxyError::Client(RefusedRequest::MissingCredentials)
            | ProxyError::Client(RefusedRequest::InvalidCredentials) => StatusCode::UNAUTHORIZED,
            ProxyError::Backend(e) => match e.kind {
                BackendErrorKind::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            },
            ProxyError::State(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Refused(refusal) => refusal.status(),
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The label of the `reason` in rejection metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Client(RefusedRequest::BodyTooLarge { .. }) => "body_too_large",
            ProxyError::Client(RefusedRequest::BodyUnreadable(_)) => "body_unreadable",
            ProxyError::Client(RefusedRequest::MissingCredentials) => "missing_credentials",
            ProxyError::Client(RefusedRequest::InvalidCredentials) => "invalid_credentials",
            ProxyError::Backend(e) => e.label(),
            ProxyError::Client(RefusedRequest::Unmirrorable(_)) => "unmirrorable",
            ProxyError::Client(RefusedRequest::RequestTarget(_)) => "request_target",
            ProxyError::Client(RefusedRequest::UnknownWriteRoute(_)) => "unknown_write_route",
            ProxyError::State(_) => "state",
            ProxyError::Refused(refusal) => refusal.reason(),
            ProxyError::Internal(_) => "internal",
        }
    }

    /// The answer in Chroma's error shape.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let error_kind = match &self {
            ProxyError::Client(RefusedRequest::MissingCredentials)
            | ProxyError::Client(RefusedRequest::InvalidCredentials) => kind::AUTH,
            ProxyError::Client(RefusedRequest::UnknownWriteRoute(_)) => kind::NOT_FOUND,
            ProxyError::Client(_) => kind::INVALID_ARGUMENT,
            ProxyError::Backend(_) | ProxyError::State(_) | ProxyError::Internal(_) => {
                kind::INTERNAL
            }
            // Overload reads as "slow down" to the clients that map kinds to exceptions.
            ProxyError::Refused(refusal) if refusal.is_overload() => kind::RATE_LIMIT,
            ProxyError::Refused(Refusal::BodyTooLarge { .. } | Refusal::UnexpectedBody { .. }) => {
                kind::INVALID_ARGUMENT
            }
            ProxyError::Refused(_) => kind::CHROMA,
        };
        let retry_after = match &self {
            ProxyError::State(_) => true,
            ProxyError::Refused(refusal) => refusal.is_overload(),
            _ => false,
        };
        let close = matches!(&self, ProxyError::Refused(refusal) if refusal.closes_connection());
        let mut response = error_response(status, ChromaError::new(error_kind, self.to_string()));
        if retry_after {
            // Long enough for a state disk to get room, a journal to drain a little, or the
            // requests in flight to finish.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if close {
            // HTTP/1.1 closes the connection after this answer (HTTP/2 drops the header and
            // resets only the stream).
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// A response in Chroma's error shape.
pub fn error_response(status: StatusCode, error: ChromaError) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(error.to_bytes()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
