//! The innermost service: authenticate, read the body within the admission limits, forward
//! to the primary, pass the answer back.
//!
//! Request bodies are read whole before forwarding: Chroma's requests are JSON documents that
//! the write path must look inside and may send twice (to both stores, or again after a
//! failure), and a body over the limit must be refused before any byte reaches a backend.
//! The body is read after client auth, within the shared body budget and the body read
//! timeout ([`crate::admission`]); its share of the budget travels with the
//! [`BufferedRequest`] until the last copy of the body is dropped. Response bodies are
//! streamed back untouched.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use shift_chroma::error::{kind, ChromaError};
use shift_chroma::{classify, Operation, OperationClass, Route};
use shift_config::BackendName;

use crate::admission::{Admission, Expect, Limits};
use crate::auth::{Caller, ClientAuth};
use crate::body::{BoxError, ProxyBody};
use crate::error::{error_response, ProxyError, RefusedRequest};
use crate::forward::BufferedRequest;
use crate::headers::{strip_client_auth, strip_hop_by_hop};
use crate::metrics::ProxyMetrics;
use crate::plane::DataPlaneState;
use crate::{lifecycle_writes, passthrough, reads, record_writes, reset};

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
    /// The client identity the request was authenticated as (a name, never a token).
    pub identity: Option<crate::auth::IdentityName>,
}

/// How the data plane behaves; built once from the config.
#[derive(Debug)]
pub struct ProxySettings {
    /// Requests in flight, the body budget, the largest body, the body read timeout.
    pub limits: Limits,
    /// Client authentication, when enabled.
    pub client_auth: Option<ClientAuth>,
    /// Whether the client's credential headers go on to the backends (instead of the
    /// operator's or an identity's credential).
    pub forward_client_auth: bool,
}

/// State shared by every request.
#[derive(Debug)]
struct ProxyState {
    plane: Arc<DataPlaneState>,
    settings: ProxySettings,
    metrics: ProxyMetrics,
    /// Shared with the shedding layer ([`crate::shed`]) in front of this service.
    admission: Admission,
}

/// Serves Chroma requests: reads from the primary, writes to both stores.
#[derive(Debug, Clone)]
pub struct ProxyService {
    state: Arc<ProxyState>,
}

impl ProxyService {
    pub fn new(plane: Arc<DataPlaneState>, settings: ProxySettings, metrics: ProxyMetrics) -> Self {
        let admission = Admission::new(settings.limits, metrics.body_bytes_buffered.clone());
        ProxyService {
            state: Arc::new(ProxyState {
                plane,
                settings,
                metrics,
                admission,
            }),
        }
    }

    /// The admission state the service reads bodies with, for the layers in front of it.
    pub fn admission(&self) -> &Admission {
        &self.state.admission
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
    async fn handle<B>(&self, mut request: Request<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        // Classified by the shedding layer when there is one.
        let route = request
            .extensions_mut()
            .remove::<Route>()
            .unwrap_or_else(|| classify(request.method(), request.uri().path()));
        let mut handled = Handled {
            route,
            backend: None,
            upstream: None,
            error: None,
            identity: None,
        };
        let mut response = match self.forward(request, &mut handled).await {
            Ok(response) => response,
            Err(error) => {
                self.metrics
                    .rejected
                    .with_label_values(&[error.reason()])
                    .inc();
                if let ProxyError::Refused(refusal) = &error {
                    self.metrics
                        .shed
                        .with_label_values(&[refusal.reason()])
                        .inc();
                }
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
        // Only a path is ever joined to a backend's address: a target that is no path
        // (`OPTIONS *`, an authority) is answered here. An absolute-form target
        // (`GET http://host/api/v2/...`), which HTTP/1.1 servers must accept and Chroma does,
        // is served by its path; its authority is never used.
        let uri = request.uri();
        if !uri.path().starts_with('/') {
            return Err(RefusedRequest::RequestTarget(uri.to_string()).into());
        }
        let mut caller = Caller::Operator;
        if let Some(auth) = &settings.client_auth {
            if !handled.route.operation.is_liveness() {
                caller = auth.identify(request.headers())?;
            }
        }
        if settings.forward_client_auth {
            caller = Caller::forwarded(request.headers());
        }
        if let Caller::Identity(name) = &caller {
            handled.identity = Some(name.clone());
        }
        let (parts, body) = request.into_parts();
        // Routes Chroma defines without a body get none read; an unknown route may be a
        // newer Chroma's, so its body is passed on.
        let expect = match handled.route.operation {
            Operation::Unknown => Expect::Body,
            operation if operation.has_json_body() => Expect::Body,
            _ => Expect::NoBody,
        };
        let (body, body_permit) = self
            .admission
            .read_body(
                &parts.headers,
                body.map_err(|e| -> BoxError { e.into() }),
                expect,
            )
            .await?;

        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        // The caller decides what credential each backend gets.
        strip_client_auth(&mut headers);
        // For the proxy's own error answers only: formatted when one is given.
        let method = parts.method.clone();
        let describe = || format!("{method} {}", parts.uri.path());
        let request = BufferedRequest {
            route: handled.route.clone(),
            method: parts.method,
            path: parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            headers,
            body,
            body_permit,
            caller,
        };
        let started = Instant::now();
        let plane = &self.plane;
        let answered = match handled.route.class() {
            OperationClass::Read => reads::read(plane, request).await?,
            OperationClass::RecordWrite => record_writes::record_write(plane, request).await?,
            OperationClass::LifecycleWrite => {
                lifecycle_writes::lifecycle_write(plane, request).await?
            }
            OperationClass::DestructiveAdmin => reset::reset(plane, request).await?,
            // A write to a route Chroma does not have would reach the primary only.
            OperationClass::Unknown
                if matches!(
                    request.method,
                    http::Method::POST
                        | http::Method::PUT
                        | http::Method::PATCH
                        | http::Method::DELETE
                ) =>
            {
                return Err(RefusedRequest::UnknownWriteRoute(describe()).into());
            }
            OperationClass::Passthrough | OperationClass::Unknown => {
                let topology = plane.topology.current();
                passthrough::passthrough(plane, &topology, request).await?
            }
        };
        handled.backend = Some(answered.backend);
        handled.upstream = Some(started.elapsed());
        let response = answered.response;

        // Chroma answers a path it does not know with an empty 404; give the client a
        // sentence in Chroma's error shape instead of nothing.
        if handled.route.operation == Operation::Unknown
            && response.status() == StatusCode::NOT_FOUND
            && response.body().size_hint().exact() == Some(0)
        {
            let error = ChromaError::new(
                kind::NOT_FOUND,
                format!(
                    "No such route: {} (Chroma's API lives under /api/v2/)",
                    describe()
                ),
            );
            let (response_parts, _) = response.into_parts();
            let mut answer = error_response(StatusCode::NOT_FOUND, error);
            answer.headers_mut().extend(
                response_parts
                    .headers
                    .into_iter()
                    .filter_map(|(k, v)| k.map(|k| (k, v)))
                    .filter(|(k, _)| k != header::CONTENT_LENGTH && k != header::CONTENT_TYPE),
            );
            return Ok(answer);
        }
        Ok(response)
    }
}
