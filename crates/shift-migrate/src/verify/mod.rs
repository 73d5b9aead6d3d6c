//! Verify: compares the source store (the primary) with the target (the secondary), per
//! collection, while clients keep writing.
//!
//! Collections are matched by name (each store gives a collection its own id), in the client's
//! tenants and databases, renamed for each store by the
//! [`NamespaceMap`](shift_proxy::namespace::NamespaceMap). Per collection:
//! 1. counts, and the id sets of both stores (ids only): records missing on the target, and
//!    extra records only the target has;
//! 2. the records both hold, fetched by id in batches from both stores (never paged by offset
//!    over full records) and compared field by field
//!    ([`shift_chroma::compare::record_differences`]), so a difference is named: embedding,
//!    metadata, document or uri;
//! 3. an A/B query sample: stored embeddings of a deterministic sample of records, queried on
//!    both stores; recall at k of the target against the source, and the largest distance
//!    drift over the ids both returned.
//!
//! Writes keep flowing meanwhile, so a first-pass difference may only be a write that reached
//! one store and not yet the other. Every diverged id (and a failed query sample, and a
//! collection on one side only) is checked again, up to [`VerifyOptions::recheck_rounds`]
//! times, each after the caller's `settle` (waiting for the proxy's journal to drain) and a
//! short pause; only what is still diverged is reported.
//!
//! What recall, drift and equal content mean is defined once, in [`shift_chroma::compare`],
//! which shadow reads use too.
//!
//! - [`report`]: the options, the report and its divergences.
//! - [`runner`]: [`Verifier`], which walks tenants, databases and collections and re-checks.
//! - `side`: one collection on both stores: ids, batches, the query sample.
//! - [`compare`]: the pure decisions: what differs for each record, the query sample's score.

pub mod compare;
pub mod report;
pub mod runner;
mod side;

pub use compare::{classify, sample_ids, score_sample};
pub use report::{
    CollectionReport, Diffs, Divergence, DivergenceKind, QuerySample, Verdict, VerifyOptions,
    VerifyReport,
};
pub(crate) use runner::retry;
pub use runner::{Settle, Verifier, VerifyError};

#[cfg(test)]
mod tests;
