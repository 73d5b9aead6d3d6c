//! The sync window before the gate closes, against the in-memory state with paused time; the
//! window writes are the data plane's own ([`SyncWindow::admit`]), driven by hand.

use std::sync::Arc;
use std::time::Duration;

use shift_config::{BackendName, MirrorMode};
use shift_proxy::settle::{ClientAnswer, Decision, JournalAction, SecondaryOutcome};
use shift_proxy::window::SyncWindow;

use super::tests::{fixture_with, forced, gate_is_open, records, spawn_switch, Fixture};
use super::{Direction, SwitchDefaults, SwitchRequest, SwitchState, TopologySwitch};

const LIMIT: Duration = Duration::from_secs(10);

/// A fixture whose switch catches up and opens a sync window, with `waiting` entries queued
/// for the new store.
fn windowed(waiting: usize) -> (Fixture, Arc<SyncWindow>) {
    let mut f = fixture_with(
        BackendName::Old,
        SwitchDefaults {
            max_lag: 100,
            timeout: Duration::from_secs(30),
            catch_up_lag: 2,
            catch_up_timeout: LIMIT,
        },
    );
    let window = Arc::new(SyncWindow::default());
    f.switch = TopologySwitch::with_sync_window(f.switch.clone(), window.clone());
    for i in 0..waiting {
        f.state
            .push(BackendName::New, &records("c", &i.to_string()));
    }
    (f, window)
}

fn set_intents(f: &Fixture, pending: u64) {
    f.state.lock().pending_intents = pending;
}

#[tokio::test(start_paused = true)]
async fn writes_go_sync_until_nothing_waits_then_the_primary_flips_past_the_window_writes() {
    let (f, window) = windowed(2);
    // A journaled write in flight when the switch starts: it holds its pass and its intent.
    let journaled = f.gate.enter().await;
    set_intents(&f, 1);
    let running = spawn_switch(&f, Direction::Cutover, SwitchRequest::default());
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The window is open: writes flow, in sync mode (not persisted), counted as window writes.
    assert!(window.is_open());
    assert_eq!(f.topology.current().mode, MirrorMode::Sync);
    assert_eq!(f.topology.current().primary, BackendName::Old);
    let (pass, write) = window.admit(f.gate.enter().await, BackendName::Old);
    let write = write.expect("a window write");
    // And a window write journaled behind its collection's queue.
    let (behind_pass, behind) = window.admit(f.gate.enter().await, BackendName::Old);
    let mut behind = behind.expect("a window write");
    behind.journaled();
    set_intents(&f, 3);

    // The journal drains, but a journaled write is still in flight: not ready, writes flow.
    f.state.keep_last(BackendName::New, 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!running.is_finished());
    assert_eq!(f.topology.current().primary, BackendName::Old);
    assert!(window.is_open());

    // It settles; the journaled window write still keeps the window from getting ready.
    drop(journaled);
    set_intents(&f, 2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.topology.current().primary, BackendName::Old);
    assert!(window.is_open());

    // It settles too: only the window write sent to both stores is left, and the primary
    // flips without waiting for it. Writes pass the gate again at once, to the new primary,
    // journaled as persisted.
    drop((behind_pass, behind));
    set_intents(&f, 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let live = f.topology.current();
    assert_eq!((live.primary, live.epoch), (BackendName::New, 2));
    assert_eq!(live.mode, MirrorMode::Journaled);
    let persisted = f.state.lock().persisted.clone().expect("persisted");
    assert_eq!(
        (persisted.primary, persisted.mode),
        (BackendName::New, MirrorMode::Journaled)
    );
    assert!(!window.is_open());
    assert!(gate_is_open(&f.gate).await, "writes held after the flip");
    // The switch answers once the write sent to the old primary has settled.
    assert!(!running.is_finished());
    tokio::time::sleep(Duration::from_millis(30)).await;
    drop((pass, write));
    set_intents(&f, 0);
    let report = running.await.unwrap().unwrap();
    assert!(report.switched, "{report:?}");
    let done = report.window.expect("a window");
    assert!(done.ready, "{done:?}");
    assert_eq!((done.lag_before, done.lag_after), (2, 0));
    assert_eq!(done.in_flight_at_flip, 1);
    assert_eq!(done.reconciled_after_flip, 0);
    let settled = done
        .old_primary_settled_ms
        .expect("waited for the old primary");
    assert!(settled >= 30.0, "{done:?}");
    let hold = report.hold;
    assert!(hold.old_primary_settled_ms.unwrap() >= hold.reopened_ms.unwrap());
    assert_eq!(report.drained_entries, 0);
}

#[tokio::test(start_paused = true)]
async fn a_target_that_fails_a_window_write_abandons_the_switch_and_ends_the_window() {
    let (f, window) = windowed(0);
    // A write holding its pass keeps the window open.
    let journaled_write = f.gate.enter().await;
    set_intents(&f, 1);
    let running = spawn_switch(&f, Direction::Cutover, SwitchRequest::default());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (pass, write) = window.admit(f.gate.enter().await, BackendName::Old);
    let write = write.expect("a window write");
    // The target failed it: it is journaled for the target, as in sync mode.
    let journaled = Decision {
        journal: JournalAction::Write,
        client: ClientAnswer::Primary,
        label: "fallback_journaled",
        after_grace: false,
    };
    write.settled_as(&journaled, SecondaryOutcome::Failed, false);
    f.state.push(BackendName::New, &records("c", "x"));
    drop((pass, write));
    let report = running.await.unwrap().unwrap();
    drop(journaled_write);
    assert!(!report.switched);
    let refused = report.refused.expect("refused");
    assert!(refused.contains("sync window"), "{refused}");
    assert_eq!(report.window.expect("a window").journaled, 1);
    // Nothing changed, the window is over and the mode is the persisted one again.
    let live = f.topology.current();
    assert_eq!((live.primary, live.epoch), (BackendName::Old, 1));
    assert_eq!(live.mode, MirrorMode::Journaled);
    assert!(!window.is_open());
    assert!(f.state.lock().persisted.is_none());
    assert_eq!(
        f.state.waiting(BackendName::New),
        1,
        "the failed write is kept"
    );
    assert!(gate_is_open(&f.gate).await);
}

#[tokio::test(start_paused = true)]
async fn a_window_that_does_not_get_ready_in_time_goes_on_as_without_one() {
    let (f, window) = windowed(1);
    let running = spawn_switch(&f, Direction::Cutover, SwitchRequest::default());
    // The entry never drains within the limit: the gate closes after it, as without a window.
    tokio::time::sleep(LIMIT + Duration::from_millis(50)).await;
    assert!(!gate_is_open(&f.gate).await, "the gate did not close");
    assert!(!window.is_open(), "the window did not end");
    assert_eq!(f.topology.current().mode, MirrorMode::Journaled);
    f.state.keep_last(BackendName::New, 0);
    let report = running.await.unwrap().unwrap();
    assert!(report.switched, "{report:?}");
    let done = report.window.expect("a window");
    assert!(!done.ready);
    assert_eq!(report.drained_entries, 1);
    assert_eq!(f.topology.current().mode, MirrorMode::Journaled);
    assert!(!window.is_open());
}

#[tokio::test(start_paused = true)]
async fn the_window_waits_no_longer_than_the_switch_timeout() {
    let (f, window) = windowed(1);
    let request = SwitchRequest {
        timeout: Some(Duration::from_secs(2)),
        ..SwitchRequest::default()
    };
    let running = spawn_switch(&f, Direction::Cutover, request);
    tokio::time::sleep(Duration::from_millis(2050)).await;
    assert!(
        !window.is_open(),
        "the window outlived the switch's timeout"
    );
    // The entry never drains: the drain runs out of the same timeout, nothing changes.
    let report = running.await.unwrap().unwrap();
    assert!(!report.switched, "{report:?}");
    assert!(!report.window.expect("a window").ready);
    assert_eq!(f.topology.current().primary, BackendName::Old);
    assert!(gate_is_open(&f.gate).await, "the gate stayed closed");
}

#[tokio::test(start_paused = true)]
async fn a_forced_switch_away_from_a_down_primary_opens_no_window() {
    let (f, window) = windowed(0);
    f.down(BackendName::Old);
    let report = f.switch.switch(Direction::Cutover, forced()).await.unwrap();
    assert!(report.switched, "{report:?}");
    assert!(report.window.is_none());
    assert!(!window.is_open());
    assert_eq!(f.topology.current().mode, MirrorMode::Journaled);
}
