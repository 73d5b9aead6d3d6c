//! `[backends.old]` and `[backends.new]`: the two Chroma servers, and [`BackendName`], the
//! name of one of them.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::{invalid, ConfigError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (key, backend) in [
            ("backends.old.url", &self.old),
            ("backends.new.url", &self.new),
        ] {
            backend.validate(key)?;
        }
        if same_server(&self.old.url, &self.new.url) {
            return Err(invalid(
                "backends.new.url",
                "names the same server as backends.old.url; the two stores must differ",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Base URL of the Chroma server, `http://` or `https://`, optionally with a path prefix.
    pub url: Url,
    /// Limit on establishing a connection (TCP and TLS).
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Limit on a request, from sending it to the response head; for an answer the proxy reads
    /// whole (a lifecycle write's, a mirrored write's, its own lookups), to the answer's last
    /// byte. A write past it has an unknown outcome and is reconciled after
    /// `[mirror] unknown_outcome_grace`.
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

/// The defaults of a backend's keys that have one. `url` has none (the section has no
/// `Default`), so each default is a function here, written once.
mod defaults {
    use super::*;

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
}

impl BackendConfig {
    /// `key` names the backend's `url` in messages.
    fn validate(&self, key: &'static str) -> Result<(), ConfigError> {
        let url = &self.url;
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
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(invalid(
                key,
                "connect_timeout and request_timeout must be above zero",
            ));
        }
        if let Some(ca) = &self.ca_file {
            if !ca.is_file() {
                return Err(invalid(
                    key,
                    format!("ca_file {} is not a readable file", ca.display()),
                ));
            }
        }
        Ok(())
    }
}

fn same_server(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
        && a.path().trim_end_matches('/') == b.path().trim_end_matches('/')
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
