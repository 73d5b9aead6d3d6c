//! What a shadow or canary read is about, and how it ended.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde::Serialize;
use shift_chroma::Operation;
use shift_config::{BackendName, ReadsConfig};
use tokio::sync::oneshot;

use crate::auth::Caller;
use crate::collections::CollectionEntry;

/// The reads that are shadowed and canaried: those that read records of one collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShadowedRead {
    Query,
    Get,
    Count,
}

impl ShadowedRead {
    pub fn of(operation: Operation) -> Option<ShadowedRead> {
        match operation {
            Operation::CollectionQuery => Some(ShadowedRead::Query),
            Operation::CollectionGet => Some(ShadowedRead::Get),
            Operation::CollectionCount => Some(ShadowedRead::Count),
            _ => None,
        }
    }

    /// The operation's name, as in `chroma_shift_requests_total`.
    pub fn name(self) -> &'static str {
        match self {
            ShadowedRead::Query => "collection_query",
            ShadowedRead::Get => "collection_get",
            ShadowedRead::Count => "collection_count",
        }
    }
}

/// How shadows run; from `[reads]`.
#[derive(Debug, Clone)]
pub struct ShadowSettings {
    /// Limit on the secondary's whole answer (head and body) to a shadow.
    pub timeout: Duration,
    /// Shadows running at most; more are dropped.
    pub queue: usize,
    /// Mismatch samples kept.
    pub samples: usize,
}

impl ShadowSettings {
    pub fn from_config(reads: &ReadsConfig) -> ShadowSettings {
        ShadowSettings {
            timeout: reads.shadow_timeout,
            queue: reads.shadow_queue,
            samples: reads.mismatch_samples,
        }
    }
}

/// The collection a shadow or canary read is about.
#[derive(Debug, Clone, Serialize)]
pub struct CollectionRef {
    /// The client's id: the `collection` label of the metrics.
    pub id: String,
    pub name: String,
}

impl CollectionRef {
    pub fn of(entry: &CollectionEntry) -> CollectionRef {
        CollectionRef {
            id: entry.client_id.to_string(),
            name: entry.name.clone(),
        }
    }
}

/// Why a shadow read was not sent or not compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// The secondary has writes of the collection still queued: it would differ for that
    /// reason alone.
    Lagging,
    /// The collection has no id on the secondary yet.
    Unmapped,
    /// The primary failed or refused the read: nothing to compare with.
    PrimaryFailed,
    /// The primary's answer is over [`MAX_COMPARED_BODY`](super::MAX_COMPARED_BODY).
    TooLarge,
}

impl SkipReason {
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::Lagging => "lagging",
            SkipReason::Unmapped => "unmapped",
            SkipReason::PrimaryFailed => "primary_failed",
            SkipReason::TooLarge => "too_large",
        }
    }
}

/// How a shadow read ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ShadowOutcome {
    Match,
    Mismatch,
    /// The secondary failed, refused, or answered something that cannot be compared.
    Error,
    /// The secondary did not answer within the shadow timeout.
    Timeout,
    /// The shadow queue was full.
    Dropped,
    Skipped(SkipReason),
}

impl ShadowOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            ShadowOutcome::Match => "match",
            ShadowOutcome::Mismatch => "mismatch",
            ShadowOutcome::Error => "error",
            ShadowOutcome::Timeout => "timeout",
            ShadowOutcome::Dropped => "dropped",
            ShadowOutcome::Skipped(_) => "skipped",
        }
    }
}

/// How a canary read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryOutcome {
    /// The secondary answered the client.
    Served,
    /// The secondary failed or refused; the primary answered instead.
    Fallback,
    /// The secondary has writes of the collection still queued: the client might not read
    /// its own writes there.
    SkippedLagging,
    /// The collection has no id on the secondary yet.
    SkippedUnmapped,
}

impl CanaryOutcome {
    pub fn label(self) -> &'static str {
        match self {
            CanaryOutcome::Served => "served",
            CanaryOutcome::Fallback => "fallback",
            CanaryOutcome::SkippedLagging => "skipped_lagging",
            CanaryOutcome::SkippedUnmapped => "skipped_unmapped",
        }
    }
}

/// One mismatch, as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MismatchSample {
    /// When it was found (Unix milliseconds).
    pub at_ms: u64,
    pub collection: CollectionRef,
    pub operation: &'static str,
    pub primary: BackendName,
    pub secondary: BackendName,
    /// What differs, such as "recall@10 0.80, missing [a, b]" or "count 10 vs 8".
    pub description: String,
}

/// A shadow to run: the client's read, already addressed to the secondary.
#[derive(Debug)]
pub struct ShadowRequest {
    pub collection: CollectionRef,
    pub read: ShadowedRead,
    pub primary: BackendName,
    pub secondary: BackendName,
    pub method: Method,
    /// The path and query on the secondary (its collection id, its tenant and database).
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The client's caller: the shadow reaches the secondary with the same identity.
    pub caller: Caller,
}

/// The primary's side of a running shadow. Hand it the primary's answer; dropping it instead
/// (the primary failed) counts the shadow as skipped.
#[derive(Debug)]
pub struct PrimaryHandoff {
    pub(super) sender: oneshot::Sender<Result<Bytes, SkipReason>>,
}

impl PrimaryHandoff {
    /// The primary's successful answer, for the comparison.
    pub fn answered(self, body: Bytes) {
        // The shadow task is gone only if the runtime is shutting down.
        let _ = self.sender.send(Ok(body));
    }

    /// The primary answered, but its answer will not be compared.
    pub fn skipped(self, reason: SkipReason) {
        let _ = self.sender.send(Err(reason));
    }
}
