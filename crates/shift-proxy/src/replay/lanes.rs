//! Which journal entries share a lane and how a lane's entries merge into one request.

use serde_json::Value;
use shift_chroma::payload::{append_record_body, record_count};
use shift_state::JournalEntry;

use crate::mirror::{MirrorOp, RecordKind};

/// Whether an entry must be applied alone (see the module's doc): anything but a record write,
/// a reconcile of records or a function op of one collection. Told from the op's serde tag,
/// the first key of its JSON, so record payloads are not decoded twice.
pub(super) fn is_barrier(entry: &JournalEntry) -> bool {
    const LANE_OPS: [&[u8]; 4] = [
        b"{\"records\":",
        b"{\"reconcile\":",
        b"{\"function\":",
        b"{\"forget_missing\":",
    ];
    let op = crate::mirror::op_json(&entry.payload);
    entry.collection.is_empty() || !LANE_OPS.iter().any(|tag| op.starts_with(tag))
}

/// Makes `into` do what it did and then what `next` does, in place, when that can be said in
/// one request; false (and `into` untouched) otherwise.
pub(super) fn merge_into(into: &mut MirrorOp, next: &MirrorOp, max_records: usize) -> bool {
    let (
        MirrorOp::Records {
            kind: k1,
            collection: c1,
            body: b1,
        },
        MirrorOp::Records {
            kind: k2,
            collection: c2,
            body: b2,
        },
    ) = (into, next)
    else {
        return false;
    };
    if k1 != k2 || c1 != c2 || record_count(b1) + record_count(b2) > max_records {
        return false;
    }
    match k1 {
        RecordKind::Add | RecordKind::Upsert | RecordKind::Update => append_record_body(b1, b2),
        // Deletes by id commute with each other: any overlap is harmless.
        RecordKind::Delete => {
            let only_ids = |b: &Value| b.as_object().is_some_and(|o| o.keys().all(|k| k == "ids"));
            if !only_ids(b1) || !only_ids(b2) {
                return false;
            }
            match (
                b1.get_mut("ids").and_then(Value::as_array_mut),
                b2["ids"].as_array(),
            ) {
                (Some(ids), Some(more)) => {
                    ids.extend(more.iter().cloned());
                    true
                }
                _ => false,
            }
        }
    }
}
