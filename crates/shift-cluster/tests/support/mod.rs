//! What the shift-cluster tests share: a topology, and a replica joined in-process (its
//! coordination seams over a fresh state dir).

use std::time::Duration;

use shift_cluster::Cluster;
use shift_config::{BackendName, ClusterConfig, MirrorMode};
use shift_proxy::coord::Coordination;
use shift_proxy::topology::{ReadPolicy, Topology};
use shift_state::StateStore;
use shift_testkit::etcd::EtcdCluster;

pub fn topology(epoch: u64, primary: BackendName) -> Topology {
    Topology {
        epoch,
        primary,
        mode: MirrorMode::Journaled,
        reads: ReadPolicy::default(),
        paused: false,
        mirror_stopped: false,
    }
}

/// Replica `member`'s `[cluster]` on `etcd`, keys under `prefix`.
pub fn config(etcd: &EtcdCluster, prefix: &str, member: &str, ttl: Duration) -> ClusterConfig {
    ClusterConfig {
        etcd_endpoints: etcd.endpoints(),
        member_id: member.into(),
        key_prefix: prefix.into(),
        lease_ttl: ttl,
        read_grace: Duration::from_secs(30),
        etcd_timeout: Duration::from_secs(1),
        internal_address: None,
        nats_url: None,
        stream: "CHROMA_SHIFT".into(),
        stream_replicas: 1,
        duplicate_window: Duration::from_secs(120),
        takeover_grace: Duration::from_secs(2),
    }
}

/// One replica joined in-process.
pub struct Replica {
    pub cluster: Cluster,
    pub plane: Coordination,
    _state: StateStore,
    _dir: tempfile::TempDir,
}

/// Joins `config`'s member with `seed` (its internal address unreachable: nothing forwards).
pub async fn join(config: &ClusterConfig, seed: Topology) -> anyhow::Result<Replica> {
    let dir = tempfile::tempdir()?;
    let state = StateStore::open(dir.path()).await?;
    let address = format!("http://{}.invalid:8000", config.member_id);
    let (cluster, plane) = Cluster::join(config, &state, seed, address).await?;
    Ok(Replica {
        cluster,
        plane,
        _state: state,
        _dir: dir,
    })
}
