//! The outermost layer: one access-log line and the request metrics per request.
//!
//! It sits outside everything else so that every answer is counted and logged, the proxy's
//! own errors included, and so that the in-flight gauge covers the whole request. The line
//! itself is formatted and written by the log writer's thread when there is one
//! ([`crate::log_writer::access_sink`]); the request only leaves its fields there.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use http::{Request, Response};

use crate::access_line::AccessRecord;
use crate::body::ProxyBody;
use crate::metrics::ProxyMetrics;
use crate::service::Handled;

/// The target of the access log's lines (one per request).
pub const ACCESS_LOG_TARGET: &str = "chroma_shift::access";

/// Adds [`AccessLog`] around a service.
#[derive(Debug, Clone)]
pub struct AccessLogLayer {
    metrics: Arc<ProxyMetrics>,
}

impl AccessLogLayer {
    pub fn new(metrics: ProxyMetrics) -> AccessLogLayer {
        AccessLogLayer {
            metrics: Arc::new(metrics),
        }
    }
}

impl<S> tower::Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Logs and counts each request.
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
    /// Shared: a request takes one reference, not a clone of every metric handle (a clone of
    /// `ProxyMetrics` per request was 1.5 % of a heartbeat's CPU samples).
    metrics: Arc<ProxyMetrics>,
}

/// Decrements the in-flight gauge when the request ends, also when the client went away
/// and the future was dropped.
struct InFlight(Arc<ProxyMetrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

impl<S, B> tower::Service<Request<B>> for AccessLog<S>
where
    S: tower::Service<Request<B>, Response = Response<ProxyBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let started = Instant::now();
        let method = request.method().clone();
        self.metrics.in_flight.inc();
        let in_flight = InFlight(self.metrics.clone());
        // The request's trace span (none unless `[tracing]` is on), around the whole request.
        let span = crate::trace_ctx::request_span(
            request.method(),
            request.uri().path(),
            request.headers(),
        );
        let response = span.in_scope(|| self.inner.call(request));
        AccessLogFuture {
            response,
            span,
            pending: Some(Pending {
                started,
                method,
                in_flight,
            }),
        }
    }
}

/// What a request's access line and metrics need from its start.
struct Pending {
    started: Instant,
    method: http::Method,
    /// Held until the answer is ready (or the request dropped).
    in_flight: InFlight,
}

pin_project_lite::pin_project! {
    /// The answer of [`AccessLog`]: the service's answer, polled in the request's span, then
    /// counted and logged. A named future rather than a boxed `async` block: no allocation
    /// per request.
    pub struct AccessLogFuture<F> {
        #[pin]
        response: F,
        span: tracing::Span,
        pending: Option<Pending>,
    }
}

impl<F> Future for AccessLogFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let Ok(response) = std::task::ready!(this.response.poll(cx));
        let pending = this
            .pending
            .take()
            .expect("an access-log future is polled after it completed");
        Poll::Ready(Ok(answered(pending, this.span, response)))
    }
}

/// Counts an answered request and leaves its access line.
fn answered(
    pending: Pending,
    span: &tracing::Span,
    response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let metrics = &pending.in_flight.0;
    let elapsed = pending.started.elapsed();
    let status = response.status();
    let Some(handled) = response.extensions().get::<Handled>() else {
        return response;
    };
    let op = handled.route.operation;
    let operation = op.name();
    let backend = handled.backend.map_or("proxy", |b| b.as_str());
    let series = &metrics.request_series;
    series.count(op, handled.backend, status);
    series.observe_duration(op, elapsed.as_secs_f64());
    if let (Some(upstream), Some(answered)) = (handled.upstream, handled.backend) {
        series.observe_upstream(op, answered, upstream.as_secs_f64());
    }
    crate::trace_ctx::record_answer(span, operation, status);
    let record = AccessRecord {
        at: SystemTime::now(),
        method: pending.method,
        operation,
        params: handled.route.params.clone(),
        status: status.as_u16(),
        backend,
        duration: elapsed,
        upstream: handled.upstream,
        error: handled.error.unwrap_or(""),
        identity: handled.identity.clone(),
    };
    match crate::log_writer::access_sink() {
        // Formatted and written by the log writer's thread.
        Some(sink) => {
            if tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO) {
                sink.record(record);
            }
        }
        None => log_access_event(&record),
    }
    response
}

/// The access line as a tracing event, formatted by the subscriber: where no log writer takes
/// [`AccessRecord`]s (tests, a terminal's coloured log). The log writer formats the same line.
pub(crate) fn log_access_event(record: &AccessRecord) {
    let params = &record.params;
    tracing::info!(
        target: ACCESS_LOG_TARGET,
        method = %record.method,
        operation = record.operation,
        tenant = params.tenant.as_deref().unwrap_or(""),
        database = params.database.as_deref().unwrap_or(""),
        collection = params.collection.as_deref().unwrap_or(""),
        status = record.status,
        backend = record.backend,
        duration_ms = record.duration.as_secs_f64() * 1000.0,
        upstream_ms = record.upstream.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        error = record.error,
        identity = record.identity.as_deref().unwrap_or(""),
        "request"
    );
}
