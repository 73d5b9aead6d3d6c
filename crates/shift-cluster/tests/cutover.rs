//! The two-phase cutover against a real 3-member etcd, three replicas joined in-process: no
//! commit while one replica's gate cannot close (a write in flight there), every gate closed
//! at the commit, held writes go on after it under the new topology; a cutover that cannot
//! close every gate in time aborts and changes nothing.

use std::time::Duration;

use shift_cluster::cutover::{CutoverError, Phase};
use shift_config::BackendName;
use shift_testkit::etcd::EtcdCluster;
use shift_testkit::wait::wait_until;

mod support;
use support::{join, topology, Replica};

/// Bounds that only turn a hang into a failure.
const LIMIT: Duration = Duration::from_secs(30);

async fn three(etcd: &EtcdCluster) -> anyhow::Result<Vec<Replica>> {
    let mut replicas = Vec::new();
    for member in ["a", "b", "c"] {
        let config = support::config(etcd, "/cut", member, Duration::from_secs(5));
        replicas.push(join(&config, topology(1, BackendName::Old)).await?);
    }
    let first = &replicas[0].cluster;
    wait_until("every member seen", LIMIT, || {
        let seen = first.members().live().len();
        async move { Ok(seen == 3) }
    })
    .await?;
    Ok(replicas)
}

/// Every replica's gate open again and its topology still epoch 1 with old primary.
async fn unchanged(replicas: &[Replica]) -> anyhow::Result<()> {
    for replica in replicas {
        wait_until("the gate open again", LIMIT, || {
            let open = gate_open(replica);
            async move { Ok(open) }
        })
        .await?;
        let topology = replica.plane.topology.current();
        assert_eq!((topology.epoch, topology.primary), (1, BackendName::Old));
    }
    Ok(())
}

fn gate_open(replica: &Replica) -> bool {
    replica.plane.gate.try_enter().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gate_closes_before_the_commit_and_held_writes_go_on_under_the_new_topology(
) -> anyhow::Result<()> {
    let etcd = EtcdCluster::start(3).await?;
    let replicas = three(&etcd).await?;
    // A write in flight on b: b cannot close its gate, so nothing can commit.
    let in_flight = replicas[1].plane.gate.enter().await;
    let cutover = replicas[0].cluster.cutover().clone();
    let switch = tokio::spawn(async move { cutover.switch(BackendName::New, LIMIT).await });
    wait_until("c's gate closed", LIMIT, || {
        let closed = !gate_open(&replicas[2]);
        async move { Ok(closed) }
    })
    .await?;
    // A write arriving at c now is held.
    let c_gate = replicas[2].plane.gate.clone();
    let c_topology = replicas[2].plane.topology.clone();
    let held = tokio::spawn(async move {
        let _pass = c_gate.enter().await;
        c_topology.current().epoch
    });
    assert!(!switch.is_finished(), "committed with b's gate open");
    assert_eq!(replicas[0].plane.topology.current().epoch, 1);
    assert!(!held.is_finished(), "a write passed a closed gate");

    drop(in_flight);
    let committed = tokio::time::timeout(LIMIT, switch).await???;
    assert_eq!((committed.epoch, committed.primary), (2, BackendName::New));
    assert_eq!(
        tokio::time::timeout(LIMIT, held).await??,
        2,
        "the held write went on before the new topology was current"
    );
    for replica in &replicas {
        let mut changes = replica.plane.topology.subscribe();
        tokio::time::timeout(LIMIT, changes.wait_for(|t| t.epoch == 2)).await??;
        assert_eq!(replica.plane.topology.current().primary, BackendName::New);
        wait_until("the gate open again", LIMIT, || {
            let open = gate_open(replica);
            async move { Ok(open) }
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_that_cannot_close_every_gate_aborts_and_changes_nothing() -> anyhow::Result<()> {
    let etcd = EtcdCluster::start(3).await?;
    let replicas = three(&etcd).await?;
    let stuck = replicas[2].plane.gate.enter().await;
    let outcome = replicas[0]
        .cluster
        .cutover()
        .switch(BackendName::New, Duration::from_secs(2))
        .await;
    match outcome {
        Err(CutoverError::Timeout { missing, .. }) => assert_eq!(missing, vec!["c".to_owned()]),
        other => panic!("expected a timeout naming c, got {other:?}"),
    }
    drop(stuck);
    unchanged(&replicas).await?;
    // And the next cutover goes through.
    let next = replicas[1]
        .cluster
        .cutover()
        .switch(BackendName::New, LIMIT)
        .await?;
    assert_eq!(next.epoch, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_whose_coordinator_dies_is_aborted_by_the_replicas_and_changes_nothing(
) -> anyhow::Result<()> {
    let etcd = EtcdCluster::start(3).await?;
    let replicas = three(&etcd).await?;
    // b cannot close its gate yet, so the coordinator is still waiting when it dies.
    let in_flight = replicas[1].plane.gate.enter().await;
    let cutover = replicas[0].cluster.cutover().clone();
    let coordinator = tokio::spawn(async move {
        cutover
            .switch(BackendName::New, Duration::from_secs(3))
            .await
    });
    wait_until("c's gate closed", LIMIT, || {
        let closed = !gate_open(&replicas[2]);
        async move { Ok(closed) }
    })
    .await?;
    coordinator.abort();
    assert!(
        coordinator.await.is_err(),
        "the coordinator was still running"
    );
    drop(in_flight);
    // Nobody commits; past its deadline the replicas abort the CLOSING themselves.
    let cutover = replicas[2].cluster.cutover().clone();
    wait_until("the orphaned cutover aborted", LIMIT, || {
        let cutover = cutover.clone();
        async move {
            let record = cutover.current().await?;
            Ok(matches!(record, Some((r, _)) if r.phase == Phase::Aborted))
        }
    })
    .await?;
    unchanged(&replicas).await?;
    let next = replicas[2]
        .cluster
        .cutover()
        .switch(BackendName::New, LIMIT)
        .await?;
    assert_eq!((next.epoch, next.primary), (2, BackendName::New));
    Ok(())
}
