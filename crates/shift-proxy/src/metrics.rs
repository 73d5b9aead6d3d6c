//! The data plane's Prometheus metrics. Labels carry operations, backends and statuses, never
//! a token, a header or a body.

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Metrics of requests through the data plane.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    /// Requests answered, by operation, the backend that answered (`proxy` when the proxy
    /// answered itself) and status code.
    pub requests: IntCounterVec,
    /// Time from the request's arrival to the response head, by operation.
    pub request_duration: HistogramVec,
    /// Time a backend took to send its response head, by backend and operation.
    pub upstream_duration: HistogramVec,
    /// Requests being handled now.
    pub in_flight: IntGauge,
    /// Requests the proxy refused or could not forward, by reason.
    pub rejected: IntCounterVec,
    /// 1 when the backend's last heartbeat succeeded, 0 when it failed.
    pub backend_up: IntGaugeVec,
    /// Failed heartbeats and requests to a backend, by backend and kind.
    pub backend_errors: IntCounterVec,
}

impl ProxyMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<ProxyMetrics> {
        // 0.5 ms to about 33 s: Chroma answers heartbeats in well under a millisecond and a
        // large query or batch add in seconds.
        let buckets = exponential_buckets(0.0005, 2.0, 17)?;
        let metrics = ProxyMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "chroma_shift_requests_total",
                    "Requests answered, by operation, answering backend and status.",
                ),
                &["operation", "backend", "status"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "chroma_shift_request_duration_seconds",
                    "Time from a request's arrival to its response head, by operation.",
                )
                .buckets(buckets.clone()),
                &["operation"],
            )?,
            upstream_duration: HistogramVec::new(
                HistogramOpts::new(
                    "chroma_shift_upstream_duration_seconds",
                    "Time a backend took to send its response head, by backend and operation.",
                )
                .buckets(buckets),
                &["backend", "operation"],
            )?,
            in_flight: IntGauge::new(
                "chroma_shift_requests_in_flight",
                "Requests being handled now.",
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "chroma_shift_rejected_requests_total",
                    "Requests the proxy refused or could not forward, by reason.",
                ),
                &["reason"],
            )?,
            backend_up: IntGaugeVec::new(
                Opts::new(
                    "chroma_shift_backend_up",
                    "1 when the backend's last heartbeat succeeded.",
                ),
                &["backend"],
            )?,
            backend_errors: IntCounterVec::new(
                Opts::new(
                    "chroma_shift_backend_errors_total",
                    "Failed requests and heartbeats to a backend, by kind.",
                ),
                &["backend", "kind"],
            )?,
        };
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.request_duration.clone()))?;
        registry.register(Box::new(metrics.upstream_duration.clone()))?;
        registry.register(Box::new(metrics.in_flight.clone()))?;
        registry.register(Box::new(metrics.rejected.clone()))?;
        registry.register(Box::new(metrics.backend_up.clone()))?;
        registry.register(Box::new(metrics.backend_errors.clone()))?;
        Ok(metrics)
    }
}
