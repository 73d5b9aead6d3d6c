//! Forwarding helpers every operation module shares: the request as read, a backend's path for
//! it, sending it, relaying the answer, and the errors of a lookup on the way.

use std::time::Duration;

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
use crate::backend::Backend;
use crate::body::{self, BoxError, ProxyBody};
use crate::driven::DrivenBody;
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
pub fn relay<B>(response: Response<B>) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
}

/// A JSON answer built from a backend's head and a rewritten body.
pub fn relay_json(mut parts: http::response::Parts, value: &Value) -> Response<ProxyBody> {
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    Response::from_parts(parts, body::full(bytes))
}

/// When the answer to a request [`send`] sent must be read whole by: its backend's
/// `request_timeout` after sending. Kept in the response's extensions, so the read that
/// follows (maybe under the lifecycle lock) is bounded by the same limit as the request.
#[derive(Debug, Clone, Copy)]
struct AnswerDeadline {
    at: tokio::time::Instant,
    limit: Duration,
}

/// The limit of an answer that did not come through [`send`] (none does today): the
/// default `request_timeout`.
const UNSENT_ANSWER_LIMIT: Duration = Duration::from_secs(60);

/// Reads a backend's answer whole: its head and its body, by the request's deadline. A body
/// that stalls is a timeout (a write's outcome is then unknown), never a hang.
pub(crate) async fn read_whole<B>(
    backend: BackendName,
    response: Response<B>,
) -> Result<(http::response::Parts, Bytes), ProxyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let (parts, body) = response.into_parts();
    let deadline = parts
        .extensions
        .get::<AnswerDeadline>()
        .copied()
        .unwrap_or_else(|| AnswerDeadline {
            at: tokio::time::Instant::now() + UNSENT_ANSWER_LIMIT,
            limit: UNSENT_ANSWER_LIMIT,
        });
    let bytes = match tokio::time::timeout_at(deadline.at, body.collect()).await {
        Err(_) => {
            return Err(ProxyError::Backend(BackendError {
                backend,
                kind: BackendErrorKind::Timeout(deadline.limit),
            }))
        }
        Ok(read) => read.map_err(|e| transport(backend, e))?.to_bytes(),
    };
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

/// Sends the request to `backend` at `path` with `body`; its answer is due within the
/// backend's `request_timeout` (the head here, the whole body in [`read_whole`]).
pub(crate) async fn send(
    plane: &DataPlaneState,
    backend: BackendName,
    request: &BufferedRequest,
    path: &str,
    body: Bytes,
) -> Result<Response<Incoming>, BackendError> {
    send_with(Backend::send_as, plane, backend, request, path, body).await
}

/// [`send`] of the request as read, for the read path: on a connection the request drives
/// itself ([`crate::driven`]), its answer streamed to the client or read whole by
/// [`read_whole`].
pub(crate) async fn send_driven(
    plane: &DataPlaneState,
    backend: BackendName,
    request: &BufferedRequest,
    path: &str,
) -> Result<Response<DrivenBody>, BackendError> {
    let body = request.body.clone();
    send_with(Backend::send_driven_as, plane, backend, request, path, body).await
}

/// Sends the request with `send` (one of [`Backend`]'s) and marks the answer with the
/// deadline its body must be read by.
async fn send_with<B>(
    send: impl AsyncFnOnce(
        &Backend,
        &Caller,
        Method,
        &str,
        HeaderMap,
        Bytes,
    ) -> Result<Response<B>, BackendError>,
    plane: &DataPlaneState,
    backend: BackendName,
    request: &BufferedRequest,
    path: &str,
    body: Bytes,
) -> Result<Response<B>, BackendError> {
    let client = plane.resolver.backends.get(backend);
    let limit = client.request_timeout();
    let at = tokio::time::Instant::now() + limit;
    let method = request.method.clone();
    let headers = request.headers.clone();
    let mut response = send(client, &request.caller, method, path, headers, body).await?;
    response
        .extensions_mut()
        .insert(AnswerDeadline { at, limit });
    Ok(response)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backend::Backend;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every request with a head and the start of a body, then stalls.
    async fn stalling_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    let _ = stream.read(&mut buffer).await;
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":";
                    let _ = stream.write_all(head.as_bytes()).await;
                    std::future::pending::<()>().await;
                    drop(stream);
                });
            }
        });
        format!("http://{addr}")
    }

    /// The old store's client for `url`, each request within `request_timeout`.
    pub(crate) fn backend_timing_out(url: &str, request_timeout: &str) -> Backend {
        let config = shift_config::Config::from_toml(&format!(
            r#"
            [server]
            listen = "127.0.0.1:0"
            admin_listen = "127.0.0.1:1"
            [backends.old]
            url = "{url}"
            request_timeout = "{request_timeout}"
            [backends.new]
            url = "http://127.0.0.1:9"
            "#
        ))
        .unwrap();
        Backend::new(BackendName::Old, &config.backends.old, None).unwrap()
    }

    #[tokio::test]
    async fn a_stalled_answer_body_is_a_timeout_not_a_hang() {
        let backend = backend_timing_out(&stalling_server().await, "300ms");
        let limit = Duration::from_secs(30);
        // The proxy's own calls: one limit for head and body.
        let called = tokio::time::timeout(limit, backend.call(Method::GET, "/x", None))
            .await
            .expect("a call hung on a stalled body");
        assert!(
            matches!(
                called,
                Err(BackendError {
                    kind: BackendErrorKind::Timeout(_),
                    ..
                })
            ),
            "{called:?}"
        );
        // A forwarded request's answer read whole, by the deadline `send` set.
        let at = tokio::time::Instant::now() + backend.request_timeout();
        let mut response = backend
            .send(Method::GET, "/x", HeaderMap::new(), Bytes::new())
            .await
            .unwrap();
        response.extensions_mut().insert(AnswerDeadline {
            at,
            limit: backend.request_timeout(),
        });
        let read = tokio::time::timeout(limit, read_whole(BackendName::Old, response))
            .await
            .expect("read_whole hung on a stalled body");
        match read {
            Err(ProxyError::Backend(BackendError {
                kind: BackendErrorKind::Timeout(timeout),
                ..
            })) => assert_eq!(timeout, Duration::from_millis(300)),
            other => panic!("expected a timeout, got {:?}", other.map(|(p, _)| p)),
        }
    }
}
