//! What verify is asked to compare and what it reports: the options, the divergences found, and
//! each collection's verdict.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Serialize, Serializer};
use shift_chroma::compare::{Field, DRIFT_EPSILON};
use shift_config::BackendName;

/// What to compare and how strictly.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The client's tenants (the old store's names).
    pub tenants: Vec<String>,
    /// Only collections with these names; all when empty.
    pub collections: Vec<String>,
    /// Records whose embeddings are queried on both stores, per collection.
    pub sample: usize,
    /// Results per sample query.
    pub k: usize,
    /// Recall at k (pooled over the sample's queries) below this is a divergence (`query_recall`) when the target's
    /// neighbours are also farther than the source's by more than `max_gap`: two HNSW graphs
    /// built in different orders return different ids for near-ties, which is noise, not loss.
    pub min_recall: f64,
    /// Largest mean relative distance gap (target's top-k against the source's) that still
    /// counts as the same quality.
    pub max_gap: f64,
    /// A distance drift ([`shift_chroma::compare::distance_drift`]: relative, absolute below a
    /// distance of 1) above this is a divergence (`query_drift`).
    pub max_drift: f64,
    /// Records per `get`; the stores' `max_batch_size` at most.
    pub batch_size: usize,
    /// How often a diverged id is checked again before it is reported.
    pub recheck_rounds: u32,
    /// Pause before each re-check, after `settle`.
    pub recheck_pause: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            tenants: vec!["default_tenant".to_owned()],
            collections: Vec::new(),
            sample: 20,
            k: 10,
            min_recall: 0.9,
            max_gap: 0.05,
            max_drift: DRIFT_EPSILON,
            batch_size: 500,
            recheck_rounds: 3,
            recheck_pause: Duration::from_millis(500),
        }
    }
}

/// A kind of divergence, as reports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DivergenceKind {
    /// The source has the collection, the target does not.
    MissingCollection,
    /// Only the target has the collection.
    ExtraCollection,
    /// The source has the record, the target does not.
    MissingRecord,
    /// Only the target has the record.
    ExtraRecord,
    ChangedEmbedding,
    ChangedMetadata,
    ChangedDocument,
    ChangedUri,
    /// The query sample's mean recall at k is below the threshold.
    QueryRecall,
    /// The query sample's distances drift more than the threshold.
    QueryDrift,
}

impl DivergenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DivergenceKind::MissingCollection => "missing_collection",
            DivergenceKind::ExtraCollection => "extra_collection",
            DivergenceKind::MissingRecord => "missing_record",
            DivergenceKind::ExtraRecord => "extra_record",
            DivergenceKind::ChangedEmbedding => "changed_embedding",
            DivergenceKind::ChangedMetadata => "changed_metadata",
            DivergenceKind::ChangedDocument => "changed_document",
            DivergenceKind::ChangedUri => "changed_uri",
            DivergenceKind::QueryRecall => "query_recall",
            DivergenceKind::QueryDrift => "query_drift",
        }
    }

    pub(super) fn changed(field: Field) -> DivergenceKind {
        match field {
            Field::Embedding => DivergenceKind::ChangedEmbedding,
            Field::Metadata => DivergenceKind::ChangedMetadata,
            Field::Document => DivergenceKind::ChangedDocument,
            Field::Uri => DivergenceKind::ChangedUri,
        }
    }

    /// A record whose content differs (as opposed to one on a single side).
    pub fn is_changed_record(self) -> bool {
        matches!(
            self,
            DivergenceKind::ChangedEmbedding
                | DivergenceKind::ChangedMetadata
                | DivergenceKind::ChangedDocument
                | DivergenceKind::ChangedUri
        )
    }
}

impl std::fmt::Display for DivergenceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Ids a JSON report shows per divergence; the count says how many there are.
const IDS_SHOWN: usize = 100;

fn first_ids<S: Serializer>(ids: &[String], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(ids.iter().take(IDS_SHOWN))
}

/// One kind of divergence in one collection.
#[derive(Debug, Clone, Serialize)]
pub struct Divergence {
    pub kind: DivergenceKind,
    /// The client's tenant and database.
    pub tenant: String,
    pub database: String,
    /// The collection's name.
    pub collection: String,
    /// Records concerned (for a whole collection, the records it holds).
    pub count: u64,
    /// Every record id concerned, sorted (a JSON report shows the first 100).
    #[serde(serialize_with = "first_ids")]
    pub ids: Vec<String>,
    /// What was measured, for query divergences.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The A/B query sample of one collection.
#[derive(Debug, Clone, Serialize)]
pub struct QuerySample {
    /// Sample embeddings queried.
    pub queries: usize,
    pub k: usize,
    /// Recall at k of the target against the source, pooled over the queries (the mean, as each
    /// query asks for k), ties at the k-th distance counted as hits.
    pub recall: f64,
    /// The worst single query's recall.
    pub worst_recall: f64,
    /// Largest distance drift ([`shift_chroma::compare::distance_drift`]) over ids both
    /// returned.
    pub drift: f64,
    /// Mean over queries of (target's mean top-k distance - source's) / source's: how much
    /// farther the target's neighbours are. Near 0 when ids differ only by ANN noise.
    pub gap: f64,
    /// Why the target could not answer, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A collection's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Match,
    Diverged,
    /// Only on the source.
    Missing,
    /// Only on the target.
    Extra,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Match => "match",
            Verdict::Diverged => "diverged",
            Verdict::Missing => "missing",
            Verdict::Extra => "extra",
        }
    }
}

/// One collection's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CollectionReport {
    pub tenant: String,
    pub database: String,
    pub name: String,
    /// Each store's own id of the collection.
    pub source_id: Option<String>,
    pub target_id: Option<String>,
    pub source_count: Option<u64>,
    pub target_count: Option<u64>,
    /// Records both stores hold, compared by content.
    pub compared: u64,
    pub missing: u64,
    pub extra: u64,
    /// Records whose content differs.
    pub changed: u64,
    pub query: Option<QuerySample>,
    pub verdict: Verdict,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub source: BackendName,
    pub target: BackendName,
    pub collections: Vec<CollectionReport>,
    pub divergences: Vec<Divergence>,
    /// Ids found diverged on the first pass and checked again.
    pub rechecked: u64,
    /// Of those, the ones that agreed on a re-check (writes in flight during the scan).
    pub settled_on_recheck: u64,
    pub elapsed_seconds: f64,
    /// True when nothing diverges.
    pub matches: bool,
}

impl VerifyReport {
    /// The divergences of one collection.
    pub fn divergences_of<'a>(
        &'a self,
        collection: &'a CollectionReport,
    ) -> impl Iterator<Item = &'a Divergence> + 'a {
        self.divergences.iter().filter(move |d| {
            d.tenant == collection.tenant
                && d.database == collection.database
                && d.collection == collection.name
        })
    }

    /// The record ids `repair` should reconcile in `collection`: missing and changed ones, and
    /// extra ones when `delete_extra` (reconciling an extra id deletes it from the target).
    pub fn repair_ids(&self, collection: &CollectionReport, delete_extra: bool) -> Vec<String> {
        let ids: BTreeSet<&String> = self
            .divergences_of(collection)
            .filter(|d| {
                d.kind == DivergenceKind::MissingRecord
                    || d.kind.is_changed_record()
                    || (delete_extra && d.kind == DivergenceKind::ExtraRecord)
            })
            .flat_map(|d| d.ids.iter())
            .collect();
        ids.into_iter().cloned().collect()
    }
}

/// Record ids and what differs about each.
pub type Diffs = BTreeMap<String, BTreeSet<DivergenceKind>>;
