//! Keeps the process's background tasks (the replay workers, the health monitor) running: a task
//! that panics, or ends before it was told to stop, is started again after a backoff, with an
//! alert and `chroma_shift_task_restarts_total{task}`. Without it a panic would stop replication
//! silently while the proxy kept acknowledging writes.

use std::any::Any;
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::alerts::Alerter;

/// The first wait before a restart; doubles up to [`RESTART_MAX`].
const RESTART_INITIAL: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(60);
/// A task that ran this long before failing starts again from the first wait.
const RAN_WELL: Duration = Duration::from_secs(300);

/// Restart counter by task name.
pub fn restarts_counter() -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(
        prometheus::Opts::new(
            "chroma_shift_task_restarts_total",
            "Background tasks (replay workers, health monitor) restarted after a panic or an early end.",
        ),
        &["task"],
    )
}

/// Runs the task `start` makes until `stop` turns true, restarting it when it panics or ends on
/// its own. On stop, the task has `grace` to end by itself (it is handed the same stop signal),
/// then it is aborted; the returned handle ends then.
pub fn supervise<F>(
    task: &'static str,
    alerts: Alerter,
    restarts: IntCounterVec,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    start: F,
) -> JoinHandle<()>
where
    F: Fn(watch::Receiver<bool>) -> JoinHandle<()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = RESTART_INITIAL;
        loop {
            let started = Instant::now();
            let mut handle = AbortOnDrop(start(stop.clone()));
            let outcome = tokio::select! {
                joined = &mut handle.0 => joined,
                () = stopped(&mut stop) => {
                    if tokio::time::timeout(grace, &mut handle.0).await.is_err() && !grace.is_zero() {
                        tracing::warn!(task, "did not end within its grace; aborted");
                    }
                    return;
                }
            };
            if *stop.borrow() {
                return;
            }
            let why = match outcome {
                Ok(()) => "ended on its own".to_owned(),
                Err(error) if error.is_panic() => {
                    format!("panicked: {}", panic_text(error.into_panic()))
                }
                Err(error) => error.to_string(),
            };
            if started.elapsed() >= RAN_WELL {
                backoff = RESTART_INITIAL;
            }
            restarts.with_label_values(&[task]).inc();
            tracing::error!(task, why, restart_in = ?backoff, "background task failed");
            alerts.send(&format!(
                "chroma-shift: the {task} task {why}; restarting it in {}s",
                backoff.as_secs()
            ));
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stopped(&mut stop) => return,
            }
            backoff = (backoff * 2).min(RESTART_MAX);
        }
    })
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, not held across the caller's awaits.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Aborts the task when the supervisor itself is dropped or aborted, so no task outlives it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_text(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic with no message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    fn counters() -> (IntCounterVec, IntCounterVec) {
        let alerts =
            IntCounterVec::new(prometheus::Opts::new("alerts", "alerts"), &["outcome"]).unwrap();
        (restarts_counter().unwrap(), alerts)
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_with_an_alert_and_a_metric() {
        let (restarts, alerts) = counters();
        let (stop, stopped) = watch::channel(false);
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let supervisor = supervise(
            "replay-new",
            Alerter::new(None, Some(alerts.clone())),
            restarts.clone(),
            stopped,
            Duration::from_secs(1),
            move |mut stop| {
                let run = counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if run < 2 {
                        panic!("scripted panic {run}");
                    }
                    let _ = stop.wait_for(|s| *s).await;
                })
            },
        );
        for _ in 0..10_000 {
            if runs.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3, "restarted after each panic");
        assert_eq!(restarts.with_label_values(&["replay-new"]).get(), 2);
        assert_eq!(alerts.with_label_values(&["logged"]).get(), 2);
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), supervisor)
            .await
            .expect("the supervisor ends on stop")
            .unwrap();
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "not restarted after the stop"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_the_stop_is_aborted_after_its_grace() {
        let (restarts, alerts) = counters();
        let (stop, stopped) = watch::channel(false);
        let supervisor = supervise(
            "health",
            Alerter::new(None, Some(alerts)),
            restarts.clone(),
            stopped,
            Duration::from_secs(2),
            |_| tokio::spawn(std::future::pending()),
        );
        tokio::task::yield_now().await;
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), supervisor)
            .await
            .expect("the supervisor ends within the grace")
            .unwrap();
        assert_eq!(restarts.with_label_values(&["health"]).get(), 0);
    }
}
