//! What a flood of slow large request bodies does to the proxy next to a normal query load:
//! the proxy's resident memory and the queries' p50, p99 and throughput, against the same
//! query load alone.
//!
//! Run: `cargo bench -p chroma-shift-benches --bench overload` (about a minute and a half).
//!
//! Two real Chroma servers (1.5.9, from `.venv`), the proxy in its own process (see
//! `src/proxy.rs`) with the shipped defaults: `[server.limits]` 512 requests in flight, a body
//! budget of 128 MiB, a body read timeout of 30 s; `max_body` 64 MiB. A collection of 1,000
//! 384-dimension records is preloaded through the proxy.
//!
//! - Query load: Q closed-loop clients (default 4), each query one 384-dimension embedding
//!   with n_results=10, the same load generator as `proxy_overhead`.
//! - Flood: F clients (default 32), each on its own connection, declare an add of 8 MiB and
//!   send 7.5 MiB of it at 4 MiB/s, then stall. When the proxy answers (503 at once when the
//!   budget is full, 408 once the read timeout passed) a client waits a second (the answer's
//!   `Retry-After`) and starts again. At the end of a flood round the clients hang up.
//!
//! Rounds alternate, alone and with the flood (A F, F A, ...), R of each (default 3) of T
//! seconds (default 6). The proxy's resident set (`VmRSS` from /proc) is sampled every 20 ms,
//! its buffered body bytes (`chroma_shift_body_bytes_buffered`) every 250 ms. Traffic goes to
//! 127.0.0.1 only; every wait is bounded.
//!
//! Knobs (environment): `BENCH_ROUND_SECS` (default 6), `BENCH_ROUNDS` (per kind, default 3),
//! `BENCH_QUERY_CLIENTS` (4), `BENCH_FLOOD_CLIENTS` (32), and those of `ProxyOptions`
//! (`BENCH_PROXY_LOG`, `BENCH_STATE_PARENT`, `SHIFT_BENCH_PROXY_BIN`), `BENCH_OUT`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use chroma_shift_benches::bodies::{add_body, query_body, Vectors, DIM};
use chroma_shift_benches::load::{client, histogram, median_min_max, run_round, HttpClient};
use chroma_shift_benches::proc::{find_chroma_pid, shutdown_chroma, Server};
use chroma_shift_benches::proxy::{start_proxy, ProxyOptions};
use chroma_shift_benches::report::{cores, cpu_model, load_average, publish, utc_now};
use chroma_shift_benches::{
    create_collection, env_count, env_var, run_bench, scratch_dir, COLLECTIONS,
};
use hdrhistogram::Histogram;
use shift_testkit::process::resident_bytes;
use shift_testkit::Chroma;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const PRELOAD: usize = 1_000;
const PRELOAD_BATCH: usize = 100;
const QUERY_BODIES: usize = 64;
const MIB: usize = 1 << 20;
/// What a flood client declares, and how much of it it sends before stalling.
const FLOOD_DECLARED: usize = 8 * MIB;
const FLOOD_SENT: usize = FLOOD_DECLARED - MIB / 2;
/// 64 KiB every 16 ms: 4 MiB/s per client.
const FLOOD_PIECE: usize = 64 << 10;
const FLOOD_PAUSE: Duration = Duration::from_millis(16);

fn main() -> anyhow::Result<()> {
    run_bench(Settings::from_env, bench)
}

struct Settings {
    round: Duration,
    rounds: usize,
    query_clients: usize,
    flood_clients: usize,
    proxy: ProxyOptions,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let round: f64 = env_var("BENCH_ROUND_SECS", 6.0)?;
        if !(1.0..=60.0).contains(&round) {
            bail!("BENCH_ROUND_SECS must be in 1..=60");
        }
        Ok(Settings {
            round: Duration::from_secs_f64(round),
            rounds: env_count("BENCH_ROUNDS", 3, 1..=20)?,
            query_clients: env_count("BENCH_QUERY_CLIENTS", 4, 1..=64)?,
            flood_clients: env_count("BENCH_FLOOD_CLIENTS", 32, 1..=256)?,
            proxy: ProxyOptions::from_env("proxy")?,
        })
    }
}

/// What one round measured.
struct Measured {
    latency: Histogram<u64>,
    requests: u64,
    elapsed: Duration,
    /// The proxy's largest resident set in the round.
    max_rss: u64,
    /// The largest buffered-bytes gauge seen in the round.
    max_buffered: u64,
}

/// How the proxy answered the flood.
#[derive(Default)]
struct FloodAnswers {
    shed: AtomicU64,
    timed_out: AtomicU64,
    other: AtomicU64,
    /// Connections that ended without an answer read (a reset can lose the answer to a
    /// refused body the client was still sending).
    reset: AtomicU64,
}

async fn bench(settings: Settings) -> anyhow::Result<()> {
    let wall = Instant::now();
    let load_before = load_average();
    let dir = scratch_dir("overload")?;
    eprintln!("starting two Chroma servers and the proxy...");
    let (old, new) = tokio::try_join!(Chroma::spawn(), Chroma::spawn())?;
    let proxy = start_proxy(&settings.proxy, dir.path(), &old.url(), &new.url()).await?;
    let pid = proxy.pid().context("the proxy has no pid")?;
    let addr: SocketAddr = proxy.url.trim_start_matches("http://").parse()?;

    eprintln!("preloading {PRELOAD} records through the proxy...");
    let mut vectors = Vectors(0x000f_100d);
    let collection = create_collection(&proxy.url, "bench_overload").await?;
    for batch in 0..PRELOAD / PRELOAD_BATCH {
        let ids: Vec<String> = (0..PRELOAD_BATCH)
            .map(|i| format!("pre-{}", batch * PRELOAD_BATCH + i))
            .collect();
        let url = format!("{}{COLLECTIONS}/{collection}/add", proxy.url);
        let (status, body) =
            shift_testkit::http_json("POST", &url, Some(add_body(&mut vectors, &ids))).await?;
        if !status.is_success() {
            bail!("preload answered {status}: {body}");
        }
    }
    let queries: Arc<Vec<Bytes>> = Arc::new(
        (0..QUERY_BODIES)
            .map(|_| Ok(Bytes::from(serde_json::to_vec(&query_body(&mut vectors))?)))
            .collect::<anyhow::Result<_>>()?,
    );
    let query_uri: http::Uri = format!("{}{COLLECTIONS}/{collection}/query", proxy.url).parse()?;
    let clients: Vec<HttpClient> = (0..settings.query_clients).map(|_| client()).collect();
    // Warm-up: connections open, the query path hot.
    run_round(
        &clients,
        &query_uri,
        queries.clone(),
        usize::MAX,
        Duration::from_secs(1),
    )
    .await?;
    let rss_before = resident_bytes(pid)?;

    let answers = Arc::new(FloodAnswers::default());
    let mut given_back = Duration::ZERO;
    let mut alone = Vec::new();
    let mut flooded = Vec::new();
    for round in 0..settings.rounds * 2 {
        // A F F A A F ...: each kind gets the early and the late slots alike.
        let flood = (round % 4 == 1) || (round % 4 == 2);
        eprintln!(
            "round {} of {}: {}",
            round + 1,
            settings.rounds * 2,
            if flood {
                "queries + flood"
            } else {
                "queries alone"
            }
        );
        let (stop, stopped) = watch::channel(false);
        let flood_tasks: Vec<_> = if flood {
            (0..settings.flood_clients)
                .map(|_| {
                    tokio::spawn(flood_client(
                        addr,
                        collection.clone(),
                        stopped.clone(),
                        answers.clone(),
                    ))
                })
                .collect()
        } else {
            Vec::new()
        };
        let sampler = tokio::spawn(sample(pid, proxy.admin.clone(), stopped.clone()));
        let (latency, requests, elapsed) = run_round(
            &clients,
            &query_uri,
            queries.clone(),
            usize::MAX,
            settings.round,
        )
        .await?;
        let _ = stop.send(true);
        for task in flood_tasks {
            task.await?;
        }
        let (max_rss, max_buffered) = sampler.await??;
        if flood {
            // The flood hung up: its bodies' share of the budget comes back before the next
            // round.
            let hung_up = Instant::now();
            while buffered(proxy.admin.as_deref()).await != Some(0) {
                if hung_up.elapsed() > Duration::from_secs(10) {
                    bail!("the body budget was not given back within 10 s of the flood's end");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            given_back = given_back.max(hung_up.elapsed());
        }
        let measured = Measured {
            latency,
            requests,
            elapsed,
            max_rss,
            max_buffered,
        };
        if flood {
            flooded.push(measured);
        } else {
            alone.push(measured);
        }
    }

    let report = report(
        &settings,
        &Report {
            alone: &alone,
            flooded: &flooded,
            answers: &answers,
            rss_before,
            given_back,
            load_before: &load_before,
            load_after: &load_average(),
            wall: wall.elapsed(),
            chroma_pids: (
                find_chroma_pid(old.addr().port()),
                find_chroma_pid(new.addr().port()),
            ),
        },
    );
    publish(&report)?;
    drop(clients);
    drop::<Server>(proxy);
    tokio::join!(shutdown_chroma(old), shutdown_chroma(new));
    Ok(())
}

/// One flood client: declare a large add, trickle most of it, stall; start again after the
/// proxy's answer, until `stop`.
async fn flood_client(
    addr: SocketAddr,
    collection: String,
    mut stop: watch::Receiver<bool>,
    answers: Arc<FloodAnswers>,
) {
    let head = format!(
        "POST {COLLECTIONS}/{collection}/add HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nContent-Length: {FLOOD_DECLARED}\r\n\r\n"
    );
    let piece = vec![b' '; FLOOD_PIECE];
    while !*stop.borrow() {
        let Ok(stream) = TcpStream::connect(addr).await else {
            answers.reset.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let (mut read, mut write) = stream.into_split();
        // Sends, then stalls; a write the proxy refused (it answered and closed) ends the
        // sending, not the wait for the answer.
        let send = async {
            let _ = async {
                write.write_all(head.as_bytes()).await?;
                write
                    .write_all(b"{\"ids\": [\"flood\"], \"documents\": [")
                    .await?;
                let mut sent = 0;
                while sent < FLOOD_SENT {
                    write.write_all(&piece).await?;
                    sent += piece.len();
                    tokio::time::sleep(FLOOD_PAUSE).await;
                }
                std::io::Result::Ok(())
            }
            .await;
            std::future::pending::<()>().await
        };
        let answer = async {
            let mut first = [0u8; 12];
            read.read_exact(&mut first).await.map(|_| {
                // "HTTP/1.1 503"
                std::str::from_utf8(&first[9..12])
                    .ok()
                    .and_then(|s| s.parse::<u16>().ok())
            })
        };
        let status = tokio::select! {
            _ = stop.changed() => return,
            () = send => None,
            status = answer => status.ok().flatten(),
        };
        match status {
            Some(503) => answers.shed.fetch_add(1, Ordering::Relaxed),
            Some(408) => answers.timed_out.fetch_add(1, Ordering::Relaxed),
            Some(_) => answers.other.fetch_add(1, Ordering::Relaxed),
            None => answers.reset.fetch_add(1, Ordering::Relaxed),
        };
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Samples the proxy's resident set every 20 ms and its buffered bytes every 250 ms until
/// `stop`; the largest of each.
async fn sample(
    pid: u32,
    admin: Option<String>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<(u64, u64)> {
    let (mut rss, mut buffered_max) = (resident_bytes(pid)?, 0);
    let mut tick = 0u64;
    loop {
        rss = rss.max(resident_bytes(pid)?);
        if tick.is_multiple_of(12) {
            buffered_max = buffered_max.max(buffered(admin.as_deref()).await.unwrap_or(0));
        }
        tick += 1;
        tokio::select! {
            _ = stop.changed() => return Ok((rss, buffered_max)),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// The proxy's `chroma_shift_body_bytes_buffered`.
async fn buffered(admin: Option<&str>) -> Option<u64> {
    let value = shift_testkit::scrape::metric(admin?, "chroma_shift_body_bytes_buffered", &[])
        .await
        .ok()??;
    Some(value as u64)
}

struct Report<'a> {
    alone: &'a [Measured],
    flooded: &'a [Measured],
    answers: &'a FloodAnswers,
    rss_before: u64,
    /// The longest wait after a flood round until no body bytes were buffered.
    given_back: Duration,
    load_before: &'a str,
    load_after: &'a str,
    wall: Duration,
    chroma_pids: (Option<u32>, Option<u32>),
}

/// The `CHROMA_SHIFT_SERVER__*` overrides the proxy inherits, for the report.
fn overrides() -> String {
    let set: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("CHROMA_SHIFT_SERVER__"))
        .map(|(k, v)| format!("`{k}={v}`"))
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!(" except {}", set.join(", "))
    }
}

/// p50, p99 (ms), queries/s, largest RSS and buffered bytes (MiB) over the rounds of a kind.
fn merged(rounds: &[Measured]) -> (f64, f64, f64, f64, f64) {
    let mut latency = histogram();
    let (mut requests, mut elapsed) = (0, Duration::ZERO);
    for round in rounds {
        latency.add(&round.latency).expect("same bounds");
        requests += round.requests;
        elapsed += round.elapsed;
    }
    let mib = |b: u64| b as f64 / MIB as f64;
    (
        latency.value_at_quantile(0.50) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
        requests as f64 / elapsed.as_secs_f64().max(1e-9),
        mib(rounds.iter().map(|r| r.max_rss).max().unwrap_or(0)),
        mib(rounds.iter().map(|r| r.max_buffered).max().unwrap_or(0)),
    )
}

fn report(settings: &Settings, r: &Report<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## overload\n");
    let _ = writeln!(
        out,
        "- date (UTC): {}\n- machine: {} cores, {}\n- load average before / after: {} / {}\n\
         - proxy: {}, shipped defaults (`[server.limits]` max_in_flight 512, body_budget 128 MiB, \
         body_read_timeout 30 s; max_body 64 MiB){}, log level `{}`\n\
         - queries: {} closed-loop clients, 1 x {DIM} dims, n_results 10, {PRELOAD} records\n\
         - flood: {} clients, each declaring {} MiB and sending {:.1} MiB at 4 MiB/s, then stalling\n\
         - {} rounds of each kind of {:?}, alternating; wall time {:.0} s; Chroma pids found: {}",
        utc_now(),
        cores(),
        cpu_model(),
        r.load_before,
        r.load_after,
        settings.proxy.describe_process(),
        overrides(),
        settings.proxy.log_level,
        settings.query_clients,
        settings.flood_clients,
        FLOOD_DECLARED / MIB,
        FLOOD_SENT as f64 / MIB as f64,
        settings.rounds,
        settings.round,
        r.wall.as_secs_f64(),
        r.chroma_pids.0.is_some() && r.chroma_pids.1.is_some(),
    );
    let (a50, a99, athr, arss, abuf) = merged(r.alone);
    let (f50, f99, fthr, frss, fbuf) = merged(r.flooded);
    let _ = writeln!(
        out,
        "\n| scenario | query p50 (ms) | query p99 (ms) | queries/s | proxy RSS max (MiB) | bodies buffered max (MiB) |\n\
         |---|---:|---:|---:|---:|---:|\n\
         | queries alone | {a50:.2} | {a99:.2} | {athr:.0} | {arss:.0} | {abuf:.0} |\n\
         | queries + flood | {f50:.2} | {f99:.2} | {fthr:.0} | {frss:.0} | {fbuf:.0} |\n\
         | flood / alone | {:.2} | {:.2} | {:.2} | +{:.0} MiB | |",
        f50 / a50,
        f99 / a99,
        fthr / athr,
        frss - arss,
    );
    let rate = |m: &Measured| m.requests as f64 / m.elapsed.as_secs_f64().max(1e-9);
    let pair: Vec<f64> = r
        .flooded
        .iter()
        .zip(r.alone)
        .map(|(f, a)| rate(f) / rate(a))
        .collect();
    let (median, low, high) = median_min_max(pair);
    let _ = writeln!(
        out,
        "\n- throughput flood / alone per round pair: median {median:.2} (min {low:.2}, max {high:.2})\n\
         - proxy RSS after warm-up, before any flood: {:.0} MiB; the largest in a flood round is \
         {:.0} MiB above it (the body budget: {}); rounds alone after a flood keep what the \
         allocator kept of the freed bodies\n\
         - flood answers: {} shed with 503, {} cut off with 408, {} other, {} connections ended \
         without an answer read\n\
         - after each flood round hung up, its bodies' bytes were all given back within {:?}",
        r.rss_before as f64 / MIB as f64,
        (r.flooded.iter().map(|m| m.max_rss).max().unwrap_or(0) as f64 - r.rss_before as f64)
            / MIB as f64,
        std::env::var("CHROMA_SHIFT_SERVER__LIMITS__BODY_BUDGET").unwrap_or("128MiB".to_owned()),
        r.answers.shed.load(Ordering::Relaxed),
        r.answers.timed_out.load(Ordering::Relaxed),
        r.answers.other.load(Ordering::Relaxed),
        r.answers.reset.load(Ordering::Relaxed),
        r.given_back,
    );
    out
}
