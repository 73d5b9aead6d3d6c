//! Membership: this replica's lease in etcd and its key on it (`PREFIX/members/<id>`), renewed
//! in the background at a third of the TTL. The [`LeaseClock`] says whether the lease is held;
//! when etcd answers that it expired (the replica was cut off or paused past the TTL), a new
//! lease is granted and the member key written again, and the replica re-reads what it may
//! have missed meanwhile ([`Resync`]: the topology, which a cutover committed without it may
//! have moved) before its clock says the lease is held, so no write goes out under a stale
//! primary.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::LeaseClock;
use crate::{etcd_call, ClusterError, Etcd};

/// What the renewing task needs.
#[derive(Debug, Clone)]
pub(crate) struct MemberSettings {
    /// This replica's name.
    pub id: String,
    /// Its key (`PREFIX/members/<id>`).
    pub key: String,
    /// Where the others forward it writes (its `internal_address`).
    pub address: String,
    /// The lease's time to live.
    pub ttl: Duration,
    /// Limit on each etcd call.
    pub timeout: Duration,
}

/// A member key's value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberRecord {
    /// The replica's `member_id`.
    pub id: String,
    /// Its internal address (`http://host:port`).
    pub address: String,
}

/// What runs after a lost lease was replaced and before writes are taken again.
pub(crate) type Resync =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), ClusterError>> + Send>> + Send + Sync>;

/// The held membership; the renewing task stops when this is dropped.
#[derive(Debug)]
pub struct Membership {
    clock: Arc<LeaseClock>,
    lease: Arc<std::sync::atomic::AtomicI64>,
    client: Etcd,
    task: JoinHandle<()>,
    resync: ResyncSlot,
}

/// Where the resync is set once the topology is joined (after the membership).
#[derive(Clone, Default)]
struct ResyncSlot(Arc<OnceLock<Resync>>);

impl std::fmt::Debug for ResyncSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Resync(set)"
        } else {
            "Resync(unset)"
        })
    }
}

impl Membership {
    /// Grants the lease, writes the member key on it, and starts renewing it.
    pub(crate) async fn join(
        client: &Etcd,
        settings: MemberSettings,
    ) -> Result<Membership, ClusterError> {
        let clock = Arc::new(LeaseClock::default());
        let granted = grant(client, &settings).await?;
        clock.renewed(granted.sent, granted.ttl);
        let lease_id = Arc::new(std::sync::atomic::AtomicI64::new(granted.id));
        let resync = ResyncSlot::default();
        let task = tokio::spawn(renew(
            client.clone(),
            settings,
            clock.clone(),
            lease_id.clone(),
            resync.clone(),
        ));
        Ok(Membership {
            clock,
            lease: lease_id,
            client: client.clone(),
            task,
            resync,
        })
    }

    /// Sets what runs after a lost lease is replaced, before writes are taken again (once).
    pub(crate) fn on_rejoin(&self, resync: Resync) {
        let _ = self.resync.0.set(resync);
    }

    /// The lease's deadline, read by every write.
    pub fn clock(&self) -> &Arc<LeaseClock> {
        &self.clock
    }

    /// The current lease's id, shared with whatever writes keys on it.
    pub(crate) fn lease_handle(&self) -> Arc<std::sync::atomic::AtomicI64> {
        self.lease.clone()
    }

    /// The current lease's id.
    pub fn lease_id(&self) -> i64 {
        self.lease.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stops renewing and revokes the lease, so the others see this replica gone at once.
    pub async fn leave(self, timeout: Duration) {
        self.task.abort();
        self.clock.lost();
        let mut client = self.client.handle();
        let id = self.lease_id();
        if let Err(error) = etcd_call(timeout, client.lease_revoke(id)).await {
            tracing::warn!(%error, "could not revoke the membership lease; it expires by itself");
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A lease granted: its id, when the grant was sent and its TTL (for the clock).
struct Granted {
    id: i64,
    sent: Instant,
    ttl: Duration,
}

/// A new lease with the member key on it.
async fn grant(client: &Etcd, settings: &MemberSettings) -> Result<Granted, ClusterError> {
    let mut client = client.handle();
    let ttl = i64::try_from(settings.ttl.as_secs()).unwrap_or(i64::MAX);
    let sent = Instant::now();
    let granted = etcd_call(settings.timeout, client.lease_grant(ttl, None)).await?;
    let value = serde_json::to_string(&MemberRecord {
        id: settings.id.clone(),
        address: settings.address.clone(),
    })
    .map_err(ClusterError::encode)?;
    etcd_call(
        settings.timeout,
        client.put(
            settings.key.clone(),
            value,
            Some(PutOptions::new().with_lease(granted.id())),
        ),
    )
    .await?;
    tracing::info!(member = %settings.id, lease = granted.id(), "joined the cluster");
    Ok(Granted {
        id: granted.id(),
        sent,
        ttl: Duration::from_secs(granted.ttl().max(0).unsigned_abs()),
    })
}

/// Runs the resync, if one is set; whether writes may be taken again.
async fn resynced(resync: &OnceLock<Resync>) -> bool {
    let Some(resync) = resync.get() else {
        return true;
    };
    match resync().await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "rejoined, but cannot re-read the cluster's state yet; writes stay refused");
            false
        }
    }
}

/// Renews the lease every third of its TTL until aborted; a failed renewal is retried at the
/// next tick (the deadline does not move meanwhile), an expired lease is replaced, and the
/// deadline moves again only once `resync` ran after it.
async fn renew(
    client: Etcd,
    settings: MemberSettings,
    clock: Arc<LeaseClock>,
    lease: Arc<std::sync::atomic::AtomicI64>,
    resync: ResyncSlot,
) {
    let mut resync_due = false;
    let period = (settings.ttl / 3).max(Duration::from_millis(200));
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let id = lease.load(std::sync::atomic::Ordering::Acquire);
        match renew_once(&client, &settings, &mut stream, id).await {
            Ok(Renewal::Renewed { sent, ttl }) => {
                if resync_due {
                    resync_due = !resynced(&resync.0).await;
                }
                if !resync_due {
                    clock.renewed(sent, ttl);
                }
            }
            Ok(Renewal::Expired) => {
                clock.lost();
                stream = None;
                resync_due = true;
                tracing::warn!(member = %settings.id, "the membership lease expired; writes are refused until a new one is granted");
                match grant(&client, &settings).await {
                    Ok(new) => {
                        lease.store(new.id, std::sync::atomic::Ordering::Release);
                        resync_due = !resynced(&resync.0).await;
                        if !resync_due {
                            clock.renewed(new.sent, new.ttl);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot grant a new membership lease"),
                }
            }
            Err(error) => {
                stream = None;
                tracing::warn!(
                    %error,
                    lapsed = clock.lapsed_for().is_some(),
                    "cannot renew the membership lease"
                );
            }
        }
    }
}

enum Renewal {
    Renewed { sent: Instant, ttl: Duration },
    Expired,
}

async fn renew_once(
    client: &Etcd,
    settings: &MemberSettings,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    id: i64,
) -> Result<Renewal, ClusterError> {
    if stream.is_none() {
        let mut client = client.handle();
        *stream = Some(etcd_call(settings.timeout, client.lease_keep_alive(id)).await?);
    }
    let Some((keeper, answers)) = stream.as_mut() else {
        return Err(ClusterError::Closed("the keep-alive stream"));
    };
    let sent = Instant::now();
    etcd_call(settings.timeout, keeper.keep_alive()).await?;
    let answer = etcd_call(settings.timeout, answers.message())
        .await?
        .ok_or(ClusterError::Closed("the keep-alive stream"))?;
    if answer.ttl() <= 0 {
        return Ok(Renewal::Expired);
    }
    Ok(Renewal::Renewed {
        sent,
        ttl: Duration::from_secs(answer.ttl().unsigned_abs()),
    })
}
