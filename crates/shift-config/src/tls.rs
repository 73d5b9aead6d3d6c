//! `[server.tls]` and `[admin.tls]`: TLS on the proxy's own listeners, from PEM files that are
//! reloaded when they change; client certificates only on the admin listener.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{invalid, ConfigError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain the listener presents, PEM, leaf first.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Only in `[admin.tls]`: when set, every `/admin/*` call needs a client certificate signed
    /// by one of these CAs (PEM), besides the admin token. The handshake itself does not demand
    /// one, so `/healthz`, `/readyz` and `/metrics` stay reachable for the kubelet's probes and
    /// Prometheus; a certificate from another CA fails the handshake.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// How often the files' modification times are checked; a changed pair that parses is
    /// used for new handshakes (open connections keep theirs), a broken one is logged and the
    /// served pair stays.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(60)
}

/// Which listener a `[*.tls]` table belongs to: its keys' names in messages, and whether it
/// may ask for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsListener {
    Data,
    Admin,
}

impl TlsListener {
    /// `(cert, key, client_ca, reload_interval)` as written in the file.
    fn keys(self) -> [&'static str; 4] {
        match self {
            TlsListener::Data => [
                "server.tls.cert",
                "server.tls.key",
                "server.tls.client_ca",
                "server.tls.reload_interval",
            ],
            TlsListener::Admin => [
                "admin.tls.cert",
                "admin.tls.key",
                "admin.tls.client_ca",
                "admin.tls.reload_interval",
            ],
        }
    }
}

impl TlsConfig {
    /// The files must be there at start (their content is checked when the listener loads
    /// them, before it binds); a data listener takes no client CA.
    pub(crate) fn validate(&self, listener: TlsListener) -> Result<(), ConfigError> {
        let [cert, key, client_ca, reload] = listener.keys();
        readable(cert, &self.cert)?;
        readable(key, &self.key)?;
        match (&self.client_ca, listener) {
            (Some(_), TlsListener::Data) => {
                return Err(invalid(
                    client_ca,
                    "client certificates are taken on the admin listener only ([admin.tls] \
                     client_ca); data clients authenticate with tokens ([server.client_auth])",
                ))
            }
            (Some(path), TlsListener::Admin) => readable(client_ca, path)?,
            (None, _) => {}
        }
        if self.reload_interval < Duration::from_millis(100) {
            return Err(invalid(reload, "must be at least 100ms"));
        }
        Ok(())
    }
}

fn readable(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{} is not a readable file", path.display()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, client_ca: bool) -> TlsConfig {
        for file in ["c.pem", "k.pem", "ca.pem"] {
            std::fs::write(dir.join(file), "x").unwrap();
        }
        TlsConfig {
            cert: dir.join("c.pem"),
            key: dir.join("k.pem"),
            client_ca: client_ca.then(|| dir.join("ca.pem")),
            reload_interval: default_reload_interval(),
        }
    }

    #[test]
    fn missing_files_and_a_data_client_ca_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        config(dir.path(), true)
            .validate(TlsListener::Admin)
            .unwrap();
        config(dir.path(), false)
            .validate(TlsListener::Data)
            .unwrap();
        let error = config(dir.path(), true)
            .validate(TlsListener::Data)
            .unwrap_err()
            .to_string();
        assert!(error.contains("server.tls.client_ca"), "{error}");
        let mut missing = config(dir.path(), false);
        missing.key = dir.path().join("gone.pem");
        let error = missing
            .validate(TlsListener::Admin)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("admin.tls.key") && error.contains("gone.pem"),
            "{error}"
        );
    }
}
