//! The topology as an etcd key (`PREFIX/topology`), the cluster's truth: read (or created from
//! this replica's seed when absent) at join, then watched; every replica makes what it sees
//! current locally ([`LocalTopology`]), so a request still reads it with one pointer copy.
//!
//! A change made here (by this replica's switch) is current here at once and written to etcd
//! in order by a publisher task; the others take it from the watch. The two-phase cutover
//! (every replica's gate closed before the commit) is the next step; until then a change of
//! primary reaches the other replicas a watch event later.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, EventType, Txn, TxnOp, TxnOpResponse, WatchOptions};
use shift_proxy::coord::LiveTopology;
use shift_proxy::topology::{LocalTopology, Topology};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{etcd_call, ClusterError, Etcd};

/// Pause between attempts to watch again after the watch broke.
const REWATCH_PAUSE: Duration = Duration::from_millis(500);

/// The cluster's topology, seen by this replica.
#[derive(Debug)]
pub struct EtcdTopology {
    local: LocalTopology,
    publish: mpsc::UnboundedSender<Arc<Topology>>,
}

impl LiveTopology for EtcdTopology {
    fn current(&self) -> Arc<Topology> {
        self.local.current()
    }

    fn replace(&self, topology: Arc<Topology>) {
        self.local.replace(topology.clone());
        // The publisher ends only with the cluster handle, after the plane is gone.
        let _ = self.publish.send(topology);
    }

    fn subscribe(&self) -> watch::Receiver<Arc<Topology>> {
        self.local.subscribe()
    }
}

/// The topology and its two background tasks (watching etcd, publishing local changes).
pub(crate) struct JoinedTopology {
    pub topology: Arc<EtcdTopology>,
    pub tasks: [JoinHandle<()>; 2],
}

/// Reads the cluster's topology, creating it from `seed` when no replica has yet, and starts
/// watching it.
pub(crate) async fn join(
    client: &Etcd,
    key: String,
    seed: Topology,
    timeout: Duration,
) -> Result<JoinedTopology, ClusterError> {
    let mut etcd = client.handle();
    let seed_json = serde_json::to_vec(&seed).map_err(ClusterError::encode)?;
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), seed_json, None)])
        .or_else([TxnOp::get(key.clone(), None)]);
    let answer = etcd_call(timeout, etcd.txn(txn)).await?;
    let revision = answer.header().map(|h| h.revision()).unwrap_or(0);
    let current = if answer.succeeded() {
        tracing::info!(epoch = seed.epoch, primary = %seed.primary, "created the cluster's topology");
        seed
    } else {
        let stored = answer
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            .ok_or(ClusterError::Closed("the topology key"))?;
        let stored: Topology = serde_json::from_slice(&stored).map_err(ClusterError::decode)?;
        if stored.primary != seed.primary || stored.epoch != seed.epoch {
            tracing::info!(
                epoch = stored.epoch,
                primary = %stored.primary,
                "the cluster's topology in etcd wins over this replica's own"
            );
        }
        stored
    };
    let (publish, changes) = mpsc::unbounded_channel();
    let topology = Arc::new(EtcdTopology {
        local: LocalTopology::new(current),
        publish,
    });
    let watcher = tokio::spawn(follow(
        client.clone(),
        key.clone(),
        revision + 1,
        topology.clone(),
    ));
    let publisher = tokio::spawn(publish_changes(client.clone(), key, changes, timeout));
    Ok(JoinedTopology {
        topology,
        tasks: [watcher, publisher],
    })
}

/// Makes every topology written to `key` from `revision` on current here (one from an older
/// epoch is ignored), watching again after a break.
async fn follow(client: Etcd, key: String, mut revision: i64, topology: Arc<EtcdTopology>) {
    loop {
        let mut etcd = client.handle();
        let options = WatchOptions::new().with_start_revision(revision);
        match etcd.watch(key.clone(), Some(options)).await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(answer)) => {
                        for event in answer.events() {
                            let Some(kv) = event.kv() else { continue };
                            revision = revision.max(kv.mod_revision() + 1);
                            if event.event_type() != EventType::Put {
                                continue;
                            }
                            match serde_json::from_slice::<Topology>(kv.value()) {
                                Ok(seen) => take(&topology, seen),
                                Err(error) => {
                                    tracing::error!(%error, "unreadable topology in etcd ignored")
                                }
                            }
                        }
                        if answer.canceled() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "the topology watch broke; watching again");
                        break;
                    }
                }
            },
            Err(error) => tracing::warn!(%error, "cannot watch the topology in etcd"),
        }
        tokio::time::sleep(REWATCH_PAUSE).await;
    }
}

/// Reads the topology in etcd at `key` and makes it current here unless older: what a replica
/// that was cut off (its lease lost) does before it takes writes again, not waiting for the
/// watch.
pub(crate) async fn refresh(
    client: Etcd,
    key: String,
    topology: Arc<EtcdTopology>,
    timeout: Duration,
) -> Result<(), ClusterError> {
    let mut etcd = client.handle();
    let answer = etcd_call(timeout, etcd.get(key, None)).await?;
    let kv = answer
        .kvs()
        .first()
        .ok_or(ClusterError::Closed("the topology key"))?;
    let seen: Topology = serde_json::from_slice(kv.value()).map_err(ClusterError::decode)?;
    take(&topology, seen);
    Ok(())
}

/// Makes `seen` current unless it is what is current or from an older epoch.
fn take(topology: &EtcdTopology, seen: Topology) {
    let current = topology.local.current();
    if *current == seen || seen.epoch < current.epoch {
        return;
    }
    tracing::info!(epoch = seen.epoch, primary = %seen.primary, paused = seen.paused, "the cluster's topology changed");
    topology.local.replace(Arc::new(seen));
}

/// Writes this replica's topology changes to etcd, in order, retrying each until it lands.
async fn publish_changes(
    client: Etcd,
    key: String,
    mut changes: mpsc::UnboundedReceiver<Arc<Topology>>,
    timeout: Duration,
) {
    while let Some(topology) = changes.recv().await {
        let Ok(value) = serde_json::to_vec(&*topology) else {
            continue;
        };
        loop {
            let mut etcd = client.handle();
            match etcd_call(timeout, etcd.put(key.clone(), value.clone(), None)).await {
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, epoch = topology.epoch, "cannot write the topology to etcd; retrying");
                    tokio::time::sleep(REWATCH_PAUSE).await;
                }
            }
        }
    }
}
