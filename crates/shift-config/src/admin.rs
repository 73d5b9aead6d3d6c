//! `[admin]`: the admin API and its token.

use serde::Deserialize;

use crate::tls::{TlsConfig, TlsListener};
use crate::ConfigError;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin API (`/admin/...`) on the admin listener. It needs a token; turning it
    /// off is the only way to run without one. `/metrics`, `/healthz`, `/readyz` stay either way.
    pub enabled: bool,
    /// The environment variable holding the admin token (`Authorization: Bearer <token>`).
    pub token_env: String,
    /// TLS on the admin listener (off when absent), with optional client certificates
    /// (`client_ca`). The admin token crosses the network in clear text without it.
    pub tls: Option<TlsConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            token_env: "CHROMA_SHIFT_ADMIN_TOKEN".to_owned(),
            tls: None,
        }
    }
}

impl AdminConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match &self.tls {
            Some(tls) => tls.validate(TlsListener::Admin),
            None => Ok(()),
        }
    }
}
