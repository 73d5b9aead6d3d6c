//! Shadow and canary reads: the evidence that the secondary can be trusted with reads before a
//! cutover.
//!
//! - A shadow read sends a copy of a client's query, get or count to the secondary at the same
//!   moment as the primary, in a background task, and compares the two answers once both are
//!   in. The client gets the primary's answer as soon as it arrives: a shadow never adds to
//!   its latency. Shadows have their own timeout and run `shadow_queue` at most at once; one
//!   over that bound is dropped, and every shadow that was not compared is counted, with why
//!   (Envoy and nginx mirror fire-and-forget and skip silently; we do not).
//! - A canary read is served by the secondary (see [`crate::reads`]); this module keeps its
//!   score too.
//!
//! ANN answers differ a little between two HNSW graphs, so a query is judged by recall at k
//! and distance drift, and only a recall below 1 or a drift above [`DRIFT_EPSILON`] is called
//! a mismatch (Diffy's lesson: a difference means something only above the noise floor). Gets
//! compare id sets and content, counts compare equal. What recall, drift and equal content
//! mean is defined once, in [`shift_chroma::compare`], which verify uses too.
//!
//! - [`types`]: what a shadow is about and how it ended.
//! - [`compare`]: the two answers parsed and compared, and the mismatch described.
//! - [`runner`]: [`ShadowReads`], which runs shadows in the background within the queue bound.
//! - [`score`]: the score it keeps: Prometheus metrics per collection, and for the admin API
//!   totals per collection and a ring of the most recent mismatches.

mod compare;
mod runner;
mod score;
mod types;

pub use compare::{
    compare, compare_count, compare_get, compare_query, get_is_complete, Comparison, Uncomparable,
};
pub use runner::ShadowReads;
pub use shift_chroma::compare::{distance_drift, DRIFT_EPSILON};
pub use types::{
    CanaryOutcome, CollectionRef, MismatchSample, PrimaryHandoff, ShadowOutcome, ShadowRequest,
    ShadowSettings, ShadowedRead, SkipReason,
};

/// Answers larger than this are not compared: a shadow holds both answers in memory, the queue
/// bounds how many shadows run, and this bounds how much each holds. A primary answer that says
/// it is larger streams to the client as usual; the shadow is skipped and counted (Envoy skips
/// such mirrors silently).
pub const MAX_COMPARED_BODY: u64 = 32 * 1024 * 1024;

#[cfg(test)]
mod runner_tests;
