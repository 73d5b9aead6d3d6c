use serde_json::json;

use super::*;

fn query(ids: &[&[&str]], distances: &[&[f32]]) -> QueryResult {
    serde_json::from_value(json!({ "ids": ids, "distances": distances })).unwrap()
}

fn records(value: Value) -> Records {
    serde_json::from_value(value).unwrap()
}

#[test]
fn identical_answers_have_full_recall_and_no_drift() {
    let answer = query(&[&["a", "b", "c"]], &[&[0.1, 0.2, 0.3]]);
    let c = compare_query(&answer, &answer);
    assert_eq!((c.k(), c.recall(), c.drift()), (3, Some(1.0), Some(0.0)));
    assert_eq!(c.worst_recall(), Some(1.0));
    assert!(c.missing().is_empty());
}

#[test]
fn recall_is_pooled_over_lists_and_the_worst_list_is_kept() {
    let primary = query(&[&["a", "b"], &["c", "d"]], &[&[0.1, 0.2], &[0.1, 0.2]]);
    let secondary = query(&[&["a", "b"], &["c", "z"]], &[&[0.1, 0.2], &[0.1, 0.9]]);
    let c = compare_query(&primary, &secondary);
    assert_eq!(c.recall(), Some(0.75));
    assert_eq!(c.worst_recall(), Some(0.5));
    assert_eq!(c.missing(), ["d"]);
}

#[test]
fn a_tie_at_the_kth_distance_is_a_hit_and_a_farther_one_a_miss() {
    let primary = query(&[&["a", "b", "c"]], &[&[0.1, 0.2, 0.3]]);
    let tie = query(&[&["a", "b", "d"]], &[&[0.1, 0.2, 0.3]]);
    assert_eq!(compare_query(&primary, &tie).recall(), Some(1.0));
    let farther = query(&[&["a", "b", "d"]], &[&[0.1, 0.2, 0.35]]);
    let c = compare_query(&primary, &farther);
    assert!(c.recall().unwrap() < 1.0);
    assert_eq!(c.missing(), ["c"]);
}

#[test]
fn a_closer_record_only_on_the_secondary_is_no_tie() {
    let primary = query(&[&["a", "b", "c"]], &[&[0.1, 0.2, 0.3]]);
    let secondary = query(&[&["z", "a", "b"]], &[&[0.05, 0.1, 0.2]]);
    let c = compare_query(&primary, &secondary);
    assert_eq!(c.lists[0].found, 2);
    assert_eq!(c.missing(), ["c"]);
}

#[test]
fn ties_never_lift_recall_above_one() {
    let primary = query(&[&["a", "b"]], &[&[0.3, 0.3]]);
    let secondary = query(&[&["a", "b", "c", "d"]], &[&[0.3, 0.3, 0.3, 0.3]]);
    let c = compare_query(&primary, &secondary);
    assert_eq!(c.recall(), Some(1.0));
    assert_eq!(c.surplus(), 2);
}

#[test]
fn empty_results_have_no_recall_and_empty_answers_no_lists() {
    let nothing = query(&[&[]], &[&[]]);
    let some = query(&[&["a"]], &[&[0.1]]);
    let c = compare_query(&nothing, &some);
    assert_eq!((c.recall(), c.worst_recall(), c.k()), (None, None, 0));
    assert_eq!(c.surplus(), 1);
    // Nothing on the secondary: recall 0.
    assert_eq!(compare_query(&some, &nothing).recall(), Some(0.0));
    // A list the secondary lacks is an empty one.
    let two = query(&[&["a"], &["b"]], &[&[0.1], &[0.1]]);
    assert_eq!(compare_query(&two, &some).recall(), Some(0.5));
    let none = query(&[], &[]);
    assert!(compare_query(&none, &none).lists.is_empty());
    assert_eq!(compare_query(&none, &none).recall(), None);
}

#[test]
fn without_distances_recall_is_by_ids_and_there_is_no_drift() {
    let primary: QueryResult =
        serde_json::from_value(json!({"ids": [["a", "b"]], "distances": null})).unwrap();
    let secondary: QueryResult = serde_json::from_value(json!({"ids": [["b"]]})).unwrap();
    let c = compare_query(&primary, &secondary);
    assert_eq!((c.recall(), c.drift()), (Some(0.5), None));
}

#[test]
fn drift_is_relative_and_absolute_below_one() {
    assert_eq!(distance_drift(0.0, 1e-7), 1e-7);
    assert!((distance_drift(0.5, 0.6) - 0.1).abs() < 1e-12);
    assert!((distance_drift(10.0, 10.5) - 0.05).abs() < 1e-12);
    assert!((distance_drift(-10.0, -10.5) - 0.05).abs() < 1e-12);
    let primary = query(&[&["a", "b"]], &[&[0.5, 2.0]]);
    let drifted = query(&[&["a", "b"]], &[&[0.5, 2.1]]);
    let drift = compare_query(&primary, &drifted).drift().unwrap();
    assert!((drift - 0.05).abs() < 1e-6, "relative to 2.0: {drift}");
}

#[test]
fn nan_drifts_infinitely_unless_on_both_sides() {
    assert_eq!(distance_drift(f64::NAN, f64::NAN), 0.0);
    assert_eq!(distance_drift(0.3, f64::NAN), f64::INFINITY);
    assert_eq!(distance_drift(f64::NAN, 0.3), f64::INFINITY);
    let answer = |ids: [&str; 2], distances: [f32; 2]| QueryResult {
        ids: vec![ids.iter().map(|id| (*id).to_owned()).collect()],
        distances: Some(vec![distances.iter().copied().map(Some).collect()]),
        ..QueryResult::default()
    };
    // A NaN boundary makes no ties with a number.
    let primary = answer(["a", "b"], [0.1, f32::NAN]);
    let other = answer(["a", "c"], [0.1, 0.3]);
    let c = compare_query(&primary, &other);
    assert_eq!((c.recall(), c.drift()), (Some(0.5), Some(0.0)));
    // A shared record at NaN on one side only drifts without bound, so it is never noise.
    let number = answer(["a", "b"], [0.1, 0.2]);
    let c = compare_query(&primary, &number);
    assert_eq!((c.recall(), c.drift()), (Some(1.0), Some(f64::INFINITY)));
}

#[test]
fn embeddings_are_equal_bit_for_bit_as_f32() {
    let x: f32 = "0.30000001".parse().unwrap();
    assert!(embeddings_equal(&[x, 1.0], &[0.3_f64 as f32, 1.0]));
    assert!(!embeddings_equal(&[x], &[f32::from_bits(x.to_bits() + 1)]));
    assert!(!embeddings_equal(&[1.0], &[1.0, 2.0]));
    assert!(embeddings_equal(&[f32::NAN], &[f32::NAN]));
    assert!(!embeddings_equal(&[0.0], &[-0.0]));
    // What JSON carries: the f64 text of an f32 reads back as the same f32.
    let a = records(json!({"ids": ["a"], "embeddings": [[0.1, 0.2]]}));
    let b = records(json!({"ids": ["a"], "embeddings": [[0.10000000149011612, 0.2]]}));
    assert!(compare_records(&a, &b).changed.is_empty());
    let c = records(json!({"ids": ["a"], "embeddings": [[0.1, 0.3]]}));
    assert_eq!(
        compare_records(&a, &c).changed[0].fields,
        [Field::Embedding]
    );
}

#[test]
fn metadata_compare_as_values_with_empty_as_none() {
    assert!(metadata_equal(
        Some(&json!({"a": 1, "b": "x"})),
        Some(&json!({"b": "x", "a": 1}))
    ));
    assert!(metadata_equal(None, Some(&json!({}))));
    assert!(metadata_equal(Some(&Value::Null), Some(&json!({}))));
    assert!(!metadata_equal(
        Some(&json!({"n": 1})),
        Some(&json!({"n": 1.0}))
    ));
    assert!(!metadata_equal(None, Some(&json!({"n": 1}))));
}

#[test]
fn missing_fields_are_not_compared_and_null_differs_from_a_value() {
    let a = records(json!({"ids": ["x"], "documents": ["d"], "uris": [null]}));
    let b = records(json!({"ids": ["x"], "metadatas": [{"k": 1}], "uris": ["u"]}));
    // Documents and metadatas are each in one answer only; uris are in both.
    assert_eq!(compare_records(&a, &b).changed[0].fields, [Field::Uri]);
    let c = records(json!({"ids": ["x"], "documents": [null]}));
    assert_eq!(compare_records(&a, &c).changed[0].fields, [Field::Document]);
}

#[test]
fn gets_compare_id_sets_and_name_fields_in_order() {
    let primary = records(json!({
        "ids": ["a", "b", "c"],
        "documents": ["A", "B", "C"],
        "metadatas": [{"k": 1}, {"k": 2}, null],
    }));
    let secondary = records(json!({
        "ids": ["d", "b", "a"],
        "documents": ["D", "b", "A"],
        "metadatas": [null, {"k": 3}, {"k": 1}],
    }));
    let c = compare_records(&primary, &secondary);
    assert_eq!(c.only_primary, ["c"]);
    assert_eq!(c.only_secondary, ["d"]);
    assert_eq!(
        c.changed,
        [Changed {
            id: "b",
            fields: vec![Field::Document, Field::Metadata]
        }]
    );
}

#[test]
fn query_content_is_compared_for_shared_records() {
    let primary: QueryResult = serde_json::from_value(
        json!({"ids": [["a", "b"]], "distances": [[0.1, 0.2]], "documents": [["one", "two"]]}),
    )
    .unwrap();
    let secondary: QueryResult = serde_json::from_value(
        json!({"ids": [["b", "a"]], "distances": [[0.2, 0.1]], "documents": [["TWO", "one"]]}),
    )
    .unwrap();
    let c = compare_query(&primary, &secondary);
    assert_eq!(c.changed(), (vec!["b"], vec![Field::Document]));
    assert_eq!(c.recall(), Some(1.0));
}

#[test]
fn the_distance_gap_tells_ann_noise_from_farther_neighbours() {
    let primary = [Some(1.0), Some(2.0), Some(3.0)];
    assert_eq!(
        distance_gap(&primary, &[Some(1.0), Some(2.0), Some(3.0)]),
        Some(0.0)
    );
    let gap = distance_gap(&primary, &[Some(2.0), Some(3.0), Some(4.0)]).unwrap();
    assert!((gap - 0.5).abs() < 1e-9, "{gap}");
    assert_eq!(distance_gap(&[], &primary), None);
    assert_eq!(distance_gap(&[Some(0.0)], &[Some(0.25)]), Some(0.25));
}
