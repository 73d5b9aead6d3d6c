//! The live topology: which store is primary and how writes reach the other. One `ArcSwap`,
//! read once per request, so a request sees one consistent topology from start to end.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use shift_config::{BackendName, MirrorMode};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Bumped on every change of primary, so logs and journal entries can tell eras apart.
    pub epoch: u64,
    /// The store that serves reads and takes writes first.
    pub primary: BackendName,
    /// How writes reach the secondary.
    pub mode: MirrorMode,
}

impl Topology {
    /// The store writes are mirrored to.
    pub fn secondary(&self) -> BackendName {
        self.primary.other()
    }
}

/// The topology shared by every request.
pub type SharedTopology = Arc<ArcSwap<Topology>>;

pub fn shared(topology: Topology) -> SharedTopology {
    Arc::new(ArcSwap::from_pointee(topology))
}
