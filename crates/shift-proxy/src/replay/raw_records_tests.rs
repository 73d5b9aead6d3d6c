//! The byte-level merge beside the parse-tree merge (`lanes.rs`'s `merge_into`): same
//! decisions, same merged body once parsed.

use serde_json::{json, Value};

use super::*;
use crate::auth::Caller;
use crate::mirror::MirrorOp;
use crate::replay::lanes::merge_into;

fn payload(kind: RecordKind, collection: &str, body: &str) -> Vec<u8> {
    MirrorOp::encode_records(kind, &collection.into(), body.as_bytes(), &Caller::Operator).bytes
}

/// Merges `payloads` both ways with `max` records at most; the raw result parsed, and how
/// many entries each way took.
fn both_ways(payloads: &[Vec<u8>], max: usize) -> (Option<(Value, usize)>, (Value, usize)) {
    let mut op = MirrorOp::from_bytes(&payloads[0]).unwrap();
    let mut tree_count = 1;
    for next in &payloads[1..] {
        let next = MirrorOp::from_bytes(next).unwrap();
        if !merge_into(&mut op, &next, max) {
            break;
        }
        tree_count += 1;
    }
    let MirrorOp::Records { body, .. } = op else {
        panic!("not records")
    };
    let raw = RawMerge::start(&payloads[0]).map(|mut merge| {
        let mut count = 1;
        for next in &payloads[1..] {
            if !merge.push(next, max) {
                break;
            }
            count += 1;
        }
        let batch = merge.finish();
        let merged: Value = serde_json::from_slice(&batch.body).unwrap();
        assert_eq!(
            batch.records,
            merged["ids"].as_array().unwrap().len(),
            "{merged}"
        );
        (merged, count)
    });
    (raw, (body, tree_count))
}

fn same(payloads: &[Vec<u8>], max: usize, expect_count: usize) {
    let (raw, tree) = both_ways(payloads, max);
    let raw = raw.expect("the byte-level path takes it");
    assert_eq!(raw, tree);
    assert_eq!(raw.1, expect_count);
}

#[test]
fn float_adds_merge_as_the_parse_tree_merges_them() {
    let a = r#"{"ids": ["a", "b"], "embeddings": [[1.5, -2e3], [0.1, 3]],
        "metadatas": [{"k": "\u00e9, [x]"}, null], "documents": ["d,\"a\"", "b"]}"#;
    let b = r#"{"ids":["c"],"embeddings":[[7,8]],"metadatas":[{"n":{"deep":[1,{"x":"]"}]}}]}"#;
    let c = r#" {"ids":["d"],"embeddings":[[9,9]],"uris":["u"],"documents":null} "#;
    let payloads: Vec<_> = [a, b, c]
        .iter()
        .map(|body| payload(RecordKind::Add, "c1", body))
        .collect();
    same(&payloads, 100, 3);
    // Within the batch size only.
    same(&payloads, 3, 2);
}

#[test]
fn base64_upserts_merge_and_missing_arrays_stand_for_nulls() {
    let a = r#"{"ids":["a"],"embeddings":["AACAPw=="],"documents":["x"]}"#;
    let b =
        r#"{"ids":["b","c"],"embeddings":["AAAAQA==","AABAQA=="],"metadatas":[{"k":1},{"k":2}]}"#;
    let payloads: Vec<_> = [a, b]
        .iter()
        .map(|body| payload(RecordKind::Upsert, "c1", body))
        .collect();
    same(&payloads, 100, 2);
    let (raw, _) = both_ways(&payloads, 100);
    let merged = raw.unwrap().0;
    assert_eq!(merged["documents"], json!(["x", null, null]));
    assert_eq!(merged["metadatas"], json!([null, {"k": 1}, {"k": 2}]));
}

#[test]
fn what_cannot_be_one_request_stops_the_merge_both_ways() {
    let add = |body: &str| payload(RecordKind::Add, "c1", body);
    let first = add(r#"{"ids":["a"],"embeddings":[[1]]}"#);
    let cases = [
        // An id again.
        add(r#"{"ids":["a"],"embeddings":[[2]]}"#),
        // Another embedding form.
        add(r#"{"ids":["b"],"embeddings":["AACAPw=="]}"#),
        // Another kind, another collection.
        payload(
            RecordKind::Upsert,
            "c1",
            r#"{"ids":["b"],"embeddings":[[2]]}"#,
        ),
        payload(RecordKind::Add, "c2", r#"{"ids":["b"],"embeddings":[[2]]}"#),
        // Arrays not as long as their ids.
        add(r#"{"ids":["b"],"embeddings":[[2],[3]]}"#),
        // Not a record write.
        MirrorOp::Reconcile {
            collection: "c1".into(),
            ids: vec!["b".into()],
        }
        .to_bytes(),
    ];
    for next in cases {
        let (raw, tree) = both_ways(&[first.clone(), next.clone()], 100);
        assert_eq!(raw.unwrap().1, 1, "{}", String::from_utf8_lossy(&next));
        assert_eq!(tree.1, 1);
    }
}

#[test]
fn bodies_outside_the_byte_level_rules_are_left_to_the_parse_tree() {
    for body in [
        r#"{"ids":["a"],"embeddings":[[1]],"flag":true}"#,
        r#"{"ids":["a"],"documents":"not an array"}"#,
        r#"{"ids":["a\u0062"]}"#,
        r#"{"\u0069ds":["a"]}"#,
        r#"{"ids":["a","a"]}"#,
        r#"{"ids":[]}"#,
        r#"{"embeddings":[[1]]}"#,
        r#"[1]"#,
    ] {
        assert!(
            RawMerge::start(&payload(RecordKind::Add, "c1", body)).is_none(),
            "{body}"
        );
    }
    // Updates and deletes keep the parse-tree path.
    let update = payload(RecordKind::Update, "c1", r#"{"ids":["a"]}"#);
    assert!(RawMerge::start(&update).is_none());
}

#[test]
fn one_entry_is_sent_with_its_bytes_as_the_client_wrote_them() {
    let body = r#"{"ids":["a"],"embeddings":[[1.50,2.000000000000000000001]]}"#;
    let caller = Caller::Identity("team-a".into());
    let bytes = MirrorOp::encode_records(RecordKind::Add, &"c1".into(), body.as_bytes(), &caller);
    let batch = RawMerge::start(&bytes.bytes).unwrap().finish();
    assert_eq!(
        String::from_utf8(batch.body.to_vec()).unwrap(),
        r#"{"ids":["a"],"embeddings":[[1.50,2.000000000000000000001]]}"#
    );
    assert_eq!(batch.kind, RecordKind::Add);
    assert_eq!(batch.collection.as_str(), "c1");
    assert_eq!(batch.records, 1);
    // An entry the serializer wrote (a parsed body) reads the same way.
    let op = MirrorOp::from_bytes(&bytes.bytes).unwrap();
    let batch = RawMerge::start(&op.to_bytes()).unwrap().finish();
    let parsed: Value = serde_json::from_slice(&batch.body).unwrap();
    assert_eq!(parsed, serde_json::from_str::<Value>(body).unwrap());
}

#[test]
fn finds_quotes_and_brackets_eight_bytes_at_a_time_as_byte_by_byte() {
    // Bytes near the ones it looks for (a bit away from each, the same with 0x20 set or
    // cleared), and zeros and 0x01s, which the word trick's borrows touch.
    const NEAR: &[u8] =
        b"\"[]{}\x02\x22\x5b\x7b\x5d\x7d\x5a\x5c\x7a\x7c\x7e\x00\x01\x21\x23\\,: 0.5e-";
    let mut rng = fastrand::Rng::with_seed(9);
    for _ in 0..20_000 {
        let bytes: Vec<u8> = (0..rng.usize(0..40))
            .map(|_| match rng.u8(..3) {
                0 => NEAR[rng.usize(..NEAR.len())],
                1 => rng.u8(..),
                _ => rng.u8(b'0'..=b'9'),
            })
            .collect();
        let expected = bytes.iter().position(|b| STRUCTURAL[*b as usize]);
        assert_eq!(next_structural(&bytes), expected, "{bytes:?}");
    }
}
