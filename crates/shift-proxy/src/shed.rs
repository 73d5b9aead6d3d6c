//! The in-flight limit as a tower layer: a request past `[server.limits] max_in_flight` is
//! answered 503 with `Retry-After` before anything else is done for it.
//!
//! It sits inside the access log (so a shed request is logged and counted like any other) and
//! outside the service (so a shed request costs no auth check, no body read, no backend call).
//! Liveness routes (heartbeat, healthcheck, version) pass without counting: a load balancer
//! must keep seeing a live proxy while it sheds. The route classified here travels to the
//! service in the request's extensions, so a request is classified once.
//!
//! A request holds its place until its response head is ready; a write that goes on in its own
//! task after the client hung up no longer counts here (its body stays counted in the body
//! budget, see [`crate::admission`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use shift_chroma::{classify, Route};

use crate::admission::{Admission, InFlightPermit, Refusal};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::metrics::ProxyMetrics;
use crate::service::Handled;

/// Adds [`Shed`] around a service.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    admission: Admission,
    metrics: ProxyMetrics,
}

impl ShedLayer {
    pub fn new(admission: Admission, metrics: ProxyMetrics) -> ShedLayer {
        ShedLayer { admission, metrics }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            admission: self.admission.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Sheds requests past the in-flight limit.
#[derive(Debug, Clone)]
pub struct Shed<S> {
    inner: S,
    admission: Admission,
    metrics: ProxyMetrics,
}

impl<S, B> tower::Service<Request<B>> for Shed<S>
where
    S: tower::Service<Request<B>, Response = Response<ProxyBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let route = classify(request.method(), request.uri().path());
        let permit = if route.operation.is_liveness() {
            None
        } else {
            match self.admission.enter() {
                Ok(permit) => Some(permit),
                Err(refusal) => {
                    let response = refused(&self.metrics, route, refusal);
                    return ShedFuture::Refused {
                        response: Some(response),
                    };
                }
            }
        };
        request.extensions_mut().insert(route);
        ShedFuture::Admitted {
            response: self.inner.call(request),
            permit,
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of [`Shed`]: the refusal, or the service's answer holding the request's
    /// place until it is ready. A named future rather than a boxed `async` block: no
    /// allocation per request.
    #[project = ShedProj]
    pub enum ShedFuture<F> {
        Refused { response: Option<Response<ProxyBody>> },
        Admitted { #[pin] response: F, permit: Option<InFlightPermit> },
    }
}

impl<F> Future for ShedFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            ShedProj::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("a refusal's future is polled after it completed"))),
            ShedProj::Admitted { response, permit } => {
                let response = std::task::ready!(response.poll(cx));
                permit.take();
                Poll::Ready(response)
            }
        }
    }
}

/// The answer to a request admission refused, counted and marked for the access log.
pub(crate) fn refused(
    metrics: &ProxyMetrics,
    route: Route,
    refusal: Refusal,
) -> Response<ProxyBody> {
    count(metrics, &refusal);
    let reason = refusal.reason();
    let mut response = ProxyError::Refused(refusal).into_response();
    response.extensions_mut().insert(Handled {
        route,
        backend: None,
        upstream: None,
        error: Some(reason),
        // Shed before client auth: nobody is identified yet.
        identity: None,
    });
    response
}

/// Counts a refusal as shed and, like every answer the proxy gives itself, as rejected.
pub(crate) fn count(metrics: &ProxyMetrics, refusal: &Refusal) {
    metrics.shed.with_label_values(&[refusal.reason()]).inc();
    metrics
        .rejected
        .with_label_values(&[refusal.reason()])
        .inc();
}
