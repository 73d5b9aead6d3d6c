//! Tests of verify's pure decisions and its report.

use serde_json::json;
use shift_chroma::records::{QueryResult, Records};
use shift_config::BackendName;

use super::*;

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn answer(lists: &[(&[&str], &[f32])]) -> QueryResult {
    QueryResult {
        ids: lists.iter().map(|(ids_, _)| ids(ids_)).collect(),
        distances: Some(
            lists
                .iter()
                .map(|(_, d)| d.iter().copied().map(Some).collect())
                .collect(),
        ),
        ..QueryResult::default()
    }
}

#[test]
fn the_sample_scores_recall_drift_and_gap_by_the_one_comparison() {
    let source = answer(&[
        (&["a", "b", "c", "d"], &[0.1, 0.2, 0.3, 0.4]),
        (&["e", "f"], &[2.0, 4.0]),
    ]);
    let target = answer(&[
        // "x" is closer than "c" was: a miss, not a tie.
        (&["b", "a", "x", "d"], &[0.2, 0.1, 0.25, 0.4005]),
        // Relative drift at distance 4: 0.2 / 4.
        (&["e", "f"], &[2.0, 4.2]),
    ]);
    let q = score_sample(4, &source, &target).unwrap();
    assert_eq!(q.queries, 2);
    assert!((q.recall - 5.0 / 6.0).abs() < 1e-9, "{}", q.recall);
    assert_eq!(q.worst_recall, 0.75);
    assert!((q.drift - 0.05).abs() < 1e-6, "{}", q.drift);
    // The mean of each query's gap: nearer on the first, farther on the second.
    let gap = ((0.237625 / 0.25 - 1.0) + (3.1 / 3.0 - 1.0)) / 2.0;
    assert!((q.gap - gap).abs() < 1e-6, "{} against {gap}", q.gap);
    // A tie at the k-th distance is a hit.
    let tie = answer(&[(&["a", "b", "c", "z"], &[0.1, 0.2, 0.3, 0.4])]);
    let expected = answer(&[(&["a", "b", "c", "d"], &[0.1, 0.2, 0.3, 0.4])]);
    let q = score_sample(4, &expected, &tie).unwrap();
    assert_eq!((q.recall, q.drift), (1.0, 0.0));
    // Nothing expected: no score; nothing returned by the target: recall 0.
    assert!(score_sample(4, &answer(&[(&[], &[])]), &tie).is_none());
    let q = score_sample(1, &answer(&[(&["a"], &[0.1])]), &QueryResult::default()).unwrap();
    assert_eq!((q.recall, q.worst_recall, q.drift), (0.0, 0.0, 0.0));
}

#[test]
fn the_sample_is_deterministic_and_bounded() {
    let all: Vec<String> = (0..100).map(|i| format!("id-{i}")).collect();
    let a = sample_ids(&all, 20);
    let mut shuffled = all.clone();
    shuffled.reverse();
    assert_eq!(a, sample_ids(&shuffled, 20));
    assert_eq!(a.len(), 20);
    assert_eq!(sample_ids(&all[..5], 20).len(), 5);
    // Spread, not the first ids in order.
    assert_ne!(a, all[..20].to_vec());
}

#[test]
fn classify_names_each_kind() {
    let source = Records {
        ids: ids(&["same", "emb", "meta", "doc", "uri", "gone"]),
        embeddings: Some(vec![Some(vec![1.0, 2.0]); 6]),
        metadatas: Some(vec![
            Some(json!({"a": 1, "b": "x"})),
            None,
            Some(json!({"a": 1})),
            None,
            None,
            None,
        ]),
        documents: Some(vec![
            Some("d".into()),
            None,
            None,
            Some("d".into()),
            None,
            None,
        ]),
        uris: Some(vec![None, None, None, None, Some("u".into()), None]),
    };
    let target = Records {
        ids: ids(&["uri", "doc", "meta", "emb", "same", "new"]),
        embeddings: Some(vec![
            Some(vec![1.0, 2.0]),
            Some(vec![1.0, 2.0]),
            Some(vec![1.0, 2.0]),
            Some(vec![1.0, 2.5]),
            Some(vec![1.0, 2.0]),
            Some(vec![1.0, 2.0]),
        ]),
        metadatas: Some(vec![
            Some(json!({})),
            None,
            Some(json!({"a": 2})),
            None,
            Some(json!({"b": "x", "a": 1})),
            None,
        ]),
        documents: Some(vec![
            None,
            Some("e".into()),
            None,
            None,
            Some("d".into()),
            None,
        ]),
        uris: Some(vec![Some("v".into()), None, None, None, None, None]),
    };
    let all = ids(&[
        "same", "emb", "meta", "doc", "uri", "gone", "new", "neither",
    ]);
    let diffs = classify(&all, &source, &target);
    let kinds = |id: &str| diffs.get(id).map(|k| k.iter().copied().collect::<Vec<_>>());
    assert_eq!(kinds("same"), None);
    assert_eq!(kinds("neither"), None);
    assert_eq!(kinds("emb"), Some(vec![DivergenceKind::ChangedEmbedding]));
    assert_eq!(kinds("meta"), Some(vec![DivergenceKind::ChangedMetadata]));
    assert_eq!(kinds("doc"), Some(vec![DivergenceKind::ChangedDocument]));
    assert_eq!(kinds("uri"), Some(vec![DivergenceKind::ChangedUri]));
    assert_eq!(kinds("gone"), Some(vec![DivergenceKind::MissingRecord]));
    assert_eq!(kinds("new"), Some(vec![DivergenceKind::ExtraRecord]));
}

#[test]
fn repair_takes_extra_ids_only_when_asked() {
    let divergence = |kind, list: &[&str]| Divergence {
        kind,
        tenant: "t".into(),
        database: "d".into(),
        collection: "c".into(),
        count: list.len() as u64,
        ids: ids(list),
        detail: None,
    };
    let collection = CollectionReport {
        tenant: "t".into(),
        database: "d".into(),
        name: "c".into(),
        source_id: None,
        target_id: None,
        source_count: None,
        target_count: None,
        compared: 0,
        missing: 1,
        extra: 1,
        changed: 2,
        query: None,
        verdict: Verdict::Diverged,
    };
    let report = VerifyReport {
        source: BackendName::Old,
        target: BackendName::New,
        collections: vec![collection.clone()],
        divergences: vec![
            divergence(DivergenceKind::MissingRecord, &["m"]),
            divergence(DivergenceKind::ExtraRecord, &["x"]),
            divergence(DivergenceKind::ChangedMetadata, &["c1", "c2"]),
            divergence(DivergenceKind::ChangedDocument, &["c2"]),
        ],
        rechecked: 0,
        settled_on_recheck: 0,
        elapsed_seconds: 0.0,
        matches: false,
    };
    assert_eq!(
        report.repair_ids(&collection, false),
        ids(&["c1", "c2", "m"])
    );
    assert_eq!(
        report.repair_ids(&collection, true),
        ids(&["c1", "c2", "m", "x"])
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["divergences"][0]["kind"], "missing_record");
    assert_eq!(json["collections"][0]["verdict"], "diverged");
}
