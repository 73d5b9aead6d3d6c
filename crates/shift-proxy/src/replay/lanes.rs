//! Which journal entries share a lane and how a lane's entries merge into one request.

use serde_json::Value;
use shift_chroma::payload::{append_record_body, record_count};
use shift_config::BackendName;
use shift_state::{JournalEntry, Seq, StoreError};
use std::sync::Arc;

use super::Planned;
use crate::coord::ReplayJournal;
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

/// Whether the entries of an applied batch may leave the journal without an fsync of their
/// own ([`StateStore::remove_deferred`]): adds, upserts and deletes of ids, as written or as
/// merged. Anything else is removed durably.
///
/// A deferred remove is durable with the next durable commit of the state (the next write's
/// intent, a durable remove, a switch, the close); a crash before it brings the entries back,
/// with those of every later deferred remove, and the replay applies them again, in seq order
/// within their lane, onto a target that already holds them and whatever of their lane was
/// applied after them. Since commits are ordered and every other remove is durable, what comes
/// back is, per lane, a run of adds, upserts and deletes of ids that was applied last. Applied
/// again, such a run leaves each record as it was (Chroma: an add of an existing id changes
/// nothing; an upsert writes the fields and metadata keys it carries; a delete removes): if
/// the run deletes the record, the ops after its last delete start from no record in both
/// passes and do the same; if not, the record exists (the run's first add or upsert made it,
/// or it was there), so applied again every add changes nothing and every upsert writes the
/// value the last upsert of that field or key already left. An update is not so: applied
/// again it can find a record the first pass did not (an update of a missing `x`, then an add
/// of `x`: the second pass updates `x`). Reconciliations, lifecycle and function ops are
/// removed durably too, as before.
pub(super) fn removal_may_wait(planned: &Planned) -> bool {
    match planned {
        Planned::Raw(_) => true,
        Planned::Op(MirrorOp::Records { kind, .. }) => *kind != RecordKind::Update,
        Planned::Op(_) => false,
    }
}

/// Removes applied entries from `target`'s journal, with an fsync of their own if `durable`.
pub(super) async fn remove_applied(
    store: &Arc<dyn ReplayJournal>,
    target: BackendName,
    seqs: &[Seq],
    durable: bool,
) -> Result<(), StoreError> {
    if durable {
        store.remove(target, seqs).await
    } else {
        store.remove_deferred(target, seqs).await
    }
}
