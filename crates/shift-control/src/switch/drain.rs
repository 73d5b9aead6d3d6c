//! The hold's waits once the gate is closed: the write intents settling, the target's
//! journal draining.

use shift_config::BackendName;
use shift_state::StoreError;
use tokio::time::Instant;

use super::moves::Moved;
use super::{SwitchCore, DRAIN_POLL};
use shift_proxy::failpoints::failpoint;

impl SwitchCore {
    /// Waits until no write intent is pending but those of the `window_writes` in flight (a
    /// sync window's, which settle on their own), or the deadline passes.
    pub(super) async fn settle_intents(
        &self,
        deadline: Instant,
        window_writes: impl Fn() -> u64,
    ) -> Result<(), String> {
        loop {
            let pending = self
                .state
                .pending_intents()
                .map_err(|e| format!("cannot read the pending intents: {e}"))?;
            if pending <= window_writes() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{pending} writes in flight did not settle in time"));
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Waits until `target`'s journal is empty. With `may_move`, once the health board says
    /// `from` is down (at the start, or while waiting), first moves what reads it to its own
    /// journal. What was moved, or why it stopped (with what was moved, to be moved back).
    pub(super) async fn drain(
        &self,
        target: BackendName,
        from: BackendName,
        may_move: bool,
        deadline: Instant,
    ) -> Result<Moved, DrainError> {
        let mut moved: Option<Moved> = None;
        loop {
            if may_move && moved.is_none() && !self.health.get(from).up {
                match self.move_source_readers(target, from).await {
                    Ok(m) => moved = Some(m),
                    Err(error) => return Err(DrainError::StateStore(error, Moved::default())),
                }
            }
            let waiting = self.state.waiting(target);
            if waiting == 0 {
                return Ok(moved.unwrap_or_default());
            }
            failpoint("switch::draining");
            if Instant::now() >= deadline {
                return Err(DrainError::Timeout(waiting, moved.unwrap_or_default()));
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
}

/// Why a drain stopped, with what it had moved by then.
pub(super) enum DrainError {
    Timeout(u64, Moved),
    StateStore(StoreError, Moved),
}
