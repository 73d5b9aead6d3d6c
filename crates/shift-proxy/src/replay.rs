//! The replay worker: applies one target's journal to that store, in order.
//!
//! Consecutive compatible record writes of one collection are merged into one request (disjoint
//! ids, same kind, within the store's `max_batch_size`). A failure worth retrying (unreachable,
//! 5xx, 429) is retried with exponential backoff and jitter, honouring `Retry-After`, until it
//! succeeds: nothing behind it is applied meanwhile, so order is kept. A refusal (a 4xx such as
//! a dimension mismatch) parks the entry as a dead letter with its reason; a refused merged
//! batch is retried entry by entry first, so only the bad entry is parked.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use shift_chroma::payload::{append_record_body, record_count};
use shift_config::BackendName;
use shift_store::{JournalEntry, Seq, Store};
use tokio::sync::watch;

use crate::apply::{Applier, ApplyError};
use crate::metrics::ProxyMetrics;
use crate::mirror::{MirrorOp, RecordKind};

/// Entries read from the journal at a time.
const READ_AHEAD: usize = 512;
/// A merged body stops growing past this many bytes of payload, well under Chroma's default
/// 40 MiB request limit.
const MERGED_BYTES: usize = 8 * 1024 * 1024;

/// How the worker retries and paces itself.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Requests per second at most; 0 is unlimited.
    pub rate_limit: u32,
}

/// Applies `target`'s journal to it until `stop` turns true.
#[derive(Debug)]
pub struct ReplayWorker {
    pub target: BackendName,
    pub store: Store,
    pub applier: Arc<Applier>,
    pub metrics: ProxyMetrics,
    pub settings: ReplaySettings,
}

/// Consecutive entries applied as one op.
#[derive(Debug)]
struct Batch {
    seqs: Vec<Seq>,
    op: MirrorOp,
    entries: Vec<(Seq, MirrorOp)>,
}

impl ReplayWorker {
    pub fn spawn(self, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(stop))
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let target = self.target.as_str();
        let mut appended = self.store.watch_appends(self.target);
        let mut pacer = (self.settings.rate_limit > 0).then(|| {
            let mut interval =
                tokio::time::interval(Duration::from_secs(1) / self.settings.rate_limit);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        loop {
            if *stop.borrow() {
                break;
            }
            appended.borrow_and_update();
            let entries = match self.store.read(self.target, None, READ_AHEAD) {
                Ok(entries) => entries,
                Err(error) => {
                    tracing::error!(target, %error, "cannot read the journal");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if entries.is_empty() {
                tokio::select! {
                    _ = appended.changed() => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let max = self.applier.max_batch(self.target).await;
            for batch in group(self.target, entries, max, &self.store, &self.metrics) {
                if let Some(pacer) = pacer.as_mut() {
                    pacer.tick().await;
                }
                if !self.apply_batch(batch, &mut stop).await {
                    return;
                }
            }
        }
    }

    /// Applies a batch until it is applied or parked; false when asked to stop meanwhile.
    async fn apply_batch(&self, batch: Batch, stop: &mut watch::Receiver<bool>) -> bool {
        let target = self.target.as_str();
        let mut wait = self.settings.retry_initial;
        loop {
            match self.applier.apply(self.target, &batch.op).await {
                Ok(()) => {
                    self.done(&batch.seqs).await;
                    self.metrics
                        .replay_applied
                        .with_label_values(&[target])
                        .inc_by(batch.seqs.len() as u64);
                    self.metrics
                        .replay_requests
                        .with_label_values(&[target])
                        .inc();
                    return true;
                }
                Err(ApplyError::Retry {
                    reason,
                    retry_after,
                }) => {
                    self.metrics
                        .replay_retries
                        .with_label_values(&[target])
                        .inc();
                    let pause = retry_after.unwrap_or_else(|| jitter(wait));
                    tracing::warn!(target, %reason, retry_in = ?pause, "replay failed; retrying");
                    wait = (wait * 2).min(self.settings.retry_max);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => return false,
                    }
                }
                Err(ApplyError::Refused { .. }) if batch.entries.len() > 1 => {
                    // Find the entry the store refuses: apply them one by one.
                    for (seq, op) in batch.entries {
                        let single = Batch {
                            seqs: vec![seq],
                            op: op.clone(),
                            entries: vec![(seq, op)],
                        };
                        if !Box::pin(self.apply_batch(single, stop)).await {
                            return false;
                        }
                    }
                    return true;
                }
                Err(ApplyError::Refused {
                    reason,
                    dimension_mismatch,
                }) => {
                    let collection = batch.op.lag_key();
                    if dimension_mismatch {
                        self.metrics
                            .dimension_mismatches
                            .with_label_values(&[target, &collection])
                            .inc();
                    }
                    tracing::error!(
                        target,
                        collection,
                        %reason,
                        dimension_mismatch,
                        "the store refused a mirrored write; parked as a dead letter"
                    );
                    for seq in &batch.seqs {
                        if let Err(error) = self.store.park(self.target, *seq, reason.clone()).await
                        {
                            tracing::error!(target, %error, "cannot park a dead letter");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            return true;
                        }
                    }
                    let kind = if dimension_mismatch {
                        "dimension_mismatch"
                    } else {
                        "refused"
                    };
                    self.metrics
                        .dead_letters
                        .with_label_values(&[target, kind])
                        .inc_by(batch.seqs.len() as u64);
                    return true;
                }
            }
        }
    }

    async fn done(&self, seqs: &[Seq]) {
        while let Err(error) = self.store.remove(self.target, seqs).await {
            tracing::error!(target = self.target.as_str(), %error, "cannot remove applied entries; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Full jitter: a random wait between half and all of `wait`.
fn jitter(wait: Duration) -> Duration {
    wait.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// Reads the entries into batches, merging consecutive compatible record writes. Unreadable
/// entries are parked on the spot.
fn group(
    target: BackendName,
    entries: Vec<JournalEntry>,
    max_records: usize,
    store: &Store,
    metrics: &ProxyMetrics,
) -> Vec<Batch> {
    let mut batches: Vec<Batch> = Vec::new();
    let mut merged_bytes = 0usize;
    for entry in entries {
        let op = match MirrorOp::from_bytes(&entry.payload) {
            Ok(op) => op,
            Err(error) => {
                // Parked asynchronously by the caller's next round would lose the reason;
                // park here, best effort, and move on.
                let store = store.clone();
                let reason = format!("unreadable journal entry: {error}");
                tracing::error!(target = target.as_str(), seq = %entry.seq, %reason);
                metrics
                    .dead_letters
                    .with_label_values(&[target.as_str(), "unreadable"])
                    .inc();
                let seq = entry.seq;
                tokio::spawn(async move {
                    let _ = store.park(target, seq, reason).await;
                });
                continue;
            }
        };
        let size = entry.payload.len();
        if let Some(last) = batches.last_mut() {
            if merged_bytes + size <= MERGED_BYTES && merge_into(&mut last.op, &op, max_records) {
                last.seqs.push(entry.seq);
                last.entries.push((entry.seq, op));
                merged_bytes += size;
                continue;
            }
        }
        merged_bytes = size;
        batches.push(Batch {
            seqs: vec![entry.seq],
            entries: vec![(entry.seq, op.clone())],
            op,
        });
    }
    batches
}

/// Makes `into` do what it did and then what `next` does, in place, when that can be said in
/// one request; false (and `into` untouched) otherwise.
fn merge_into(into: &mut MirrorOp, next: &MirrorOp, max_records: usize) -> bool {
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

/// One op doing what `first` then `second` do, when that can be said in one request.
#[cfg(test)]
fn merge(first: &MirrorOp, second: &MirrorOp, max_records: usize) -> Option<MirrorOp> {
    let mut merged = first.clone();
    merge_into(&mut merged, second, max_records).then_some(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn records(kind: RecordKind, collection: &str, body: Value) -> MirrorOp {
        MirrorOp::Records {
            kind,
            collection: collection.into(),
            body,
        }
    }

    #[test]
    fn consecutive_compatible_writes_merge() {
        let a = records(
            RecordKind::Upsert,
            "c",
            json!({"ids": ["a"], "embeddings": [[1.0]]}),
        );
        let b = records(
            RecordKind::Upsert,
            "c",
            json!({"ids": ["b"], "embeddings": [[2.0]]}),
        );
        let merged = merge(&a, &b, 10).unwrap();
        assert_eq!(
            merged,
            records(
                RecordKind::Upsert,
                "c",
                json!({"ids": ["a", "b"], "embeddings": [[1.0], [2.0]]})
            )
        );
        let d1 = records(RecordKind::Delete, "c", json!({"ids": ["a"]}));
        let d2 = records(RecordKind::Delete, "c", json!({"ids": ["a", "b"]}));
        assert_eq!(
            merge(&d1, &d2, 10).unwrap(),
            records(RecordKind::Delete, "c", json!({"ids": ["a", "a", "b"]}))
        );
    }

    #[test]
    fn writes_that_must_stay_apart_do_not_merge() {
        let a = records(
            RecordKind::Upsert,
            "c",
            json!({"ids": ["a"], "embeddings": [[1.0]]}),
        );
        let same_id = records(
            RecordKind::Upsert,
            "c",
            json!({"ids": ["a"], "embeddings": [[2.0]]}),
        );
        let other_kind = records(
            RecordKind::Add,
            "c",
            json!({"ids": ["b"], "embeddings": [[2.0]]}),
        );
        let other_collection = records(
            RecordKind::Upsert,
            "d",
            json!({"ids": ["b"], "embeddings": [[2.0]]}),
        );
        let delete = records(RecordKind::Delete, "c", json!({"ids": ["b"]}));
        for second in [same_id, other_kind, other_collection, delete] {
            assert!(merge(&a, &second, 10).is_none(), "{second:?}");
        }
        let big = records(
            RecordKind::Upsert,
            "c",
            json!({"ids": ["x", "y"], "embeddings": [[1.0], [2.0]]}),
        );
        assert!(merge(&a, &big, 2).is_none(), "the batch limit was passed");
    }
}
