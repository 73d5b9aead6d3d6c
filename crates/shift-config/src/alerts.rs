//! `[alerts]`: where alerts go.

use serde::Deserialize;
use url::Url;

use crate::{invalid, ConfigError};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// A webhook that takes a JSON body with a `text` field (Slack's incoming webhooks do).
    pub webhook_url: Option<Url>,
}

impl AlertsConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.webhook_url {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(invalid("alerts.webhook_url", "must be http or https"));
            }
        }
        Ok(())
    }
}
