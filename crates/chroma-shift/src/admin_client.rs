//! Calls to a running proxy's admin API, for the commands that drive it (`ctl`, `backfill`,
//! `verify --repair`). Uses the proxy's one HTTP client.

use std::time::Duration;

use anyhow::Context;
use http::{Method, StatusCode};
use serde_json::Value;
use shift_config::Config;
use shift_proxy::Backend;

/// A client of one proxy's admin API.
pub struct AdminClient {
    client: Backend,
    token: String,
    /// Where it points, for messages.
    pub url: url::Url,
}

impl AdminClient {
    pub fn new(url: url::Url, token: String) -> anyhow::Result<AdminClient> {
        // A switch may hold writes for its whole timeout; wait longer than that.
        let client = Backend::for_service(&url, Duration::from_secs(300))
            .with_context(|| format!("cannot use the admin URL {url}"))?;
        Ok(AdminClient { client, token, url })
    }

    /// The admin API of the proxy a config describes, with the token from the environment
    /// variable the config names.
    pub fn from_config(config: &Config) -> anyhow::Result<AdminClient> {
        let mut addr = config.server.admin_listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let url: url::Url = format!("http://{addr}").parse()?;
        let token = std::env::var(&config.admin.token_env)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .with_context(|| format!("no admin token: set {}", config.admin.token_env))?;
        AdminClient::new(url, token)
    }

    /// One call; the status and the JSON answer (`Null` when not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {}", self.token).parse()?,
        );
        headers.insert(http::header::CONTENT_TYPE, "application/json".parse()?);
        let bytes = body
            .map(serde_json::to_vec)
            .transpose()?
            .unwrap_or_default();
        let response = self
            .client
            .send(method, path, headers, bytes.into())
            .await
            .map_err(|e| anyhow::anyhow!("the admin API at {} {}", self.url, e.kind))?;
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await?
            .to_bytes();
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }
}
