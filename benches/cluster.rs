//! Write latency and throughput through three cluster-mode replicas against one embedded proxy,
//! measured in the same run on the same two Chroma servers.
//!
//! - `embedded`: one proxy process (journaled, the default), no `[cluster]`;
//! - `cluster`: three proxy processes with `[cluster]` on a 3-member etcd (loopback, data in
//!   /dev/shm) and the journal in NATS JetStream (one nats-server, `sync_interval: always`,
//!   one stream replica), the clients spread evenly over them: a write reaching a replica
//!   that does not own its collection is forwarded to the owner (about two writes in three
//!   here), and every write's intent and entry are fenced appends to the stream.
//!
//! Each target writes `add` requests (10 records of 384 dims, ids never used before) closed-loop
//! with C clients into its own collection, made through it. Rounds alternate between the two
//! targets in mirrored order (E C, C E, ...); after each round the journals drain (not part of
//! the rate). Reported: requests/s, latency p50/p99 per target (all rounds together), and the
//! cluster's throughput and p50 as ratios to the embedded proxy's (median of the rounds).
//!
//! Run: `cargo bench -p chroma-shift-benches --bench cluster` (about 1.5 minutes plus the build).
//! Knobs: `BENCH_CLIENTS` (C, default 6: two per replica), `BENCH_ROUNDS` (per target, default
//! 4), `BENCH_ROUND_SECS` (default 5), `BENCH_PROXY_LOG`, `SHIFT_BENCH_PROXY_BIN`, `BENCH_OUT`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use chroma_shift_benches::bodies::AddBodies;
use chroma_shift_benches::load::{client, histogram, median_min_max, run_round, HttpClient};
use chroma_shift_benches::proc::Server;
use chroma_shift_benches::proxy::{start_proxy, wait_replayed, ProxyOptions};
use chroma_shift_benches::report::{load_average, machine_lines, publish};
use chroma_shift_benches::{create_collection, env_count, env_var, run_bench, scratch_dir};
use hdrhistogram::Histogram;
use shift_testkit::etcd::EtcdCluster;
use shift_testkit::nats::NatsServer;
use shift_testkit::Chroma;

struct Settings {
    clients: usize,
    rounds: usize,
    round: Duration,
    proxy: ProxyOptions,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        Ok(Settings {
            clients: env_count("BENCH_CLIENTS", 6, 1..=64)?,
            rounds: env_count("BENCH_ROUNDS", 4, 1..=50)?,
            round: Duration::from_secs(env_var("BENCH_ROUND_SECS", 5)?),
            proxy: ProxyOptions {
                mirror_mode: Some("journaled".to_owned()),
                ..ProxyOptions::from_env("embedded")?
            },
        })
    }
}

/// One target: where its clients send their adds.
struct Target {
    name: &'static str,
    /// Each replica's add URL, with its clients (spread evenly).
    lanes: Vec<(http::Uri, Vec<HttpClient>)>,
    admins: Vec<String>,
    bodies: AddBodies,
    latency: Histogram<u64>,
    /// Requests per second of each round.
    rates: Vec<f64>,
    p50s: Vec<f64>,
}

impl Target {
    async fn new(
        name: &'static str,
        proxies: &[Server],
        clients: usize,
        seed: u64,
    ) -> anyhow::Result<Target> {
        let collection = create_collection(&proxies[0].url, &format!("bench_{name}")).await?;
        let mut lanes = Vec::new();
        for (i, proxy) in proxies.iter().enumerate() {
            let uri: http::Uri = format!(
                "{}{}/{collection}/add",
                proxy.url,
                chroma_shift_benches::COLLECTIONS
            )
            .parse()?;
            let n = clients / proxies.len() + usize::from(i < clients % proxies.len());
            lanes.push((uri, (0..n).map(|_| client()).collect()));
        }
        Ok(Target {
            name,
            lanes,
            admins: proxies.iter().filter_map(|p| p.admin.clone()).collect(),
            bodies: AddBodies::new(seed, name),
            latency: histogram(),
            rates: Vec::new(),
            p50s: Vec::new(),
        })
    }

    /// One round of `limit`: every lane at once; then waits for the journals to drain.
    async fn round(&mut self, limit: Duration) -> anyhow::Result<()> {
        // More bodies than a round can send (ids are never reused).
        let bodies = Arc::new(self.bodies.take(4000)?);
        let started = Instant::now();
        let lanes: Vec<_> = self
            .lanes
            .iter()
            .map(|(uri, clients)| {
                let (uri, clients) = (uri.clone(), clients.clone());
                let bodies: Arc<Vec<Bytes>> = bodies.clone();
                tokio::spawn(async move {
                    run_round(&clients, &uri, bodies, usize::MAX / 2, limit).await
                })
            })
            .collect();
        let mut round = histogram();
        let mut requests = 0;
        for lane in lanes {
            let (latency, n, _) = lane.await??;
            round.add(&latency)?;
            requests += n;
        }
        let elapsed = started.elapsed().as_secs_f64();
        self.latency.add(&round)?;
        self.rates.push(requests as f64 / elapsed);
        self.p50s.push(round.value_at_quantile(0.5) as f64 / 1000.0);
        for admin in &self.admins {
            wait_replayed(Some(admin), Duration::from_secs(120)).await;
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    run_bench(Settings::from_env, bench)
}

async fn bench(settings: Settings) -> anyhow::Result<()> {
    let wall = Instant::now();
    let load_before = load_average();
    let dir = scratch_dir("cluster-")?;
    eprintln!(
        "starting etcd (3 members), a nats-server, two Chroma servers, one embedded proxy, three replicas..."
    );
    let etcd = EtcdCluster::start(3).await?;
    let nats = NatsServer::start().await?;
    let (old, new) = tokio::try_join!(Chroma::spawn(), Chroma::spawn())?;
    let embedded = start_proxy(&settings.proxy, dir.path(), &old.url(), &new.url()).await?;
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    let mut replicas = Vec::new();
    for i in 0..3 {
        let options = ProxyOptions {
            name: format!("replica-{i}"),
            extra_tables: format!(
                "[cluster]\netcd_endpoints = [{}]\nmember_id = \"replica-{i}\"\nlease_ttl = \"5s\"\netcd_timeout = \"2s\"\nnats_url = \"{}\"\nstream_replicas = 1\n",
                endpoints.join(", "),
                nats.url()
            ),
            ..settings.proxy.clone()
        };
        replicas.push(start_proxy(&options, dir.path(), &old.url(), &new.url()).await?);
    }
    let mut targets = [
        Target::new(
            "embedded",
            std::slice::from_ref(&embedded),
            settings.clients,
            1,
        )
        .await?,
        Target::new("cluster", &replicas, settings.clients, 2).await?,
    ];
    // Warm-up: one short round each, not counted.
    for target in &mut targets {
        target.round(Duration::from_secs(1)).await?;
        target.latency = histogram();
        target.rates.clear();
        target.p50s.clear();
    }
    for round in 0..settings.rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            eprintln!("round {round}: {}", targets[i].name);
            targets[i].round(settings.round).await?;
        }
    }
    let load_after = load_average();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "## cluster: writes through three replicas against the embedded proxy\n\n{}\n- command: `cargo bench -p chroma-shift-benches --bench cluster` (C={}, {} rounds of {:?} per target)\n- run took {:.0} s\n",
        machine_lines(&load_before, &load_after),
        settings.clients,
        settings.rounds,
        settings.round,
        wall.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        text,
        "| target | add req/s (median of rounds) | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|"
    );
    for target in &targets {
        let (rate, _, _) = median_min_max(target.rates.clone());
        let ms = |q: f64| target.latency.value_at_quantile(q) as f64 / 1000.0;
        let _ = writeln!(
            text,
            "| {} | {rate:.1} | {:.2} | {:.2} | {:.2} |",
            target.name,
            ms(0.5),
            ms(0.99),
            target.latency.max() as f64 / 1000.0
        );
    }
    let (embedded_rate, _, _) = median_min_max(targets[0].rates.clone());
    let (cluster_rate, _, _) = median_min_max(targets[1].rates.clone());
    let (embedded_p50, _, _) = median_min_max(targets[0].p50s.clone());
    let (cluster_p50, _, _) = median_min_max(targets[1].p50s.clone());
    let _ = writeln!(
        text,
        "\ncluster / embedded: throughput x{:.2}, p50 latency x{:.2} (medians of the rounds)",
        cluster_rate / embedded_rate,
        cluster_p50 / embedded_p50
    );
    drop(replicas);
    drop(embedded);
    drop(etcd);
    drop(nats);
    publish(&text).context("the report")
}
