//! What can go wrong on the request path, who is at fault, and the answer a client gets.
//!
//! Every error the proxy answers itself is mapped here, in one place, to a status and a body in
//! Chroma's error shape.

use std::time::Duration;

use http::{header, Response, StatusCode};
use shift_chroma::error::{kind, ChromaError};
use shift_config::BackendName;

use crate::body::{self, ProxyBody};

/// An error answered by the proxy instead of a backend.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client sent something the proxy refuses; retrying the same request will not help.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A backend could not answer; a retry may help.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The proxy could not record a write durably, so it did not send it; a retry may help.
    #[error("chroma-shift cannot record the write durably ({0}); it was not applied")]
    State(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("Request body is larger than the proxy's limit of {limit} bytes (server.max_body)")]
    BodyTooLarge { limit: u64 },
    #[error("Could not read the request body: {0}")]
    BodyUnreadable(String),
    #[error("Missing client credentials: send `Authorization: Bearer <token>` or `X-Chroma-Token: <token>`")]
    MissingCredentials,
    #[error("Invalid client credentials")]
    InvalidCredentials,
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
            ProxyError::Client(ClientError::BodyTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Client(ClientError::BodyUnreadable(_)) => StatusCode::BAD_REQUEST,
            ProxyError::Client(ClientError::MissingCredentials)
            | ProxyError::Client(ClientError::InvalidCredentials) => StatusCode::UNAUTHORIZED,
            ProxyError::Backend(e) => match e.kind {
                BackendErrorKind::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            },
            ProxyError::State(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The label of the `reason` in rejection metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Client(ClientError::BodyTooLarge { .. }) => "body_too_large",
            ProxyError::Client(ClientError::BodyUnreadable(_)) => "body_unreadable",
            ProxyError::Client(ClientError::MissingCredentials) => "missing_credentials",
            ProxyError::Client(ClientError::InvalidCredentials) => "invalid_credentials",
            ProxyError::Backend(e) => e.label(),
            ProxyError::State(_) => "state",
        }
    }

    /// The answer in Chroma's error shape.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let error_kind = match &self {
            ProxyError::Client(ClientError::MissingCredentials)
            | ProxyError::Client(ClientError::InvalidCredentials) => kind::AUTH,
            ProxyError::Client(_) => kind::INVALID_ARGUMENT,
            ProxyError::Backend(_) | ProxyError::State(_) => kind::INTERNAL,
        };
        error_response(status, ChromaError::new(error_kind, self.to_string()))
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
