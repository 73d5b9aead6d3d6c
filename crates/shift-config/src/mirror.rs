//! `[mirror]`: how writes reach the secondary, and the replay's limits.

use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::{invalid, ConfigError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// How writes reach the secondary.
    pub mode: MirrorMode,
    /// In sync mode, what a write does when the primary applied it and the secondary failed.
    pub on_secondary_failure: SecondaryFailure,
    /// Allow `POST /api/v2/reset`, applied to both stores. Off: the proxy refuses it.
    pub allow_reset: bool,
    /// Most requests per second the replay sends to the secondary; 0 is unlimited.
    pub replay_rate_limit: u32,
    /// Most records in one replayed request; 0 uses the secondary's `max_batch_size`.
    pub replay_batch_records: usize,
    /// First wait before retrying a failed replay; doubles up to `retry_max`, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest wait between replay retries.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Journal payload bytes the replay of one target holds in memory at once (one entry may
    /// pass it); bounds the process's memory whatever the backlog.
    pub replay_memory: ByteSize,
    /// After a primary write with an unknown outcome (a timeout, a 5xx, a lost connection),
    /// how long its records stay locked before the secondary is reconciled from the primary:
    /// a primary may still apply the write late, and a later write of the same records must
    /// not overtake it. Set it above the time the primary may take to finish a write.
    #[serde(with = "humantime_serde")]
    pub unknown_outcome_grace: Duration,
}

/// The highest `replay_rate_limit`: one request per microsecond. Above about 1e9 the pacing
/// interval would round to zero.
pub const MAX_REPLAY_RATE: u32 = 1_000_000;

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            mode: MirrorMode::default(),
            on_secondary_failure: SecondaryFailure::default(),
            allow_reset: false,
            replay_rate_limit: 0,
            replay_batch_records: 0,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            replay_memory: ByteSize::mib(64),
            unknown_outcome_grace: Duration::from_secs(2),
        }
    }
}

impl MirrorConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return Err(invalid(
                "mirror.retry_initial",
                "must be above zero and at most mirror.retry_max",
            ));
        }
        if self.replay_rate_limit > MAX_REPLAY_RATE {
            return Err(invalid(
                "mirror.replay_rate_limit",
                format!("must be at most {MAX_REPLAY_RATE} requests per second (0 is unlimited)"),
            ));
        }
        if self.replay_memory.as_u64() < 1024 * 1024 {
            return Err(invalid("mirror.replay_memory", "must be at least 1MiB"));
        }
        Ok(())
    }
}

/// What a sync-mode write does when only the secondary failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecondaryFailure {
    /// Answer the primary's success and queue the write for the secondary in the journal.
    #[default]
    Journal,
    /// Answer an error (the client retries); the journal still brings the secondary in line.
    Fail,
}

/// How writes reach the secondary store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MirrorMode {
    /// Primary first, then a durable journal replayed to the secondary.
    #[default]
    Journaled,
    /// Both at once; the client is answered when both answered.
    Sync,
}
