//! `[finalize]`: how a migration ends after a cutover (`chroma-shift ctl finalize`): the checks
//! it needs and how long the old store keeps getting every write before mirroring to it stops.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinalizeConfig {
    /// How long after a finalize is accepted the old store still gets every write: within this
    /// window the finalize can be undone with nothing lost; at its end mirroring to the old
    /// store stops for good. The seed's practice is to keep the source 48 hours.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// A finalize needs a passing `chroma-shift verify` recorded no longer ago than this.
    #[serde(with = "humantime_serde")]
    pub verify_max_age: Duration,
    /// "No lag": the oldest journal entry waiting for the old store is at most this old (the
    /// replay keeps up with live writes; a journal that is never empty under load still
    /// passes, a stalled one does not).
    #[serde(with = "humantime_serde")]
    pub max_lag_age: Duration,
}

impl Default for FinalizeConfig {
    fn default() -> Self {
        FinalizeConfig {
            retention: Duration::from_secs(48 * 3600),
            verify_max_age: Duration::from_secs(24 * 3600),
            max_lag_age: Duration::from_secs(10),
        }
    }
}
