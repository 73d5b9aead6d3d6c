//! How fast chroma-shift's backfill copies a collection, as ratios against two baselines
//! measured in the same run on the same data:
//!
//! - (a) `backfill`: chroma-shift's online backfill, started through the proxy's admin API
//!   (`POST /admin/backfill`, what `chroma-shift backfill` does) with the default batch size
//!   and concurrency, the proxy in `journaled` mode and in its own process, followed with
//!   `GET /admin/backfill` until it ends;
//! - (b) `naive`: a plain Python loop with the official client that pages the source with
//!   `get(limit=500, offset=...)` and adds each page to the target, embeddings, metadatas and
//!   documents included (`benches/python/naive_copy.py --mode naive`);
//! - (c) `ingest`: the target's ingest rate alone: the same records, read beforehand (not
//!   timed), added to the target in ready-made batches of 5,000 with the Python client
//!   (`naive_copy.py --mode ingest`).
//!
//! One collection of N records (default 20,000, `BENCH_BACKFILL_RECORDS`) of 384 dims with
//! metadata and documents is seeded on the old Chroma with `tests/python/seed.py`. Every
//! variant copies it to a fresh new Chroma server (started for it, stopped after it), so each
//! starts from an empty target; the backfill gets a fresh proxy too. Variants run in mirrored
//! order across repetitions (a b c, c b a, ...). Records/s: (a) from the POST to the first
//! progress answer that is no longer `running` (polled every 50 ms); (b) and (c) from the
//! script's own clock, which leaves out the interpreter's start. Each copy is checked: the
//! target must hold N records afterwards.
//!
//! Run: `cargo bench -p chroma-shift-benches --bench backfill` (about 1.5 minutes on 2 quiet
//! cores, 2.5 under other load, with the defaults, plus the build).
//!
//! Knobs (environment): `BENCH_BACKFILL_RECORDS` (N), `BENCH_BACKFILL_REPS` (default 2),
//! `BENCH_PROXY_LOG`, `BENCH_STATE_PARENT`, `SHIFT_BENCH_PROXY_BIN`, `BENCH_OUT` (also write the
//! report there). Traffic goes to 127.0.0.1 only; every process it starts is stopped at the end
//! (SIGTERM, then SIGKILL after 5 s).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use chroma_shift_benches::bodies::DIM;
use chroma_shift_benches::load::median_min_max;
use chroma_shift_benches::proc::{
    clock_ticks_per_second, cpu_seconds, find_chroma_pid, shutdown_chroma,
};
use chroma_shift_benches::proxy::{start_proxy, ProxyOptions};
use chroma_shift_benches::report::{load_average, machine_lines, print_rate, publish};
use chroma_shift_benches::{
    collection_id, count, env_count, run_bench, run_bench_script, scratch_dir,
};
use serde_json::Value;
use shift_control::api::{BackfillRequest, BackfillState};
use shift_testkit::python::run_script;
use shift_testkit::Chroma;

const COLLECTION: &str = "catalog";
/// Bound on one copy and on the seeding.
const COPY_LIMIT: Duration = Duration::from_secs(300);

fn main() -> anyhow::Result<()> {
    run_bench(Settings::from_env, bench)
}

struct Settings {
    records: usize,
    reps: usize,
    proxy: ProxyOptions,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let records = env_count("BENCH_BACKFILL_RECORDS", 20_000, 1_000..=1_000_000)?;
        let reps = env_count("BENCH_BACKFILL_REPS", 2, 1..=10)?;
        let mut proxy = ProxyOptions::from_env("proxy")?;
        proxy.mirror_mode = Some("journaled".to_owned());
        Ok(Settings {
            records,
            reps,
            proxy,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Backfill,
    Naive,
    Ingest,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Backfill => "(a) chroma-shift backfill",
            Variant::Naive => "(b) naive Python get/add loop",
            Variant::Ingest => "(c) direct ingest, ready-made batches",
        }
    }
}

/// One copy.
struct Copy {
    variant: Variant,
    records: u64,
    seconds: f64,
    /// CPU seconds: the old Chroma, the new Chroma, the copier (the proxy, or the Python
    /// client over its timed part); `None` where not measured.
    cpu: [Option<f64>; 3],
    /// (a) only: the proxy's own records/s and seconds from its progress.
    reported: Option<(f64, f64)>,
}

async fn bench(settings: Settings) -> anyhow::Result<()> {
    let wall = Instant::now();
    let load_before = load_average();
    let dir = scratch_dir("backfill-")?;
    let n = settings.records;
    eprintln!("starting the old Chroma and seeding {n} records of {DIM} dims...");
    let old = Chroma::spawn().await?;
    let result = async {
        let seeded = run_script(
            "seed.py",
            &[
                "--url",
                &old.url(),
                "--collection",
                COLLECTION,
                "--count",
                &n.to_string(),
                "--dim",
                &DIM.to_string(),
            ],
            COPY_LIMIT,
        )
        .await?;
        let seeded: Value = serde_json::from_str(seeded.stdout.trim())
            .with_context(|| format!("seed.py printed {}", seeded.stdout))?;
        ensure!(
            seeded["count"].as_u64() == Some(n as u64),
            "seeded {seeded}, wanted {n} records"
        );
        eprintln!("seeded: {seeded}");
        let mut copies: Vec<Vec<Copy>> = Vec::new();
        for rep in 0..settings.reps {
            let mut order = [Variant::Backfill, Variant::Naive, Variant::Ingest];
            if rep % 2 == 1 {
                order.reverse();
            }
            let mut results = Vec::new();
            for variant in order {
                eprintln!("rep {rep}: {}...", variant.name());
                // Each copy goes to a fresh new Chroma, stopped afterwards.
                let new = Chroma::spawn().await?;
                let copy = copy_to(&settings, &old, &new, variant, rep, dir.path()).await;
                shutdown_chroma(new).await;
                let copy = copy?;
                print_rate(copy.records, copy.seconds);
                results.push(copy);
            }
            results.sort_by_key(|c| c.variant as u8);
            copies.push(results);
        }
        anyhow::Ok((seeded, copies))
    }
    .await;
    shutdown_chroma(old).await;
    let (seeded, copies) = result?;
    let load_after = load_average();

    let mut out = String::new();
    let _ = writeln!(out, "## backfill\n");
    let _ = writeln!(
        out,
        "{}\n- Chroma 1.5.9; one collection of {n} records x {DIM} dims with metadata and documents, \
         seeded on `old` by tests/python/seed.py in {} s; every variant copies it to a fresh `new` Chroma\n\
         - (a) proxy: {}, `journaled`, log level `{}`, state dir in {}; backfill with the default \
         batch size (1000) and concurrency (2)\n\
         - {} repetitions, variants in mirrored order; wall time {:.0} s",
        machine_lines(&load_before, &load_after),
        seeded["seconds"],
        settings.proxy.describe_process(),
        settings.proxy.log_level,
        settings.proxy.describe_state(),
        settings.reps,
        wall.elapsed().as_secs_f64(),
    );
    let _ = writeln!(
        out,
        "\n| rep | variant | records | s | records/s | x (c) ingest | x (b) naive | CPU s per 1k records: old / new / copier |\n\
         |---:|---|---:|---:|---:|---:|---:|---|"
    );
    let rate = |c: &Copy| c.records as f64 / c.seconds.max(1e-9);
    let cpu = |c: &Copy, i: usize| {
        c.cpu[i].map_or("-".to_owned(), |s| {
            format!("{:.2}", s * 1000.0 / c.records.max(1) as f64)
        })
    };
    let mut notes = Vec::new();
    for (rep, results) in copies.iter().enumerate() {
        let naive = rate(&results[1]);
        let ingest = rate(&results[2]);
        for copy in results {
            let _ = writeln!(
                out,
                "| {rep} | {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {} / {} / {} |",
                copy.variant.name(),
                copy.records,
                copy.seconds,
                rate(copy),
                rate(copy) / ingest,
                rate(copy) / naive,
                cpu(copy, 0),
                cpu(copy, 1),
                cpu(copy, 2),
            );
            if let Some((reported_rate, reported_seconds)) = copy.reported {
                notes.push(format!(
                    "rep {rep}: the proxy's own progress said {reported_rate:.0} records/s over {reported_seconds:.2} s"
                ));
            }
        }
    }
    let _ = writeln!(
        out,
        "\n| variant | records/s median (min-max) | x (c) ingest median (min-max) | x (b) naive median (min-max) |\n\
         |---|---:|---:|---:|"
    );
    for (v, variant) in [Variant::Backfill, Variant::Naive, Variant::Ingest]
        .iter()
        .enumerate()
    {
        let rates: Vec<f64> = copies.iter().map(|r| rate(&r[v])).collect();
        let to_ingest: Vec<f64> = copies.iter().map(|r| rate(&r[v]) / rate(&r[2])).collect();
        let to_naive: Vec<f64> = copies.iter().map(|r| rate(&r[v]) / rate(&r[1])).collect();
        let (m, lo, hi) = median_min_max(rates);
        let (im, ilo, ihi) = median_min_max(to_ingest);
        let (nm, nlo, nhi) = median_min_max(to_naive);
        let _ = writeln!(
            out,
            "| {} | {m:.0} ({lo:.0}-{hi:.0}) | {im:.2} ({ilo:.2}-{ihi:.2}) | {nm:.2} ({nlo:.2}-{nhi:.2}) |",
            variant.name()
        );
    }
    let _ = writeln!(
        out,
        "\nRatios pair each variant with the baselines of the same repetition. Seconds: (a) from \
         the POST to the first progress answer no longer `running` (polled every 50 ms), \
         inventory and id listing included; (b) the script's clock from its first get to its last \
         add; (c) the script's clock over the adds only (the read of the source before is not \
         timed). CPU from /proc over the same span for the Chroma servers ((c): `old` is only \
         read before the timed part, so `-`), the copier is the proxy's process for (a) and the \
         Python client's own process time over its timed part for (b) and (c)."
    );
    for note in notes {
        let _ = writeln!(out, "- {note}");
    }
    publish(&out)
}

/// One copy of the seeded collection from `old` to `new`.
async fn copy_to(
    settings: &Settings,
    old: &Chroma,
    new: &Chroma,
    variant: Variant,
    rep: usize,
    dir: &std::path::Path,
) -> anyhow::Result<Copy> {
    let n = settings.records as u64;
    let ticks = clock_ticks_per_second();
    let old_pid = find_chroma_pid(old.addr().port());
    let new_pid = find_chroma_pid(new.addr().port());
    match variant {
        Variant::Backfill => {
            let options = ProxyOptions {
                name: format!("proxy-{rep}"),
                ..settings.proxy.clone()
            };
            let proxy = start_proxy(&options, dir, &old.url(), &new.url()).await?;
            let pids = [old_pid, new_pid, proxy.pid()];
            let before = cpu_seconds(&pids, ticks);
            let started = Instant::now();
            let admin = proxy.admin_api()?;
            let request = BackfillRequest {
                collections: vec![COLLECTION.to_owned()],
                ..BackfillRequest::default()
            };
            admin
                .start_backfill(&request)
                .await
                .context("POST /admin/backfill")?;
            let progress = loop {
                let progress = admin
                    .backfill_progress()
                    .await
                    .context("GET /admin/backfill")?;
                if progress.state != BackfillState::Running {
                    break progress;
                }
                ensure!(
                    started.elapsed() < COPY_LIMIT,
                    "the backfill ran longer than {COPY_LIMIT:?}: {progress:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let seconds = started.elapsed().as_secs_f64();
            let after = cpu_seconds(&pids, ticks);
            ensure!(
                progress.state == BackfillState::Succeeded,
                "the backfill ended {:?}: {progress:?}",
                progress.state
            );
            drop(proxy);
            let id = collection_id(&new.url(), COLLECTION)
                .await?
                .context("the backfill left no collection on the new store")?;
            let stored = count(&new.url(), &id).await?;
            ensure!(
                stored == n,
                "after the backfill the new store holds {stored} records, not {n}"
            );
            Ok(Copy {
                variant,
                records: stored,
                seconds,
                cpu: [
                    Some(after[0] - before[0]),
                    Some(after[1] - before[1]),
                    Some(after[2] - before[2]),
                ],
                reported: Some((progress.records_per_second, progress.elapsed_seconds)),
            })
        }
        Variant::Naive | Variant::Ingest => {
            let mode = if variant == Variant::Naive {
                "naive"
            } else {
                "ingest"
            };
            let pids = [old_pid, new_pid];
            let before = cpu_seconds(&pids, ticks);
            let stdout = run_bench_script(
                "naive_copy.py",
                &[
                    "--source",
                    &old.url(),
                    "--target",
                    &new.url(),
                    "--collection",
                    COLLECTION,
                    "--target-collection",
                    &format!("{COLLECTION}_{mode}"),
                    "--mode",
                    mode,
                ],
                COPY_LIMIT,
            )
            .await?;
            let after = cpu_seconds(&pids, ticks);
            let line = stdout.lines().last().unwrap_or_default();
            let report: Value = serde_json::from_str(line)
                .with_context(|| format!("naive_copy.py printed {stdout}"))?;
            ensure!(
                report["records"].as_u64() == Some(n) && report["target_count"].as_u64() == Some(n),
                "naive_copy.py --mode {mode} copied {report}, wanted {n} records"
            );
            Ok(Copy {
                variant,
                records: n,
                seconds: report["seconds"].as_f64().context("no seconds")?,
                cpu: [
                    (variant == Variant::Naive).then(|| after[0] - before[0]),
                    Some(after[1] - before[1]),
                    report["cpu_seconds"].as_f64(),
                ],
                reported: None,
            })
        }
    }
}
