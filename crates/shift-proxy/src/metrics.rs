//! The data plane's Prometheus metrics. Labels carry operations, backends and statuses, never
//! a token, a header or a body.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    exponential_buckets, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use std::sync::Arc;

use shift_config::BackendName;
use shift_state::StateStore;

use crate::collection_series::{CollectionSeries, Families, OTHER};
use crate::request_series::RequestSeries;

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
    /// Journal entries applied to a target.
    pub replay_applied: IntCounterVec,
    /// Requests the replay sent to a target (merged batches count once).
    pub replay_requests: IntCounterVec,
    /// Replay attempts that failed and will be retried.
    pub replay_retries: IntCounterVec,
    /// Entries parked as dead letters, by target and kind.
    pub dead_letters: IntCounterVec,
    /// Mirrored writes whose embeddings' dimension the target collection refused.
    /// Per collection: written through `collection_series` only (a bounded set of labels).
    pub dimension_mismatches: IntCounterVec,
    /// Shadow reads by collection (client id), operation and outcome (match, mismatch, error,
    /// timeout, dropped, skipped).
    /// Per collection: written through `collection_series` only (a bounded set of labels).
    pub shadow_reads: IntCounterVec,
    /// Shadow reads not sent or not compared, by reason (lagging, unmapped, primary_failed).
    pub shadow_skipped: IntCounterVec,
    /// Recall at k of the secondary's query answers against the primary's, per collection.
    /// Per collection: written through `collection_series` only (a bounded set of labels).
    pub shadow_recall: HistogramVec,
    /// The largest relative distance drift of each shadowed query, per collection.
    /// Per collection: written through `collection_series` only (a bounded set of labels).
    pub shadow_distance_drift: HistogramVec,
    /// Shadow reads running now.
    pub shadow_in_flight: IntGauge,
    /// Canary reads by collection and outcome (served, fallback, skipped_lagging,
    /// skipped_unmapped).
    /// Per collection: written through `collection_series` only (a bounded set of labels).
    pub canary_reads: IntCounterVec,
    /// Write intents settled by the sweeper, not by their own task (the state store could not
    /// write when the task settled, or the task died).
    pub orphaned_intents: prometheus::IntCounter,
    /// Writes the per-collection families above (shadow reads, recall, drift, canary reads,
    /// dimension mismatches) with a bounded number of collection labels.
    pub collection_series: Arc<CollectionSeries>,
    /// Requests refused by admission, by reason (in_flight, body_budget, body_too_large,
    /// unexpected_body, body_timeout, body_unreadable); also counted in `rejected`.
    pub shed: IntCounterVec,
    /// Bytes of request bodies held now, against `[server.limits] body_budget`.
    pub body_bytes_buffered: IntGauge,
    /// Handles of `requests`, `request_duration` and `upstream_duration`, resolved once per
    /// label set: what the access log layer counts every request with.
    pub request_series: Arc<RequestSeries>,
}

impl ProxyMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<ProxyMetrics> {
        // 0.5 ms to about 33 s: Chroma answers heartbeats in well under a millisecond and a
        // large query or batch add in seconds.
        let buckets = exponential_buckets(0.0005, 2.0, 17)?;
        // The per-collection families, written only through `collection_series`.
        let dimension_mismatches = counters("chroma_shift_dimension_mismatches_total", "Mirrored writes refused for an embedding dimension that differs from the target collection's.", &["target", "collection"])?;
        let shadow_reads = counters("chroma_shift_shadow_reads_total", "Shadow reads by collection, operation and outcome (match, mismatch, error, timeout, dropped, skipped).", &["collection", "operation", "outcome"])?;
        let shadow_recall = HistogramVec::new(
            HistogramOpts::new(
                "chroma_shift_shadow_recall",
                "Recall at k of the secondary's shadowed query answers against the primary's.",
            )
            .buckets(vec![0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0]),
            &["collection"],
        )?;
        let shadow_distance_drift = HistogramVec::new(
            HistogramOpts::new(
                "chroma_shift_shadow_distance_drift",
                "Largest relative distance drift of each shadowed query (absolute below a distance of 1).",
            )
            .buckets(vec![1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0]),
            &["collection"],
        )?;
        let canary_reads = counters("chroma_shift_canary_reads_total", "Canary reads by collection and outcome (served, fallback, skipped_lagging, skipped_unmapped).", &["collection", "outcome"])?;
        let requests = counters(
            "chroma_shift_requests_total",
            "Requests answered, by operation, answering backend and status.",
            &["operation", "backend", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "chroma_shift_request_duration_seconds",
                "Time from a request's arrival to its response head, by operation.",
            )
            .buckets(buckets.clone()),
            &["operation"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "chroma_shift_upstream_duration_seconds",
                "Time a backend took to send its response head, by backend and operation.",
            )
            .buckets(buckets),
            &["backend", "operation"],
        )?;
        let metrics = ProxyMetrics {
            request_series: Arc::new(RequestSeries::new(
                requests.clone(),
                request_duration.clone(),
                upstream_duration.clone(),
            )),
            requests,
            request_duration,
            upstream_duration,
            in_flight: IntGauge::new(
                "chroma_shift_requests_in_flight",
                "Requests being handled now.",
            )?,
            rejected: counters("chroma_shift_rejected_requests_total", "Requests the proxy refused or could not forward, by reason.", &["reason"])?,
            backend_up: gauges("chroma_shift_backend_up", "1 when the backend's last heartbeat succeeded.", &["backend"])?,
            backend_errors: counters("chroma_shift_backend_errors_total", "Failed requests and heartbeats to a backend, by kind.", &["backend", "kind"])?,
            mirrored_writes: counters("chroma_shift_mirrored_writes_total", "Writes by mirror mode and outcome of their mirror (applied, journaled, fallback_journaled, reconcile_queued, not_mirrored, failed).", &["mode", "outcome"])?,
            replay_applied: counters("chroma_shift_replay_applied_total", "Journal entries applied to a target.", &["target"])?,
            replay_requests: counters("chroma_shift_replay_requests_total", "Requests the replay sent to a target; merged batches count once.", &["target"])?,
            replay_retries: counters("chroma_shift_replay_retries_total", "Replay attempts that failed and are retried.", &["target"])?,
            dead_letters: counters("chroma_shift_dead_letters_total", "Journal entries parked as dead letters, by target and kind.", &["target", "kind"])?,
            dimension_mismatches: dimension_mismatches.clone(),
            shadow_reads: shadow_reads.clone(),
            shadow_skipped: counters("chroma_shift_shadow_skipped_total", "Shadow reads not sent or not compared, by reason (lagging, unmapped, primary_failed, too_large).", &["reason"])?,
            shadow_recall: shadow_recall.clone(),
            shadow_distance_drift: shadow_distance_drift.clone(),
            shadow_in_flight: IntGauge::new(
                "chroma_shift_shadow_reads_in_flight",
                "Shadow reads running now.",
            )?,
            canary_reads: canary_reads.clone(),
            collection_series: Arc::new(CollectionSeries::new(Families {
                shadow_reads,
                shadow_recall,
                shadow_distance_drift,
                canary_reads,
                dimension_mismatches,
            })),
            orphaned_intents: prometheus::IntCounter::new(
                "chroma_shift_orphaned_intents_settled_total",
                "Write intents settled as reconciliations by the sweeper rather than by their own task.",
            )?,
            shed: counters("chroma_shift_shed_requests_total", "Requests refused by admission (load shedding and body limits), by reason: in_flight, body_budget, body_too_large, unexpected_body, body_timeout, body_unreadable.", &["reason"])?,
            body_bytes_buffered: IntGauge::new(
                "chroma_shift_body_bytes_buffered",
                "Bytes of request bodies held now, against [server.limits] body_budget.",
            )?,
        };
        let collectors: [Box<dyn Collector>; 22] = [
            Box::new(metrics.shed.clone()),
            Box::new(metrics.body_bytes_buffered.clone()),
            Box::new(metrics.orphaned_intents.clone()),
            Box::new(metrics.shadow_reads.clone()),
            Box::new(metrics.shadow_skipped.clone()),
            Box::new(metrics.shadow_recall.clone()),
            Box::new(metrics.shadow_distance_drift.clone()),
            Box::new(metrics.shadow_in_flight.clone()),
            Box::new(metrics.canary_reads.clone()),
            Box::new(metrics.mirrored_writes.clone()),
            Box::new(metrics.replay_applied.clone()),
            Box::new(metrics.replay_requests.clone()),
            Box::new(metrics.replay_retries.clone()),
            Box::new(metrics.dead_letters.clone()),
            Box::new(metrics.dimension_mismatches.clone()),
            Box::new(metrics.requests.clone()),
            Box::new(metrics.request_duration.clone()),
            Box::new(metrics.upstream_duration.clone()),
            Box::new(metrics.in_flight.clone()),
            Box::new(metrics.rejected.clone()),
            Box::new(metrics.backend_up.clone()),
            Box::new(metrics.backend_errors.clone()),
        ];
        for collector in collectors {
            registry.register(collector)?;
        }
        Ok(metrics)
    }
}

/// A counter family labelled by `labels`.
fn counters(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

/// A gauge family labelled by `labels`.
fn gauges(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

/// The journal's depth and age and the dead letters, read from the store at each scrape, so
/// they are exact whenever they are read and cost nothing on the write path.
#[derive(Debug)]
pub struct JournalCollector {
    store: StateStore,
    /// The journal the lag and the dead letters are read from when it is not `store` (a
    /// cluster's, set once it is joined).
    journal: Arc<std::sync::OnceLock<Arc<dyn crate::coord::WriteJournal>>>,
    descs: Vec<Desc>,
    /// Collections with their own depth and age series, the deepest first; the rest are
    /// summed under `collection="_other"`.
    max_collections: usize,
}

impl JournalCollector {
    pub fn new(store: StateStore) -> prometheus::Result<JournalCollector> {
        let descs = Self::families()?
            .iter()
            .flat_map(|family| family.desc().into_iter().cloned().collect::<Vec<_>>())
            .collect();
        Ok(JournalCollector {
            store,
            journal: Arc::default(),
            descs,
            max_collections: shift_config::MetricsConfig::default().max_collection_series,
        })
    }

    /// Where to set the journal the lag and dead letters are read from instead of the state
    /// (a cluster's journal in NATS JetStream).
    pub fn journal_slot(&self) -> Arc<std::sync::OnceLock<Arc<dyn crate::coord::WriteJournal>>> {
        self.journal.clone()
    }

    /// Caps the collections with depth and age series of their own (`[metrics]
    /// max_collection_series`).
    pub fn max_collection_series(mut self, max: usize) -> JournalCollector {
        self.max_collections = max;
        self
    }

    fn families() -> prometheus::Result<[Box<dyn Collector>; 8]> {
        let [writable, bytes, max_bytes, intents] = Self::state_gauges()?;
        Ok([
            Box::new(Self::state_commits()?),
            Box::new(writable),
            Box::new(bytes),
            Box::new(max_bytes),
            Box::new(intents),
            Box::new(IntGaugeVec::new(
                Opts::new("chroma_shift_journal_depth", "Journal entries waiting for a target; collection=\"\" is the total."),
                &["target", "collection"],
            )?),
            Box::new(GaugeVec::new(
                Opts::new("chroma_shift_journal_oldest_age_seconds", "Age of the oldest waiting journal entry; collection=\"\" is over all collections."),
                &["target", "collection"],
            )?),
            Box::new(IntGauge::new("chroma_shift_dead_letters", "Dead letters in the store now.")?),
        ])
    }

    fn gather(&self) -> prometheus::Result<Vec<MetricFamily>> {
        let depth = IntGaugeVec::new(
            Opts::new(
                "chroma_shift_journal_depth",
                "Journal entries waiting for a target; collection=\"\" is the total.",
            ),
            &["target", "collection"],
        )?;
        let age = GaugeVec::new(
            Opts::new(
                "chroma_shift_journal_oldest_age_seconds",
                "Age of the oldest waiting journal entry; collection=\"\" is over all collections.",
            ),
            &["target", "collection"],
        )?;
        let dead = IntGauge::new(
            "chroma_shift_dead_letters",
            "Dead letters in the store now.",
        )?;
        let now = crate::replay::now_ms();
        let seconds = |oldest: u64| now.saturating_sub(oldest) as f64 / 1000.0;
        for target in [BackendName::Old, BackendName::New] {
            let lag = match self.journal.get() {
                Some(journal) => journal.lag(target),
                None => self.store.lag(target),
            };
            let name = target.as_str();
            depth
                .with_label_values(&[name, ""])
                .set(i64::try_from(lag.entries).unwrap_or(i64::MAX));
            age.with_label_values(&[name, ""])
                .set(lag.oldest_created_ms.map_or(0.0, seconds));
            let mut lagging: Vec<_> = lag
                .collections
                .iter()
                .filter(|(c, _)| !c.is_empty())
                .collect();
            // The deepest collections get series of their own; the rest are summed.
            lagging.sort_by_key(|(_, lag)| std::cmp::Reverse(lag.entries));
            let rest = lagging.split_off(self.max_collections.min(lagging.len()));
            for (collection, entry) in lagging {
                depth
                    .with_label_values(&[name, collection])
                    .set(i64::try_from(entry.entries).unwrap_or(i64::MAX));
                age.with_label_values(&[name, collection])
                    .set(seconds(entry.oldest_created_ms));
            }
            if let Some(oldest) = rest.iter().map(|(_, e)| e.oldest_created_ms).min() {
                let entries: u64 = rest.iter().map(|(_, e)| e.entries).sum();
                depth
                    .with_label_values(&[name, OTHER])
                    .set(i64::try_from(entries).unwrap_or(i64::MAX));
                age.with_label_values(&[name, OTHER]).set(seconds(oldest));
            }
        }
        let dead_letters = match self.journal.get() {
            Some(journal) => journal.dead_letter_count(),
            None => self.store.dead_letter_count(),
        };
        dead.set(i64::try_from(dead_letters).unwrap_or(i64::MAX));
        let mut families = depth.collect();
        families.extend(age.collect());
        families.extend(dead.collect());
        // The state store's own health: whether it can journal a write now.
        let health = self.store.health();
        let gauges = Self::state_gauges()?;
        let [writable, bytes, max_bytes, intents] = &gauges;
        writable.set(i64::from(health.unwritable.is_none()));
        bytes.set(i64::try_from(health.journal_bytes).unwrap_or(i64::MAX));
        max_bytes.set(i64::try_from(health.max_journal_bytes).unwrap_or(i64::MAX));
        intents.set(i64::try_from(health.pending_intents).unwrap_or(i64::MAX));
        for gauge in gauges {
            families.extend(gauge.collect());
        }
        let stats = self.store.commit_stats();
        let commits = Self::state_commits()?;
        commits
            .with_label_values(&["fsync"])
            .inc_by(stats.durable_commits);
        commits
            .with_label_values(&["deferred"])
            .inc_by(stats.commits.saturating_sub(stats.durable_commits));
        families.extend(commits.collect());
        Ok(families)
    }

    /// The state store's commits since start, by whether they were fsynced: `fsync` over
    /// mirrored writes is the state's fsyncs per write.
    fn state_commits() -> prometheus::Result<IntCounterVec> {
        IntCounterVec::new(
            Opts::new(
                "chroma_shift_state_commits_total",
                "State store transactions committed since start: durability=\"fsync\" with an fsync, \"deferred\" without one (settled write intents, made durable by the next fsynced commit).",
            ),
            &["durability"],
        )
    }

    /// The state store's gauges: writable, journal bytes, its cap, pending intents.
    fn state_gauges() -> prometheus::Result<[IntGauge; 4]> {
        Ok([
            IntGauge::new(
                "chroma_shift_state_writable",
                "1 while the state disk can be written, 0 while it cannot (every write is refused with 503 until the store reopens its file).",
            )?,
            IntGauge::new(
                "chroma_shift_journal_bytes",
                "Payload bytes in the mirror journal, both targets.",
            )?,
            IntGauge::new(
                "chroma_shift_journal_max_bytes",
                "The journal's cap ([state] max_journal_bytes); 0 is no cap. At the cap new writes get 503.",
            )?,
            IntGauge::new(
                "chroma_shift_pending_intents",
                "Write intents recorded and not yet settled (committed to the journal or discarded).",
            )?,
        ])
    }
}

impl Collector for JournalCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.gather().unwrap_or_default()
    }
}

/// The replay's own state, beside the journal's depth: whether a target is stopped, what it
/// holds in memory, and how many collections wait for a retry.
#[derive(Debug, Clone)]
pub struct ReplayMetrics {
    /// 1 while the replay of a target is stopped because the store refuses the proxy, by
    /// reason (`unauthorized`, `misconfigured`); 0 otherwise.
    pub stopped: IntGaugeVec,
    /// Journal payload bytes the replay of a target holds in memory.
    pub held_bytes: IntGaugeVec,
    /// Collections of a target whose next write waits for a retry.
    pub waiting_collections: IntGaugeVec,
}

impl ReplayMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<ReplayMetrics> {
        let metrics = ReplayMetrics::unregistered()?;
        registry.register(Box::new(metrics.stopped.clone()))?;
        registry.register(Box::new(metrics.held_bytes.clone()))?;
        registry.register(Box::new(metrics.waiting_collections.clone()))?;
        Ok(metrics)
    }

    /// The metrics, registered nowhere (for tests).
    pub fn unregistered() -> prometheus::Result<ReplayMetrics> {
        let metrics = ReplayMetrics {
            stopped: IntGaugeVec::new(
                Opts::new(
                    "chroma_shift_replay_stopped",
                    "1 while the replay of a target is stopped because the store refuses the proxy (unauthorized, misconfigured).",
                ),
                &["target", "reason"],
            )?,
            held_bytes: IntGaugeVec::new(
                Opts::new(
                    "chroma_shift_replay_held_bytes",
                    "Journal payload bytes the replay of a target holds in memory.",
                ),
                &["target"],
            )?,
            waiting_collections: IntGaugeVec::new(
                Opts::new(
                    "chroma_shift_replay_waiting_collections",
                    "Collections of a target whose next replayed write waits for a retry.",
                ),
                &["target"],
            )?,
        };
        // Every series exists from the start, so a dashboard reads 0 rather than nothing.
        for target in [BackendName::Old, BackendName::New] {
            for reason in ["unauthorized", "misconfigured"] {
                metrics
                    .stopped
                    .with_label_values(&[target.as_str(), reason])
                    .set(0);
            }
            metrics
                .held_bytes
                .with_label_values(&[target.as_str()])
                .set(0);
            metrics
                .waiting_collections
                .with_label_values(&[target.as_str()])
                .set(0);
        }
        Ok(metrics)
    }
}

/// Metrics of the listeners' connections (data and admin, by the `listener` label).
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    /// Client connections open now, TLS handshakes included.
    pub open: IntGaugeVec,
    /// Connections closed without being served, by reason: `at_capacity` (the listener held
    /// `max_connections`), `tls_handshake` (the handshake failed), `handshake_timeout` (it did
    /// not finish within `header_read_timeout`).
    pub refused: IntCounterVec,
}

impl ConnectionMetrics {
    /// The reasons of [`ConnectionMetrics::refused`].
    pub const REFUSED_REASONS: [&'static str; 3] =
        ["at_capacity", "tls_handshake", "handshake_timeout"];

    /// Creates the metrics, not registered anywhere (tests, or a registry added later).
    pub fn new() -> prometheus::Result<ConnectionMetrics> {
        Ok(ConnectionMetrics {
            open: gauges(
                "chroma_shift_client_connections",
                "Client connections open now, by listener (data, admin).",
                &["listener"],
            )?,
            refused: counters(
                "chroma_shift_connections_refused_total",
                "Client connections closed without being served, by listener and reason (at_capacity, tls_handshake, handshake_timeout).",
                &["listener", "reason"],
            )?,
        })
    }

    /// Creates the metrics and registers them in `registry`, with a zero series for each of
    /// `listeners`, so a dashboard reads 0 rather than nothing.
    pub fn register(
        registry: &Registry,
        listeners: &[&str],
    ) -> prometheus::Result<ConnectionMetrics> {
        let metrics = ConnectionMetrics::new()?;
        registry.register(Box::new(metrics.open.clone()))?;
        registry.register(Box::new(metrics.refused.clone()))?;
        for listener in listeners {
            metrics.open.with_label_values(&[listener]).set(0);
            for reason in Self::REFUSED_REASONS {
                metrics.refused.with_label_values(&[listener, reason]);
            }
        }
        Ok(metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shift_state::NewEntry;
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn journal_depth_series_are_capped_the_deepest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).await.unwrap();
        // Collection c{i} has i + 1 entries waiting.
        let entries = (0..10)
            .flat_map(|i| {
                (0..=i).map(move |_| NewEntry {
                    target: BackendName::New,
                    collection: format!("c{i}"),
                    payload: b"{}".to_vec(),
                })
            })
            .collect();
        store.append(entries).await.unwrap();
        let collector = JournalCollector::new(store)
            .unwrap()
            .max_collection_series(3);
        let depth = collector
            .collect()
            .into_iter()
            .find(|f| f.name() == "chroma_shift_journal_depth")
            .unwrap();
        let series: BTreeMap<String, f64> = depth
            .get_metric()
            .iter()
            .filter(|m| m.get_label().iter().any(|l| l.value() == "new"))
            .map(|m| {
                let collection = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "collection")
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default();
                (collection, m.get_gauge().get_value())
            })
            .collect();
        let expected: BTreeMap<String, f64> = [
            ("", 55.0),
            ("c9", 10.0),
            ("c8", 9.0),
            ("c7", 8.0),
            (OTHER, 28.0),
        ]
        .into_iter()
        .map(|(c, n)| (c.to_owned(), n))
        .collect();
        assert_eq!(series, expected);
    }
}
