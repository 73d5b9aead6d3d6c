//! `[state]`: where the durable state lives and how large its journal may grow.

use std::path::PathBuf;

use bytesize::ByteSize;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// Directory of the durable state (journal, id map, dead letters).
    pub dir: PathBuf,
    /// Cap on the mirror journal, in payload bytes waiting for the secondary; at or over it
    /// new writes are refused (503 with Retry-After) until the replay drains it. 0 is no cap.
    pub max_journal_bytes: ByteSize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("./state"),
            max_journal_bytes: ByteSize::gib(1),
        }
    }
}
