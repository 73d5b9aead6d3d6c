use serde_json::json;

use super::*;

fn query(ids: &[&[&str]], distances: &[&[f64]]) -> QueryResult {
    serde_json::from_value(json!({ "ids": ids, "distances": distances, "include": ["distances"] }))
        .unwrap()
}

/// The mismatch a comparison reports, if any.
fn said(c: &Comparison) -> Option<&str> {
    c.mismatch.as_deref()
}

fn typed<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap()
}

#[test]
fn identical_queries_match_with_full_recall_and_no_drift() {
    let answer = query(&[&["a", "b", "c"]], &[&[0.1, 0.2, 0.3]]);
    let c = compare_query(&answer, &answer);
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
    let c = compare_query(&primary, &secondary);
    assert_eq!(c.recall, Some(0.8));
    assert_eq!(said(&c), Some("recall@10 0.80, missing [b, i]"));
}

#[test]
fn recall_is_over_all_query_embeddings() {
    let primary = query(&[&["a", "b"], &["c", "d"]], &[&[0.1, 0.2], &[0.1, 0.2]]);
    let secondary = query(&[&["a", "b"], &["c", "z"]], &[&[0.1, 0.2], &[0.1, 0.9]]);
    let c = compare_query(&primary, &secondary);
    assert_eq!(c.recall, Some(0.75));
    assert_eq!(said(&c), Some("recall@2 0.75 over 2 queries, missing [d]"));
    // A record missing from several queries is named once.
    let primary = query(&[&["a", "b"], &["b", "c"]], &[&[0.1, 0.2], &[0.1, 0.2]]);
    let secondary = query(&[&["a", "x"], &["c", "y"]], &[&[0.1, 0.9], &[0.2, 0.9]]);
    let c = compare_query(&primary, &secondary);
    assert_eq!(said(&c), Some("recall@2 0.50 over 2 queries, missing [b]"));
}

#[test]
fn drift_below_epsilon_is_noise_and_above_is_a_mismatch() {
    let primary = query(&[&["a", "b"]], &[&[0.5, 2.0]]);
    let noisy = query(&[&["a", "b"]], &[&[0.5000001, 2.0000002]]);
    let c = compare_query(&primary, &noisy);
    assert_eq!(c.mismatch, None);
    assert!(c.drift.unwrap() < 1e-6);

    let drifted = query(&[&["a", "b"]], &[&[0.5, 2.1]]);
    let c = compare_query(&primary, &drifted);
    let drift = c.drift.unwrap();
    assert!((drift - 0.05).abs() < 1e-6, "relative to 2.0: {drift}");
    assert_eq!(c.recall, Some(1.0));
    assert_eq!(said(&c), Some("distance drift 0.0500 (above 0.001)"));
}

#[test]
fn ties_at_the_kth_distance_are_not_misses() {
    // "c" and "d" are the same distance away: either may come third.
    let primary = query(&[&["a", "b", "c"]], &[&[0.1, 0.2, 0.3]]);
    let secondary = query(&[&["a", "b", "d"]], &[&[0.1, 0.2, 0.3]]);
    let c = compare_query(&primary, &secondary);
    assert_eq!(c.recall, Some(1.0));
    assert_eq!(c.mismatch, None);
    // A farther one is a miss.
    let secondary = query(&[&["a", "b", "d"]], &[&[0.1, 0.2, 0.35]]);
    assert!(compare_query(&primary, &secondary).recall.unwrap() < 1.0);
}

#[test]
fn a_closer_record_only_on_the_secondary_is_no_tie() {
    // "z" (deleted on the primary, say) comes first on the secondary and pushes "c" out.
    let primary = query(&[&["a", "b", "c"]], &[&[0.1, 0.2, 0.3]]);
    let secondary = query(&[&["z", "a", "b"]], &[&[0.05, 0.1, 0.2]]);
    let c = compare_query(&primary, &secondary);
    assert_eq!(said(&c), Some("recall@3 0.66, missing [c]"));
}

#[test]
fn queries_without_distances_compare_ids_only() {
    let primary = typed(json!({"ids": [["a", "b"]], "distances": null}));
    let secondary = typed(json!({"ids": [["b", "a"]], "distances": null}));
    let c = compare_query(&primary, &secondary);
    assert_eq!(c.mismatch, None);
    assert_eq!(c.drift, None);
    let secondary = typed(json!({"ids": [["b"]], "distances": null}));
    let c = compare_query(&primary, &secondary);
    assert_eq!(said(&c), Some("recall@2 0.50, missing [a]"));
}

#[test]
fn an_empty_answer_on_both_sides_matches() {
    let empty = query(&[&[]], &[&[]]);
    let c = compare_query(&empty, &empty);
    assert_eq!((c.mismatch, c.recall, c.k), (None, Some(1.0), 0));
}

#[test]
fn extra_results_on_the_secondary_are_a_mismatch() {
    let primary = query(&[&["a"]], &[&[0.1]]);
    let secondary = query(&[&["a", "b"]], &[&[0.1, 0.2]]);
    assert_eq!(
        compare_query(&primary, &secondary).mismatch.as_deref(),
        Some("1 more result on the secondary than on the primary")
    );
}

#[test]
fn query_content_is_compared_for_shared_records() {
    let primary = typed(
        json!({"ids": [["a", "b"]], "distances": [[0.1, 0.2]], "documents": [["one", "two"]]}),
    );
    let secondary = typed(
        json!({"ids": [["a", "b"]], "distances": [[0.1, 0.2]], "documents": [["one", "TWO"]]}),
    );
    assert_eq!(
        compare_query(&primary, &secondary).mismatch.as_deref(),
        Some("1 differs in content [b] (documents)")
    );
}

#[test]
fn query_shapes_that_differ_are_a_mismatch_and_garbage_is_uncomparable() {
    let primary = query(&[&["a"], &["b"]], &[&[0.1], &[0.1]]);
    let secondary = query(&[&["a"]], &[&[0.1]]);
    assert_eq!(
        compare_query(&primary, &secondary).mismatch.as_deref(),
        Some("query: 2 result lists on the primary, 1 on the secondary")
    );
    let error = compare(
        ShadowedRead::Query,
        b"",
        br#"{"ids": [["a"]]}"#,
        br#"{"error": "x"}"#,
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("the secondary answer is not a query answer"),
        "{error}"
    );
}

fn get(ids: &[&str], documents: &[&str], metadatas: Value) -> Records {
    typed(
        json!({"ids": ids, "documents": documents, "metadatas": metadatas, "embeddings": null, "include": ["documents", "metadatas"]}),
    )
}

#[test]
fn gets_in_another_order_match() {
    let primary = get(&["a", "b"], &["A", "B"], json!([{"k": 1}, {"k": 2}]));
    let secondary = get(&["b", "a"], &["B", "A"], json!([{"k": 2}, {"k": 1}]));
    assert_eq!(compare_get(&primary, &secondary, true).mismatch, None);
}

#[test]
fn get_id_set_differences_are_named() {
    let primary = get(
        &["a", "b", "c"],
        &["A", "B", "C"],
        json!([null, null, null]),
    );
    let secondary = get(&["a", "d"], &["A", "D"], json!([null, null]));
    assert_eq!(
        compare_get(&primary, &secondary, true).mismatch.as_deref(),
        Some("get: 2 ids only on primary [b, c]; 1 id only on secondary [d]")
    );
    // A page: only shared content counts.
    assert_eq!(compare_get(&primary, &secondary, false).mismatch, None);
}

#[test]
fn get_content_differences_are_named_with_their_fields() {
    let primary = get(&["a", "b"], &["A", "B"], json!([{"k": 1}, {"k": 2}]));
    let secondary = get(&["a", "b"], &["A", "b"], json!([{"k": 1}, {"k": 3}]));
    assert_eq!(
        compare_get(&primary, &secondary, true).mismatch.as_deref(),
        Some("get: 1 differs in content [b] (documents, metadatas)")
    );
    // A page still compares content.
    assert!(compare_get(&primary, &secondary, false).mismatch.is_some());
}

#[test]
fn embeddings_compare_as_f32() {
    let primary = typed(json!({"ids": ["a"], "embeddings": [[0.1, 0.2]]}));
    let close = typed(json!({"ids": ["a"], "embeddings": [[0.1000000001, 0.2]]}));
    let far = typed(json!({"ids": ["a"], "embeddings": [[0.1, 0.3]]}));
    assert_eq!(compare_get(&primary, &close, true).mismatch, None);
    assert_eq!(
        compare_get(&primary, &far, true).mismatch.as_deref(),
        Some("get: 1 differs in content [a] (embeddings)")
    );
}

#[test]
fn long_id_lists_are_cut() {
    let ids: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    let primary = typed(json!({ "ids": ids }));
    let c = compare_get(&primary, &Records::default(), true);
    assert_eq!(
        said(&c),
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
    assert_eq!(compare_count(10, 10).mismatch, None);
    assert_eq!(
        compare_count(10, 8).mismatch.as_deref(),
        Some("count 10 vs 8")
    );
    assert!(compare(ShadowedRead::Count, b"", b"10", br#"{"error": "x"}"#).is_err());
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
