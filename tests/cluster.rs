//! The cluster mode end to end: a 3-member etcd, two real Chroma servers and three proxy
//! replicas (as processes) joined through `[cluster]`.
//!
//! - Python writers spread over the three replicas, on shared collections, one load on
//!   overlapping ids and one where each writer logs its own records: the replicas forward each
//!   collection's writes to its owner; after the drain both stores are identical, every
//!   acknowledged write is on both, every replica answers the same collection ids, `verify`
//!   exits 0.
//! - etcd losing quorum: writes refused with a clear, Chroma-shaped 503, reads served;
//!   writes taken again when quorum returns.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use shift_testkit::collection::{collection_id, count, get_or_create_collection};
use shift_testkit::etcd::EtcdCluster;
use shift_testkit::process::run_chroma_shift;
use shift_testkit::scrape::{metric_sum, metrics_text, wait_drained};
use shift_testkit::stores::{assert_same_records, check_acked_log, two_stores};
use shift_testkit::wait::wait_until;
use shift_testkit::{http_json, python, Chroma, Proxy, ProxyProcess, ADMIN_TOKEN};

/// Bounds that only turn a hang into a failure.
const LIMIT: Duration = Duration::from_secs(120);

/// The `[mirror]` and `[cluster]` sections of replica `member`.
fn cluster_toml(etcd: &EtcdCluster, member: &str) -> String {
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    format!(
        "[mirror]\nmode = \"journaled\"\nretry_initial = \"50ms\"\nretry_max = \"1s\"\n\
         [cluster]\netcd_endpoints = [{}]\nmember_id = \"{member}\"\nlease_ttl = \"3s\"\netcd_timeout = \"1s\"\n",
        endpoints.join(", ")
    )
}

async fn replicas(
    etcd: &EtcdCluster,
    old: &Chroma,
    new: &Chroma,
    n: usize,
) -> anyhow::Result<Vec<ProxyProcess>> {
    let mut started = Vec::new();
    for i in 0..n {
        let proxy = Proxy::in_front_of(old, new)
            .toml(&cluster_toml(etcd, &format!("proxy-{i}")))
            .spawn_process()
            .await?;
        started.push(proxy);
    }
    Ok(started)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_leave_both_stores_identical_with_the_same_collection_ids(
) -> anyhow::Result<()> {
    let etcd = EtcdCluster::start(3).await?;
    let (old, new) = two_stores().await?;
    let proxies = replicas(&etcd, &old, &new, 3).await?;
    let urls: Vec<String> = proxies.iter().map(ProxyProcess::url).collect();
    let dir = tempfile::tempdir()?;
    let acked: PathBuf = dir.path().join("acked.jsonl");
    let acked_arg = acked.display().to_string();
    let spread = urls.join(",");
    let writers = |mode: &'static str, prefix: &'static str, seed: &'static str| {
        let mut args = vec![
            "--url",
            &urls[0],
            "--spread",
            &spread,
            "--writers",
            "6",
            "--ops",
            "30",
            "--collections",
            "3",
            "--seed",
            seed,
            "--mode",
            mode,
            "--prefix",
            prefix,
        ];
        if mode == "owned" {
            args.extend(["--acked", acked_arg.as_str()]);
        }
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let output = python::run_script("writers.py", &args, LIMIT).await?;
            let summary: Value =
                serde_json::from_str(output.stdout.lines().last().unwrap_or_default())?;
            assert_eq!(summary["errors"], json!(0), "{mode}: {summary}");
            anyhow::Ok(summary)
        }
    };
    // Overlapping ids (mixed) and logged own ids (owned), at once.
    let (mixed, summary) =
        tokio::try_join!(writers("mixed", "mx", "5"), writers("owned", "dw", "13"))?;
    assert!(summary["acked"].as_u64().unwrap_or(0) >= 150, "{summary}");

    for proxy in &proxies {
        wait_drained(&proxy.admin_url(), "new", LIMIT)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}\n{}", proxy.log_tail(40)))?;
    }
    let compared = assert_same_records(&old.url(), &new.url()).await?;
    let checked = check_acked_log(&acked, &[("old", &old.url()), ("new", &new.url())]).await?;
    assert!(checked.present > 0, "{checked:?}");
    let (mut answered, mut lost) = (0.0, 0.0);
    for proxy in &proxies {
        let text = metrics_text(&proxy.admin_url()).await?;
        let forwarded = |outcome| {
            metric_sum(
                &text,
                "chroma_shift_cluster_forwarded_total",
                &[("outcome", outcome)],
            )
        };
        answered += forwarded("answered");
        lost += forwarded("unreachable") + forwarded("failed");
    }
    assert!(answered > 0.0, "no write was forwarded to its owner");
    assert_eq!(lost, 0.0, "forwards failed with every replica up");
    for name in (0..3).flat_map(|k| [format!("dw-{k}"), format!("mx-{k}")]) {
        let mut ids = Vec::new();
        for url in &urls {
            ids.push(collection_id(url, &name).await?);
        }
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{name}: {ids:?}");
        assert!(count(&urls[2], &ids[0]).await? > 0, "{name} is empty");
    }
    let (code, out, err) = run_chroma_shift(
        &proxies[0].admin_url(),
        ADMIN_TOKEN,
        &[
            "verify",
            "--config",
            &proxies[0].config_path().display().to_string(),
        ],
    )
    .await?;
    assert_eq!(code, 0, "verify:\n{out}\n{err}");
    eprintln!("{mixed}; {summary}; {answered} forwarded; {checked:?}; {compared:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_quorum_writes_are_refused_reads_served_and_both_come_back(
) -> anyhow::Result<()> {
    let mut etcd = EtcdCluster::start(3).await?;
    let (old, new) = two_stores().await?;
    let proxies = replicas(&etcd, &old, &new, 2).await?;
    let url = proxies[1].url();
    let id = get_or_create_collection(&proxies[0].url(), "quorum").await?;
    let add = |i: usize| {
        let url = format!(
            "{}/{id}/add",
            shift_testkit::collection::collections_url(&url)
        );
        let body = json!({"ids": [format!("r{i}")], "embeddings": [[i as f32, 1.0]]});
        async move { http_json("POST", &url, Some(body)).await }
    };
    let (status, answer) = add(0).await?;
    assert!(status.is_success(), "{status} {answer}");

    etcd.kill(0);
    etcd.kill(1);
    let mut refused = None;
    for i in 1.. {
        let (status, answer) = add(i).await?;
        if status == http::StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(answer);
            break;
        }
        assert!(status.is_success(), "{status} {answer}");
        anyhow::ensure!(i < 400, "writes were still taken without etcd quorum");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("the loop ends on a refusal");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(refused["error"].is_string(), "{refused}");
    assert!(message.contains("lease"), "{refused}");
    // Reads are served from the primary meanwhile, by every replica.
    let held = count(&url, &id).await?;
    assert!(held >= 1, "{held}");
    assert_eq!(count(&proxies[0].url(), &id).await?, held);

    etcd.restart(0).await?;
    etcd.restart(1).await?;
    let mut i = 10_000;
    wait_until("writes taken again once etcd has quorum", LIMIT, || {
        i += 1;
        let attempt = add(i);
        async move { Ok(attempt.await?.0.is_success()) }
    })
    .await?;
    for proxy in &proxies {
        wait_drained(&proxy.admin_url(), "new", LIMIT).await?;
    }
    assert_same_records(&old.url(), &new.url()).await?;
    Ok(())
}
