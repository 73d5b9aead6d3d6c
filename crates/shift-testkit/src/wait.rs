//! Waiting in tests for a condition that becomes true in the background (a drain, a counter):
//! poll, and fail after a bound. The bound only turns a hang into a failure; it never states
//! how fast anything is.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it answers true; an error from `check` fails at once, and
/// so does `limit` passing, with `what` in the message.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    while !check().await? {
        anyhow::ensure!(
            started.elapsed() < limit,
            "timed out waiting for {what} ({limit:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
