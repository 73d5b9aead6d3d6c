//! How long a switch holds writes, under load: 8 closed-loop writers (by default) send adds
//! (10 records x 384 dims, ids never used before) through the proxy in `journaled` mode, in
//! front of two real Chroma 1.5.9 servers (`old` primary, `new` secondary), while the bench
//! switches the primary back and forth (cutover, rollback, cutover, ...) through the admin
//! API. For every switch it reports what the switch says (`writes_held_ms`: gate closed ->
//! reopened, with its steps: intents settled, journal drained, topology committed;
//! `drained_entries`: journal entries applied with the gate closed; `catch_up_ms`:
//! the catch-up before the gate closed, with the lag it started from and ended at) and what
//! the writers saw: the longest add that overlapped the switch call, against the writers'
//! median outside any switch. At the end the writers stop, the journal drains, and both stores
//! must hold every acknowledged record (nothing lost).
//!
//! With a sync window (`[cutover] sync_window`, on by default) the report also says how long
//! writes were mirrored synchronously before the gate closed, how many window writes were in
//! flight when the primary flipped (not waited for), and when those sent to the old primary had
//! settled (after the reopen, not part of the hold).
//!
//! It runs three times against the same two Chroma servers, each time with a fresh proxy and
//! collection: with the catch-up off (`[cutover] catch_up_timeout = "0s"`, the switch as it was
//! before the catch-up), with the catch-up and no sync window (`sync_window = false`) and with
//! the shipped defaults (catch-up and sync window), so all are measured under the same load.
//!
//! Run: `cargo bench -p chroma-shift-benches --bench switch_hold` (about 45 s plus the build).
//!
//! Knobs (environment): `BENCH_WRITERS` (default 8), `BENCH_SWITCHES` (default 6),
//! `BENCH_SWITCH_GAP_SECS` (writes between switches, default 2), `BENCH_WARMUP_SECS`
//! (default 2), `BENCH_CATCH_UP` (`off,on,window` by default: which variants, in order),
//! `BENCH_MIRROR_EXTRA` (more `[mirror]` keys, e.g. `replay_batch_records = 30` for a replay
//! that falls behind), `BENCH_PROXY_LOG`, `BENCH_STATE_PARENT`, `SHIFT_BENCH_PROXY_BIN`, `BENCH_OUT`
//! (also write the report there). Traffic goes to 127.0.0.1 only; every process it starts is
//! stopped at the end.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chroma_shift_benches::bodies::{AddBodies, ADD_BATCH, DIM};
use chroma_shift_benches::load::client;
use chroma_shift_benches::proc::{shutdown_chroma, Server};
use chroma_shift_benches::proxy::{start_proxy, wait_replayed, ProxyOptions};
use chroma_shift_benches::report::{load_average, machine_lines, publish};
use chroma_shift_benches::{
    collection_id, count, create_collection, env_count, env_var, run_bench, scratch_dir,
    COLLECTIONS,
};
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use shift_control::switch::{Direction, HoldSteps, SwitchReport, SwitchRequest};
use shift_testkit::Chroma;

/// Bounds that only catch a hang.
const SWITCH_LIMIT: Duration = Duration::from_secs(60);
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

struct Settings {
    writers: usize,
    switches: usize,
    gap: Duration,
    warmup: Duration,
    /// The variants, in the order to run them.
    variants: Vec<Variant>,
    proxy: ProxyOptions,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let mut proxy = ProxyOptions::from_env("switch-hold")?;
        let variants = env_var("BENCH_CATCH_UP", "off,on,window".to_owned())?
            .split(',')
            .map(|v| match v.trim() {
                "off" => Ok(Variant::Off),
                "on" => Ok(Variant::CatchUp),
                "window" => Ok(Variant::Window),
                other => Err(anyhow::anyhow!(
                    "BENCH_CATCH_UP: {other} is not off, on or window"
                )),
            })
            .collect::<anyhow::Result<Vec<Variant>>>()?;
        proxy.mirror_mode = Some("journaled".to_owned());
        proxy.mirror_extra =
            env_var("BENCH_MIRROR_EXTRA", String::new())?.replace("\\n", "\n") + "\n";
        Ok(Settings {
            writers: env_count("BENCH_WRITERS", 8, 1..=64)?,
            switches: env_count("BENCH_SWITCHES", 6, 1..=100)?,
            gap: Duration::from_secs_f64(env_var("BENCH_SWITCH_GAP_SECS", 2.0)?),
            warmup: Duration::from_secs_f64(env_var("BENCH_WARMUP_SECS", 2.0)?),
            variants,
            proxy,
        })
    }
}

/// How the proxy under test switches.
#[derive(Debug, Clone, Copy)]
enum Variant {
    /// No catch-up, no window: the switch as before the catch-up.
    Off,
    /// The catch-up, no sync window.
    CatchUp,
    /// The defaults: the catch-up and the sync window.
    Window,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Off => "off",
            Variant::CatchUp => "on",
            Variant::Window => "window",
        }
    }

    /// The `[cutover]` table for it.
    fn table(self) -> &'static str {
        match self {
            Variant::Off => "[cutover]\ncatch_up_timeout = \"0s\"\n",
            Variant::CatchUp => "[cutover]\nsync_window = false\n",
            Variant::Window => "",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Variant::Off => "catch-up off (`catch_up_timeout = \"0s\"`: the switch as before)",
            Variant::CatchUp => "catch-up on, no sync window (`sync_window = false`)",
            Variant::Window => "catch-up and sync window (the defaults: `catch_up_lag = 2`, `catch_up_timeout = \"10s\"`, `sync_window = true`)",
        }
    }
}

/// One acknowledged add: when it was sent and when its answer came.
type Span = (Instant, Instant);

/// One switch as the bench saw it.
struct Switched {
    report: SwitchReport,
    started: Instant,
    ended: Instant,
}

fn main() -> anyhow::Result<()> {
    run_bench(Settings::from_env, bench)
}

async fn bench(settings: Settings) -> anyhow::Result<()> {
    let wall = Instant::now();
    let load_before = load_average();
    let dir = scratch_dir("switch-hold-")?;
    eprintln!("starting two Chroma servers (old, new) and the proxy (journaled)...");
    let (old, new) = tokio::try_join!(Chroma::spawn(), Chroma::spawn())?;
    let result = async {
        let mut text = String::new();
        for &chosen in &settings.variants {
            let variant = chosen.name();
            eprintln!("variant {variant}:");
            let options = ProxyOptions {
                name: format!("switch-hold-{variant}"),
                extra_tables: chosen.table().to_owned(),
                ..settings.proxy.clone()
            };
            let proxy = start_proxy(&options, dir.path(), &old.url(), &new.url()).await?;
            let collection = format!("switch_hold_{variant}");
            let table = run(&settings, &proxy, &collection, &old.url(), &new.url()).await;
            drop(proxy);
            let _ = writeln!(text, "### {}\n\n{}", chosen.title(), table?);
        }
        anyhow::Ok(text)
    }
    .await;
    tokio::join!(shutdown_chroma(old), shutdown_chroma(new));
    let body = result?;
    let mut out = String::new();
    let _ = writeln!(out, "## switch_hold\n");
    let _ = writeln!(
        out,
        "{}\n- Chroma 1.5.9 x 2, proxy journaled ({}, log level `{}`, `[mirror]` extra: `{}`); {} writers of adds of \
         {ADD_BATCH} records x {DIM} dims; {} switches {} s apart; wall time {:.0} s\n",
        machine_lines(&load_before, &load_average()),
        settings.proxy.describe_process(),
        settings.proxy.log_level,
        settings.proxy.mirror_extra.trim(),
        settings.writers,
        settings.switches,
        settings.gap.as_secs_f64(),
        wall.elapsed().as_secs_f64()
    );
    out.push_str(&body);
    publish(&out)
}

async fn run(
    settings: &Settings,
    proxy: &Server,
    collection: &str,
    old: &str,
    new: &str,
) -> anyhow::Result<String> {
    let admin = proxy.admin_api()?;
    let id = create_collection(&proxy.url, collection).await?;
    let uri: Uri = format!("{}{COLLECTIONS}/{id}/add", proxy.url).parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let spans = Arc::new(Mutex::new(Vec::<Span>::new()));
    let mut writers = Vec::new();
    for w in 0..settings.writers {
        let (uri, stop, spans) = (uri.clone(), stop.clone(), spans.clone());
        writers.push(tokio::spawn(async move {
            let client = client();
            let mut bodies = AddBodies::new(7 + w as u64, &format!("w{w}"));
            while !stop.load(Ordering::Relaxed) {
                let body = bodies.take(1)?.remove(0);
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(uri.clone())
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body))?;
                let sent = Instant::now();
                let response = client.request(request).await?;
                let status = response.status();
                let answer = response.into_body().collect().await?.to_bytes();
                if !status.is_success() {
                    bail!(
                        "add answered {status}: {}",
                        String::from_utf8_lossy(&answer[..answer.len().min(300)])
                    );
                }
                spans.lock().unwrap().push((sent, Instant::now()));
            }
            anyhow::Ok(())
        }));
    }

    tokio::time::sleep(settings.warmup).await;
    let mut switched = Vec::new();
    let mut failure = None;
    for i in 0..settings.switches {
        let direction = if i % 2 == 0 {
            Direction::Cutover
        } else {
            Direction::Rollback
        };
        let started = Instant::now();
        let request = SwitchRequest::default();
        let call = admin.switch(direction, &request);
        let report = match tokio::time::timeout(SWITCH_LIMIT, call).await {
            Ok(Ok(report)) => report,
            Ok(Err(error)) => {
                failure = Some(anyhow::anyhow!("switch {i}: {error}"));
                break;
            }
            Err(_) => {
                failure = Some(anyhow::anyhow!(
                    "switch {i} did not answer in {SWITCH_LIMIT:?}"
                ));
                break;
            }
        };
        eprintln!(
            "  {direction:?}: switched {}, catch-up {:?}, window {:?}, held {:.1} ms, drained {} entries while held{}",
            report.switched,
            report.catch_up,
            report.window,
            report.writes_held_ms,
            report.drained_entries,
            report
                .refused
                .as_deref()
                .map(|r| format!(", refused: {r}"))
                .unwrap_or_default()
        );
        switched.push(Switched {
            report,
            started,
            ended: Instant::now(),
        });
        tokio::time::sleep(settings.gap).await;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.context("a writer panicked")??;
    }
    if let Some(error) = failure {
        return Err(error);
    }
    for s in &switched {
        ensure!(
            s.report.switched,
            "a switch did not happen: {:?}",
            s.report.refused
        );
    }

    // Nothing lost: both stores hold every acknowledged record once the journal drains.
    let spans = std::mem::take(&mut *spans.lock().unwrap());
    let acked = spans.len() as u64 * ADD_BATCH as u64;
    wait_replayed(proxy.admin.as_deref(), DRAIN_LIMIT).await;
    for (name, url) in [("old", old), ("new", new)] {
        let id = collection_id(url, collection)
            .await?
            .with_context(|| format!("no {collection} on {name}"))?;
        let held = count(url, &id).await?;
        ensure!(
            held == acked,
            "{name} holds {held} records, {acked} were acknowledged"
        );
    }
    Ok(table(&switched, &spans, acked))
}

/// Milliseconds between two instants.
fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

/// The steps of a hold after the gate closed, each in ms since it began to close.
fn steps(hold: &HoldSteps) -> String {
    [hold.intents_settled_ms, hold.drained_ms, hold.committed_ms]
        .map(|ms| ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}")))
        .join(" / ")
}

/// The per-switch table and the summary line.
fn table(switched: &[Switched], spans: &[Span], acked: u64) -> String {
    let overlaps = |s: &Switched, span: &Span| span.0 <= s.ended && span.1 >= s.started;
    let mut quiet: Vec<f64> = spans
        .iter()
        .filter(|span| !switched.iter().any(|s| overlaps(s, span)))
        .map(|span| ms(span.0, span.1))
        .collect();
    quiet.sort_by(f64::total_cmp);
    let median = quiet.get(quiet.len() / 2).copied().unwrap_or(0.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| # | direction | catch-up (ms) | lag before -> after catch-up | sync window (ms), writes in flight at the flip, old primary's settled after reopen (ms) | writes held (ms) | of which closing the gate (ms) | then intents settled / drained / committed (ms) | drained while held | switch call (ms) | writers' longest add during it (ms) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    let mut holds = Vec::new();
    for (i, s) in switched.iter().enumerate() {
        let longest = spans
            .iter()
            .filter(|span| overlaps(s, span))
            .map(|span| ms(span.0, span.1))
            .fold(0.0, f64::max);
        holds.push(s.report.writes_held_ms);
        let (catch_up_ms, lags) = s.report.catch_up.as_ref().map_or_else(
            || ("off".to_owned(), "-".to_owned()),
            |c| {
                (
                    format!("{:.0}", c.ms),
                    format!(
                        "{} -> {}{}",
                        c.lag_before,
                        c.lag_after,
                        if c.caught_up { "" } else { " (timed out)" }
                    ),
                )
            },
        );
        let window = s.report.window.as_ref().map_or_else(
            || "-".to_owned(),
            |w| {
                format!(
                    "{:.0}{}, {}, {}",
                    w.ms,
                    if w.ready { "" } else { " (not ready)" },
                    w.in_flight_at_flip,
                    w.old_primary_settled_ms
                        .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0}"))
                )
            },
        );
        let _ = writeln!(
            out,
            "| {} | {:?} | {catch_up_ms} | {lags} | {window} | {:.1} | {:.1} | {} | {} | {:.0} | {:.0} |",
            i + 1,
            s.report.direction,
            s.report.writes_held_ms,
            s.report.closing_ms,
            steps(&s.report.hold),
            s.report.drained_entries,
            ms(s.started, s.ended),
            longest
        );
    }
    holds.sort_by(f64::total_cmp);
    let _ = writeln!(
        out,
        "\nwrites held: min {:.1} ms, max {:.1} ms; writers' median add outside the switches {median:.1} ms; \
         {} adds ({acked} records) acknowledged, both stores hold all of them",
        holds.first().copied().unwrap_or(0.0),
        holds.last().copied().unwrap_or(0.0),
        spans.len()
    );
    out
}
