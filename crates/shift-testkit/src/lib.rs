//! Test support for chroma-shift.
//!
//! - [`Chroma::spawn`]: a real Chroma server on a free port with its own temp dir, killed when
//!   dropped.
//! - [`Proxy::builder`]: the whole proxy in-process on port 0, shut down when dropped.
//! - [`FaultyBackend`]: a fake Chroma that answers what a test scripts (errors, 429, latency,
//!   connection resets), for fault injection only.
//! - [`python`]: runs the official Python client's scripts under `tests/python`; [`node`]: the
//!   official JavaScript client's under `tests/js`; [`transcript`]: their transcripts compared.
//! - [`collection`]: one collection over plain HTTP (create, id, records, count); [`stores`]:
//!   whole stores (two of them, compared record by record); [`scrape`]: the proxy's metrics;
//!   [`scene`]: a dead letter, a store down and back, waited for in `/admin/status`;
//!   [`wait`]: polling for a condition; [`knobs`]: sizes and seeds from the environment.
//! - [`etcd::EtcdCluster`]: N etcd members on loopback; [`nats::NatsServer`]: a nats-server with
//!   JetStream (the cluster mode's servers), both from [`daemon`].

pub mod collection;
pub mod daemon;
pub mod etcd;
pub mod faulty;
pub mod knobs;
pub mod nats;
pub mod node;
pub mod process;
pub mod python;
pub mod recording;
pub mod scene;
pub mod scrape;
pub mod stores;
pub mod transcript;
pub mod wait;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use shift_config::{BackendName, Config, Secret, Secrets};
use shift_control::ChromaShift;
use shift_local_chroma::{find_chroma_bin, LocalChroma, LocalChromaOptions};
use shift_proxy::Drained;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faulty::{Fault, FaultyBackend, Hold, Responder};
pub use process::ProxyProcess;

/// The repository's root (where `.venv` and `tests/python` live).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// A real Chroma server for one test.
#[derive(Debug)]
pub struct Chroma {
    server: LocalChroma,
    /// Holds the data directory until the server is gone.
    _dir: tempfile::TempDir,
}

impl Chroma {
    /// Starts `chroma run` on a free port in a fresh temp dir.
    pub async fn spawn() -> anyhow::Result<Chroma> {
        Chroma::spawn_with(false).await
    }

    /// Starts one that accepts `POST /api/v2/reset`.
    pub async fn spawn_allowing_reset() -> anyhow::Result<Chroma> {
        Chroma::spawn_with(true).await
    }

    async fn spawn_with(allow_reset: bool) -> anyhow::Result<Chroma> {
        let bin = chroma_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("chroma-shift-test-")
            .tempdir()?;
        let mut options = LocalChromaOptions::new(bin, dir.path().to_path_buf());
        options.allow_reset = allow_reset;
        let server = LocalChroma::start(options).await?;
        Ok(Chroma { server, _dir: dir })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Kills the server, as a crash would.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        Ok(self.server.stop().await?)
    }

    /// Starts it again on the same port with the same data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        Ok(self.server.restart().await?)
    }
}

/// The `chroma` command: `$CHROMA_BIN`, a `.venv` above the current directory or the repo's, or `PATH`.
pub fn chroma_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = find_chroma_bin() {
        return Ok(bin);
    }
    let venv = repo_root().join(".venv/bin/chroma");
    if venv.is_file() {
        return Ok(venv);
    }
    anyhow::bail!(
        "no `chroma` command: run `scripts/test.sh` (it creates .venv with chromadb==1.5.9) or set CHROMA_BIN"
    )
}

/// Builds an in-process proxy.
#[derive(Debug, Clone)]
pub struct ProxyBuilder {
    old: String,
    new: String,
    primary: BackendName,
    client_tokens: Vec<String>,
    server_toml: String,
    health_toml: String,
    extra_toml: String,
    /// Where the proxy keeps its durable state; a fresh temp dir when `None`.
    state_dir: Option<PathBuf>,
}

/// The admin token every test proxy accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// An address nothing listens on, for a backend a test does not use.
const UNUSED_BACKEND: &str = "http://127.0.0.1:9";

impl ProxyBuilder {
    /// The old store's URL.
    pub fn old(mut self, url: impl Into<String>) -> Self {
        self.old = url.into();
        self
    }

    /// The new store's URL.
    pub fn new_store(mut self, url: impl Into<String>) -> Self {
        self.new = url.into();
        self
    }

    /// Which store is primary (old by default).
    pub fn primary(mut self, primary: BackendName) -> Self {
        self.primary = primary;
        self
    }

    /// Turns client auth on with these tokens.
    pub fn client_tokens(mut self, tokens: &[&str]) -> Self {
        self.client_tokens = tokens.iter().map(|t| (*t).to_owned()).collect();
        self
    }

    /// Keeps the durable state in `dir` (to restart a proxy on the same state).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Keys of the `[server]` table, such as `max_body = "1KiB"`.
    pub fn server_toml(mut self, text: &str) -> Self {
        self.server_toml.push('\n');
        self.server_toml.push_str(text);
        self
    }

    /// Keys of the `[health]` table, such as `auto_rollback = true` (the builder probes every
    /// 500 ms unless told otherwise).
    pub fn health_toml(mut self, text: &str) -> Self {
        self.health_toml.push('\n');
        self.health_toml.push_str(text);
        self
    }

    /// Extra TOML appended to the generated config, with full table headers such as
    /// `[backends.old]`-less sections like `[mirror]`.
    pub fn toml(mut self, text: &str) -> Self {
        self.extra_toml.push('\n');
        self.extra_toml.push_str(text);
        self
    }

    /// The config this builder makes (with the state in `state_dir`, or `./state` when unset).
    pub fn config(&self) -> anyhow::Result<Config> {
        let state = self
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./state"));
        Config::from_toml(&self.config_text("127.0.0.1:0", "127.0.0.1:0", &state))
            .context("the test proxy's config")
    }

    /// The config's TOML, with the given listeners and state directory.
    pub(crate) fn config_text(&self, listen: &str, admin: &str, state: &std::path::Path) -> String {
        let auth = if self.client_tokens.is_empty() {
            ""
        } else {
            "[server.client_auth]\nenabled = true\n"
        };
        let health = if self.health_toml.contains("interval") {
            self.health_toml.clone()
        } else {
            format!(
                "interval = \"500ms\"\ntimeout = \"500ms\"\n{}",
                self.health_toml
            )
        };
        format!(
            "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nshutdown_grace = \"5s\"\n{server_extra}\n{auth}\n[backends.old]\nurl = \"{old}\"\n[backends.new]\nurl = \"{new}\"\n[routing]\nprimary = \"{primary}\"\n[state]\ndir = \"{state}\"\n[health]\n{health}\n{extra}",
            server_extra = self.server_toml,
            old = self.old,
            new = self.new,
            primary = self.primary.as_str(),
            state = state.display(),
            extra = self.extra_toml,
        )
    }

    /// Starts the proxy on free ports.
    pub async fn spawn(mut self) -> anyhow::Result<Proxy> {
        let temp = match &self.state_dir {
            Some(_) => None,
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("chroma-shift-state-")
                    .tempdir()?;
                self.state_dir = Some(dir.path().to_path_buf());
                Some(dir)
            }
        };
        let config = self.config()?;
        // A proxy shut down in this process may still be letting go of the state file (its
        // background tasks end after `shutdown` returned): a restart on the same state waits
        // for it, within a bound. A separate process holding it is still an error then.
        let started = std::time::Instant::now();
        let mut proxy = loop {
            match Proxy::start(config.clone(), self.secrets()).await {
                Ok(proxy) => break proxy,
                Err(e)
                    if format!("{e:#}").contains("in use by another")
                        && started.elapsed() < Duration::from_secs(30) =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        };
        proxy._state = temp;
        Ok(proxy)
    }

    fn secrets(&self) -> Secrets {
        Secrets {
            client_tokens: self
                .client_tokens
                .iter()
                .map(|t| Secret::new(t.clone()))
                .collect(),
            ..Secrets::default()
        }
    }
}

/// A proxy running in this process.
#[derive(Debug)]
pub struct Proxy {
    data: SocketAddr,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Drained>>,
    /// The temp dir of the durable state, when the builder made one.
    _state: Option<tempfile::TempDir>,
}

impl Proxy {
    /// A builder for the proxy in front of `old` and `new`.
    pub fn in_front_of(old: &Chroma, new: &Chroma) -> ProxyBuilder {
        Proxy::builder().old(old.url()).new_store(new.url())
    }

    pub fn builder() -> ProxyBuilder {
        ProxyBuilder {
            old: UNUSED_BACKEND.to_owned(),
            new: "http://127.0.0.1:10".to_owned(),
            primary: BackendName::Old,
            client_tokens: Vec::new(),
            server_toml: String::new(),
            health_toml: String::new(),
            extra_toml: String::new(),
            state_dir: None,
        }
    }

    /// Starts a proxy from a full config and its secrets, with its durable state in a fresh
    /// temp dir whatever the config says.
    pub async fn start_fresh(mut config: Config, secrets: Secrets) -> anyhow::Result<Proxy> {
        let dir = tempfile::Builder::new()
            .prefix("chroma-shift-state-")
            .tempdir()?;
        config.state.dir = dir.path().to_path_buf();
        let mut proxy = Proxy::start(config, secrets).await?;
        proxy._state = Some(dir);
        Ok(proxy)
    }

    /// Starts a proxy from a full config and its secrets ([`ADMIN_TOKEN`] when they name no
    /// admin token).
    pub async fn start(config: Config, mut secrets: Secrets) -> anyhow::Result<Proxy> {
        if secrets.admin_token.is_none() && config.admin.enabled {
            secrets.admin_token = Some(Secret::new(ADMIN_TOKEN.to_owned()));
        }
        let proxy = ChromaShift::bind(config, secrets).await?;
        let data = proxy.data_addr();
        let admin = proxy.admin_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy.run(async move {
            let _ = stopped.await;
        }));
        Ok(Proxy {
            data,
            admin,
            stop: Some(stop),
            task: Some(task),
            _state: None,
        })
    }

    /// The Chroma URL for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.data)
    }

    pub fn addr(&self) -> SocketAddr {
        self.data
    }

    /// The admin listener's URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Calls the admin API with the test token; the status and the JSON answer.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(http::StatusCode, serde_json::Value)> {
        admin_call(&self.admin_url(), ADMIN_TOKEN, method, path, body).await
    }

    /// Shuts down gracefully and says how the drain went.
    pub async fn shutdown(mut self) -> anyhow::Result<Drained> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().context("already shut down")?;
        Ok(tokio::time::timeout(Duration::from_secs(30), task).await??)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A tiny HTTP client for tests: one request, the status and the body.
pub async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<bytes::Bytes>,
) -> anyhow::Result<(http::StatusCode, http::HeaderMap, bytes::Bytes)> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into()))?;
    let response = client.request(request).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}

/// One admin API call with a bearer token: the status and the JSON answer (`Null` when empty).
pub async fn admin_call(
    admin_url: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(http::StatusCode, serde_json::Value)> {
    let auth = format!("Bearer {token}");
    let bytes = body
        .map(|b| serde_json::to_vec(&b))
        .transpose()?
        .unwrap_or_default();
    let (status, _, answer) = http(
        method,
        &format!("{admin_url}{path}"),
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        bytes,
    )
    .await?;
    let value = if answer.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&answer)?
    };
    Ok((status, value))
}

/// `http` for JSON: parses the answer body as JSON (`Null` when empty).
pub async fn http_json(
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(http::StatusCode, serde_json::Value)> {
    let (headers, bytes): (&[(&str, &str)], Vec<u8>) = match &body {
        Some(v) => (
            &[("content-type", "application/json")],
            serde_json::to_vec(v)?,
        ),
        None => (&[], Vec::new()),
    };
    let (status, _, body) = http(method, url, headers, bytes).await?;
    let value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body)
            .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&body)))?
    };
    Ok((status, value))
}
