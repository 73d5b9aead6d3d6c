//! Dual write, end to end: the proxy in front of two real Chroma servers, driven by several
//! official Python clients at once (`tests/python/writers.py`), and both stores read back
//! directly and compared record by record (`shift_testkit::stores`: embeddings by f32 bits).
//!
//! - concurrent writers on overlapping ids leave both stores identical, journaled and sync;
//! - the secondary's Chroma stopped during the load: no client error, the journal grows, and
//!   drains once it is back;
//! - the proxy process killed with `kill -9` mid-load and restarted: every write a client saw
//!   acknowledged is on both stores;
//! - a secondary that fails (500, 429 with Retry-After, slow answers, resets): nothing lost,
//!   order kept, a dead letter only for a permanent error (a dimension mismatch);
//! - the primary swapped in the config and the proxy restarted: clients keep their ids.
//!
//! Every test checks that the load really ran (records in each collection, the proxy's mirror
//! counters), so none can pass on empty stores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shift_config::BackendName;
use shift_testkit::collection::collection_id;
use shift_testkit::collection::get_or_create_collection;
use shift_testkit::faulty::two_stores_one_faulty;
use shift_testkit::scrape::{metric_sum, metrics_text};
use shift_testkit::stores::two_stores;
use shift_testkit::stores::two_stores_and_proxy;
use shift_testkit::stores::{
    assert_same_records, check_acked_log, compare_stores_skipping, dump_database, Compared,
    DatabaseDump, DEFAULT_DB,
};
use shift_testkit::{http_json, python, Fault, Proxy};

/// Bound on one writers.py run.
const WRITERS_LIMIT: Duration = Duration::from_secs(150);
/// Bound on one dump.
const DUMP_LIMIT: Duration = Duration::from_secs(60);
/// Bound on the wait for the journal to drain.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

const COLLECTIONS: &str = "/api/v2/tenants/default_tenant/databases/default_database/collections";

/// Fast retries, so a secondary that comes back is caught up within a second.
const FAST_RETRIES: &str = "retry_initial = \"50ms\"\nretry_max = \"1s\"\n";

fn journaled() -> String {
    format!("[mirror]\nmode = \"journaled\"\n{FAST_RETRIES}")
}

fn sync_mode() -> String {
    format!("[mirror]\nmode = \"sync\"\n{FAST_RETRIES}")
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_leave_both_stores_identical_journaled() -> anyhow::Result<()> {
    concurrent_writers(&journaled(), "journaled", "journaled").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_leave_both_stores_identical_sync() -> anyhow::Result<()> {
    concurrent_writers(&sync_mode(), "sync", "applied").await
}

/// Four Python clients make mixed writes on three collections, on overlapping ids, through the
/// proxy; afterwards both stores hold the same records.
async fn concurrent_writers(toml: &str, mode: &str, outcome: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let (old, new, proxy) = two_stores_and_proxy(toml).await?;
    let files = TempFiles::new()?;

    let summary = run_writers(&proxy.url(), &WritersArgs::mixed(4, 60, 3, 7), &files).await?;
    assert_eq!(summary["errors"], json!(0), "writers failed: {summary}");
    assert_every_op_ran(&summary);
    update_of_missing_id_then_add(&proxy.url(), "dw-ghost").await?;

    let metrics = wait_drained(&proxy.admin_url()).await?;
    let mirrored = metric_sum(
        &metrics,
        "chroma_shift_mirrored_writes_total",
        &[("mode", mode), ("outcome", outcome)],
    );
    let ops = summary["ops"].as_f64().unwrap_or_default();
    assert!(
        mirrored >= ops,
        "{mirrored} writes mirrored as {mode}/{outcome}, the writers made {ops}:\n{}",
        mirror_metrics(&metrics)
    );
    assert_eq!(dead_letters(&metrics), 0.0, "{}", mirror_metrics(&metrics));

    let compared = assert_same_records(&old.url(), &new.url()).await?;
    assert_populated(&compared, &["dw-0", "dw-1", "dw-2"]);
    eprintln!("{mode}: {} in {:?}", describe(&compared), started.elapsed());
    Ok(())
}

/// The secondary's Chroma is stopped while clients write (journaled mode): the clients see no
/// error, the journal grows, and once the store is back it drains and both stores agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_down_during_load_journal_grows_then_drains() -> anyhow::Result<()> {
    let started = Instant::now();
    let (old, mut new, proxy) = two_stores_and_proxy(&journaled()).await?;
    let admin = proxy.admin_url();
    let files = TempFiles::new()?;
    let args = WritersArgs {
        pause_ms: 20,
        ..WritersArgs::mixed(4, 120, 3, 11)
    };
    let url = proxy.url();
    let writers = run_writers(&url, &args, &files);

    // Meanwhile: once the load runs, stop the secondary, watch the journal grow while writes
    // go on, then bring it back.
    let outage = async {
        wait_for_mirrored(&admin, 40.0, Duration::from_secs(60)).await?;
        new.stop().await?;
        let stopped_at = journaled_writes(&metrics_text(&admin).await?);
        let down_since = Instant::now();
        let mut deepest = 0.0_f64;
        loop {
            let metrics = metrics_text(&admin).await?;
            deepest = deepest.max(journal_depth(&metrics, "new"));
            let during = journaled_writes(&metrics) - stopped_at;
            if during >= 40.0 && deepest > 0.0 {
                break;
            }
            anyhow::ensure!(
                down_since.elapsed() < Duration::from_secs(60),
                "the secondary was down for a minute without the load going on (writes meanwhile: {during}, deepest journal: {deepest}):\n{}",
                mirror_metrics(&metrics)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let writes_while_down = journaled_writes(&metrics_text(&admin).await?) - stopped_at;
        new.restart().await?;
        anyhow::Ok((deepest, writes_while_down, down_since.elapsed()))
    };
    let (summary, (deepest, writes_while_down, down_for)) = tokio::try_join!(writers, outage)?;

    assert_eq!(
        summary["errors"],
        json!(0),
        "a client saw an error while the secondary was down: {summary}"
    );
    assert_every_op_ran(&summary);
    assert!(
        deepest > 0.0,
        "the journal never grew while the secondary was down"
    );
    assert!(writes_while_down > 0.0);

    let metrics = wait_drained(&admin).await?;
    assert!(
        metric_sum(
            &metrics,
            "chroma_shift_replay_retries_total",
            &[("target", "new")]
        ) > 0.0,
        "the replay never retried while the secondary was down:\n{}",
        mirror_metrics(&metrics)
    );
    assert_eq!(dead_letters(&metrics), 0.0, "{}", mirror_metrics(&metrics));

    let compared = assert_same_records(&old.url(), &new.url()).await?;
    assert_populated(&compared, &["dw-0", "dw-1", "dw-2"]);
    eprintln!(
        "secondary down {down_for:?}, {writes_while_down} writes meanwhile, journal up to {deepest}; {} in {:?}",
        describe(&compared),
        started.elapsed()
    );
    Ok(())
}

/// The proxy process is killed with SIGKILL while clients add, upsert, update and delete
/// records (writers.py `owned` mode), then started again on the same config and state: after
/// the drain both stores agree record by record, and every record whose final state the
/// acknowledged-write log fixes is on both exactly as logged (or absent on both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_killed_mid_load_keeps_every_acknowledged_write() -> anyhow::Result<()> {
    let started = Instant::now();
    let (old, new) = two_stores().await?;
    let mut proxy = Proxy::in_front_of(&old, &new)
        .toml(&journaled())
        .spawn_process()
        .await?;
    let admin = proxy.admin_url();
    let files = TempFiles::new()?;
    let args = WritersArgs {
        mode: "owned",
        tolerate_errors: true,
        pause_ms: 10,
        ..WritersArgs::mixed(4, 60, 3, 23)
    };
    let url = proxy.url();
    let acked_path = files.path("acked.jsonl");
    let writers = run_writers(&url, &args, &files);

    let crash = async {
        // Kill once a good part of the load is acknowledged, so it runs on both sides of the
        // crash.
        let waited = Instant::now();
        while count_lines(&acked_path) < 80 {
            anyhow::ensure!(
                waited.elapsed() < Duration::from_secs(60),
                "the writers acknowledged only {} calls in a minute",
                count_lines(&acked_path)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy.kill9().await?;
        let acked_at_kill = count_lines(&acked_path);
        proxy.restart().await?;
        let acked_at_restart = count_lines(&acked_path);
        anyhow::Ok((acked_at_kill, acked_at_restart))
    };
    let (summary, (acked_at_kill, acked_at_restart)) = tokio::try_join!(writers, crash)?;
    let acked = count_lines(&acked_path);
    assert!(
        acked > acked_at_restart,
        "no write was logged after the restart ({acked} in all, {acked_at_restart} at the restart): the load did not span the crash"
    );
    assert_eq!(
        summary["acked"].as_u64(),
        Some((acked as u64).saturating_sub(summary["errors"].as_u64().unwrap_or(0))),
        "every acknowledged call is logged once, and every failed one once: {summary}"
    );

    let metrics = wait_drained(&admin)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n--- proxy log\n{}", proxy.log_tail(60)))?;
    assert_eq!(dead_letters(&metrics), 0.0, "{}", mirror_metrics(&metrics));
    assert!(
        journaled_writes(&metrics) > 0.0,
        "the restarted proxy mirrored nothing:\n{}",
        mirror_metrics(&metrics)
    );

    // Recovery: both stores agree on every record, the ones whose writes were cut by the
    // crash included, and every acknowledged write is there as the log says.
    let compared = assert_same_records(&old.url(), &new.url()).await?;
    assert_populated(&compared, &["dw-0", "dw-1", "dw-2"]);
    let checked = check_acked_log(&acked_path, &[("old", &old.url()), ("new", &new.url())]).await?;
    assert!(checked.present > 0, "{checked:?}");
    eprintln!(
        "kill -9 after {acked_at_kill} logged calls, {acked} in all, {} client errors; {checked:?}; {} in {:?}",
        summary["errors"],
        describe(&compared),
        started.elapsed()
    );
    proxy.stop().await?;
    Ok(())
}

/// The secondary answers through a fault injector: 500s (some after applying the write), 429
/// with Retry-After, slow answers (some slower than the proxy's timeout) and reset connections.
/// No acknowledged write is lost, order is kept (a record rewritten many times ends with its
/// last value), and only a permanent error (a dimension mismatch) becomes a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_secondary_loses_nothing_and_keeps_order() -> anyhow::Result<()> {
    let started = Instant::now();
    let (old, new, faulty, builder) = two_stores_one_faulty(BackendName::New).await?;
    let mut config = builder.toml(&journaled()).config()?;
    // A slow answer past this counts as a timeout, which the replay retries.
    config.backends.new.request_timeout = Duration::from_secs(1);
    let proxy = Proxy::start_fresh(config, Default::default()).await?;
    let admin = proxy.admin_url();
    let files = TempFiles::new()?;

    // A collection of the same name, but 3-dimensional, already on the new store: writes of
    // 8-dimensional records to it are refused there for good.
    let dim_new = get_or_create_collection(&new.url(), "dw-dim").await?;
    let (status, answer) = http_json(
        "POST",
        &format!("{}{COLLECTIONS}/{dim_new}/add", new.url()),
        Some(json!({"ids": ["three"], "embeddings": [[0.1, 0.2, 0.3]]})),
    )
    .await?;
    anyhow::ensure!(status.is_success(), "{status} {answer}");

    faulty.push_write_faults(fault_round());
    let summary = run_writers(&proxy.url(), &WritersArgs::mixed(4, 50, 3, 31), &files).await?;
    assert_eq!(summary["errors"], json!(0), "writers failed: {summary}");
    assert_every_op_ran(&summary);

    // Order: the same two records rewritten 30 times in a row, deleted and re-added on the
    // way, while the secondary keeps failing. Their last values must win on both stores.
    faulty.push_write_faults(fault_round());
    let dw0 = collection_id(&proxy.url(), "dw-0").await?;
    let records = format!("{}{COLLECTIONS}/{dw0}", proxy.url());
    for version in 1..=30_u32 {
        let (verb, body) = match version {
            10 => ("delete", json!({"ids": ["seq-a", "seq-b"]})),
            // Adds after the delete: they land only if the delete came first.
            11 => ("add", versioned(version)),
            _ => ("upsert", versioned(version)),
        };
        let (status, answer) = http_json("POST", &format!("{records}/{verb}"), Some(body)).await?;
        assert!(status.is_success(), "{verb} v{version}: {status} {answer}");
    }

    // The permanent error: the client is told the write succeeded (the primary took it).
    let dim_client = get_or_create_collection(&proxy.url(), "dw-dim").await?;
    for ids in [vec!["d1", "d2"], vec!["d3"]] {
        let embeddings: Vec<Vec<f32>> = ids.iter().map(|_| vec![0.5; 8]).collect();
        let (status, answer) = http_json(
            "POST",
            &format!("{}{COLLECTIONS}/{dim_client}/add", proxy.url()),
            Some(json!({"ids": ids, "embeddings": embeddings})),
        )
        .await?;
        assert!(
            status.is_success(),
            "the client must see the primary's success: {status} {answer}"
        );
    }

    let metrics = wait_parks_counted(&admin, wait_drained(&admin).await?).await?;
    assert_eq!(
        faulty.pending_write_faults(),
        0,
        "not every scripted fault reached the proxy: the load was too small"
    );
    let retries = metric_sum(
        &metrics,
        "chroma_shift_replay_retries_total",
        &[("target", "new")],
    );
    // Each round holds 12 faults the replay must retry (twice: 500, 429, reset,
    // applied-then-500, answer past the timeout, delayed reset), and both rounds were used up.
    assert!(
        retries >= 24.0,
        "only {retries} replay retries:\n{}",
        mirror_metrics(&metrics)
    );
    // Exactly the two writes to the 3-dimensional collection are dead letters, and for the
    // dimension only: no retryable fault was parked.
    assert_eq!(
        dead_letters(&metrics),
        2.0,
        "dead letters:\n{}",
        mirror_metrics(&metrics)
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "chroma_shift_dead_letters_total",
            &[("target", "new"), ("kind", "dimension_mismatch")]
        ),
        2.0,
        "{}",
        mirror_metrics(&metrics)
    );
    assert_eq!(
        metric_sum(&metrics, "chroma_shift_dead_letters_total", &[]),
        2.0,
        "a dead letter of another kind:\n{}",
        mirror_metrics(&metrics)
    );
    assert!(
        metric_sum(
            &metrics,
            "chroma_shift_dimension_mismatches_total",
            &[("target", "new")]
        ) >= 1.0,
        "{}",
        mirror_metrics(&metrics)
    );

    let compared = compare_stores_skipping(
        &old.url(),
        &new.url(),
        &[(DEFAULT_DB, DEFAULT_DB)],
        &["dw-dim"],
    )
    .await?;
    assert_populated(&compared, &["dw-0", "dw-1", "dw-2"]);
    let (old_dump, new_dump) = (
        dump_database(&old.url(), DEFAULT_DB).await?,
        dump_database(&new.url(), DEFAULT_DB).await?,
    );
    for (label, dump) in [("old", &old_dump), ("new", &new_dump)] {
        let records = &dump["dw-0"].records;
        for (id, sign) in [("seq-a", 1.0_f32), ("seq-b", -1.0)] {
            let record = records.get(id);
            assert_eq!(
                record.map(|r| r.metadata.clone()),
                Some(json!({"version": 30})),
                "{id} on the {label} store does not hold its last write"
            );
            assert_eq!(
                record.and_then(|r| r.embedding.clone()),
                Some(vec![sign * 30.0 / 100.0; 8]),
                "{id} on the {label} store does not hold its last embedding"
            );
        }
    }
    let ids =
        |dump: &DatabaseDump| -> Vec<String> { dump["dw-dim"].records.keys().cloned().collect() };
    assert_eq!(ids(&old_dump), vec!["d1", "d2", "d3"]);
    assert_eq!(ids(&new_dump), vec!["three"]);

    // Every 429 was honoured: the replay's next request for the same collection came no
    // sooner than its Retry-After (a lower bound, which a slow machine cannot break).
    let received = faulty.received();
    let mut honoured = 0;
    for (i, refused) in received.iter().enumerate() {
        if !refused.fault.starts_with("TooManyRequests") {
            continue;
        }
        let collection = refused.path_and_query.rsplit_once('/').map(|(c, _)| c);
        let next = received[i + 1..]
            .iter()
            .find(|r| r.path_and_query.rsplit_once('/').map(|(c, _)| c) == collection);
        let Some(next) = next else {
            panic!("no retry after the 429 at {}", refused.path_and_query);
        };
        let waited = next.at.duration_since(refused.at);
        assert!(
            waited >= Duration::from_secs(1),
            "the replay retried {} after {waited:?}, before its Retry-After of 1 s",
            refused.path_and_query
        );
        honoured += 1;
    }
    assert_eq!(honoured, 4, "every scripted 429 was answered and retried");
    eprintln!(
        "faulty secondary: {retries} retries; {} in {:?}",
        describe(&compared),
        started.elapsed()
    );
    Ok(())
}

/// After a cutover-like swap (drain, stop, primary = new in the config, start on the same
/// state), clients keep using the collection ids they already had: listing, lookups by name
/// and by id, and a Collection object held from before the swap all work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_primary_keeps_client_collection_ids() -> anyhow::Result<()> {
    let started = Instant::now();
    let (old, new) = two_stores().await?;
    let state = tempfile::Builder::new()
        .prefix("chroma-shift-swap-")
        .tempdir()?;
    let files = TempFiles::new()?;
    let builder = Proxy::in_front_of(&old, &new)
        .state_dir(state.path())
        .toml(&journaled());

    let before = builder.clone().primary(BackendName::Old).spawn().await?;
    let summary = run_writers(&before.url(), &WritersArgs::mixed(2, 30, 3, 41), &files).await?;
    assert_eq!(summary["errors"], json!(0), "writers failed: {summary}");
    let saved = files.path("ids.json");
    let saved_arg = saved.to_string_lossy().into_owned();
    python::run_script(
        "collection_ids.py",
        &["--url", &before.url(), "--save", &saved_arg],
        DUMP_LIMIT,
    )
    .await?;
    let ids_before: Value = serde_json::from_str(&std::fs::read_to_string(&saved)?)?;
    let old_ids = store_ids(&old.url()).await?;
    for model in ids_before.as_array().into_iter().flatten() {
        let name = model["name"].as_str().unwrap_or_default();
        assert_eq!(
            old_ids.get(name).map(String::as_str),
            model["id"].as_str(),
            "before the swap, clients see the old store's id of {name}"
        );
    }
    // The cutover's precondition: the journal drained. (The stores are compared at the end,
    // not here: reading both now would hide a difference that only the reads after the swap,
    // on one store, bring out.)
    wait_drained(&before.admin_url()).await?;
    let compared = assert_same_records(&old.url(), &new.url()).await?;
    assert_populated(&compared, &["dw-0", "dw-1", "dw-2"]);
    before.shutdown().await?;

    let after = builder.primary(BackendName::New).spawn().await?;
    let out = files.path("check.json");
    let out_arg = out.to_string_lossy().into_owned();
    python::run_script(
        "collection_ids.py",
        &[
            "--url",
            &after.url(),
            "--check",
            &saved_arg,
            "--out",
            &out_arg,
        ],
        DUMP_LIMIT,
    )
    .await?;
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    assert_eq!(
        report["collections"].as_object().map(|c| c.len()),
        Some(3),
        "{report}"
    );

    // The writes after the swap went to the new store first, and were mirrored to the old.
    let metrics = wait_drained(&after.admin_url()).await?;
    assert!(
        journaled_writes(&metrics) >= 3.0,
        "{}",
        mirror_metrics(&metrics)
    );
    let compared = assert_same_records(&old.url(), &new.url()).await?;
    assert_populated(&compared, &["dw-0", "dw-1", "dw-2"]);
    let new_dump = dump_database(&new.url(), DEFAULT_DB).await?;
    for name in ["dw-0", "dw-1", "dw-2"] {
        assert!(
            new_dump[name].records.contains_key("swap-x"),
            "the write after the swap is missing from {name}"
        );
    }
    // The new store's own ids differ: the proxy did translate.
    let new_ids = store_ids(&new.url()).await?;
    assert_ne!(
        old_ids, new_ids,
        "the stores' own collection ids should differ"
    );
    eprintln!("swap: {} in {:?}", describe(&compared), started.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The load.

/// writers.py's arguments.
#[derive(Debug, Clone)]
struct WritersArgs {
    writers: u32,
    ops: u32,
    collections: u32,
    seed: u32,
    mode: &'static str,
    tolerate_errors: bool,
    pause_ms: u32,
}

impl WritersArgs {
    fn mixed(writers: u32, ops: u32, collections: u32, seed: u32) -> WritersArgs {
        WritersArgs {
            writers,
            ops,
            collections,
            seed,
            mode: "mixed",
            tolerate_errors: false,
            pause_ms: 0,
        }
    }
}

/// Runs writers.py against `url`; its summary ({"ops", "errors", "by_op", "acked"}).
async fn run_writers(url: &str, args: &WritersArgs, files: &TempFiles) -> anyhow::Result<Value> {
    let acked = files.path("acked.jsonl").to_string_lossy().into_owned();
    let mut argv: Vec<String> = [
        "--url",
        url,
        "--writers",
        &args.writers.to_string(),
        "--ops",
        &args.ops.to_string(),
        "--collections",
        &args.collections.to_string(),
        "--seed",
        &args.seed.to_string(),
        "--acked",
        &acked,
        "--mode",
        args.mode,
        "--pause-ms",
        &args.pause_ms.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if args.tolerate_errors {
        argv.push("--tolerate-errors".to_owned());
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let output = python::run_script("writers.py", &argv, WRITERS_LIMIT).await?;
    let last = output.stdout.lines().last().unwrap_or_default();
    let summary: Value = serde_json::from_str(last).map_err(|e| {
        anyhow::anyhow!(
            "writers.py printed no summary ({e}):\n{}\n{}",
            output.stdout,
            output.stderr
        )
    })?;
    Ok(summary)
}

/// Every kind of write the mixed load makes really ran.
fn assert_every_op_ran(summary: &Value) {
    for op in ["add", "upsert", "update", "delete_ids", "delete_where"] {
        assert!(
            summary["by_op"][op].as_u64().unwrap_or(0) > 0,
            "the load made no {op}: {summary}"
        );
    }
}

/// The sequence that makes Chroma 1.5.9 bring back an ignored update's embedding, in a fresh
/// collection `name` (where it reliably does): `update` of a missing id with an embedding,
/// `add` of that id, a read (which only the primary sees), then any write. The proxy must keep
/// both stores equal anyway (it sends no update for an id the store lacks); the record must
/// end with the add's embedding.
async fn update_of_missing_id_then_add(proxy: &str, name: &str) -> anyhow::Result<()> {
    let id = get_or_create_collection(proxy, name).await?;
    let records = format!("{proxy}{COLLECTIONS}/{id}");
    let vector = |x: f32| vec![x; 8];
    let steps = [
        (
            "update",
            json!({"ids": ["ghost", "ghost-2"], "embeddings": [vector(-0.5), vector(-0.25)], "documents": ["update", "update"]}),
        ),
        (
            "add",
            json!({"ids": ["ghost"], "embeddings": [vector(0.5)], "metadatas": [{"from": "add"}], "documents": ["add"]}),
        ),
        ("get", json!({"include": ["embeddings"]})),
        (
            "add",
            json!({"ids": ["ghost-later"], "embeddings": [vector(0.75)], "documents": ["later"]}),
        ),
        ("get", json!({"ids": ["ghost"], "include": ["embeddings"]})),
    ];
    let mut last = Value::Null;
    for (verb, body) in steps {
        let (status, answer) = http_json("POST", &format!("{records}/{verb}"), Some(body)).await?;
        anyhow::ensure!(status.is_success(), "{verb}: {status} {answer}");
        last = answer;
    }
    assert_eq!(
        last["embeddings"][0][0].as_f64(),
        Some(0.5),
        "through the proxy, the record does not hold the add's embedding: {last}"
    );
    Ok(())
}

/// Two records at `version`: upsert or add body with float embeddings.
fn versioned(version: u32) -> Value {
    let v = version as f32 / 100.0;
    let (a, b) = (vec![v; 8], vec![-v; 8]);
    json!({
        "ids": ["seq-a", "seq-b"],
        "embeddings": [a, b],
        "metadatas": [{"version": version}, {"version": version}],
        "documents": [format!("a v{version}"), format!("b v{version}")],
    })
}

/// One round of faults for the secondary's record writes: every kind, with plain forwards
/// between them.
fn fault_round() -> Vec<Fault> {
    let server_error = || {
        Fault::Status(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":"InternalError","message":"injected"}"#.to_owned(),
        )
    };
    let mut round = Vec::new();
    for _ in 0..2 {
        round.extend([
            server_error(),
            Fault::Forward,
            Fault::TooManyRequests {
                retry_after_secs: 1,
            },
            Fault::Delay(Duration::from_millis(300), Box::new(Fault::Forward)),
            Fault::Reset,
            Fault::Forward,
            // Applied on the store, but the proxy hears a failure: the retry must be harmless.
            Fault::ForwardThen(Box::new(server_error())),
            // Applied at once, answered after the proxy's 1 s timeout.
            Fault::SlowAnswer(Duration::from_millis(1500)),
            Fault::Forward,
            Fault::Delay(Duration::from_millis(100), Box::new(Fault::Reset)),
        ]);
    }
    round
}

// ---------------------------------------------------------------------------------------------
// The proxy's metrics.

/// Entries waiting for `target`, over all collections.
fn journal_depth(metrics: &str, target: &str) -> f64 {
    metric_sum(
        metrics,
        "chroma_shift_journal_depth",
        &[("target", target), ("collection", "")],
    )
}

/// Writes whose mirror went through the journal (journaled, or fallen back to it).
fn journaled_writes(metrics: &str) -> f64 {
    ["journaled", "fallback_journaled", "reconcile_queued"]
        .iter()
        .map(|outcome| {
            metric_sum(
                metrics,
                "chroma_shift_mirrored_writes_total",
                &[("outcome", outcome)],
            )
        })
        .sum()
}

fn dead_letters(metrics: &str) -> f64 {
    metric_sum(metrics, "chroma_shift_dead_letters", &[])
}

/// The mirror's lines of the metrics, for failure messages.
fn mirror_metrics(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|line| {
            !line.starts_with('#')
                && [
                    "chroma_shift_mirrored",
                    "chroma_shift_journal_depth",
                    "chroma_shift_replay",
                    "chroma_shift_dead",
                    "chroma_shift_dimension",
                ]
                .iter()
                .any(|prefix| line.starts_with(prefix))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until at least `count` writes went through the journal.
async fn wait_for_mirrored(admin: &str, count: f64, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let metrics = metrics_text(admin).await?;
        if journaled_writes(&metrics) >= count {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "fewer than {count} writes mirrored after {limit:?}:\n{}",
            mirror_metrics(&metrics)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until both journals are empty (every queued write applied or parked), and returns
/// the metrics then. The depth gauges are read from the durable store at each scrape, so a 0
/// means nothing waits.
async fn wait_drained(admin: &str) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        let metrics = metrics_text(admin).await?;
        let depth = journal_depth(&metrics, "new") + journal_depth(&metrics, "old");
        if depth == 0.0 && metrics.contains("chroma_shift_journal_depth{") {
            return Ok(metrics);
        }
        anyhow::ensure!(
            started.elapsed() < DRAIN_LIMIT,
            "the journal did not drain within {DRAIN_LIMIT:?}:\n{}",
            mirror_metrics(&metrics)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The journal drains when the store commits a park, a moment before the replay worker counts
/// it in `chroma_shift_dead_letters_total`: waits until every dead letter the store holds is
/// counted (a proxy started fresh, so the two agree once the worker caught up).
async fn wait_parks_counted(admin: &str, mut metrics: String) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        let counted = metric_sum(&metrics, "chroma_shift_dead_letters_total", &[]);
        if counted >= dead_letters(&metrics) {
            return Ok(metrics);
        }
        anyhow::ensure!(
            started.elapsed() < DRAIN_LIMIT,
            "{counted} dead letters counted of those parked:\n{}",
            mirror_metrics(&metrics)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = metrics_text(admin).await?;
    }
}

// ---------------------------------------------------------------------------------------------
// The stores, read directly.

fn describe(compared: &Compared) -> String {
    format!(
        "{} records in {} collections {:?}",
        compared.records, compared.collections, compared.per_collection
    )
}

/// Each named collection exists and holds records: the load really wrote something.
fn assert_populated(compared: &Compared, names: &[&str]) {
    for name in names {
        let count = compared.per_collection.get(*name).copied().unwrap_or(0);
        assert!(count > 0, "{name} holds no records: {}", describe(compared));
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// name -> the store's own collection id.
async fn store_ids(url: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let (status, answer) = http_json("GET", &format!("{url}{COLLECTIONS}"), None).await?;
    anyhow::ensure!(status.is_success(), "list: {status} {answer}");
    Ok(answer
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["name"].as_str()?.to_owned(), c["id"].as_str()?.to_owned())))
        .collect())
}

fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

/// A temp dir for one test's files (acked lines, dumps), removed at the end.
struct TempFiles {
    dir: tempfile::TempDir,
}

impl TempFiles {
    fn new() -> anyhow::Result<TempFiles> {
        Ok(TempFiles {
            dir: tempfile::Builder::new()
                .prefix("chroma-shift-dual-write-")
                .tempdir()?,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
