//! The live topology: which store is primary, how writes reach the other, how reads are
//! spread. One `ArcSwap`, read once per request, so a request sees one consistent topology
//! from start to end; the control plane swaps in a new one atomically.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use shift_config::{BackendName, MirrorMode};

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
pub type SharedTopology = Arc<ArcSwap<Topology>>;

pub fn shared(topology: Topology) -> SharedTopology {
    Arc::new(ArcSwap::from_pointee(topology))
}
