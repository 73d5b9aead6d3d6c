//! The proxy as its own process, and its journal depth.
//!
//! The proxy runs in its own process, as `chroma-shift serve` does, with its own
//! multi-threaded tokio runtime (one worker per core), its own logging and its own CPU account.
//! By default the bench starts that process by running its own executable in a "proxy" mode
//! that does what `chroma-shift serve` does (load the config, the same runtime and logging
//! set-up, `ChromaShift::bind` then `run`), so the code measured is always the code just built
//! with the bench profile, never a stale binary. `SHIFT_BENCH_PROXY_BIN=target/release/chroma-shift`
//! runs a built binary instead.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use tokio::process::Command;

use shift_config::Secret;
use shift_control::AdminClient;

use crate::env_var;
use crate::proc::{free_port, wait_ready, Server};

/// Set in the proxy child: the path of its config.
const PROXY_CHILD_ENV: &str = "SHIFT_BENCH_PROXY_CONFIG";

/// Call first in a bench's `main`: in the proxy child, runs the proxy and returns its result;
/// in the bench itself, returns `None`.
pub fn proxy_child_main() -> Option<anyhow::Result<()>> {
    std::env::var_os(PROXY_CHILD_ENV).map(|config| proxy_child(PathBuf::from(config)))
}

/// The proxy child: what `chroma-shift serve` does, until its standard input closes (the
/// bench holds the other end; if the bench dies, the proxy follows).
fn proxy_child(config_path: PathBuf) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let config = shift_config::Config::load(&config_path)?;
        // The logging `chroma-shift serve` sets up.
        let _log = shift_proxy::log_writer::init_logging(&config.log)?;
        let secrets = config.secrets()?;
        let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            let _ = closed.send(());
        });
        let proxy = shift_control::ChromaShift::bind(config, secrets).await?;
        proxy
            .run(async move {
                let _ = stdin_closed.await;
            })
            .await;
        Ok(())
    })
}

/// How to run one proxy process.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Its files in the bench's temp dir: `{name}.toml`, `{name}.log`, `{name}-state/`.
    pub name: String,
    /// `[log] level`.
    pub log_level: String,
    /// `[mirror] mode`; the proxy's default when `None`.
    pub mirror_mode: Option<String>,
    /// More keys of the `[mirror]` table (`retry_max = "100ms"`).
    pub mirror_extra: String,
    /// More tables, appended to the config as they are (`[cutover]\ncatch_up_timeout = "0s"\n`).
    pub extra_tables: String,
    /// Where the `[state] dir` is made (a new directory inside); the bench's temp dir when
    /// `None`.
    pub state_parent: Option<PathBuf>,
    /// A `chroma-shift` binary to run as `serve`; this bench's executable in proxy mode when
    /// `None`.
    pub proxy_bin: Option<PathBuf>,
}

impl ProxyOptions {
    /// From the environment: `BENCH_PROXY_LOG` (default `info`, like the shipped default),
    /// `BENCH_MIRROR_MODE`, `BENCH_STATE_PARENT`, `SHIFT_BENCH_PROXY_BIN`.
    pub fn from_env(name: &str) -> anyhow::Result<ProxyOptions> {
        Ok(ProxyOptions {
            name: name.to_owned(),
            log_level: env_var("BENCH_PROXY_LOG", "info".to_owned())?,
            mirror_mode: std::env::var("BENCH_MIRROR_MODE").ok(),
            mirror_extra: String::new(),
            extra_tables: String::new(),
            state_parent: std::env::var_os("BENCH_STATE_PARENT").map(PathBuf::from),
            // cargo runs benches in the package's directory: a relative path is taken from
            // the workspace root when it names nothing here.
            proxy_bin: std::env::var_os("SHIFT_BENCH_PROXY_BIN")
                .map(PathBuf::from)
                .map(|bin| {
                    if bin.is_relative() && !bin.exists() {
                        shift_testkit::repo_root().join(bin)
                    } else {
                        bin
                    }
                }),
        })
    }

    /// How the proxy process is run, for reports.
    pub fn describe_process(&self) -> String {
        match &self.proxy_bin {
            Some(bin) => format!("`{} serve`", bin.display()),
            None => "this bench's executable in proxy mode (same set-up as `chroma-shift serve`)"
                .to_owned(),
        }
    }

    /// Where its state lives, for reports.
    pub fn describe_state(&self) -> String {
        self.state_parent.as_ref().map_or_else(
            || std::env::temp_dir().display().to_string(),
            |p| p.display().to_string(),
        )
    }
}

/// Starts a proxy process in front of `old_url` (primary) and `new_url`, its files in `dir`,
/// and waits until it answers.
pub async fn start_proxy(
    options: &ProxyOptions,
    dir: &Path,
    old_url: &str,
    new_url: &str,
) -> anyhow::Result<Server> {
    let port = free_port()?;
    let admin_port = free_port()?;
    let state = match &options.state_parent {
        Some(parent) => Some(
            tempfile::Builder::new()
                .prefix("chroma-shift-bench-state-")
                .tempdir_in(parent)?,
        ),
        None => None,
    };
    let name = &options.name;
    let state_dir = state.as_ref().map_or_else(
        || {
            if name == "proxy" {
                dir.join("state")
            } else {
                dir.join(format!("{name}-state"))
            }
        },
        |d| d.path().to_path_buf(),
    );
    let config_path = dir.join(format!("{name}.toml"));
    let mirror = if options.mirror_mode.is_some() || !options.mirror_extra.is_empty() {
        format!(
            "[mirror]\n{}{}\n",
            options
                .mirror_mode
                .as_ref()
                .map(|mode| format!("mode = \"{mode}\"\n"))
                .unwrap_or_default(),
            options.mirror_extra
        )
    } else {
        String::new()
    };
    std::fs::write(
        &config_path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
             [backends.old]\nurl = \"{old_url}\"\n\
             [backends.new]\nurl = \"{new_url}\"\n\
             [routing]\nprimary = \"old\"\n\
             [state]\ndir = \"{state}\"\n\
             [log]\nlevel = \"{level}\"\n{mirror}{extra}",
            state = state_dir.display(),
            level = options.log_level,
            extra = options.extra_tables,
        ),
    )?;
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)?;
    let mut command = match &options.proxy_bin {
        Some(bin) => {
            let mut command = Command::new(bin);
            command.arg("serve").arg("--config").arg(&config_path);
            command
        }
        None => {
            let mut command = Command::new(std::env::current_exe()?);
            command.env(PROXY_CHILD_ENV, &config_path);
            command
        }
    };
    // A fresh admin token; the bench calls the admin API with it.
    let admin_token = format!(
        "bench-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    command
        .env_remove("RUST_LOG")
        .env("CHROMA_SHIFT_ADMIN_TOKEN", &admin_token)
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    let child = command
        .spawn()
        .with_context(|| format!("cannot start the proxy ({:?})", command.as_std()))?;
    let mut server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
        admin: Some(format!("http://127.0.0.1:{admin_port}")),
        admin_api: Some(AdminClient::new(
            format!("http://127.0.0.1:{admin_port}").parse()?,
            Secret::new(admin_token),
        )?),
        state,
    };
    wait_ready(&mut server, &format!("the proxy ({name})"), &log_path).await?;
    Ok(server)
}

/// Entries waiting in the proxy's journals (`chroma_shift_journal_depth{collection=""}` summed
/// over targets); `None` when the proxy exports no such metric.
pub async fn journal_depth(admin: &str) -> Option<u64> {
    let (status, _, body) =
        shift_testkit::http("GET", &format!("{admin}/metrics"), &[], Bytes::new())
            .await
            .ok()?;
    if !status.is_success() {
        return None;
    }
    let text = String::from_utf8_lossy(&body);
    let mut found = false;
    let mut depth = 0u64;
    for line in text.lines() {
        if line.starts_with("chroma_shift_journal_depth{") && line.contains("collection=\"\"") {
            found = true;
            let value = line.rsplit(' ').next().unwrap_or("0");
            depth += value.parse::<f64>().map_or(0, |v| v.max(0.0) as u64);
        }
    }
    found.then_some(depth)
}

/// Waits until the proxy's journals are empty (read empty twice, 100 ms apart) or `limit`
/// passed, so that replaying one round's writes to the secondary does not run into the next
/// round. Returns how long it waited.
pub async fn wait_replayed(admin: Option<&str>, limit: Duration) -> Duration {
    let started = Instant::now();
    let Some(admin) = admin else {
        return Duration::ZERO;
    };
    let mut empty_reads = 0;
    while started.elapsed() < limit {
        match journal_depth(admin).await {
            None => return Duration::ZERO,
            Some(0) => {
                empty_reads += 1;
                if empty_reads == 2 {
                    break;
                }
            }
            Some(_) => empty_reads = 0,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}
