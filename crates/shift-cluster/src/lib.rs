//! chroma-shift's cluster mode: several proxy replicas behind one Service, coordinated through
//! etcd, implementing [`shift_proxy::coord`]'s seams so the request path does not know which
//! mode runs. Built when the config has a `[cluster]` section ([`Cluster::join`]).
//!
//! What it is made of:
//! - membership ([`member`]): a lease per replica, renewed at a third of its TTL; past the
//!   lease deadline ([`clock::LeaseClock`]) the replica refuses writes ([`fence`]) and keeps
//!   serving reads for `read_grace`, then refuses those too ([`lease_guard`]);
//! - the topology ([`topology`]): one etcd key, created from the first replica's seed, watched
//!   by every replica; a cutover or rollback changes it in two phases ([`cutover`], every
//!   replica's [`participant`] closing its gate and draining before the commit);
//! - the collection-id map ([`idmap`]): entries created with a transaction that succeeds only
//!   when the key is absent, so every replica maps a collection to the same ids;
//! - ownership ([`owner`], [`view`]): each collection's writes are taken by one replica
//!   (rendezvous hashing over the live members), the others forward them ([`forward`]);
//! - with `nats_url`, the journal in NATS JetStream ([`stream`], [`journal`]): intents and
//!   entries in one stream, the owner's appends fenced by the subject's last sequence; the
//!   owner replays its collections ([`replay_source`]) and adopts the intents other replicas
//!   left ([`intents`]). Without it each replica journals into its own redb state.
//!
//! Still per replica: the order locks and the write gate (the two-phase cutover closes every
//! replica's). See `docs/ARCHITECTURE.md` ("Cluster mode").

pub mod clock;
pub mod cutover;
pub mod fence;
pub mod forward;
pub mod idmap;
pub mod intents;
pub mod journal;
pub mod keys;
pub mod lease_guard;
pub mod member;
pub mod owner;
pub mod participant;
pub mod replay_source;
pub mod stream;
pub mod topology;
pub mod view;
pub mod watched;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use shift_config::ClusterConfig;
use shift_proxy::coord::{Coordination, ReplayJournal, WriteJournal};
use shift_proxy::gate::LocalWriteGate;
use shift_proxy::locks::OrderLocks;
use shift_proxy::topology::Topology;
use shift_state::{StateStore, StoreError};
use tokio::task::JoinHandle;

use crate::clock::LeaseClock;
use crate::cutover::ClusterCutover;
use crate::fence::LeaseFencedJournal;
use crate::forward::Forwarder;
use crate::idmap::EtcdCollectionMap;
use crate::journal::JetStreamJournal;
use crate::keys::Keys;
use crate::member::{MemberSettings, Membership};
use crate::participant::Participant;
use crate::replay_source::JetStreamReplay;
use crate::stream::{JournalStream, StreamSettings};
use crate::view::MemberView;
use shift_proxy::DataPlaneState;

/// What went wrong talking to the cluster's etcd.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("etcd closed {0}")]
    Closed(&'static str),
    #[error("a value in etcd does not decode: {0}")]
    Decode(String),
    #[error("a value cannot be encoded: {0}")]
    Encode(String),
    #[error("the key {0} kept changing under a create; retry")]
    Contended(String),
    #[error("the journal in NATS JetStream: {0}")]
    Nats(#[from] stream::StreamError),
}

impl ClusterError {
    pub(crate) fn decode(error: serde_json::Error) -> ClusterError {
        ClusterError::Decode(error.to_string())
    }

    pub(crate) fn encode(error: serde_json::Error) -> ClusterError {
        ClusterError::Encode(error.to_string())
    }
}

/// A cluster failure as the state error the request path answers (503, retryable).
pub(crate) fn unavailable(error: ClusterError) -> StoreError {
    StoreError::Coordination {
        reason: error.to_string(),
    }
}

/// One etcd call, bounded by `timeout`.
pub(crate) async fn etcd_call<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ClusterError> {
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| ClusterError::Timeout(timeout))?
        .map_err(ClusterError::from)
}

/// An etcd client (a cheap handle on one channel) that prints no more than its name.
#[derive(Clone)]
pub(crate) struct Etcd(Client);

impl Etcd {
    /// A handle for one call (the client's calls take `&mut self`).
    pub(crate) fn handle(&self) -> Client {
        self.0.clone()
    }
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Etcd")
    }
}

/// This replica's place in the cluster: its membership and the background tasks that keep
/// its view current. Dropping it stops them; [`Cluster::leave`] also revokes the lease.
#[derive(Debug)]
pub struct Cluster {
    member_id: String,
    cutover: ClusterCutover,
    members: Arc<MemberView>,
    etcd_timeout: Duration,
    membership: Option<Membership>,
    clock: Arc<LeaseClock>,
    tasks: Vec<JoinHandle<()>>,
    timeout: Duration,
    /// With `nats_url`: the replay's side of the JetStream journal.
    replay: Option<Arc<JetStreamReplay>>,
}

/// Journal payload the JetStream replay reads ahead per store, at most (plus one entry).
const READ_AHEAD_BYTES: usize = 32 * 1024 * 1024;

/// Opens the JetStream journal of `config` (its stream created when absent) for member `me`
/// over `members`, and starts its tasks: the replay's reader and the adoption of the intents
/// other processes left.
async fn open_journal(
    config: &ClusterConfig,
    url: &str,
    members: Arc<MemberView>,
    topology: Arc<dyn shift_proxy::coord::LiveTopology>,
) -> Result<(JetStreamJournal, Arc<JetStreamReplay>, Vec<JoinHandle<()>>), ClusterError> {
    let stream = JournalStream::open(
        url,
        StreamSettings {
            name: config.stream.clone(),
            subject_prefix: config.stream.to_lowercase(),
            replicas: config.stream_replicas,
            duplicate_window: config.duplicate_window,
        },
    )
    .await?;
    let shared = Arc::new(journal::Shared::new(
        stream,
        config.member_id.clone(),
        members,
        topology,
        config.takeover_grace,
    ));
    let replay = Arc::new(JetStreamReplay::new(shared.clone(), READ_AHEAD_BYTES));
    let tasks = vec![
        tokio::spawn(replay.clone().run()),
        tokio::spawn(intents::adopt(shared.clone())),
    ];
    Ok((JetStreamJournal { shared }, replay, tasks))
}

impl Cluster {
    /// Connects to etcd, joins (a lease and a member key naming `address`, where the others
    /// forward this replica the writes it owns), reads or creates the topology from `seed`,
    /// and builds the seams: the etcd topology and collection map, the lease-fenced `state`
    /// as the journal, and this process's order locks and gate.
    pub async fn join(
        config: &ClusterConfig,
        state: &StateStore,
        seed: Topology,
        address: String,
    ) -> Result<(Cluster, Coordination), ClusterError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(config.etcd_timeout)
            .with_timeout(config.etcd_timeout)
            .with_keep_alive(config.etcd_timeout, config.etcd_timeout);
        let client = etcd_call(
            config.etcd_timeout,
            Client::connect(&config.etcd_endpoints, Some(options)),
        )
        .await?;
        let client = Etcd(client);
        let keys = Keys::new(&config.key_prefix);
        let membership = Membership::join(
            &client,
            MemberSettings {
                id: config.member_id.clone(),
                key: keys.member(&config.member_id),
                address,
                ttl: config.lease_ttl,
                timeout: config.etcd_timeout,
            },
        )
        .await?;
        let joined = topology::join(&client, keys.topology(), seed, config.etcd_timeout).await?;
        {
            // After a lost lease: the topology a cutover may have committed meanwhile first.
            let (client, key) = (client.clone(), keys.topology());
            let (topology, timeout) = (joined.topology.clone(), config.etcd_timeout);
            membership.on_rejoin(Arc::new(move || {
                let refresh =
                    topology::refresh(client.clone(), key.clone(), topology.clone(), timeout);
                Box::pin(refresh)
            }));
        }
        let (members, members_task) =
            view::follow(&client, keys.members(), config.etcd_timeout).await?;
        let (idmap, idmap_task) =
            watched::Watched::follow(&client, keys.idmap(), config.etcd_timeout).await?;
        // With nats_url the journal is the JetStream stream; without it each replica's state.
        let (inner, replay, journal_tasks): (Arc<dyn WriteJournal>, _, _) = match &config.nats_url {
            Some(url) => {
                let (journal, replay, tasks) =
                    open_journal(config, url, members.clone(), joined.topology.clone()).await?;
                (Arc::new(journal), Some(replay), tasks)
            }
            None => (Arc::new(state.clone()), None, Vec::new()),
        };
        let journal = LeaseFencedJournal::new(inner, membership.clock().clone());
        let coordination = Coordination {
            order: Arc::new(OrderLocks::default()),
            gate: Arc::new(LocalWriteGate::default()),
            topology: joined.topology,
            collections: Arc::new(EtcdCollectionMap::new(
                client.clone(),
                keys.clone(),
                config.etcd_timeout,
                idmap,
            )),
            journal: Arc::new(journal),
        };
        let cutover = ClusterCutover {
            client: client.clone(),
            keys,
            me: config.member_id.clone(),
            members: members.clone(),
            etcd_timeout: config.etcd_timeout,
        };
        let participant = tokio::spawn(
            Participant {
                cutover: cutover.clone(),
                lease: membership.lease_handle(),
                gate: coordination.gate.clone(),
                journal: coordination.journal.clone(),
                topology: coordination.topology.clone(),
            }
            .run(),
        );
        Ok((
            Cluster {
                member_id: config.member_id.clone(),
                members,
                etcd_timeout: config.etcd_timeout,
                clock: membership.clock().clone(),
                membership: Some(membership),
                tasks: joined
                    .tasks
                    .into_iter()
                    .chain([members_task, idmap_task, participant])
                    .chain(journal_tasks)
                    .collect(),
                cutover,
                timeout: config.etcd_timeout,
                replay,
            },
            coordination,
        ))
    }

    /// Two-phase cutovers across every replica, run from this one.
    pub fn cutover(&self) -> &ClusterCutover {
        &self.cutover
    }

    /// The live members as this replica sees them.
    pub fn members(&self) -> &Arc<MemberView> {
        &self.members
    }

    /// The forwarding layer for the data plane over `plane`: writes of a collection another
    /// replica owns go to it ([`Forwarder::layer`]). Its counter goes in `registry`.
    pub fn forwarder(
        &self,
        plane: Arc<DataPlaneState>,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Forwarder>, prometheus::Error> {
        let forwarder = Forwarder::new(
            self.member_id.clone(),
            self.members.clone(),
            plane,
            self.etcd_timeout,
            registry,
        )?;
        Ok(Arc::new(forwarder))
    }

    /// What the replay workers read and change with `nats_url` (the JetStream journal of
    /// the collections this replica owns); `None` without it (each replica's state).
    pub fn replay_journal(&self) -> Option<Arc<dyn ReplayJournal>> {
        self.replay
            .clone()
            .map(|replay| replay as Arc<dyn ReplayJournal>)
    }

    /// The membership lease's deadline.
    pub fn lease(&self) -> &Arc<LeaseClock> {
        &self.clock
    }

    /// Leaves the cluster: stops following it and revokes the membership lease.
    pub async fn leave(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(membership) = self.membership.take() {
            membership.leave(self.timeout).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
