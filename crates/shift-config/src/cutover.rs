//! `[cutover]`: limits of a cutover or rollback.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CutoverConfig {
    /// A cutover or rollback is refused while more journal entries than this wait for the
    /// target; draining more would hold writes too long.
    pub max_lag: u64,
    /// How long a cutover may hold writes while the journal drains; past it, the cutover is
    /// abandoned and nothing changes.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for CutoverConfig {
    fn default() -> Self {
        CutoverConfig {
            max_lag: 10_000,
            timeout: Duration::from_secs(30),
        }
    }
}
