//! The cluster's journal in NATS JetStream end to end: a 3-member etcd, a nats-server with
//! JetStream, two real Chroma servers and three proxy replicas (as processes) with
//! `[cluster] nats_url`. Python writers on all three replicas, on overlapping ids (one busy
//! collection every mixed writer shares) and on ids of their own (every call logged); the
//! replica owning the busiest collection is killed with SIGKILL mid-run and not restarted. Its
//! journal entries and intents are in the stream: a survivor takes the collection over (fences
//! the dead owner, settles its intents from the primary after the takeover grace, replays its
//! entries). After the drain both stores are identical, every acknowledged write is on both,
//! `verify` exits 0.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use shift_cluster::member::MemberRecord;
use shift_cluster::owner::owner;
use shift_cluster::stream::{JournalStream, StreamSettings};
use shift_testkit::collection::{collection_id, count};
use shift_testkit::etcd::EtcdCluster;
use shift_testkit::nats::NatsServer;
use shift_testkit::scrape::wait_drained;
use shift_testkit::stores::{assert_same_records, check_acked_log, two_stores};
use shift_testkit::wait::wait_until;
use shift_testkit::{python, Chroma, Proxy, ProxyProcess};

/// Bounds that only turn a hang into a failure.
const LIMIT: Duration = Duration::from_secs(180);
/// Bound on the drain after the load (it takes seconds).
const DRAIN: Duration = Duration::from_secs(60);
/// The replicas' takeover grace.
const GRACE: Duration = Duration::from_secs(3);

/// The `[mirror]` and `[cluster]` sections of replica `member`.
fn cluster_toml(etcd: &EtcdCluster, nats: &NatsServer, member: &str) -> String {
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    format!(
        "[mirror]\nmode = \"journaled\"\nretry_initial = \"50ms\"\nretry_max = \"1s\"\n\
         [cluster]\netcd_endpoints = [{}]\nmember_id = \"{member}\"\nlease_ttl = \"3s\"\netcd_timeout = \"1s\"\n\
         nats_url = \"{}\"\nstream_replicas = 1\ntakeover_grace = \"{}s\"\n",
        endpoints.join(", "),
        nats.url(),
        GRACE.as_secs()
    )
}

async fn replicas(
    etcd: &EtcdCluster,
    nats: &NatsServer,
    old: &Chroma,
    new: &Chroma,
) -> anyhow::Result<Vec<ProxyProcess>> {
    let mut started = Vec::new();
    for i in 0..3 {
        let proxy = Proxy::in_front_of(old, new)
            .toml(&cluster_toml(etcd, nats, &format!("proxy-{i}")))
            .spawn_process()
            .await?;
        started.push(proxy);
    }
    Ok(started)
}

/// Python writers through every replica, tolerating the errors of the killed one.
async fn writers(
    urls: &[String],
    mode: &str,
    prefix: &str,
    collections: &str,
    acked: Option<String>,
) -> anyhow::Result<Value> {
    let spread = urls.join(",");
    let mut args: Vec<String> = [
        "--url",
        &urls[0],
        "--spread",
        &spread,
        "--writers",
        "6",
        "--ops",
        "80",
        "--collections",
        collections,
        "--seed",
        "21",
        "--mode",
        mode,
        "--prefix",
        prefix,
        "--pause-ms",
        "30",
        "--tolerate-errors",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    if let Some(acked) = acked {
        args.extend(["--acked".to_owned(), acked]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = python::run_script("writers.py", &args, LIMIT).await?;
    Ok(serde_json::from_str(
        output.stdout.lines().last().unwrap_or_default(),
    )?)
}

/// What the journal stream holds, subject by subject: to tell why a drain did not end.
async fn dump_journal(nats: &NatsServer) -> anyhow::Result<String> {
    let stream = JournalStream::open(
        &nats.url(),
        StreamSettings {
            name: "CHROMA_SHIFT".into(),
            subject_prefix: "chroma_shift".into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
        },
    )
    .await?;
    let mut out = String::new();
    for (subject, count) in stream.subject_counts("chroma_shift.>").await? {
        out += &format!("{subject}: {count}\n");
        let mut position = 0;
        while let Some(message) = stream.next_after(&subject, position).await? {
            position = message.sequence;
            let header = |name: &str| {
                message
                    .headers
                    .get(name)
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default()
            };
            out += &format!(
                "  {} {} owner={} {}\n",
                message.sequence,
                header("Chroma-Shift-Kind"),
                header("Chroma-Shift-Owner"),
                String::from_utf8_lossy(&message.payload[..message.payload.len().min(120)])
            );
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_busiest_owner_killed_mid_run_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let etcd = EtcdCluster::start(3).await?;
    let nats = NatsServer::start().await?;
    let (old, new) = two_stores().await?;
    let mut proxies = replicas(&etcd, &nats, &old, &new).await?;
    let urls: Vec<String> = proxies.iter().map(ProxyProcess::url).collect();
    let dir = tempfile::tempdir()?;
    let acked: PathBuf = dir.path().join("acked.jsonl");

    // Six mixed writers share one collection (the busiest, overlapping ids); six more write
    // ids of their own over three collections.
    let load = {
        let urls = urls.clone();
        let acked = acked.display().to_string();
        tokio::spawn(async move {
            tokio::try_join!(
                writers(&urls, "mixed", "busy", "1", None),
                writers(&urls, "owned", "own", "3", Some(acked)),
            )
        })
    };
    // The busiest collection's owner, once the load runs.
    let mut id = None;
    for _ in 0..(LIMIT.as_millis() / 100) {
        if let Ok(found) = collection_id(&urls[1], "busy-0").await {
            id = Some(found);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = id.ok_or_else(|| anyhow::anyhow!("busy-0 was never created"))?;
    let members: Vec<MemberRecord> = (0..3)
        .map(|i| MemberRecord {
            id: format!("proxy-{i}"),
            address: String::new(),
        })
        .collect();
    let victim_id = owner(&members, &id).expect("three members").id.clone();
    let victim = members.iter().position(|m| m.id == victim_id).expect("one");
    // Mid-run: once both loads run (their writers start together, past a barrier, so records
    // in a collection of each load mean all of them are writing).
    let url = urls[(victim + 1) % 3].clone();
    let mut watched = vec![id.clone()];
    for _ in 0..(LIMIT.as_millis() / 100) {
        if let Ok(own) = collection_id(&url, "own-0").await {
            watched.push(own);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for collection in watched {
        let url = url.clone();
        wait_until("both loads write", LIMIT, || {
            let (url, collection) = (url.clone(), collection.clone());
            async move { Ok(count(&url, &collection).await? >= 5) }
        })
        .await?;
    }
    proxies[victim].kill9().await?;
    eprintln!("killed {victim_id}, owner of busy-0 ({id})");

    let (mixed, owned) = load.await??;
    // The dead replica's intents are settled by the new owners once the takeover grace has
    // passed; then the journal drains through the survivors.
    tokio::time::sleep(GRACE * 3).await;
    let survivors: Vec<&ProxyProcess> = proxies
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, p)| p)
        .collect();
    for proxy in &survivors {
        if let Err(error) = wait_drained(&proxy.admin_url(), "new", DRAIN).await {
            let dump = dump_journal(&nats).await?;
            anyhow::bail!("{error:#}\n{dump}\n{}", proxy.log_tail(60));
        }
    }
    let compared = assert_same_records(&old.url(), &new.url()).await?;
    let checked = check_acked_log(&acked, &[("old", &old.url()), ("new", &new.url())]).await?;
    assert!(checked.present > 0, "{checked:?}");
    assert!(
        mixed["acked"].as_u64().unwrap_or(0) + mixed["ops"].as_u64().unwrap_or(0) > 0,
        "{mixed}"
    );
    survivors[0].verify().await?;
    eprintln!(
        "{mixed}; {owned}; {checked:?}; {compared:?}; {}",
        json!({"killed": victim_id})
    );
    Ok(())
}
