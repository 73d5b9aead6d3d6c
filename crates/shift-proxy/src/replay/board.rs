//! What a replay worker shows: each target's state, for `/admin/status` and the switch.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;
use shift_config::BackendName;

use crate::apply::HaltCause;

/// The replay's state of both targets, for `/admin/status` and any check that must know
/// whether a target's replay is stopped.
#[derive(Debug, Default)]
pub struct ReplayBoard {
    old: Mutex<ReplayState>,
    new: Mutex<ReplayState>,
}

/// One target's replay, as last reported by its worker.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayState {
    /// `running`, or `stopped: unauthorized` / `stopped: misconfigured`.
    pub state: String,
    /// Why and since when it is stopped; `None` while running.
    pub stopped: Option<ReplayStop>,
    /// Collections (journal lag keys) whose next write waits for a retry, with the last
    /// failure (the first few).
    pub waiting: BTreeMap<String, String>,
    /// Journal payload bytes held in memory.
    pub held_bytes: u64,
    /// Collections with a lane now (entries held for them); an idle collection has none.
    pub lanes: usize,
}

/// A stopped replay.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayStop {
    pub cause: HaltCause,
    /// The store's answer that stopped it, or the last probe's.
    pub reason: String,
    /// When it stopped (Unix milliseconds).
    pub since_ms: u64,
    /// Probes sent since.
    pub probes: u64,
}

impl ReplayBoard {
    fn slot(&self, target: BackendName) -> std::sync::MutexGuard<'_, ReplayState> {
        match target {
            BackendName::Old => &self.old,
            BackendName::New => &self.new,
        }
        .lock()
        .unwrap_or_else(|e| e.into_inner())
    }

    /// The state of `target`'s replay.
    pub fn get(&self, target: BackendName) -> ReplayState {
        let mut state = self.slot(target).clone();
        if state.state.is_empty() {
            state.state = "running".to_owned();
        }
        state
    }

    /// Why `target`'s replay is stopped, if it is.
    pub fn stopped(&self, target: BackendName) -> Option<ReplayStop> {
        self.slot(target).stopped.clone()
    }

    /// Both targets, as the `replay` section of `/admin/status`.
    pub fn status(&self) -> Value {
        serde_json::json!({
            "old": self.get(BackendName::Old),
            "new": self.get(BackendName::New),
        })
    }

    pub(super) fn update(&self, target: BackendName, change: impl FnOnce(&mut ReplayState)) {
        change(&mut self.slot(target));
    }
}
