//! The etcd coordination against a real 3-member etcd: two replicas joined to one cluster see
//! one topology and one collection map; a replica cut off from etcd (quorum lost) refuses
//! writes from its lease deadline on, still finds the collections registered before, and
//! takes writes again once etcd is back.

use std::sync::Arc;
use std::time::Duration;

use shift_config::BackendName;
use shift_proxy::collections::CollectionEntry;
use shift_state::StoreError;
use shift_testkit::etcd::EtcdCluster;
use shift_testkit::wait::wait_until;

mod support;
use support::{join, topology};

/// Bounds that only turn a hang into a failure.
const LIMIT: Duration = Duration::from_secs(40);

fn entry(client_id: &str, new_id: &str) -> CollectionEntry {
    CollectionEntry {
        client_id: client_id.into(),
        tenant: "default_tenant".into(),
        database: "default_database".into(),
        name: "docs".into(),
        old: Some(client_id.into()),
        new: Some(new_id.into()),
        create: serde_json::json!({ "name": "docs" }),
        deleted: false,
    }
}

#[tokio::test]
async fn two_replicas_share_one_topology_and_one_collection_map() -> anyhow::Result<()> {
    let etcd = EtcdCluster::start(3).await?;
    let ttl = Duration::from_secs(5);
    let a = join(
        &support::config(&etcd, "/test", "a", ttl),
        topology(1, BackendName::Old),
    )
    .await?;
    // The second replica's own seed loses to the topology the first created.
    let b = join(
        &support::config(&etcd, "/test", "b", ttl),
        topology(7, BackendName::New),
    )
    .await?;
    assert_eq!(*b.plane.topology.current(), topology(1, BackendName::Old));
    assert!(a.cluster.lease().is_live() && b.cluster.lease().is_live());

    // A change made on one replica becomes current on the other.
    let mut changes = b.plane.topology.subscribe();
    a.plane
        .topology
        .replace(Arc::new(topology(2, BackendName::New)));
    tokio::time::timeout(LIMIT, changes.wait_for(|t| t.epoch == 2)).await??;
    assert_eq!(b.plane.topology.current().primary, BackendName::New);

    // Both register the same collection at once with different new-store ids: one wins,
    // and both hold the winner.
    let (from_a, from_b) = tokio::join!(
        a.plane.collections.create_if_absent(entry("c1", "from-a")),
        b.plane.collections.create_if_absent(entry("c1", "from-b")),
    );
    let (from_a, from_b) = (from_a?, from_b?);
    assert_eq!(from_a, from_b);
    assert!(["from-a", "from-b"].contains(&from_a.new.as_ref().unwrap().as_str()));
    assert_eq!(b.plane.collections.load().await?, vec![from_a.clone()]);

    // A deleted entry is replaced by a create; a live one is not.
    let mut deleted = from_a.clone();
    deleted.deleted = true;
    a.plane.collections.put(&deleted).await?;
    let fresh = b
        .plane
        .collections
        .create_if_absent(entry("c1", "fresh"))
        .await?;
    assert_eq!(fresh.new.as_ref().unwrap().as_str(), "fresh");
    let kept = a
        .plane
        .collections
        .create_if_absent(entry("c1", "late"))
        .await?;
    assert_eq!(kept, fresh);
    b.plane.collections.remove("c1").await?;
    assert!(a.plane.collections.load().await?.is_empty());
    // Each sees both members; one that leaves is gone from the other's view at once (its
    // lease revoked, not expired).
    let members = |r: &support::Replica| {
        let ids: Vec<String> = r
            .cluster
            .members()
            .live()
            .iter()
            .map(|m| m.id.clone())
            .collect();
        ids
    };
    wait_until("both members seen by both", LIMIT, || {
        let both = members(&a) == ["a", "b"] && members(&b) == ["a", "b"];
        async move { Ok(both) }
    })
    .await?;
    b.cluster.leave().await;
    wait_until("b gone from a's view", LIMIT, || {
        let left = members(&a) == ["a"];
        async move { Ok(left) }
    })
    .await?;
    a.cluster.leave().await;
    Ok(())
}

#[tokio::test]
async fn a_replica_without_etcd_quorum_refuses_writes_then_takes_them_when_it_is_back(
) -> anyhow::Result<()> {
    let mut etcd = EtcdCluster::start(3).await?;
    let replica = join(
        &support::config(&etcd, "/test", "a", Duration::from_secs(3)),
        topology(1, BackendName::Old),
    )
    .await?;
    let journal = replica.plane.journal.clone();
    let intent = journal.record_intent(b"before".to_vec()).await?;
    journal.discard_intent(intent).await?;
    let known = replica
        .plane
        .collections
        .create_if_absent(entry("c1", "n1"))
        .await?;

    etcd.kill(1);
    etcd.kill(2);
    let refusal = Arc::new(std::sync::Mutex::new(None));
    wait_until("a write refused without etcd quorum", LIMIT, || {
        let journal = journal.clone();
        let refusal = refusal.clone();
        async move {
            match journal.record_intent(b"w".to_vec()).await {
                Ok(intent) => {
                    journal.discard_intent(intent).await?;
                    Ok(false)
                }
                Err(error) => {
                    *refusal.lock().unwrap() = Some(error);
                    Ok(true)
                }
            }
        }
    })
    .await?;
    let refusal = refusal
        .lock()
        .unwrap()
        .take()
        .expect("set when the wait ended");
    assert!(
        matches!(refusal, StoreError::Coordination { .. }) && refusal.is_retryable_unavailable(),
        "{refusal}"
    );
    assert!(refusal.to_string().contains("lease"), "{refusal}");
    // A collection registered before is still found (the watched copy); a new one cannot be
    // registered, and the error says why.
    let found = replica
        .plane
        .collections
        .create_if_absent(entry("c1", "other"))
        .await?;
    assert_eq!(found, known);
    let map = replica
        .plane
        .collections
        .create_if_absent(entry("c2", "n"))
        .await;
    assert!(
        matches!(map, Err(StoreError::Coordination { .. })),
        "{map:?}"
    );

    etcd.restart(1).await?;
    etcd.restart(2).await?;
    wait_until("writes taken again once etcd is back", LIMIT, || {
        let journal = journal.clone();
        async move {
            Ok(match journal.record_intent(b"after".to_vec()).await {
                Ok(intent) => {
                    journal.discard_intent(intent).await?;
                    true
                }
                Err(_) => false,
            })
        }
    })
    .await?;
    assert!(replica.cluster.lease().is_live());
    Ok(())
}
