//! `[metrics]`: bounds on what the proxy keeps per collection for its metrics.

use std::time::Duration;

use serde::Deserialize;

use crate::{invalid, ConfigError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Collections that get series of their own in the per-collection metrics (shadow reads,
    /// recall, drift, canary reads, dimension mismatches, journal depth and age) and a row of
    /// their own in the shadow score; the others are counted under `collection="_other"`.
    /// Each collection costs a few KiB in the proxy and a few series in Prometheus; without a
    /// cap, every collection ever seen kept them forever.
    pub max_collection_series: usize,
    /// A collection's series are removed after this long without activity, freeing its place
    /// for another collection.
    #[serde(with = "humantime_serde")]
    pub collection_series_idle: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_collection_series: 200,
            collection_series_idle: Duration::from_secs(600),
        }
    }
}

impl MetricsConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.collection_series_idle.is_zero() {
            return Err(invalid(
                "metrics.collection_series_idle",
                "must be above zero",
            ));
        }
        Ok(())
    }
}
