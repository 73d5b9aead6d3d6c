//! A cutover or rollback in cluster mode: the checks and the catch-up run as embedded (in
//! [`super`]), then the change of primary commits through [`PrimaryCommit`] (the two-phase
//! cutover across every replica, see [`crate::primary_commit`]) instead of this process's
//! own close, drain, persist and swap. This replica's own gate is closed by its participant
//! like every other replica's: the switch does not touch it (closing it first would hold the
//! participant until the timeout).
//!
//! A forced switch away from a primary that is down moves journal entries between the two
//! stores' journals (`super::moves`); each replica has its own journal until the journal is
//! shared (JetStream), so it is refused here, saying so.

use std::sync::Arc;
use std::time::Duration;

use shift_proxy::topology::Topology;

use super::hold::HoldClock;
use super::{SwitchCore, SwitchReport, TopologySwitch};
use crate::primary_commit::PrimaryCommit;

impl TopologySwitch {
    /// From now on, a cutover or rollback commits through `commit` (cluster mode). Set once,
    /// at start, before the admin API serves; a second call changes nothing.
    pub fn commit_through(&self, commit: Arc<dyn PrimaryCommit>) {
        if self.core.commit.set(commit).is_err() {
            tracing::warn!("the switch already commits through the cluster");
        }
    }
}

impl SwitchCore {
    /// Commits the switch `report` describes through `commit`, once its checks passed and
    /// the catch-up ran; `from_down` says a forced switch would move entries.
    pub(super) async fn commit_in_cluster(
        &self,
        commit: &dyn PrimaryCommit,
        mut report: SwitchReport,
        current: &Topology,
        from_down: bool,
        timeout: Duration,
    ) -> SwitchReport {
        let (from, to) = (report.from, report.to);
        if from_down {
            report.refused = Some(format!(
                "cluster mode: a forced switch away from {from}, which is down, would move journal entries between the stores' journals, and each replica has its own journal; not supported until the journal is shared (JetStream). Nothing changed"
            ));
            return report;
        }
        let before = self.state.waiting(to);
        let mut hold = HoldClock::start();
        let committed = match commit.commit(to, timeout).await {
            Ok(topology) => topology,
            Err(reason) => {
                report.writes_held_ms = hold.stamp(|s| &mut s.reopened_ms);
                report.hold = hold.steps;
                report.refused = Some(format!("the cluster did not commit: {reason}"));
                tracing::warn!(direction = ?report.direction, %reason, "cluster switch abandoned");
                return report;
            }
        };
        hold.stamp(|s| &mut s.committed_ms);
        // The participant here reopens this replica's gate once the commit is current here;
        // wait for it (bounded: the watch may lag), so the report says what now serves.
        let mut changes = self.topology.subscribe();
        let seen = changes.wait_for(|t| t.epoch >= committed.epoch);
        if tokio::time::timeout(timeout, seen).await.is_err() {
            report.notes.push(format!(
                "committed in etcd (epoch {}), not yet seen by this replica's watch within {timeout:?}; its gate stays closed until it is",
                committed.epoch
            ));
        }
        // For `restore` at the next start (etcd's topology wins in cluster mode anyway).
        if let Err(error) = self.state.persist(&committed).await {
            report.notes.push(format!(
                "committed in etcd; persisting it in this replica's state failed: {error}"
            ));
        }
        report.writes_held_ms = hold.stamp(|s| &mut s.reopened_ms);
        report.hold = hold.steps;
        report.switched = true;
        report.epoch = committed.epoch;
        report.drained_entries = before.saturating_sub(self.state.waiting(to));
        report.plan.push(format!(
            "cluster mode: every live replica closed its gate and drained its journal to {to}; one etcd transaction committed {to} as primary at epoch {} -> {}",
            current.epoch, committed.epoch
        ));
        tracing::warn!(
            direction = ?report.direction,
            primary = %to,
            epoch = report.epoch,
            writes_held_ms = report.writes_held_ms,
            "topology switched on every replica"
        );
        self.alerts.send(&format!(
            "chroma-shift {:?}: {to} is primary on every replica now (epoch {}); writes were held {:.0} ms",
            report.direction, report.epoch, report.writes_held_ms
        ));
        report
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use shift_config::BackendName;
    use shift_proxy::coord::Pending;

    use super::super::tests::{fixture, forced};
    use super::super::{Direction, SwitchRequest};
    use super::*;

    /// Commits by making the topology current (as the participant and the watch would), or
    /// refuses with `refuse`; records what it was asked.
    #[derive(Debug)]
    struct FakeCommit {
        topology: shift_proxy::topology::SharedTopology,
        refuse: Option<String>,
        asked: StdMutex<Vec<BackendName>>,
    }

    impl PrimaryCommit for FakeCommit {
        fn commit(
            &self,
            primary: shift_config::BackendName,
            _timeout: Duration,
        ) -> Pending<'_, Result<Topology, String>> {
            self.asked.lock().unwrap().push(primary);
            let result = match &self.refuse {
                Some(reason) => Err(reason.clone()),
                None => {
                    let next = Topology {
                        epoch: self.topology.current().epoch + 1,
                        primary,
                        ..(*self.topology.current()).clone()
                    };
                    self.topology.replace(Arc::new(next.clone()));
                    Ok(next)
                }
            };
            Box::pin(async move { result })
        }
    }

    fn commit(f: &super::super::tests::Fixture, refuse: Option<&str>) -> Arc<FakeCommit> {
        let commit = Arc::new(FakeCommit {
            topology: f.topology.clone(),
            refuse: refuse.map(str::to_owned),
            asked: StdMutex::new(Vec::new()),
        });
        f.switch.commit_through(commit.clone());
        commit
    }

    #[tokio::test(start_paused = true)]
    async fn a_cluster_switch_commits_through_the_cluster_and_persists_what_it_committed() {
        let f = fixture(BackendName::Old);
        let commit = commit(&f, None);
        let report = f.run(Direction::Cutover, SwitchRequest::default()).await;
        assert!(report.switched, "{report:?}");
        assert_eq!(report.epoch, 2);
        assert_eq!(*commit.asked.lock().unwrap(), vec![BackendName::New]);
        assert_eq!(f.topology.current().primary, BackendName::New);
        assert_eq!(f.state.persisted().map(|t| t.epoch), Some(2));
        // The switch left this replica's gate to its participant: it is open.
        assert!(f.gate.try_enter().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_commit_changes_nothing_and_says_why() {
        let f = fixture(BackendName::Old);
        commit(&f, Some("b did not close its gate"));
        let report = f.run(Direction::Cutover, SwitchRequest::default()).await;
        assert!(!report.switched);
        let refused = report.refused.unwrap_or_default();
        assert!(refused.contains("b did not close its gate"), "{refused}");
        assert_eq!(f.topology.current().epoch, 1);
        assert!(f.state.persisted().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_forced_switch_away_from_a_down_primary_is_refused_in_cluster_mode() {
        let f = fixture(BackendName::Old);
        let commit = commit(&f, None);
        f.down(BackendName::Old);
        let report = f.run(Direction::Cutover, forced()).await;
        assert!(!report.switched);
        let refused = report.refused.unwrap_or_default();
        assert!(refused.contains("cluster mode"), "{refused}");
        assert!(commit.asked.lock().unwrap().is_empty());
        assert_eq!(f.topology.current().primary, BackendName::Old);
    }
}
