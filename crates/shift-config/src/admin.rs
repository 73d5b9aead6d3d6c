//! `[admin]`: the admin API, its tokens, its audit log, and the limit on failed logins.

use std::time::Duration;

use serde::Deserialize;

use crate::tls::{TlsConfig, TlsListener};
use crate::{invalid, ConfigError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin API (`/admin/...`) on the admin listener. It needs a token; turning it
    /// off is the only way to run without one. `/metrics`, `/healthz`, `/readyz` stay either way.
    pub enabled: bool,
    /// The environment variable holding the admin token (`Authorization: Bearer <token>`).
    /// Its holder is named `admin` in the audit log. Optional when `tokens_env` names tokens.
    pub token_env: String,
    /// The environment variable holding named admin tokens, `name=token` pairs separated by
    /// commas (`alice=tok1,ci=tok2`): each holder's name is who the audit log says acted.
    /// Unset or empty: no named tokens (then `token_env` must hold one).
    pub tokens_env: String,
    /// How many audit log entries the state store keeps; the oldest go first.
    pub audit_keep: usize,
    /// Failed admin logins one peer IP may make within `auth_failure_window`; past them its
    /// calls are answered 429 with `Retry-After` until the window ends, right token or not.
    pub auth_failure_limit: u32,
    /// The window of `auth_failure_limit`, from a peer's first failure.
    #[serde(with = "humantime_serde")]
    pub auth_failure_window: Duration,
    /// How many peer IPs the failure counts are kept for (about 64 bytes each); when full,
    /// the peer whose window started first is forgotten.
    pub auth_failure_peers: usize,
    /// TLS on the admin listener (off when absent), with optional client certificates
    /// (`client_ca`). The admin token crosses the network in clear text without it.
    pub tls: Option<TlsConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            token_env: "CHROMA_SHIFT_ADMIN_TOKEN".to_owned(),
            tokens_env: "CHROMA_SHIFT_ADMIN_TOKENS".to_owned(),
            audit_keep: 10_000,
            auth_failure_limit: 10,
            auth_failure_window: Duration::from_secs(60),
            auth_failure_peers: 4096,
            tls: None,
        }
    }
}

impl AdminConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.audit_keep == 0 {
            return Err(invalid("admin.audit_keep", "must be at least 1"));
        }
        if self.auth_failure_limit == 0 {
            return Err(invalid("admin.auth_failure_limit", "must be at least 1"));
        }
        if self.auth_failure_window.is_zero() {
            return Err(invalid("admin.auth_failure_window", "must be above zero"));
        }
        if self.auth_failure_peers == 0 {
            return Err(invalid("admin.auth_failure_peers", "must be at least 1"));
        }
        if let Some(tls) = &self.tls {
            tls.validate(TlsListener::Admin)?;
        }
        Ok(())
    }
}

/// The name the audit log gives the holder of the single `token_env` token.
pub const SINGLE_ADMIN_TOKEN_NAME: &str = "admin";

/// Reads `alice=tok1,ci=tok2` into named tokens. Names are letters, digits, `-`, `_`, `.`, and
/// unique; tokens are non-empty and unique (one token is one actor). The reason of an error
/// names the entry by its position and name, never its token.
pub(crate) fn parse_named_tokens(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut named: Vec<(String, String)> = Vec::new();
    for (i, pair) in raw.split(',').map(str::trim).enumerate() {
        if pair.is_empty() {
            continue;
        }
        let Some((name, token)) = pair.split_once('=') else {
            return Err(format!("entry {} is not name=token", i + 1));
        };
        let (name, token) = (name.trim(), token.trim());
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(format!(
                "entry {}: a name is letters, digits, '-', '_' or '.'",
                i + 1
            ));
        }
        if token.is_empty() {
            return Err(format!("entry {} ({name}) has an empty token", i + 1));
        }
        if named.iter().any(|(n, _)| n == name) {
            return Err(format!("the name {name} appears twice"));
        }
        if named.iter().any(|(_, t)| t == token) {
            return Err(format!("{name} has the same token as another name"));
        }
        named.push((name.to_owned(), token.to_owned()));
    }
    Ok(named)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_tokens_parse_and_errors_never_show_a_token() {
        let named = parse_named_tokens(" alice=tok1, ci.bot = tok2 ,").unwrap();
        assert_eq!(
            named,
            [
                ("alice".to_owned(), "tok1".to_owned()),
                ("ci.bot".to_owned(), "tok2".to_owned())
            ]
        );
        assert!(parse_named_tokens("").unwrap().is_empty());
        for bad in [
            "alice",
            "=sekrit",
            "al ice=sekrit",
            "alice=",
            "a=sekrit,a=other",
            "a=sekrit,b=sekrit",
        ] {
            let reason = parse_named_tokens(bad).unwrap_err();
            assert!(!reason.contains("sekrit"), "{bad}: {reason}");
        }
    }
}
