//! The write gate: every write passes it, and a cutover or a pause closes it. Closing waits for
//! the writes already past the gate to finish; writes arriving meanwhile are held at the gate,
//! in order, and go on when it opens again, to whichever store is primary by then. Nothing is
//! rejected. [`LocalWriteGate`] is the in-process [`WriteGate`](crate::coord::WriteGate).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use crate::coord::{Pending, WriteGate};

/// The gate of this process, shared by the write path and the control plane.
#[derive(Debug, Default)]
pub struct LocalWriteGate {
    lock: Arc<RwLock<()>>,
    /// Writes waiting at the closed gate.
    held: Arc<AtomicUsize>,
    /// Passes out now.
    passes: Arc<AtomicUsize>,
}

/// A write's pass: while any is out, the gate cannot close.
#[derive(Debug)]
pub struct WritePass {
    _guard: Option<OwnedRwLockReadGuard<()>>,
    _counted: Option<Counted>,
}

/// One pass out, counted until dropped.
#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WritePass {
    /// A pass that holds `guard`, the read side of a process's gate lock.
    pub fn new(guard: OwnedRwLockReadGuard<()>) -> WritePass {
        WritePass {
            _guard: Some(guard),
            _counted: None,
        }
    }

    /// What a write keeps once it has given its pass back (a write of a switch's sync window,
    /// see [`crate::window`]): it holds nothing, the gate can close past it.
    pub fn released() -> WritePass {
        WritePass {
            _guard: None,
            _counted: None,
        }
    }
}

/// The gate held closed; dropping it opens the gate.
#[derive(Debug)]
pub struct ClosedGate {
    _held: Box<dyn std::fmt::Debug + Send + Sync>,
}

impl ClosedGate {
    /// A closed gate that stays closed while `held` lives (the write side of a process's gate
    /// lock, and whatever else an implementation holds).
    pub fn new(held: impl std::fmt::Debug + Send + Sync + 'static) -> ClosedGate {
        ClosedGate {
            _held: Box::new(held),
        }
    }
}

struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LocalWriteGate {
    /// A pass holding `guard`, counted in [`WriteGate::passes`].
    fn pass(&self, guard: OwnedRwLockReadGuard<()>) -> WritePass {
        self.passes.fetch_add(1, Ordering::AcqRel);
        WritePass {
            _guard: Some(guard),
            _counted: Some(Counted(self.passes.clone())),
        }
    }
}

impl WriteGate for LocalWriteGate {
    fn try_enter(&self) -> Option<WritePass> {
        let guard = self.lock.clone().try_read_owned().ok()?;
        Some(self.pass(guard))
    }

    fn wait(&self) -> Pending<'_, WritePass> {
        Box::pin(async move {
            self.held.fetch_add(1, Ordering::Relaxed);
            let _waiting = Waiting(self.held.clone());
            let guard = self.lock.clone().read_owned().await;
            self.pass(guard)
        })
    }

    fn close(&self) -> Pending<'_, ClosedGate> {
        Box::pin(async move { ClosedGate::new(self.lock.clone().write_owned().await) })
    }

    fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn passes(&self) -> Option<usize> {
        Some(self.passes.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locks::tests::poll_once;

    #[tokio::test(start_paused = true)]
    async fn closing_waits_for_passes_and_holds_new_writes() {
        let gate: &dyn WriteGate = &LocalWriteGate::default();
        let pass = gate.enter().await;
        let mut closing = Box::pin(gate.close());
        assert!(
            poll_once(closing.as_mut()).await.is_none(),
            "closed over a write in flight"
        );
        drop(pass);
        let closed = poll_once(closing.as_mut())
            .await
            .expect("the gate did not close once the last write finished");
        let mut held = Box::pin(gate.enter());
        assert!(
            poll_once(held.as_mut()).await.is_none(),
            "a write passed a closed gate"
        );
        assert_eq!(gate.held(), 1);
        drop(closed);
        assert!(poll_once(held.as_mut()).await.is_some(), "still held");
        drop(held);
        assert_eq!(gate.held(), 0);
    }
}
