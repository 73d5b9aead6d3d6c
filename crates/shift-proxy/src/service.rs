//! The innermost service: authenticate, read the body within its limit, forward to the
//! primary, pass the answer back.
//!
//! Request bodies are read whole before forwarding: Chroma's requests are JSON documents that
//! the write path must look inside and may send twice (to both stores, or again after a
//! failure), and a body over the limit must be refused before any byte reaches a backend.
//! Response bodies are streamed back untouched.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use shift_chroma::error::{kind, ChromaError};
use shift_chroma::{classify, Operation, Route};
use shift_config::BackendName;

use crate::auth::ClientAuth;
use crate::backend::Backends;
use crate::body::{self, BoxError, ProxyBody};
use crate::error::{error_response, ClientError, ProxyError};
use crate::headers::{strip_client_auth, strip_hop_by_hop};
use crate::metrics::ProxyMetrics;

/// What the proxy did with a request, left in the response's extensions for the access log
/// and the metrics layer.
#[derive(Debug, Clone)]
pub struct Handled {
    /// The route the request classified as.
    pub route: Route,
    /// The backend that answered; `None` when the proxy answered itself.
    pub backend: Option<BackendName>,
    /// How long the backend took to send its response head.
    pub upstream: Option<Duration>,
    /// Why the proxy answered itself, when it did.
    pub error: Option<&'static str>,
}

/// How the data plane behaves; built once from the config.
#[derive(Debug)]
pub struct ProxySettings {
    /// The store that serves reads and takes writes.
    pub primary: BackendName,
    /// Largest request body accepted.
    pub max_body: u64,
    /// Client authentication, when enabled.
    pub client_auth: Option<ClientAuth>,
    /// Whether the client's credential headers go on to the backends.
    pub forward_client_auth: bool,
}

/// State shared by every request.
#[derive(Debug)]
struct ProxyState {
    backends: Arc<Backends>,
    settings: ProxySettings,
    metrics: ProxyMetrics,
}

/// Forwards Chroma requests to the primary store.
#[derive(Debug, Clone)]
pub struct ProxyService {
    state: Arc<ProxyState>,
}

impl ProxyService {
    pub fn new(backends: Arc<Backends>, settings: ProxySettings, metrics: ProxyMetrics) -> Self {
        ProxyService {
            state: Arc::new(ProxyState {
                backends,
                settings,
                metrics,
            }),
        }
    }
}

impl<B> tower::Service<Request<B>> for ProxyService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move { Ok(state.handle(request).await) })
    }
}

impl ProxyState {
    async fn handle<B>(&self, request: Request<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let route = classify(request.method(), request.uri().path());
        let mut handled = Handled {
            route,
            backend: None,
            upstream: None,
            error: None,
        };
        let mut response = match self.forward(request, &mut handled).await {
            Ok(response) => response,
            Err(error) => {
                self.metrics
                    .rejected
                    .with_label_values(&[error.reason()])
                    .inc();
                if let ProxyError::Backend(e) = &error {
                    self.metrics
                        .backend_errors
                        .with_label_values(&[e.backend.as_str(), e.label()])
                        .inc();
                    tracing::warn!(error = %e, operation = handled.route.operation.name(), "backend failed");
                }
                handled.error = Some(error.reason());
                error.into_response()
            }
        };
        response.extensions_mut().insert(handled);
        response
    }

    async fn forward<B>(
        &self,
        request: Request<B>,
        handled: &mut Handled,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let settings = &self.settings;
        if let Some(auth) = &settings.client_auth {
            if !handled.route.operation.is_liveness() {
                auth.check(request.headers())?;
            }
        }
        let (parts, body) = request.into_parts();
        let body = read_body(&parts.headers, body, settings.max_body).await?;

        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        if !settings.forward_client_auth {
            strip_client_auth(&mut headers);
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let backend = self.backends.get(settings.primary);
        let started = Instant::now();
        let response = backend
            .send(parts.method.clone(), path, headers, body)
            .await?;
        handled.backend = Some(backend.name());
        handled.upstream = Some(started.elapsed());

        let (mut response_parts, body) = response.into_parts();
        strip_hop_by_hop(&mut response_parts.headers);
        // Chroma answers a path it does not know with an empty 404; give the client a
        // sentence in Chroma's error shape instead of nothing.
        if handled.route.operation == Operation::Unknown
            && response_parts.status == StatusCode::NOT_FOUND
            && body.size_hint().exact() == Some(0)
        {
            let error = ChromaError::new(
                kind::NOT_FOUND,
                format!(
                    "No such route: {} {} (Chroma's API lives under /api/v2/)",
                    parts.method, path
                ),
            );
            let mut response = error_response(StatusCode::NOT_FOUND, error);
            response.headers_mut().extend(
                response_parts
                    .headers
                    .into_iter()
                    .filter_map(|(k, v)| k.map(|k| (k, v)))
                    .filter(|(k, _)| k != header::CONTENT_LENGTH && k != header::CONTENT_TYPE),
            );
            return Ok(response);
        }
        Ok(Response::from_parts(response_parts, body::stream(body)))
    }
}

/// Reads the request body, refusing one over `limit` bytes: at once when its declared length
/// is too large, or as soon as the streamed bytes pass the limit.
async fn read_body<B>(headers: &http::HeaderMap, body: B, limit: u64) -> Result<Bytes, ClientError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ClientError::BodyTooLarge { limit });
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, limit_usize).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ClientError::BodyTooLarge { limit }),
        Err(e) => Err(ClientError::BodyUnreadable(e.to_string())),
    }
}
