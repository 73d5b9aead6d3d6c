//! Runs Python scripts with the official `chromadb` client from the repo's venv.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

use crate::repo_root;

/// The venv's interpreter (`$CHROMA_SHIFT_PYTHON` overrides it).
pub fn python() -> anyhow::Result<PathBuf> {
    if let Some(python) = std::env::var_os("CHROMA_SHIFT_PYTHON") {
        return Ok(PathBuf::from(python));
    }
    let venv = repo_root().join(".venv/bin/python");
    anyhow::ensure!(
        venv.is_file(),
        "no {}: run scripts/test.sh, which creates the venv with chromadb==1.5.9",
        venv.display()
    );
    Ok(venv)
}

/// What a script printed.
#[derive(Debug)]
pub struct ScriptOutput {
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tests/python/<script>` with `args`; fails with its output when it exits non-zero
/// or runs longer than `limit`.
pub async fn run_script(
    script: &str,
    args: &[&str],
    limit: Duration,
) -> anyhow::Result<ScriptOutput> {
    run_script_at(&repo_root().join("tests/python").join(script), args, limit).await
}

/// Runs the script at `path` (the benches keep theirs in `benches/python`) like
/// [`run_script`].
pub async fn run_script_at(
    path: &Path,
    args: &[&str],
    limit: Duration,
) -> anyhow::Result<ScriptOutput> {
    let mut command = tokio::process::Command::new(python()?);
    command
        .arg(path)
        .args(args)
        .env("ANONYMIZED_TELEMETRY", "False");
    run_command(command, &path.display().to_string(), args, limit).await
}

/// Runs a client script's `command` (`script` and `args` name it in errors); fails with its
/// output when it exits non-zero or runs longer than `limit`.
pub(crate) async fn run_command(
    mut command: tokio::process::Command,
    script: &str,
    args: &[&str],
    limit: Duration,
) -> anyhow::Result<ScriptOutput> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {script}"))?;
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("{script} ran longer than {limit:?}"))??;
    let result = ScriptOutput {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    anyhow::ensure!(
        output.status.success(),
        "{script} {args:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        result.stdout,
        result.stderr
    );
    Ok(result)
}
