//! The two-phase cutover across replicas. The coordinator (the replica whose admin API was
//! asked) moves `PREFIX/switch` to CLOSING for the next epoch, in a transaction on the
//! topology's revision; every live replica ([`crate::participant`]) closes its write gate
//! (writes are held, not refused), waits until its journal for the new primary is empty, and
//! acknowledges on its lease. Once every live member acknowledged, one transaction writes the
//! new topology (epoch + 1, the new primary) and COMMITTED: the commit point. Replicas reopen
//! their gates once they see the new topology (or ABORTED). On timeout the coordinator aborts
//! and nothing changes; a CLOSING left past its deadline by a coordinator that died is
//! aborted by any replica.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use shift_config::BackendName;
use shift_proxy::topology::Topology;

use crate::keys::Keys;
use crate::view::MemberView;
use crate::{etcd_call, ClusterError, Etcd};

/// How often the coordinator looks for acknowledgements.
const ACK_POLL: Duration = Duration::from_millis(100);

/// Where a cutover stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Gates closing for `epoch`; nothing committed.
    Closing,
    /// The topology of `epoch` is written.
    Committed,
    /// Given up; the topology did not change.
    Aborted,
}

/// The value of `PREFIX/switch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchRecord {
    /// The epoch the cutover moves to.
    pub epoch: u64,
    /// The primary from that epoch on.
    pub primary: BackendName,
    pub phase: Phase,
    /// Who coordinates it.
    pub coordinator: String,
    /// Unix milliseconds after which a CLOSING may be aborted by anyone.
    pub deadline_ms: u64,
    /// COMMITTED: Unix milliseconds when the coordinator sent the commit, after every live
    /// replica had closed its gate: no write reaches the old primary from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_ms: Option<u64>,
}

/// Why a cutover did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("another cutover (to epoch {0}) is in progress")]
    Busy(u64),
    #[error("the topology changed meanwhile; nothing was switched")]
    Raced,
    #[error(
        "{missing:?} did not close their gates within {timeout:?}; aborted, nothing was switched"
    )]
    Timeout {
        missing: Vec<String>,
        timeout: Duration,
    },
}

/// Runs two-phase cutovers from this replica.
#[derive(Debug, Clone)]
pub struct ClusterCutover {
    pub(crate) client: Etcd,
    pub(crate) keys: Keys,
    pub(crate) me: String,
    pub(crate) members: Arc<MemberView>,
    pub(crate) etcd_timeout: Duration,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl ClusterCutover {
    /// Makes `primary` the primary of every replica, or changes nothing: see the module's
    /// doc. `timeout` bounds the wait for every replica's gate and drain.
    pub async fn switch(
        &self,
        primary: BackendName,
        timeout: Duration,
    ) -> Result<Topology, CutoverError> {
        let (topology, topology_rev) = self.read_topology().await?;
        let switch_key = self.keys.switch();
        let mut etcd = self.client.handle();
        let current = etcd_call(self.etcd_timeout, etcd.get(switch_key.clone(), None)).await?;
        let switch_rev = match current.kvs().first() {
            Some(kv) => {
                let record: SwitchRecord =
                    serde_json::from_slice(kv.value()).map_err(ClusterError::decode)?;
                if record.phase == Phase::Closing && record.deadline_ms > now_ms() {
                    return Err(CutoverError::Busy(record.epoch));
                }
                kv.mod_revision()
            }
            None => 0,
        };
        let epoch = topology.epoch + 1;
        let closing = SwitchRecord {
            epoch,
            primary,
            phase: Phase::Closing,
            coordinator: self.me.clone(),
            deadline_ms: now_ms() + u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            committed_ms: None,
        };
        let closing_rev = self
            .put_if(&switch_key, &closing, switch_rev, topology_rev)
            .await?
            .ok_or(CutoverError::Raced)?;
        tracing::info!(epoch, %primary, "cutover: gates closing on every replica");
        let acked = self.wait_acks(epoch, timeout).await?;
        if let Err(missing) = acked {
            self.finish(&closing, Phase::Aborted, closing_rev, None)
                .await?;
            return Err(CutoverError::Timeout { missing, timeout });
        }
        let next = Topology {
            epoch,
            primary,
            ..topology
        };
        if !self
            .finish(
                &closing,
                Phase::Committed,
                closing_rev,
                Some((&next, topology_rev)),
            )
            .await?
        {
            return Err(CutoverError::Raced);
        }
        tracing::info!(epoch, %primary, "cutover committed");
        Ok(next)
    }

    async fn read_topology(&self) -> Result<(Topology, i64), ClusterError> {
        let mut etcd = self.client.handle();
        let answer = etcd_call(self.etcd_timeout, etcd.get(self.keys.topology(), None)).await?;
        let kv = answer
            .kvs()
            .first()
            .ok_or(ClusterError::Closed("the topology key"))?;
        let topology = serde_json::from_slice(kv.value()).map_err(ClusterError::decode)?;
        Ok((topology, kv.mod_revision()))
    }

    /// Puts `record` at `key` if `key` is still at `key_rev` (0: absent) and the topology at
    /// `topology_rev`; the new revision, `None` when either moved.
    async fn put_if(
        &self,
        key: &str,
        record: &SwitchRecord,
        key_rev: i64,
        topology_rev: i64,
    ) -> Result<Option<i64>, ClusterError> {
        let value = serde_json::to_vec(record).map_err(ClusterError::encode)?;
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key, CompareOp::Equal, key_rev),
                Compare::mod_revision(self.keys.topology(), CompareOp::Equal, topology_rev),
            ])
            .and_then([TxnOp::put(key, value, None)]);
        let mut etcd = self.client.handle();
        let answer = etcd_call(self.etcd_timeout, etcd.txn(txn)).await?;
        Ok(answer
            .succeeded()
            .then(|| answer.header().map(|h| h.revision()).unwrap_or(0)))
    }

    /// Waits until every live member acknowledged `epoch`; `Err(missing)` at the timeout.
    async fn wait_acks(
        &self,
        epoch: u64,
        timeout: Duration,
    ) -> Result<Result<(), Vec<String>>, ClusterError> {
        let started = tokio::time::Instant::now();
        let prefix = self.keys.acks(epoch);
        loop {
            let mut etcd = self.client.handle();
            let answer = etcd_call(
                self.etcd_timeout,
                etcd.get(
                    prefix.clone(),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                ),
            )
            .await?;
            let acked: Vec<String> = answer
                .kvs()
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned())
                .collect();
            let missing: Vec<String> = self
                .members
                .live()
                .iter()
                .filter(|m| !acked.contains(&m.id))
                .map(|m| m.id.clone())
                .collect();
            if missing.is_empty() {
                return Ok(Ok(()));
            }
            if started.elapsed() >= timeout {
                return Ok(Err(missing));
            }
            tokio::time::sleep(ACK_POLL).await;
        }
    }

    /// Moves the cutover to `phase` if it is still the CLOSING at `closing_rev`, writing the
    /// new topology in the same transaction when given (the commit point); whether it did.
    async fn finish(
        &self,
        closing: &SwitchRecord,
        phase: Phase,
        closing_rev: i64,
        topology: Option<(&Topology, i64)>,
    ) -> Result<bool, ClusterError> {
        let key = self.keys.switch();
        let record = SwitchRecord {
            phase,
            committed_ms: (phase == Phase::Committed).then(now_ms),
            ..closing.clone()
        };
        let mut when = vec![Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            closing_rev,
        )];
        let mut then = vec![TxnOp::put(
            key.clone(),
            serde_json::to_vec(&record).map_err(ClusterError::encode)?,
            None,
        )];
        if let Some((topology, topology_rev)) = topology {
            let topology_key = self.keys.topology();
            when.push(Compare::mod_revision(
                topology_key.clone(),
                CompareOp::Equal,
                topology_rev,
            ));
            then.push(TxnOp::put(
                topology_key,
                serde_json::to_vec(topology).map_err(ClusterError::encode)?,
                None,
            ));
        }
        let mut etcd = self.client.handle();
        let answer = etcd_call(
            self.etcd_timeout,
            etcd.txn(Txn::new().when(when).and_then(then)),
        )
        .await?;
        if !answer.succeeded() {
            tracing::warn!(
                epoch = closing.epoch,
                ?phase,
                "the cutover changed under its coordinator"
            );
        }
        Ok(answer.succeeded())
    }

    /// The cutover record now, with its revision.
    pub async fn current(&self) -> Result<Option<(SwitchRecord, i64)>, ClusterError> {
        let mut etcd = self.client.handle();
        let answer = etcd_call(self.etcd_timeout, etcd.get(self.keys.switch(), None)).await?;
        let Some(kv) = answer.kvs().first() else {
            return Ok(None);
        };
        let record = serde_json::from_slice(kv.value()).map_err(ClusterError::decode)?;
        Ok(Some((record, kv.mod_revision())))
    }

    /// Aborts a CLOSING for `epoch` left past its deadline (its coordinator died); whether
    /// this call aborted it.
    pub async fn abort_stale(&self) -> Result<bool, ClusterError> {
        let key = self.keys.switch();
        let mut etcd = self.client.handle();
        let answer = etcd_call(self.etcd_timeout, etcd.get(key, None)).await?;
        let Some(kv) = answer.kvs().first() else {
            return Ok(false);
        };
        let record: SwitchRecord =
            serde_json::from_slice(kv.value()).map_err(ClusterError::decode)?;
        if record.phase != Phase::Closing || record.deadline_ms > now_ms() {
            return Ok(false);
        }
        tracing::warn!(epoch = record.epoch, coordinator = %record.coordinator, "aborting a cutover left past its deadline");
        self.finish(&record, Phase::Aborted, kv.mod_revision(), None)
            .await
    }
}
