//! The secrets the config names (backend tokens, client tokens, the admin token), read from
//! the environment at start, and [`Secret`], a value that never prints.

use std::fmt;

use crate::{BackendConfig, BackendName, Config, ConfigError};

impl Config {
    /// The secrets named by the config, read from the environment. Fails when one is missing,
    /// so a proxy never starts without the credentials it was told to use.
    pub fn secrets(&self) -> Result<Secrets, ConfigError> {
        Ok(Secrets {
            old: backend_secret("backends.old.auth.token_env", &self.backends.old)?,
            new: backend_secret("backends.new.auth.token_env", &self.backends.new)?,
            client_tokens: self.operator_client_tokens()?,
            identities: self.identity_secrets()?,
            admin_token: if self.admin.enabled {
                self.single_admin_token()?
            } else {
                None
            },
            admin_named_tokens: if self.admin.enabled {
                self.named_admin_tokens()?
            } else {
                Vec::new()
            },
        })
    }

    /// The token of `[admin] token_env`: optional when named tokens are set, required if not.
    fn single_admin_token(&self) -> Result<Option<Secret>, ConfigError> {
        match read_env("admin.token_env", &self.admin.token_env) {
            Ok(token) => Ok(Some(token)),
            Err(_) if !self.named_admin_tokens()?.is_empty() => Ok(None),
            Err(_) => Err(ConfigError::MissingSecret {
                key: "admin.token_env",
                env: format!("{} (or {})", self.admin.token_env, self.admin.tokens_env),
            }),
        }
    }

    /// The `name=token` pairs of `[admin] tokens_env`; none when it is unset or empty.
    fn named_admin_tokens(&self) -> Result<Vec<(String, Secret)>, ConfigError> {
        let Ok(raw) = std::env::var(&self.admin.tokens_env) else {
            return Ok(Vec::new());
        };
        let invalid = |reason: String| ConfigError::InvalidSecret {
            key: "admin.tokens_env",
            env: self.admin.tokens_env.clone(),
            reason,
        };
        let named = crate::admin::parse_named_tokens(&raw).map_err(invalid)?;
        let single = read_env("admin.token_env", &self.admin.token_env).ok();
        if single.is_some()
            && named
                .iter()
                .any(|(name, _)| name == crate::SINGLE_ADMIN_TOKEN_NAME)
        {
            return Err(invalid(format!(
                "the name {} is taken by the token in {}",
                crate::SINGLE_ADMIN_TOKEN_NAME,
                self.admin.token_env
            )));
        }
        if single.is_some_and(|single| named.iter().any(|(_, t)| t == single.expose())) {
            return Err(invalid(format!(
                "a named token is the same as the token in {}",
                self.admin.token_env
            )));
        }
        Ok(named
            .into_iter()
            .map(|(name, token)| (name, Secret::new(token)))
            .collect())
    }
}

impl Config {
    /// The tokens of `tokens_env`: needed when client auth is on and no identity is configured.
    fn operator_client_tokens(&self) -> Result<Vec<Secret>, ConfigError> {
        let auth = &self.server.client_auth;
        if !auth.enabled {
            return Ok(Vec::new());
        }
        let key = "server.client_auth.tokens_env";
        match read_env(key, &auth.tokens_env) {
            Ok(raw) => {
                let tokens = split_tokens(&raw);
                if tokens.is_empty() && auth.identities.is_empty() {
                    return Err(ConfigError::MissingSecret {
                        key,
                        env: auth.tokens_env.clone(),
                    });
                }
                Ok(tokens)
            }
            Err(_) if !auth.identities.is_empty() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Each identity's client tokens and backend tokens. A token accepted for two identities,
    /// or for an identity and `tokens_env`, is refused: it would not say who the client is.
    fn identity_secrets(&self) -> Result<Vec<IdentitySecrets>, ConfigError> {
        const KEY: &str = "server.client_auth.identities";
        let auth = &self.server.client_auth;
        // Identities need client auth (checked at load); a tool that turns client auth off
        // (inventory, verify) needs none of their tokens.
        if !auth.enabled {
            return Ok(Vec::new());
        }
        let mut seen: Vec<(Secret, String)> = self
            .operator_client_tokens()?
            .into_iter()
            .map(|t| (t, format!("{} (tokens_env)", auth.tokens_env)))
            .collect();
        let mut identities = Vec::new();
        for identity in &auth.identities {
            let client_tokens = split_tokens(&read_env(KEY, &identity.token_env)?);
            if client_tokens.is_empty() {
                return Err(ConfigError::MissingSecret {
                    key: KEY,
                    env: identity.token_env.clone(),
                });
            }
            for token in &client_tokens {
                if let Some((_, owner)) = seen.iter().find(|(t, _)| t == token) {
                    return Err(crate::invalid(
                        KEY,
                        format!(
                            "a token of identity `{}` ({}) is also accepted for {owner}; each \
                             token must say which identity the client has",
                            identity.name, identity.token_env
                        ),
                    ));
                }
                seen.push((token.clone(), format!("identity `{}`", identity.name)));
            }
            let backend = |name: BackendName| {
                identity
                    .backend_tokens
                    .get(name)
                    .map(|env| read_env(KEY, env))
                    .transpose()
            };
            identities.push(IdentitySecrets {
                name: identity.name.clone(),
                client_tokens,
                old: backend(BackendName::Old)?,
                new: backend(BackendName::New)?,
            });
        }
        Ok(identities)
    }
}

/// A comma-separated list of tokens, blanks dropped.
fn split_tokens(raw: &Secret) -> Vec<Secret> {
    raw.expose()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| Secret::new(t.to_owned()))
        .collect()
}

fn backend_secret(
    key: &'static str,
    backend: &BackendConfig,
) -> Result<Option<Secret>, ConfigError> {
    backend
        .auth
        .as_ref()
        .map(|auth| read_env(key, &auth.token_env))
        .transpose()
}

fn read_env(key: &'static str, env: &str) -> Result<Secret, ConfigError> {
    match std::env::var(env) {
        Ok(value) if !value.trim().is_empty() => Ok(Secret::new(value.trim().to_owned())),
        _ => Err(ConfigError::MissingSecret {
            key,
            env: env.to_owned(),
        }),
    }
}

/// The secrets the config names, read from the environment at start.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// Token for the old store, if it needs one.
    pub old: Option<Secret>,
    /// Token for the new store, if it needs one.
    pub new: Option<Secret>,
    /// Tokens accepted from clients as the operator (`tokens_env`); empty when client auth is
    /// off.
    pub client_tokens: Vec<Secret>,
    /// The client identities of `[[server.client_auth.identities]]`, with their tokens.
    pub identities: Vec<IdentitySecrets>,
    /// The admin API's single token (its holder is named `admin`); `None` when the admin API
    /// is off or only named tokens are set.
    pub admin_token: Option<Secret>,
    /// The admin API's named tokens (`[admin] tokens_env`): who holds each, for the audit log.
    pub admin_named_tokens: Vec<(String, Secret)>,
}

impl Secrets {
    pub fn backend(&self, name: BackendName) -> Option<&Secret> {
        match name {
            BackendName::Old => self.old.as_ref(),
            BackendName::New => self.new.as_ref(),
        }
    }
}

/// One client identity's tokens, read from the environment at start.
#[derive(Debug, Clone, Default)]
pub struct IdentitySecrets {
    /// The identity's name (not a secret).
    pub name: String,
    /// The tokens its clients present.
    pub client_tokens: Vec<Secret>,
    /// Its token for the old store, when it has one.
    pub old: Option<Secret>,
    /// Its token for the new store, when it has one.
    pub new: Option<Secret>,
}

impl IdentitySecrets {
    pub fn backend(&self, name: BackendName) -> Option<&Secret> {
        match name {
            BackendName::Old => self.old.as_ref(),
            BackendName::New => self.new.as_ref(),
        }
    }
}

/// A secret value. Its `Debug` and `Display` never show it, so it cannot leak into a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
// figment's Jail closures return its large error type; boxing it in tests buys nothing.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    const TWO_TEAMS: &str = r#"
        [server]
        listen = "127.0.0.1:8000"
        admin_listen = "127.0.0.1:9100"
        [server.client_auth]
        enabled = true
        [[server.client_auth.identities]]
        name = "team-a"
        token_env = "TEAM_A"
        backend_tokens = { old = "TEAM_A_OLD", new = "TEAM_A_NEW" }
        [[server.client_auth.identities]]
        name = "team-b"
        token_env = "TEAM_B"
        backend_tokens = { new = "TEAM_B_NEW" }
        [backends.old]
        url = "http://127.0.0.1:8101"
        [backends.new]
        url = "http://127.0.0.1:8102"
        [admin]
        enabled = false
    "#;

    #[test]
    fn identity_tokens_come_from_the_environment_and_never_print() {
        figment::Jail::expect_with(|jail| {
            let config = Config::from_toml(TWO_TEAMS).unwrap();
            let err = config.secrets().unwrap_err().to_string();
            assert!(err.contains("TEAM_A"), "{err}");
            // Inventory and verify turn client auth off: they need no identity's token.
            let mut tools = config.clone();
            tools.server.client_auth.enabled = false;
            assert!(tools.secrets().unwrap().identities.is_empty());
            jail.set_env("TEAM_A", "client-a1, client-a2");
            jail.set_env("TEAM_A_OLD", "old-key-a");
            jail.set_env("TEAM_A_NEW", "new-key-a");
            jail.set_env("TEAM_B", "client-b");
            let err = config.secrets().unwrap_err().to_string();
            assert!(err.contains("TEAM_B_NEW"), "{err}");
            jail.set_env("TEAM_B_NEW", "new-key-b");
            // No tokens_env: with identities the operator's client tokens are optional.
            let secrets = config.secrets().unwrap();
            assert!(secrets.client_tokens.is_empty());
            let [a, b] = secrets.identities.as_slice() else {
                panic!("two identities")
            };
            assert_eq!((a.name.as_str(), a.client_tokens.len()), ("team-a", 2));
            assert_eq!(a.backend(BackendName::Old).unwrap().expose(), "old-key-a");
            assert_eq!(b.backend(BackendName::Old), None);
            assert_eq!(b.backend(BackendName::New).unwrap().expose(), "new-key-b");
            let printed = format!("{secrets:?}");
            for secret in ["client-a1", "old-key-a", "new-key-b", "client-b"] {
                assert!(!printed.contains(secret), "{printed}");
            }
            Ok(())
        });
    }

    #[test]
    fn one_token_for_two_identities_is_refused_without_showing_it() {
        figment::Jail::expect_with(|jail| {
            let config = Config::from_toml(TWO_TEAMS).unwrap();
            for (env, value) in [
                ("TEAM_A", "shared"),
                ("TEAM_A_OLD", "o"),
                ("TEAM_A_NEW", "n"),
                ("TEAM_B_NEW", "n"),
                ("TEAM_B", "x, shared"),
            ] {
                jail.set_env(env, value);
            }
            let err = config.secrets().unwrap_err().to_string();
            assert!(err.contains("team-b") && err.contains("team-a"), "{err}");
            assert!(!err.contains("shared"), "{err}");
            jail.set_env("TEAM_B", "client-b");
            jail.set_env("CHROMA_SHIFT_CLIENT_TOKENS", "shared");
            let err = config.secrets().unwrap_err().to_string();
            assert!(err.contains("tokens_env"), "{err}");
            Ok(())
        });
    }

    const MINIMAL: &str = "[server]\nlisten = \"127.0.0.1:8000\"\nadmin_listen = \"127.0.0.1:9100\"\n[backends.old]\nurl = \"http://127.0.0.1:8001\"\n[backends.new]\nurl = \"http://127.0.0.1:8002\"\n";

    #[test]
    fn named_admin_tokens_stand_beside_the_single_one_or_alone() {
        figment::Jail::expect_with(|jail| {
            let config = Config::from_toml(MINIMAL).unwrap();
            let err = config.secrets().unwrap_err().to_string();
            assert!(err.contains("CHROMA_SHIFT_ADMIN_TOKENS"), "{err}");
            jail.set_env("CHROMA_SHIFT_ADMIN_TOKENS", "alice=s3cret-a, ci=s3cret-c");
            let secrets = config.secrets().unwrap();
            assert!(secrets.admin_token.is_none());
            let names: Vec<&str> = secrets
                .admin_named_tokens
                .iter()
                .map(|(name, _)| name.as_str())
                .collect();
            assert_eq!(names, ["alice", "ci"]);
            assert_eq!(secrets.admin_named_tokens[1].1.expose(), "s3cret-c");
            assert!(!format!("{secrets:?}").contains("s3cret"));

            jail.set_env("CHROMA_SHIFT_ADMIN_TOKEN", "s3cret-single");
            assert!(config.secrets().unwrap().admin_token.is_some());
            for bad in ["admin=s3cret-x", "bob=s3cret-single", "bob"] {
                jail.set_env("CHROMA_SHIFT_ADMIN_TOKENS", bad);
                let err = config.secrets().unwrap_err().to_string();
                assert!(err.contains("CHROMA_SHIFT_ADMIN_TOKENS"), "{bad}: {err}");
                assert!(!err.contains("s3cret"), "{bad}: {err}");
            }
            Ok(())
        });
    }
}
