//! The online backfill, as ops run it: a large collection on the old store is copied to the
//! new one through `chroma-shift backfill` while clients update, delete and add through the
//! proxy; the proxy is killed with `kill -9` midway and the backfill resumes from its
//! checkpoint; `chroma-shift verify` then finds the stores identical.
//!
//! The collection holds 100,000 records of 384 dimensions unless CHROMA_SHIFT_BACKFILL_RECORDS
//! says otherwise (a developer's quick run).

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use shift_testkit::knobs::env_or;
use shift_testkit::process::chroma_shift_bin;
use shift_testkit::python::run_script;
use shift_testkit::scrape::wait_drained;
use shift_testkit::stores::assert_same_records;
use shift_testkit::{Chroma, Proxy, ADMIN_TOKEN};

const DIM: usize = 384;

fn records() -> usize {
    env_or("CHROMA_SHIFT_BACKFILL_RECORDS", 100_000)
}

/// Runs a `chroma-shift` command to its end; its exit code and output.
async fn chroma_shift(args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    let output = tokio::process::Command::new(chroma_shift_bin()?)
        .args(args)
        .env("CHROMA_SHIFT_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.code(), text))
}

async fn backfill_progress(admin: &str) -> anyhow::Result<Value> {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (_, _, body) = shift_testkit::http(
        "GET",
        &format!("{admin}/admin/backfill"),
        &[("authorization", auth.as_str())],
        "",
    )
    .await?;
    Ok(serde_json::from_slice(&body)?)
}

#[tokio::test]
async fn a_large_collection_is_backfilled_under_live_traffic_and_resumes_after_a_kill(
) -> anyhow::Result<()> {
    let n = records();
    let (old, new) = tokio::join!(Chroma::spawn(), Chroma::spawn());
    let (old, new) = (old?, new?);
    let started = Instant::now();
    let seeded = run_script(
        "seed.py",
        &[
            "--url",
            &old.url(),
            "--collection",
            "catalog",
            "--count",
            &n.to_string(),
            "--dim",
            &DIM.to_string(),
        ],
        Duration::from_secs(900),
    )
    .await?;
    eprintln!(
        "seeded {n} records in {:?}: {}",
        started.elapsed(),
        seeded.stdout.trim()
    );

    let mut proxy = Proxy::in_front_of(&old, &new).spawn_process().await?;
    let config = proxy.config_path().to_string_lossy().into_owned();

    // Live traffic through the proxy for the whole backfill, across the kill.
    let churn = {
        let url = proxy.url();
        let existing = n.to_string();
        tokio::spawn(async move {
            run_script(
                "churn.py",
                &[
                    "--url",
                    &url,
                    "--collection",
                    "catalog",
                    "--existing",
                    &existing,
                    "--ops",
                    "400",
                    "--dim",
                    "384",
                    "--tolerate-errors",
                    "--pause-ms",
                    "50",
                ],
                Duration::from_secs(900),
            )
            .await
        })
    };

    // First run: killed with the proxy once a good part is copied.
    let first = {
        let config = config.clone();
        tokio::spawn(async move {
            chroma_shift(&[
                "backfill",
                "--config",
                &config,
                "--no-progress",
                "--batch-size",
                "1000",
            ])
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let progress = backfill_progress(&proxy.admin_url()).await?;
        let done = progress["done_records"].as_u64().unwrap_or(0);
        if done as usize >= n / 4 {
            eprintln!("killing the proxy at {done} of {n} records copied");
            break;
        }
        anyhow::ensure!(progress["state"] != "failed", "backfill failed: {progress}");
        anyhow::ensure!(
            Instant::now() < deadline,
            "the backfill made no progress: {progress}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.kill9().await?;
    let (code, output) = first.await??;
    assert_ne!(
        code,
        Some(0),
        "the first backfill cannot succeed with its proxy killed: {output}"
    );
    proxy.restart().await?;

    // Second run: resumes from the checkpoint the first one left.
    let (code, output) = chroma_shift(&["backfill", "--config", &config, "--no-progress"]).await?;
    assert_eq!(code, Some(0), "{output}\n{}", proxy.log_tail(30));
    let progress = backfill_progress(&proxy.admin_url()).await?;
    let catalog = &progress["collections"][0];
    let resumed = catalog["resumed_from_checkpoint"].as_u64().unwrap_or(0);
    // The first run was killed after a quarter was copied; its checkpoint lags at most one
    // batch (1,000 records) behind.
    assert!(
        resumed > 0 && resumed as usize >= (n / 4).saturating_sub(1000),
        "did not resume from the checkpoint: {progress}"
    );
    assert!(
        output.contains("covered by an earlier run's checkpoint"),
        "{output}"
    );

    let churned: Value = serde_json::from_str(churn.await??.stdout.trim())?;
    assert!(
        churned["updates"].as_u64().unwrap_or(0) > 50
            && churned["deletes"].as_u64().unwrap_or(0) > 20,
        "{churned}"
    );
    // Every op was made, and the only errors the clients saw were transport errors while the
    // proxy was down (killed and restarting): none was an answer the proxy gave.
    let made: u64 = ["updates", "deletes", "adds"]
        .iter()
        .map(|k| churned[*k].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(made, 400, "{churned}");
    let kinds = churned["error_kinds"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(
        kinds.keys().all(|kind| kind.starts_with("httpx.")),
        "a client saw an error that was not the proxy being down: {churned}"
    );
    assert_eq!(
        kinds.values().filter_map(Value::as_u64).sum::<u64>(),
        churned["errors"].as_u64().unwrap_or(0),
        "{churned}"
    );
    wait_drained(&proxy.admin_url(), "new", Duration::from_secs(300)).await?;

    // Uniform random vectors in 384 dimensions are the worst case for HNSW: two graphs built
    // in different orders return different ids among near-ties. Verify tells that noise from
    // loss by the distance gap; records must match exactly.
    let (code, report) = chroma_shift(&["verify", "--config", &config]).await?;
    assert_eq!(
        code,
        Some(0),
        "verify found divergence after the backfill:\n{report}"
    );
    // And independently of verify: every record, field by field (embeddings by f32 bits).
    let compared = assert_same_records(&old.url(), &new.url()).await?;
    let held = compared.per_collection.get("catalog").copied().unwrap_or(0);
    let added = churned["adds"].as_u64().unwrap_or(0) as usize;
    assert!(
        held > n / 2 && held <= n + added * 10,
        "catalog holds {held} records after {n} seeded: {compared:?}"
    );
    eprintln!("total {:?}", started.elapsed());
    Ok(())
}
