//! Intents whose process is gone (a replica killed, restarted, or fenced from the collection
//! mid-write) settled by the collection's owner: an intent of another process older than
//! `takeover_grace` becomes a reconciliation of its records in the owner's journal
//! ([`shift_proxy::intents::reconciliation_of`]), then is deleted. The grace is at least the
//! longest a write may take at the primary plus its unknown-outcome grace, so the write the
//! intent announced has landed on the primary or never will, and the reconciliation, read from
//! the primary when the replay applies it, copies its outcome. Its message id is the one the
//! settlement would have had (`i<intent>-0`): a settlement that landed before the crash stores
//! it once. A crash between the append and the delete leaves the intent to adopt again; the
//! second reconciliation repeats the first harmlessly.

use std::sync::Arc;
use std::time::Duration;

use shift_proxy::intents::reconciliation_of;
use shift_state::StoreError;

use crate::journal::{header, lag_key_of, now_ms, Shared, CREATED};

/// How often the intents are looked at.
const ADOPT_EVERY: Duration = Duration::from_secs(1);

/// Adopts other processes' stale intents of the collections this replica owns, until aborted.
pub(crate) async fn adopt(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(ADOPT_EVERY).await;
        if let Err(error) = adopt_once(&shared).await {
            tracing::warn!(%error, "cannot settle the intents other replicas left; retrying");
        }
        if let Err(error) = shared.forget_adopted(shared.takeover_grace * 2).await {
            tracing::warn!(%error, "cannot check this replica's old intents");
        }
    }
}

/// One pass over the intent subjects of other processes; the number of intents settled.
pub(crate) async fn adopt_once(shared: &Shared) -> Result<usize, StoreError> {
    let nats = |error: crate::stream::StreamError| StoreError::Coordination {
        reason: error.to_string(),
    };
    let subjects = shared
        .stream
        .subject_counts(&shared.stream.under("intent.>"))
        .await
        .map_err(nats)?;
    let grace = u64::try_from(shared.takeover_grace.as_millis()).unwrap_or(u64::MAX);
    let mut settled = 0;
    for subject in subjects.keys() {
        if *subject == shared.intent_subject {
            continue;
        }
        let mut position = 0;
        while let Some(message) = shared
            .stream
            .next_after(subject, position)
            .await
            .map_err(nats)?
        {
            position = message.sequence;
            let created = header(&message.headers, CREATED)
                .and_then(|c| c.parse::<u64>().ok())
                .unwrap_or(0);
            if now_ms().saturating_sub(created) < grace {
                // Intents are in recording order: the rest are younger.
                break;
            }
            let collection = lag_key_of(&message.payload).unwrap_or_default();
            if !shared.owns(&collection) {
                continue;
            }
            let secondary = shared.topology.current().secondary();
            match reconciliation_of(&message.payload, secondary) {
                Ok(entry) => {
                    let id = format!("i{}-0", message.sequence);
                    shared.append(entry, &id).await?;
                }
                Err(error) => {
                    tracing::error!(intent = message.sequence, %error, "unreadable intent of another replica dropped");
                }
            }
            shared.stream.delete(message.sequence).await.map_err(nats)?;
            tracing::warn!(
                intent = message.sequence,
                collection,
                "settled an intent another replica left (a reconciliation from the primary)"
            );
            settled += 1;
        }
    }
    Ok(settled)
}
