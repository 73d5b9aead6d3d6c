//! The seam between the switch ([`crate::switch`]) and a change of primary that must hold for
//! several replicas at once (cluster mode, issue 13).
//!
//! Embedded, the switch closes its own gate, drains, persists and swaps the topology: one
//! process is the whole data plane. In a cluster every replica has a gate and a journal, so
//! steps 2 to 6 of a cutover (close, drain, commit, reopen) are one two-phase protocol run by
//! [`shift_cluster::cutover::ClusterCutover`]: every replica's participant, this one's
//! included, closes its gate and drains before the commit. How the switch uses it
//! (`switch/cluster.rs`, set by `ChromaShift::run` through `TopologySwitch::commit_through`):
//!
//! - `TopologySwitch::commit_through` takes an `Arc<dyn PrimaryCommit>` (`ChromaShift` builds
//!   it from `Cluster::cutover()` when `[cluster]` is set);
//! - with one, a cutover or rollback runs its checks (health, lag, dead letters) as today,
//!   then calls [`PrimaryCommit::commit`] INSTEAD of closing its own gate (the local
//!   participant closes it; closing it first would hold the participant until the timeout),
//!   and persists the committed topology for `restore` (in cluster mode etcd's wins at start
//!   anyway);
//! - a forced switch with the primary down (moving entries between journals) stays embedded
//!   only until the journal is shared (JetStream), and is refused in cluster mode meanwhile.

use std::fmt::Debug;
use std::time::Duration;

use shift_config::BackendName;
use shift_proxy::coord::Pending;
use shift_proxy::topology::Topology;

/// Commits a new primary for every replica, or changes nothing.
pub trait PrimaryCommit: Send + Sync + Debug {
    /// Makes `primary` the primary at the next epoch everywhere within `timeout`; the
    /// committed topology, or why nothing changed.
    fn commit(
        &self,
        primary: BackendName,
        timeout: Duration,
    ) -> Pending<'_, Result<Topology, String>>;
}

impl PrimaryCommit for shift_cluster::cutover::ClusterCutover {
    fn commit(
        &self,
        primary: BackendName,
        timeout: Duration,
    ) -> Pending<'_, Result<Topology, String>> {
        Box::pin(async move {
            self.switch(primary, timeout)
                .await
                .map_err(|error| error.to_string())
        })
    }
}
