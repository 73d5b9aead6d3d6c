//! Failpoints at the awaits of the write path, for tests that stop or kill the proxy at the
//! worst moment (between the primary's answer and the journal commit, say).
//!
//! Compiled in only with the `failpoints` feature; then the `FAILPOINTS` environment variable
//! configures them at start (`FAILPOINTS="write::after_primary=pause"`, see the `fail` crate).
//! Without the feature [`failpoint`] is empty and [`setup`] does nothing.

/// Configures the failpoints from `FAILPOINTS`; keep the value alive while the process runs.
pub fn setup() -> Scenario {
    #[cfg(feature = "failpoints")]
    {
        if let Ok(points) = std::env::var("FAILPOINTS") {
            // Tests look for this line to know the failpoints are compiled in.
            eprintln!("chroma-shift: failpoints enabled: {points}");
        }
        Scenario(Some(fail::FailScenario::setup()))
    }
    #[cfg(not(feature = "failpoints"))]
    {
        Scenario(None)
    }
}

/// Holds the failpoint configuration.
pub struct Scenario(Option<fail::FailScenario<'static>>);

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Scenario(failpoints)"
        } else {
            "Scenario(off)"
        })
    }
}

/// A named failpoint: whatever `FAILPOINTS` says for `name` (pause, panic, sleep ...).
#[inline]
pub fn failpoint(name: &str) {
    #[cfg(feature = "failpoints")]
    if configured(name) && on_multi_thread_runtime() {
        // A pause or a sleep blocks its thread. A runtime worker blocked inside a task may be
        // the one that just polled the I/O driver and the timers, while the other workers sleep
        // on their condvars: then no thread polls them again and every socket and timer of the
        // process stalls (seen: a switch paused at `switch::draining` right after a timer woke
        // it left the data and admin ports unanswered, so a test waiting for a held write
        // hung). `block_in_place` hands the worker's duties to another thread first.
        tokio::task::block_in_place(|| fail::fail_point!(name));
        return;
    }
    fail::fail_point!(name);
    let _ = name;
}

/// Whether `FAILPOINTS` (or a test) configured `name`; only those may block.
#[cfg(feature = "failpoints")]
fn configured(name: &str) -> bool {
    fail::list().iter().any(|(point, _)| point == name)
}

/// `block_in_place` needs a multi-thread runtime (it panics on a current-thread one).
#[cfg(feature = "failpoints")]
fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use std::time::Duration;

    /// A task paused at a failpoint right after a timer woke it must not stall the other
    /// tasks' timers: before `block_in_place`, the worker that polled the timer blocked in the
    /// pause while the other worker slept, and this test's sleep never ended.
    #[test]
    fn a_paused_failpoint_leaves_the_runtime_running() {
        const NAME: &str = "failpoints::test::pause";
        fail::cfg(NAME, "pause").expect("a valid action");
        let (done, finished) = std::sync::mpsc::channel();
        let runtime = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let paused = tokio::spawn(async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    super::failpoint(NAME);
                });
                // Timers still fire while the task is paused.
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = done.send(());
                paused
                    .await
                    .expect("the paused task ends once the point is off");
            });
        });
        // Only turns a stall into a failure.
        let ran = finished.recv_timeout(Duration::from_secs(30));
        fail::remove(NAME);
        assert!(ran.is_ok(), "the runtime stalled while a task was paused");
        runtime.join().expect("the runtime thread");
    }
}
