//! The proxy as a separate process: the `chroma-shift` binary run with `serve --config FILE`,
//! for tests that must kill it as a crash would (`kill -9`) and start it again on the same
//! config and state.
//!
//! The child cannot tell its ports, so they are picked free up front (bind port 0, read it,
//! release it) and written into the config; the proxy is ready when
//! `GET /api/v2/heartbeat` answers through it. The binary is found next to the test executable
//! and built first when missing or stale ([`chroma_shift_bin`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use shift_local_chroma::free_port;

use crate::{repo_root, ProxyBuilder};

/// How long a started proxy may take to answer its first heartbeat.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A `chroma-shift serve` child process.
#[derive(Debug)]
pub struct ProxyProcess {
    bin: PathBuf,
    /// Holds the config file and the log (and the state, unless the builder named a dir).
    dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
    data: SocketAddr,
    admin: SocketAddr,
    client_tokens: Vec<String>,
    /// Extra environment for the next launches (FAILPOINTS, say).
    env: Vec<(String, String)>,
    child: Option<tokio::process::Child>,
}

impl ProxyBuilder {
    /// Starts the proxy this builder describes as a child process (see [`ProxyProcess`]).
    pub async fn spawn_process(self) -> anyhow::Result<ProxyProcess> {
        ProxyProcess::start(self).await
    }
}

impl ProxyProcess {
    /// Writes the builder's config with fixed free ports and starts the binary on it.
    pub async fn start(builder: ProxyBuilder) -> anyhow::Result<ProxyProcess> {
        let mut process = ProxyProcess::prepare(builder).await?;
        process.launch().await?;
        Ok(process)
    }

    /// Writes the config; launches nothing.
    async fn prepare(builder: ProxyBuilder) -> anyhow::Result<ProxyProcess> {
        let bin = tokio::task::spawn_blocking(chroma_shift_bin).await??;
        let dir = tempfile::Builder::new()
            .prefix("chroma-shift-process-")
            .tempdir()?;
        let state = builder
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        let data = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let text = builder.config_text(&data.to_string(), &admin.to_string(), &state);
        // Fail here, with the reason, rather than in the child.
        shift_config::Config::from_toml(&text).context("the proxy process's config")?;
        let config = dir.path().join("chroma-shift.toml");
        std::fs::write(&config, text)?;
        let log = dir.path().join("chroma-shift.log");
        let process = ProxyProcess {
            bin,
            dir,
            config,
            log,
            data,
            admin,
            client_tokens: builder.client_tokens,
            env: Vec::new(),
            child: None,
        };
        Ok(process)
    }

    /// Starts the proxy with `env` set (for example `FAILPOINTS`), and keeps it for restarts
    /// until [`ProxyProcess::clear_env`].
    pub async fn start_with_env(
        builder: ProxyBuilder,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ProxyProcess> {
        let mut process = ProxyProcess::prepare(builder).await?;
        process.set_env(env);
        process.launch().await?;
        Ok(process)
    }

    /// The extra environment of the next launches (replacing what was set before).
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// The Chroma URL for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.data)
    }

    /// The admin listener's URL (`/metrics`).
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The config file the process runs with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Runs `chroma-shift verify --config` with this process's config through its admin API,
    /// as an operator would; fails with verify's output unless it exits 0 (the stores match).
    pub async fn verify(&self) -> anyhow::Result<()> {
        let config = self.config.display().to_string();
        let (code, out, err) = run_chroma_shift(
            &self.admin_url(),
            crate::ADMIN_TOKEN,
            &["verify", "--config", &config],
        )
        .await?;
        anyhow::ensure!(code == 0, "verify exited {code}:\n{out}\n{err}");
        Ok(())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }

    /// The last lines of the process's log (every run of it appends there).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills the process with SIGKILL (`kill -9 PID`): no drain, no flush, as a crash.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        let mut child = self
            .child
            .take()
            .context("the proxy process is not running")?;
        let pid = child.id().context("the proxy process already exited")?;
        let status = tokio::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .await
            .context("cannot run `kill`")?;
        anyhow::ensure!(status.success(), "`kill -9 {pid}` failed: {status}");
        let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .context("the proxy process outlived kill -9")??;
        note(&format!("proxy process {pid} killed: {exit}"));
        Ok(())
    }

    /// Stops the process with SIGTERM and waits for its graceful drain.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
            Ok(result) => {
                result?;
            }
            Err(_) => {
                let _ = child.kill().await;
                anyhow::bail!("the proxy process did not stop within 30s of SIGTERM");
            }
        }
        Ok(())
    }

    /// Starts the process again on the same config, ports and state (after [`kill9`] or
    /// [`stop`]), and waits until it serves.
    ///
    /// [`kill9`]: ProxyProcess::kill9
    /// [`stop`]: ProxyProcess::stop
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.child.is_none(),
            "restart: the proxy process is still running"
        );
        self.launch().await
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        // The binary reads its secrets from the environment: the admin token every test
        // proxy accepts, and the client tokens when client auth is on.
        command.env("CHROMA_SHIFT_ADMIN_TOKEN", crate::ADMIN_TOKEN);
        if !self.client_tokens.is_empty() {
            command.env("CHROMA_SHIFT_CLIENT_TOKENS", self.client_tokens.join(","));
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let heartbeat = format!("{}/api/v2/heartbeat", self.url());
        let child = self
            .child
            .as_mut()
            .context("the proxy process is not running")?;
        match wait_heartbeat(child, &heartbeat, READY_TIMEOUT, Duration::from_millis(50)).await? {
            Ok(()) => Ok(()),
            Err(NotReady::Exited(status)) => {
                self.child = None;
                anyhow::bail!(
                    "the proxy process exited at start ({status}); its log ends with:\n{}",
                    self.log_tail(40)
                )
            }
            Err(NotReady::Silent) => anyhow::bail!(
                "the proxy process did not answer {heartbeat} within {READY_TIMEOUT:?}; its log ends with:\n{}",
                self.log_tail(40)
            ),
        }
    }
}

/// Why a started server is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// It exited first.
    Exited(std::process::ExitStatus),
    /// It did not answer in time.
    Silent,
}

/// Waits until `heartbeat` (a Chroma or the proxy) answers 2xx, polling every `every`; a
/// [`NotReady`] when `child` exits first or `limit` passes. For the callers that started the
/// server and know where its log is (the test kit's proxy process, the benches).
pub async fn wait_heartbeat(
    child: &mut tokio::process::Child,
    heartbeat: &str,
    limit: Duration,
    every: Duration,
) -> anyhow::Result<Result<(), NotReady>> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Err(NotReady::Exited(status)));
        }
        if let Ok((status, _, _)) = crate::http("GET", heartbeat, &[], Vec::new()).await {
            if status.is_success() {
                return Ok(Ok(()));
            }
        }
        if started.elapsed() > limit {
            return Ok(Err(NotReady::Silent));
        }
        tokio::time::sleep(every).await;
    }
}

/// Notes for a failing test's output (the test harness shows stderr of failed tests only).
fn note(text: &str) {
    eprintln!("[shift-testkit] {text}");
}

/// Runs `chroma-shift ARGS` (`ctl ...`, `backfill ...`) as an operator would, with the admin
/// API's URL and the admin `token` in the environment; its exit code, stdout and stderr.
pub async fn run_chroma_shift(
    admin_url: &str,
    token: &str,
    args: &[&str],
) -> anyhow::Result<(i32, String, String)> {
    run_chroma_shift_in(None, admin_url, token, args).await
}

/// [`run_chroma_shift`] in the directory `dir` (the current one when `None`), where relative
/// paths such as `--config .demo/chroma-shift.toml` resolve.
pub async fn run_chroma_shift_in(
    dir: Option<&Path>,
    admin_url: &str,
    token: &str,
    args: &[&str],
) -> anyhow::Result<(i32, String, String)> {
    let mut command = tokio::process::Command::new(chroma_shift_bin()?);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command
        .args(args)
        .env("CHROMA_SHIFT_ADMIN_URL", admin_url)
        .env("CHROMA_SHIFT_ADMIN_TOKEN", token)
        .env("ANONYMIZED_TELEMETRY", "False")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// The `chroma-shift` binary: `$CHROMA_SHIFT_BIN`, or the one cargo builds next to the test
/// executable (`target/<profile>/chroma-shift`).
///
/// `cargo test -p <one package>` does not build other packages' binaries, and a binary left
/// from an earlier build would test old code: when the binary is missing or older than a
/// source file it is built from, this runs `cargo build -p chroma-shift` once per test
/// process. (Not always: a build of one package unifies features differently from a workspace
/// build, so it would recompile a fresh binary, and the next workspace build again.)
pub fn chroma_shift_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_and_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// The newest modification time of the sources the binary is built from: the workspace's
/// manifests and lock file, and every crate but the test kit.
fn newest_source(root: &Path) -> Option<SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<SystemTime>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                // A crate's integration tests, examples and benches are not part of the
                // binary: a change to one must not make the binary look stale (its rebuild
                // here would drop the workspace build's features, such as failpoints).
                if !["target", "shift-testkit", "tests", "examples", "benches"]
                    .iter()
                    .any(|skipped| name == *skipped)
                {
                    walk(&path, newest);
                }
            } else if path.extension().is_some_and(|e| e == "rs") || name == "Cargo.toml" {
                note_mtime(&path, newest);
            }
        }
    }
    let mut newest = None;
    note_mtime(&root.join("Cargo.toml"), &mut newest);
    note_mtime(&root.join("Cargo.lock"), &mut newest);
    walk(&root.join("crates"), &mut newest);
    newest
}

fn note_mtime(path: &Path, newest: &mut Option<SystemTime>) {
    if let Ok(modified) = std::fs::metadata(path).and_then(|m| m.modified()) {
        if newest.is_none_or(|n| modified > n) {
            *newest = Some(modified);
        }
    }
}

fn locate_and_build() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("CHROMA_SHIFT_BIN") {
        let bin = PathBuf::from(bin);
        anyhow::ensure!(
            bin.is_file(),
            "CHROMA_SHIFT_BIN={} is not a file",
            bin.display()
        );
        return Ok(bin);
    }
    let exe = std::env::current_exe().context("cannot find the test executable")?;
    let exe_dir = exe
        .parent()
        .context("the test executable has no directory")?;
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = if exe_dir.file_name().is_some_and(|n| n == "deps") {
        exe_dir.parent().unwrap_or(exe_dir)
    } else {
        exe_dir
    };
    let bin = profile_dir.join(format!("chroma-shift{}", std::env::consts::EXE_SUFFIX));
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let target_dir = profile_dir.parent().unwrap_or(profile_dir);

    let built_at = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let fresh = match (built_at, newest_source(&repo_root())) {
        (Some(built), Some(source)) => built >= source,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if fresh {
        return Ok(bin);
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        .args([
            "build",
            "--quiet",
            "-p",
            "chroma-shift",
            "--bin",
            "chroma-shift",
        ])
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match profile.as_str() {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    // A binary older than its sources would test old code: no fallback to it.
    let output = command.output().with_context(|| {
        format!(
            "{} is missing or older than its sources, and cargo could not be run: build it with `cargo build -p chroma-shift` or set CHROMA_SHIFT_BIN",
            bin.display()
        )
    })?;
    anyhow::ensure!(
        output.status.success(),
        "{} is missing or older than its sources, and `cargo build -p chroma-shift` failed:\n{}",
        bin.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(
        bin.is_file(),
        "{} is missing after the build: build it with `cargo build -p chroma-shift` or set CHROMA_SHIFT_BIN",
        bin.display()
    );
    Ok(bin)
}

/// The resident set of process `pid` (`VmRSS` in /proc/PID/status), in bytes.
pub fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}
