//! The cluster mode end to end: a 3-member etcd, two real Chroma servers and three proxy
//! replicas (as processes) joined through `[cluster]`.
//!
//! - Python writers spread over the three replicas, on shared collections, one load on
//!   overlapping ids and one where each writer logs its own records: the replicas forward each
//!   collection's writes to its owner; after the drain both stores are identical, every
//!   acknowledged write is on both, every replica answers the same collection ids, `verify`
//!   exits 0.
//! - etcd losing quorum: writes refused with a clear, Chroma-shaped 503, reads served for
//!   `read_grace`, then refused too; both taken again when quorum returns.
//! - with a recording shim in front of each store (`shift_testkit::recording`): a cutover
//!   under load, then a rollback coordinated by another replica: every replica on the
//!   committed topology, no client write reaches the old primary after the commit (the
//!   commit time from the cutover record in etcd), no write a client saw acknowledged lost;
//! - a replica stopped (SIGSTOP) past its lease, then continued: no write a client saw
//!   acknowledged is lost; it rejoins by itself and coordinates the next cutover (a cutover
//!   that commits while a replica is cut off leaves that replica's journal entries for the
//!   new primary waiting until the journal is shared: see deploy/README.md);
//! - kill -9 of the replica owning the busiest collection mid-run, restarted on its state.
//!
//! The journal is in NATS JetStream (`nats_url`): every test starts a nats-server with
//! JetStream (`sync_interval: always`) next to etcd. `tests/cluster_journal.rs` kills the
//! busiest owner without restarting it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use shift_cluster::member::MemberRecord;
use shift_cluster::owner::owner;
use shift_testkit::collection::{collection_id, count, get_or_create_collection};
use shift_testkit::etcd::EtcdCluster;
use shift_testkit::nats::NatsServer;
use shift_testkit::recording::{Recorded, RecordingShim};
use shift_testkit::scrape::{metric_sum, metrics_text, wait_drained};
use shift_testkit::stores::{assert_same_records, check_acked_log, two_stores};
use shift_testkit::wait::wait_until;
use shift_testkit::{admin_call, http_json, python, Chroma, Proxy, ProxyProcess, ADMIN_TOKEN};

/// Bounds that only turn a hang into a failure.
const LIMIT: Duration = Duration::from_secs(120);

/// The `[mirror]` and `[cluster]` sections of replica `member` (`read_grace` as given).
fn cluster_toml(etcd: &EtcdCluster, nats: &NatsServer, member: &str, read_grace: &str) -> String {
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    format!(
        "[mirror]\nmode = \"journaled\"\nretry_initial = \"50ms\"\nretry_max = \"1s\"\n\
         [cluster]\netcd_endpoints = [{}]\nmember_id = \"{member}\"\nlease_ttl = \"3s\"\netcd_timeout = \"1s\"\n\
         read_grace = \"{read_grace}\"\nnats_url = \"{}\"\nstream_replicas = 1\ntakeover_grace = \"3s\"\n",
        endpoints.join(", "),
        nats.url()
    )
}

async fn replicas(
    etcd: &EtcdCluster,
    nats: &NatsServer,
    old: &Chroma,
    new: &Chroma,
    n: usize,
) -> anyhow::Result<Vec<ProxyProcess>> {
    replicas_at(etcd, nats, &old.url(), &new.url(), n, "30s").await
}

/// `n` replicas in front of the stores at `old` and `new` (URLs: the shims, say).
async fn replicas_at(
    etcd: &EtcdCluster,
    nats: &NatsServer,
    old: &str,
    new: &str,
    n: usize,
    read_grace: &str,
) -> anyhow::Result<Vec<ProxyProcess>> {
    let mut started = Vec::new();
    for i in 0..n {
        let proxy = Proxy::builder()
            .old(old)
            .new_store(new)
            .toml(&cluster_toml(etcd, nats, &format!("proxy-{i}"), read_grace))
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
    let nats = NatsServer::start().await?;
    let (old, new) = two_stores().await?;
    let proxies = replicas(&etcd, &nats, &old, &new, 3).await?;
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
    proxies[0].verify().await?;
    eprintln!("{mixed}; {summary}; {answered} forwarded; {checked:?}; {compared:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_quorum_writes_are_refused_reads_served_and_both_come_back(
) -> anyhow::Result<()> {
    let mut etcd = EtcdCluster::start(3).await?;
    let nats = NatsServer::start().await?;
    let (old, new) = two_stores().await?;
    let proxies = replicas_at(&etcd, &nats, &old.url(), &new.url(), 2, "3s").await?;
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
    // Past the read grace (3s) reads are refused too, in Chroma's shape, naming the lease.
    let count_url = format!(
        "{}/{id}/count",
        shift_testkit::collection::collections_url(&url)
    );
    let waiting = std::time::Instant::now();
    let refused_read = loop {
        let (status, answer) = http_json("GET", &count_url, None).await?;
        if status == http::StatusCode::SERVICE_UNAVAILABLE {
            break answer;
        }
        assert!(status.is_success(), "{status} {answer}");
        anyhow::ensure!(
            waiting.elapsed() < LIMIT,
            "reads still served long past the read grace"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused_read["error"].is_string(), "{refused_read}");
    let message = refused_read["message"].as_str().unwrap_or_default();
    assert!(message.contains("read grace"), "{refused_read}");

    etcd.restart(0).await?;
    etcd.restart(1).await?;
    let mut i = 10_000;
    wait_until("writes taken again once etcd has quorum", LIMIT, || {
        i += 1;
        let attempt = add(i);
        async move { Ok(attempt.await?.0.is_success()) }
    })
    .await?;
    // Reads are served again, by every replica.
    for proxy in &proxies {
        let url = proxy.url();
        wait_until("reads served again", LIMIT, || {
            let read = count(&url, &id);
            async move { Ok(read.await.is_ok()) }
        })
        .await?;
    }
    for proxy in &proxies {
        wait_drained(&proxy.admin_url(), "new", LIMIT).await?;
    }
    assert_same_records(&old.url(), &new.url()).await?;
    Ok(())
}

/// Two Chroma servers, each behind a recording shim, and `n` replicas in front of the shims.
struct Rig {
    etcd: EtcdCluster,
    _nats: NatsServer,
    old: Chroma,
    new: Chroma,
    /// In front of old and new.
    shims: [RecordingShim; 2],
    proxies: Vec<ProxyProcess>,
    dir: tempfile::TempDir,
}

impl Rig {
    async fn start(n: usize) -> anyhow::Result<Rig> {
        let etcd = EtcdCluster::start(3).await?;
        let nats = NatsServer::start().await?;
        let (old, new) = two_stores().await?;
        let shims = [
            RecordingShim::start(&old.url()).await?,
            RecordingShim::start(&new.url()).await?,
        ];
        let proxies = replicas_at(&etcd, &nats, &shims[0].url(), &shims[1].url(), n, "30s").await?;
        Ok(Rig {
            etcd,
            _nats: nats,
            old,
            new,
            shims,
            proxies,
            dir: tempfile::tempdir()?,
        })
    }

    fn urls(&self) -> Vec<String> {
        self.proxies.iter().map(ProxyProcess::url).collect()
    }

    /// Python writers in `owned` mode over every replica, logging to `<prefix>.jsonl`; errors
    /// tolerated (counted) when `tolerate`.
    fn writers(
        &self,
        prefix: &str,
        seed: &str,
        ops: &str,
        tolerate: bool,
    ) -> (PathBuf, tokio::task::JoinHandle<anyhow::Result<Value>>) {
        let acked = self.dir.path().join(format!("{prefix}.jsonl"));
        let urls = self.urls();
        let mut args: Vec<String> = [
            "--url",
            &urls[0],
            "--spread",
            &urls.join(","),
            "--writers",
            "6",
            "--ops",
            ops,
            "--collections",
            "3",
            "--seed",
            seed,
            "--mode",
            "owned",
            "--prefix",
            prefix,
            "--pause-ms",
            "20",
            "--acked",
            &acked.display().to_string(),
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        if tolerate {
            args.push("--tolerate-errors".to_owned());
        }
        let task = tokio::spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let output = python::run_script("writers.py", &args, LIMIT).await?;
            let summary: Value =
                serde_json::from_str(output.stdout.lines().last().unwrap_or_default())?;
            anyhow::Ok(summary)
        });
        (acked, task)
    }

    /// Waits until shim `shim` has seen `n` client writes.
    async fn client_writes_reach(&self, shim: usize, n: usize) -> anyhow::Result<()> {
        let shim = &self.shims[shim];
        wait_until("client writes reaching the store", LIMIT, || {
            let seen = shim
                .log()
                .iter()
                .filter(|r| r.is_write() && r.from_client)
                .count();
            async move { Ok(seen >= n) }
        })
        .await
    }

    /// A cutover or rollback through replica `i`: its report and the commit's Unix ms.
    async fn switch(&self, i: usize, verb: &str) -> anyhow::Result<(Value, u64)> {
        let (status, report) = admin_call(
            &self.proxies[i].admin_url(),
            ADMIN_TOKEN,
            "POST",
            &format!("/admin/{verb}"),
            Some(json!({"timeout": "30s"})),
        )
        .await?;
        anyhow::ensure!(
            status.is_success() && report["switched"] == json!(true),
            "{verb}: {status} {report}\n{}",
            self.proxies[i].log_tail(30)
        );
        let record = self
            .etcd
            .get("/chroma-shift/switch")
            .await?
            .context("no cutover record in etcd")?;
        let record: Value = serde_json::from_slice(&record)?;
        anyhow::ensure!(
            record["phase"] == json!("committed") && record["epoch"] == report["epoch"],
            "{record} after {report}"
        );
        let committed = record["committed_ms"].as_u64().context("no commit time")?;
        Ok((report, committed))
    }

    /// Waits until every replica serves `epoch` with `primary`.
    async fn every_replica_at(&self, epoch: u64, primary: &str) -> anyhow::Result<()> {
        for proxy in &self.proxies {
            let admin = proxy.admin_url();
            wait_until("the replica on the committed topology", LIMIT, || {
                let status = admin_call(&admin, ADMIN_TOKEN, "GET", "/admin/status", None);
                async move {
                    let (_, status) = status.await?;
                    Ok(status["topology"]["epoch"] == json!(epoch)
                        && status["topology"]["primary"] == json!(primary))
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Every journal drained, both stores identical, every acknowledged write of `logs` on
    /// both, the same collection ids from every replica, `verify` exits 0.
    async fn converged(&self, prefixes: &[&str], logs: &[PathBuf]) -> anyhow::Result<()> {
        for proxy in &self.proxies {
            for target in ["old", "new"] {
                wait_drained(&proxy.admin_url(), target, LIMIT)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", proxy.log_tail(40)))?;
            }
        }
        assert_same_records(&self.old.url(), &self.new.url()).await?;
        for log in logs {
            let stores = [("old", &*self.old.url()), ("new", &*self.new.url())];
            let checked = check_acked_log(log, &stores).await?;
            assert!(checked.present > 0, "{checked:?}");
        }
        let urls = self.urls();
        for prefix in prefixes {
            for k in 0..3 {
                let name = format!("{prefix}-{k}");
                let mut ids = Vec::new();
                for url in &urls {
                    ids.push(collection_id(url, &name).await?);
                }
                assert!(ids.windows(2).all(|w| w[0] == w[1]), "{name}: {ids:?}");
            }
        }
        self.proxies[0].verify().await
    }
}

/// The client writes `shim` saw arrive in `[from, until)` (Unix ms).
fn client_writes_between(shim: &RecordingShim, from: u64, until: u64) -> Vec<Recorded> {
    shim.log()
        .into_iter()
        .filter(|r| r.is_write() && r.from_client && r.arrived_ms >= from && r.arrived_ms < until)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_then_a_rollback_under_load_commit_on_every_replica_and_no_write_reaches_the_old_primary_after(
) -> anyhow::Result<()> {
    let rig = Rig::start(3).await?;
    let (cutover_log, writing) = rig.writers("co", "21", "60", false);
    rig.client_writes_reach(0, 20).await?;
    let (report, cutover_ms) = rig.switch(0, "cutover").await?;
    rig.every_replica_at(2, "new").await?;
    let summary = writing.await??;
    assert_eq!(summary["errors"], json!(0), "{summary}");

    let (rollback_log, writing) = rig.writers("rb", "22", "60", false);
    wait_until("client writes on new", LIMIT, || {
        let more = client_writes_between(&rig.shims[1], cutover_ms, u64::MAX).len();
        async move { Ok(more >= 20) }
    })
    .await?;
    // The second cutover is coordinated by another replica.
    let (_, rollback_ms) = rig.switch(1, "rollback").await?;
    rig.every_replica_at(3, "old").await?;
    let summary = writing.await??;
    assert_eq!(summary["errors"], json!(0), "{summary}");

    // Client writes (a User-Agent: the proxy's own replay sends none) reached old before the
    // cutover and never between the commits; new took them only between the commits.
    assert!(!client_writes_between(&rig.shims[0], 0, cutover_ms).is_empty());
    let late = client_writes_between(&rig.shims[0], cutover_ms, rollback_ms);
    assert!(
        late.is_empty(),
        "writes reached old after the cutover's commit: {late:?}"
    );
    assert!(client_writes_between(&rig.shims[1], 0, cutover_ms).is_empty());
    let late = client_writes_between(&rig.shims[1], rollback_ms, u64::MAX);
    assert!(
        late.is_empty(),
        "writes reached new after the rollback's commit: {late:?}"
    );
    rig.converged(&["co", "rb"], &[cutover_log, rollback_log])
        .await?;
    eprintln!("cutover: {report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_past_its_lease_loses_no_acknowledged_write_and_rejoins_for_the_next_cutover(
) -> anyhow::Result<()> {
    let rig = Rig::start(3).await?;
    let (log, writing) = rig.writers("st", "31", "150", true);
    rig.client_writes_reach(0, 20).await?;
    let stopped = rig.proxies[2].pid().context("replica 2 runs")?;
    signal(stopped, "STOP").await?;
    // Past its lease (3s): the others see it gone and own its collections.
    tokio::time::sleep(Duration::from_secs(6)).await;
    signal(stopped, "CONT").await?;
    // What it had queued meanwhile it refuses (its lease ran out) or forwards; it rejoins by
    // itself and takes writes again.
    let id = collection_id(&rig.proxies[0].url(), "st-0").await?;
    let add_url = format!(
        "{}/{id}/add",
        shift_testkit::collection::collections_url(&rig.proxies[2].url())
    );
    let mut n = 0;
    wait_until("replica 2 takes writes again", LIMIT, || {
        n += 1;
        let body = json!({"ids": [format!("rejoined-{n}")], "embeddings": [vec![0.5_f32; 8]]});
        let add = http_json("POST", &add_url, Some(body));
        async move { Ok(add.await?.0.is_success()) }
    })
    .await?;
    // The rejoined replica coordinates a cutover under load; no client write reaches old
    // after its commit.
    let (_, commit_ms) = rig.switch(2, "cutover").await?;
    rig.every_replica_at(2, "new").await?;
    let summary = writing.await??;
    let late = client_writes_between(&rig.shims[0], commit_ms, u64::MAX);
    assert!(
        late.is_empty(),
        "writes reached old after the commit: {late:?}"
    );
    rig.converged(&["st"], &[log]).await?;
    eprintln!("writers: {summary}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_of_the_busiest_collection_mid_run_loses_no_acknowledged_write(
) -> anyhow::Result<()> {
    let mut rig = Rig::start(3).await?;
    let (log, writing) = rig.writers("k9", "41", "80", true);
    rig.client_writes_reach(0, 30).await?;
    // The busiest collection now, and its owner (rendezvous hashing over the three).
    let url = rig.proxies[0].url();
    let mut busiest = (0, String::new());
    for k in 0..3 {
        let id = collection_id(&url, &format!("k9-{k}")).await?;
        let held = count(&url, &id).await?;
        if held >= busiest.0 {
            busiest = (held, id);
        }
    }
    let members: Vec<MemberRecord> = rig
        .proxies
        .iter()
        .enumerate()
        .map(|(i, p)| MemberRecord {
            id: format!("proxy-{i}"),
            address: p.url(),
        })
        .collect();
    let owner = owner(&members, &busiest.1).context("an owner")?;
    let victim: usize = owner.id.trim_start_matches("proxy-").parse()?;
    rig.proxies[victim].kill9().await?;
    // Past its lease the others own its collections; then it comes back on its state dir.
    tokio::time::sleep(Duration::from_secs(4)).await;
    rig.proxies[victim].restart().await?;
    let summary = writing.await??;
    assert!(summary["acked"].as_u64().unwrap_or(0) > 100, "{summary}");
    rig.converged(&["k9"], &[log]).await?;
    eprintln!("killed {}; writers: {summary}", owner.id);
    Ok(())
}

/// Sends `signal` to process `pid`.
async fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid}: {status}");
    Ok(())
}

#[tokio::test]
async fn the_cluster_manifest_is_three_stateless_replicas_with_a_disruption_budget(
) -> anyhow::Result<()> {
    let dir = shift_testkit::repo_root().join("deploy/kubernetes");
    let mut files: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let output = python::run_script("yaml_to_json.py", &args, LIMIT).await?;
    let docs: Value = serde_json::from_str(&output.stdout)?;
    let of_kind = |file: &str, kind: &str| -> anyhow::Result<Value> {
        docs[file]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["kind"] == json!(kind)))
            .cloned()
            .with_context(|| format!("no {kind} in {file}"))
    };
    let deployment = of_kind("cluster.yaml", "Deployment")?;
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], json!(3));
    assert_eq!(
        spec["strategy"]["rollingUpdate"]["maxUnavailable"],
        json!(0)
    );
    assert!(spec["volumeClaimTemplates"].is_null(), "{spec}");
    let pod = &spec["template"]["spec"];
    for volume in pod["volumes"].as_array().context("volumes")? {
        assert!(
            volume["persistentVolumeClaim"].is_null(),
            "a replica holds no durable volume: {volume}"
        );
    }
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels);
    let budget = of_kind("cluster.yaml", "PodDisruptionBudget")?;
    assert_eq!(budget["spec"]["minAvailable"], json!(2));
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], labels);
    let service = of_kind("service.yaml", "Service")?;
    assert_eq!(&service["spec"]["selector"], labels);
    let container = &pod["containers"][0];
    let env: Vec<&Value> = container["env"].as_array().context("env")?.iter().collect();
    let named = |name: &str| env.iter().find(|e| e["name"] == json!(name)).copied();
    let member = named("CHROMA_SHIFT_CLUSTER__MEMBER_ID").context("member id")?;
    assert_eq!(
        member["valueFrom"]["fieldRef"]["fieldPath"],
        json!("metadata.name")
    );
    assert!(named("CHROMA_SHIFT_CLUSTER__INTERNAL_ADDRESS").is_some());
    // The shipped config plus the [cluster] section deploy/README.md gives loads, and the
    // kubelet waits longer than the drain.
    let toml = std::fs::read_to_string(dir.join("chroma-shift.toml"))?;
    let config = shift_config::Config::from_toml(&format!(
        "{toml}\n[cluster]\netcd_endpoints = [\"http://etcd-0.etcd:2379\"]\nmember_id = \"chroma-shift-cluster-abc\"\ninternal_address = \"http://10.0.0.7:8000\"\n"
    ))?;
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .context("grace")?;
    assert!(grace > config.server.shutdown_grace.as_secs());
    Ok(())
}
