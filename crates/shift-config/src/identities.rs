//! `[[server.client_auth.identities]]`: the token map from client tokens to backend tokens, and
//! the cross-section checks of credentials: which combinations of client auth, forwarding and
//! backend credentials are refused, and the start-up refusal for a data listener that would let
//! anyone who reaches it act with the operator's backend credentials.

use serde::Deserialize;

use crate::{invalid, BackendName, Config, ConfigError};

/// One client identity: the clients presenting its token act on each backend with its own
/// backend token, so a hosted Chroma's per-key permissions keep applying.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIdentityConfig {
    /// The identity's name: shown in access logs and stored with its journaled writes (never
    /// a token). Letters, digits, `.`, `_` and `-`, at most 64.
    pub name: String,
    /// The environment variable holding the tokens clients of this identity present,
    /// comma-separated (list the new and the old one while rotating).
    pub token_env: String,
    /// Per backend, the environment variable holding the token this identity's requests carry
    /// to that backend, in the header of the backend's `[backends.X.auth]` (`Authorization:
    /// Bearer` when it has none). A backend that has `[backends.X.auth]` must be named here.
    #[serde(default)]
    pub backend_tokens: IdentityBackendTokens,
}

/// The environment variables of one identity's backend tokens, by backend name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityBackendTokens {
    /// For `[backends.old]`.
    pub old: Option<String>,
    /// For `[backends.new]`.
    pub new: Option<String>,
}

impl IdentityBackendTokens {
    pub fn get(&self, name: BackendName) -> Option<&str> {
        match name {
            BackendName::Old => self.old.as_deref(),
            BackendName::New => self.new.as_deref(),
        }
    }
}

/// Longest identity name.
const MAX_NAME: usize = 64;

/// Whether `name` can name an identity: it is stored in journal entries and shown in logs.
pub fn valid_identity_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Config {
    /// The credential checks that span `[server]` and `[backends]`.
    pub(crate) fn validate_credentials(&self) -> Result<(), ConfigError> {
        let auth = &self.server.client_auth;
        let mut names = std::collections::HashSet::new();
        for identity in &auth.identities {
            if !valid_identity_name(&identity.name) {
                return Err(invalid(
                    "server.client_auth.identities",
                    format!(
                        "name `{}` must be 1 to {MAX_NAME} letters, digits, `.`, `_` or `-`",
                        identity.name
                    ),
                ));
            }
            if !names.insert(identity.name.as_str()) {
                return Err(invalid(
                    "server.client_auth.identities",
                    format!("name `{}` is used twice", identity.name),
                ));
            }
            if identity.token_env.trim().is_empty() {
                return Err(invalid(
                    "server.client_auth.identities",
                    format!("identity `{}` has an empty token_env", identity.name),
                ));
            }
            for backend in [BackendName::Old, BackendName::New] {
                if self.backends.get(backend).auth.is_some()
                    && identity.backend_tokens.get(backend).is_none()
                {
                    return Err(invalid(
                        "server.client_auth.identities",
                        format!(
                            "identity `{name}` has no backend_tokens.{backend} while \
                             backends.{backend}.auth is set: its requests would reach the \
                             {backend} store with no credential; name the environment variable \
                             of its {backend} token",
                            name = identity.name
                        ),
                    ));
                }
            }
        }
        if !auth.identities.is_empty() && !auth.enabled {
            return Err(invalid(
                "server.client_auth.enabled",
                "must be true when server.client_auth.identities are configured: an identity is \
                 known only by the token its clients present",
            ));
        }
        if !auth.identities.is_empty() && auth.forward_client_auth {
            return Err(invalid(
                "server.client_auth.forward_client_auth",
                "cannot be true together with server.client_auth.identities: either the \
                 client's own credentials go to the backends, or its identity's backend tokens",
            ));
        }
        self.refuse_exposed_credentials()
    }

    /// Refuses a data listener off loopback that anyone can use with the operator's backend
    /// credentials, unless `allow_unauthenticated_with_backend_credentials` says so.
    fn refuse_exposed_credentials(&self) -> Result<(), ConfigError> {
        let auth = &self.server.client_auth;
        let with_credentials: Vec<String> = [BackendName::Old, BackendName::New]
            .into_iter()
            .filter(|b| self.backends.get(*b).auth.is_some())
            .map(|b| format!("backends.{b}.auth"))
            .collect();
        if with_credentials.is_empty()
            || auth.enabled
            || self.server.listen.ip().is_loopback()
            || auth.allow_unauthenticated_with_backend_credentials
        {
            return Ok(());
        }
        Err(invalid(
            "server.client_auth.enabled",
            format!(
                "is false while {} configured and server.listen ({}) is not a loopback address: \
                 anyone who reaches the data port would act with the operator's backend \
                 credentials. Set server.client_auth.enabled = true (with tokens_env or \
                 identities), listen on loopback, or, if the network in front of the proxy \
                 already restricts who reaches it, set \
                 server.client_auth.allow_unauthenticated_with_backend_credentials = true",
                match with_credentials.as_slice() {
                    [one] => format!("{one} is"),
                    many => format!("{} are", many.join(" and ")),
                },
                self.server.listen
            ),
        ))
    }
}

#[cfg(test)]
// figment's Jail closures return its large error type; boxing it in tests buys nothing.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    /// A config listening on `listen`, with `extra` appended.
    fn config(listen: &str, extra: &str) -> Result<Config, ConfigError> {
        Config::from_toml(&format!(
            "[server]\nlisten = \"{listen}\"\nadmin_listen = \"127.0.0.1:9100\"\n\
             [backends.old]\nurl = \"http://127.0.0.1:8101\"\n\
             [backends.new]\nurl = \"http://127.0.0.1:8102\"\n{extra}"
        ))
    }

    const OLD_AUTH: &str = "[backends.old.auth]\ntoken_env = \"OLD_KEY\"\n";

    #[test]
    fn exposed_backend_credentials_refuse_to_start_naming_the_keys() {
        figment::Jail::expect_with(|_| {
            let err = config("0.0.0.0:8000", OLD_AUTH).unwrap_err().to_string();
            for key in [
                "backends.old.auth",
                "server.client_auth.enabled",
                "server.listen",
                "allow_unauthenticated_with_backend_credentials",
            ] {
                assert!(err.contains(key), "{key}: {err}");
            }
            let both = format!("{OLD_AUTH}[backends.new.auth]\ntoken_env = \"NEW_KEY\"\n");
            let err = config("10.1.2.3:8000", &both).unwrap_err().to_string();
            assert!(
                err.contains("backends.old.auth and backends.new.auth are"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn loopback_client_auth_or_the_opt_out_start() {
        figment::Jail::expect_with(|_| {
            config("127.0.0.1:8000", OLD_AUTH).unwrap();
            config("[::1]:8000", OLD_AUTH).unwrap();
            config("0.0.0.0:8000", "").unwrap();
            let enabled = format!("{OLD_AUTH}[server.client_auth]\nenabled = true\n");
            config("0.0.0.0:8000", &enabled).unwrap();
            let opt_out = format!(
                "{OLD_AUTH}[server.client_auth]\n\
                 allow_unauthenticated_with_backend_credentials = true\n"
            );
            config("0.0.0.0:8000", &opt_out).unwrap();
            Ok(())
        });
    }

    const TEAM_A: &str = "[[server.client_auth.identities]]\nname = \"team-a\"\n\
        token_env = \"TEAM_A\"\nbackend_tokens = { old = \"TEAM_A_OLD\", new = \"TEAM_A_NEW\" }\n";

    #[test]
    fn identities_load_and_need_client_auth_without_forwarding() {
        figment::Jail::expect_with(|_| {
            let on = format!("[server.client_auth]\nenabled = true\n{TEAM_A}");
            let loaded = config("0.0.0.0:8000", &on).unwrap();
            let identity = &loaded.server.client_auth.identities[0];
            assert_eq!(identity.name, "team-a");
            assert_eq!(
                identity.backend_tokens.get(BackendName::New),
                Some("TEAM_A_NEW")
            );
            let off = format!("[server.client_auth]\nenabled = false\n{TEAM_A}");
            let err = config("127.0.0.1:8000", &off).unwrap_err().to_string();
            assert!(err.contains("server.client_auth.enabled"), "{err}");
            let forwarding = format!(
                "[server.client_auth]\nenabled = true\nforward_client_auth = true\n{TEAM_A}"
            );
            let err = config("127.0.0.1:8000", &forwarding)
                .unwrap_err()
                .to_string();
            assert!(err.contains("forward_client_auth"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn identities_are_refused_with_bad_names_twice_or_missing_a_backend_token() {
        figment::Jail::expect_with(|_| {
            let on = "[server.client_auth]\nenabled = true\n";
            let twice = format!("{on}{TEAM_A}{TEAM_A}");
            let err = config("127.0.0.1:8000", &twice).unwrap_err().to_string();
            assert!(err.contains("used twice"), "{err}");
            let bad = format!("{on}{}", TEAM_A.replace("team-a", "team a"));
            let err = config("127.0.0.1:8000", &bad).unwrap_err().to_string();
            assert!(err.contains("letters, digits"), "{err}");
            let only_new = "[[server.client_auth.identities]]\nname = \"b\"\n\
                token_env = \"B\"\nbackend_tokens = { new = \"B_NEW\" }\n";
            let err = config("127.0.0.1:8000", &format!("{OLD_AUTH}{on}{only_new}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("backend_tokens.old"), "{err}");
            // Without [backends.old.auth] the old store needs no token from it.
            config("127.0.0.1:8000", &format!("{on}{only_new}")).unwrap();
            Ok(())
        });
    }

    #[test]
    fn identity_names_fit_a_journal_entry_and_a_log_line() {
        assert!(valid_identity_name("team-a.prod_1"));
        for bad in ["", "a b", "a\nb", "@x", &"x".repeat(65)] {
            assert!(!valid_identity_name(bad), "{bad:?}");
        }
    }
}
