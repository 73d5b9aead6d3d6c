//! The sync window of a switch (`[cutover] sync_window`), after the catch-up and before the
//! gate closes: the live topology's mode turns to `sync` (not persisted) and record writes are
//! applied to both stores before they are acknowledged, in the same per-record order (a write
//! of a collection with entries still queued for the target is journaled behind them, as in
//! sync mode). They do not hold the gate while the stores work ([`shift_proxy::window`]), so
//! the gate closes without waiting for them. The window waits, writes flowing, until nothing
//! waits for the target and every write in flight is a window write; then the gate closes
//! (only writes still holding a pass are waited for: the last settlements, a lifecycle write,
//! a backfill batch), the journal is found empty, and the primary flips with the window
//! writes still in flight. Each of those keeps the order locks of its records until both
//! stores answered it and it settled, so a write of the same records through the new primary
//! waits for it, as it would for any write; one that settles after the flip with the stores
//! disagreeing brings the old primary in line with the new one and is not acknowledged (see
//! [`shift_proxy::window`]). The switch answers once the old primary's window writes have
//! settled, so nothing reaches the old primary as a primary after it answers.
//!
//! Every way out leaves the persisted topology as it was, and the live mode as persisted:
//! - the target refuses or fails a window write before the flip: the write is journaled for it
//!   (as in sync mode), the window ends and the switch is abandoned, saying why;
//! - the window does not get ready within `[cutover] catch_up_timeout` (or the switch's own
//!   `timeout`, when shorter): it ends, the gate
//!   closes and the switch goes on as without a window (it waits for the writes holding a
//!   pass and drains); a window write that has not sent anything yet goes again through the
//!   gate, held there like any write;
//! - a client that hangs up: its write's task settles it all the same (it counts until then);
//! - a crash: the window was never persisted; the intents of the window writes become
//!   reconciliations of the persisted topology's secondary from its primary;
//! - a forced switch away from a primary that is down opens no window (as no catch-up).
//!
//! Off where the gate does not count its passes, and in a cluster (another replica's writes
//! would not be in the window) and with
//! `on_secondary_failure = "fail"` (a target error would reach the client as a failure).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shift_config::{BackendName, MirrorMode};
use shift_proxy::coord::WriteGate;
use shift_proxy::topology::{SharedTopology, Topology};
use shift_proxy::window::SyncWindow;
use tokio::time::Instant;

use super::SwitchState;

/// How often the window's readiness is checked (in-memory counters).
const WINDOW_POLL: Duration = Duration::from_millis(2);

/// What the sync window did, in a switch's report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowReport {
    /// How long writes were mirrored synchronously before the gate closed, in milliseconds.
    pub ms: f64,
    /// Entries waiting for the target when it opened, and when it ended.
    pub lag_before: u64,
    pub lag_after: u64,
    /// Whether the journal to the target came to zero with only window writes in flight
    /// within `[cutover] catch_up_timeout`, or the switch's `timeout` when shorter (if not, the
    /// switch went on as without a window).
    pub ready: bool,
    /// Window writes still in flight when the primary flipped (not waited for).
    pub in_flight_at_flip: usize,
    /// When the window writes that went to the old primary had settled, in milliseconds since
    /// the gate reopened (absent when none was left, or when it did not switch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_primary_settled_ms: Option<f64>,
    /// Window writes the stores answered differently, settled after the flip: their old
    /// primary was reconciled from the new one, the client told the outcome is unknown.
    pub reconciled_after_flip: u64,
    /// Window writes the target refused or failed before the flip (journaled for it).
    pub journaled: u64,
}

/// The window while it is open: dropping it ends it (the live mode back to `mode`).
pub(super) struct OpenWindow {
    window: Arc<SyncWindow>,
    topology: SharedTopology,
    /// The mode persisted, to go back to.
    mode: MirrorMode,
    started: Instant,
    pub(super) report: WindowReport,
}

impl Drop for OpenWindow {
    fn drop(&mut self) {
        self.end();
    }
}

impl OpenWindow {
    /// Opens the window: the live mode `sync`, writes counted as window writes.
    pub(super) fn open(
        window: &Arc<SyncWindow>,
        topology: &SharedTopology,
        state: &dyn SwitchState,
        to: BackendName,
    ) -> OpenWindow {
        let current = topology.current();
        let mode = current.mode;
        topology.replace(Arc::new(Topology {
            mode: MirrorMode::Sync,
            ..(*current).clone()
        }));
        window.open();
        OpenWindow {
            window: window.clone(),
            topology: topology.clone(),
            mode,
            started: Instant::now(),
            report: WindowReport {
                lag_before: state.waiting(to),
                ..WindowReport::default()
            },
        }
    }

    /// Ends the window: writes hold their pass again, and the live mode is the persisted one.
    /// Called under the closed gate at the flip (then the swapped-in topology has the persisted
    /// mode already), or on the way out.
    fn end(&mut self) {
        if !self.window.is_open() {
            return;
        }
        self.window.close();
        let current = self.topology.current();
        if current.mode != self.mode {
            self.topology.replace(Arc::new(Topology {
                mode: self.mode,
                ..(*current).clone()
            }));
        }
    }

    /// Waits, writes flowing, until nothing waits for `to`, no write holds a gate pass (every
    /// write in flight is a window write) and no window write is journaled behind a queue, or
    /// `limit` passes. `Err` with why the switch must be abandoned: the
    /// target refused or failed a window write (it is journaled for the target).
    pub(super) async fn ready(
        &mut self,
        state: &dyn SwitchState,
        gate: &dyn WriteGate,
        to: BackendName,
        limit: Duration,
    ) -> Result<(), String> {
        loop {
            let journaled = self.window.journaled();
            if journaled > 0 {
                self.report.journaled = journaled;
                self.report.lag_after = state.waiting(to);
                self.report.ms = self.ms();
                return Err(format!(
                    "{to} refused or failed {journaled} writes during the sync window (they are queued for it; nothing is lost)"
                ));
            }
            let lag = state.waiting(to);
            // Every write that is not a window write holds its pass until it has settled.
            if lag == 0 && gate.passes() == Some(0) && self.window.journaled_in_flight() == 0 {
                self.report.ready = true;
            }
            if self.report.ready || self.started.elapsed() >= limit {
                self.report.lag_after = lag;
                self.report.ms = self.ms();
                return Ok(());
            }
            tokio::time::sleep(WINDOW_POLL).await;
        }
    }

    /// At the flip, under the closed gate: the window ends (the topology swapped in next has
    /// the persisted mode), with the window writes still in flight counted.
    pub(super) fn flip(&mut self) {
        self.report.in_flight_at_flip = self.window.in_flight_total();
        self.end();
    }

    /// After the gate reopened: waits (within `limit`) for the window writes that went to
    /// `from`, the old primary, to settle; the report of the window.
    pub(super) async fn settle(
        mut self,
        from: BackendName,
        limit: Duration,
    ) -> (WindowReport, Option<String>) {
        let reopened = Instant::now();
        let mut note = None;
        if self.window.in_flight(from) > 0 {
            if tokio::time::timeout(limit, self.window.settled(from))
                .await
                .is_ok()
            {
                self.report.old_primary_settled_ms =
                    Some(reopened.elapsed().as_secs_f64() * 1000.0);
            } else {
                note = Some(format!(
                    "{} writes sent to {from} before the switch had not settled after {limit:?}; each settles on its own (bounded by its store's request_timeout)",
                    self.window.in_flight(from)
                ));
            }
        }
        self.report.reconciled_after_flip = self.window.reconciled_after_flip();
        if self.report.reconciled_after_flip > 0 {
            note.get_or_insert_with(|| {
                format!(
                    "{} writes in flight across the switch were answered differently by the two stores: {from} is brought in line with the new primary, their clients told the outcome is unknown",
                    self.report.reconciled_after_flip
                )
            });
        }
        (std::mem::take(&mut self.report), note)
    }

    fn ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }
}

/// The plan's step for the window.
pub(super) fn plan_step(to: BackendName, limit: Duration) -> String {
    format!(
        "sync window: mirror writes to {to} synchronously (not persisted) until nothing waits for it, within {limit:?}; writes in flight then do not hold the gate (they keep their records' order); if {to} refuses one, abandon the switch"
    )
}
