//! Alerts on the state store's ability to take writes: the state disk cannot be written (and
//! is writable again), the journal reached its byte cap (and drained below it). Both refuse
//! every new write with 503 while they last, so an operator must hear of them at once.

use std::time::Duration;

use shift_state::{StateStore, StoreHealth};
use tokio::task::JoinHandle;

use crate::alerts::Alerter;

/// How often the journal's size is looked at; the disk's state is watched, not polled.
const POLL: Duration = Duration::from_secs(1);

/// The two conditions alerted on, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Seen {
    unwritable: bool,
    journal_full: bool,
}

/// Watches `store` until the task is aborted, alerting on each change of either condition.
pub fn spawn(store: StateStore, alerts: Alerter) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut unwritable = store.watch_unwritable();
        let mut seen = Seen::default();
        loop {
            let health = store.health();
            seen = alert_changes(seen, &health, &alerts);
            tokio::select! {
                changed = unwritable.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(POLL) => {}
            }
        }
    })
}

/// Sends an alert for each condition that changed since `seen`; returns the new state.
fn alert_changes(seen: Seen, health: &StoreHealth, alerts: &Alerter) -> Seen {
    let now = Seen {
        unwritable: health.unwritable.is_some(),
        journal_full: health.journal_full(),
    };
    if now.unwritable != seen.unwritable {
        match &health.unwritable {
            Some(reason) => alerts.send(&format!(
                "chroma-shift: the state disk cannot be written ({reason}); every write is refused with 503 until it can. Free space on the state directory's filesystem; the proxy recovers by itself."
            )),
            None => alerts.send(
                "chroma-shift: the state disk can be written again; writes are accepted.",
            ),
        }
    }
    if now.journal_full != seen.journal_full {
        if now.journal_full {
            alerts.send(&format!(
                "chroma-shift: the mirror journal holds {} bytes, at its cap of {} bytes ([state] max_journal_bytes); every new write is refused with 503 until the replay to the secondary drains it. Check the secondary.",
                health.journal_bytes, health.max_journal_bytes
            ));
        } else {
            alerts.send(&format!(
                "chroma-shift: the mirror journal drained below its cap ({} of {} bytes); writes are accepted.",
                health.journal_bytes, health.max_journal_bytes
            ));
        }
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(unwritable: Option<&str>, journal_bytes: u64) -> StoreHealth {
        StoreHealth {
            unwritable: unwritable.map(str::to_owned),
            journal_bytes,
            max_journal_bytes: 100,
            pending_intents: 0,
        }
    }

    #[tokio::test]
    async fn one_alert_per_change_of_either_condition() {
        let counter = prometheus::IntCounterVec::new(
            prometheus::Opts::new("alerts_total", "test"),
            &["outcome"],
        )
        .unwrap();
        let alerts = Alerter::new(None, Some(counter.clone()));
        let sent = || counter.with_label_values(&["logged"]).get();

        let mut seen = alert_changes(Seen::default(), &health(None, 10), &alerts);
        assert_eq!(sent(), 0, "nothing to say while all is well");
        seen = alert_changes(seen, &health(Some("No space left on device"), 10), &alerts);
        assert_eq!(sent(), 1);
        seen = alert_changes(seen, &health(Some("still full"), 10), &alerts);
        assert_eq!(sent(), 1, "no repeat while it lasts");
        seen = alert_changes(seen, &health(None, 120), &alerts);
        assert_eq!(sent(), 3, "recovered, and the journal reached its cap");
        seen = alert_changes(seen, &health(None, 130), &alerts);
        assert_eq!(sent(), 3);
        seen = alert_changes(seen, &health(None, 20), &alerts);
        assert_eq!(sent(), 4, "drained below the cap");
        assert_eq!(seen, Seen::default());
    }
}
