//! The route parser and the path rewriter on any method and path: no panic, and a rewrite of a
//! classified path classifies to the same operation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shift_chroma::paths::{rewrite, SegmentRewrite};
use shift_chroma::{classify, Operation};

fuzz_target!(|input: (&str, &str)| {
    let (method, path) = input;
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let route = classify(&method, path);
    if route.operation == Operation::Unknown {
        return;
    }
    let rewritten = rewrite(
        path,
        SegmentRewrite {
            tenant: Some("tenant"),
            database: Some("database"),
            collection: route
                .params
                .collection
                .as_deref()
                .and(Some("00000000-0000-0000-0000-000000000000")),
        },
    );
    assert_eq!(
        classify(&method, &rewritten).operation,
        route.operation,
        "{path} -> {rewritten}"
    );
});
