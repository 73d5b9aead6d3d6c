//! Every replica's part in the two-phase cutover ([`crate::cutover`]): it follows
//! `PREFIX/switch`; on a CLOSING for an epoch after its own it closes its write gate (writes
//! in flight finish, new ones are held), waits until its journal for the new primary is
//! empty, and acknowledges on its lease. It holds the gate until the cutover is COMMITTED and
//! the new topology is current here (however long the watch takes), or ABORTED; a CLOSING
//! left past its deadline (its coordinator died) it aborts itself. The record is read every [`SWITCH_POLL`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::PutOptions;
use shift_proxy::coord::{LiveTopology, WriteGate, WriteJournal};

use crate::cutover::{now_ms, ClusterCutover, Phase, SwitchRecord};
use crate::{etcd_call, ClusterError};

/// How often the cutover record is read.
pub const SWITCH_POLL: Duration = Duration::from_millis(100);

/// What the participant acts on.
#[derive(Debug, Clone)]
pub(crate) struct Participant {
    pub cutover: ClusterCutover,
    pub lease: Arc<AtomicI64>,
    pub gate: Arc<dyn WriteGate>,
    pub journal: Arc<dyn WriteJournal>,
    pub topology: Arc<dyn LiveTopology>,
}

impl Participant {
    /// Runs until aborted.
    pub async fn run(self) {
        loop {
            match self.cutover.current().await {
                Ok(Some((record, _)))
                    if record.phase == Phase::Closing
                        && record.epoch > self.topology.current().epoch =>
                {
                    if let Err(error) = self.take_part(&record).await {
                        tracing::warn!(%error, epoch = record.epoch, "cutover: this replica's part failed; its gate is open again");
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "cannot read the cutover record"),
            }
            tokio::time::sleep(SWITCH_POLL).await;
        }
    }

    async fn take_part(&self, record: &SwitchRecord) -> Result<(), ClusterError> {
        let closed = self.gate.close().await;
        // Writes past the gate have finished, but a settlement that outlives its request (a
        // client that hung up) may still be journaling: wait for every intent. Then the
        // replay, which keeps applying while the gate is closed, to catch up.
        while self.journal.pending_intent_count() > 0
            || self.journal.lag(record.primary).entries > 0
        {
            if now_ms() > record.deadline_ms {
                return Ok(());
            }
            tokio::time::sleep(SWITCH_POLL).await;
        }
        let key = format!(
            "{}{}",
            self.cutover.keys.acks(record.epoch),
            self.cutover.me
        );
        let lease = self.lease.load(Ordering::Acquire);
        let mut etcd = self.cutover.client.handle();
        etcd_call(
            self.cutover.etcd_timeout,
            etcd.put(key, "drained", Some(PutOptions::new().with_lease(lease))),
        )
        .await?;
        tracing::info!(
            epoch = record.epoch,
            "cutover: gate closed and journal drained here"
        );
        loop {
            tokio::time::sleep(SWITCH_POLL).await;
            let now = match self.cutover.current().await {
                Ok(Some((now, _))) => now,
                Ok(None) => break,
                Err(_) => continue,
            };
            if now.epoch != record.epoch || now.phase == Phase::Aborted {
                break;
            }
            if now.phase == Phase::Committed {
                // Reopen only once the new topology is current here: a held write then goes
                // to the new primary, never to the old one after the commit. The watch
                // delivers it (it watches again from its revision after a break).
                let mut changes = self.topology.subscribe();
                if changes.wait_for(|t| t.epoch >= record.epoch).await.is_err() {
                    tracing::error!(epoch = record.epoch, "the topology stopped changing before the commit was seen; the gate stays closed");
                    std::future::pending::<()>().await;
                }
                break;
            }
            if now_ms() > now.deadline_ms {
                let _ = self.cutover.abort_stale().await;
            }
        }
        drop(closed);
        Ok(())
    }
}
