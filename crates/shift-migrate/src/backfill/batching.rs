//! The backfill's batching decisions, apart from the stores so that they are tested without
//! servers: the batch size and concurrency a request gets, where a resumed run starts, the ids
//! a snapshot missed, and copying batches concurrently while finishing them in order.

use std::collections::HashSet;
use std::future::Future;

/// Records per batch when the request does not say.
const DEFAULT_BATCH: usize = 1000;
/// Batches in flight when the request does not say.
const DEFAULT_CONCURRENCY: usize = 2;
/// Batches in flight at most, whatever the request says.
const MAX_CONCURRENCY: usize = 32;

/// Records per batch: the request's (1000 when it does not say), at least 1 and at most
/// `max_batch`, the smaller of the two stores' `max_batch_size`, so the target never gets a
/// batch it refuses as too large.
pub(super) fn batch_size(requested: Option<usize>, max_batch: usize) -> usize {
    requested
        .unwrap_or(DEFAULT_BATCH)
        .clamp(1, max_batch.max(1))
}

/// Batches in flight at once: the request's (2 when it does not say), from 1 to 32.
pub(super) fn concurrency(requested: Option<usize>) -> usize {
    requested
        .unwrap_or(DEFAULT_CONCURRENCY)
        .clamp(1, MAX_CONCURRENCY)
}

/// Splits a snapshot of ids at an earlier run's checkpoint: how many ids the checkpoint covers
/// (every id up to `last_id`, which earlier runs copied), and the ids still to copy, in order.
pub(super) fn resume(snapshot: &[String], last_id: Option<&str>) -> (usize, Vec<String>) {
    let todo: Vec<String> = snapshot
        .iter()
        .filter(|id| last_id.is_none_or(|last| id.as_str() > last))
        .cloned()
        .collect();
    (snapshot.len() - todo.len(), todo)
}

/// The ids of a second listing that the first snapshot lacked (a page shifted by a delete), in
/// the listing's order.
pub(super) fn missed(snapshot: &[String], again: Vec<String>) -> Vec<String> {
    let seen: HashSet<&String> = snapshot.iter().collect();
    again.into_iter().filter(|id| !seen.contains(id)).collect()
}

/// Copies `ids` in batches of `batch_size`, `concurrency` at a time, and hands each copied
/// batch (with what `copy` reported) to `finished` in the order of `ids`, whatever order the
/// copies end in: what `finished` has seen is always a prefix, which is what a checkpoint
/// promises. The first error ends it before any later batch is finished, and so does
/// `finished` answering true (the backfill was cancelled).
pub(super) async fn copy_in_order<C, CF, D, DF>(
    ids: &[String],
    batch_size: usize,
    concurrency: usize,
    copy: C,
    mut finished: D,
) -> Result<(), String>
where
    C: Fn(Vec<String>) -> CF,
    CF: Future<Output = Result<(Vec<String>, usize), String>>,
    D: FnMut(Vec<String>, usize) -> DF,
    DF: Future<Output = Result<bool, String>>,
{
    use futures_util::stream::{self, StreamExt};
    // Owned batches: a future borrowing its batch from the slice trips the compiler's
    // higher-ranked lifetime check once the backfill is spawned.
    let batches: Vec<Vec<String>> = ids
        .chunks(batch_size.max(1))
        .map(<[String]>::to_vec)
        .collect();
    let mut results = stream::iter(batches.into_iter().map(&copy)).buffered(concurrency.max(1));
    while let Some(result) = results.next().await {
        let (batch, copied) = result?;
        if finished(batch, copied).await? {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "batching_tests.rs"]
mod tests;
