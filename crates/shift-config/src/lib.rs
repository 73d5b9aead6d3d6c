//! chroma-shift's configuration.
//!
//! One loader ([`Config::load`]): a TOML file, then environment overrides named
//! `CHROMA_SHIFT_<SECTION>__<KEY>` (double underscore between levels, for example
//! `CHROMA_SHIFT_SERVER__LISTEN` or `CHROMA_SHIFT_BACKENDS__NEW__URL`), then validation. A bad
//! file stops the process at start with a message naming the key. Secrets never live in the
//! file: the config names the environment variables that hold them, and [`Secret`] never
//! prints its value.
//!
//! `config/chroma-shift.example.toml` documents every key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;
use url::Url;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error(
        "configuration key `{key}` names the environment variable {env}, which is not set or empty"
    )]
    MissingSecret { key: &'static str, env: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners and limits of the data plane.
    pub server: ServerConfig,
    /// The two stores: `old` (migrated from) and `new` (migrated to).
    pub backends: BackendsConfig,
    /// Which store serves reads and takes writes first.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// How writes reach the secondary.
    #[serde(default)]
    pub mirror: MirrorConfig,
    /// Where durable state lives.
    #[serde(default)]
    pub state: StateConfig,
    /// Log format and level.
    #[serde(default)]
    pub log: LogConfig,
    /// Backend heartbeats.
    #[serde(default)]
    pub health: HealthConfig,
    /// Tenant and database names that differ between the stores.
    #[serde(default)]
    pub namespaces: Vec<NamespaceRule>,
    /// The admin API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Cutover and rollback defaults.
    #[serde(default)]
    pub cutover: CutoverConfig,
    /// Canary and shadow reads.
    #[serde(default)]
    pub reads: ReadsConfig,
    /// Where alerts go.
    #[serde(default)]
    pub alerts: AlertsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin API (`/admin/...`) on the admin listener. It needs a token; turning it
    /// off is the only way to run without one. `/metrics`, `/healthz`, `/readyz` stay either way.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// The environment variable holding the admin token (`Authorization: Bearer <token>`).
    #[serde(default = "defaults::admin_token_env")]
    pub token_env: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            token_env: defaults::admin_token_env(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverConfig {
    /// A cutover or rollback is refused while more journal entries than this wait for the
    /// target; draining more would hold writes too long.
    #[serde(default = "defaults::max_lag")]
    pub max_lag: u64,
    /// How long a cutover may hold writes while the journal drains; past it, the cutover is
    /// abandoned and nothing changes.
    #[serde(default = "defaults::cutover_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for CutoverConfig {
    fn default() -> Self {
        CutoverConfig {
            max_lag: defaults::max_lag(),
            timeout: defaults::cutover_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadsConfig {
    /// Percent of reads served by the secondary (only for collections with nothing queued).
    #[serde(default)]
    pub canary_percent: f64,
    /// Percent of reads also sent to the secondary in the background and compared.
    #[serde(default)]
    pub shadow_percent: f64,
    /// A shadow read slower than this is dropped (and counted).
    #[serde(default = "defaults::shadow_timeout", with = "humantime_serde")]
    pub shadow_timeout: Duration,
    /// Shadow reads waiting or running at most; more are dropped (and counted).
    #[serde(default = "defaults::shadow_queue")]
    pub shadow_queue: usize,
    /// Recent mismatches kept for the admin API.
    #[serde(default = "defaults::mismatch_samples")]
    pub mismatch_samples: usize,
}

impl Default for ReadsConfig {
    fn default() -> Self {
        ReadsConfig {
            canary_percent: 0.0,
            shadow_percent: 0.0,
            shadow_timeout: defaults::shadow_timeout(),
            shadow_queue: defaults::shadow_queue(),
            mismatch_samples: defaults::mismatch_samples(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// A webhook that takes a JSON body with a `text` field (Slack's incoming webhooks do).
    #[serde(default)]
    pub webhook_url: Option<Url>,
}

/// A tenant (`"tenant"`) or a database (`"tenant/database"`) that has another name on the new
/// store. Clients always use the old store's names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceRule {
    /// The name on the old store.
    pub old: String,
    /// The name on the new store.
    pub new: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The address applications use as their Chroma URL.
    pub listen: SocketAddr,
    /// Admin API, `/metrics`, `/healthz`, `/readyz`; never on the data port.
    pub admin_listen: SocketAddr,
    /// Largest request body accepted; larger ones are answered 413.
    #[serde(default = "defaults::max_body")]
    pub max_body: ByteSize,
    /// A client that has not sent its request head within this time is disconnected.
    #[serde(default = "defaults::header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[serde(default = "defaults::shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Accept HTTP/2 over cleartext (h2c) beside HTTP/1.1.
    #[serde(default = "defaults::yes")]
    pub http2: bool,
    /// Optional authentication of clients at the proxy.
    #[serde(default)]
    pub client_auth: ClientAuthConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// Require a token from clients (`Authorization: Bearer` or `X-Chroma-Token`).
    #[serde(default)]
    pub enabled: bool,
    /// The environment variable holding the accepted tokens, comma-separated.
    #[serde(default = "defaults::client_tokens_env")]
    pub tokens_env: String,
    /// Forward the client's own `Authorization` / `X-Chroma-Token` headers to the backends.
    /// Off by default: backends get the credentials of `[backends.*.auth]` only.
    #[serde(default)]
    pub forward_client_auth: bool,
}

impl Default for ClientAuthConfig {
    fn default() -> Self {
        ClientAuthConfig {
            enabled: false,
            tokens_env: defaults::client_tokens_env(),
            forward_client_auth: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    pub old: BackendConfig,
    pub new: BackendConfig,
}

impl BackendsConfig {
    pub fn get(&self, name: BackendName) -> &BackendConfig {
        match name {
            BackendName::Old => &self.old,
            BackendName::New => &self.new,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Base URL of the Chroma server, `http://` or `https://`, optionally with a path prefix.
    pub url: Url,
    /// Limit on establishing a connection (TCP and TLS).
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Limit on a request, from sending it to the response head.
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Idle pooled connections are closed after this time.
    #[serde(default = "defaults::pool_idle_timeout", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Most idle connections kept open to this backend.
    #[serde(default = "defaults::pool_max_idle")]
    pub pool_max_idle: usize,
    /// Credentials the proxy sends to this backend.
    #[serde(default)]
    pub auth: Option<BackendAuthConfig>,
    /// Extra PEM root certificates to trust for `https://`, beside the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendAuthConfig {
    /// The environment variable holding the token.
    pub token_env: String,
    /// Which header carries it.
    #[serde(default)]
    pub header: AuthHeader,
}

/// The header a backend expects its token in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthHeader {
    /// `Authorization: Bearer <token>`.
    #[default]
    Bearer,
    /// `X-Chroma-Token: <token>` (Chroma Cloud).
    XChromaToken,
}

/// One of the two stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendName {
    Old,
    New,
}

impl BackendName {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendName::Old => "old",
            BackendName::New => "new",
        }
    }

    /// The other store.
    pub fn other(self) -> BackendName {
        match self {
            BackendName::Old => BackendName::New,
            BackendName::New => BackendName::Old,
        }
    }
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// The store that serves reads and is written first.
    #[serde(default = "defaults::primary")]
    pub primary: BackendName,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            primary: defaults::primary(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// How writes reach the secondary.
    #[serde(default)]
    pub mode: MirrorMode,
    /// In sync mode, what a write does when the primary applied it and the secondary failed.
    #[serde(default)]
    pub on_secondary_failure: SecondaryFailure,
    /// Allow `POST /api/v2/reset`, applied to both stores. Off: the proxy refuses it.
    #[serde(default)]
    pub allow_reset: bool,
    /// Most requests per second the replay sends to the secondary; 0 is unlimited.
    #[serde(default)]
    pub replay_rate_limit: u32,
    /// Most records in one replayed request; 0 uses the secondary's `max_batch_size`.
    #[serde(default)]
    pub replay_batch_records: usize,
    /// First wait before retrying a failed replay; doubles up to `retry_max`, with jitter.
    #[serde(default = "defaults::retry_initial", with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest wait between replay retries.
    #[serde(default = "defaults::retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// Journal payload bytes the replay of one target holds in memory at once (one entry may
    /// pass it); bounds the process's memory whatever the backlog.
    #[serde(default = "defaults::replay_memory")]
    pub replay_memory: ByteSize,
    /// After a primary write with an unknown outcome (a timeout, a 5xx, a lost connection),
    /// how long its records stay locked before the secondary is reconciled from the primary:
    /// a primary may still apply the write late, and a later write of the same records must
    /// not overtake it. Set it above the time the primary may take to finish a write.
    #[serde(default = "defaults::unknown_outcome_grace", with = "humantime_serde")]
    pub unknown_outcome_grace: Duration,
}

/// The highest `replay_rate_limit`: one request per microsecond. Above about 1e9 the pacing
/// interval would round to zero.
pub const MAX_REPLAY_RATE: u32 = 1_000_000;

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            mode: MirrorMode::default(),
            on_secondary_failure: SecondaryFailure::default(),
            allow_reset: false,
            replay_rate_limit: 0,
            replay_batch_records: 0,
            retry_initial: defaults::retry_initial(),
            retry_max: defaults::retry_max(),
            replay_memory: defaults::replay_memory(),
            unknown_outcome_grace: defaults::unknown_outcome_grace(),
        }
    }
}

/// What a sync-mode write does when only the secondary failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecondaryFailure {
    /// Answer the primary's success and queue the write for the secondary in the journal.
    #[default]
    Journal,
    /// Answer an error (the client retries); the journal still brings the secondary in line.
    Fail,
}

/// How writes reach the secondary store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MirrorMode {
    /// Primary first, then a durable journal replayed to the secondary.
    #[default]
    Journaled,
    /// Both at once; the client is answered when both answered.
    Sync,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory of the durable state (journal, id map, dead letters).
    #[serde(default = "defaults::state_dir")]
    pub dir: PathBuf,
    /// Cap on the mirror journal, in payload bytes waiting for the secondary; at or over it
    /// new writes are refused (503 with Retry-After) until the replay drains it. 0 is no cap.
    #[serde(default = "defaults::max_journal_bytes")]
    pub max_journal_bytes: ByteSize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: defaults::state_dir(),
            max_journal_bytes: defaults::max_journal_bytes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter: `info`, or `info,shift_proxy=debug`. `RUST_LOG` wins when set.
    #[serde(default = "defaults::log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            level: defaults::log_level(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// How often each backend's heartbeat is probed.
    #[serde(default = "defaults::health_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// A heartbeat slower than this counts as a failure.
    #[serde(default = "defaults::health_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Roll back by itself when the primary stays unhealthy for `auto_rollback_after` while
    /// the secondary is healthy (only after a cutover: the old store is the one to go back to).
    #[serde(default)]
    pub auto_rollback: bool,
    #[serde(default = "defaults::auto_rollback_after", with = "humantime_serde")]
    pub auto_rollback_after: Duration,
    /// Alert when a backend stays unhealthy this long.
    #[serde(default = "defaults::outage_alert_after", with = "humantime_serde")]
    pub outage_alert_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: defaults::health_interval(),
            timeout: defaults::health_timeout(),
            auto_rollback: false,
            auto_rollback_after: defaults::auto_rollback_after(),
            outage_alert_after: defaults::outage_alert_after(),
        }
    }
}

mod defaults {
    use super::*;

    pub fn max_body() -> ByteSize {
        ByteSize::mib(64)
    }
    pub fn header_read_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(30)
    }
    pub fn yes() -> bool {
        true
    }
    pub fn client_tokens_env() -> String {
        "CHROMA_SHIFT_CLIENT_TOKENS".to_owned()
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn pool_idle_timeout() -> Duration {
        Duration::from_secs(90)
    }
    pub fn pool_max_idle() -> usize {
        64
    }
    pub fn primary() -> BackendName {
        BackendName::Old
    }
    pub fn state_dir() -> PathBuf {
        PathBuf::from("./state")
    }
    pub fn max_journal_bytes() -> ByteSize {
        ByteSize::gib(1)
    }
    pub fn log_level() -> String {
        "info".to_owned()
    }
    pub fn health_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn health_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn admin_token_env() -> String {
        "CHROMA_SHIFT_ADMIN_TOKEN".to_owned()
    }
    pub fn max_lag() -> u64 {
        10_000
    }
    pub fn cutover_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn shadow_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn shadow_queue() -> usize {
        256
    }
    pub fn mismatch_samples() -> usize {
        50
    }
    pub fn auto_rollback_after() -> Duration {
        Duration::from_secs(300)
    }
    pub fn outage_alert_after() -> Duration {
        Duration::from_secs(60)
    }
    pub fn retry_initial() -> Duration {
        Duration::from_millis(100)
    }
    pub fn retry_max() -> Duration {
        Duration::from_secs(30)
    }
    pub fn replay_memory() -> ByteSize {
        ByteSize::mib(64)
    }
    pub fn unknown_outcome_grace() -> Duration {
        Duration::from_secs(2)
    }
}

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "CHROMA_SHIFT_";

impl Config {
    /// Reads `path`, applies `CHROMA_SHIFT_<SECTION>__<KEY>` overrides, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if !path.is_file() {
            return Err(invalid(
                "--config",
                format!("{} is not a readable file", path.display()),
            ));
        }
        Config::from_figment(Figment::from(Toml::file_exact(path)))
    }

    /// Parses a TOML text (with environment overrides), and validates.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_figment(Figment::from(Toml::string(text)))
    }

    fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        // Only sectioned names are overrides: CHROMA_SHIFT_ADMIN_TOKEN and the like are
        // secrets read by name, not configuration keys.
        let env = Env::prefixed(ENV_PREFIX)
            .filter(|key| key.as_str().contains("__"))
            .split("__");
        let config: Config = figment.merge(env).extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Port 0 asks the OS for a free port, so two port-0 addresses never collide.
        if self.server.listen == self.server.admin_listen && self.server.listen.port() != 0 {
            return Err(invalid(
                "server.admin_listen",
                "must differ from server.listen: the admin API never shares the data port",
            ));
        }
        if self.server.max_body.as_u64() == 0 {
            return Err(invalid("server.max_body", "must be above zero"));
        }
        for (key, backend) in [
            ("backends.old.url", &self.backends.old),
            ("backends.new.url", &self.backends.new),
        ] {
            validate_backend(key, backend)?;
        }
        if same_server(&self.backends.old.url, &self.backends.new.url) {
            return Err(invalid(
                "backends.new.url",
                "names the same server as backends.old.url; the two stores must differ",
            ));
        }
        validate_namespaces(&self.namespaces)?;
        for (key, percent) in [
            ("reads.canary_percent", self.reads.canary_percent),
            ("reads.shadow_percent", self.reads.shadow_percent),
        ] {
            if !(0.0..=100.0).contains(&percent) {
                return Err(invalid(key, "must be between 0 and 100"));
            }
        }
        if let Some(url) = &self.alerts.webhook_url {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(invalid("alerts.webhook_url", "must be http or https"));
            }
        }
        if self.mirror.retry_initial.is_zero() || self.mirror.retry_max < self.mirror.retry_initial
        {
            return Err(invalid(
                "mirror.retry_initial",
                "must be above zero and at most mirror.retry_max",
            ));
        }
        if self.mirror.replay_rate_limit > MAX_REPLAY_RATE {
            return Err(invalid(
                "mirror.replay_rate_limit",
                format!("must be at most {MAX_REPLAY_RATE} requests per second (0 is unlimited)"),
            ));
        }
        if self.mirror.replay_memory.as_u64() < 1024 * 1024 {
            return Err(invalid("mirror.replay_memory", "must be at least 1MiB"));
        }
        if self.health.interval.is_zero() || self.health.timeout.is_zero() {
            return Err(invalid("health", "interval and timeout must be above zero"));
        }
        Ok(())
    }

    /// The secrets named by the config, read from the environment. Fails when one is missing,
    /// so a proxy never starts without the credentials it was told to use.
    pub fn secrets(&self) -> Result<Secrets, ConfigError> {
        Ok(Secrets {
            old: backend_secret("backends.old.auth.token_env", &self.backends.old)?,
            new: backend_secret("backends.new.auth.token_env", &self.backends.new)?,
            client_tokens: if self.server.client_auth.enabled {
                let raw = read_env(
                    "server.client_auth.tokens_env",
                    &self.server.client_auth.tokens_env,
                )?;
                let tokens: Vec<Secret> = raw
                    .expose()
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| Secret::new(t.to_owned()))
                    .collect();
                if tokens.is_empty() {
                    return Err(ConfigError::MissingSecret {
                        key: "server.client_auth.tokens_env",
                        env: self.server.client_auth.tokens_env.clone(),
                    });
                }
                tokens
            } else {
                Vec::new()
            },
            admin_token: if self.admin.enabled {
                Some(read_env("admin.token_env", &self.admin.token_env)?)
            } else {
                None
            },
        })
    }
}

fn validate_backend(key: &'static str, backend: &BackendConfig) -> Result<(), ConfigError> {
    let url = &backend.url;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(
            key,
            format!("scheme must be http or https, not `{}`", url.scheme()),
        ));
    }
    if url.host_str().is_none() {
        return Err(invalid(key, "has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(key, "must not have a query or a fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            key,
            "must not carry credentials; name an environment variable in auth.token_env",
        ));
    }
    if backend.connect_timeout.is_zero() || backend.request_timeout.is_zero() {
        return Err(invalid(
            key,
            "connect_timeout and request_timeout must be above zero",
        ));
    }
    if let Some(ca) = &backend.ca_file {
        if !ca.is_file() {
            return Err(invalid(
                key,
                format!("ca_file {} is not a readable file", ca.display()),
            ));
        }
    }
    Ok(())
}

fn validate_namespaces(rules: &[NamespaceRule]) -> Result<(), ConfigError> {
    let depth = |name: &str| name.split('/').count();
    for rule in rules {
        let parts_ok = |name: &str| {
            let parts: Vec<&str> = name.split('/').collect();
            parts.len() <= 2 && parts.iter().all(|p| !p.is_empty())
        };
        if !parts_ok(&rule.old) || !parts_ok(&rule.new) || depth(&rule.old) != depth(&rule.new) {
            return Err(invalid(
                "namespaces",
                format!(
                    "`{}` -> `{}`: both sides must be a tenant (\"t\") or both a database (\"t/db\")",
                    rule.old, rule.new
                ),
            ));
        }
    }
    for (i, a) in rules.iter().enumerate() {
        for b in &rules[i + 1..] {
            if a.old == b.old || a.new == b.new {
                return Err(invalid(
                    "namespaces",
                    format!(
                        "`{}` -> `{}` and `{}` -> `{}` overlap",
                        a.old, a.new, b.old, b.new
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn same_server(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
        && a.path().trim_end_matches('/') == b.path().trim_end_matches('/')
}

fn backend_secret(
    key: &'static str,
    backend: &BackendConfig,
) -> Result<Option<Secret>, ConfigError> {
    backend
        .auth
        .as_ref()
        .map(|auth| read_env(key, &auth.token_env))
        .transpose()
}

fn read_env(key: &'static str, env: &str) -> Result<Secret, ConfigError> {
    match std::env::var(env) {
        Ok(value) if !value.trim().is_empty() => Ok(Secret::new(value.trim().to_owned())),
        _ => Err(ConfigError::MissingSecret {
            key,
            env: env.to_owned(),
        }),
    }
}

/// The secrets the config names, read from the environment at start.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// Token for the old store, if it needs one.
    pub old: Option<Secret>,
    /// Token for the new store, if it needs one.
    pub new: Option<Secret>,
    /// Tokens accepted from clients; empty when client auth is off.
    pub client_tokens: Vec<Secret>,
    /// The admin API's token; `None` when the admin API is off.
    pub admin_token: Option<Secret>,
}

impl Secrets {
    pub fn backend(&self, name: BackendName) -> Option<&Secret> {
        match name {
            BackendName::Old => self.old.as_ref(),
            BackendName::New => self.new.as_ref(),
        }
    }
}

/// A secret value. Its `Debug` and `Display` never show it, so it cannot leak into a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
// figment's Jail closures return its large error type; boxing it in tests buys nothing.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [server]
        listen = "127.0.0.1:8000"
        admin_listen = "127.0.0.1:9100"
        [backends.old]
        url = "http://127.0.0.1:8101"
        [backends.new]
        url = "http://127.0.0.1:8102"
    "#;

    #[test]
    fn the_shape_of_the_issue_loads_with_defaults() {
        figment::Jail::expect_with(|_| {
            let config = Config::from_toml(&format!(
                "{MINIMAL}\n[routing]\nprimary = \"new\"\n[mirror]\nmode = \"sync\"\n[state]\ndir = \"/tmp/s\"\n"
            ))
            .unwrap();
            assert_eq!(config.routing.primary, BackendName::New);
            assert_eq!(config.mirror.mode, MirrorMode::Sync);
            assert_eq!(config.server.max_body, ByteSize::mib(64));
            assert_eq!(config.backends.old.connect_timeout, Duration::from_secs(5));
            assert_eq!(config.state.dir, PathBuf::from("/tmp/s"));
            Ok(())
        });
    }

    /// The documented example is a valid config, so the documentation cannot drift from the code.
    #[test]
    fn the_example_config_loads() {
        figment::Jail::expect_with(|_| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../config/chroma-shift.example.toml");
            let config = Config::load(&path).unwrap();
            assert_eq!(config.server.listen.port(), 8000);
            assert_eq!(config.mirror.mode, MirrorMode::Journaled);
            assert_eq!(config.state.max_journal_bytes, ByteSize::gib(1));
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_win_and_secrets_are_not_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CHROMA_SHIFT_SERVER__LISTEN", "127.0.0.1:7000");
            jail.set_env("CHROMA_SHIFT_BACKENDS__NEW__REQUEST_TIMEOUT", "3s");
            jail.set_env("CHROMA_SHIFT_ADMIN_TOKEN", "not-a-key");
            let config = Config::from_toml(MINIMAL).unwrap();
            assert_eq!(config.server.listen.port(), 7000);
            assert_eq!(config.backends.new.request_timeout, Duration::from_secs(3));
            Ok(())
        });
    }

    #[test]
    fn bad_files_name_the_key() {
        figment::Jail::expect_with(|_| {
            let cases = [
                (MINIMAL.replace("8102", "8101"), "backends.new.url"),
                (MINIMAL.replace("9100", "8000"), "server.admin_listen"),
                (
                    MINIMAL.replace("http://127.0.0.1:8101", "ftp://h"),
                    "backends.old.url",
                ),
                (
                    format!("{MINIMAL}\n[routing]\nprimary = \"middle\"\n"),
                    "primary",
                ),
                (format!("{MINIMAL}\n[server.typo]\n"), "typo"),
                (
                    MINIMAL.replace("listen = \"127.0.0.1:8000\"", "listen = \"nowhere\""),
                    "listen",
                ),
            ];
            for (text, needle) in cases {
                let err = Config::from_toml(&text).unwrap_err().to_string();
                assert!(err.contains(needle), "{needle}: {err}");
            }
            Ok(())
        });
    }

    #[test]
    fn secrets_come_from_the_environment_and_never_print() {
        figment::Jail::expect_with(|jail| {
            let text = format!(
                "{MINIMAL}\n[backends.old.auth]\ntoken_env = \"OLD_TOKEN\"\nheader = \"x-chroma-token\"\n[server.client_auth]\nenabled = true\n"
            )
;
            let config = Config::from_toml(&text).unwrap();
            let err = config.secrets().unwrap_err().to_string();
            assert!(err.contains("OLD_TOKEN"), "{err}");
            jail.set_env("OLD_TOKEN", "s3cret-old");
            let err = config.secrets().unwrap_err().to_string();
            assert!(err.contains("CHROMA_SHIFT_CLIENT_TOKENS"), "{err}");
            jail.set_env("CHROMA_SHIFT_CLIENT_TOKENS", "a, b,");
            let err = config.secrets().unwrap_err().to_string();
            assert!(err.contains("CHROMA_SHIFT_ADMIN_TOKEN"), "{err}");
            jail.set_env("CHROMA_SHIFT_ADMIN_TOKEN", "s3cret-admin");
            let secrets = config.secrets().unwrap();
            assert_eq!(
                secrets.admin_token.as_ref().unwrap().expose(),
                "s3cret-admin"
            );
            assert_eq!(secrets.old.as_ref().unwrap().expose(), "s3cret-old");
            assert_eq!(secrets.client_tokens.len(), 2);
            let printed = format!(
                "{secrets:?} {} {}",
                secrets.old.as_ref().unwrap(),
                secrets.admin_token.as_ref().unwrap()
            );
            assert!(!printed.contains("s3cret"), "{printed}");
            Ok(())
        });
    }

    #[test]
    fn replay_limits_are_checked_at_load() {
        figment::Jail::expect_with(|_| {
            let mirror = |keys: &str| format!("{MINIMAL}\n[mirror]\n{keys}\n");
            let config = Config::from_toml(&mirror("replay_rate_limit = 1000000")).unwrap();
            assert_eq!(config.mirror.replay_rate_limit, MAX_REPLAY_RATE);
            assert_eq!(config.mirror.replay_memory, ByteSize::mib(64));
            for (keys, needle) in [
                ("replay_rate_limit = 2000000000", "mirror.replay_rate_limit"),
                ("replay_memory = \"10KiB\"", "mirror.replay_memory"),
            ] {
                let err = Config::from_toml(&mirror(keys)).unwrap_err().to_string();
                assert!(err.contains(needle), "{needle}: {err}");
            }
            Ok(())
        });
    }
}
