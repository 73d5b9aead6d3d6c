//! What the proxy costs a request: latency (p50, p99) and throughput through chroma-shift
//! against the same Chroma reached directly, for `query` and for `add`, as ratios.
//!
//! Run: `cargo bench -p chroma-shift-benches --bench proxy_overhead` (about 2.5 minutes).
//!
//! Two real Chroma servers (1.5.9, from `.venv`): `old`, the proxy's primary, and `new`, the
//! secondary it mirrors writes to (the proxy's normal topology during a migration). Two
//! collections of 384-dimension records are created and preloaded with 2,000 records through
//! the proxy, so both stores have them. Each workload then runs closed-loop: C clients, each on
//! its own keep-alive connection, send the next request as soon as the last answer's body has
//! arrived. C=1 measures latency; C=8 measures throughput (and latency under load). Every
//! target gets the same kind of requests:
//!
//! - `direct`: the old Chroma itself, the baseline of every ratio;
//! - `proxy`: chroma-shift in front of it;
//! - `nginx`: a plain nginx reverse proxy to the old Chroma with upstream keep-alive, a second
//!   baseline for "what does any proxy hop cost here", when `nginx` is installed (the row is
//!   skipped with a note otherwise).
//!
//! `query` sends one 384-dimension query embedding with n_results=10; `add` sends 10 records
//! with ids never used before; `heartbeat` is `GET /api/v2/heartbeat`. By default: query and
//! add at C=1 and C=8, then heartbeat and query at C=32; `BENCH_WORKLOADS=heartbeat:32,query:32`
//! runs only the scenarios listed. Rounds alternate between the targets in mirrored order (D P N,
//! N P D, ...), so that drift (the add collection growing, other work on the machine) falls on
//! all of them alike. After each proxy round the bench waits until the proxy's journal to the
//! new store is empty (read from its `/metrics`), so one round's replay does not run into the
//! next round; that wait is reported as "catch-up", and the CPU columns cover it.
//!
//! Where the proxy runs: in its own process, as `chroma-shift serve` does, with its own
//! multi-threaded tokio runtime (one worker per core), its own logging (the `info` access log
//! line per request, to a file) and its own CPU account. Run in-process it would share the
//! load generator's runtime and scheduler, which is not how it is deployed. By default the
//! bench starts that process by running its own executable in a "proxy" mode that does what
//! `chroma-shift serve` does (load the config, the same runtime and logging set-up,
//! `ChromaShift::bind` then `run`), so the code measured is always the code just built with
//! the bench profile, never a stale binary. `SHIFT_BENCH_PROXY_BIN=target/release/chroma-shift`
//! runs a built binary instead.
//!
//! The load generator is one current-thread tokio runtime with one hyper-util client per
//! simulated client (so each keeps its own connection). Request bodies are serialised before
//! a round starts; the timed section is send, wait for the head, read the body; any answer
//! that is not a success stops the bench.
//!
//! The report ends with the proxy against nginx per workload (issue 12's table): the CPU per
//! request of each, their ratio, the proxy's throughput over nginx's and the p99 it adds over
//! direct. For per-request counts that do not depend on the machine's load, profile a fixed
//! number of requests instead (`benches/python/fixed_load.py`, see benches/RESULTS.md).
//!
//! Everything is bounded: each round stops after `BENCH_ROUND_SECS` (default 1) or its
//! request cap, whichever comes first; a catch-up wait after at most 60 s. Traffic goes to
//! 127.0.0.1 only.
//!
//! Knobs (environment): `BENCH_ROUND_SECS`, `BENCH_ROUNDS` (rounds per target and workload,
//! default 8), `BENCH_WARMUP_SECS` (default 1), `BENCH_NGINX=0` (skip nginx),
//! `BENCH_WORKLOADS` (see above), `BENCH_PROXY_LOG` (the proxy's log level, default `info` like the shipped default),
//! `BENCH_MIRROR_MODE` (`journaled` or `sync`; the proxy's default otherwise),
//! `BENCH_STATE_PARENT` (where the proxy's state dir goes, e.g. `/dev/shm` to take fsync out),
//! `SHIFT_BENCH_PROXY_BIN`, `BENCH_OUT` (also write the markdown report to this file).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use chroma_shift_benches::bodies::{add_body, AddBodies, Vectors};
use chroma_shift_benches::load::{
    alternate_rounds, summarize, throughput_ratios, Round, RoundTiming, Target,
};
use chroma_shift_benches::proc::{
    clock_ticks_per_second, effective_uid, find_chroma_pid, find_program, free_port,
    shutdown_chroma, wait_ready, Server,
};
use chroma_shift_benches::proxy::{start_proxy, wait_replayed, ProxyOptions};
use chroma_shift_benches::report::{cores, cpu_model, load_average, publish, utc_now};
use chroma_shift_benches::{create_collection, env_var, run_bench, scratch_dir, COLLECTIONS};
use http::Uri;
use serde_json::Value;
use shift_testkit::Chroma;
use tokio::process::Command;

use chroma_shift_benches::bodies::{query_body, ADD_BATCH, DIM, N_RESULTS};

const PRELOAD: usize = 2_000;
const PRELOAD_BATCH: usize = 100;
/// Distinct query vectors, used in turn.
const QUERY_BODIES: usize = 64;

fn main() -> anyhow::Result<()> {
    run_bench(Settings::from_env, bench)
}

// ---------------------------------------------------------------------------------------------
// nginx.

/// nginx as a plain reverse proxy with upstream keep-alive, in the foreground, all its files
/// in `dir`; `None` when it is not installed.
async fn start_nginx(dir: &Path, chroma_port: u16) -> anyhow::Result<Option<Server>> {
    let Some(bin) = find_program("nginx") else {
        return Ok(None);
    };
    let port = free_port()?;
    let dir = dir.join("nginx");
    std::fs::create_dir_all(&dir)?;
    // As root, nginx's workers would otherwise run as `nobody`, who cannot use the temp dir.
    let user = if effective_uid() == Some(0) {
        "user root root;"
    } else {
        ""
    };
    let d = dir.display();
    let config = format!(
        "{user}\ndaemon off;\nmaster_process on;\nworker_processes auto;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/client_body;\n\
           proxy_temp_path {d}/proxy_temp;\n  fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           client_max_body_size 64m;\n  client_body_buffer_size 1m;\n\
           upstream chroma {{ server 127.0.0.1:{chroma_port}; keepalive 64; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
               proxy_pass http://chroma;\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    );
    let config_path = dir.join("nginx.conf");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.join("stderr.log"))?;
    let child = Command::new(bin)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&config_path)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start nginx")?;
    let mut server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
        admin: None,
        admin_api: None,
        state: None,
    };
    wait_ready(&mut server, "nginx", &dir.join("stderr.log")).await?;
    Ok(Some(server))
}

// ---------------------------------------------------------------------------------------------
// Settings.

struct Settings {
    /// Round length, warm-up and rounds per target.
    timing: RoundTiming,
    /// Request cap of a query round.
    query_cap: usize,
    /// Request cap of an add round (each add body is built before the round).
    add_cap: usize,
    nginx: bool,
    /// The proxy's process, log level, mirror mode and state dir.
    proxy: ProxyOptions,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let timing = RoundTiming::from_env(8)?;
        Ok(Settings {
            timing,
            query_cap: env_var("BENCH_QUERY_CAP", 20_000)?,
            add_cap: env_var("BENCH_ADD_CAP", 3_000)?,
            nginx: env_var("BENCH_NGINX", 1u8)? != 0,
            proxy: ProxyOptions::from_env("proxy")?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// `GET /api/v2/heartbeat`: the proxy's own cost, with the least work behind it.
    Heartbeat,
    Query,
    Add,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Heartbeat => "heartbeat",
            Workload::Query => "query",
            Workload::Add => "add",
        }
    }

    fn parse(name: &str) -> Option<Workload> {
        [Workload::Heartbeat, Workload::Query, Workload::Add]
            .into_iter()
            .find(|w| w.name() == name)
    }
}

/// The scenarios to run: `BENCH_WORKLOADS`, a comma-separated list of `workload:C`
/// (`heartbeat:32,query:32`), or all of them.
fn scenarios() -> anyhow::Result<Vec<(Workload, usize)>> {
    let Ok(list) = std::env::var("BENCH_WORKLOADS") else {
        return Ok(vec![
            (Workload::Query, 1),
            (Workload::Query, 8),
            (Workload::Add, 1),
            (Workload::Add, 8),
            (Workload::Heartbeat, 32),
            (Workload::Query, 32),
        ]);
    };
    list.split(',')
        .map(|item| {
            let parsed = item.trim().split_once(':').and_then(|(w, c)| {
                Some((
                    Workload::parse(w)?,
                    c.parse::<usize>().ok().filter(|c| (1..=256).contains(c))?,
                ))
            });
            parsed.with_context(|| {
                format!(
                    "BENCH_WORKLOADS: {item:?} is not `heartbeat|query|add:C` with C in 1..=256"
                )
            })
        })
        .collect()
}

struct Results {
    workload: Workload,
    concurrency: usize,
    /// Per target, in `targets` order: every round.
    rounds: Vec<Vec<Round>>,
}

// ---------------------------------------------------------------------------------------------
// The bench.

async fn bench(settings: Settings) -> anyhow::Result<()> {
    let wall = Instant::now();
    let load_before = load_average();
    let dir = scratch_dir("")?;

    // The proxy's topology: `old` is primary and is also what `direct` and nginx reach; `new`
    // is the secondary the proxy mirrors writes to.
    eprintln!("starting two Chroma servers (old, new)...");
    let (old, new) = tokio::try_join!(Chroma::spawn(), Chroma::spawn())?;
    let old_pid = find_chroma_pid(old.addr().port());
    let new_pid = find_chroma_pid(new.addr().port());
    eprintln!("starting the proxy...");
    let proxy = start_proxy(&settings.proxy, dir.path(), &old.url(), &new.url()).await?;
    let nginx = if settings.nginx {
        start_nginx(dir.path(), old.addr().port()).await?
    } else {
        None
    };
    let nginx_note = match (&nginx, settings.nginx) {
        (Some(_), _) => None,
        (None, true) => Some("nginx is not installed (`apt-get install nginx`): no nginx row."),
        (None, false) => Some("BENCH_NGINX=0: no nginx row."),
    };

    let mut targets = vec![
        Target::new("direct", old.url(), None, None),
        Target::new("proxy", proxy.url.clone(), proxy.pid(), proxy.admin.clone()),
    ];
    if let Some(nginx) = &nginx {
        targets.push(Target::new("nginx", nginx.url.clone(), nginx.pid(), None));
    }

    // Collections, made through the proxy as an application would, so that both stores have
    // them: one to query (stays at PRELOAD records), one to add to.
    eprintln!("creating collections and preloading {PRELOAD} records through the proxy...");
    let mut vectors = Vectors(0x5eed);
    let query_collection = create_collection(&proxy.url, "bench_query").await?;
    let add_collection = create_collection(&proxy.url, "bench_add").await?;
    for batch in 0..PRELOAD / PRELOAD_BATCH {
        let ids: Vec<String> = (0..PRELOAD_BATCH)
            .map(|i| format!("pre-{}", batch * PRELOAD_BATCH + i))
            .collect();
        for collection in [&query_collection, &add_collection] {
            let url = format!("{}{COLLECTIONS}/{collection}/add", proxy.url);
            let (status, body) =
                shift_testkit::http_json("POST", &url, Some(add_body(&mut vectors, &ids))).await?;
            if !status.is_success() {
                bail!("preload answered {status}: {body}");
            }
        }
    }
    let preload_replay = wait_replayed(proxy.admin.as_deref(), Duration::from_secs(120)).await;
    eprintln!("the proxy replayed the preload to the new store in {preload_replay:.1?}");
    let query_bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..QUERY_BODIES)
            .map(|_| Ok(Bytes::from(serde_json::to_vec(&query_body(&mut vectors))?)))
            .collect::<anyhow::Result<_>>()?,
    );
    let mut add_bodies = AddBodies::new(0xadd, "add");

    // Every target must answer what Chroma answers.
    for target in &targets[1..] {
        let direct = post_query(&targets[0].url, &query_collection, &query_bodies[0]).await?;
        let via = post_query(&target.url, &query_collection, &query_bodies[0]).await?;
        if direct["ids"] != via["ids"] {
            bail!(
                "{} answered other ids than Chroma: {} vs {}",
                target.name,
                via["ids"],
                direct["ids"]
            );
        }
    }

    let scenarios = scenarios()?;
    let ticks_per_second = clock_ticks_per_second();
    let mut all = Vec::new();
    for (workload, concurrency) in scenarios {
        let collection = match workload {
            Workload::Heartbeat | Workload::Query => &query_collection,
            Workload::Add => &add_collection,
        };
        let cap = match workload {
            Workload::Heartbeat | Workload::Query => settings.query_cap,
            Workload::Add => settings.add_cap,
        };
        let plan = settings.timing.plan(cap, workload == Workload::Add);
        let uris: Vec<Uri> = targets
            .iter()
            .map(|t| match workload {
                Workload::Heartbeat => format!("{}/api/v2/heartbeat", t.url).parse(),
                _ => format!("{}{COLLECTIONS}/{collection}/{}", t.url, workload.name()).parse(),
            })
            .collect::<Result<_, _>>()?;

        eprintln!(
            "{} C={concurrency}: warm-up {:?} per target, then {} rounds of <= {:?} per target",
            workload.name(),
            settings.timing.warmup,
            settings.timing.rounds,
            settings.timing.round
        );
        let rounds = alternate_rounds(
            &mut targets,
            &uris,
            concurrency,
            &plan,
            [old_pid, new_pid],
            |n| match workload {
                // An empty body is sent as a GET.
                Workload::Heartbeat => Ok(Arc::new(vec![Bytes::new()])),
                Workload::Query => Ok(query_bodies.clone()),
                Workload::Add => Ok(Arc::new(add_bodies.take(n)?)),
            },
        )
        .await?;
        all.push(Results {
            workload,
            concurrency,
            rounds,
        });
    }

    let load_after = load_average();
    let report = report(
        &settings,
        &targets,
        &all,
        ReportContext {
            ticks_per_second,
            chroma_cpu: old_pid.is_some() && new_pid.is_some(),
            nginx_note,
            load_before: &load_before,
            load_after: &load_after,
            wall: wall.elapsed(),
        },
    );
    publish(&report)?;
    // Clients first (their idle connections), then the servers.
    drop(targets);
    drop(nginx);
    drop(proxy);
    tokio::join!(shutdown_chroma(old), shutdown_chroma(new));
    Ok(())
}

async fn post_query(url: &str, collection: &str, body: &Bytes) -> anyhow::Result<Value> {
    let (status, _, answer) = shift_testkit::http(
        "POST",
        &format!("{url}{COLLECTIONS}/{collection}/query"),
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await?;
    if !status.is_success() {
        bail!(
            "query via {url} answered {status}: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(500)])
        );
    }
    Ok(serde_json::from_slice(&answer)?)
}

// ---------------------------------------------------------------------------------------------
// The report.

/// The table: per workload, the proxy's and nginx's CPU per request and throughput
/// side by side, as ratios (nothing when nginx did not run).
fn proxy_against_nginx(
    out: &mut String,
    targets: &[Target],
    all: &[Results],
    ticks_per_second: u64,
) {
    let find = |name: &str| targets.iter().position(|t| t.name == name);
    let (Some(proxy), Some(nginx)) = (find("proxy"), find("nginx")) else {
        return;
    };
    let _ = writeln!(
        out,
        "\n| workload | C | proxy CPU us/req | nginx CPU us/req | proxy / nginx CPU | proxy req/s / nginx's | proxy p99 - direct p99 (ms) |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for results in all {
        let direct = summarize(&results.rounds[0], ticks_per_second);
        let p = summarize(&results.rounds[proxy], ticks_per_second);
        let n = summarize(&results.rounds[nginx], ticks_per_second);
        // Fewer clock ticks than one (a few adds) read as zero: no ratio then.
        let cpu_ratio = if n.cpu_per_request[2] > 0.0 {
            format!("{:.2}", p.cpu_per_request[2] / n.cpu_per_request[2])
        } else {
            "-".to_owned()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {cpu_ratio} | {:.2} | {:.2} |",
            results.workload.name(),
            results.concurrency,
            p.cpu_per_request[2],
            n.cpu_per_request[2],
            p.throughput / n.throughput,
            p.p99 - direct.p99,
        );
    }
}

struct ReportContext<'a> {
    ticks_per_second: u64,
    chroma_cpu: bool,
    nginx_note: Option<&'a str>,
    load_before: &'a str,
    load_after: &'a str,
    wall: Duration,
}

fn report(
    settings: &Settings,
    targets: &[Target],
    all: &[Results],
    context: ReportContext<'_>,
) -> String {
    let mut out = String::new();
    let cpu_model = cpu_model();
    let cores = cores();
    let proxy_mode = settings.proxy.describe_process();
    let _ = writeln!(out, "## proxy_overhead\n");
    let _ = writeln!(
        out,
        "- date (UTC): {}\n- machine: {cores} cores, {cpu_model}\n- load average before / after: {} / {}\n\
         - Chroma 1.5.9, one collection of {PRELOAD} records x {DIM} dims to query \
         (n_results={N_RESULTS}); adds of {ADD_BATCH} records with new ids to a second collection\n\
         - proxy: {proxy_mode}, log level `{}`, mirror mode {}, state dir in {}; old = primary (what `direct` \
         and nginx reach), new = a second Chroma the proxy mirrors writes to\n\
         - {} rounds per target and workload of <= {:?} each, targets alternating in mirrored order; \
         warm-up {:?} per target; wall time {:.0} s",
        utc_now(),
        context.load_before,
        context.load_after,
        settings.proxy.log_level,
        settings
            .proxy
            .mirror_mode
            .as_deref()
            .map_or("default".to_owned(), |m| format!("`{m}`")),
        settings.proxy.describe_state(),
        settings.timing.rounds,
        settings.timing.round,
        settings.timing.warmup,
        context.wall.as_secs_f64(),
    );
    if let Some(note) = context.nginx_note {
        let _ = writeln!(out, "- {note}");
    }
    let _ = writeln!(
        out,
        "\n| workload | C | via | requests | p50 ms | p99 ms | req/s | p50 x | p99 x | req/s x (rounds) | CPU us/req: old / new / fwd / client | catch-up s |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"
    );
    for results in all {
        let direct = summarize(&results.rounds[0], context.ticks_per_second);
        for (t, target) in targets.iter().enumerate() {
            let s = summarize(&results.rounds[t], context.ticks_per_second);
            let (ratios, range) = if t == 0 {
                ("1 | 1 | 1".to_owned(), String::new())
            } else {
                let (median, lo, hi) = throughput_ratios(&results.rounds[0], &results.rounds[t]);
                (
                    format!(
                        "{:.2} | {:.2} | {:.2}",
                        s.p50 / direct.p50,
                        s.p99 / direct.p99,
                        s.throughput / direct.throughput
                    ),
                    format!(" (med {median:.2}; {lo:.2}-{hi:.2})"),
                )
            };
            let chroma = |i: usize| {
                if context.chroma_cpu {
                    format!("{:.0}", s.cpu_per_request[i])
                } else {
                    "?".to_owned()
                }
            };
            let fwd = if t == 0 {
                "-".to_owned()
            } else {
                format!("{:.0}", s.cpu_per_request[2])
            };
            let catch_up = if target.admin.is_some() {
                format!("{:.1}", s.catch_up.as_secs_f64())
            } else {
                "-".to_owned()
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.0} | {ratios}{range} | {} / {} / {fwd} / {:.0} | {catch_up} |",
                results.workload.name(),
                results.concurrency,
                target.name,
                s.requests,
                s.p50,
                s.p99,
                s.throughput,
                chroma(0),
                chroma(1),
                s.cpu_per_request[3],
            );
        }
    }
    proxy_against_nginx(&mut out, targets, all, context.ticks_per_second);
    let _ = writeln!(
        out,
        "\n`x` columns are ratios to `direct` in the same run (latency: above 1 is slower; \
         req/s: below 1 is slower); in brackets, the median, lowest and \
         highest of the per-round throughput ratios. CPU is user+system time per request from /proc, from a round's start to the \
         end of its catch-up: the old and the new Chroma, the forwarding process (proxy or \
         nginx workers) and the load generator. Catch-up is the mean wait after a proxy round \
         until its journal to the new store was empty (not part of req/s)."
    );
    out
}
