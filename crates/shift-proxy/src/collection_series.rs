//! Per-collection metric series, bounded: at most `[metrics] max_collection_series`
//! collections have series of their own, the others are counted under
//! `collection="_other"`, and a collection idle for `collection_series_idle` loses its series
//! (removed from the registry) and its place. Without the bound, every collection ever seen
//! kept a handful of series forever, in the proxy and in Prometheus.
//!
//! Every per-collection series goes through [`CollectionSeries`], which remembers which series
//! each collection has, so eviction removes exactly those.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use tokio::time::Instant;

use crate::plane::DataPlaneState;

/// The label of every collection beyond the cap.
pub const OTHER: &str = "_other";

/// How many collections get series of their own, and for how long without activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesLimits {
    /// Collections with series of their own; the others share [`OTHER`].
    pub max: usize,
    /// A collection's series are removed after this long without activity.
    pub idle: Duration,
}

impl Default for SeriesLimits {
    fn default() -> Self {
        let config = shift_config::MetricsConfig::default();
        SeriesLimits::from_config(&config)
    }
}

impl SeriesLimits {
    pub fn from_config(config: &shift_config::MetricsConfig) -> SeriesLimits {
        SeriesLimits {
            max: config.max_collection_series,
            idle: config.collection_series_idle,
        }
    }
}

/// One series of a collection, by family and its other labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Series {
    ShadowRead {
        operation: &'static str,
        outcome: &'static str,
    },
    Recall,
    Drift,
    Canary {
        outcome: &'static str,
    },
    DimensionMismatch {
        target: &'static str,
    },
}

/// A collection with series of its own.
#[derive(Debug)]
struct Tracked {
    last_active: Instant,
    series: BTreeSet<Series>,
}

#[derive(Debug)]
struct Table {
    limits: SeriesLimits,
    tracked: HashMap<String, Tracked>,
    /// No idle sweep before this, so a flood of new collections past the cap scans the table
    /// at most once per second.
    next_sweep: Instant,
}

/// The per-collection families and the collections that have series in them.
#[derive(Debug)]
pub struct CollectionSeries {
    table: Mutex<Table>,
    shadow_reads: IntCounterVec,
    shadow_recall: HistogramVec,
    shadow_distance_drift: HistogramVec,
    canary_reads: IntCounterVec,
    dimension_mismatches: IntCounterVec,
}

/// The families [`CollectionSeries`] writes, registered by [`crate::ProxyMetrics`].
pub struct Families {
    pub shadow_reads: IntCounterVec,
    pub shadow_recall: HistogramVec,
    pub shadow_distance_drift: HistogramVec,
    pub canary_reads: IntCounterVec,
    pub dimension_mismatches: IntCounterVec,
}

const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl CollectionSeries {
    pub fn new(families: Families) -> CollectionSeries {
        CollectionSeries {
            table: Mutex::new(Table {
                limits: SeriesLimits::default(),
                tracked: HashMap::new(),
                next_sweep: Instant::now(),
            }),
            shadow_reads: families.shadow_reads,
            shadow_recall: families.shadow_recall,
            shadow_distance_drift: families.shadow_distance_drift,
            canary_reads: families.canary_reads,
            dimension_mismatches: families.dimension_mismatches,
        }
    }

    /// Sets the bounds (from the config); collections beyond a lower cap keep their series
    /// until they go idle.
    pub fn set_limits(&self, limits: SeriesLimits) {
        self.lock().limits = limits;
    }

    pub fn limits(&self) -> SeriesLimits {
        self.lock().limits
    }

    /// Collections with series of their own now.
    pub fn tracked(&self) -> usize {
        self.lock().tracked.len()
    }

    /// A shadow read of `collection`.
    pub fn shadow_read(&self, collection: &str, operation: &'static str, outcome: &'static str) {
        let label = self.label(collection, Series::ShadowRead { operation, outcome });
        self.shadow_reads
            .with_label_values(&[label.as_str(), operation, outcome])
            .inc();
    }

    /// The recall at k of a shadowed query of `collection`.
    pub fn recall(&self, collection: &str, recall: f64) {
        let label = self.label(collection, Series::Recall);
        self.shadow_recall
            .with_label_values(&[label.as_str()])
            .observe(recall);
    }

    /// The largest distance drift of a shadowed query of `collection`.
    pub fn drift(&self, collection: &str, drift: f64) {
        let label = self.label(collection, Series::Drift);
        self.shadow_distance_drift
            .with_label_values(&[label.as_str()])
            .observe(drift);
    }

    /// A canary read of `collection`.
    pub fn canary(&self, collection: &str, outcome: &'static str) {
        let label = self.label(collection, Series::Canary { outcome });
        self.canary_reads
            .with_label_values(&[label.as_str(), outcome])
            .inc();
    }

    /// A mirrored write `target` refused for its embeddings' dimension.
    pub fn dimension_mismatch(&self, target: &'static str, collection: &str) {
        let label = self.label(collection, Series::DimensionMismatch { target });
        self.dimension_mismatches
            .with_label_values(&[target, label.as_str()])
            .inc();
    }

    /// Removes the series of collections idle for longer than the limit.
    pub fn sweep(&self) {
        let mut table = self.lock();
        self.sweep_locked(&mut table, Instant::now());
    }

    /// The label `collection`'s `series` is counted under, remembering it for eviction.
    fn label(&self, collection: &str, series: Series) -> String {
        let now = Instant::now();
        let mut table = self.lock();
        if let Some(tracked) = table.tracked.get_mut(collection) {
            tracked.last_active = now;
            tracked.series.insert(series);
            return collection.to_owned();
        }
        if collection == OTHER {
            return OTHER.to_owned();
        }
        if table.tracked.len() >= table.limits.max && now >= table.next_sweep {
            self.sweep_locked(&mut table, now);
        }
        if table.tracked.len() >= table.limits.max {
            return OTHER.to_owned();
        }
        table.tracked.insert(
            collection.to_owned(),
            Tracked {
                last_active: now,
                series: BTreeSet::from([series]),
            },
        );
        collection.to_owned()
    }

    fn sweep_locked(&self, table: &mut Table, now: Instant) {
        table.next_sweep = now + SWEEP_EVERY;
        let idle = table.limits.idle;
        let gone: Vec<String> = table
            .tracked
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(t.last_active) >= idle)
            .map(|(c, _)| c.clone())
            .collect();
        for collection in gone {
            if let Some(tracked) = table.tracked.remove(&collection) {
                for series in tracked.series {
                    self.remove(&collection, series);
                }
            }
        }
    }

    fn remove(&self, collection: &str, series: Series) {
        // A series not there (never written) is not an error worth reporting.
        let _ = match series {
            Series::ShadowRead { operation, outcome } => self
                .shadow_reads
                .remove_label_values(&[collection, operation, outcome]),
            Series::Recall => self.shadow_recall.remove_label_values(&[collection]),
            Series::Drift => self
                .shadow_distance_drift
                .remove_label_values(&[collection]),
            Series::Canary { outcome } => self
                .canary_reads
                .remove_label_values(&[collection, outcome]),
            Series::DimensionMismatch { target } => self
                .dimension_mismatches
                .remove_label_values(&[target, collection]),
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How many collections each per-collection structure of the data plane holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TrackedCollections {
    /// Lock tables: collections a write holds or waits for (freed when the last lets go).
    pub order_locks: usize,
    /// Collections with metric series of their own (capped, freed when idle).
    pub metric_series: usize,
    /// Rows of the shadow and canary score (capped; `_other` included).
    pub shadow_scores: usize,
    /// Every collection the proxy knows: its state, not overhead.
    pub collection_map: usize,
}

impl TrackedCollections {
    /// `(structure, collections)`, as the gauge's rows.
    pub fn rows(&self) -> [(&'static str, usize); 4] {
        [
            ("order_locks", self.order_locks),
            ("metric_series", self.metric_series),
            ("shadow_scores", self.shadow_scores),
            ("collection_map", self.collection_map),
        ]
    }
}

/// `chroma_shift_tracked_collections{structure}`: how many collections each per-collection
/// structure of the data plane holds now, read at each scrape (which also sweeps idle metric
/// series). `collection_map` is the proxy's state (every collection it knows), the others are
/// overhead that must fall back when collections go idle.
#[derive(Debug)]
pub struct TrackedCollector {
    plane: std::sync::Weak<DataPlaneState>,
    desc: Desc,
}

const TRACKED: &str = "chroma_shift_tracked_collections";
const TRACKED_HELP: &str = "Collections each per-collection structure holds now: order_locks (writes holding or waiting), metric_series (collections with their own series), shadow_scores, collection_map (all known collections; state, not overhead).";

impl TrackedCollector {
    pub fn new(plane: &Arc<DataPlaneState>) -> prometheus::Result<TrackedCollector> {
        let desc = Desc::new(
            TRACKED.to_owned(),
            TRACKED_HELP.to_owned(),
            vec!["structure".to_owned()],
            HashMap::new(),
        )?;
        Ok(TrackedCollector {
            plane: Arc::downgrade(plane),
            desc,
        })
    }
}

impl Collector for TrackedCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(plane) = self.plane.upgrade() else {
            return Vec::new();
        };
        plane.metrics.collection_series.sweep();
        let Ok(gauge) = IntGaugeVec::new(Opts::new(TRACKED, TRACKED_HELP), &["structure"]) else {
            return Vec::new();
        };
        for (structure, n) in plane.tracked_collections().rows() {
            gauge
                .with_label_values(&[structure])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        gauge.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{HistogramOpts, Registry};

    fn series() -> (CollectionSeries, Registry) {
        let registry = Registry::new();
        let families = Families {
            shadow_reads: IntCounterVec::new(
                Opts::new("shadow", "h"),
                &["collection", "operation", "outcome"],
            )
            .unwrap(),
            shadow_recall: HistogramVec::new(HistogramOpts::new("recall", "h"), &["collection"])
                .unwrap(),
            shadow_distance_drift: HistogramVec::new(
                HistogramOpts::new("drift", "h"),
                &["collection"],
            )
            .unwrap(),
            canary_reads: IntCounterVec::new(Opts::new("canary", "h"), &["collection", "outcome"])
                .unwrap(),
            dimension_mismatches: IntCounterVec::new(
                Opts::new("dims", "h"),
                &["target", "collection"],
            )
            .unwrap(),
        };
        registry
            .register(Box::new(families.shadow_reads.clone()))
            .unwrap();
        registry
            .register(Box::new(families.canary_reads.clone()))
            .unwrap();
        registry
            .register(Box::new(families.shadow_recall.clone()))
            .unwrap();
        registry
            .register(Box::new(families.dimension_mismatches.clone()))
            .unwrap();
        (CollectionSeries::new(families), registry)
    }

    /// The `collection` label of every series in `registry`.
    fn labels(registry: &Registry) -> BTreeSet<String> {
        registry
            .gather()
            .iter()
            .flat_map(|f| f.get_metric().iter())
            .flat_map(|m| m.get_label().iter())
            .filter(|l| l.name() == "collection")
            .map(|l| l.value().to_owned())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn collections_past_the_cap_share_other_and_idle_ones_are_removed() {
        let (series, registry) = series();
        series.set_limits(SeriesLimits {
            max: 3,
            idle: Duration::from_secs(60),
        });
        for i in 0..100 {
            let c = format!("c{i}");
            series.shadow_read(&c, "query", "match");
            series.canary(&c, "served");
            series.recall(&c, 1.0);
            series.dimension_mismatch("new", &c);
        }
        assert_eq!(series.tracked(), 3);
        let expected: BTreeSet<String> = ["c0", "c1", "c2", OTHER]
            .into_iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(labels(&registry), expected);
        // Counts beyond the cap are kept, under _other.
        assert_eq!(
            series
                .shadow_reads
                .with_label_values(&[OTHER, "query", "match"])
                .get(),
            97
        );

        // c0 stays active; the others go idle and give their places to new collections.
        tokio::time::advance(Duration::from_secs(50)).await;
        series.shadow_read("c0", "query", "mismatch");
        tokio::time::advance(Duration::from_secs(20)).await;
        series.canary("c100", "fallback");
        assert_eq!(
            series.tracked(),
            2,
            "c1 and c2 went idle, c100 took a place"
        );
        let expected: BTreeSet<String> = ["c0", "c100", OTHER]
            .into_iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(labels(&registry), expected);

        tokio::time::advance(Duration::from_secs(120)).await;
        series.sweep();
        assert_eq!(series.tracked(), 0);
        let expected: BTreeSet<String> = [OTHER.to_owned()].into();
        assert_eq!(labels(&registry), expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cap_of_zero_counts_everything_under_other() {
        let (series, registry) = series();
        series.set_limits(SeriesLimits {
            max: 0,
            idle: Duration::from_secs(60),
        });
        series.shadow_read("a", "get", "match");
        series.shadow_read("b", "get", "match");
        assert_eq!(series.tracked(), 0);
        let expected: BTreeSet<String> = [OTHER.to_owned()].into();
        assert_eq!(labels(&registry), expected);
    }
}
