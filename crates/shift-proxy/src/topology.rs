//! The topology: which store is primary, how writes reach the other, how reads are spread.
//! [`LocalTopology`] is the in-process [`LiveTopology`]: one `ArcSwap`, read once per request,
//! so a request sees one consistent topology from start to end; the control plane swaps in a
//! new one atomically.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use shift_config::{BackendName, MirrorMode};
use tokio::sync::watch;

use crate::coord::LiveTopology;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    /// Bumped on every change of primary, so logs and status can tell eras apart.
    pub epoch: u64,
    /// The store that serves reads and takes writes first.
    pub primary: BackendName,
    /// How writes reach the secondary.
    pub mode: MirrorMode,
    /// How reads are spread and compared.
    #[serde(default)]
    pub reads: ReadPolicy,
    /// Writes are held at the gate (by an operator's pause).
    #[serde(default)]
    pub paused: bool,
    /// The migration is finalized (`/admin/finalize`, after its retention window): the
    /// secondary is retired, nothing is journaled or sent to it any more, and no switch is
    /// allowed. Absent (false) in every topology persisted before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mirror_stopped: bool,
}

/// Canary and shadow shares of reads, in percent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadPolicy {
    /// Reads served by the secondary (for collections with nothing queued for it).
    pub canary_percent: f64,
    /// Reads also sent to the secondary in the background and compared.
    pub shadow_percent: f64,
}

impl Topology {
    /// The store writes are mirrored to.
    pub fn secondary(&self) -> BackendName {
        self.primary.other()
    }
}

/// The topology shared by every request.
pub type SharedTopology = Arc<dyn LiveTopology>;

/// A topology kept in this process, starting at `topology`.
pub fn shared(topology: Topology) -> SharedTopology {
    Arc::new(LocalTopology::new(topology))
}

/// The topology of a single process.
#[derive(Debug)]
pub struct LocalTopology {
    current: ArcSwap<Topology>,
    /// Tells subscribers of each change.
    changes: watch::Sender<Arc<Topology>>,
}

impl LocalTopology {
    pub fn new(topology: Topology) -> LocalTopology {
        let topology = Arc::new(topology);
        LocalTopology {
            current: ArcSwap::new(topology.clone()),
            changes: watch::Sender::new(topology),
        }
    }
}

impl LiveTopology for LocalTopology {
    fn current(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    fn replace(&self, topology: Arc<Topology>) {
        self.current.store(topology.clone());
        self.changes.send_replace(topology);
    }

    fn subscribe(&self) -> watch::Receiver<Arc<Topology>> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(epoch: u64, primary: BackendName) -> Topology {
        Topology {
            epoch,
            primary,
            mode: MirrorMode::Journaled,
            reads: ReadPolicy::default(),
            paused: false,
            mirror_stopped: false,
        }
    }

    #[test]
    fn a_replaced_topology_is_current_and_subscribers_see_it() {
        let live = shared(topology(1, BackendName::Old));
        let mut changes = live.subscribe();
        let before = live.current();
        live.replace(Arc::new(topology(2, BackendName::New)));
        assert_eq!(before.epoch, 1, "a request keeps the topology it read");
        assert_eq!(live.current().primary, BackendName::New);
        assert!(changes.has_changed().unwrap());
        assert_eq!(changes.borrow_and_update().epoch, 2);
    }
}
