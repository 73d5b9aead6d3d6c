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
                Some(read_env("admin.token_env", &self.admin.token_env)?)
            } else {
                None
            },
        })
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
    /// The admin API's token; `None` when the admin API is off.
    pub admin_token: Option<Secret>,
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
