//! What dual writing costs, as ratios against baselines measured in the same run:
//!
//! 1. **Client-visible write latency and throughput.** `add` (10 records of 384 dims, ids never
//!    used before) closed-loop at C=1 and C=8 through the proxy in `journaled` mode and in
//!    `sync` mode, against the same adds sent directly to the primary (`direct`). Same
//!    machinery as `proxy_overhead`: real Chroma servers (`old` = primary, `new` = secondary),
//!    each proxy as its own process, warm-up, rounds alternating between the targets in
//!    mirrored order, CPU per request from /proc, and after each round a wait until the
//!    proxy's journal is empty ("catch-up", not part of req/s). Each target adds to its own
//!    collection (made through that target), so the collections grow alike.
//! 2. **Replay throughput.** The new Chroma is stopped (killed, as a crash), N adds are written
//!    through the journaled proxy so they queue in its journal, the new Chroma is started again
//!    and the time until the journal depth (`/metrics`) reaches 0 is the drain time, from the
//!    moment the restarted Chroma answered its heartbeat. Baselines: the same N batches posted
//!    directly to the new Chroma one at a time (what a client replaying them would do), and the
//!    same records in requests as large as the replay's merged ones (what Chroma can ingest in
//!    bulk). Every variant starts right after a restart of the new Chroma, into a fresh
//!    collection; the order of the variants is mirrored between repetitions. The proxies
//!    retry a down secondary every 20-100 ms here (`retry_initial`/`retry_max`; the defaults
//!    are 100 ms-30 s), so the back-off adds at most ~0.1 s to the drain.
//! 3. **Journal appends with group commit.** `shift_state::StateStore` in a fresh temp dir (in
//!    `BENCH_STATE_PARENT` or the temp dir, like the proxy's state), entries appended one per
//!    `append` call from 1, 8 and 64 concurrent tasks on a multi-threaded runtime until a
//!    fixed count; appends/s, commits and appends per commit from `commit_stats()`, against
//!    1 task (one append at a time, one fsync each). Two payloads: the journal entry of a real
//!    10-record 384-dim add (`MirrorOp::Records` as the proxy serializes it: about 80 KB,
//!    since each float is written with up to 17 digits) and a 20 KB entry (about what the
//!    official Python client sends for such an add: it encodes embeddings as base64 float32).
//!    Rounds mirror the order too. Runs first, before any Chroma server is started.
//!
//! Run: `cargo bench -p chroma-shift-benches --bench dual_write` (about 1.5 minutes on 2 quiet
//! cores, 2.5 under other load, plus the build).
//!
//! Knobs (environment): `BENCH_ROUNDS` (rounds per target in part 1, default 6),
//! `BENCH_ROUND_SECS` (default 1), `BENCH_WARMUP_SECS` (default 1), `BENCH_ADD_CAP`,
//! `BENCH_REPLAY_BATCHES` (N, default 400 adds = 4,000 records), `BENCH_REPLAY_REPS` (default
//! 2), `BENCH_JOURNAL_APPENDS` (per variant and round, default 2,000), `BENCH_JOURNAL_ROUNDS`
//! (default 3), `BENCH_PARTS` (a subset of `latency,replay,journal`), `BENCH_PROXY_LOG`,
//! `BENCH_STATE_PARENT`, `SHIFT_BENCH_PROXY_BIN`, `BENCH_OUT` (also write the report there).
//! Traffic goes to 127.0.0.1 only; every process it starts is stopped at the end (SIGTERM,
//! then SIGKILL after 5 s).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bytes::Bytes;
use chroma_shift_benches::bodies::{AddBodies, ADD_BATCH, DIM};
use chroma_shift_benches::load::{
    alternate_rounds, client, median_min_max, run_round, summarize, throughput_ratios, RoundTiming,
    Target,
};
use chroma_shift_benches::proc::{
    clock_ticks_per_second, cpu_seconds, find_chroma_pid, shutdown_chroma, Server,
};
use chroma_shift_benches::proxy::{
    journal_depth, proxy_child_main, start_proxy, wait_replayed, ProxyOptions,
};
use chroma_shift_benches::report::{load_average, machine_lines, print_rate, publish};
use chroma_shift_benches::{
    count, create_collection, env_count, env_var, max_batch_size, scratch_dir, COLLECTIONS,
};
use http::Uri;
use serde_json::Value;
use shift_config::BackendName;
use shift_proxy::mirror::{MirrorOp, RecordKind};
use shift_testkit::Chroma;

/// The replay worker reads this many journal entries at a time (`READ_AHEAD` in replay.rs);
/// its merged requests never span two reads.
const REPLAY_READ_AHEAD: usize = 512;
/// A merged replay request stops growing past this many bytes of journal payload
/// (`MERGED_BYTES` in replay.rs).
const REPLAY_MERGED_BYTES: usize = 8 * 1024 * 1024;
/// How the journaled proxy retries a secondary that is down, in this bench.
const FAST_RETRIES: &str = "retry_initial = \"20ms\"\nretry_max = \"100ms\"\n";
/// Bounds on the waits of part 2.
/// The smaller journal payload of part 3.
const JOURNAL_SMALL_BYTES: usize = 20_000;
const FILL_LIMIT: Duration = Duration::from_secs(120);
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

fn main() -> anyhow::Result<()> {
    if let Some(result) = proxy_child_main() {
        return result;
    }
    let settings = Settings::from_env()?;
    let wall = Instant::now();
    let load_before = load_average();
    let mut out = String::new();

    // Part 3 first, while no Chroma runs: on a multi-threaded runtime, like the proxy's.
    let journal = if settings.parts.journal {
        eprintln!(
            "journal appends: {} per variant and round",
            settings.journal_appends
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        Some(runtime.block_on(journal_bench(&settings))?)
    } else {
        None
    };

    // Parts 1 and 2: the load generator on one current-thread runtime, as in proxy_overhead.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (latency, replay) = runtime.block_on(servers_bench(&settings))?;
    let load_after = load_average();

    let _ = writeln!(out, "## dual_write\n");
    let _ = writeln!(
        out,
        "{}\n- Chroma 1.5.9 (`old` = primary, `new` = secondary), adds of {ADD_BATCH} records x {DIM} dims with new ids\n\
         - proxies: {}, log level `{}`, state dir in {}; wall time {:.0} s",
        machine_lines(&load_before, &load_after),
        settings.proxy.describe_process(),
        settings.proxy.log_level,
        settings.proxy.describe_state(),
        wall.elapsed().as_secs_f64()
    );
    if let Some(text) = latency {
        out.push_str(&text);
    }
    if let Some(text) = replay {
        out.push_str(&text);
    }
    if let Some(text) = journal {
        out.push_str(&text);
    }
    publish(&out)
}

// ---------------------------------------------------------------------------------------------
// Settings.

struct Parts {
    latency: bool,
    replay: bool,
    journal: bool,
}

struct Settings {
    /// Round length, warm-up and rounds per target.
    timing: RoundTiming,
    add_cap: usize,
    replay_batches: usize,
    replay_reps: usize,
    journal_appends: usize,
    journal_rounds: usize,
    parts: Parts,
    /// The proxies' common options (each gets its own name and mirror mode).
    proxy: ProxyOptions,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let timing = RoundTiming::from_env(6)?;
        let replay_batches = env_count("BENCH_REPLAY_BATCHES", 400, 8..=20_000)?;
        let replay_reps = env_count("BENCH_REPLAY_REPS", 2, 1..=10)?;
        let journal_appends = env_count("BENCH_JOURNAL_APPENDS", 2000, 64..=100_000)?;
        let journal_rounds = env_count("BENCH_JOURNAL_ROUNDS", 3, 1..=20)?;
        let parts_text: String = env_var("BENCH_PARTS", "latency,replay,journal".to_owned())?;
        let parts: Vec<&str> = parts_text.split(',').map(str::trim).collect();
        for part in &parts {
            ensure!(
                ["latency", "replay", "journal"].contains(part),
                "BENCH_PARTS: unknown part {part} (latency, replay, journal)"
            );
        }
        let mut proxy = ProxyOptions::from_env("proxy")?;
        // Each proxy gets its mode here; BENCH_MIRROR_MODE does not apply.
        proxy.mirror_mode = None;
        Ok(Settings {
            timing,
            add_cap: env_var("BENCH_ADD_CAP", 3_000)?,
            replay_batches,
            replay_reps,
            journal_appends,
            journal_rounds,
            parts: Parts {
                latency: parts.contains(&"latency"),
                replay: parts.contains(&"replay"),
                journal: parts.contains(&"journal"),
            },
            proxy,
        })
    }

    fn proxy(&self, name: &str, mode: &str) -> ProxyOptions {
        ProxyOptions {
            name: name.to_owned(),
            mirror_mode: Some(mode.to_owned()),
            mirror_extra: FAST_RETRIES.to_owned(),
            ..self.proxy.clone()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parts 1 and 2: the servers.

async fn servers_bench(settings: &Settings) -> anyhow::Result<(Option<String>, Option<String>)> {
    if !settings.parts.latency && !settings.parts.replay {
        return Ok((None, None));
    }
    let dir = scratch_dir("dw-")?;
    eprintln!("starting two Chroma servers (old, new)...");
    let (old, new) = tokio::try_join!(Chroma::spawn(), Chroma::spawn())?;
    let mut new = new;
    eprintln!("starting the proxies (journaled, sync)...");
    let result = async {
        // A proxy in `mode`, named after it.
        let start = |mode: &'static str| {
            let (options, dir) = (settings.proxy(mode, mode), dir.path());
            let (old, new) = (old.url(), new.url());
            async move { start_proxy(&options, dir, &old, &new).await }
        };
        let journaled = start("journaled").await?;
        let latency = if settings.parts.latency {
            let sync = start("sync").await?;
            let text = latency_bench(settings, &old, &new, &journaled, &sync).await;
            drop(sync);
            Some(text?)
        } else {
            None
        };
        let replay = if settings.parts.replay {
            Some(replay_bench(settings, &mut new, &journaled).await?)
        } else {
            None
        };
        drop(journaled);
        anyhow::Ok((latency, replay))
    }
    .await;
    tokio::join!(shutdown_chroma(old), shutdown_chroma(new));
    result
}

// ---------------------------------------------------------------------------------------------
// Part 1: client-visible latency and throughput.

async fn latency_bench(
    settings: &Settings,
    old: &Chroma,
    new: &Chroma,
    journaled: &Server,
    sync: &Server,
) -> anyhow::Result<String> {
    let old_pid = find_chroma_pid(old.addr().port());
    let new_pid = find_chroma_pid(new.addr().port());
    let mut targets = vec![
        Target::new("direct", old.url(), None, None),
        Target::new(
            "journaled",
            journaled.url.clone(),
            journaled.pid(),
            journaled.admin.clone(),
        ),
        Target::new("sync", sync.url.clone(), sync.pid(), sync.admin.clone()),
    ];
    // Each target adds to a collection it made itself (through the proxy, both stores have it).
    let mut uris = Vec::new();
    for target in &targets {
        let id = create_collection(&target.url, &format!("dw_{}", target.name)).await?;
        uris.push(format!("{}{COLLECTIONS}/{id}/add", target.url).parse::<Uri>()?);
    }
    wait_replayed(journaled.admin.as_deref(), Duration::from_secs(30)).await;
    let mut add_bodies = AddBodies::new(0xadd, "add");
    let ticks_per_second = clock_ticks_per_second();
    let plan = settings.timing.plan(settings.add_cap, true);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Write latency and throughput: add through the proxy (journaled, sync) vs direct to the primary\n\n\
         {} rounds per target of <= {:?} each, warm-up {:?}, targets alternating in mirrored order.\n\n\
         | C | via | requests | p50 ms | p99 ms | req/s | p50 x | p99 x | req/s x (rounds) | CPU us/req: old / new / proxy / client | catch-up s |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        plan.rounds, plan.round, plan.warmup
    );
    for concurrency in [1, 8] {
        eprintln!(
            "add C={concurrency}: warm-up {:?} per target, then {} rounds of <= {:?} per target",
            plan.warmup, plan.rounds, plan.round
        );
        let rounds = alternate_rounds(
            &mut targets,
            &uris,
            concurrency,
            &plan,
            [old_pid, new_pid],
            |n| Ok(Arc::new(add_bodies.take(n)?)),
        )
        .await?;
        let direct = summarize(&rounds[0], ticks_per_second);
        for (t, target) in targets.iter().enumerate() {
            let s = summarize(&rounds[t], ticks_per_second);
            let ratios = if t == 0 {
                "1 | 1 | 1".to_owned()
            } else {
                let (median, lo, hi) = throughput_ratios(&rounds[0], &rounds[t]);
                format!(
                    "{:.2} | {:.2} | {:.2} (med {median:.2}; {lo:.2}-{hi:.2})",
                    s.p50 / direct.p50,
                    s.p99 / direct.p99,
                    s.throughput / direct.throughput
                )
            };
            let (fwd, catch_up) = if t == 0 {
                ("-".to_owned(), "-".to_owned())
            } else {
                (
                    format!("{:.0}", s.cpu_per_request[2]),
                    format!("{:.1}", s.catch_up.as_secs_f64()),
                )
            };
            let _ = writeln!(
                out,
                "| {concurrency} | {} | {} | {:.2} | {:.2} | {:.1} | {ratios} | {:.0} / {:.0} / {fwd} / {:.0} | {catch_up} |",
                target.name,
                s.requests,
                s.p50,
                s.p99,
                s.throughput,
                s.cpu_per_request[0],
                s.cpu_per_request[1],
                s.cpu_per_request[3],
            );
        }
    }
    let _ = writeln!(
        out,
        "\n`x` = ratio to `direct` (latency above 1 is slower, req/s below 1 is slower); in brackets \
         the median, lowest and highest per-round throughput ratio. CPU = user+system time per \
         request from /proc, from a round's start to the end of its catch-up. Catch-up = mean wait \
         after a round until the proxy's journal was empty (not part of req/s)."
    );
    drop(targets);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Part 2: replay throughput.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ReplayVariant {
    /// The same 10-record adds, posted directly to the new Chroma one at a time.
    Direct,
    /// The same records, directly, in requests as large as the replay's merged ones.
    DirectMerged,
    /// Queued in the journal while the new Chroma was down, then replayed by the proxy.
    Replay,
}

impl ReplayVariant {
    fn name(self) -> &'static str {
        match self {
            ReplayVariant::Direct => "direct, same 10-record adds, 1 at a time",
            ReplayVariant::DirectMerged => "direct, same records in replay-sized requests",
            ReplayVariant::Replay => "proxy replay of the journal",
        }
    }
}

/// One measured ingest.
struct Ingest {
    variant: ReplayVariant,
    records: u64,
    seconds: f64,
    /// CPU seconds meanwhile: the new Chroma, the proxy, this process.
    cpu: [f64; 3],
    /// Replay only: how the adds were queued while the new Chroma was down (adds/s at C=8),
    /// and how long after the restart the depth first went down.
    fill_rate: Option<f64>,
    first_drop: Option<f64>,
}

async fn replay_bench(
    settings: &Settings,
    new: &mut Chroma,
    proxy: &Server,
) -> anyhow::Result<String> {
    let admin = proxy
        .admin
        .clone()
        .context("the proxy has no admin listener")?;
    let n = settings.replay_batches;
    let max_batch = max_batch_size(&new.url()).await?;
    let ticks_per_second = clock_ticks_per_second();
    let mut ingests: Vec<Vec<Ingest>> = Vec::new();
    let mut merged_size = 0;
    for rep in 0..settings.replay_reps {
        let bodies: Vec<Value> =
            AddBodies::new(0x7e9 + rep as u64, &format!("rp{rep}")).take_values(n);
        let serialized: Arc<Vec<Bytes>> = Arc::new(
            bodies
                .iter()
                .map(|b| Ok(Bytes::from(serde_json::to_vec(b)?)))
                .collect::<anyhow::Result<_>>()?,
        );
        // How the replay groups them: per read of 512 entries, runs of adds within the store's
        // max_batch_size records and 8 MiB of journal payload.
        let entry_size = MirrorOp::Records {
            kind: RecordKind::Add,
            collection: "x".repeat(36).into(),
            body: bodies[0].clone(),
        }
        .to_bytes()
        .len();
        let per_request = (max_batch / ADD_BATCH)
            .min(REPLAY_MERGED_BYTES / entry_size)
            .max(1);
        merged_size = per_request * ADD_BATCH;
        let merged: Arc<Vec<Bytes>> = Arc::new(
            bodies
                .chunks(REPLAY_READ_AHEAD)
                .flat_map(|read| read.chunks(per_request))
                .map(|group| Ok(Bytes::from(serde_json::to_vec(&merge_adds(group))?)))
                .collect::<anyhow::Result<_>>()?,
        );
        let mut variants = [
            ReplayVariant::Direct,
            ReplayVariant::DirectMerged,
            ReplayVariant::Replay,
        ];
        if rep % 2 == 1 {
            variants.reverse();
        }
        let mut results = Vec::new();
        for variant in variants {
            eprintln!("replay rep {rep}: {} ({n} adds)...", variant.name());
            let ingest = match variant {
                ReplayVariant::Direct | ReplayVariant::DirectMerged => {
                    let (name, requests) = if variant == ReplayVariant::Direct {
                        (format!("ingest_{rep}"), serialized.clone())
                    } else {
                        (format!("ingest_merged_{rep}"), merged.clone())
                    };
                    let id = create_collection(&new.url(), &name).await?;
                    new.restart().await?;
                    let new_pid = find_chroma_pid(new.addr().port());
                    let uri: Uri = format!("{}{COLLECTIONS}/{id}/add", new.url()).parse()?;
                    let pids = [new_pid, None, Some(std::process::id())];
                    let before = cpu_seconds(&pids, ticks_per_second);
                    let count_requests = requests.len();
                    let (_, sent, elapsed) =
                        run_round(&[client()], &uri, requests, count_requests, FILL_LIMIT).await?;
                    let after = cpu_seconds(&pids, ticks_per_second);
                    ensure!(
                        sent as usize == count_requests,
                        "direct ingest sent {sent} of {count_requests} requests within {FILL_LIMIT:?}"
                    );
                    let stored = count(&new.url(), &id).await?;
                    ensure!(
                        stored == (n * ADD_BATCH) as u64,
                        "{name} holds {stored} records, not {}",
                        n * ADD_BATCH
                    );
                    Ingest {
                        variant,
                        records: stored,
                        seconds: elapsed.as_secs_f64(),
                        cpu: cpu_delta(&before, &after),
                        fill_rate: None,
                        first_drop: None,
                    }
                }
                ReplayVariant::Replay => {
                    replay_once(
                        new,
                        proxy,
                        &admin,
                        &format!("replay_{rep}"),
                        serialized.clone(),
                        ticks_per_second,
                    )
                    .await?
                }
            };
            print_rate(ingest.records, ingest.seconds);
            results.push(ingest);
        }
        results.sort_by_key(|i| i.variant as u8);
        ingests.push(results);
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Replay throughput: draining the journal into the new store vs direct ingest\n\n\
         N = {n} adds of {ADD_BATCH} records ({} records) per variant; {} repetitions, variant order \
         mirrored between them; every variant starts right after a restart of the new Chroma, into \
         a fresh collection. Replay-sized requests = {merged_size} records (the new store's \
         max_batch_size is {max_batch}; 8 MiB of journal payload; reads of {REPLAY_READ_AHEAD} entries).\n\n\
         | rep | variant | records | s | records/s | x direct 10-record | x direct replay-sized | CPU s per 1k records: new / proxy / client |\n\
         |---:|---|---:|---:|---:|---:|---:|---|",
        n * ADD_BATCH,
        settings.replay_reps
    );
    let rate = |i: &Ingest| i.records as f64 / i.seconds.max(1e-9);
    let mut notes = Vec::new();
    for (rep, results) in ingests.iter().enumerate() {
        let direct = rate(&results[0]);
        let merged = rate(&results[1]);
        for ingest in results {
            let per_k = |cpu: f64| cpu * 1000.0 / ingest.records.max(1) as f64;
            let proxy_cpu = if ingest.variant == ReplayVariant::Replay {
                format!("{:.2}", per_k(ingest.cpu[1]))
            } else {
                "-".to_owned()
            };
            let _ = writeln!(
                out,
                "| {rep} | {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} / {proxy_cpu} / {:.2} |",
                ingest.variant.name(),
                ingest.records,
                ingest.seconds,
                rate(ingest),
                rate(ingest) / direct,
                rate(ingest) / merged,
                per_k(ingest.cpu[0]),
                per_k(ingest.cpu[2]),
            );
            if let (Some(fill), Some(first)) = (ingest.fill_rate, ingest.first_drop) {
                notes.push(format!(
                    "rep {rep}: the {n} adds were queued at {fill:.0} adds/s (C=8, new store down); \
                     the journal depth first went down {first:.2} s after the restart"
                ));
            }
        }
    }
    let _ = writeln!(
        out,
        "\nReplay seconds run from the restarted new Chroma answering its heartbeat (polled every \
         5 ms) to the journal depth (polled every 20 ms) reading 0; direct seconds from the first request \
         to the last answer. CPU from /proc over the same span (the client is this bench)."
    );
    for note in notes {
        let _ = writeln!(out, "- {note}");
    }
    Ok(out)
}

/// Stops the new Chroma, queues `bodies` through the proxy into a fresh collection, starts the
/// new Chroma again and times the drain.
async fn replay_once(
    new: &mut Chroma,
    proxy: &Server,
    admin: &str,
    name: &str,
    bodies: Arc<Vec<Bytes>>,
    ticks_per_second: u64,
) -> anyhow::Result<Ingest> {
    let n = bodies.len();
    let id = create_collection(&proxy.url, name).await?;
    wait_replayed(Some(admin), Duration::from_secs(30)).await;
    ensure!(
        journal_depth(admin).await == Some(0),
        "the journal is not empty before the replay test"
    );
    new.stop().await?;
    let uri: Uri = format!("{}{COLLECTIONS}/{id}/add", proxy.url).parse()?;
    let clients: Vec<_> = (0..8).map(|_| client()).collect();
    let (_, sent, elapsed) = run_round(&clients, &uri, bodies, n, FILL_LIMIT).await?;
    ensure!(
        sent as usize == n,
        "only {sent} of {n} adds went through the proxy within {FILL_LIMIT:?}"
    );
    let fill_rate = sent as f64 / elapsed.as_secs_f64();
    let depth = journal_depth(admin).await.unwrap_or(0);
    ensure!(
        depth as usize >= n,
        "the journal holds {depth} entries after {n} adds with the new store down"
    );
    // The restart returns once its own heartbeat poll succeeds; the replay worker may reach
    // the store before that, so the drain is timed from this bench's own, faster, poll.
    let port = new.addr().port();
    let heartbeat = format!("{}/api/v2/heartbeat", new.url());
    let drain = async {
        let deadline = Instant::now() + DRAIN_LIMIT;
        loop {
            if let Ok((status, _, _)) =
                shift_testkit::http("GET", &heartbeat, &[], Bytes::new()).await
            {
                if status.is_success() {
                    break;
                }
            }
            ensure!(
                Instant::now() < deadline,
                "the new Chroma did not come back"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        let pids = [find_chroma_pid(port), proxy.pid(), Some(std::process::id())];
        let before = cpu_seconds(&pids, ticks_per_second);
        let mut first_drop = None;
        loop {
            let depth_now = journal_depth(admin).await.unwrap_or(u64::MAX);
            if depth_now < depth && first_drop.is_none() {
                first_drop = Some(started.elapsed().as_secs_f64());
            }
            if depth_now == 0 {
                break;
            }
            ensure!(
                started.elapsed() < DRAIN_LIMIT,
                "the journal did not drain within {DRAIN_LIMIT:?} (depth {depth_now})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let after = cpu_seconds(&pids, ticks_per_second);
        anyhow::Ok((seconds, cpu_delta(&before, &after), first_drop))
    };
    let (restarted, drained) = tokio::join!(new.restart(), drain);
    restarted?;
    let (seconds, cpu, first_drop) = drained?;
    // The new store's id of the collection: the proxy made it there when it was created.
    let new_id = chroma_shift_benches::collection_id(&new.url(), name)
        .await?
        .context("the replayed collection is not on the new store")?;
    let stored = count(&new.url(), &new_id).await?;
    ensure!(
        stored == (n * ADD_BATCH) as u64,
        "after the replay the new store holds {stored} records of {name}, not {}",
        n * ADD_BATCH
    );
    Ok(Ingest {
        variant: ReplayVariant::Replay,
        records: stored,
        seconds,
        cpu,
        fill_rate: Some(fill_rate),
        first_drop,
    })
}

/// One add body holding the records of `bodies`.
fn merge_adds(bodies: &[Value]) -> Value {
    let mut merged = serde_json::Map::new();
    for field in ["ids", "embeddings", "documents", "metadatas"] {
        let values: Vec<Value> = bodies
            .iter()
            .flat_map(|b| b[field].as_array().cloned().unwrap_or_default())
            .collect();
        merged.insert(field.to_owned(), Value::Array(values));
    }
    Value::Object(merged)
}

fn cpu_delta(before: &[f64], after: &[f64]) -> [f64; 3] {
    let mut delta = [0.0; 3];
    for (i, d) in delta.iter_mut().enumerate() {
        *d =
            (after.get(i).copied().unwrap_or(0.0) - before.get(i).copied().unwrap_or(0.0)).max(0.0);
    }
    delta
}

// ---------------------------------------------------------------------------------------------
// Part 3: journal appends with group commit.

struct AppendRun {
    seconds: f64,
    commits: u64,
    requests: u64,
    entries: u64,
}

async fn journal_bench(settings: &Settings) -> anyhow::Result<String> {
    let count = settings.journal_appends;
    // The journal entries of real adds, as the proxy journals them (`MirrorOp::Records`).
    let real: Vec<Vec<u8>> = AddBodies::new(0x10e, "journal")
        .take_values(16)
        .into_iter()
        .map(|body| {
            MirrorOp::Records {
                kind: RecordKind::Add,
                collection: "9a4c1a34-6f3b-4f55-8d0e-5b8f0f6c2a11".into(),
                body,
            }
            .to_bytes()
        })
        .collect();
    // And 20 KB entries (the store never looks inside a payload).
    let small: Vec<Vec<u8>> = real
        .iter()
        .map(|p| p[..JOURNAL_SMALL_BYTES.min(p.len())].to_vec())
        .collect();
    let sizes = [
        ("10-record add", Arc::new(real)),
        ("20 KB", Arc::new(small)),
    ];
    let parent = settings
        .proxy
        .state_parent
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let variants = [1usize, 8, 64];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Journal appends with group commit (`shift_state::StateStore`, fsync per commit)\n\n\
         {count} appends (one entry per `append` call) per variant and round, from 1, 8 or 64 \
         concurrent tasks, {} rounds in mirrored order, a fresh store in {} each time; \
         multi-threaded tokio runtime ({} workers). Payloads: the journal entry of a \
         {ADD_BATCH}-record {DIM}-dim add as the proxy writes it (float arrays), and a 20 KB \
         entry (about the official Python client's add, which sends base64 float32).\n\n\
         | payload | tasks | appends/s median (min-max) | MB/s | commits per run | appends per commit | x 1 task (rounds) |\n\
         |---|---:|---:|---:|---:|---:|---:|",
        settings.journal_rounds,
        parent.display(),
        chroma_shift_benches::report::cores(),
    );
    for (label, payloads) in sizes {
        let payload_bytes = payloads.iter().map(Vec::len).sum::<usize>() / payloads.len();
        let mut runs: Vec<Vec<AppendRun>> = variants.iter().map(|_| Vec::new()).collect();
        for round in 0..settings.journal_rounds {
            let mut order: Vec<usize> = (0..variants.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for v in order {
                let run = append_run(&parent, variants[v], count, payloads.clone()).await?;
                eprintln!(
                    "  journal {label}: {} task(s), round {round}: {:.0} appends/s, {:.1} appends/commit",
                    variants[v],
                    run.entries as f64 / run.seconds,
                    run.requests as f64 / run.commits.max(1) as f64
                );
                runs[v].push(run);
            }
        }
        let rate = |r: &AppendRun| r.entries as f64 / r.seconds.max(1e-9);
        let baseline: Vec<f64> = runs[0].iter().map(rate).collect();
        for (v, tasks) in variants.iter().enumerate() {
            let rates: Vec<f64> = runs[v].iter().map(rate).collect();
            let (median, lo, hi) = median_min_max(rates.clone());
            let ratios: Vec<f64> = rates.iter().zip(&baseline).map(|(r, b)| r / b).collect();
            let (r_med, r_lo, r_hi) = median_min_max(ratios);
            let commits =
                runs[v].iter().map(|r| r.commits).sum::<u64>() as f64 / runs[v].len() as f64;
            let per_commit = runs[v].iter().map(|r| r.requests).sum::<u64>() as f64
                / runs[v].iter().map(|r| r.commits).sum::<u64>().max(1) as f64;
            let ratio = if *tasks == 1 {
                "1".to_owned()
            } else {
                format!("{r_med:.2} ({r_lo:.2}-{r_hi:.2})")
            };
            let _ = writeln!(
                out,
                "| {label}, {:.1} KB | {tasks} | {median:.0} ({lo:.0}-{hi:.0}) | {:.1} | {commits:.0} | {per_commit:.1} | {ratio} |",
                payload_bytes as f64 / 1000.0,
                median * payload_bytes as f64 / 1e6,
            );
        }
    }
    let _ = writeln!(
        out,
        "\nCommits and appends per commit from `StateStore::commit_stats()` over a run (the open's own \
         set-up transaction is not counted); `x 1 task` pairs each round with the 1-task run of \
         the same round; MB/s = median appends/s x payload size."
    );
    Ok(out)
}

/// Appends `count` entries from `tasks` tasks to a fresh store in `parent`.
async fn append_run(
    parent: &std::path::Path,
    tasks: usize,
    count: usize,
    payloads: Arc<Vec<Vec<u8>>>,
) -> anyhow::Result<AppendRun> {
    let dir = tempfile::Builder::new()
        .prefix("chroma-shift-bench-journal-")
        .tempdir_in(parent)?;
    let store = shift_state::StateStore::open(dir.path()).await?;
    let before = store.commit_stats();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let store = store.clone();
        let next = next.clone();
        let payloads = payloads.clone();
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    break;
                }
                store
                    .append(vec![shift_state::NewEntry {
                        target: BackendName::New,
                        collection: "9a4c1a34-6f3b-4f55-8d0e-5b8f0f6c2a11".to_owned(),
                        payload: payloads[i % payloads.len()].clone(),
                    }])
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = store.commit_stats();
    ensure!(
        store.lag(BackendName::New).entries == count as u64,
        "the journal holds {} entries, not {count}",
        store.lag(BackendName::New).entries
    );
    drop(store);
    drop(dir);
    Ok(AppendRun {
        seconds,
        commits: after.commits - before.commits,
        requests: after.requests - before.requests,
        entries: after.entries_appended - before.entries_appended,
    })
}
