//! Forwarding helpers every operation module shares: the request as read, a backend's path for
//! it, sending it, relaying the answer, and the errors of a lookup on the way.

use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use shift_chroma::{paths, Route};
use shift_config::BackendName;
use shift_state::StoreError;

use crate::admission::BodyPermit;
use crate::auth::Caller;
use crate::body::{self, ProxyBody};
use crate::error::{BackendError, BackendErrorKind, ProxyError, StateFailure};
use crate::headers::strip_hop_by_hop;
use crate::plane::DataPlaneState;
use crate::resolve::ResolveError;

/// A request already read: what the operation modules need of it.
#[derive(Debug)]
pub struct BufferedRequest {
    pub route: Route,
    pub method: Method,
    /// The client's path and query.
    pub path: String,
    /// Headers to forward (hop-by-hop headers and the client's credentials removed).
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body's share of the body budget, given back when the request is dropped (after
    /// the write task that owns it settled the write).
    pub body_permit: BodyPermit,
    /// On whose behalf it reaches the backends: decides the credential each one gets.
    pub caller: Caller,
}

/// The answer for the client, and the store that gave it.
pub struct Answered {
    pub response: Response<ProxyBody>,
    pub backend: BackendName,
}

/// Streams a backend's answer to the client.
pub fn relay(response: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body::stream(body))
}

/// A JSON answer built from a backend's head and a rewritten body.
pub fn relay_json(mut parts: http::response::Parts, value: &Value) -> Response<ProxyBody> {
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    Response::from_parts(parts, body::full(bytes))
}

/// Reads a backend's answer whole: its head and its body.
pub(crate) async fn read_whole(
    backend: BackendName,
    response: Response<Incoming>,
) -> Result<(http::response::Parts, Bytes), ProxyError> {
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|e| transport(backend, e))?
        .to_bytes();
    Ok((parts, bytes))
}

/// A backend's answer already read whole, given to the client as it is.
pub fn relay_bytes(mut parts: http::response::Parts, bytes: Bytes) -> Response<ProxyBody> {
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body::full(bytes))
}

/// `backend`'s path for the request: namespaces renamed, and the collection segment replaced
/// by `collection` when given.
pub(crate) fn backend_path(
    plane: &DataPlaneState,
    backend: BackendName,
    request: &BufferedRequest,
    collection: Option<&str>,
) -> String {
    let params = &request.route.params;
    let ns = params.tenant.as_deref().map(|tenant| {
        plane
            .resolver
            .namespaces
            .to_backend(backend, tenant, params.database.as_deref())
    });
    paths::rewrite(
        &request.path,
        paths::SegmentRewrite {
            tenant: ns.as_ref().map(|n| n.tenant.as_str()),
            database: ns.as_ref().and_then(|n| n.database.as_deref()),
            collection,
        },
    )
}

/// Sends the request to `backend` at `path` with `body`.
pub(crate) async fn send(
    plane: &DataPlaneState,
    backend: BackendName,
    request: &BufferedRequest,
    path: &str,
    body: Bytes,
) -> Result<Response<Incoming>, BackendError> {
    plane
        .resolver
        .backends
        .get(backend)
        .send_as(
            &request.caller,
            request.method.clone(),
            path,
            request.headers.clone(),
            body,
        )
        .await
}

/// A backend that failed mid-answer.
pub(crate) fn transport(backend: BackendName, error: impl std::fmt::Display) -> ProxyError {
    ProxyError::Backend(BackendError {
        backend,
        kind: BackendErrorKind::Transport(error.to_string()),
    })
}

/// The durable state could not be written.
pub(crate) fn state_failure(error: StoreError) -> ProxyError {
    tracing::error!(%error, "the durable state cannot be written");
    ProxyError::State(StateFailure::Unavailable(error.to_string()))
}

/// A collection lookup that failed.
pub(crate) fn resolve_failure(error: ResolveError) -> ProxyError {
    match error {
        ResolveError::Backend(e) => ProxyError::Backend(e),
        ResolveError::StateStore(e) => state_failure(e),
    }
}
