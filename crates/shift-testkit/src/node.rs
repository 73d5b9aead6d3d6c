//! Runs Node scripts with the official JavaScript client (npm `chromadb`, pinned in
//! `tests/js/package.json`, installed by `npm ci` there).

use std::path::PathBuf;
use std::time::Duration;

use crate::python::{run_command, ScriptOutput};
use crate::repo_root;

/// `tests/js`, with its `node_modules` installed.
pub fn js_dir() -> anyhow::Result<PathBuf> {
    let dir = repo_root().join("tests/js");
    anyhow::ensure!(
        dir.join("node_modules/chromadb").is_dir(),
        "no {}/node_modules/chromadb: run `npm ci` in {} (.ci/run does)",
        dir.display(),
        dir.display()
    );
    Ok(dir)
}

/// Runs `tests/js/<script>` with `node` (`$CHROMA_SHIFT_NODE` overrides it) and `args`;
/// fails with its output when it exits non-zero or runs longer than `limit`.
pub async fn run_script(
    script: &str,
    args: &[&str],
    limit: Duration,
) -> anyhow::Result<ScriptOutput> {
    let dir = js_dir()?;
    let node = std::env::var_os("CHROMA_SHIFT_NODE").unwrap_or_else(|| "node".into());
    let mut command = tokio::process::Command::new(node);
    command.current_dir(&dir).arg(dir.join(script)).args(args);
    run_command(command, &format!("tests/js/{script}"), args, limit).await
}
