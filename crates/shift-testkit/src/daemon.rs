//! A server binary run as a child process for a test (etcd, nats-server): started with fixed
//! arguments, its output appended to a log file, stopped (SIGKILL), paused (SIGSTOP) and
//! continued, started again on the same arguments, and killed when dropped. Also the one
//! plain HTTP GET the readiness checks use.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One child server process.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// A daemon `name` that runs `bin args`, logging to `log`; not started yet.
    pub fn new(name: &str, bin: &Path, args: Vec<String>, log: PathBuf) -> Daemon {
        Daemon {
            name: name.to_owned(),
            bin: bin.to_owned(),
            args,
            log,
            child: None,
        }
    }

    /// Starts the process (again, after a [`Daemon::kill`]).
    pub fn start(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the process with SIGKILL and reaps it; nothing when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process was started and has not exited.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the running process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .with_context(|| format!("{} is not running", self.name))?;
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .context("cannot run `kill`")?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid}: {status}");
        Ok(())
    }

    /// Waits until `GET path` on `port` answers 200 with a body containing `healthy`, within
    /// `limit`; fails at once if the process exits, and with the log's tail either way.
    pub async fn wait_healthy(
        &mut self,
        port: u16,
        path: &str,
        healthy: &str,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let what = format!("{} to answer {path} healthy", self.name);
        let result = crate::wait::wait_until(&what, limit, || {
            let exited = !self.running();
            async move {
                anyhow::ensure!(!exited, "the process exited");
                Ok(matches!(
                    http_get(port, path).await,
                    Ok((200, body)) if body.contains(healthy)
                ))
            }
        })
        .await;
        result.with_context(|| format!("{}; its log:\n{}", self.name, self.log_tail(30)))
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A paused process must be continued to die promptly on some kernels; SIGKILL works
        // on a stopped one too, so kill is enough.
        self.kill();
    }
}

/// `GET path` on `127.0.0.1:port` over plain HTTP/1.0: the status code and the body, or an
/// error when nothing answers within a second.
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        anyhow::Ok(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .context("no answer within 1 s")??;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("not an HTTP answer")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The binary named by the environment variable `env`, else the first of `candidates` that
/// exists, else `name` on the PATH.
pub fn find_bin(env: &str, candidates: &[PathBuf], name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        })
        .with_context(|| format!("`{name}` not found: set {env}, or install it (see .ci/run)"))
}
