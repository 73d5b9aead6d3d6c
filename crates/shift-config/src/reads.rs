//! `[reads]`: canary and shadow reads.

use std::time::Duration;

use serde::Deserialize;

use crate::{invalid, ConfigError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadsConfig {
    /// Percent of reads served by the secondary (only for collections with nothing queued).
    pub canary_percent: f64,
    /// Percent of reads also sent to the secondary in the background and compared.
    pub shadow_percent: f64,
    /// A shadow read slower than this is dropped (and counted).
    #[serde(with = "humantime_serde")]
    pub shadow_timeout: Duration,
    /// Shadow reads waiting or running at most; more are dropped (and counted).
    pub shadow_queue: usize,
    /// Recent mismatches kept for the admin API.
    pub mismatch_samples: usize,
}

impl Default for ReadsConfig {
    fn default() -> Self {
        ReadsConfig {
            canary_percent: 0.0,
            shadow_percent: 0.0,
            shadow_timeout: Duration::from_secs(5),
            shadow_queue: 256,
            mismatch_samples: 50,
        }
    }
}

impl ReadsConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (key, percent) in [
            ("reads.canary_percent", self.canary_percent),
            ("reads.shadow_percent", self.shadow_percent),
        ] {
            if !(0.0..=100.0).contains(&percent) {
                return Err(invalid(key, "must be between 0 and 100"));
            }
        }
        Ok(())
    }
}
