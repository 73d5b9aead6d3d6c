//! `[server.connections]`: how many client connections each listener holds, and how long an
//! idle one may stay; HTTP/2's per-connection limits.

use std::time::Duration;

use serde::Deserialize;

use crate::{invalid, ConfigError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Most client connections open at once, per listener (data and admin each have their
    /// own). Past it a new connection is accepted and closed at once, counted in
    /// `chroma_shift_connections_refused_total{reason="at_capacity"}`: the client fails fast
    /// and can retry, rather than hanging in the kernel's backlog. Requests in flight and body
    /// memory have their own limits; this one bounds sockets and per-connection buffers.
    pub max_connections: usize,
    /// A keep-alive connection with no request for this long is closed (gracefully: a request
    /// in flight finishes first; HTTP/2 gets a GOAWAY). Above the usual client pool expiry
    /// (httpx 5s, undici 4s), so clients drop idle connections before the proxy does. An idle
    /// HTTP/1.1 connection ends earlier, at `header_read_timeout`: hyper runs that clock while
    /// it waits for the next request head too (measured with hyper 1.12); this bound is the
    /// one that holds for HTTP/2.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// HTTP/2: most requests (streams) open at once on one connection.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2: a ping is sent after this long without a frame from the client.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// HTTP/2: a client that does not answer a ping within this time is disconnected.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(120),
            http2_max_concurrent_streams: 128,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
        }
    }
}

impl ConnectionsConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(invalid(
                "server.connections.max_connections",
                "must be above zero",
            ));
        }
        if self.http2_max_concurrent_streams == 0 {
            return Err(invalid(
                "server.connections.http2_max_concurrent_streams",
                "must be above zero",
            ));
        }
        for (key, value) in [
            ("server.connections.idle_timeout", self.idle_timeout),
            (
                "server.connections.http2_keepalive_interval",
                self.http2_keepalive_interval,
            ),
            (
                "server.connections.http2_keepalive_timeout",
                self.http2_keepalive_timeout,
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be above zero"));
            }
        }
        Ok(())
    }
}
