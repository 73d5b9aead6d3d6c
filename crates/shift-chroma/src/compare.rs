//! The one comparison of two stores' answers, used by shadow reads (shift-proxy) and verify
//! (shift-migrate), so "recall", "drift" and "equal" mean the same thing in both.
//!
//! - **Record equality** ([`record_differences`]): embeddings are equal when they hold the same
//!   `f32` values bit for bit ([`embeddings_equal`]): Chroma stores `f32`, both stores are given
//!   the same values, and JSON carries an `f32` exactly, so any difference is a real one (a
//!   tolerance would hide a one-ulp corruption and buys nothing). Metadata are equal as JSON
//!   values, with no metadata, `null` and `{}` alike ([`metadata_equal`]): stores differ in
//!   which they answer. Documents and uris are equal as strings. Only the fields both answers
//!   include are compared.
//! - **Distance drift** ([`distance_drift`]): *relative* to the primary's distance, and absolute
//!   below a distance of 1. Distances scale with the vectors (squared L2 of unnormalised
//!   embeddings runs into the thousands, where float noise alone exceeds any fixed absolute
//!   bound), while near zero (a query for a stored vector) a ratio would turn noise into a large
//!   number. For cosine and inner-product distances of normalised vectors (below 1 or 2) it is
//!   the absolute difference. Above [`DRIFT_EPSILON`] it is more than noise.
//! - **Recall at k** ([`compare_list`], [`QueryComparison::recall`]): the share of the
//!   primary's k results that the secondary returned, where a secondary result the primary lacks
//!   at the primary's k-th distance (within [`DRIFT_EPSILON`]) counts as a hit: a tie, which HNSW
//!   orders as it likes. Over several query embeddings it is pooled: hits over expected results.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::records::{QueryResult, RecordRef, Records, ResultList};

/// Distance drift above which two distances differ by more than float noise; also the
/// tolerance of a tie at the k-th distance. Two stores holding the same vectors compute the same
/// distances to within float noise; 1e-3 is far above that noise and far below any difference
/// that changes a ranking that matters.
pub const DRIFT_EPSILON: f64 = 1e-3;

/// The drift between the primary's distance to a record and the secondary's: relative to the
/// primary's distance, absolute below 1 (see the module doc). A NaN on one side only is an
/// infinite drift; NaN on both is none.
pub fn distance_drift(primary: f64, secondary: f64) -> f64 {
    match (primary.is_nan(), secondary.is_nan()) {
        (true, true) => 0.0,
        (true, false) | (false, true) => f64::INFINITY,
        (false, false) => (primary - secondary).abs() / primary.abs().max(1.0),
    }
}

/// A record field whose content is compared. Declared in the order differences are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Document,
    Metadata,
    Embedding,
    Uri,
}

impl Field {
    pub const ALL: [Field; 4] = [
        Field::Document,
        Field::Metadata,
        Field::Embedding,
        Field::Uri,
    ];

    /// The field's column in Chroma's answers.
    pub fn column(self) -> &'static str {
        match self {
            Field::Document => "documents",
            Field::Metadata => "metadatas",
            Field::Embedding => "embeddings",
            Field::Uri => "uris",
        }
    }
}

/// Whether two embeddings hold the same `f32` values, bit for bit (so a NaN equals the same
/// NaN, and `0.0` differs from `-0.0`).
pub fn embeddings_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Whether two metadata are equal: as JSON values (key order aside; an integer differs from a
/// float, as it does to Chroma's filters), with no metadata, `null` and `{}` alike.
pub fn metadata_equal(a: Option<&Value>, b: Option<&Value>) -> bool {
    fn meaningful(m: Option<&Value>) -> Option<&Value> {
        m.filter(|m| !(m.is_null() || m.as_object().is_some_and(serde_json::Map::is_empty)))
    }
    meaningful(a) == meaningful(b)
}

/// The fields whose content differs between two records, in [`Field`] order. A field one of
/// the answers did not include is not compared.
pub fn record_differences(a: &RecordRef<'_>, b: &RecordRef<'_>) -> Vec<Field> {
    fn differs<T>(a: Option<Option<T>>, b: Option<Option<T>>, eq: impl Fn(T, T) -> bool) -> bool {
        match (a, b) {
            (Some(Some(a)), Some(Some(b))) => !eq(a, b),
            (Some(a), Some(b)) => a.is_some() != b.is_some(),
            _ => false,
        }
    }
    Field::ALL
        .into_iter()
        .filter(|field| match field {
            Field::Document => differs(a.document, b.document, |x, y| x == y),
            Field::Metadata => match (a.metadata, b.metadata) {
                (Some(x), Some(y)) => !metadata_equal(x, y),
                _ => false,
            },
            Field::Embedding => differs(a.embedding, b.embedding, embeddings_equal),
            Field::Uri => differs(a.uri, b.uri, |x, y| x == y),
        })
        .collect()
}

/// A record both answers hold whose content differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed<'a> {
    pub id: &'a str,
    pub fields: Vec<Field>,
}

/// The changed records among `shared` ids, each looked up on both sides.
fn changed_records<'a>(
    shared: &[&'a str],
    primary: impl Fn(&str) -> Option<RecordRef<'a>>,
    secondary: impl Fn(&str) -> Option<RecordRef<'a>>,
) -> Vec<Changed<'a>> {
    shared
        .iter()
        .filter_map(|id| {
            let fields = record_differences(&primary(id)?, &secondary(id)?);
            (!fields.is_empty()).then_some(Changed { id, fields })
        })
        .collect()
}

/// Where each id sits in a list of ids (the last place, should one repeat).
fn positions(ids: &[String]) -> HashMap<&str, usize> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect()
}

/// Two answers to the same `get`, compared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GetComparison<'a> {
    /// Ids only the primary returned, in its order.
    pub only_primary: Vec<&'a str>,
    /// Ids only the secondary returned, in its order.
    pub only_secondary: Vec<&'a str>,
    /// Records both returned whose content differs, in the primary's order.
    pub changed: Vec<Changed<'a>>,
}

/// Compares two `get` answers: the id sets, and the content of the records both returned.
pub fn compare_records<'a>(primary: &'a Records, secondary: &'a Records) -> GetComparison<'a> {
    let (p_at, s_at) = (positions(&primary.ids), positions(&secondary.ids));
    let only = |ids: &'a [String], other: &HashMap<&str, usize>| -> Vec<&'a str> {
        ids.iter()
            .map(String::as_str)
            .filter(|id| !other.contains_key(id))
            .collect()
    };
    let shared: Vec<&str> = primary
        .ids
        .iter()
        .map(String::as_str)
        .filter(|id| s_at.contains_key(id))
        .collect();
    GetComparison {
        only_primary: only(&primary.ids, &s_at),
        only_secondary: only(&secondary.ids, &p_at),
        changed: changed_records(
            &shared,
            |id| p_at.get(id).map(|&i| primary.record(i)),
            |id| s_at.get(id).map(|&i| secondary.record(i)),
        ),
    }
}

/// One query embedding's results on both stores, compared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListComparison<'a> {
    /// The primary's results: the k of this list.
    pub k: usize,
    /// The primary's results the secondary returned, ties at the k-th distance included; k at
    /// most.
    pub found: usize,
    /// The largest [`distance_drift`] of a record both returned; `None` without distances.
    pub drift: Option<f64>,
    /// The primary's ids the secondary lacks, when the recall is below 1.
    pub missing: Vec<&'a str>,
    /// Results the secondary returned beyond the primary's count.
    pub surplus: usize,
    /// Records both returned whose content differs.
    pub changed: Vec<Changed<'a>>,
}

impl ListComparison<'_> {
    /// Recall at k: `found / k`; `None` when the primary returned nothing.
    pub fn recall(&self) -> Option<f64> {
        (self.k > 0).then(|| self.found as f64 / self.k as f64)
    }
}

/// Compares one query embedding's result lists: recall at k with ties at the k-th distance,
/// distance drift, and the content of the records both returned.
///
/// A record the secondary returned instead of one of the primary's at the distance of the
/// primary's k-th result is a tie (duplicate vectors are common), not a miss. A closer one is
/// no tie: it pushed one of the primary's out, and may be a record the primary no longer has.
pub fn compare_list<'a>(primary: ResultList<'a>, secondary: ResultList<'a>) -> ListComparison<'a> {
    let (p_ids, s_ids) = (primary.ids(), secondary.ids());
    let (p_at, s_at) = (positions(p_ids), positions(s_ids));
    let k = p_ids.len();
    let shared: Vec<&str> = p_ids
        .iter()
        .map(String::as_str)
        .filter(|id| s_at.contains_key(id))
        .collect();
    let mut found = shared.len();
    let mut drift: Option<f64> = None;
    if let (Some(pd), Some(sd)) = (primary.distances(), secondary.distances()) {
        if let Some(Some(boundary)) = pd.last() {
            let ties = s_ids
                .iter()
                .zip(sd)
                .filter(|(id, d)| {
                    !p_at.contains_key(id.as_str())
                        && d.is_some_and(|d| {
                            distance_drift(f64::from(*boundary), f64::from(d)) <= DRIFT_EPSILON
                        })
                })
                .count();
            found = (found + ties).min(k);
        }
        for (j, id) in s_ids.iter().enumerate() {
            let Some(&i) = p_at.get(id.as_str()) else {
                continue;
            };
            if let (Some(Some(a)), Some(Some(b))) = (pd.get(i), sd.get(j)) {
                let d = distance_drift(f64::from(*a), f64::from(*b));
                drift = Some(drift.map_or(d, |m| m.max(d)));
            }
        }
    }
    let missing = if found < k {
        p_ids
            .iter()
            .map(String::as_str)
            .filter(|id| !s_at.contains_key(id))
            .collect()
    } else {
        Vec::new()
    };
    ListComparison {
        k,
        found,
        drift,
        missing,
        surplus: s_ids.len().saturating_sub(k),
        changed: changed_records(
            &shared,
            |id| p_at.get(id).map(|&i| primary.record(i)),
            |id| s_at.get(id).map(|&i| secondary.record(i)),
        ),
    }
}

/// Two answers to the same query (all its query embeddings), compared list by list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryComparison<'a> {
    pub lists: Vec<ListComparison<'a>>,
}

/// Compares two query answers list by list, one for each of the primary's lists (a list the
/// secondary lacks counts as empty; the caller decides what a different number of lists
/// means).
pub fn compare_query<'a>(
    primary: &'a QueryResult,
    secondary: &'a QueryResult,
) -> QueryComparison<'a> {
    QueryComparison {
        lists: (0..primary.ids.len())
            .map(|i| compare_list(primary.list(i), secondary.list(i)))
            .collect(),
    }
}

impl<'a> QueryComparison<'a> {
    /// k: the most results the primary returned for one query embedding.
    pub fn k(&self) -> usize {
        self.lists.iter().map(|l| l.k).max().unwrap_or(0)
    }

    /// Recall at k pooled over all lists (hits over the primary's results); `None` when the
    /// primary returned nothing.
    pub fn recall(&self) -> Option<f64> {
        let expected: usize = self.lists.iter().map(|l| l.k).sum();
        let found: usize = self.lists.iter().map(|l| l.found).sum();
        (expected > 0).then(|| found as f64 / expected as f64)
    }

    /// The lowest recall of a single list that has one.
    pub fn worst_recall(&self) -> Option<f64> {
        self.lists
            .iter()
            .filter_map(ListComparison::recall)
            .reduce(f64::min)
    }

    /// The largest drift of any list; `None` without distances.
    pub fn drift(&self) -> Option<f64> {
        self.lists.iter().filter_map(|l| l.drift).reduce(f64::max)
    }

    /// The primary's ids the secondary lacks where recall fell, each once, first seen first.
    pub fn missing(&self) -> Vec<&'a str> {
        unique(self.lists.iter().flat_map(|l| l.missing.iter().copied()))
    }

    /// Results on the secondary beyond the primary's, over all lists.
    pub fn surplus(&self) -> usize {
        self.lists.iter().map(|l| l.surplus).sum()
    }

    /// The changed records' ids, each once, and the fields that differ, first seen first.
    pub fn changed(&self) -> (Vec<&'a str>, Vec<Field>) {
        let changed = self.lists.iter().flat_map(|l| l.changed.iter());
        let ids = unique(changed.clone().map(|c| c.id));
        let fields = unique(changed.flat_map(|c| c.fields.iter().copied()));
        (ids, fields)
    }
}

/// `items` without repeats, in first-seen order.
pub fn unique<T: Copy + Eq + std::hash::Hash>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut seen = HashSet::new();
    items
        .into_iter()
        .filter(|item| seen.insert(*item))
        .collect()
}

/// How much farther the secondary's neighbours are than the primary's: the difference of
/// their mean distances, relative to the primary's mean (absolute when that is 0); `None`
/// without distances. A store missing neighbours returns farther ones, while ANN noise
/// returns other ids at about the same distances.
pub fn distance_gap(primary: &[Option<f32>], secondary: &[Option<f32>]) -> Option<f64> {
    let mean = |d: &[Option<f32>]| {
        let known: Vec<f64> = d.iter().flatten().map(|v| f64::from(*v)).collect();
        (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64)
    };
    let (p, s) = (mean(primary)?, mean(secondary)?);
    Some(if p > f64::EPSILON { (s - p) / p } else { s - p })
}

#[cfg(test)]
#[path = "compare_tests.rs"]
mod tests;
