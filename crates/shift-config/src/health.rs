//! `[health]`: backend heartbeats, outage alerts and the automatic rollback.

use std::time::Duration;

use serde::Deserialize;

use crate::{invalid, ConfigError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// How often each backend's heartbeat is probed.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A heartbeat slower than this counts as a failure.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Roll back by itself when the primary stays unhealthy for `auto_rollback_after` while
    /// the secondary is healthy (only after a cutover: the old store is the one to go back to).
    pub auto_rollback: bool,
    #[serde(with = "humantime_serde")]
    pub auto_rollback_after: Duration,
    /// Alert when a backend stays unhealthy this long.
    #[serde(with = "humantime_serde")]
    pub outage_alert_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            auto_rollback: false,
            auto_rollback_after: Duration::from_secs(300),
            outage_alert_after: Duration::from_secs(60),
        }
    }
}

impl HealthConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err(invalid("health", "interval and timeout must be above zero"));
        }
        Ok(())
    }
}
