//! The test servers of the cluster mode start and work: a 3-member etcd cluster that survives
//! one member's loss and stops at two, and a nats-server whose JetStream acknowledges a
//! message and still has it after a kill -9 and a restart.

use std::time::Duration;

use etcd_client::Client;
use shift_testkit::etcd::EtcdCluster;
use shift_testkit::nats::NatsServer;

/// Reads `key` once etcd serves it (a member's loss may cost an election first); the bound
/// only turns a hang into a failure.
async fn value(client: &Client, key: &str) -> anyhow::Result<Vec<u8>> {
    let mut last = None;
    for _ in 0..100 {
        match client.clone().get(key, None).await {
            Ok(get) => {
                return Ok(get
                    .kvs()
                    .first()
                    .map(|kv| kv.value().to_vec())
                    .unwrap_or_default())
            }
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("etcd never served {key}: {last:?}")
}

#[tokio::test]
async fn three_etcd_members_keep_quorum_with_one_down_and_lose_it_with_two() -> anyhow::Result<()> {
    let mut etcd = EtcdCluster::start(3).await?;
    let mut client = Client::connect(etcd.endpoints(), None).await?;
    client.put("k", "v1", None).await?;
    etcd.kill(0);
    assert_eq!(value(&client, "k").await?, b"v1");
    // The client may try the killed member first: retried until the cluster answers.
    let mut put = client.put("k", "v2", None).await;
    for _ in 0..100 {
        if put.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        put = client.put("k", "v2", None).await;
    }
    put?;
    etcd.kill(1);
    // Without quorum a linearizable read cannot be served.
    let lost = tokio::time::timeout(Duration::from_secs(3), client.get("k", None)).await;
    assert!(
        !matches!(lost, Ok(Ok(_))),
        "a read was served without quorum"
    );
    assert!(
        !etcd.healthy(2).await,
        "member 2 reports health without quorum"
    );
    etcd.restart(1).await?;
    etcd.restart(0).await?;
    let client = Client::connect(etcd.endpoints(), None).await?;
    assert_eq!(value(&client, "k").await?, b"v2");
    Ok(())
}

#[tokio::test]
async fn nats_jetstream_keeps_an_acknowledged_message_across_a_kill() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "SMOKE".into(),
        subjects: vec!["smoke.>".into()],
        ..Default::default()
    })
    .await?;
    js.publish("smoke.a", "hello".into()).await?.await?;
    nats.kill();
    nats.restart().await?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("SMOKE").await?;
    assert_eq!(stream.info().await?.state.messages, 1);
    let message = stream.get_last_raw_message_by_subject("smoke.a").await?;
    assert_eq!(&message.payload[..], b"hello");
    Ok(())
}
