//! `[server]`: the data plane's listeners and limits, and `[server.client_auth]`.

use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::connections::ConnectionsConfig;
use crate::tls::{TlsConfig, TlsListener};
use crate::{invalid, ClientIdentityConfig, ConfigError, LimitsConfig};

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
    /// Connection cap, idle timeout and HTTP/2 limits, for both listeners.
    #[serde(default)]
    pub connections: ConnectionsConfig,
    /// TLS on the data listener (off when absent); ALPN offers h2 when `http2` is on.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Load shedding and body limits (`[server.limits]`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Threads serving the data listener, as nginx has its workers: each with its own
    /// listener on the port (`SO_REUSEPORT`) and its own backend connections, so a request
    /// is served on one thread and wakes no other. Unset: one per core; 0: none, the
    /// process's shared runtime serves the data listener. At most 256.
    #[serde(default)]
    pub data_plane_threads: Option<usize>,
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
        self.connections.validate()?;
        if let Some(tls) = &self.tls {
            tls.validate(TlsListener::Data)?;
        }
        self.limits.validate(self.max_body)?;
        if self
            .data_plane_threads
            .is_some_and(|n| n > MAX_DATA_PLANE_THREADS)
        {
            return Err(invalid(
                "server.data_plane_threads",
                format!("at most {MAX_DATA_PLANE_THREADS} (one per core is the default)"),
            ));
        }
        Ok(())
    }
}

/// The most data-plane threads `[server] data_plane_threads` may ask for.
pub const MAX_DATA_PLANE_THREADS: usize = 256;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// Require a token from clients (`Authorization: Bearer` or `X-Chroma-Token`).
    pub enabled: bool,
    /// The environment variable holding the accepted tokens, comma-separated.
    pub tokens_env: String,
    /// Forward the client's own `Authorization` / `X-Chroma-Token` headers to the backends
    /// (on the client's reads and writes, the sync mirror and shadow reads; the journaled
    /// mirror's replay, which runs later, uses `[backends.*.auth]`). Off by default: backends
    /// get the credentials of `[backends.*.auth]` or of the client's identity only.
    pub forward_client_auth: bool,
    /// Client identities, each with its own backend tokens (the token map). A client
    /// presenting an identity's token reaches the backends with that identity's tokens; one
    /// presenting a token of `tokens_env` with `[backends.*.auth]` (the operator's).
    pub identities: Vec<ClientIdentityConfig>,
    /// Start even though `[backends.*.auth]` is set, client auth is off and `listen` is not a
    /// loopback address: only for a network that already restricts who reaches the data port.
    pub allow_unauthenticated_with_backend_credentials: bool,
}

impl Default for ClientAuthConfig {
    fn default() -> Self {
        ClientAuthConfig {
            enabled: false,
            tokens_env: "CHROMA_SHIFT_CLIENT_TOKENS".to_owned(),
            forward_client_auth: false,
            identities: Vec::new(),
            allow_unauthenticated_with_backend_credentials: false,
        }
    }
}
