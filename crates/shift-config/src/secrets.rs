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
            client_tokens: if self.server.client_auth.enabled {
                let raw = read_env(
                    "server.client_auth.tokens_env",
                    &self.server.client_auth.tokens_env,
                )?;
                let tokens: Vec<Secret> = raw
                    .expose()
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| Secret::new(t.to_owned()))
                    .collect();
                if tokens.is_empty() {
                    return Err(ConfigError::MissingSecret {
                        key: "server.client_auth.tokens_env",
                        env: self.server.client_auth.tokens_env.clone(),
                    });
                }
                tokens
            } else {
                Vec::new()
            },
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
    /// Tokens accepted from clients; empty when client auth is off.
    pub client_tokens: Vec<Secret>,
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
    use crate::Config;

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
