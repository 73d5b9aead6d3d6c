//! Verify's pure decisions, over typed answers compared by [`shift_chroma::compare`]: what
//! differs for each record, which records the query sample uses, and the sample's score.

use std::collections::{BTreeSet, HashSet};

use ring::digest::{digest, SHA256};
use shift_chroma::compare::{self as chroma, distance_gap};
use shift_chroma::records::{QueryResult, Records};

use super::report::{Diffs, DivergenceKind, QuerySample};

/// Up to `n` ids, picked by the order of their SHA-256: the same ids every run, spread over
/// the collection whatever its id scheme.
pub fn sample_ids(ids: &[String], n: usize) -> Vec<String> {
    let mut ranked: Vec<(Vec<u8>, &String)> = ids
        .iter()
        .map(|id| (digest(&SHA256, id.as_bytes()).as_ref().to_vec(), id))
        .collect();
    ranked.sort_unstable();
    ranked
        .into_iter()
        .take(n)
        .map(|(_, id)| id.clone())
        .collect()
}

/// The score of the A/B query sample: the target's answers to `k` nearest neighbours of each
/// sample embedding against the source's. Recall at k (ties at the k-th distance are hits) is
/// pooled over the queries, and with equal k per query that is their mean; the drift is the
/// largest over all records both returned; the gap is the mean over queries. `None` when the
/// source returned nothing to compare with.
pub fn score_sample(k: usize, source: &QueryResult, target: &QueryResult) -> Option<QuerySample> {
    let c = chroma::compare_query(source, target);
    let recall = c.recall()?;
    let gaps: Vec<f64> = (0..source.ids.len())
        .filter_map(|i| {
            let (s, t) = (source.list(i), target.list(i));
            distance_gap(s.distances().unwrap_or(&[]), t.distances().unwrap_or(&[]))
        })
        .collect();
    Some(QuerySample {
        queries: c.lists.iter().filter(|l| l.recall().is_some()).count(),
        k,
        recall,
        worst_recall: c.worst_recall().unwrap_or(recall),
        drift: c.drift().unwrap_or(0.0),
        gap: if gaps.is_empty() {
            0.0
        } else {
            gaps.iter().sum::<f64>() / gaps.len() as f64
        },
        error: None,
    })
}

/// What differs for each of `ids` between the two stores' answers; ids that agree (or that
/// neither store has any more) are left out. Equal content is
/// [`shift_chroma::compare::record_differences`]'s.
pub fn classify(ids: &[String], source: &Records, target: &Records) -> Diffs {
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let c = chroma::compare_records(source, target);
    let mut diffs = Diffs::new();
    let mut add = |id: &str, kinds: BTreeSet<DivergenceKind>| {
        if wanted.contains(id) && !kinds.is_empty() {
            diffs.entry(id.to_owned()).or_default().extend(kinds);
        }
    };
    for id in c.only_primary {
        add(id, [DivergenceKind::MissingRecord].into());
    }
    for id in c.only_secondary {
        add(id, [DivergenceKind::ExtraRecord].into());
    }
    for changed in c.changed {
        let kinds = changed.fields.iter().map(|f| DivergenceKind::changed(*f));
        add(changed.id, kinds.collect());
    }
    diffs
}
