//! Chroma's own test suite (shipped in the chromadb wheel under `chromadb/test`) through the
//! proxy: the subset in `tests/python/chroma_suite_subset.txt`, run by
//! `scripts/chroma-suite.sh --subset` against Chroma directly and then through chroma-shift in
//! front of two Chroma servers. Fails when a test that passes directly fails through the proxy,
//! when writes were parked as dead letters (applied on the primary only), or when the two
//! stores differ afterwards. The full list runs with `scripts/chroma-suite.sh --full`.

use std::process::Stdio;
use std::time::Duration;

use shift_testkit::process::chroma_shift_bin;
use shift_testkit::repo_root;

/// Only turns a hung run into a failure; the subset takes a few minutes.
const RUN_LIMIT: Duration = Duration::from_secs(20 * 60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromas_tests_that_pass_directly_pass_through_the_proxy() -> anyhow::Result<()> {
    let bin = tokio::task::spawn_blocking(chroma_shift_bin).await??;
    let out = tempfile::Builder::new().prefix("chroma-suite-").tempdir()?;
    let child = tokio::process::Command::new("bash")
        .arg(repo_root().join("scripts/chroma-suite.sh"))
        .arg("--subset")
        .env("CHROMA_SHIFT_BIN", &bin)
        .env("CHROMA_SUITE_OUT", out.path())
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id();
    let output = match tokio::time::timeout(RUN_LIMIT, child.wait_with_output()).await {
        Ok(output) => output?,
        Err(_) => {
            // SIGTERM lets the script stop the servers it started (a SIGKILL on drop would
            // leave them running).
            if let Some(pid) = pid {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            anyhow::bail!("scripts/chroma-suite.sh ran longer than {RUN_LIMIT:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(
        stdout.contains("tests that pass directly"),
        "the suite did not run to its comparison ({})",
        output.status
    );
    assert!(
        output.status.success(),
        "tests that pass against Chroma directly fail through the proxy ({}); the list is above",
        output.status
    );
    Ok(())
}
