//! The README's migration walk-through, run as written against the quickstart: the
//! quickstart (`chroma-shift quickstart`, two local Chroma servers and the proxy) starts in a
//! temp dir on free ports and writes `.demo/chroma-shift.toml`; an "application" writes
//! through the proxy while the old store already holds a collection from before; then every
//! `chroma-shift` line of the README's walk-through block runs in that dir, unchanged, and
//! must exit 0 (inventory, backfill, verify, cutover, finalize and its undo, rollback, audit).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use shift_local_chroma::free_port;
use shift_testkit::collection::create_collection;
use shift_testkit::process::{chroma_shift_bin, run_chroma_shift_in};
use shift_testkit::stores::{ids_by_name, post_json, DEFAULT_DB};
use shift_testkit::wait::wait_until;
use shift_testkit::{chroma_bin, http, repo_root, ADMIN_TOKEN};

const BOUND: Duration = Duration::from_secs(90);
const START: &str = "<!-- walkthrough: start -->";
const END: &str = "<!-- walkthrough: end -->";

/// The `chroma-shift` command lines of the README's walk-through, comments cut.
fn walkthrough() -> anyhow::Result<Vec<Vec<String>>> {
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let start = readme
        .find(START)
        .ok_or_else(|| anyhow::anyhow!("no {START} in README"))?;
    let end = readme
        .find(END)
        .ok_or_else(|| anyhow::anyhow!("no {END} in README"))?;
    Ok(readme[start..end]
        .lines()
        .filter(|line| line.starts_with("chroma-shift "))
        .map(|line| {
            let command = line.split(" #").next().unwrap_or(line);
            command
                .split_whitespace()
                .skip(1)
                .map(str::to_owned)
                .collect()
        })
        .collect())
}

async fn run(dir: &Path, admin: &str, args: &[String]) -> anyhow::Result<(i32, String)> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run_chroma_shift_in(Some(dir), admin, ADMIN_TOKEN, &args).await?;
    Ok((code, out + &err))
}

#[tokio::test]
async fn the_readme_walkthrough_runs_as_written_against_the_quickstart() -> anyhow::Result<()> {
    let commands = walkthrough()?;
    assert!(
        commands.len() >= 8,
        "the walk-through has its steps: {commands:?}"
    );
    let dir = tempfile::tempdir()?;
    let [data, admin, old_port, new_port] =
        [free_port()?, free_port()?, free_port()?, free_port()?];
    let log = dir.path().join("quickstart.log");
    let mut quickstart = tokio::process::Command::new(chroma_shift_bin()?)
        .args(["quickstart", "--listen"])
        .arg(format!("127.0.0.1:{data}"))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin}"))
        .args([
            "--old-port",
            &old_port.to_string(),
            "--new-port",
            &new_port.to_string(),
        ])
        .current_dir(dir.path())
        .env("CHROMA_BIN", chroma_bin()?)
        .env("CHROMA_SHIFT_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("ANONYMIZED_TELEMETRY", "False")
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&log)?))
        .stderr(Stdio::from(
            std::fs::File::options().append(true).open(&log)?,
        ))
        .kill_on_drop(true)
        .spawn()?;
    let proxy = format!("http://127.0.0.1:{data}");
    let old = format!("http://127.0.0.1:{old_port}");
    let new = format!("http://127.0.0.1:{new_port}");
    let heartbeat = format!("{proxy}/api/v2/heartbeat");
    let ready = wait_until("the quickstart to serve", BOUND, || {
        let exited = quickstart.try_wait().map(|status| status.is_some());
        let (heartbeat, log) = (heartbeat.clone(), log.clone());
        async move {
            anyhow::ensure!(
                !exited?,
                "the quickstart exited: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            let answer = http("GET", &heartbeat, &[], Vec::new()).await;
            Ok(matches!(answer, Ok((status, _, _)) if status.is_success()))
        }
    })
    .await;
    let printed = std::fs::read_to_string(&log)?;
    ready.map_err(|e| anyhow::anyhow!("{e}\n{printed}"))?;

    // It wrote the config it runs with, and printed where and what.
    let config = dir.path().join(".demo/chroma-shift.toml").canonicalize()?;
    let written = std::fs::read_to_string(&config)?;
    assert!(
        printed.contains(&format!("config: {}", config.display())),
        "{printed}"
    );
    assert!(
        printed.contains(&written),
        "the config is printed whole: {printed}"
    );
    assert!(
        written.contains(&format!("listen = \"127.0.0.1:{data}\"")),
        "{written}"
    );

    // Data from before: a collection only the old store holds; and writes through the proxy.
    let legacy = create_collection(&old, json!({"name": "legacy"})).await?;
    let ids: Vec<String> = (0..50).map(|i| format!("l-{i}")).collect();
    let embeddings: Vec<[f32; 3]> = (0..50).map(|i| [i as f32, 0.5, 1.0]).collect();
    post_json(
        format!("{old}{DEFAULT_DB}/collections/{legacy}/add"),
        json!({"ids": ids, "embeddings": embeddings}),
    )
    .await?;
    let live = create_collection(&proxy, json!({"name": "live"})).await?;
    post_json(
        format!("{proxy}{DEFAULT_DB}/collections/{live}/upsert"),
        json!({"ids": ["a", "b"], "embeddings": [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]}),
    )
    .await?;

    let admin_url = format!("http://127.0.0.1:{admin}");
    for args in &commands {
        let (code, out) = run(dir.path(), &admin_url, args).await?;
        assert_eq!(
            code,
            0,
            "chroma-shift {} exited {code}:\n{out}",
            args.join(" ")
        );
    }
    assert_eq!(
        ids_by_name(&new, "legacy").await?.len(),
        50,
        "the backfill copied it"
    );

    // The live view: two frames, each a cleared screen with the whole status, then it stops.
    let watch: Vec<String> = ["ctl", "status", "--watch", "0.2", "--count", "2"]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    let (code, out) = run(dir.path(), &admin_url, &watch).await?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("\x1b[2J\x1b[H").count(), 2, "{out}");
    assert_eq!(out.matches("primary      old").count(), 2, "{out}");
    assert!(out.contains("finalize     undone at"), "{out}");

    if let Some(pid) = quickstart.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    let stopped = tokio::time::timeout(Duration::from_secs(30), quickstart.wait()).await;
    assert!(stopped.is_ok(), "the quickstart stops on SIGTERM");
    Ok(())
}
