//! `[cluster]`: several proxy replicas coordinated through etcd (optional; without the
//! section the proxy runs embedded, one process owning its state).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::{invalid, ConfigError};

/// The cluster mode's coordination. Every replica of one deployment has the same section but
/// its own `member_id`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The etcd client URLs (`http://host:2379`), every member of the etcd cluster.
    pub etcd_endpoints: Vec<String>,
    /// This replica's name, unique in the deployment; in Kubernetes the pod name (set
    /// `CHROMA_SHIFT_CLUSTER__MEMBER_ID` from `metadata.name`).
    pub member_id: String,
    /// The etcd keys of this deployment live under this prefix; two deployments sharing an
    /// etcd need two prefixes.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// The membership lease's time to live. A replica that cannot renew it (cut off from
    /// etcd, or paused) refuses writes from its deadline on; the others see it gone after it.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How long a replica past its lease deadline keeps serving reads (writes it refuses from
    /// the deadline on, 503); past this grace it refuses reads too (503) until it holds a
    /// lease again, so a replica cut off from the cluster for long stops answering from a
    /// topology that may be stale. Zero: reads stop with writes.
    #[serde(default = "default_read_grace", with = "humantime_serde")]
    pub read_grace: Duration,
    /// Limit on connecting to etcd and on each etcd call.
    #[serde(default = "default_etcd_timeout", with = "humantime_serde")]
    pub etcd_timeout: Duration,
    /// Where the other replicas reach this one's data listener to forward it the writes of the
    /// collections it owns (`http://10.1.2.3:8000`; in Kubernetes from the pod IP through
    /// `CHROMA_SHIFT_CLUSTER__INTERNAL_ADDRESS`). Unset: `http://` and `server.listen`, which
    /// then must name a specific address (not 0.0.0.0).
    #[serde(default)]
    pub internal_address: Option<String>,
    /// The NATS server holding the journal in JetStream (`nats://nats-0.nats:4222`; several
    /// URLs separated by commas). Required for a cluster that keeps per-record order across a
    /// change of a collection's owner: the journal then lives in one replicated stream, and a
    /// replica that dies loses nothing with its disk. Unset: each replica journals in its own
    /// `[state] dir` and replays it itself (a replica's entries are stuck on its disk while it
    /// is down); for tests of the coordination alone, not for production.
    #[serde(default)]
    pub nats_url: Option<String>,
    /// The JetStream stream of the journal (created when absent). Its subjects are
    /// `<stream lowercased>.j.<store>.<collection>` (mirrored writes),
    /// `<stream lowercased>.dead.<store>.<collection>` (dead letters) and
    /// `<stream lowercased>.intent.<member>.<start>` (write intents).
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Servers holding each message of the stream: 3 in production (a quorum acknowledges an
    /// append, so one server may be lost); 1 against a single server (tests).
    #[serde(default = "default_stream_replicas")]
    pub stream_replicas: usize,
    /// How long the stream remembers a message id: an append resent within it (a retry after
    /// a lost acknowledgement) is stored once.
    #[serde(default = "default_duplicate_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long a new owner of a collection waits after fencing the old owner's appends before
    /// it settles the old owner's pending intents from the primary and takes the collection's
    /// writes: at least the longest a write may take at the primary plus
    /// `[mirror] unknown_outcome_grace`, so no write of the old owner lands on the primary after
    /// the new owner read it.
    #[serde(default = "default_takeover_grace", with = "humantime_serde")]
    pub takeover_grace: Duration,
}

fn default_stream() -> String {
    "CHROMA_SHIFT".into()
}

fn default_stream_replicas() -> usize {
    3
}

fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}

/// The backends' default `request_timeout` (60s) plus `[mirror] unknown_outcome_grace` (2s),
/// with a margin.
fn default_takeover_grace() -> Duration {
    Duration::from_secs(70)
}

fn default_key_prefix() -> String {
    "/chroma-shift".into()
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_read_grace() -> Duration {
    Duration::from_secs(30)
}

fn default_etcd_timeout() -> Duration {
    Duration::from_secs(5)
}

impl ClusterConfig {
    /// The URL the other replicas forward to (see `internal_address`); `None` when it is
    /// unset and `listen` names no specific address.
    pub fn internal_url(&self, listen: SocketAddr) -> Option<String> {
        match &self.internal_address {
            Some(address) => Some(address.trim_end_matches('/').to_owned()),
            None if listen.ip().is_unspecified() => None,
            None => Some(format!("http://{listen}")),
        }
    }

    pub(crate) fn validate(&self, listen: SocketAddr, data_tls: bool) -> Result<(), ConfigError> {
        match self.internal_url(listen) {
            None => {
                return Err(invalid(
                    "cluster.internal_address",
                    "set it (http://POD_IP:PORT): server.listen binds every address, so it does not say where the other replicas reach this one",
                ))
            }
            Some(url) if !url.starts_with("http://") => {
                return Err(invalid(
                    "cluster.internal_address",
                    format!("{url:?}: replicas forward to each other over plain http:// (not https:// yet)"),
                ))
            }
            Some(_) if data_tls => {
                return Err(invalid(
                    "cluster.internal_address",
                    "replicas forward to each other over plain HTTP, which a data listener with [server.tls] does not speak; cluster mode with [server.tls] is not supported yet",
                ))
            }
            Some(_) => {}
        }
        if self.etcd_endpoints.is_empty() {
            return Err(invalid(
                "cluster.etcd_endpoints",
                "name at least one etcd endpoint",
            ));
        }
        if let Some(bad) = self
            .etcd_endpoints
            .iter()
            .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        {
            return Err(invalid(
                "cluster.etcd_endpoints",
                format!("{bad:?} is not an http:// or https:// URL"),
            ));
        }
        let id_ok = !self.member_id.is_empty()
            && self.member_id.len() <= 128
            && self
                .member_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !id_ok {
            return Err(invalid(
                "cluster.member_id",
                "1 to 128 characters of letters, digits, '-', '_' and '.'",
            ));
        }
        if !self.key_prefix.starts_with('/') || self.key_prefix.ends_with('/') {
            return Err(invalid(
                "cluster.key_prefix",
                "starts with '/' and does not end with one (\"/chroma-shift\")",
            ));
        }
        if self.lease_ttl < Duration::from_secs(2) {
            return Err(invalid(
                "cluster.lease_ttl",
                "at least 2s (etcd grants whole seconds; the lease is renewed at a third of it)",
            ));
        }
        if self.etcd_timeout.is_zero() || self.etcd_timeout >= self.lease_ttl {
            return Err(invalid(
                "cluster.etcd_timeout",
                "above zero and below cluster.lease_ttl",
            ));
        }
        if let Some(url) = &self.nats_url {
            let ok = !url.is_empty()
                && url.split(',').all(|u| {
                    let u = u.trim();
                    ["nats://", "tls://", "ws://", "wss://"]
                        .iter()
                        .any(|scheme| u.starts_with(scheme))
                });
            if !ok {
                return Err(invalid(
                    "cluster.nats_url",
                    format!("{url:?}: nats://host:4222 (several separated by commas)"),
                ));
            }
        }
        let stream_ok = !self.stream.is_empty()
            && self.stream.len() <= 64
            && self
                .stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !stream_ok {
            return Err(invalid(
                "cluster.stream",
                "1 to 64 characters of letters, digits, '-' and '_'",
            ));
        }
        if !(1..=5).contains(&self.stream_replicas) {
            return Err(invalid(
                "cluster.stream_replicas",
                "1 to 5 (JetStream's limit); 3 in production",
            ));
        }
        if self.duplicate_window < Duration::from_secs(1) {
            return Err(invalid("cluster.duplicate_window", "at least 1s"));
        }
        if self.takeover_grace < self.etcd_timeout {
            return Err(invalid(
                "cluster.takeover_grace",
                "at least cluster.etcd_timeout (and the longest a write may take at the primary)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    use crate::tests::MINIMAL as BASE;

    #[test]
    fn a_cluster_section_loads_with_defaults_and_bad_keys_are_named() {
        let config = Config::from_toml(&format!(
            "{BASE}\n[cluster]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\nmember_id = \"proxy-0\"\n"
        ))
        .unwrap();
        let cluster = config.cluster.expect("the section is there");
        assert_eq!(cluster.key_prefix, "/chroma-shift");
        assert_eq!(cluster.lease_ttl.as_secs(), 10);
        assert_eq!(cluster.nats_url, None);
        assert_eq!(cluster.stream, "CHROMA_SHIFT");
        assert_eq!(cluster.stream_replicas, 3);
        assert_eq!(cluster.duplicate_window.as_secs(), 120);
        assert_eq!(cluster.takeover_grace.as_secs(), 70);
        assert_eq!(cluster.read_grace.as_secs(), 30);
        assert!(Config::from_toml(BASE).unwrap().cluster.is_none());
        let listen = config.server.listen;
        assert_eq!(
            cluster.internal_url(listen).unwrap(),
            "http://127.0.0.1:8000"
        );
        // Listening on every address, the internal address must be given.
        let everywhere = BASE.replace("127.0.0.1:8000", "0.0.0.0:8000");
        let section = "[cluster]\netcd_endpoints = [\"http://e:2379\"]\nmember_id = \"a\"\n";
        let error = Config::from_toml(&format!("{everywhere}\n{section}")).unwrap_err();
        assert!(
            error.to_string().contains("cluster.internal_address"),
            "{error}"
        );
        let given = Config::from_toml(&format!(
            "{everywhere}\n{section}internal_address = \"http://10.0.0.7:8000/\"\n"
        ))
        .unwrap();
        let url = given.cluster.unwrap().internal_url(given.server.listen);
        assert_eq!(url.as_deref(), Some("http://10.0.0.7:8000"));
        for (bad, key) in [
            (
                "etcd_endpoints = []\nmember_id = \"a\"",
                "cluster.etcd_endpoints",
            ),
            (
                "etcd_endpoints = [\"127.0.0.1:2379\"]\nmember_id = \"a\"",
                "cluster.etcd_endpoints",
            ),
            (
                "etcd_endpoints = [\"http://e:2379\"]\nmember_id = \"a b\"",
                "cluster.member_id",
            ),
            (
                "etcd_endpoints = [\"http://e:2379\"]\nmember_id = \"a\"\nlease_ttl = \"1s\"",
                "cluster.lease_ttl",
            ),
            (
                "etcd_endpoints = [\"http://e:2379\"]\nmember_id = \"a\"\nkey_prefix = \"x/\"",
                "cluster.key_prefix",
            ),
            (
                "etcd_endpoints = [\"http://e:2379\"]\nmember_id = \"a\"\ninternal_address = \"https://p:8000\"",
                "cluster.internal_address",
            ),
            (
                "etcd_endpoints = [\"http://e:2379\"]\nmember_id = \"a\"\nnats_url = \"http://n:4222\"",
                "cluster.nats_url",
            ),
            (
                "etcd_endpoints = [\"http://e:2379\"]\nmember_id = \"a\"\nstream = \"a.b\"",
                "cluster.stream",
            ),
            (
                "etcd_endpoints = [\"http://e:2379\"]\nmember_id = \"a\"\nstream_replicas = 0",
                "cluster.stream_replicas",
            ),
            (
                "etcd_endpoints = [\"http://e:2379\"]\nmember_id = \"a\"\ntakeover_grace = \"1s\"",
                "cluster.takeover_grace",
            ),
        ] {
            let error = Config::from_toml(&format!("{BASE}\n[cluster]\n{bad}\n")).unwrap_err();
            assert!(error.to_string().contains(key), "{bad}: {error}");
        }
    }
}
