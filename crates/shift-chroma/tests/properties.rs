//! Property tests of what the proxy parses from untrusted clients: the route parser, the path
//! builders and rewriter, and the payload views of record writes.
//!
//! They run on stable Rust in CI for a bounded number of cases (`PROPTEST_CASES`, 256 by
//! default); the cargo-fuzz targets in `fuzz/` drive the same functions without a bound. A
//! failure prints the minimal input and its seed is kept in `proptest-regressions/`.

use http::Method;
use proptest::prelude::*;
use serde_json::{json, Value};
use shift_chroma::paths::{self, SegmentRewrite};
use shift_chroma::payload::{
    merge_record_bodies, record_count, record_ids, retain_records, split_record_body,
};
use shift_chroma::{classify, Operation};

/// Any method the parser may see, standard or not.
fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::PATCH),
        Just(Method::DELETE),
        Just(Method::HEAD),
        Just(Method::OPTIONS),
        "[A-Z]{1,8}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
    ]
}

/// A path a client might send: made of route words, escapes and arbitrary text.
fn raw_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("/api/v2/".to_owned()),
        Just("tenants".to_owned()),
        Just("databases".to_owned()),
        Just("collections".to_owned()),
        Just("by-id".to_owned()),
        Just("add".to_owned()),
        Just("functions".to_owned()),
        Just("%".to_owned()),
        Just("%ff".to_owned()),
        Just("?".to_owned()),
        ".{0,12}",
    ];
    prop::collection::vec(piece, 0..14).prop_map(|pieces| pieces.concat())
}

/// A non-empty segment value: any Unicode text, including the characters paths escape.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{1,16}",
        "[a-z0-9 /%?#{}<>`\"-]{1,16}",
        Just("by-id".to_owned()),
        Just("..".to_owned()),
    ]
}

/// The record verbs and the operation each classifies to (`POST .../collections/{id}/{verb}`).
const VERBS: [(&str, Operation); 8] = [
    ("add", Operation::CollectionAdd),
    ("upsert", Operation::CollectionUpsert),
    ("update", Operation::CollectionUpdate),
    ("delete", Operation::CollectionDelete),
    ("get", Operation::CollectionGet),
    ("query", Operation::CollectionQuery),
    ("search", Operation::CollectionSearch),
    ("fork", Operation::ForkCollection),
];

proptest! {
    /// No input makes the parser panic; an unknown route has no parameters to misuse.
    #[test]
    fn classify_never_panics(method in method(), path in raw_path()) {
        let route = classify(&method, &path);
        if route.operation == Operation::Unknown {
            prop_assert_eq!(route.params, Default::default());
        }
    }

    /// A path built for any tenant, database and collection classifies back to the same
    /// operation with the same (decoded) values: no segment can smuggle a `/`, `?` or `%`.
    #[test]
    fn built_paths_classify_to_their_values(
        tenant in segment(),
        database in segment(),
        collection in segment(),
        verb in 0..VERBS.len(),
    ) {
        let (word, operation) = VERBS[verb];
        let path = paths::collection_verb(&tenant, &database, &collection, word);
        let route = classify(&Method::POST, &path);
        prop_assert_eq!(route.operation, operation, "{}", path);
        prop_assert_eq!(route.params.tenant.as_deref(), Some(tenant.as_str()));
        prop_assert_eq!(route.params.database.as_deref(), Some(database.as_str()));
        prop_assert_eq!(route.params.collection.as_deref(), Some(collection.as_str()));

        let by_id = paths::collection_by_id(&tenant, &database, &collection);
        let route = classify(&Method::GET, &by_id);
        prop_assert_eq!(route.operation, Operation::GetCollectionById, "{}", by_id);
        prop_assert_eq!(route.params.collection.as_deref(), Some(collection.as_str()));
    }

    /// Rewriting a client's path for a backend changes exactly the segments asked for and keeps
    /// the operation and the query string.
    /// (A collection id "by-id" is left out: `collections/by-id/{verb}` reads as the by-id
    /// form, and the proxy never replaces a segment that is not a UUID, see `paths::rewrite`.)
    #[test]
    fn rewrite_changes_only_the_segments_asked_for(
        from in (segment(), segment(), segment().prop_filter("the by-id form", |c| c != "by-id")),
        to in (prop::option::of(segment()), prop::option::of(segment()), prop::option::of(segment())),
        verb in 0..VERBS.len(),
        query in prop::option::of("[a-z0-9=&]{0,12}"),
    ) {
        let (word, operation) = VERBS[verb];
        let mut path = paths::collection_verb(&from.0, &from.1, &from.2, word);
        if let Some(query) = &query {
            path = format!("{path}?{query}");
        }
        let rewritten = paths::rewrite(&path, SegmentRewrite {
            tenant: to.0.as_deref(),
            database: to.1.as_deref(),
            collection: to.2.as_deref(),
        });
        let route = classify(&Method::POST, &rewritten);
        prop_assert_eq!(route.operation, operation, "{}", rewritten);
        prop_assert_eq!(route.params.tenant.as_deref(), Some(to.0.as_deref().unwrap_or(&from.0)));
        prop_assert_eq!(route.params.database.as_deref(), Some(to.1.as_deref().unwrap_or(&from.1)));
        prop_assert_eq!(route.params.collection.as_deref(), Some(to.2.as_deref().unwrap_or(&from.2)));
        prop_assert_eq!(rewritten.split_once('?').map(|(_, q)| q), query.as_deref());
    }

    /// The id reader takes any bytes without panicking, and reads the ids of a record write
    /// whatever else the body holds.
    #[test]
    fn record_ids_of_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = record_ids(&bytes);
    }

    #[test]
    fn record_ids_of_a_record_write(body in record_body(0..40)) {
        let bytes = serde_json::to_vec(&body).unwrap();
        let ids = record_ids(&bytes).unwrap();
        prop_assert_eq!(ids, ids_of(&body));
    }

    /// Splitting a body into parts of at most `max` records loses nothing and keeps order:
    /// merging the parts back gives the body again.
    #[test]
    fn split_then_merge_is_the_identity(body in record_body(1..60), max in 1usize..20) {
        let parts = split_record_body(&body, max);
        prop_assert_eq!(parts.iter().map(record_count).sum::<usize>(), record_count(&body));
        for part in &parts {
            prop_assert!(record_count(part) <= max);
            prop_assert!(record_count(part) >= 1);
        }
        let mut merged = parts[0].clone();
        for part in &parts[1..] {
            merged = merge_record_bodies(&merged, part).expect("parts of one body merge");
        }
        prop_assert_eq!(merged, body);
    }

    /// Keeping the records whose id passes a test filters every per-record array alike.
    #[test]
    fn retain_keeps_whole_records(body in record_body(0..40), keep_mod in 1usize..4) {
        let keep = |id: &str| id.len().is_multiple_of(keep_mod);
        let kept = retain_records(&body, keep).unwrap();
        let ids = ids_of(&body);
        let kept_ids = ids_of(&kept);
        prop_assert_eq!(&kept_ids, &ids.iter().filter(|id| keep(id)).cloned().collect::<Vec<_>>());
        for field in ["embeddings", "metadatas", "documents", "uris"] {
            let (Some(all), Some(some)) = (body.get(field), kept.get(field)) else {
                prop_assert_eq!(body.get(field).is_some(), kept.get(field).is_some());
                continue;
            };
            let expected: Vec<&Value> = all
                .as_array()
                .unwrap()
                .iter()
                .zip(&ids)
                .filter(|(_, id)| keep(id))
                .map(|(value, _)| value)
                .collect();
            prop_assert_eq!(some.as_array().unwrap().iter().collect::<Vec<_>>(), expected);
        }
    }

    /// Two bodies with a shared id never merge: applying them one after the other is not the
    /// same as applying one body that names the id twice.
    #[test]
    fn bodies_sharing_an_id_never_merge(first in record_body(1..20), second in record_body(1..20)) {
        let shared = ids_of(&first)[0].clone();
        let mut second = second;
        second["ids"][0] = json!(shared);
        prop_assert!(merge_record_bodies(&first, &second).is_none());
    }
}

/// A record write of `count` records with distinct ids: float embeddings, and optional
/// metadatas, documents and uris arrays.
fn record_body(count: std::ops::Range<usize>) -> impl Strategy<Value = Value> {
    prop::collection::btree_set("[a-z0-9]{1,6}", count).prop_flat_map(|ids| {
        let n = ids.len();
        let ids: Vec<String> = ids.into_iter().collect();
        (
            Just(ids),
            prop::collection::vec(prop::collection::vec(-1.0f32..1.0, 3), n),
            prop::option::of(prop::collection::vec(
                prop::option::of((any::<i32>(), "\\PC{0,6}")),
                n,
            )),
            prop::option::of(prop::collection::vec(prop::option::of("\\PC{0,12}"), n)),
            prop::option::of(prop::collection::vec(prop::option::of("[a-z:/.]{0,12}"), n)),
        )
            .prop_map(|(ids, embeddings, metadatas, documents, uris)| {
                let mut body = json!({ "ids": ids, "embeddings": embeddings });
                if let Some(metadatas) = metadatas {
                    body["metadatas"] = metadatas
                        .into_iter()
                        .map(|m| m.map(|(n, s)| json!({ "n": n, "s": s })))
                        .collect();
                }
                if let Some(documents) = documents {
                    body["documents"] = json!(documents);
                }
                if let Some(uris) = uris {
                    body["uris"] = json!(uris);
                }
                body
            })
    })
}

fn ids_of(body: &Value) -> Vec<String> {
    body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect()
}
