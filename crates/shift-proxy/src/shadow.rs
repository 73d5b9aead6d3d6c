//! Shadow and canary reads: the evidence that the secondary can be trusted with reads before a
//! cutover.
//!
//! - A shadow read sends a copy of a client's query, get or count to the secondary at the same
//!   moment as the primary, in a background task, and compares the two answers once both are
//!   in. The client gets the primary's answer as soon as it arrives: a shadow never adds to
//!   its latency. Shadows have their own timeout and run `shadow_queue` at most at once; one
//!   over that bound is dropped, and every shadow that was not compared is counted, with why
//!   (Envoy and nginx mirror fire-and-forget and skip silently; we do not).
//! - A canary read is served by the secondary (see [`crate::reads`]); this module keeps its
//!   score too.
//!
//! ANN answers differ a little between two HNSW graphs, so a query is judged by recall at k
//! and distance drift, and only a recall below 1 or a drift above [`DRIFT_EPSILON`] is called
//! a mismatch (Diffy's lesson: a difference means something only above the noise floor). Gets
//! compare id sets and content, counts compare equal. The comparison functions are pure;
//! [`ShadowReads`] runs them and keeps the score: Prometheus metrics per collection, and for the
//! admin API totals per collection and a ring of the most recent mismatches.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde_json::{json, Value};
use shift_chroma::Operation;
use shift_config::{BackendName, ReadsConfig};
use tokio::sync::{oneshot, Semaphore};

use crate::backend::Backends;
use crate::collections::CollectionEntry;
use crate::metrics::ProxyMetrics;

/// Relative distance drift above which a query is a mismatch. Two stores holding the same
/// vectors compute the same distances to within float noise; 1e-3 is far above that noise and
/// far below any difference that changes a ranking that matters.
pub const DRIFT_EPSILON: f64 = 1e-3;

/// Tolerance when comparing embedding components (they round-trip through f32 on both stores).
const EMBEDDING_EPSILON: f64 = 1e-6;

/// Ids named in a mismatch description, at most: enough to look one up, short enough for a log.
const LISTED_IDS: usize = 5;

/// Answers larger than this are not compared: a shadow holds both answers in memory, the queue
/// bounds how many shadows run, and this bounds how much each holds. A primary answer that says
/// it is larger streams to the client as usual; the shadow is skipped and counted (Envoy skips
/// such mirrors silently).
pub const MAX_COMPARED_BODY: u64 = 32 * 1024 * 1024;

/// Mismatch samples `/admin/status` shows (all of them are at `/admin/shadow`).
const STATUS_SAMPLES: usize = 10;

/// The reads that are shadowed and canaried: those that read records of one collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShadowedRead {
    Query,
    Get,
    Count,
}

impl ShadowedRead {
    pub fn of(operation: Operation) -> Option<ShadowedRead> {
        match operation {
            Operation::CollectionQuery => Some(ShadowedRead::Query),
            Operation::CollectionGet => Some(ShadowedRead::Get),
            Operation::CollectionCount => Some(ShadowedRead::Count),
            _ => None,
        }
    }

    /// The operation's name, as in `chroma_shift_requests_total`.
    pub fn name(self) -> &'static str {
        match self {
            ShadowedRead::Query => "collection_query",
            ShadowedRead::Get => "collection_get",
            ShadowedRead::Count => "collection_count",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Comparisons: pure functions of the two answers.

/// What comparing two answers found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comparison {
    /// Why the answers disagree (above the noise floor); `None` when they agree.
    pub mismatch: Option<String>,
    /// Queries: recall at k of the secondary's ids against the primary's, over all the
    /// request's query embeddings.
    pub recall: Option<f64>,
    /// Queries: k, the most results the primary returned for one query embedding.
    pub k: usize,
    /// Queries: the largest relative distance drift of a record both stores returned.
    pub drift: Option<f64>,
}

/// An answer that cannot be compared (not the shape Chroma answers with).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Uncomparable(String);

fn list(ids: &[&str]) -> String {
    let shown: Vec<&str> = ids.iter().take(LISTED_IDS).copied().collect();
    if ids.len() > LISTED_IDS {
        format!("[{}, ...]", shown.join(", "))
    } else {
        format!("[{}]", shown.join(", "))
    }
}

/// `ids` without repeats, in first-seen order (one record may miss from several queries).
fn unique(ids: Vec<&str>) -> Vec<&str> {
    let mut seen = HashSet::new();
    ids.into_iter().filter(|id| seen.insert(*id)).collect()
}

/// "1 id", "2 ids".
fn ids_count(n: usize) -> String {
    if n == 1 {
        "1 id".to_owned()
    } else {
        format!("{n} ids")
    }
}

/// "1 differs", "2 differ".
fn differ_count(n: usize) -> String {
    if n == 1 {
        "1 differs".to_owned()
    } else {
        format!("{n} differ")
    }
}

/// `x` cut (not rounded) to two decimals, so a recall just under 1 never reads "1.00".
fn two_decimals(x: f64) -> String {
    format!("{:.2}", (x * 100.0).floor() / 100.0)
}

/// The relative drift between two distances: relative to the distance, and absolute below 1 so
/// that near-zero distances (a query for a stored vector) do not turn float noise into a ratio.
pub fn distance_drift(primary: f64, secondary: f64) -> f64 {
    (primary - secondary).abs() / primary.abs().max(1.0)
}

fn ids_of(value: &Value, side: &str) -> Result<Vec<String>, Uncomparable> {
    let ids = value
        .get("ids")
        .and_then(Value::as_array)
        .ok_or_else(|| Uncomparable(format!("the {side} answer has no ids")))?;
    ids.iter()
        .map(|id| {
            id.as_str().map(str::to_owned).ok_or_else(|| {
                Uncomparable(format!("the {side} answer has an id that is not a string"))
            })
        })
        .collect()
}

/// The `ids` of a query answer: one list per query embedding.
fn nested_ids(value: &Value, side: &str) -> Result<Vec<Vec<String>>, Uncomparable> {
    let lists = value
        .get("ids")
        .and_then(Value::as_array)
        .ok_or_else(|| Uncomparable(format!("the {side} answer has no ids")))?;
    lists
        .iter()
        .map(|ids| ids_of(&json!({ "ids": ids }), side))
        .collect()
}

/// A per-record field of one result list (`documents`, `metadatas`, `distances` ...); `None`
/// when the request did not include it.
fn field<'a>(list: &'a Value, name: &str) -> Option<&'a Vec<Value>> {
    list.get(name).and_then(Value::as_array)
}

/// The record fields whose content is compared.
const CONTENT_FIELDS: [&str; 4] = ["documents", "metadatas", "embeddings", "uris"];

fn same_field_value(name: &str, a: &Value, b: &Value) -> bool {
    if name != "embeddings" {
        return a == b;
    }
    match (a.as_array(), b.as_array()) {
        (Some(a), Some(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| match (x.as_f64(), y.as_f64()) {
                        (Some(x), Some(y)) => (x - y).abs() <= EMBEDDING_EPSILON * x.abs().max(1.0),
                        _ => x == y,
                    })
        }
        // Base64 strings, nulls: compare as they are.
        _ => a == b,
    }
}

/// One side of a comparison of record content: a result list (a get answer, or one query's
/// slice of a query answer, reshaped like a get answer) and where each id sits in it.
struct Records<'a> {
    list: &'a Value,
    index: HashMap<&'a str, usize>,
}

impl<'a> Records<'a> {
    fn new(list: &'a Value, ids: &'a [String]) -> Records<'a> {
        let index = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        Records { list, index }
    }
}

/// The ids both sides hold whose content differs, and the fields that differ.
fn content_differences<'a>(
    primary: &Records<'a>,
    secondary: &Records<'_>,
    ids: &[&'a str],
    fields: &mut Vec<&'static str>,
) -> Vec<&'a str> {
    let mut differing = Vec::new();
    for id in ids {
        let (Some(&p), Some(&s)) = (primary.index.get(id), secondary.index.get(id)) else {
            continue;
        };
        let mut differs = false;
        for name in CONTENT_FIELDS {
            let (Some(pf), Some(sf)) = (field(primary.list, name), field(secondary.list, name))
            else {
                continue;
            };
            let (Some(a), Some(b)) = (pf.get(p), sf.get(s)) else {
                continue;
            };
            if !same_field_value(name, a, b) {
                differs = true;
                if !fields.contains(&name) {
                    fields.push(name);
                }
            }
        }
        if differs {
            differing.push(*id);
        }
    }
    differing
}

/// One query embedding's results as a get-shaped object, for [`content_differences`].
fn query_slice(answer: &Value, i: usize) -> Value {
    let mut slice = serde_json::Map::new();
    for name in CONTENT_FIELDS.iter().chain(["distances"].iter()) {
        if let Some(lists) = field(answer, name) {
            slice.insert(
                (*name).to_owned(),
                lists.get(i).cloned().unwrap_or(Value::Null),
            );
        }
    }
    Value::Object(slice)
}

fn distances(slice: &Value) -> Option<Vec<Option<f64>>> {
    field(slice, "distances").map(|d| d.iter().map(Value::as_f64).collect())
}

/// Compares two answers to the same query: recall at k of the secondary's ids against the
/// primary's, the largest distance drift of the records both returned, and their content.
///
/// A record the secondary returned instead of one of the primary's at the same distance as the
/// primary's k-th result is a tie (duplicate vectors are common, and HNSW orders ties as it
/// likes), not a miss.
pub fn compare_query(primary: &Value, secondary: &Value) -> Result<Comparison, Uncomparable> {
    let p_lists = nested_ids(primary, "primary")?;
    let s_lists = nested_ids(secondary, "secondary")?;
    if p_lists.len() != s_lists.len() {
        return Ok(Comparison {
            mismatch: Some(format!(
                "query: {} result lists on the primary, {} on the secondary",
                p_lists.len(),
                s_lists.len()
            )),
            ..Comparison::default()
        });
    }
    let mut expected = 0usize;
    let mut found = 0usize;
    let mut k = 0usize;
    let mut drift: Option<f64> = None;
    let mut missing: Vec<&str> = Vec::new();
    let mut surplus = 0usize;
    let mut differing: Vec<&str> = Vec::new();
    let mut fields = Vec::new();
    let slices: Vec<(Value, Value)> = (0..p_lists.len())
        .map(|i| (query_slice(primary, i), query_slice(secondary, i)))
        .collect();
    for (i, (p_ids, s_ids)) in p_lists.iter().zip(&s_lists).enumerate() {
        let (p_slice, s_slice) = &slices[i];
        k = k.max(p_ids.len());
        expected += p_ids.len();
        surplus += s_ids.len().saturating_sub(p_ids.len());
        let s_set: HashSet<&str> = s_ids.iter().map(String::as_str).collect();
        let p_set: HashSet<&str> = p_ids.iter().map(String::as_str).collect();
        let p_dist = distances(p_slice);
        let s_dist = distances(s_slice);
        let shared: Vec<&str> = p_ids
            .iter()
            .map(String::as_str)
            .filter(|id| s_set.contains(id))
            .collect();
        let mut hits = shared.len();
        // Ties at the k-th distance: the secondary's ids the primary lacks, at the distance of
        // the primary's farthest result. A closer one is no tie: it pushed one of the
        // primary's out, and may be a record the primary no longer has.
        if let (Some(pd), Some(sd)) = (&p_dist, &s_dist) {
            if let Some(Some(boundary)) = pd.last() {
                let ties = s_ids
                    .iter()
                    .zip(sd)
                    .filter(|(id, d)| {
                        !p_set.contains(id.as_str())
                            && d.is_some_and(|d| distance_drift(*boundary, d) <= DRIFT_EPSILON)
                    })
                    .count();
                hits = (hits + ties).min(p_ids.len());
            }
            let p_index: HashMap<&str, usize> = p_ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.as_str(), i))
                .collect();
            for (j, id) in s_ids.iter().enumerate() {
                let Some(&pi) = p_index.get(id.as_str()) else {
                    continue;
                };
                if let (Some(Some(a)), Some(Some(b))) = (pd.get(pi), sd.get(j)) {
                    let d = distance_drift(*a, *b);
                    drift = Some(drift.map_or(d, |m: f64| m.max(d)));
                }
            }
        }
        found += hits;
        if hits < p_ids.len() {
            missing.extend(
                p_ids
                    .iter()
                    .map(String::as_str)
                    .filter(|id| !s_set.contains(id)),
            );
        }
        let p_records = Records::new(p_slice, p_ids);
        let s_records = Records::new(s_slice, s_ids);
        differing.extend(content_differences(
            &p_records,
            &s_records,
            &shared,
            &mut fields,
        ));
    }
    let missing = unique(missing);
    let differing = unique(differing);
    let recall = if expected == 0 {
        1.0
    } else {
        found as f64 / expected as f64
    };
    let mut problems = Vec::new();
    if recall < 1.0 {
        let over = if p_lists.len() > 1 {
            format!(" over {} queries", p_lists.len())
        } else {
            String::new()
        };
        problems.push(format!(
            "recall@{k} {}{over}, missing {}",
            two_decimals(recall),
            list(&missing)
        ));
    }
    if surplus > 0 {
        problems.push(format!(
            "{surplus} more result{} on the secondary than on the primary",
            if surplus == 1 { "" } else { "s" }
        ));
    }
    if let Some(d) = drift.filter(|d| *d > DRIFT_EPSILON) {
        problems.push(format!("distance drift {d:.4} (above {DRIFT_EPSILON})"));
    }
    if !differing.is_empty() {
        problems.push(format!(
            "{} in content {} ({})",
            differ_count(differing.len()),
            list(&differing),
            fields.join(", ")
        ));
    }
    Ok(Comparison {
        mismatch: (!problems.is_empty()).then(|| problems.join("; ")),
        recall: Some(recall),
        k,
        drift,
    })
}

/// Whether a get's answer is all the records it selects, so the id sets must be equal. A page
/// (an offset, or a limit the primary filled) is cut from an order that is each store's own
/// insertion order, so two correct stores may answer different pages: only the content of the
/// records both returned is compared then.
pub fn get_is_complete(request: &Value, primary_records: usize) -> bool {
    let offset = request.get("offset").and_then(Value::as_u64).unwrap_or(0);
    let limit = request.get("limit").and_then(Value::as_u64);
    offset == 0 && limit.is_none_or(|limit| (primary_records as u64) < limit)
}

/// Compares two answers to the same get: the id sets (when `complete`, see
/// [`get_is_complete`]) and the content of the records both returned.
pub fn compare_get(
    primary: &Value,
    secondary: &Value,
    complete: bool,
) -> Result<Comparison, Uncomparable> {
    let p_ids = ids_of(primary, "primary")?;
    let s_ids = ids_of(secondary, "secondary")?;
    let p_set: HashSet<&str> = p_ids.iter().map(String::as_str).collect();
    let s_set: HashSet<&str> = s_ids.iter().map(String::as_str).collect();
    let only_primary: Vec<&str> = p_ids
        .iter()
        .map(String::as_str)
        .filter(|id| !s_set.contains(id))
        .collect();
    let only_secondary: Vec<&str> = s_ids
        .iter()
        .map(String::as_str)
        .filter(|id| !p_set.contains(id))
        .collect();
    let shared: Vec<&str> = p_ids
        .iter()
        .map(String::as_str)
        .filter(|id| s_set.contains(id))
        .collect();
    let mut fields = Vec::new();
    let differing = content_differences(
        &Records::new(primary, &p_ids),
        &Records::new(secondary, &s_ids),
        &shared,
        &mut fields,
    );
    let mut problems = Vec::new();
    if complete && !only_primary.is_empty() {
        problems.push(format!(
            "{} only on primary {}",
            ids_count(only_primary.len()),
            list(&only_primary)
        ));
    }
    if complete && !only_secondary.is_empty() {
        problems.push(format!(
            "{} only on secondary {}",
            ids_count(only_secondary.len()),
            list(&only_secondary)
        ));
    }
    if !differing.is_empty() {
        problems.push(format!(
            "{} in content {} ({})",
            differ_count(differing.len()),
            list(&differing),
            fields.join(", ")
        ));
    }
    Ok(Comparison {
        mismatch: (!problems.is_empty()).then(|| format!("get: {}", problems.join("; "))),
        ..Comparison::default()
    })
}

/// Compares two counts.
pub fn compare_count(primary: &Value, secondary: &Value) -> Result<Comparison, Uncomparable> {
    let count = |v: &Value, side: &str| {
        v.as_u64()
            .ok_or_else(|| Uncomparable(format!("the {side} answer is not a count: {v}")))
    };
    let (p, s) = (count(primary, "primary")?, count(secondary, "secondary")?);
    Ok(Comparison {
        mismatch: (p != s).then(|| format!("count {p} vs {s}")),
        ..Comparison::default()
    })
}

/// Compares the two answers to `read`, given the client's request body.
pub fn compare(
    read: ShadowedRead,
    request: &[u8],
    primary: &[u8],
    secondary: &[u8],
) -> Result<Comparison, Uncomparable> {
    let parse = |bytes: &[u8], side: &str| {
        serde_json::from_slice::<Value>(bytes)
            .map_err(|e| Uncomparable(format!("the {side} answer is not JSON: {e}")))
    };
    let (p, s) = (parse(primary, "primary")?, parse(secondary, "secondary")?);
    match read {
        ShadowedRead::Query => compare_query(&p, &s),
        ShadowedRead::Count => compare_count(&p, &s),
        ShadowedRead::Get => {
            let request = serde_json::from_slice::<Value>(request).unwrap_or(Value::Null);
            let records = p.get("ids").and_then(Value::as_array).map_or(0, Vec::len);
            compare_get(&p, &s, get_is_complete(&request, records))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running shadows and keeping the score.

/// How shadows run; from `[reads]`.
#[derive(Debug, Clone)]
pub struct ShadowSettings {
    /// Limit on the secondary's whole answer (head and body) to a shadow.
    pub timeout: Duration,
    /// Shadows running at most; more are dropped.
    pub queue: usize,
    /// Mismatch samples kept.
    pub samples: usize,
}

impl ShadowSettings {
    pub fn from_config(reads: &ReadsConfig) -> ShadowSettings {
        ShadowSettings {
            timeout: reads.shadow_timeout,
            queue: reads.shadow_queue,
            samples: reads.mismatch_samples,
        }
    }
}

/// The collection a shadow or canary read is about.
#[derive(Debug, Clone, Serialize)]
pub struct CollectionRef {
    /// The client's id: the `collection` label of the metrics.
    pub id: String,
    pub name: String,
}

impl CollectionRef {
    pub fn of(entry: &CollectionEntry) -> CollectionRef {
        CollectionRef {
            id: entry.client_id.to_string(),
            name: entry.name.clone(),
        }
    }
}

/// Why a shadow read was not sent or not compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// The secondary has writes of the collection still queued: it would differ for that
    /// reason alone.
    Lagging,
    /// The collection has no id on the secondary yet.
    Unmapped,
    /// The primary failed or refused the read: nothing to compare with.
    PrimaryFailed,
    /// The primary's answer is over [`MAX_COMPARED_BODY`].
    TooLarge,
}

impl SkipReason {
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::Lagging => "lagging",
            SkipReason::Unmapped => "unmapped",
            SkipReason::PrimaryFailed => "primary_failed",
            SkipReason::TooLarge => "too_large",
        }
    }
}

/// How a shadow read ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ShadowOutcome {
    Match,
    Mismatch,
    /// The secondary failed, refused, or answered something that cannot be compared.
    Error,
    /// The secondary did not answer within the shadow timeout.
    Timeout,
    /// The shadow queue was full.
    Dropped,
    Skipped(SkipReason),
}

impl ShadowOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            ShadowOutcome::Match => "match",
            ShadowOutcome::Mismatch => "mismatch",
            ShadowOutcome::Error => "error",
            ShadowOutcome::Timeout => "timeout",
            ShadowOutcome::Dropped => "dropped",
            ShadowOutcome::Skipped(_) => "skipped",
        }
    }
}

/// How a canary read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryOutcome {
    /// The secondary answered the client.
    Served,
    /// The secondary failed or refused; the primary answered instead.
    Fallback,
    /// The secondary has writes of the collection still queued: the client might not read
    /// its own writes there.
    SkippedLagging,
    /// The collection has no id on the secondary yet.
    SkippedUnmapped,
}

impl CanaryOutcome {
    pub fn label(self) -> &'static str {
        match self {
            CanaryOutcome::Served => "served",
            CanaryOutcome::Fallback => "fallback",
            CanaryOutcome::SkippedLagging => "skipped_lagging",
            CanaryOutcome::SkippedUnmapped => "skipped_unmapped",
        }
    }
}

/// One mismatch, as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MismatchSample {
    /// When it was found (Unix milliseconds).
    pub at_ms: u64,
    pub collection: CollectionRef,
    pub operation: &'static str,
    pub primary: BackendName,
    pub secondary: BackendName,
    /// What differs, such as "recall@10 0.80, missing [a, b]" or "count 10 vs 8".
    pub description: String,
}

/// A shadow to run: the client's read, already addressed to the secondary.
#[derive(Debug)]
pub struct ShadowRequest {
    pub collection: CollectionRef,
    pub read: ShadowedRead,
    pub primary: BackendName,
    pub secondary: BackendName,
    pub method: Method,
    /// The path and query on the secondary (its collection id, its tenant and database).
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The primary's side of a running shadow. Hand it the primary's answer; dropping it instead
/// (the primary failed) counts the shadow as skipped.
#[derive(Debug)]
pub struct PrimaryHandoff {
    sender: oneshot::Sender<Result<Bytes, SkipReason>>,
}

impl PrimaryHandoff {
    /// The primary's successful answer, for the comparison.
    pub fn answered(self, body: Bytes) {
        // The shadow task is gone only if the runtime is shutting down.
        let _ = self.sender.send(Ok(body));
    }

    /// The primary answered, but its answer will not be compared.
    pub fn skipped(self, reason: SkipReason) {
        let _ = self.sender.send(Err(reason));
    }
}

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
}

#[derive(Debug, Default)]
struct Scoreboard {
    collections: BTreeMap<String, CollectionScore>,
    samples: VecDeque<MismatchSample>,
}

impl Scoreboard {
    fn collection(&mut self, collection: &CollectionRef) -> &mut CollectionScore {
        let score = self.collections.entry(collection.id.clone()).or_default();
        if score.name != collection.name {
            score.name.clone_from(&collection.name);
        }
        score
    }
}

/// Runs shadow reads and keeps the score of shadows and canaries.
#[derive(Debug)]
pub struct ShadowReads {
    settings: ShadowSettings,
    /// One permit per running shadow: the bounded queue.
    permits: Arc<Semaphore>,
    metrics: ProxyMetrics,
    /// Held for a few field updates at a time, never across an await.
    score: Mutex<Scoreboard>,
}

impl ShadowReads {
    pub fn new(settings: ShadowSettings, metrics: ProxyMetrics) -> ShadowReads {
        ShadowReads {
            permits: Arc::new(Semaphore::new(settings.queue)),
            settings,
            metrics,
            score: Mutex::new(Scoreboard::default()),
        }
    }

    fn scoreboard(&self) -> std::sync::MutexGuard<'_, Scoreboard> {
        // A panic while holding it leaves counters, nothing inconsistent: keep using them.
        self.score
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

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

    /// Starts a shadow of `request` in the background, sent to the secondary now. `None` when
    /// the queue is full: the shadow is dropped (and counted).
    pub fn start(
        self: &Arc<Self>,
        backends: Arc<Backends>,
        request: ShadowRequest,
    ) -> Option<PrimaryHandoff> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.record(
                &request.collection,
                request.read,
                &ShadowOutcome::Dropped,
                None,
                None,
                None,
            );
            return None;
        };
        let (sender, receiver) = oneshot::channel();
        let shadows = self.clone();
        let timeout = self.settings.timeout;
        tokio::spawn(async move {
            let _permit = permit;
            shadows.metrics.shadow_in_flight.inc();
            let secondary = tokio::time::timeout(timeout, fetch(&backends, &request));
            let (secondary, primary) = tokio::join!(secondary, receiver);
            shadows.metrics.shadow_in_flight.dec();
            let primary = primary.unwrap_or(Err(SkipReason::PrimaryFailed));
            shadows.settle(&request, primary, secondary.ok());
        });
        Some(PrimaryHandoff { sender })
    }

    /// Judges a shadow once both answers are in (the secondary's is `None` when it timed out).
    fn settle(
        &self,
        request: &ShadowRequest,
        primary: Result<Bytes, SkipReason>,
        secondary: Option<Result<(StatusCode, Bytes), String>>,
    ) {
        let (collection, read) = (&request.collection, request.read);
        let primary = match primary {
            Ok(body) if body.len() as u64 > MAX_COMPARED_BODY => Err(SkipReason::TooLarge),
            other => other,
        };
        let primary = match primary {
            Ok(body) => body,
            Err(reason) => {
                self.skip(collection, read, reason);
                return;
            }
        };
        let (outcome, comparison, error) = match secondary {
            None => (
                ShadowOutcome::Timeout,
                None,
                Some(format!(
                    "the {} store did not answer within {:?}",
                    request.secondary, self.settings.timeout
                )),
            ),
            Some(Err(error)) => (ShadowOutcome::Error, None, Some(error)),
            Some(Ok((status, body))) if !status.is_success() => (
                ShadowOutcome::Error,
                None,
                Some(format!(
                    "the {} store answered {status}: {}",
                    request.secondary,
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                )),
            ),
            Some(Ok((_, body))) => match compare(read, &request.body, &primary, &body) {
                Ok(c) if c.mismatch.is_some() => (ShadowOutcome::Mismatch, Some(c), None),
                Ok(c) => (ShadowOutcome::Match, Some(c), None),
                Err(e) => (ShadowOutcome::Error, None, Some(e.to_string())),
            },
        };
        let sample = comparison
            .as_ref()
            .and_then(|c| c.mismatch.clone())
            .map(|description| MismatchSample {
                at_ms: crate::replay::now_ms(),
                collection: collection.clone(),
                operation: read.name(),
                primary: request.primary,
                secondary: request.secondary,
                description,
            });
        if let Some(sample) = &sample {
            tracing::info!(
                collection = %collection.id,
                name = %collection.name,
                operation = read.name(),
                description = %sample.description,
                "shadow read mismatch"
            );
        }
        self.record(
            collection,
            read,
            &outcome,
            comparison.as_ref(),
            sample,
            error,
        );
    }

    fn record(
        &self,
        collection: &CollectionRef,
        read: ShadowedRead,
        outcome: &ShadowOutcome,
        comparison: Option<&Comparison>,
        sample: Option<MismatchSample>,
        error: Option<String>,
    ) {
        let metrics = &self.metrics;
        metrics
            .shadow_reads
            .with_label_values(&[&collection.id, read.name(), outcome.label()])
            .inc();
        if let ShadowOutcome::Skipped(reason) = outcome {
            metrics
                .shadow_skipped
                .with_label_values(&[reason.label()])
                .inc();
        }
        if let Some(c) = comparison {
            if let Some(recall) = c.recall {
                metrics
                    .shadow_recall
                    .with_label_values(&[&collection.id])
                    .observe(recall);
            }
            if let Some(drift) = c.drift {
                metrics
                    .shadow_distance_drift
                    .with_label_values(&[&collection.id])
                    .observe(drift);
            }
        }
        let mut board = self.scoreboard();
        let score = board.collection(collection);
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
            .canary_reads
            .with_label_values(&[&collection.id, outcome.label()])
            .inc();
        let mut board = self.scoreboard();
        *board
            .collection(collection)
            .canary
            .entry(outcome.label())
            .or_default() += 1;
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

/// The secondary's whole answer to a shadow, or why it failed.
async fn fetch(
    backends: &Backends,
    request: &ShadowRequest,
) -> Result<(StatusCode, Bytes), String> {
    let response = backends
        .get(request.secondary)
        .send(
            request.method.clone(),
            &request.path,
            request.headers.clone(),
            request.body.clone(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let limit = usize::try_from(MAX_COMPARED_BODY).unwrap_or(usize::MAX);
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                format!(
                    "the {} store's answer is over {MAX_COMPARED_BODY} bytes",
                    request.secondary
                )
            } else {
                format!("the {} store failed mid-answer: {e}", request.secondary)
            }
        })?
        .to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(ids: &[&[&str]], distances: &[&[f64]]) -> Value {
        json!({ "ids": ids, "distances": distances, "include": ["distances"] })
    }

    #[test]
    fn identical_queries_match_with_full_recall_and_no_drift() {
        let answer = query(&[&["a", "b", "c"]], &[&[0.1, 0.2, 0.3]]);
        let c = compare_query(&answer, &answer).unwrap();
        assert_eq!(c.mismatch, None);
        assert_eq!(c.recall, Some(1.0));
        assert_eq!(c.k, 3);
        assert_eq!(c.drift, Some(0.0));
    }

    #[test]
    fn a_missing_record_lowers_recall_and_is_named() {
        let primary = query(
            &[&["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]],
            &[&[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]],
        );
        let secondary = query(
            &[&["a", "c", "d", "e", "f", "g", "h", "j", "x", "y"]],
            &[&[0.1, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.5, 1.6]],
        );
        let c = compare_query(&primary, &secondary).unwrap();
        assert_eq!(c.recall, Some(0.8));
        assert_eq!(
            c.mismatch.as_deref(),
            Some("recall@10 0.80, missing [b, i]")
        );
    }

    #[test]
    fn recall_is_over_all_query_embeddings() {
        let primary = query(&[&["a", "b"], &["c", "d"]], &[&[0.1, 0.2], &[0.1, 0.2]]);
        let secondary = query(&[&["a", "b"], &["c", "z"]], &[&[0.1, 0.2], &[0.1, 0.9]]);
        let c = compare_query(&primary, &secondary).unwrap();
        assert_eq!(c.recall, Some(0.75));
        assert_eq!(
            c.mismatch.as_deref(),
            Some("recall@2 0.75 over 2 queries, missing [d]")
        );
        // A record missing from several queries is named once.
        let primary = query(&[&["a", "b"], &["b", "c"]], &[&[0.1, 0.2], &[0.1, 0.2]]);
        let secondary = query(&[&["a", "x"], &["c", "y"]], &[&[0.1, 0.9], &[0.2, 0.9]]);
        let c = compare_query(&primary, &secondary).unwrap();
        assert_eq!(
            c.mismatch.as_deref(),
            Some("recall@2 0.50 over 2 queries, missing [b]")
        );
    }

    #[test]
    fn drift_below_epsilon_is_noise_and_above_is_a_mismatch() {
        let primary = query(&[&["a", "b"]], &[&[0.5, 2.0]]);
        let noisy = query(&[&["a", "b"]], &[&[0.5000001, 2.0000002]]);
        let c = compare_query(&primary, &noisy).unwrap();
        assert_eq!(c.mismatch, None);
        assert!(c.drift.unwrap() < 1e-6);

        let drifted = query(&[&["a", "b"]], &[&[0.5, 2.1]]);
        let c = compare_query(&primary, &drifted).unwrap();
        let drift = c.drift.unwrap();
        assert!((drift - 0.05).abs() < 1e-9, "relative to 2.0: {drift}");
        assert_eq!(c.recall, Some(1.0));
        assert_eq!(
            c.mismatch.as_deref(),
            Some("distance drift 0.0500 (above 0.001)")
        );
    }

    #[test]
    fn drift_of_small_distances_is_absolute() {
        assert_eq!(distance_drift(0.0, 1e-7), 1e-7);
        assert!((distance_drift(10.0, 10.5) - 0.05).abs() < 1e-12);
    }

    #[test]
    fn ties_at_the_kth_distance_are_not_misses() {
        // "c" and "d" are the same distance away: either may come third.
        let primary = query(&[&["a", "b", "c"]], &[&[0.1, 0.2, 0.3]]);
        let secondary = query(&[&["a", "b", "d"]], &[&[0.1, 0.2, 0.3]]);
        let c = compare_query(&primary, &secondary).unwrap();
        assert_eq!(c.recall, Some(1.0));
        assert_eq!(c.mismatch, None);
        // A farther one is a miss.
        let secondary = query(&[&["a", "b", "d"]], &[&[0.1, 0.2, 0.35]]);
        let c = compare_query(&primary, &secondary).unwrap();
        assert!(c.recall.unwrap() < 1.0);
    }

    #[test]
    fn a_closer_record_only_on_the_secondary_is_no_tie() {
        // "z" (deleted on the primary, say) comes first on the secondary and pushes "c" out.
        let primary = query(&[&["a", "b", "c"]], &[&[0.1, 0.2, 0.3]]);
        let secondary = query(&[&["z", "a", "b"]], &[&[0.05, 0.1, 0.2]]);
        let c = compare_query(&primary, &secondary).unwrap();
        assert_eq!(c.mismatch.as_deref(), Some("recall@3 0.66, missing [c]"));
    }

    #[test]
    fn queries_without_distances_compare_ids_only() {
        let primary = json!({"ids": [["a", "b"]], "distances": null});
        let secondary = json!({"ids": [["b", "a"]], "distances": null});
        let c = compare_query(&primary, &secondary).unwrap();
        assert_eq!(c.mismatch, None);
        assert_eq!(c.drift, None);
        let secondary = json!({"ids": [["b"]], "distances": null});
        let c = compare_query(&primary, &secondary).unwrap();
        assert_eq!(c.mismatch.as_deref(), Some("recall@2 0.50, missing [a]"));
    }

    #[test]
    fn extra_results_on_the_secondary_are_a_mismatch() {
        let primary = query(&[&["a"]], &[&[0.1]]);
        let secondary = query(&[&["a", "b"]], &[&[0.1, 0.2]]);
        let c = compare_query(&primary, &secondary).unwrap();
        assert_eq!(
            c.mismatch.as_deref(),
            Some("1 more result on the secondary than on the primary")
        );
    }

    #[test]
    fn query_content_is_compared_for_shared_records() {
        let primary =
            json!({"ids": [["a", "b"]], "distances": [[0.1, 0.2]], "documents": [["one", "two"]]});
        let secondary =
            json!({"ids": [["a", "b"]], "distances": [[0.1, 0.2]], "documents": [["one", "TWO"]]});
        let c = compare_query(&primary, &secondary).unwrap();
        assert_eq!(
            c.mismatch.as_deref(),
            Some("1 differs in content [b] (documents)")
        );
    }

    #[test]
    fn query_shapes_that_differ_are_a_mismatch_and_garbage_is_uncomparable() {
        let primary = query(&[&["a"], &["b"]], &[&[0.1], &[0.1]]);
        let secondary = query(&[&["a"]], &[&[0.1]]);
        assert!(compare_query(&primary, &secondary)
            .unwrap()
            .mismatch
            .is_some());
        assert!(compare_query(&primary, &json!({"error": "x"})).is_err());
    }

    fn get(ids: &[&str], documents: &[&str], metadatas: Value) -> Value {
        json!({"ids": ids, "documents": documents, "metadatas": metadatas, "embeddings": null, "include": ["documents", "metadatas"]})
    }

    #[test]
    fn gets_in_another_order_match() {
        let primary = get(&["a", "b"], &["A", "B"], json!([{"k": 1}, {"k": 2}]));
        let secondary = get(&["b", "a"], &["B", "A"], json!([{"k": 2}, {"k": 1}]));
        assert_eq!(
            compare_get(&primary, &secondary, true).unwrap().mismatch,
            None
        );
    }

    #[test]
    fn get_id_set_differences_are_named() {
        let primary = get(
            &["a", "b", "c"],
            &["A", "B", "C"],
            json!([null, null, null]),
        );
        let secondary = get(&["a", "d"], &["A", "D"], json!([null, null]));
        let c = compare_get(&primary, &secondary, true).unwrap();
        assert_eq!(
            c.mismatch.as_deref(),
            Some("get: 2 ids only on primary [b, c]; 1 id only on secondary [d]")
        );
        // A page: only shared content counts.
        assert_eq!(
            compare_get(&primary, &secondary, false).unwrap().mismatch,
            None
        );
    }

    #[test]
    fn get_content_differences_are_named_with_their_fields() {
        let primary = get(&["a", "b"], &["A", "B"], json!([{"k": 1}, {"k": 2}]));
        let secondary = get(&["a", "b"], &["A", "b"], json!([{"k": 1}, {"k": 3}]));
        let c = compare_get(&primary, &secondary, true).unwrap();
        assert_eq!(
            c.mismatch.as_deref(),
            Some("get: 1 differs in content [b] (documents, metadatas)")
        );
        // A page still compares content.
        assert!(compare_get(&primary, &secondary, false)
            .unwrap()
            .mismatch
            .is_some());
    }

    #[test]
    fn embeddings_compare_within_float_noise() {
        let primary = json!({"ids": ["a"], "embeddings": [[0.1, 0.2]]});
        let close = json!({"ids": ["a"], "embeddings": [[0.1000000001, 0.2]]});
        let far = json!({"ids": ["a"], "embeddings": [[0.1, 0.3]]});
        assert_eq!(compare_get(&primary, &close, true).unwrap().mismatch, None);
        assert_eq!(
            compare_get(&primary, &far, true)
                .unwrap()
                .mismatch
                .as_deref(),
            Some("get: 1 differs in content [a] (embeddings)")
        );
    }

    #[test]
    fn long_id_lists_are_cut() {
        let ids: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
        let primary = json!({ "ids": ids });
        let c = compare_get(&primary, &json!({"ids": []}), true).unwrap();
        assert_eq!(
            c.mismatch.as_deref(),
            Some("get: 8 ids only on primary [r0, r1, r2, r3, r4, ...]")
        );
    }

    #[test]
    fn a_get_is_complete_unless_paged() {
        assert!(get_is_complete(&json!({}), 100));
        assert!(get_is_complete(&Value::Null, 100));
        assert!(get_is_complete(&json!({"limit": 10}), 9));
        assert!(!get_is_complete(&json!({"limit": 10}), 10));
        assert!(!get_is_complete(&json!({"offset": 5}), 3));
        assert!(get_is_complete(&json!({"offset": 0, "limit": null}), 3));
    }

    #[test]
    fn counts_compare_equal() {
        assert_eq!(
            compare_count(&json!(10), &json!(10)).unwrap().mismatch,
            None
        );
        assert_eq!(
            compare_count(&json!(10), &json!(8))
                .unwrap()
                .mismatch
                .as_deref(),
            Some("count 10 vs 8")
        );
        assert!(compare_count(&json!(10), &json!({"error": "x"})).is_err());
    }

    #[test]
    fn compare_parses_both_answers() {
        assert!(compare(ShadowedRead::Count, b"", b"3", b"not json").is_err());
        let c = compare(
            ShadowedRead::Get,
            br#"{"limit": 2}"#,
            br#"{"ids": ["a", "b"]}"#,
            br#"{"ids": ["a", "c"]}"#,
        )
        .unwrap();
        assert_eq!(c.mismatch, None, "a full page is not a complete set");
    }

    fn shadows(queue: usize, samples: usize) -> Arc<ShadowReads> {
        let metrics = ProxyMetrics::register(&prometheus::Registry::new()).unwrap();
        Arc::new(ShadowReads::new(
            ShadowSettings {
                timeout: Duration::from_millis(50),
                queue,
                samples,
            },
            metrics,
        ))
    }

    fn collection() -> CollectionRef {
        CollectionRef {
            id: "c1".into(),
            name: "docs".into(),
        }
    }

    fn request(read: ShadowedRead) -> ShadowRequest {
        ShadowRequest {
            collection: collection(),
            read,
            primary: BackendName::Old,
            secondary: BackendName::New,
            method: Method::POST,
            path: "/".into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    #[test]
    fn the_sample_ring_keeps_the_latest() {
        let shadows = shadows(4, 2);
        for n in [10u64, 11, 12] {
            shadows.settle(
                &request(ShadowedRead::Count),
                Ok(Bytes::from(n.to_string())),
                Some(Ok((StatusCode::OK, Bytes::from_static(b"9")))),
            );
        }
        let samples = shadows.samples(10);
        let described: Vec<&str> = samples.iter().map(|s| s.description.as_str()).collect();
        assert_eq!(described, ["count 12 vs 9", "count 11 vs 9"]);
        let status = shadows.status();
        assert_eq!(status["totals"]["mismatch"], json!(3));
        assert_eq!(status["samples_kept"], json!(2));
        assert_eq!(status["collections"][0]["name"], json!("docs"));
        assert_eq!(
            status["recent_mismatches"][0]["collection"]["id"],
            json!("c1")
        );
        let count = shadows
            .metrics
            .shadow_reads
            .with_label_values(&["c1", "collection_count", "mismatch"])
            .get();
        assert_eq!(count, 3);
    }

    #[test]
    fn outcomes_other_than_a_comparison_are_counted() {
        let shadows = shadows(4, 2);
        let r = request(ShadowedRead::Count);
        shadows.settle(
            &r,
            Err(SkipReason::PrimaryFailed),
            Some(Ok((StatusCode::OK, Bytes::from_static(b"1")))),
        );
        shadows.settle(&r, Ok(Bytes::from_static(b"1")), None);
        let huge = Bytes::from(vec![b' '; MAX_COMPARED_BODY as usize + 1]);
        shadows.settle(
            &r,
            Ok(huge),
            Some(Ok((StatusCode::OK, Bytes::from_static(b"1")))),
        );
        shadows.settle(
            &r,
            Ok(Bytes::from_static(b"1")),
            Some(Ok((StatusCode::NOT_FOUND, Bytes::from_static(b"gone")))),
        );
        shadows.settle(
            &r,
            Ok(Bytes::from_static(b"1")),
            Some(Ok((StatusCode::OK, Bytes::from_static(b"1")))),
        );
        shadows.skip(&collection(), ShadowedRead::Query, SkipReason::Lagging);
        let status = shadows.status();
        assert_eq!(
            status["totals"],
            json!({"match": 1, "mismatch": 0, "error": 1, "timeout": 1, "dropped": 0, "skipped": 3})
        );
        assert_eq!(
            status["skipped"],
            json!({"lagging": 1, "primary_failed": 1, "too_large": 1})
        );
        assert_eq!(status["samples_kept"], json!(0));
        assert!(status["collections"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("404"));
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let shadows = shadows(0, 2);
        let backends = Arc::new(test_backends());
        assert!(shadows
            .start(backends, request(ShadowedRead::Get))
            .is_none());
        assert_eq!(shadows.status()["totals"]["dropped"], json!(1));
    }

    #[tokio::test]
    async fn a_shadow_runs_in_the_background_and_times_out() {
        // Nothing answers on the secondary's address within the timeout (a listener that never
        // accepts would do; a closed port answers at once, so use one that accepts and stalls).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _stall = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let backends = Arc::new(backends_at(&format!("http://{addr}")));
        let shadows = shadows(1, 2);
        let handoff = shadows
            .start(backends.clone(), request(ShadowedRead::Count))
            .unwrap();
        // The queue holds one: a second is dropped while the first runs.
        assert!(shadows
            .start(backends, request(ShadowedRead::Count))
            .is_none());
        handoff.answered(Bytes::from_static(b"3"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        // Counted, then the permit goes back when the task ends.
        while shadows.status()["totals"]["timeout"] != json!(1)
            || shadows.status()["queue"]["running"] != json!(0)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}",
                shadows.status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(shadows.status()["totals"]["dropped"], json!(1));
    }

    fn backends_at(new: &str) -> Backends {
        let config = |url: &str| shift_config::BackendConfig {
            url: url.parse().unwrap(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(30),
            pool_max_idle: 2,
            auth: None,
            ca_file: None,
        };
        Backends {
            old: crate::Backend::new(BackendName::Old, &config("http://127.0.0.1:9"), None)
                .unwrap(),
            new: crate::Backend::new(BackendName::New, &config(new), None).unwrap(),
        }
    }

    fn test_backends() -> Backends {
        backends_at("http://127.0.0.1:10")
    }
}
