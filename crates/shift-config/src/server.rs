//! `[server]`: the data plane's listeners and limits, and `[server.client_auth]`.

use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::{invalid, ConfigError, LimitsConfig};

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    #[serde(default = "defaults::http2")]
    pub http2: bool,
    /// Optional authentication of clients at the proxy.
    #[serde(default)]
    pub client_auth: ClientAuthConfig,
    /// Load shedding and body limits (`[server.limits]`).
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// The defaults of the keys of `[server]` that have one. `listen` and `admin_listen` have
/// none (the section has no `Default`), so each default is a function here, written once.
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
    pub fn http2() -> bool {
        true
    }
}

impl ServerConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        // Port 0 asks the OS for a free port, so two port-0 addresses never collide.
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err(invalid(
                "server.admin_listen",
                "must differ from server.listen: the admin API never shares the data port",
            ));
        }
        if self.max_body.as_u64() == 0 {
            return Err(invalid("server.max_body", "must be above zero"));
        }
        self.limits.validate(self.max_body)?;
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// Require a token from clients (`Authorization: Bearer` or `X-Chroma-Token`).
    pub enabled: bool,
    /// The environment variable holding the accepted tokens, comma-separated.
    pub tokens_env: String,
    /// Forward the client's own `Authorization` / `X-Chroma-Token` headers to the backends.
    /// Off by default: backends get the credentials of `[backends.*.auth]` only.
    pub forward_client_auth: bool,
}

impl Default for ClientAuthConfig {
    fn default() -> Self {
        ClientAuthConfig {
            enabled: false,
            tokens_env: "CHROMA_SHIFT_CLIENT_TOKENS".to_owned(),
            forward_client_auth: false,
        }
    }
}
