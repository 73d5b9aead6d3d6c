//! Processes the benches start, and their CPU time from /proc.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shift_control::AdminClient;
pub use shift_local_chroma::free_port;
use shift_testkit::process::{wait_heartbeat, NotReady};
use shift_testkit::Chroma;
use tokio::process::Child;

/// A process a bench started; asked to stop (SIGTERM), then killed, when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    /// The proxy's admin listener (`/metrics`).
    pub admin: Option<String>,
    /// The proxy's admin API, with its token.
    pub admin_api: Option<AdminClient>,
    /// The proxy's state directory when it is not inside the bench's temp dir.
    pub state: Option<tempfile::TempDir>,
}

impl Server {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The proxy's admin API.
    pub fn admin_api(&self) -> anyhow::Result<&AdminClient> {
        self.admin_api
            .as_ref()
            .with_context(|| format!("{} has no admin API", self.url))
    }
}

impl Drop for Server {
    /// Asks the process to stop (SIGTERM) and waits up to 5 s, then kills it. A plain SIGKILL
    /// would leave nginx's workers running: they only leave with a master that stops them.
    fn drop(&mut self) {
        let Some(pid) = self.child.id() else {
            return;
        };
        terminate(pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.start_kill();
    }
}

/// Sends SIGTERM to `pid`.
fn terminate(pid: u32) {
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Waits until `server` answers `GET /api/v2/heartbeat` (30 s at most); fails with `log`'s
/// text if it exits or never answers.
pub async fn wait_ready(server: &mut Server, what: &str, log: &Path) -> anyhow::Result<()> {
    let heartbeat = format!("{}/api/v2/heartbeat", server.url);
    let ready = wait_heartbeat(
        &mut server.child,
        &heartbeat,
        Duration::from_secs(30),
        Duration::from_millis(100),
    )
    .await?;
    let text = || std::fs::read_to_string(log).unwrap_or_default();
    match ready {
        Ok(()) => Ok(()),
        Err(NotReady::Exited(status)) => {
            bail!(
                "{what} exited ({status}) before it answered; its log:\n{}",
                text()
            )
        }
        Err(NotReady::Silent) => bail!(
            "{what} did not answer {heartbeat} within 30 s; its log:\n{}",
            text()
        ),
    }
}

/// Stops a Chroma server the polite way: SIGTERM to its `chroma run` process, up to 5 s to
/// leave, then the test kit's drop (SIGKILL) for whatever is left.
pub async fn shutdown_chroma(chroma: Chroma) {
    if let Some(pid) = find_chroma_pid(chroma.addr().port()) {
        terminate(pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && process_alive(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(chroma);
}

/// Whether `pid` is a running (not zombie) process.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// CPU accounting, from /proc.

/// User plus system CPU time of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which sits in parentheses and may hold spaces; `state`
    // is field 3, `utime` 14 and `stime` 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A process and its direct children (nginx's workers).
pub fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids
}

pub fn total_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| cpu_ticks(*p)).sum()
}

/// The `chroma run` process listening on `port`, found by its command line: a child of this
/// process (the test kit starts Chroma), since other people's tests may run Chroma servers
/// that used the same port before.
pub fn find_chroma_pid(port: u16) -> Option<u32> {
    let port = port.to_string();
    let own = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let has = |s: &str| args.contains(&s.as_bytes());
        let is_chroma = args
            .iter()
            .any(|a| a.ends_with(b"/chroma") || *a == b"chroma");
        if is_chroma && has("run") && has(&port) && process_alive(pid) && parent(pid) == Some(own) {
            return Some(pid);
        }
    }
    None
}

/// The parent of `pid`.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// CPU seconds of each process in `pids` (0 for one that is gone), read together.
pub fn cpu_seconds(pids: &[Option<u32>], ticks_per_second: u64) -> Vec<f64> {
    pids.iter()
        .map(|pid| pid.and_then(cpu_ticks).unwrap_or(0) as f64 / ticks_per_second.max(1) as f64)
        .collect()
}
