//! Write intents outside their settlement task: which intents a task owns now
//! ([`LiveIntents`]), and the ones none owns, turned into reconciliations: those a crash left
//! ([`recover_intents`], at start) and those a state store that could not write left
//! ([`settle_orphaned_intents`], while running). So a write in flight at a crash ends up on
//! both stores or on neither.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use shift_config::BackendName;
use shift_state::{IntentId, NewEntry, StoreError};
use tokio::sync::watch;

use crate::coord::WriteJournal;
use crate::mirror::MirrorOp;
use crate::plane::DataPlaneState;

/// The intents whose settlement task is running.
#[derive(Debug, Default)]
pub struct LiveIntents(Mutex<HashSet<IntentId>>);

/// Marks an intent live while it exists.
pub(crate) struct LiveIntent<'a> {
    set: &'a LiveIntents,
    id: IntentId,
}

impl Drop for LiveIntent<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
    }
}

impl LiveIntents {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<IntentId>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn hold(&self, id: IntentId) -> LiveIntent<'_> {
        self.lock().insert(id);
        LiveIntent { set: self, id }
    }

    /// Whether a task owns `id`.
    pub fn contains(&self, id: IntentId) -> bool {
        self.lock().contains(&id)
    }

    /// Writes being settled now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Turns the intents a crash left behind into journal entries that bring the secondary in line
/// with the primary, before any traffic is served.
pub async fn recover_intents(
    journal: &dyn WriteJournal,
    secondary: BackendName,
) -> Result<usize, StoreError> {
    let pending = journal.pending_intents()?;
    let count = pending.len();
    for (id, payload) in pending {
        settle_as_reconciliation(journal, id, &payload, secondary).await?;
    }
    if count > 0 {
        tracing::warn!(count, %secondary, "recovered writes in flight at the last stop; queued reconciliations");
    }
    Ok(count)
}

/// An intent whose write may or may not have reached the primary becomes a reconciliation.
async fn settle_as_reconciliation(
    journal: &dyn WriteJournal,
    id: IntentId,
    payload: &[u8],
    secondary: BackendName,
) -> Result<(), StoreError> {
    match reconciliation_of(payload, secondary) {
        Ok(entry) => journal.commit_intent(id, vec![entry]).await,
        Err(error) => {
            tracing::error!(intent = %id, %error, "unreadable intent dropped");
            journal.discard_intent(id).await
        }
    }
}

/// The journal entry that settles an intent whose outcome is unknown: a reconciliation of its
/// records (or of its collection or namespace), which copies whatever the primary holds when
/// it is applied, run as the identity that wrote.
pub fn reconciliation_of(
    payload: &[u8],
    secondary: BackendName,
) -> Result<NewEntry, serde_json::Error> {
    let op = MirrorOp::from_bytes(payload)?.recovery();
    Ok(NewEntry {
        target: secondary,
        collection: op.lag_key(),
        payload: op.to_bytes_as(crate::mirror::identity_of(payload)),
    })
}

/// How often [`settle_orphaned_intents`] looks.
const ORPHAN_SWEEP: Duration = Duration::from_secs(1);

/// Settles, without a restart, the intents no task owns: those whose journal commit failed
/// (the state store could not write) or whose task died. An intent must be seen orphaned in
/// two sweeps in a row, so one recorded a moment before its task marked it live is left alone.
/// Runs until `stop` turns true.
pub async fn settle_orphaned_intents(plane: Arc<DataPlaneState>, mut stop: watch::Receiver<bool>) {
    let mut suspects: HashSet<IntentId> = HashSet::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(ORPHAN_SWEEP) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        if plane.journal.pending_intent_count() <= plane.live_intents.len() as u64
            && suspects.is_empty()
        {
            continue;
        }
        let pending = match plane.journal.pending_intents() {
            Ok(pending) => pending,
            Err(error) => {
                tracing::warn!(%error, "cannot read pending intents");
                continue;
            }
        };
        let mut seen = HashSet::new();
        for (id, payload) in pending {
            if plane.live_intents.contains(id) {
                continue;
            }
            if !suspects.contains(&id) {
                seen.insert(id);
                continue;
            }
            let secondary = plane.topology.current().secondary();
            match settle_as_reconciliation(&*plane.journal, id, &payload, secondary).await {
                Ok(()) => {
                    plane.metrics.orphaned_intents.inc();
                    tracing::warn!(intent = %id, %secondary, "settled an orphaned write intent as a reconciliation");
                }
                Err(error) => {
                    tracing::warn!(intent = %id, %error, "cannot settle an orphaned intent yet");
                    seen.insert(id);
                }
            }
        }
        suspects = seen;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use shift_state::StateStore;

    use super::*;
    use crate::auth::Caller;
    use crate::mirror::{identity_of, RecordKind};

    /// A write an identity left in flight at a crash is reconciled as that identity; an
    /// intent the previous version wrote (the op's JSON alone) as the operator.
    #[tokio::test]
    async fn a_recovered_intent_keeps_the_identity_that_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).await.unwrap();
        let op = MirrorOp::Records {
            kind: RecordKind::Upsert,
            collection: "c1".into(),
            body: json!({"ids": ["a"], "embeddings": [[1.0]]}),
        };
        let team_a = Caller::Identity("team-a".into());
        store
            .record_intent(op.encode_as(&team_a).bytes)
            .await
            .unwrap();
        store.record_intent(op.to_bytes()).await.unwrap();
        let secondary = BackendName::New;
        assert_eq!(recover_intents(&store, secondary).await.unwrap(), 2);
        let entries = store.read(secondary, None, 10).unwrap();
        let recovered: Vec<(Option<&str>, MirrorOp)> = entries
            .iter()
            .map(|e| {
                let op = MirrorOp::from_bytes(&e.payload).unwrap();
                (identity_of(&e.payload), op)
            })
            .collect();
        let reconcile = MirrorOp::Reconcile {
            collection: "c1".into(),
            ids: vec!["a".into()],
        };
        assert_eq!(
            recovered,
            vec![(Some("team-a"), reconcile.clone()), (None, reconcile)]
        );
    }

    /// The write path records a record write's intent as its reconciliation; an earlier build
    /// recorded the op in full. Both recover to the same entry, for every kind of record
    /// write, so a state dir left by either build settles its writes alike.
    #[tokio::test]
    async fn an_intent_recorded_as_its_reconciliation_recovers_as_the_op_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).await.unwrap();
        let team_a = Caller::Identity("team-a".into());
        let embedding: Vec<f32> = (0..384).map(|i| i as f32 / 7.0).collect();
        let body = json!({
            "ids": ["a", "b"],
            "embeddings": [embedding, embedding],
            "documents": ["one", "two"],
        });
        let mut sizes = Vec::new();
        for kind in [
            RecordKind::Add,
            RecordKind::Upsert,
            RecordKind::Update,
            RecordKind::Delete,
        ] {
            let in_full = MirrorOp::Records {
                kind,
                collection: "c1".into(),
                body: body.clone(),
            }
            .encode_as(&team_a)
            .bytes;
            let compact = MirrorOp::Reconcile {
                collection: "c1".into(),
                ids: vec!["a".into(), "b".into()],
            }
            .encode_as(&team_a)
            .bytes;
            sizes.push((in_full.len(), compact.len()));
            store.record_intent(in_full).await.unwrap();
            store.record_intent(compact).await.unwrap();
        }
        let secondary = BackendName::New;
        assert_eq!(recover_intents(&store, secondary).await.unwrap(), 8);
        let entries = store.read(secondary, None, 10).unwrap();
        assert_eq!(entries.len(), 8);
        for pair in entries.chunks(2) {
            assert_eq!(pair[0].collection, pair[1].collection);
            assert_eq!(pair[0].payload, pair[1].payload);
        }
        for (in_full, compact) in sizes {
            assert!(compact * 20 < in_full, "{compact} bytes against {in_full}");
        }
    }
}
