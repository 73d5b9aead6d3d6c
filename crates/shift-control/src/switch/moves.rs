//! A forced switch away from a store that is down: the reconciliations waiting for the target
//! that read that store move to its own journal (see [`super::reads_the_source`]), and back
//! when the switch does not happen.

use shift_config::BackendName;
use shift_proxy::mirror::MirrorOp;
use shift_state::{Seq, StoreError};

use super::{reads_the_source, SwitchCore};

/// Journal entries read at a time when looking for what to move.
const SCAN_PAGE: usize = 1024;

/// Entries moved out of one journal into another, remembered so they can be moved back.
#[derive(Debug, Default)]
pub(super) struct Moved {
    /// Their seqs in the journal they went to, with their payloads.
    pub(super) entries: Vec<(Seq, Vec<u8>)>,
    /// How many are reconciliations of records, and of collections.
    pub(super) records: u64,
    pub(super) collections: u64,
}

impl SwitchCore {
    /// Moves every entry of `target`'s journal that reads `dead` into `dead`'s journal, in
    /// one transaction. `target`'s replay worker may be retrying the first of them; it skips
    /// entries removed under it.
    pub(super) async fn move_source_readers(
        &self,
        target: BackendName,
        dead: BackendName,
    ) -> Result<Moved, StoreError> {
        let mut moves = Vec::new();
        let mut moved = Moved::default();
        let mut after = None;
        loop {
            let page = self.state.read(target, after, SCAN_PAGE)?;
            let Some(last) = page.last() else { break };
            after = Some(last.seq);
            let full = page.len() == SCAN_PAGE;
            for entry in page {
                // An unreadable entry is the replay's to park; it reads nothing.
                let Ok(op) = MirrorOp::from_bytes(&entry.payload) else {
                    continue;
                };
                if reads_the_source(&op) {
                    match op {
                        MirrorOp::ReconcileCollection { .. } => moved.collections += 1,
                        _ => moved.records += 1,
                    }
                    moves.push((entry.seq, entry.payload));
                }
            }
            if !full {
                break;
            }
        }
        if moves.is_empty() {
            return Ok(moved);
        }
        let payloads: Vec<Vec<u8>> = moves.iter().map(|(_, p)| p.clone()).collect();
        let seqs = self.state.retarget(target, moves, dead).await?;
        tracing::warn!(
            from = %target,
            to = %dead,
            count = seqs.len(),
            "reconciliations that read a store that is down moved to its own journal"
        );
        moved.entries = seqs.into_iter().zip(payloads).collect();
        Ok(moved)
    }

    /// Undoes [`SwitchCore::move_source_readers`] when the switch does not happen.
    pub(super) async fn move_back(
        &self,
        dead: BackendName,
        entries: Vec<(Seq, Vec<u8>)>,
        target: BackendName,
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.state.retarget(dead, entries, target).await.map(|_| ())
    }
}
