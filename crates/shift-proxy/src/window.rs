//! The sync window of a switch: while a cutover or rollback gets ready to change the primary,
//! record writes are mirrored synchronously (the switch turns the live topology's mode to
//! `sync`, not persisted) and do not hold the write gate while the stores work, so the gate
//! closes for the flip without waiting for them.
//!
//! A record write that passes the gate while the window is open (a *window write*) gives its
//! pass back once it has read the topology, and passes the gate again for its settlement (the
//! decision and the journal commit), so the settlement is either wholly before the flip or
//! wholly after it. Its order locks are held from before its stores see it until it is
//! settled, as for any write, so no write of the same records overtakes it on either store.
//!
//! A window write of a collection with entries queued for the secondary waits for them to be
//! replayed before it takes its locks ([`behind_the_queue`]; a write of such a collection is
//! journaled behind them otherwise, and a steady flow of writes could keep the queue from ever
//! reaching zero).
//!
//! A window write takes its order locks without its pass; once it holds them it checks that
//! the primary it read is still primary, and goes again from the start if not (it has sent
//! nothing yet). So a write of the same records through the new primary never comes between a
//! window write's locks and its stores: it waits for the locks the window write holds.
//!
//! A window write that settles before the flip settles as any write of the topology it read.
//! One that settles after it (it went to the old primary, and the new one is primary now)
//! settles by [`after_flip`]: when both stores took it, or neither did, nothing is left to do;
//! otherwise the old primary is brought in line with the new one (a reconciliation queued for
//! it, reading the new primary, under the write's locks), and the client hears an error: the
//! write's outcome is whatever the new primary holds. Nothing such a write did is acknowledged
//! unless both stores hold it. A crash leaves its intent, which the restart turns into the
//! same reconciliation (of the persisted topology's secondary from its primary).
//!
//! The switch counts the window writes by the primary they went to and waits for the old
//! primary's to settle before it ends the window (the mode back to what is persisted).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shift_config::BackendName;
use tokio::sync::Notify;

use http::Response;

use crate::body::ProxyBody;
use crate::error::{BackendError, BackendErrorKind, ProxyError};
use crate::gate::WritePass;
use crate::plane::DataPlaneState;
use crate::settle::{
    decide, ClientAnswer, Decision, JournalAction, PrimaryOutcome, SecondaryOutcome,
};
use crate::write_task::PendingWrite;

/// The window's state, shared by the write path and the switch.
#[derive(Debug, Default)]
pub struct SyncWindow {
    open: AtomicBool,
    /// Window writes not yet settled, by the primary they went to (old, new).
    in_flight: [AtomicUsize; 2],
    /// Of which journaled (their collection had entries queued for the secondary): the
    /// window is ready to flip only once none is left.
    journaled_in_flight: AtomicUsize,
    /// Window writes sent to both stores whose settlement queued something for the secondary
    /// before the flip: the secondary refused or failed them, or the primary's outcome was
    /// unknown (a write journaled behind its collection's queue is not counted).
    journaled: AtomicU64,
    /// Window writes that settled after the flip with the stores disagreeing: their old
    /// primary was reconciled from the new one.
    reconciled_after_flip: AtomicU64,
    settled: Notify,
}

/// A window write on its way: counted until dropped (once settled).
#[derive(Debug)]
pub struct WindowWrite {
    window: Arc<SyncWindow>,
    primary: BackendName,
    journaled: bool,
}

impl Drop for WindowWrite {
    fn drop(&mut self) {
        if self.journaled {
            self.window
                .journaled_in_flight
                .fetch_sub(1, Ordering::AcqRel);
        }
        self.window
            .slot(self.primary)
            .fetch_sub(1, Ordering::AcqRel);
        self.window.settled.notify_waiters();
    }
}

impl WindowWrite {
    /// Says the write is journaled rather than sent to both stores (its collection has
    /// entries queued for the secondary); said once, before it is sent.
    pub fn journaled(&mut self) {
        if !self.journaled {
            self.journaled = true;
            self.window
                .journaled_in_flight
                .fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The primary this write went to.
    pub fn primary(&self) -> BackendName {
        self.primary
    }

    /// Counts the write's settlement, `decision` after `secondary`'s outcome: `flipped` when
    /// it settled after the flip.
    pub fn settled_as(&self, decision: &Decision, secondary: SecondaryOutcome, flipped: bool) {
        let queued_behind =
            decision.journal == JournalAction::Write && secondary == SecondaryOutcome::NotSent;
        if decision.journal == JournalAction::Discard || queued_behind {
            return;
        }
        let counter = if flipped {
            &self.window.reconciled_after_flip
        } else {
            &self.window.journaled
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl SyncWindow {
    fn slot(&self, primary: BackendName) -> &AtomicUsize {
        match primary {
            BackendName::Old => &self.in_flight[0],
            BackendName::New => &self.in_flight[1],
        }
    }

    /// Opens the window; the counts of what it saw start again from zero.
    pub fn open(&self) {
        self.journaled.store(0, Ordering::Relaxed);
        self.reconciled_after_flip.store(0, Ordering::Relaxed);
        self.open.store(true, Ordering::Release);
    }

    /// Closes it: writes from now on hold their pass; window writes in flight settle as such.
    pub fn close(&self) {
        self.open.store(false, Ordering::Release);
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Takes a write that holds `pass` and read a topology whose primary is `primary`: while
    /// the window is open, the pass is given back and the write is counted as a window write.
    pub fn admit(
        self: &Arc<Self>,
        pass: WritePass,
        primary: BackendName,
    ) -> (WritePass, Option<WindowWrite>) {
        if !self.is_open() {
            return (pass, None);
        }
        // Counted before the pass is given back, so a switch that closes the gate and then
        // reads the count sees this write.
        self.slot(primary).fetch_add(1, Ordering::AcqRel);
        let write = WindowWrite {
            window: self.clone(),
            primary,
            journaled: false,
        };
        drop(pass);
        (WritePass::released(), Some(write))
    }

    /// Window writes not yet settled that went to `primary`.
    pub fn in_flight(&self, primary: BackendName) -> usize {
        self.slot(primary).load(Ordering::Acquire)
    }

    /// Window writes not yet settled, both primaries.
    pub fn in_flight_total(&self) -> usize {
        self.in_flight(BackendName::Old) + self.in_flight(BackendName::New)
    }

    /// Window writes in flight that are journaled, not sent to both stores.
    pub fn journaled_in_flight(&self) -> usize {
        self.journaled_in_flight.load(Ordering::Acquire)
    }

    /// Window writes that queued something for the secondary before the flip.
    pub fn journaled(&self) -> u64 {
        self.journaled.load(Ordering::Relaxed)
    }

    /// Window writes reconciled after the flip (the stores disagreed on them).
    pub fn reconciled_after_flip(&self) -> u64 {
        self.reconciled_after_flip.load(Ordering::Relaxed)
    }

    /// Waits until no window write that went to `primary` is left.
    pub async fn settled(&self, primary: BackendName) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight(primary) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// What a window write that went to the old primary and settles after the flip queues and
/// answers. `Ok` with the decision when the stores agree or the old primary's own answer is
/// the right one (it already is an error); `Err` with the decision when the client must hear
/// that the outcome is unknown instead of the old primary's answer.
///
/// The journal action is for the write's *old primary* (its store calls have ended; the new
/// primary is the truth now): a reconciliation that makes it hold what the new primary holds.
pub fn after_flip(
    primary: PrimaryOutcome,
    secondary: SecondaryOutcome,
) -> Result<Decision, Decision> {
    use PrimaryOutcome as P;
    use SecondaryOutcome as S;
    let decision = |journal, label| Decision {
        journal,
        client: ClientAnswer::Primary,
        label,
        after_grace: false,
    };
    match (primary, secondary) {
        (P::Applied, S::Applied) => Ok(decision(JournalAction::Discard, "applied")),
        (P::Refused | P::NotSent, S::Refused | S::NotSent) => {
            Ok(decision(JournalAction::Discard, "not_mirrored"))
        }
        // The old primary may still apply it late: reconcile it once the grace has passed.
        // The client already hears a failure.
        (P::Unknown, _) => Ok(Decision {
            after_grace: true,
            ..decision(JournalAction::Reconcile, "reconcile_queued")
        }),
        (P::Applied, S::NotSent | S::Refused | S::Failed)
        | (P::Refused | P::NotSent, S::Applied | S::Failed) => {
            Err(decision(JournalAction::Reconcile, "window_unknown"))
        }
    }
}

/// How often a window write looks whether its collection's queue has drained.
const QUEUE_POLL: Duration = Duration::from_millis(2);

/// Before a window write takes its locks: while entries of its collection wait for the
/// secondary, it waits for them (while the window is open), rather than being journaled
/// behind them, so the queue drains to zero while writes flow and the writes that follow are
/// mirrored synchronously. Before the locks, so the replay of those entries never waits for
/// this write's locks.
pub(crate) async fn behind_the_queue(
    plane: &DataPlaneState,
    window: &WindowWrite,
    secondary: BackendName,
    collection: &str,
) {
    while window.window.is_open() && plane.waits_in_journal(secondary, collection) {
        tokio::time::sleep(QUEUE_POLL).await;
    }
}

/// The answer to a window write whose stores disagreed when the primary changed under it.
pub const OUTCOME_UNKNOWN: &str = "the primary changed while this write was in flight and the two stores answered it differently; its outcome is whatever the new primary holds (the old store is brought in line with it)";

/// A window write's pass for its settlement (`None` for any other write, which holds its own):
/// the flip cannot happen while it is out.
pub(crate) async fn pass_to_settle(
    plane: &DataPlaneState,
    window: Option<&WindowWrite>,
) -> Option<WritePass> {
    match window {
        Some(_) => Some(plane.gate.enter().await),
        None => None,
    }
}

/// The settlement of a record write by the decision table, or, for a window write that went
/// to the old primary and settles after the flip, by [`after_flip`]: then `write`'s primary
/// and secondary are swapped, so what is queued goes to its old primary, and the client's
/// answer is replaced when its outcome is unknown. Called with the pass of
/// [`pass_to_settle`] held, until the settlement is carried out.
pub(crate) fn decide_write(
    plane: &DataPlaneState,
    write: &mut PendingWrite,
    window: Option<&WindowWrite>,
    (primary, secondary): (PrimaryOutcome, SecondaryOutcome),
    answer: Result<Response<ProxyBody>, ProxyError>,
) -> (Decision, Result<Response<ProxyBody>, ProxyError>) {
    let policy = plane.writes.on_secondary_failure;
    let Some(window) = window else {
        return (decide(primary, secondary, policy), answer);
    };
    let now = plane.topology.current().primary;
    if now == write.primary {
        let decision = decide(primary, secondary, policy);
        window.settled_as(&decision, secondary, false);
        return (decision, answer);
    }
    std::mem::swap(&mut write.primary, &mut write.secondary);
    let (decision, answer) = match after_flip(primary, secondary) {
        Ok(decision) => (decision, answer),
        Err(decision) => {
            tracing::warn!(old_primary = %write.secondary, primary = %now, "a write in flight across a switch was answered differently by the two stores; its outcome is the new primary's");
            let unknown = ProxyError::Backend(BackendError {
                backend: now,
                kind: BackendErrorKind::Transport(OUTCOME_UNKNOWN.to_owned()),
            });
            (decision, Err(unknown))
        }
    };
    window.settled_as(&decision, secondary, true);
    (decision, answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use PrimaryOutcome as P;
    use SecondaryOutcome as S;

    #[test]
    fn after_the_flip_only_agreeing_stores_keep_the_old_answer() {
        let both = after_flip(P::Applied, S::Applied).unwrap();
        assert_eq!(both.journal, JournalAction::Discard);
        let neither = after_flip(P::Refused, S::Refused).unwrap();
        assert_eq!(neither.journal, JournalAction::Discard);
        let unknown = after_flip(P::Unknown, S::Applied).unwrap();
        assert_eq!(unknown.journal, JournalAction::Reconcile);
        assert!(unknown.after_grace);
        for (p, s) in [
            (P::Applied, S::Failed),
            (P::Applied, S::Refused),
            (P::Applied, S::NotSent),
            (P::Refused, S::Applied),
            (P::NotSent, S::Failed),
        ] {
            let disagree = after_flip(p, s).unwrap_err();
            assert_eq!(disagree.journal, JournalAction::Reconcile, "{p:?} {s:?}");
            assert!(!disagree.after_grace);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn window_writes_give_their_pass_back_and_are_counted_until_settled() {
        use crate::coord::WriteGate;
        let gate: Arc<dyn WriteGate> = Arc::new(crate::gate::LocalWriteGate::default());
        let window = Arc::new(SyncWindow::default());
        // Closed window: the pass is kept, the gate cannot close.
        let (pass, none) = window.admit(gate.enter().await, BackendName::Old);
        assert!(none.is_none());
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), gate.close())
                .await
                .is_err(),
            "the gate closed over a write holding its pass"
        );
        drop(pass);
        window.open();
        let (pass, write) = window.admit(gate.enter().await, BackendName::Old);
        let write = write.expect("a window write");
        assert_eq!(window.in_flight(BackendName::Old), 1);
        assert_eq!(window.in_flight(BackendName::New), 0);
        // The window write does not hold the gate open.
        let closed = tokio::time::timeout(std::time::Duration::from_millis(10), gate.close())
            .await
            .expect("the gate waited for a window write");
        drop(closed);
        let mut settled = Box::pin(window.settled(BackendName::Old));
        assert!(crate::locks::tests::poll_once(settled.as_mut())
            .await
            .is_none());
        drop((pass, write));
        assert!(crate::locks::tests::poll_once(settled.as_mut())
            .await
            .is_some());
        assert_eq!(window.in_flight_total(), 0);
    }
}
