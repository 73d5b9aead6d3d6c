//! The JetStream journal's appends against a real nats-server (JetStream, `sync_interval:
//! always`): fenced by the subject's last sequence, de-duplicated by message id, kept across a
//! kill -9 of the server.

use std::time::Duration;

use bytes::Bytes;
use shift_cluster::stream::{Appended, JournalStream, StreamError, StreamSettings};
use shift_testkit::nats::NatsServer;

fn settings() -> StreamSettings {
    StreamSettings {
        name: "JOURNAL".into(),
        subject_prefix: "journal".into(),
        replicas: 1,
        duplicate_window: Duration::from_secs(120),
    }
}

#[tokio::test]
async fn appends_are_fenced_by_the_last_subject_sequence_and_deduplicated() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let old_owner = JournalStream::open(&nats.url(), settings()).await?;
    let c = "6f1c7a52-0000-4000-8000-000000000001";
    assert_eq!(old_owner.last_sequence(c).await?, 0);
    let first = old_owner
        .append(c, 0, "w1", Bytes::from_static(b"one"))
        .await?;
    let second = old_owner
        .append(c, first.sequence, "w2", Bytes::from_static(b"two"))
        .await?;
    assert!(!first.duplicate && !second.duplicate);
    // Another collection's subject has its own sequence.
    old_owner
        .append("other", 0, "o1", Bytes::from_static(b"x"))
        .await?;

    // The same append again (its acknowledgement was lost), at the sequence it was sent at:
    // stored once.
    let again = old_owner
        .append(c, first.sequence, "w2", Bytes::from_static(b"two"))
        .await?;
    assert_eq!(
        again,
        Appended {
            sequence: second.sequence,
            duplicate: true
        }
    );

    // Sent at the sequence it moved the subject to: the server's de-duplication answers.
    let resent = old_owner
        .append(c, second.sequence, "w2", Bytes::from_static(b"two"))
        .await?;
    assert_eq!(resent, again);

    // A new owner appends at the sequence it read: the old owner is fenced from then on.
    let new_owner = JournalStream::open(&nats.url(), settings()).await?;
    let seen = new_owner.last_sequence(c).await?;
    assert_eq!(seen, second.sequence);
    let marker = new_owner
        .append(c, seen, "takeover-1", Bytes::from_static(b"owner b"))
        .await?;
    let stale = old_owner
        .append(c, second.sequence, "w3", Bytes::from_static(b"three"))
        .await;
    assert!(
        matches!(stale, Err(StreamError::Fenced { .. })),
        "the old owner appended after the takeover: {stale:?}"
    );

    // Acknowledged appends survive a kill -9 of the server.
    drop((old_owner, new_owner));
    nats.kill();
    nats.restart().await?;
    let reopened = JournalStream::open(&nats.url(), settings()).await?;
    assert_eq!(reopened.last_sequence(c).await?, marker.sequence);
    Ok(())
}
