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
    /// Before closing the write gate, a switch lets writes flow until at most this many
    /// journal entries wait for the target (the replay catches up), so few are left to drain
    /// while writes are held.
    pub catch_up_lag: u64,
    /// How long that catch-up may take; when the lag is still above `catch_up_lag` by then
    /// (writes arrive faster than the replay applies them), the switch closes the gate anyway
    /// and drains the rest within `timeout`, as it would without a catch-up (its report says
    /// so). `0s` turns the catch-up off.
    #[serde(with = "humantime_serde")]
    pub catch_up_timeout: Duration,
    /// After the catch-up, a switch mirrors record writes synchronously (the live mode turns
    /// to `sync`, not persisted) until nothing waits for the target, within
    /// `catch_up_timeout`; then the writes in flight when the gate closes are on both stores
    /// already and the primary flips without waiting for them (they keep their records'
    /// order), so writes are held for about the flip alone. A target that refuses or fails a
    /// write meanwhile abandons the switch (the write is queued for it, nothing is lost).
    /// Only used without `[cluster]`, with `[mirror] on_secondary_failure = "journal"` and
    /// with the catch-up on; `false` turns it off.
    pub sync_window: bool,
}

impl Default for CutoverConfig {
    fn default() -> Self {
        CutoverConfig {
            max_lag: 10_000,
            timeout: Duration::from_secs(30),
            catch_up_lag: 2,
            catch_up_timeout: Duration::from_secs(10),
            sync_window: true,
        }
    }
}
