//! The score of shadows and canaries: Prometheus metrics per collection, and for the admin API
//! totals per collection and a ring of the most recent mismatches.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{json, Value};
use shift_chroma::compare::DRIFT_EPSILON;

use super::compare::Comparison;
use super::runner::ShadowReads;
use super::types::{
    CanaryOutcome, CollectionRef, MismatchSample, ShadowOutcome, ShadowedRead, SkipReason,
};
use crate::collection_series::OTHER;

/// Mismatch samples `/admin/status` shows (all of them are at `/admin/shadow`).
const STATUS_SAMPLES: usize = 10;

/// Per collection counts for the admin API.
#[derive(Debug, Default)]
struct CollectionScore {
    name: String,
    /// Shadow outcomes by operation.
    shadow: BTreeMap<(&'static str, &'static str), u64>,
    /// Skipped shadows by reason.
    skipped: BTreeMap<&'static str, u64>,
    canary: BTreeMap<&'static str, u64>,
    last_recall: Option<f64>,
    min_recall: Option<f64>,
    max_drift: Option<f64>,
    last_mismatch_ms: Option<u64>,
    /// The latest error or timeout, so a failing secondary can be told from a diverging one.
    last_error: Option<String>,
    /// The scoreboard's clock at the last update: the least recent row is the one folded into
    /// `_other` when a new collection needs a place.
    touched: u64,
}

impl CollectionScore {
    /// Adds `other`'s counts to this row (a collection folded into `_other`).
    fn absorb(&mut self, other: CollectionScore) {
        for (key, n) in other.shadow {
            *self.shadow.entry(key).or_default() += n;
        }
        for (key, n) in other.skipped {
            *self.skipped.entry(key).or_default() += n;
        }
        for (key, n) in other.canary {
            *self.canary.entry(key).or_default() += n;
        }
        let pick = |a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64| match (a, b) {
            (Some(a), Some(b)) => Some(f(a, b)),
            (a, b) => a.or(b),
        };
        self.min_recall = pick(self.min_recall, other.min_recall, f64::min);
        self.max_drift = pick(self.max_drift, other.max_drift, f64::max);
        self.last_recall = self.last_recall.or(other.last_recall);
        self.last_mismatch_ms = self.last_mismatch_ms.max(other.last_mismatch_ms);
        if self.last_error.is_none() {
            self.last_error = other.last_error;
        }
    }
}

/// Shadow and canary counts per collection, at most `[metrics] max_collection_series` rows
/// plus one for `_other`: a new collection past the cap takes the place of the least recently
/// updated one, whose counts go to `_other` (totals stay exact).
#[derive(Debug, Default)]
pub(super) struct Scoreboard {
    collections: BTreeMap<String, CollectionScore>,
    samples: VecDeque<MismatchSample>,
    /// Counts updates, to tell the least recently updated row.
    clock: u64,
}

impl Scoreboard {
    fn collection(&mut self, collection: &CollectionRef, max: usize) -> &mut CollectionScore {
        self.clock += 1;
        let clock = self.clock;
        let mut id = collection.id.as_str();
        if !self.collections.contains_key(id) {
            let own = self.collections.len() - usize::from(self.collections.contains_key(OTHER));
            if own >= max {
                let oldest = self
                    .collections
                    .iter()
                    .filter(|(id, _)| id.as_str() != OTHER)
                    .min_by_key(|(_, score)| score.touched)
                    .map(|(id, _)| id.clone());
                match oldest {
                    Some(oldest) => {
                        let folded = self.collections.remove(&oldest).unwrap_or_default();
                        self.other().absorb(folded);
                    }
                    // A cap of zero: every collection is counted under `_other`.
                    None => id = OTHER,
                }
            }
        }
        let score = if id == OTHER {
            self.other()
        } else {
            let score = self.collections.entry(id.to_owned()).or_default();
            if score.name != collection.name {
                score.name.clone_from(&collection.name);
            }
            score
        };
        score.touched = clock;
        score
    }

    fn other(&mut self) -> &mut CollectionScore {
        self.collections
            .entry(OTHER.to_owned())
            .or_insert_with(|| CollectionScore {
                name: "(other collections)".to_owned(),
                ..CollectionScore::default()
            })
    }

    /// Rows kept now, `_other` included.
    pub(super) fn len(&self) -> usize {
        self.collections.len()
    }
}

impl ShadowReads {
    /// Counts a shadow that was not sent.
    pub fn skip(&self, collection: &CollectionRef, read: ShadowedRead, reason: SkipReason) {
        self.record(
            collection,
            read,
            &ShadowOutcome::Skipped(reason),
            None,
            None,
            None,
        );
    }

    pub(super) fn record(
        &self,
        collection: &CollectionRef,
        read: ShadowedRead,
        outcome: &ShadowOutcome,
        comparison: Option<&Comparison>,
        sample: Option<MismatchSample>,
        error: Option<String>,
    ) {
        let metrics = &self.metrics;
        let series = &metrics.collection_series;
        series.shadow_read(&collection.id, read.name(), outcome.label());
        if let ShadowOutcome::Skipped(reason) = outcome {
            metrics
                .shadow_skipped
                .with_label_values(&[reason.label()])
                .inc();
        }
        if let Some(c) = comparison {
            if let Some(recall) = c.recall {
                series.recall(&collection.id, recall);
            }
            if let Some(drift) = c.drift {
                series.drift(&collection.id, drift);
            }
        }
        let max = self.metrics.collection_series.limits().max;
        let mut board = self.scoreboard();
        let score = board.collection(collection, max);
        *score
            .shadow
            .entry((read.name(), outcome.label()))
            .or_default() += 1;
        if let ShadowOutcome::Skipped(reason) = outcome {
            *score.skipped.entry(reason.label()).or_default() += 1;
        }
        if let Some(c) = comparison {
            if let Some(recall) = c.recall {
                score.last_recall = Some(recall);
                score.min_recall = Some(score.min_recall.map_or(recall, |m| m.min(recall)));
            }
            if let Some(drift) = c.drift {
                score.max_drift = Some(score.max_drift.map_or(drift, |m| m.max(drift)));
            }
        }
        if error.is_some() {
            score.last_error = error;
        }
        if let Some(sample) = sample {
            score.last_mismatch_ms = Some(sample.at_ms);
            if self.settings.samples > 0 {
                while board.samples.len() >= self.settings.samples {
                    board.samples.pop_front();
                }
                board.samples.push_back(sample);
            }
        }
    }

    /// Counts a canary read.
    pub fn canary(&self, collection: &CollectionRef, outcome: CanaryOutcome) {
        self.metrics
            .collection_series
            .canary(&collection.id, outcome.label());
        let max = self.metrics.collection_series.limits().max;
        let mut board = self.scoreboard();
        *board
            .collection(collection, max)
            .canary
            .entry(outcome.label())
            .or_default() += 1;
    }

    /// Collections with a row in the score now (`_other` included).
    pub fn tracked(&self) -> usize {
        self.scoreboard().len()
    }

    /// The most recent mismatches, newest first.
    pub fn samples(&self, at_most: usize) -> Vec<MismatchSample> {
        self.scoreboard()
            .samples
            .iter()
            .rev()
            .take(at_most)
            .cloned()
            .collect()
    }

    /// The `shadow` section of `/admin/status`: settings, totals, per collection scores and
    /// the most recent mismatches.
    pub fn status(&self) -> Value {
        self.report(STATUS_SAMPLES)
    }

    /// `/admin/shadow`: [`ShadowReads::status`] with every sample kept.
    pub fn detail(&self) -> Value {
        self.report(usize::MAX)
    }

    fn report(&self, samples: usize) -> Value {
        let running = self
            .settings
            .queue
            .saturating_sub(self.permits.available_permits());
        let board = self.scoreboard();
        let mut totals: BTreeMap<&'static str, u64> = [
            "match", "mismatch", "error", "timeout", "dropped", "skipped",
        ]
        .into_iter()
        .map(|o| (o, 0))
        .collect();
        let mut skipped: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut canary: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut collections = Vec::new();
        for (id, score) in &board.collections {
            let mut by_operation: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
            let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
            for ((operation, outcome), n) in &score.shadow {
                *by_operation
                    .entry(operation)
                    .or_default()
                    .entry(outcome)
                    .or_default() += n;
                *outcomes.entry(outcome).or_default() += n;
                *totals.entry(outcome).or_default() += n;
            }
            for (reason, n) in &score.skipped {
                *skipped.entry(reason).or_default() += n;
            }
            for (outcome, n) in &score.canary {
                *canary.entry(outcome).or_default() += n;
            }
            collections.push(json!({
                "collection": id,
                "name": score.name,
                "shadow": outcomes,
                "by_operation": by_operation,
                "skipped": score.skipped,
                "canary": score.canary,
                "recall_last": score.last_recall,
                "recall_min": score.min_recall,
                "drift_max": score.max_drift,
                "last_mismatch_ms": score.last_mismatch_ms,
                "last_error": score.last_error,
            }));
        }
        let recent: Vec<&MismatchSample> = board.samples.iter().rev().take(samples).collect();
        json!({
            "timeout_ms": u64::try_from(self.settings.timeout.as_millis()).unwrap_or(u64::MAX),
            "queue": {"capacity": self.settings.queue, "running": running},
            "drift_epsilon": DRIFT_EPSILON,
            "totals": totals,
            "skipped": skipped,
            "canary": canary,
            "collections": collections,
            "samples_kept": board.samples.len(),
            "recent_mismatches": recent,
        })
    }
}
