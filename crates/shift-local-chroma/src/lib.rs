//! Local Chroma server processes (`chroma run`), for the quickstart and the tests.
//!
//! The server listens on 127.0.0.1 on a port of its own, keeps its data in a directory the
//! caller owns, and is ready when `GET /api/v2/heartbeat` answers 200. It is killed when the
//! handle drops, so a panicking test leaves no server behind.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Why a local Chroma could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalChromaError {
    #[error("no `chroma` command found: set CHROMA_BIN, create .venv with `pip install chromadb==1.5.9`, or put it on PATH")]
    NoBinary,
    #[error("could not start {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("chroma on {addr} was not ready after {waited:?}; its log ({log}) ends with:\n{tail}")]
    NotReady {
        addr: SocketAddr,
        waited: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "{addr} is taken by another process; a second server there would be mistaken for this one"
    )]
    PortTaken { addr: SocketAddr },
    #[error("io error around the chroma process: {0}")]
    Io(#[from] std::io::Error),
}

/// Finds the `chroma` command: `$CHROMA_BIN`, then `.venv/bin/chroma` in this directory or a
/// parent (the repo's venv), then `chroma` on `PATH`.
pub fn find_chroma_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("CHROMA_BIN") {
        return Some(PathBuf::from(bin));
    }
    let mut dir = std::env::current_dir().ok();
    while let Some(d) = dir {
        let candidate = d.join(".venv/bin/chroma");
        if candidate.is_file() {
            return Some(candidate);
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|p| p.join("chroma"))
        .find(|p| p.is_file())
}

/// Asks the OS for a free port on 127.0.0.1, never the same one twice in this process (the OS
/// may hand a just-released port out again). Another process may still take it before the
/// server binds it; [`LocalChroma::start`] then retries on another port.
pub fn free_port() -> std::io::Result<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return Ok(port);
        }
    }
}

/// How to start a local Chroma.
#[derive(Debug, Clone)]
pub struct LocalChromaOptions {
    /// The `chroma` command.
    pub bin: PathBuf,
    /// Where the server keeps its data (and its log, `chroma.log`).
    pub data_dir: PathBuf,
    /// The port; `None` picks a free one.
    pub port: Option<u16>,
    /// Starts the server with `allow_reset: true`, so `POST /api/v2/reset` works.
    pub allow_reset: bool,
    /// How long to wait for the first heartbeat.
    pub ready_timeout: Duration,
}

impl LocalChromaOptions {
    pub fn new(bin: PathBuf, data_dir: PathBuf) -> LocalChromaOptions {
        LocalChromaOptions {
            bin,
            data_dir,
            port: None,
            allow_reset: false,
            ready_timeout: Duration::from_secs(60),
        }
    }
}

/// A running `chroma run` process.
#[derive(Debug)]
pub struct LocalChroma {
    options: LocalChromaOptions,
    /// The address it listens on; kept across [`LocalChroma::stop`] and [`LocalChroma::restart`].
    addr: SocketAddr,
    /// `None` while stopped.
    child: Option<Child>,
}

impl LocalChroma {
    /// Starts the server and waits until it answers its heartbeat.
    pub async fn start(options: LocalChromaOptions) -> Result<LocalChroma, LocalChromaError> {
        std::fs::create_dir_all(&options.data_dir)?;
        let attempts = if options.port.is_some() { 1 } else { 3 };
        let mut last_error = None;
        for _ in 0..attempts {
            let port = match options.port {
                Some(p) => p,
                None => free_port()?,
            };
            let mut server = LocalChroma {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                options: options.clone(),
                child: None,
            };
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or(LocalChromaError::NoBinary))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id while it runs (to stop it with SIGSTOP in fault tests).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub fn data_dir(&self) -> &Path {
        &self.options.data_dir
    }

    /// Kills the server (as a crash would) and waits for it to exit.
    pub async fn stop(&mut self) -> std::io::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the server again on the same port and data directory.
    pub async fn restart(&mut self) -> Result<(), LocalChromaError> {
        self.stop().await?;
        self.launch().await
    }

    async fn launch(&mut self) -> Result<(), LocalChromaError> {
        // Another server on the port would answer the heartbeat for ours (a restart on the
        // same port races every other process that asks the OS for a free one).
        if TcpStream::connect(self.addr).await.is_ok() {
            return Err(LocalChromaError::PortTaken { addr: self.addr });
        }
        let log_path = self.options.data_dir.join("chroma.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut command = Command::new(&self.options.bin);
        command.arg("run");
        if self.options.allow_reset {
            // `CHROMA_ALLOW_RESET` does not take effect in 1.5.9; the YAML config does.
            let config = self.options.data_dir.join("chroma-config.yaml");
            let persist = self.options.data_dir.join("data");
            std::fs::write(
                &config,
                format!(
                    "persist_path: \"{}\"\nport: {}\nlisten_address: \"127.0.0.1\"\nallow_reset: true\n",
                    persist.display(),
                    self.addr.port()
                ),
            )?;
            command.arg(&config);
        } else {
            command
                .arg("--path")
                .arg(self.options.data_dir.join("data"))
                .arg("--host")
                .arg("127.0.0.1")
                .arg("--port")
                .arg(self.addr.port().to_string());
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = command.spawn().map_err(|source| LocalChromaError::Spawn {
            bin: self.options.bin.clone(),
            source,
        })?;
        self.child = Some(child);

        let started = Instant::now();
        while started.elapsed() < self.options.ready_timeout {
            if heartbeat(self.addr).await {
                // Another server may hold the port and answer for ours, which then fails to
                // bind and exits: only a child still running after a moment is ours.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let exited = match self.child.as_mut() {
                    Some(child) => child.try_wait()?.is_some(),
                    None => true,
                };
                if exited {
                    break;
                }
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if child.try_wait()?.is_some() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop().await?;
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        Err(LocalChromaError::NotReady {
            addr: self.addr,
            waited: started.elapsed(),
            log: log_path,
            tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        })
    }
}

/// One `GET /api/v2/heartbeat` over a fresh connection; true on a 200.
async fn heartbeat(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request =
            format!("GET /api/v2/heartbeat HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(&head[9..12] == b"200")
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
