//! Scenarios the other suites never exercised, each against real Chroma servers (with a
//! FaultyBackend in front of one of them where a fault is the point): faults on the primary
//! during writes, sync mode with a failing secondary, a write-mode switch under load, the
//! dead-letter listing, a pause that survives a restart, cutovers refused for lag or timing
//! out while draining, collection renames and deletes racing record writes, and a collection
//! with a non-default configuration mirrored.
//!
//! Every load is tests/python/writers.py in `owned` mode: each acknowledged call is logged
//! with its full content, and at the end both stores are compared record by record with each
//! other and with the log (shift_testkit::stores).

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use shift_config::BackendName;
use shift_testkit::collection::get_or_create_collection;
use shift_testkit::collection::{collection_id, count, create_collection};
use shift_testkit::faulty::two_stores_one_faulty;
use shift_testkit::scrape::{counter, wait_drained};
use shift_testkit::stores::two_stores_and_proxy;
use shift_testkit::stores::{
    assert_same_records, check_acked_log, post_json, two_stores, AckedChecked, DEFAULT_DB,
};
use shift_testkit::wait::wait_until;
use shift_testkit::{http_json, python, Fault, Hold, Proxy};

/// Bound on one writers.py run.
const WRITERS_LIMIT: Duration = Duration::from_secs(180);
/// Bound on a wait for a condition: only turns a hang into a failure.
const BOUND: Duration = Duration::from_secs(60);

const FAST_RETRIES: &str = "retry_initial = \"50ms\"\nretry_max = \"1s\"\n";

/// writers.py in `owned` mode; its summary line.
async fn owned_writers(
    url: &str,
    log: &Path,
    writers: u32,
    ops: u32,
    seed: u32,
    prefix: &str,
    extra: &[&str],
) -> anyhow::Result<Value> {
    let log = log.to_string_lossy().into_owned();
    let (writers, ops, seed) = (writers.to_string(), ops.to_string(), seed.to_string());
    let mut args = vec![
        "--url",
        url,
        "--writers",
        &writers,
        "--ops",
        &ops,
        "--collections",
        "2",
        "--seed",
        &seed,
        "--prefix",
        prefix,
        "--mode",
        "owned",
        "--acked",
        &log,
    ];
    args.extend_from_slice(extra);
    eprintln!("writers.py seed {seed}");
    let output = python::run_script("writers.py", &args, WRITERS_LIMIT).await?;
    let last = output.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).map_err(|e| {
        anyhow::anyhow!(
            "writers.py printed no summary ({e}):\n{}\n{}",
            output.stdout,
            output.stderr
        )
    })
}

/// Both stores equal record by record, and both as the acknowledged-write log says.
async fn assert_converged(old: &str, new: &str, log: &Path) -> anyhow::Result<AckedChecked> {
    let compared = assert_same_records(old, new).await?;
    let checked = check_acked_log(log, &[("old", old), ("new", new)]).await?;
    anyhow::ensure!(
        checked.present > 0 && compared.records > 0,
        "nothing to compare: {compared:?} {checked:?}"
    );
    eprintln!("compared {compared:?}; acked log {checked:?}");
    Ok(checked)
}

fn temp_log(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("acked.jsonl")
}

fn server_error() -> Fault {
    Fault::Status(
        StatusCode::INTERNAL_SERVER_ERROR,
        r#"{"error":"InternalError","message":"injected"}"#.to_owned(),
    )
}

/// The primary (old) answers through a fault injector: 500s before applying, resets before
/// applying, 500s and resets after applying, and slow answers after applying. Clients see
/// errors for some writes (their outcome unknown to them); the stores still end equal, and
/// every acknowledged write is on both exactly as logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_the_primary_during_writes_leave_both_stores_equal() -> anyhow::Result<()> {
    let (old, new, faulty, builder) = two_stores_one_faulty(BackendName::Old).await?;
    let proxy = builder
        .toml(&format!("[mirror]\n{FAST_RETRIES}"))
        .spawn()
        .await?;
    let mut faults = Vec::new();
    for _ in 0..3 {
        faults.extend([
            Fault::Forward,
            server_error(),
            Fault::Forward,
            Fault::Reset,
            Fault::Forward,
            Fault::ForwardThen(Box::new(server_error())),
            Fault::Forward,
            Fault::ForwardThen(Box::new(Fault::Reset)),
            Fault::SlowAnswer(Duration::from_millis(300)),
        ]);
    }
    faulty.push_write_faults(faults);
    let dir = tempfile::tempdir()?;
    let log = temp_log(&dir);
    let summary =
        owned_writers(&proxy.url(), &log, 3, 40, 101, "pf", &["--tolerate-errors"]).await?;
    assert_eq!(
        faulty.pending_write_faults(),
        0,
        "not every fault was used: {summary}"
    );
    let errors = summary["errors"].as_u64().unwrap_or(0);
    assert!(
        errors >= 1,
        "no client saw the primary's failures: {summary}"
    );
    wait_drained(&proxy.admin_url(), "new", BOUND).await?;
    let checked = assert_converged(&old.url(), &new.url(), &log).await?;
    assert!(checked.uncertain > 0, "{checked:?}");
    Ok(())
}

/// Sync mode with a secondary that fails some writes: with `on_secondary_failure = "journal"`
/// the client is answered the primary's success and the write is queued (fallback_journaled);
/// with `"fail"` the client gets an error. Either way both stores end equal.
async fn sync_mode_with_a_failing_secondary(policy: &str) -> anyhow::Result<()> {
    let (old, new, faulty, builder) = two_stores_one_faulty(BackendName::New).await?;
    let proxy = builder
        .toml(&format!(
            "[mirror]\nmode = \"sync\"\non_secondary_failure = \"{policy}\"\n{FAST_RETRIES}"
        ))
        .spawn()
        .await?;
    let mut faults = Vec::new();
    for _ in 0..4 {
        faults.extend([
            Fault::Forward,
            server_error(),
            Fault::Forward,
            Fault::Forward,
        ]);
    }
    faulty.push_write_faults(faults);
    let dir = tempfile::tempdir()?;
    let log = temp_log(&dir);
    let summary = owned_writers(
        &proxy.url(),
        &log,
        2,
        30,
        202,
        "sync",
        &["--tolerate-errors"],
    )
    .await?;
    assert_eq!(faulty.pending_write_faults(), 0, "{summary}");
    let admin = proxy.admin_url();
    let fallback = counter(
        &admin,
        "chroma_shift_mirrored_writes_total",
        &[("outcome", "fallback_journaled")],
    )
    .await?;
    let errors = summary["errors"].as_u64().unwrap_or(0);
    match policy {
        "journal" => {
            assert_eq!(errors, 0, "a client saw the secondary's failure: {summary}");
            assert!(fallback >= 1.0, "no write fell back to the journal");
        }
        _ => {
            assert!(
                errors >= 1,
                "no client was told the secondary failed: {summary}"
            );
        }
    }
    wait_drained(&admin, "new", BOUND).await?;
    assert_converged(&old.url(), &new.url(), &log).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_journals_a_failed_secondary_write_and_answers_success() -> anyhow::Result<()> {
    sync_mode_with_a_failing_secondary("journal").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_fails_the_client_write_when_told_to() -> anyhow::Result<()> {
    sync_mode_with_a_failing_secondary("fail").await
}

/// The write mode switched journaled -> sync -> journaled while clients write: no client
/// error, writes mirrored in both modes, both stores equal to each other and to the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_mode_switch_under_load_loses_nothing() -> anyhow::Result<()> {
    let (old, new, proxy) = two_stores_and_proxy(&format!("[mirror]\n{FAST_RETRIES}")).await?;
    let admin = proxy.admin_url();
    let dir = tempfile::tempdir()?;
    let log = temp_log(&dir);
    let url = proxy.url();
    let load = owned_writers(&url, &log, 3, 60, 303, "mode", &["--pause-ms", "10"]);
    let switching = async {
        for (mode, outcome) in [("sync", "journaled"), ("journaled", "applied")] {
            // Switch once the current mode has carried some of the load.
            wait_until(&format!("writes mirrored as {outcome}"), BOUND, || async {
                Ok(counter(
                    &admin,
                    "chroma_shift_mirrored_writes_total",
                    &[("outcome", outcome)],
                )
                .await?
                    >= 10.0)
            })
            .await?;
            let (status, answer) = proxy
                .admin("POST", "/admin/write-mode", Some(json!({"mode": mode})))
                .await?;
            anyhow::ensure!(status == StatusCode::OK, "write-mode {mode}: {answer}");
        }
        anyhow::Ok(())
    };
    let (summary, ()) = tokio::try_join!(load, switching)?;
    assert_eq!(summary["errors"], 0, "{summary}");
    let (_, state) = proxy.admin("GET", "/admin/status", None).await?;
    assert_eq!(state["topology"]["write_mode"], "journaled", "{state}");
    wait_drained(&admin, "new", BOUND).await?;
    assert_converged(&old.url(), &new.url(), &log).await?;
    Ok(())
}

/// A write the secondary refuses for good (a dimension mismatch) is parked as a dead letter,
/// and GET /admin/dead-letters lists it with its target, collection, reason and the write.
#[tokio::test]
async fn the_dead_letter_listing_shows_a_dimension_mismatch() -> anyhow::Result<()> {
    let (_old, new, proxy) = two_stores_and_proxy(&format!("[mirror]\n{FAST_RETRIES}")).await?;
    // The same name on the new store already holds 3-dimensional records.
    let new_id = create_collection(&new.url(), json!({"name": "dims"})).await?;
    post_json(
        format!("{}{DEFAULT_DB}/collections/{new_id}/add", new.url()),
        json!({"ids": ["three"], "embeddings": [[0.1, 0.2, 0.3]]}),
    )
    .await?;
    let id = get_or_create_collection(&proxy.url(), "dims").await?;
    post_json(
        format!("{}{DEFAULT_DB}/collections/{id}/add", proxy.url()),
        json!({"ids": ["eight"], "embeddings": [vec![0.5_f32; 8]], "documents": ["eight dims"]}),
    )
    .await?;
    wait_drained(&proxy.admin_url(), "new", BOUND).await?;
    let (status, listing) = proxy.admin("GET", "/admin/dead-letters", None).await?;
    assert_eq!(status, StatusCode::OK, "{listing}");
    let letters = listing["dead_letters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(letters.len(), 1, "{listing}");
    let letter = &letters[0];
    assert_eq!(letter["target"], "new", "{letter}");
    assert!(
        letter["reason"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("dimension"),
        "{letter}"
    );
    assert!(letter["op"].to_string().contains("eight"), "{letter}");
    // Paged: nothing after the last one.
    let seq = letter["seq"].as_u64().unwrap_or_default();
    let (_, after) = proxy
        .admin("GET", &format!("/admin/dead-letters?after={seq}"), None)
        .await?;
    assert_eq!(after["dead_letters"], json!([]), "{after}");
    // The primary has the record, the secondary kept only its own.
    assert_eq!(count(&new.url(), &new_id).await?, 1);
    Ok(())
}

/// A pause is part of the persisted topology: after a restart on the same state the gate is
/// still closed (a write is held, not answered), and a resume lets it through.
#[tokio::test]
async fn a_pause_is_restored_after_a_restart() -> anyhow::Result<()> {
    let (old, new) = two_stores().await?;
    let state_dir = tempfile::tempdir()?;
    let builder = Proxy::in_front_of(&old, &new).state_dir(state_dir.path());
    let proxy = builder.clone().spawn().await?;
    let id = create_collection(&proxy.url(), json!({"name": "paused"})).await?;
    let (status, _) = proxy.admin("POST", "/admin/pause", None).await?;
    assert_eq!(status, StatusCode::OK);
    proxy.shutdown().await?;

    let proxy = builder.spawn().await?;
    let (_, state) = proxy.admin("GET", "/admin/status", None).await?;
    assert_eq!(state["topology"]["paused"], true, "{state}");
    let url = format!("{}{DEFAULT_DB}/collections/{id}/add", proxy.url());
    let held = tokio::spawn(post_json(
        url,
        json!({"ids": ["a"], "embeddings": [[1.0, 2.0]]}),
    ));
    let admin = &proxy;
    wait_until("the write to be held at the gate", BOUND, || async move {
        let (_, state) = admin.admin("GET", "/admin/status", None).await?;
        Ok(state["writes_held"] == 1)
    })
    .await?;
    // Held, not answered: the store has nothing yet.
    assert_eq!(count(&old.url(), &id).await?, 0);
    let (status, _) = proxy.admin("POST", "/admin/resume", None).await?;
    assert_eq!(status, StatusCode::OK);
    tokio::time::timeout(BOUND, held).await???;
    wait_drained(&proxy.admin_url(), "new", BOUND).await?;
    assert_same_records(&old.url(), &new.url()).await?;
    Ok(())
}

/// With the secondary refusing its writes for a while (its heartbeat healthy), entries wait in
/// the journal: a cutover with `max_lag` below them is refused for lag alone and changes
/// nothing; once the journal drained, the same cutover goes through.
#[tokio::test]
async fn a_cutover_is_refused_for_lag_while_the_target_is_healthy() -> anyhow::Result<()> {
    let (old, new, faulty, builder) = two_stores_one_faulty(BackendName::New).await?;
    let hold = Hold::new();
    // Every replayed write waits until the test releases it.
    faulty.push_write_faults((0..50).map(|_| Fault::Held(hold.clone(), Box::new(Fault::Forward))));
    let proxy = builder
        .toml(&format!("[mirror]\n{FAST_RETRIES}"))
        .spawn()
        .await?;
    let id = create_collection(&proxy.url(), json!({"name": "lagging"})).await?;
    for round in 0..3 {
        post_json(
            format!("{}{DEFAULT_DB}/collections/{id}/add", proxy.url()),
            json!({"ids": [format!("r{round}")], "embeddings": [[round as f32, 1.0]]}),
        )
        .await?;
    }
    hold.wait_arrived(1, BOUND).await?;
    let (status, refused) = proxy
        .admin("POST", "/admin/cutover", Some(json!({"max_lag": 0})))
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let checks = refused["checks"].as_array().cloned().unwrap_or_default();
    let passed = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["passed"].clone())
    };
    assert_eq!(passed("target_healthy"), Some(json!(true)), "{refused}");
    assert_eq!(passed("journal_lag"), Some(json!(false)), "{refused}");
    let (_, state) = proxy.admin("GET", "/admin/status", None).await?;
    assert_eq!(state["topology"]["primary"], "old");
    assert_eq!(state["topology"]["epoch"], 1);

    hold.release();
    wait_drained(&proxy.admin_url(), "new", BOUND).await?;
    let (status, report) = proxy
        .admin("POST", "/admin/cutover", Some(json!({"max_lag": 0})))
        .await?;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_same_records(&old.url(), &new.url()).await?;
    Ok(())
}

/// A cutover whose drain cannot finish (the secondary holds the replay) times out, releases
/// the held writes and leaves the topology as it was; writes go on, and once the secondary
/// answers both stores agree.
#[tokio::test]
async fn a_cutover_that_times_out_draining_changes_nothing() -> anyhow::Result<()> {
    let (old, new, faulty, builder) = two_stores_one_faulty(BackendName::New).await?;
    let proxy = builder
        .toml(&format!("[mirror]\n{FAST_RETRIES}"))
        .spawn()
        .await?;
    let id = create_collection(&proxy.url(), json!({"name": "draining"})).await?;
    wait_drained(&proxy.admin_url(), "new", BOUND).await?;
    let hold = Hold::new();
    faulty.push_write_faults((0..50).map(|_| Fault::Held(hold.clone(), Box::new(Fault::Forward))));
    let records = format!("{}{DEFAULT_DB}/collections/{id}", proxy.url());
    post_json(
        format!("{records}/add"),
        json!({"ids": ["before"], "embeddings": [[1.0, 2.0]]}),
    )
    .await?;
    hold.wait_arrived(1, BOUND).await?;
    let (status, report) = proxy
        .admin(
            "POST",
            "/admin/cutover",
            Some(json!({"timeout": "1s", "max_lag": 1000})),
        )
        .await?;
    assert!(!status.is_success(), "{status} {report}");
    assert_ne!(report["switched"], true, "{report}");
    let (_, state) = proxy.admin("GET", "/admin/status", None).await?;
    assert_eq!(state["topology"]["primary"], "old", "{state}");
    assert_eq!(state["topology"]["epoch"], 1, "{state}");
    assert_eq!(state["topology"]["paused"], false, "{state}");
    assert_eq!(state["writes_held"], 0, "{state}");
    // The gate is open again: a write is answered.
    tokio::time::timeout(
        BOUND,
        post_json(
            format!("{records}/add"),
            json!({"ids": ["after"], "embeddings": [[3.0, 4.0]]}),
        ),
    )
    .await??;
    hold.release();
    wait_drained(&proxy.admin_url(), "new", BOUND).await?;
    assert_same_records(&old.url(), &new.url()).await?;
    Ok(())
}

/// A collection created with a non-default configuration (cosine space, its own HNSW
/// parameters) through the proxy is created the same on the new store, records and all.
#[tokio::test]
async fn a_non_default_collection_configuration_is_mirrored() -> anyhow::Result<()> {
    let (old, new, proxy) = two_stores_and_proxy("").await?;
    let id = create_collection(&proxy.url(), json!({
            "name": "cosine",
            "metadata": {"purpose": "config"},
            "configuration": {"hnsw": {"space": "cosine", "ef_construction": 150, "max_neighbors": 24}},
        })).await?;
    post_json(
        format!("{}{DEFAULT_DB}/collections/{id}/add", proxy.url()),
        json!({
            "ids": ["a", "b", "c"],
            "embeddings": [[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]],
            "documents": ["a", "b", "c"],
        }),
    )
    .await?;
    wait_drained(&proxy.admin_url(), "new", BOUND).await?;
    for store in [&old, &new] {
        let (_, got) = http_json(
            "GET",
            &format!("{}{DEFAULT_DB}/collections/cosine", store.url()),
            None,
        )
        .await?;
        let hnsw = &got["configuration_json"]["hnsw"];
        assert_eq!(hnsw["space"], "cosine", "{}: {got}", store.url());
        assert_eq!(hnsw["ef_construction"], 150, "{}: {got}", store.url());
        assert_eq!(hnsw["max_neighbors"], 24, "{}: {got}", store.url());
    }
    // compare_stores also compares the whole configuration.
    let compared = assert_same_records(&old.url(), &new.url()).await?;
    assert_eq!(compared.records, 3);
    Ok(())
}

/// A collection renamed and another deleted while clients write records to them: afterwards
/// both stores hold the same collections under the same names, with the same records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_and_delete_racing_record_writes_leave_the_stores_equal() -> anyhow::Result<()> {
    let (old, new, proxy) = two_stores_and_proxy(&format!("[mirror]\n{FAST_RETRIES}")).await?;
    let admin = proxy.admin_url();
    let dir = tempfile::tempdir()?;
    let log = temp_log(&dir);
    let url = proxy.url();
    // Writers on race-0 and race-1; writes to race-1 fail once it is deleted.
    let load = owned_writers(
        &url,
        &log,
        2,
        60,
        404,
        "race",
        &["--tolerate-errors", "--pause-ms", "10"],
    );
    let changes = async {
        wait_until("the load to start", BOUND, || async {
            Ok(counter(
                &admin,
                "chroma_shift_mirrored_writes_total",
                &[("outcome", "journaled")],
            )
            .await?
                >= 10.0)
        })
        .await?;
        let base = format!("{url}{DEFAULT_DB}/collections");
        // Chroma changes a collection by id (a name gets 400 "not a valid UUIDv4"), and
        // deletes it by name.
        let race0_id = collection_id(&url, "race-0").await?;
        let (status, answer) = http_json(
            "PUT",
            &format!("{base}/{race0_id}"),
            Some(json!({"new_name": "race-0-renamed", "new_metadata": {"renamed": true}})),
        )
        .await?;
        anyhow::ensure!(status.is_success(), "rename: {status} {answer}");
        let (status, answer) = http_json("DELETE", &format!("{base}/race-1"), None).await?;
        anyhow::ensure!(status.is_success(), "delete: {status} {answer}");
        anyhow::Ok(())
    };
    let (summary, ()) = tokio::try_join!(load, changes)?;
    assert!(summary["ops"].as_u64().unwrap_or(0) > 20, "{summary}");
    wait_drained(&admin, "new", BOUND).await?;
    let compared = assert_same_records(&old.url(), &new.url()).await?;
    let names: Vec<&String> = compared.per_collection.keys().collect();
    assert_eq!(names, vec!["race-0-renamed"], "{compared:?}");
    assert!(compared.records > 0, "{compared:?}");
    Ok(())
}

/// Runs the `chroma-shift` binary with the admin URL and token in its environment; exit code,
/// stdout, stderr.
async fn chroma_shift(admin_url: &str, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    shift_testkit::process::run_chroma_shift(admin_url, shift_testkit::ADMIN_TOKEN, args).await
}

/// The README's migration walk-through, step by step, against a proxy process: inventory,
/// backfill, verify, `ctl status`, `ctl read-policy --shadow 5`, `ctl cutover --dry-run`,
/// `ctl cutover`, `ctl rollback`; each step's exit code and effect checked, and the stores
/// equal record by record at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walk_through_with_ctl() -> anyhow::Result<()> {
    let (old, new) = two_stores().await?;
    // Data the old store held before the proxy came.
    let seeded_id = create_collection(
        &old.url(),
        json!({"name": "walk", "metadata": {"team": "docs"}}),
    )
    .await?;
    let ids: Vec<String> = (0..50).map(|i| format!("w{i}")).collect();
    post_json(
        format!("{}{DEFAULT_DB}/collections/{seeded_id}/add", old.url()),
        json!({
            "ids": ids,
            "embeddings": (0..50).map(|i| vec![i as f32, 1.0, -1.0]).collect::<Vec<_>>(),
            "documents": ids,
            "metadatas": (0..50).map(|i| json!({"i": i})).collect::<Vec<_>>(),
        }),
    )
    .await?;
    let mut proxy = Proxy::in_front_of(&old, &new).spawn_process().await?;
    let admin = proxy.admin_url();
    let config = proxy.config_path().to_string_lossy().into_owned();
    let run = |args: Vec<String>| {
        let admin = admin.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            chroma_shift(&admin, &args).await
        }
    };
    let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let (code, out, err) = run(args(&["inventory", "--config", &config, "--json"])).await?;
    assert_eq!(code, 0, "inventory: {out}{err}");
    assert!(out.contains("walk"), "{out}");
    let (code, out, err) = run(args(&["backfill", "--config", &config, "--no-progress"])).await?;
    assert_eq!(code, 0, "backfill: {out}{err}");
    let (code, out, err) = run(args(&["verify", "--config", &config])).await?;
    assert_eq!(code, 0, "verify: {out}{err}");
    assert!(out.contains("the stores match"), "{out}");

    let (code, out, err) = run(args(&["ctl", "status", "--json"])).await?;
    assert_eq!(code, 0, "status: {out}{err}");
    let status: Value = serde_json::from_str(&out)?;
    assert_eq!(status["topology"]["primary"], "old", "{status}");
    let (code, out, err) = run(args(&["ctl", "status"])).await?;
    assert_eq!(code, 0, "status: {out}{err}");
    assert!(!out.trim().is_empty(), "status printed nothing");

    let (code, out, err) = run(args(&["ctl", "read-policy", "--shadow", "5", "--json"])).await?;
    assert_eq!(code, 0, "read-policy: {out}{err}");
    let answer: Value = serde_json::from_str(&out)?;
    assert_eq!(
        answer["topology"]["reads"]["shadow_percent"], 5.0,
        "{answer}"
    );

    let (code, out, err) = run(args(&["ctl", "cutover", "--dry-run", "--json"])).await?;
    assert_eq!(code, 0, "cutover --dry-run: {out}{err}");
    let plan: Value = serde_json::from_str(&out)?;
    assert_eq!(plan["switched"], false, "{plan}");
    let (_, state) = shift_testkit::admin_call(
        &admin,
        shift_testkit::ADMIN_TOKEN,
        "GET",
        "/admin/status",
        None,
    )
    .await?;
    assert_eq!(
        state["topology"]["primary"], "old",
        "a dry run changed the topology"
    );

    let (code, out, err) = run(args(&["ctl", "cutover"])).await?;
    assert_eq!(code, 0, "cutover: {out}{err}");
    let (_, state) = shift_testkit::admin_call(
        &admin,
        shift_testkit::ADMIN_TOKEN,
        "GET",
        "/admin/status",
        None,
    )
    .await?;
    assert_eq!(state["topology"]["primary"], "new", "{state}");
    // A write after the cutover goes to the new store first.
    post_json(
        format!("{}{DEFAULT_DB}/collections/{seeded_id}/upsert", proxy.url()),
        json!({"ids": ["w0", "after"], "embeddings": [[9.0, 9.0, 9.0], [8.0, 8.0, 8.0]], "documents": ["changed", "after"]}),
    )
    .await?;
    // A second cutover is refused: exit 3.
    let (code, out, err) = run(args(&["ctl", "cutover"])).await?;
    assert_eq!(code, 3, "a refused cutover: {out}{err}");

    let (code, out, err) = run(args(&["ctl", "rollback", "--json"])).await?;
    assert_eq!(code, 0, "rollback: {out}{err}");
    let report: Value = serde_json::from_str(&out)?;
    assert_eq!(report["switched"], true, "{report}");
    assert_eq!(report["to"], "old", "{report}");

    // A wrong token is refused: exit 1.
    let output = tokio::process::Command::new(shift_testkit::process::chroma_shift_bin()?)
        .args(["ctl", "status"])
        .env("CHROMA_SHIFT_ADMIN_URL", &admin)
        .env("CHROMA_SHIFT_ADMIN_TOKEN", "wrong")
        .output()
        .await?;
    assert_eq!(output.status.code(), Some(1));

    wait_drained(&admin, "new", BOUND).await?;
    wait_drained(&admin, "old", BOUND).await?;
    let compared = assert_same_records(&old.url(), &new.url()).await?;
    assert_eq!(compared.records, 51, "{compared:?}");
    proxy.stop().await?;
    Ok(())
}

/// The proxy process is killed exactly between the primary's answer and the journal commit,
/// with an update and a delete in flight: the primary (behind a fault injector) applied both
/// and holds its answers until after the kill. At restart the proxy finds the two intents,
/// queues reconciliations, and the secondary ends with exactly what the primary holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_the_primary_answer_and_the_journal_commit_is_recovered(
) -> anyhow::Result<()> {
    let (old, new, faulty, builder) = two_stores_one_faulty(BackendName::Old).await?;
    let mut proxy = builder
        .toml(&format!("[mirror]\n{FAST_RETRIES}"))
        .spawn_process()
        .await?;
    let admin = proxy.admin_url();
    let id = create_collection(&proxy.url(), json!({"name": "crash"})).await?;
    let records = format!("{}{DEFAULT_DB}/collections/{id}", proxy.url());
    let ids: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    post_json(
        format!("{records}/add"),
        json!({
            "ids": ids,
            "embeddings": (0..10).map(|i| vec![i as f32, 0.5]).collect::<Vec<_>>(),
            "metadatas": (0..10).map(|i| json!({"v": i})).collect::<Vec<_>>(),
            "documents": ids,
        }),
    )
    .await?;
    wait_drained(&admin, "new", BOUND).await?;

    // The next two record writes are applied on the primary, and their answers held.
    let hold = Hold::new();
    let applied_then_held = || {
        Fault::ForwardThen(Box::new(Fault::Held(
            hold.clone(),
            Box::new(Fault::Status(StatusCode::OK, "{}".to_owned())),
        )))
    };
    faulty.push_write_faults([applied_then_held(), applied_then_held()]);
    let update = tokio::spawn(post_json(
        format!("{records}/update"),
        json!({"ids": ["r1", "r2"], "embeddings": [[-1.0, -1.0], [-2.0, -2.0]], "metadatas": [{"v": 100}, {"v": 200}], "documents": ["u1", "u2"]}),
    ));
    let delete = tokio::spawn(post_json(
        format!("{records}/delete"),
        json!({"ids": ["r7", "r8"]}),
    ));
    hold.wait_arrived(2, BOUND).await?;
    proxy.kill9().await?;
    // The clients never got an answer.
    assert!(update.await?.is_err(), "the update was answered");
    assert!(delete.await?.is_err(), "the delete was answered");
    hold.release();

    proxy.restart().await?;
    let log = proxy.log_tail(200);
    assert!(
        log.contains("recovered writes in flight") && log.contains("count=2"),
        "recovery did not find the two writes in flight:\n{log}"
    );
    wait_drained(&admin, "new", BOUND).await?;
    let compared = assert_same_records(&old.url(), &new.url()).await?;
    assert_eq!(compared.records, 8, "{compared:?}");
    let dump = shift_testkit::stores::dump_database(&new.url(), DEFAULT_DB).await?;
    let crash = &dump["crash"].records;
    assert_eq!(crash["r1"].metadata, json!({"v": 100}));
    assert_eq!(crash["r2"].embedding, Some(vec![-2.0, -2.0]));
    assert!(!crash.contains_key("r7") && !crash.contains_key("r8"));
    proxy.stop().await?;
    Ok(())
}
