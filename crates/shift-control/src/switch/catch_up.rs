//! The catch-up before a switch closes the write gate: writes keep flowing while the replay
//! worker brings the target's journal down to at most `[cutover] catch_up_lag` entries, so the
//! drain with the gate closed has only that, plus the writes in flight when it closed, left.
//!
//! It never changes what a switch guarantees: the gate still closes and the journal still
//! drains to zero before the primary changes. It only moves most of the drain to before the
//! hold. When the lag does not come down within `[cutover] catch_up_timeout` (writes arrive
//! faster than the replay applies them), the switch goes on as it would without a catch-up:
//! it closes the gate and drains the rest within `[cutover] timeout` (the preflight's
//! `max_lag` already bounds how much that can be), and its report says so in a note.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shift_config::BackendName;
use tokio::time::Instant;

use super::SwitchState;

/// How often the target's lag is read while catching up (a read of in-memory counters).
const CATCH_UP_POLL: Duration = Duration::from_millis(5);

/// What the catch-up did, in a switch's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatchUpReport {
    /// How long it let writes flow, in milliseconds.
    pub ms: f64,
    /// Entries waiting for the target when it began, and when it ended.
    pub lag_before: u64,
    pub lag_after: u64,
    /// The bound it waited for (`[cutover] catch_up_lag`).
    pub bound: u64,
    /// Whether the lag came down to the bound within `[cutover] catch_up_timeout`.
    pub caught_up: bool,
}

/// Waits, writes flowing, until at most `bound` entries wait for `target`, or `limit` passed.
pub(super) async fn catch_up(
    state: &dyn SwitchState,
    target: BackendName,
    bound: u64,
    limit: Duration,
) -> CatchUpReport {
    let started = Instant::now();
    let lag_before = state.waiting(target);
    let mut lag = lag_before;
    while lag > bound && started.elapsed() < limit {
        tokio::time::sleep(CATCH_UP_POLL).await;
        lag = state.waiting(target);
    }
    CatchUpReport {
        ms: started.elapsed().as_secs_f64() * 1000.0,
        lag_before,
        lag_after: lag,
        bound,
        caught_up: lag <= bound,
    }
}

/// The plan's step for the catch-up; `None` when it is off (a zero `limit`).
pub(super) fn plan_step(to: BackendName, bound: u64, limit: Duration) -> Option<String> {
    (!limit.is_zero()).then(|| {
        format!(
            "catch up: let writes flow until at most {bound} journal entries wait for {to}, within {limit:?}; past it go on and drain the rest with writes held"
        )
    })
}

/// The report's note when the catch-up did not reach its bound.
pub(super) fn note(to: BackendName, report: &CatchUpReport, limit: Duration) -> Option<String> {
    (!report.caught_up).then(|| {
        format!(
            "the journal to {to} did not come down to {} entries within {limit:?} (writes arrive faster than the replay applies them: {} -> {}); the rest drained with writes held",
            report.bound, report.lag_before, report.lag_after
        )
    })
}
