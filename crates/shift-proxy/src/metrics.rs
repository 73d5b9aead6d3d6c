//! The data plane's Prometheus metrics. Labels carry operations, backends and statuses, never
//! a token, a header or a body.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use prometheus::{
    exponential_buckets, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
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
    /// Writes by mirror mode and what became of their mirror.
    pub mirrored_writes: IntCounterVec,
    /// Journal entries waiting for a target, in all (`collection=""`) and per collection.
    pub journal_depth: IntGaugeVec,
    /// Age in seconds of the oldest waiting entry, in all and per collection.
    pub journal_oldest_age: GaugeVec,
    /// Journal entries applied to a target.
    pub replay_applied: IntCounterVec,
    /// Requests the replay sent to a target (merged batches count once).
    pub replay_requests: IntCounterVec,
    /// Replay attempts that failed and will be retried.
    pub replay_retries: IntCounterVec,
    /// Entries parked as dead letters, by target and kind.
    pub dead_letters: IntCounterVec,
    /// Dead letters in the store now.
    pub dead_letter_count: IntGauge,
    /// Mirrored writes whose embeddings' dimension the target collection refused.
    pub dimension_mismatches: IntCounterVec,
    /// (target, collection) label pairs of the lag gauges ever set, so a drained collection
    /// reads 0 instead of its last value.
    lag_labels: Arc<Mutex<BTreeSet<(String, String)>>>,
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
            mirrored_writes: IntCounterVec::new(
                Opts::new("chroma_shift_mirrored_writes_total", "Writes by mirror mode and outcome of their mirror (applied, journaled, fallback_journaled, reconcile_queued, not_mirrored, failed)."),
                &["mode", "outcome"],
            )?,
            journal_depth: IntGaugeVec::new(
                Opts::new("chroma_shift_journal_depth", "Journal entries waiting for a target; collection=\"\" is the total."),
                &["target", "collection"],
            )?,
            journal_oldest_age: GaugeVec::new(
                Opts::new("chroma_shift_journal_oldest_age_seconds", "Age of the oldest waiting journal entry; collection=\"\" is over all collections."),
                &["target", "collection"],
            )?,
            replay_applied: IntCounterVec::new(
                Opts::new("chroma_shift_replay_applied_total", "Journal entries applied to a target."),
                &["target"],
            )?,
            replay_requests: IntCounterVec::new(
                Opts::new("chroma_shift_replay_requests_total", "Requests the replay sent to a target; merged batches count once."),
                &["target"],
            )?,
            replay_retries: IntCounterVec::new(
                Opts::new("chroma_shift_replay_retries_total", "Replay attempts that failed and are retried."),
                &["target"],
            )?,
            dead_letters: IntCounterVec::new(
                Opts::new("chroma_shift_dead_letters_total", "Journal entries parked as dead letters, by target and kind."),
                &["target", "kind"],
            )?,
            dead_letter_count: IntGauge::new("chroma_shift_dead_letters", "Dead letters in the store now.")?,
            dimension_mismatches: IntCounterVec::new(
                Opts::new("chroma_shift_dimension_mismatches_total", "Mirrored writes refused for an embedding dimension that differs from the target collection's."),
                &["target", "collection"],
            )?,
            lag_labels: Arc::default(),
        };
        registry.register(Box::new(metrics.mirrored_writes.clone()))?;
        registry.register(Box::new(metrics.journal_depth.clone()))?;
        registry.register(Box::new(metrics.journal_oldest_age.clone()))?;
        registry.register(Box::new(metrics.replay_applied.clone()))?;
        registry.register(Box::new(metrics.replay_requests.clone()))?;
        registry.register(Box::new(metrics.replay_retries.clone()))?;
        registry.register(Box::new(metrics.dead_letters.clone()))?;
        registry.register(Box::new(metrics.dead_letter_count.clone()))?;
        registry.register(Box::new(metrics.dimension_mismatches.clone()))?;
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.request_duration.clone()))?;
        registry.register(Box::new(metrics.upstream_duration.clone()))?;
        registry.register(Box::new(metrics.in_flight.clone()))?;
        registry.register(Box::new(metrics.rejected.clone()))?;
        registry.register(Box::new(metrics.backend_up.clone()))?;
        registry.register(Box::new(metrics.backend_errors.clone()))?;
        Ok(metrics)
    }

    /// Sets every per-collection lag gauge of `target` to zero, remembering the labels set
    /// after; called before publishing a fresh snapshot.
    pub fn reset_collection_lag(&self, target: &str) {
        let labels = self.lag_labels.lock().unwrap_or_else(|e| e.into_inner());
        for (t, collection) in labels.iter().filter(|(t, _)| t == target) {
            self.journal_depth
                .with_label_values(&[t, collection])
                .set(0);
            self.journal_oldest_age
                .with_label_values(&[t, collection])
                .set(0.0);
        }
    }

    /// Remembers a per-collection lag label pair.
    pub fn note_lag_label(&self, target: &str, collection: &str) {
        self.lag_labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((target.to_owned(), collection.to_owned()));
    }
}
