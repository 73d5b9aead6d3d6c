//! The cluster's journal in NATS JetStream against a real nats-server and a real 3-member
//! etcd: intents and entries of one replica are read by the collection's owner; an append
//! retried under the same intent stores once; a new owner fences the old one, whose next
//! append is refused (503), and settles the intent it left as a reconciliation after the
//! takeover grace; a replay killed mid-way is resumed by the next owner from the stream.

use std::time::Duration;

use serde_json::json;
use shift_cluster::owner::owner;
use shift_config::{BackendName, ClusterConfig};
use shift_proxy::coord::ReplayJournal;
use shift_proxy::ids::ClientCollectionId;
use shift_proxy::mirror::{MirrorOp, RecordKind};
use shift_state::{NewEntry, Seq};
use shift_testkit::etcd::EtcdCluster;
use shift_testkit::nats::NatsServer;
use shift_testkit::wait::wait_until;

mod support;
use support::{join, topology, Replica};

/// Bounds that only turn a hang into a failure.
const LIMIT: Duration = Duration::from_secs(40);
/// The secondary of `topology(1, Old)`: the store the entries wait for.
const TARGET: BackendName = BackendName::New;

fn config(etcd: &EtcdCluster, nats: &NatsServer, member: &str) -> ClusterConfig {
    let mut config = support::config(etcd, "/journal", member, Duration::from_secs(3));
    config.nats_url = Some(nats.url());
    config
}

fn upsert(collection: &str, id: &str, value: u32) -> Vec<u8> {
    MirrorOp::Records {
        kind: RecordKind::Upsert,
        collection: ClientCollectionId::from(collection),
        body: json!({ "ids": [id], "documents": [format!("v{value}")] }),
    }
    .to_bytes()
}

fn entry(collection: &str, payload: Vec<u8>) -> NewEntry {
    NewEntry {
        target: TARGET,
        collection: collection.into(),
        payload,
    }
}

/// A collection `member` owns among `members` (rendezvous over their ids).
fn owned_by(member: &str, members: &[&str]) -> String {
    let records: Vec<_> = members
        .iter()
        .map(|id| shift_cluster::member::MemberRecord {
            id: (*id).into(),
            address: format!("http://{id}.invalid:8000"),
        })
        .collect();
    (0..)
        .map(|i| format!("6f1c7a52-0000-4000-8000-{i:012}"))
        .find(|c| owner(&records, c).is_some_and(|o| o.id == member))
        .expect("some collection")
}

fn replay(replica: &Replica) -> std::sync::Arc<dyn ReplayJournal> {
    replica
        .cluster
        .replay_journal()
        .expect("nats_url given: the JetStream journal")
}

/// The payloads the replica's replay reads for TARGET, once there are `count`.
async fn read(replica: &Replica, count: usize) -> anyhow::Result<Vec<(Seq, Vec<u8>)>> {
    let replay = replay(replica);
    wait_until("the owner reads the entries", LIMIT, || {
        let n = replay.read(TARGET, None, 100).map(|e| e.len());
        async move { Ok(n? >= count) }
    })
    .await?;
    Ok(replay
        .read(TARGET, None, 100)?
        .into_iter()
        .map(|e| (e.seq, e.payload))
        .collect())
}

async fn members_are(replica: &Replica, ids: &[&str]) -> anyhow::Result<()> {
    let members = replica.cluster.members().clone();
    wait_until("the members", LIMIT, || {
        let live: Vec<String> = members.live().iter().map(|m| m.id.clone()).collect();
        async move { Ok(live == ids) }
    })
    .await
}

/// Replicas a and b joined, each seeing both, and a collection a owns.
async fn two_replicas(
    etcd: &EtcdCluster,
    nats: &NatsServer,
) -> anyhow::Result<(Replica, Replica, String)> {
    let a = join(&config(etcd, nats, "a"), topology(1, BackendName::Old)).await?;
    let b = join(&config(etcd, nats, "b"), topology(1, BackendName::Old)).await?;
    members_are(&a, &["a", "b"]).await?;
    members_are(&b, &["a", "b"]).await?;
    Ok((a, b, owned_by("a", &["a", "b"])))
}

/// Waits until every replica's lag of TARGET is `entries`.
async fn lag_is(replicas: &[&Replica], entries: u64) -> anyhow::Result<()> {
    for replica in replicas {
        let journal = replica.plane.journal.clone();
        wait_until("the lag on every replica", LIMIT, || {
            let now = journal.lag(TARGET).entries;
            async move { Ok(now == entries) }
        })
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn entries_settle_once_and_lag_is_seen_by_every_replica() -> anyhow::Result<()> {
    let etcd = EtcdCluster::start(3).await?;
    let nats = NatsServer::start().await?;
    let (a, b, c) = two_replicas(&etcd, &nats).await?;

    // A write's intent, then its settlement, on the owner.
    let write = upsert(&c, "x", 1);
    let id = a.plane.journal.record_intent(write.clone()).await?;
    assert_eq!(a.plane.journal.pending_intent_count(), 1);
    a.plane
        .journal
        .settle_intent(id, vec![entry(&c, write.clone())])
        .await?;
    assert_eq!(a.plane.journal.pending_intent_count(), 0);
    // Settled again (a retry after a lost acknowledgement): stored once.
    a.plane
        .journal
        .commit_intent(id, vec![entry(&c, write.clone())])
        .await?;
    // A replica that does not own the collection refuses its record writes.
    let refused = b.plane.journal.record_intent(upsert(&c, "y", 1)).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.is_retryable_unavailable()),
        "{refused:?}"
    );

    let read_a = read(&a, 1).await?;
    assert_eq!(read_a.len(), 1, "one entry for one settlement");
    assert_eq!(read_a[0].1, write);
    assert!(
        replay(&b).read(TARGET, None, 100)?.is_empty(),
        "only the owner replays"
    );
    lag_is(&[&a, &b], 1).await?;
    assert!(b.plane.journal.lag(TARGET).collections.contains_key(&c));
    // Applied: removed, and the lag drains to zero everywhere (a drained subject keeps only
    // its fence marker, which is not lag).
    replay(&a).remove(TARGET, &[read_a[0].0]).await?;
    lag_is(&[&a, &b], 0).await?;
    // The owner appends again after the drain: its fence marker did not fence itself.
    let next: Vec<Vec<u8>> = (2..4).map(|v| upsert(&c, "x", v)).collect();
    for write in &next {
        let id = a.plane.journal.record_intent(write.clone()).await?;
        a.plane
            .journal
            .settle_intent(id, vec![entry(&c, write.clone())])
            .await?;
    }
    let again = read(&a, 2).await?;
    assert_eq!(
        again.iter().map(|e| &e.1).collect::<Vec<_>>(),
        next.iter().collect::<Vec<_>>()
    );
    lag_is(&[&a, &b], 2).await?;
    // The first applied: the subject holds the second alone; then the second applied: the
    // subject holds a marker alone, at the same count, and the lag still drains.
    replay(&a).remove(TARGET, &[again[0].0]).await?;
    lag_is(&[&a, &b], 1).await?;
    replay(&a).remove(TARGET, &[again[1].0]).await?;
    lag_is(&[&a, &b], 0).await?;
    Ok(())
}

#[tokio::test]
async fn a_new_owner_fences_the_old_one_and_settles_its_intent() -> anyhow::Result<()> {
    let etcd = EtcdCluster::start(3).await?;
    let nats = NatsServer::start().await?;
    let (a, b, c) = two_replicas(&etcd, &nats).await?;

    let first = upsert(&c, "x", 1);
    let id = a.plane.journal.record_intent(first.clone()).await?;
    a.plane
        .journal
        .settle_intent(id, vec![entry(&c, first.clone())])
        .await?;
    // A write in flight on a when it stops following the cluster: its view stays as it was
    // (it still believes it owns c), its lease runs out, b sees it gone and takes c over.
    let in_flight = upsert(&c, "x", 2);
    let stale = a.plane.journal.record_intent(in_flight.clone()).await?;
    let Replica {
        cluster: a_cluster,
        plane: a_plane,
        ..
    } = a;
    drop(a_cluster);
    members_are(&b, &["b"]).await?;
    let by_b = upsert(&c, "z", 1);
    b.plane
        .journal
        .append(vec![entry(&c, by_b.clone())])
        .await?;

    // The old owner's settlement is fenced: refused (503), its intent left in the stream.
    let fenced = a_plane
        .journal
        .settle_intent(stale, vec![entry(&c, in_flight.clone())])
        .await;
    let error = fenced.expect_err("the old owner appended after the takeover");
    assert!(error.is_retryable_unavailable(), "{error}");
    assert!(error.to_string().contains("took over"), "{error}");

    // The new owner replays a's entry first, then its own and the reconciliation of a's
    // intent (whatever the primary holds for x), in either order: the takeover grace counts
    // from the intent's recording, so on a slow machine it may have passed before b's own
    // append (they are about different records, so their order does not matter).
    let entries = read(&b, 3).await?;
    assert_eq!(entries.len(), 3, "{} entries", entries.len());
    assert_eq!(entries[0].1, first);
    let (own, other): (Vec<_>, Vec<_>) = entries[1..].iter().partition(|e| e.1 == by_b);
    assert_eq!(own.len(), 1, "b's own entry once");
    let reconcile = MirrorOp::from_bytes(&other[0].1)?;
    assert!(
        matches!(&reconcile, MirrorOp::Reconcile { ids, .. } if ids == &["x".to_owned()]),
        "{reconcile:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_replay_stopped_mid_way_resumes_from_the_stream() -> anyhow::Result<()> {
    let etcd = EtcdCluster::start(3).await?;
    let nats = NatsServer::start().await?;
    let b = join(&config(&etcd, &nats, "b"), topology(1, BackendName::Old)).await?;
    members_are(&b, &["b"]).await?;
    let c = owned_by("b", &["b"]);
    let writes: Vec<Vec<u8>> = (0..4).map(|i| upsert(&c, &format!("r{i}"), i)).collect();
    b.plane
        .journal
        .append(writes.iter().map(|w| entry(&c, w.clone())).collect())
        .await?;
    let entries = read(&b, 4).await?;
    assert_eq!(entries.len(), 4);
    // Two applied and removed, then the replica is gone (not left: killed).
    replay(&b)
        .remove(TARGET, &[entries[0].0, entries[1].0])
        .await?;
    drop(b);
    let restarted = join(&config(&etcd, &nats, "b"), topology(1, BackendName::Old)).await?;
    let rest = read(&restarted, 2).await?;
    let payloads: Vec<_> = rest.iter().map(|e| e.1.clone()).collect();
    assert_eq!(
        payloads,
        writes[2..].to_vec(),
        "the unapplied entries, in order"
    );
    Ok(())
}
