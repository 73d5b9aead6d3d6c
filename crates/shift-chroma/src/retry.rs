//! Retrying a call to a Chroma server: one exponential backoff with one jitter rule, for the
//! journal's replay (shift-proxy), backfill and verify (shift-migrate).
//!
//! One small module rather than the `backon` crate: the replay does not loop and sleep, it
//! keeps a failure count per lane and schedules the lane's next attempt among others, so the
//! one thing all three callers share is the pause after the n-th failure ([`Backoff::pause`]);
//! [`Backoff::retry`] is the loop around it for the callers that do sleep. Both fit in a page,
//! and a crate whose loop the replay could not use would leave two definitions of the backoff.
//!
//! The pause after the n-th failure is `initial * 2^n`, capped at `max`, with full jitter
//! between half and all of it: retries of many lanes or batches that failed together spread
//! out instead of arriving together, and no pause is ever shorter than half the backoff. A
//! server's `Retry-After` ([`Backoff::pause_after`]) replaces the computed pause, capped at `max`
//! so that a huge value cannot park a caller for hours.

use std::future::Future;
use std::time::Duration;

/// An exponential backoff with jitter: the pause after each failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The pause after the first failure (before jitter).
    pub initial: Duration,
    /// The longest pause, and the cap on a server's `Retry-After`.
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max }
    }

    /// The pause after `failures` earlier failures (0 for the first), before jitter:
    /// `initial * 2^failures`, at most `max`.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 2u32.checked_pow(failures).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// [`Backoff::delay`] with jitter: a random pause between half and all of it.
    pub fn pause(&self, failures: u32) -> Duration {
        self.delay(failures).mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// The pause after a failure whose answer may carry `Retry-After`: what the server asked
    /// for, at most `max`; without it, [`Backoff::pause`].
    pub fn pause_after(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        retry_after.map_or_else(|| self.pause(failures), |asked| asked.min(self.max))
    }

    /// Calls `call` until it succeeds, `attempts` times at most, pausing after each failure
    /// that `retryable` accepts; any other error, or the last attempt's, is returned.
    /// `on_retry` hears of each failure retried, with its attempt number (from 1) and the pause.
    pub async fn retry<T, E, F, Fut>(
        &self,
        attempts: u32,
        retryable: impl Fn(&E) -> bool,
        mut on_retry: impl FnMut(&E, u32, Duration),
        mut call: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            match call().await {
                Err(error) if attempt < attempts && retryable(&error) => {
                    let pause = self.pause(attempt - 1);
                    on_retry(&error, attempt, pause);
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    const BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

    #[test]
    fn the_delay_doubles_up_to_the_cap() {
        let delays: Vec<u64> = (0..7)
            .map(|n| BACKOFF.delay(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(BACKOFF.delay(40), BACKOFF.max, "no overflow");
    }

    #[test]
    fn the_pause_is_jittered_between_half_and_all() {
        for failures in 0..8 {
            let delay = BACKOFF.delay(failures);
            for _ in 0..50 {
                let pause = BACKOFF.pause(failures);
                assert!(
                    pause >= delay / 2 && pause <= delay,
                    "{pause:?} of {delay:?}"
                );
            }
        }
    }

    #[test]
    fn retry_after_replaces_the_pause_up_to_the_cap() {
        let asked = Duration::from_secs(2);
        assert_eq!(BACKOFF.pause_after(0, Some(asked)), asked);
        assert_eq!(
            BACKOFF.pause_after(0, Some(Duration::from_secs(3600))),
            BACKOFF.max
        );
        assert!(BACKOFF.pause_after(0, None) <= BACKOFF.initial);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_success_at_a_final_error_or_after_the_attempts() {
        let calls = Cell::new(0);
        let mut heard = Vec::new();
        let result: Result<u32, &str> = BACKOFF
            .retry(
                6,
                |e| *e == "busy",
                |_, attempt, _| heard.push(attempt),
                || {
                    calls.set(calls.get() + 1);
                    let n = calls.get();
                    async move {
                        if n < 3 {
                            Err("busy")
                        } else {
                            Ok(n)
                        }
                    }
                },
            )
            .await;
        assert_eq!(result, Ok(3));
        assert_eq!(heard, [1, 2]);

        // A final error ends at once; a retryable one after the attempts: (attempts, the
        // error every call answers, calls made).
        for (attempts, error, calls_made) in [(6, "refused", 1), (4, "busy", 4)] {
            calls.set(0);
            let ended: Result<u32, &str> = BACKOFF
                .retry(
                    attempts,
                    |e| *e == "busy",
                    |_, _, _| {},
                    || {
                        calls.set(calls.get() + 1);
                        async move { Err(error) }
                    },
                )
                .await;
            assert_eq!((ended, calls.get()), (Err(error), calls_made));
        }
    }
}
