//! chroma-shift's configuration.
//!
//! One loader ([`Config::load`]): a TOML file, then environment overrides named
//! `CHROMA_SHIFT_<SECTION>__<KEY>` (double underscore between levels, for example
//! `CHROMA_SHIFT_SERVER__LISTEN` or `CHROMA_SHIFT_BACKENDS__NEW__URL`), then validation. A bad
//! file stops the process at start with a message naming the key. Secrets never live in the
//! file: the config names the environment variables that hold them, and [`Secret`] never
//! prints its value.
//!
//! Layout: one module per section of the file (`server`, `backends`, `routing`, `mirror`,
//! `state`, `log`, `health`, `namespaces`, `admin`, `cutover`, `reads`, `alerts`, `metrics`;
//! the sub-sections `server.connections` in `connections`, `server.tls` and `admin.tls` in
//! `tls`), each with its section's type, its defaults (written once: the section's
//! `Default`, or a default function for a key of a section that has required keys) and its
//! validation; `secrets`
//! reads the secrets the config names. This file holds [`Config`] and the loader.
//!
//! `config/chroma-shift.example.toml` documents every key; a test checks that its values are
//! the defaults.

mod admin;
mod alerts;
mod backends;
mod cluster;
mod connections;
mod cutover;
mod finalize;
mod health;
mod identities;
mod limits;
mod log;
mod metrics;
mod mirror;
mod namespaces;
mod reads;
mod routing;
mod secrets;
mod server;
mod state;
mod tls;
mod tracing_export;

use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

pub use admin::{AdminConfig, SINGLE_ADMIN_TOKEN_NAME};
pub use alerts::AlertsConfig;
pub use backends::{AuthHeader, BackendAuthConfig, BackendConfig, BackendName, BackendsConfig};
pub use cluster::ClusterConfig;
pub use connections::ConnectionsConfig;
pub use cutover::CutoverConfig;
pub use finalize::FinalizeConfig;
pub use health::HealthConfig;
pub use identities::{valid_identity_name, ClientIdentityConfig, IdentityBackendTokens};
pub use limits::LimitsConfig;
pub use log::{LogConfig, LogFormat};
pub use metrics::MetricsConfig;
pub use mirror::{MirrorConfig, MirrorMode, SecondaryFailure, MAX_REPLAY_RATE};
pub use namespaces::NamespaceRule;
pub use reads::ReadsConfig;
pub use routing::RoutingConfig;
pub use secrets::{IdentitySecrets, Secret, Secrets};
pub use server::{ClientAuthConfig, ServerConfig};
pub use state::StateConfig;
pub use tls::TlsConfig;
pub use tracing_export::{OtlpProtocol, TracingConfig};

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
    /// A secret's value cannot be used; the reason never holds the value.
    #[error("the environment variable {env} (configuration key `{key}`): {reason}")]
    InvalidSecret {
        key: &'static str,
        env: String,
        reason: String,
    },
}

pub(crate) fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Bounds on per-collection metric series.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Optional OpenTelemetry trace export (off by default).
    #[serde(default)]
    pub tracing: TracingConfig,
    /// How a migration ends after a cutover: checks and the retention window.
    #[serde(default)]
    pub finalize: FinalizeConfig,
    /// Several replicas coordinated through etcd; absent, the proxy runs embedded.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
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

    /// Checks what types alone cannot; each section checks its own keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.backends.validate()?;
        namespaces::validate(&self.namespaces)?;
        self.reads.validate()?;
        self.alerts.validate()?;
        self.mirror.validate()?;
        self.health.validate()?;
        self.validate_credentials()?;
        self.admin.validate()?;
        self.metrics.validate()?;
        self.tracing.validate()?;
        if let Some(cluster) = &self.cluster {
            cluster.validate(self.server.listen, self.server.tls.is_some())?;
        }
        Ok(())
    }
}

#[cfg(test)]
// figment's Jail closures return its large error type; boxing it in tests buys nothing.
#[allow(clippy::result_large_err)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use bytesize::ByteSize;

    use super::*;

    pub(crate) const MINIMAL: &str = r#"
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

    /// The example writes every key with its default, so a config with only the required keys
    /// must load to exactly the same values: the documented defaults are the code's.
    #[test]
    fn an_empty_config_yields_the_documented_defaults() {
        figment::Jail::expect_with(|_| {
            let example = Config::load(
                &Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../config/chroma-shift.example.toml"),
            )
            .unwrap();
            let minimal = Config::from_toml(MINIMAL).unwrap();
            assert_eq!(minimal, example);
            // An empty section is that section's default.
            let empty_sections = Config::from_toml(&format!(
                "{MINIMAL}\n[server.client_auth]\n[server.connections]\n[routing]\n[mirror]\n[state]\n[log]\n[health]\n[admin]\n[cutover]\n[reads]\n[alerts]\n"
            ))
            .unwrap();
            assert_eq!(empty_sections, minimal);
            assert_eq!(minimal.server.client_auth, ClientAuthConfig::default());
            assert_eq!(minimal.server.limits, LimitsConfig::default());
            assert_eq!(minimal.server.connections, ConnectionsConfig::default());
            assert_eq!((&minimal.server.tls, &minimal.admin.tls), (&None, &None));
            assert_eq!(minimal.routing, RoutingConfig::default());
            assert_eq!(minimal.mirror, MirrorConfig::default());
            assert_eq!(minimal.state, StateConfig::default());
            assert_eq!(minimal.log, LogConfig::default());
            assert_eq!(minimal.health, HealthConfig::default());
            assert_eq!(minimal.admin, AdminConfig::default());
            assert_eq!(minimal.cutover, CutoverConfig::default());
            assert_eq!(minimal.reads, ReadsConfig::default());
            assert_eq!(minimal.alerts, AlertsConfig::default());
            assert!(minimal.namespaces.is_empty());
            // The values the example documents, spelled out for a reader of this test.
            assert_eq!(minimal.server.max_body, ByteSize::mib(64));
            assert_eq!(minimal.server.header_read_timeout, Duration::from_secs(10));
            assert_eq!(minimal.server.shutdown_grace, Duration::from_secs(30));
            assert!(minimal.server.http2);
            assert_eq!(minimal.server.data_plane_threads, None);
            assert_eq!(
                minimal.server.client_auth.tokens_env,
                "CHROMA_SHIFT_CLIENT_TOKENS"
            );
            let old = &minimal.backends.old;
            assert_eq!(old.connect_timeout, Duration::from_secs(5));
            assert_eq!(old.request_timeout, Duration::from_secs(60));
            assert_eq!(old.pool_idle_timeout, Duration::from_secs(90));
            assert_eq!(old.pool_max_idle, 64);
            assert_eq!(minimal.routing.primary, BackendName::Old);
            assert_eq!(minimal.mirror.retry_initial, Duration::from_millis(100));
            assert_eq!(minimal.mirror.retry_max, Duration::from_secs(30));
            assert_eq!(minimal.mirror.unknown_outcome_grace, Duration::from_secs(2));
            assert_eq!(minimal.state.dir, PathBuf::from("./state"));
            assert_eq!(minimal.state.max_journal_bytes, ByteSize::gib(1));
            assert_eq!(minimal.log.level, "info");
            assert_eq!(minimal.health.auto_rollback_after, Duration::from_secs(300));
            assert_eq!(minimal.health.outage_alert_after, Duration::from_secs(60));
            assert_eq!(minimal.admin.token_env, "CHROMA_SHIFT_ADMIN_TOKEN");
            assert_eq!(minimal.cutover.max_lag, 10_000);
            assert_eq!(minimal.reads.shadow_queue, 256);
            assert_eq!(minimal.reads.mismatch_samples, 50);
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
                (
                    MINIMAL.replace(
                        "listen = \"127.0.0.1:8000\"",
                        "listen = \"127.0.0.1:8000\"\ndata_plane_threads = 1000",
                    ),
                    "server.data_plane_threads",
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
