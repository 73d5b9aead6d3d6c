//! The timeline of a switch's write hold, in its report: when each step after the gate began
//! to close ended, so an operator (and the `switch_hold` bench) sees where the hold went.

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// When each step of the hold ended, in milliseconds since the gate began to close; a step
/// the switch did not reach is absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HoldSteps {
    /// The gate closed: the writes in flight when it began to close finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_closed_ms: Option<f64>,
    /// Every write intent settled (journaled or discarded), the hung-up clients' included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intents_settled_ms: Option<f64>,
    /// The journal to the target drained to zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained_ms: Option<f64>,
    /// The new topology was persisted and made live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_ms: Option<f64>,
    /// The gate reopened: the held writes went on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reopened_ms: Option<f64>,
    /// With a sync window, after the reopen (not part of the hold): the window writes still in
    /// flight to the old primary at the flip settled, and the switch answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_primary_settled_ms: Option<f64>,
}

impl HoldSteps {
    /// The steps reached, in order, as `name ms` pairs (for logs and the CLI).
    pub fn summary(&self) -> String {
        [
            ("gate closed", self.gate_closed_ms),
            ("intents settled", self.intents_settled_ms),
            ("drained", self.drained_ms),
            ("committed", self.committed_ms),
            ("reopened", self.reopened_ms),
            ("old primary's writes settled", self.old_primary_settled_ms),
        ]
        .iter()
        .filter_map(|(name, ms)| ms.map(|ms| format!("{name} {ms:.1}")))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// Stamps the steps of one hold on the runtime's clock (paused in tests).
pub(super) struct HoldClock {
    since: Instant,
    pub(super) steps: HoldSteps,
}

/// Which step a stamp ends.
pub(super) type Step = fn(&mut HoldSteps) -> &mut Option<f64>;

impl HoldClock {
    /// Starts the clock as the gate begins to close.
    pub(super) fn start() -> Self {
        HoldClock {
            since: Instant::now(),
            steps: HoldSteps::default(),
        }
    }

    /// Milliseconds since the gate began to close.
    pub(super) fn ms(&self) -> f64 {
        self.since.elapsed().as_secs_f64() * 1000.0
    }

    /// Records that `step` ended now; the milliseconds since the gate began to close.
    pub(super) fn stamp(&mut self, step: Step) -> f64 {
        let ms = self.ms();
        *step(&mut self.steps) = Some(ms);
        ms
    }
}
