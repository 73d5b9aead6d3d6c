//! The membership lease's deadline as this replica knows it. Each renewal moves the deadline
//! to when the renewal was *sent* plus the TTL etcd granted: etcd counts the TTL from when it
//! received the request, so the local deadline is never later than etcd's. Past it, etcd may
//! have expired the lease and the other replicas may see this one gone: it takes no writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The lease deadline, shared by the renewing task and every write.
#[derive(Debug)]
pub struct LeaseClock {
    /// The origin of `deadline`.
    base: Instant,
    /// Microseconds after `base`; 0 while no lease is held.
    deadline: AtomicU64,
}

impl Default for LeaseClock {
    fn default() -> Self {
        LeaseClock {
            base: Instant::now(),
            deadline: AtomicU64::new(0),
        }
    }
}

impl LeaseClock {
    /// Records a grant or renewal sent at `sent` for `ttl`; never moves the deadline back.
    pub fn renewed(&self, sent: Instant, ttl: Duration) {
        let until = micros(sent.saturating_duration_since(self.base) + ttl).max(1);
        self.deadline.fetch_max(until, Ordering::AcqRel);
    }

    /// Forgets the lease (etcd said it expired, or it was revoked): it ran out now, unless its
    /// deadline had passed already, so [`LeaseClock::lapsed_for`] still counts from then (the
    /// read grace runs from the deadline, not from when etcd said so).
    pub fn lost(&self) {
        let now = micros(self.base.elapsed()).max(1);
        self.deadline.fetch_min(now, Ordering::AcqRel);
    }

    /// Whether the lease is held now: the way every write checks, no allocation.
    pub fn is_live(&self) -> bool {
        let deadline = self.deadline.load(Ordering::Acquire);
        deadline != 0 && micros(self.base.elapsed()) < deadline
    }

    /// How long ago the lease ran out; `None` while it is held.
    pub fn lapsed_for(&self) -> Option<Duration> {
        let deadline = self.deadline.load(Ordering::Acquire);
        let now = micros(self.base.elapsed());
        (deadline == 0 || now >= deadline)
            .then(|| Duration::from_micros(now.saturating_sub(deadline)))
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_the_send_time_plus_the_ttl_and_never_moves_back() {
        let clock = LeaseClock::default();
        assert!(!clock.is_live(), "no lease yet");
        let sent = Instant::now();
        clock.renewed(sent, Duration::from_secs(3));
        assert!(clock.is_live());
        tokio::time::advance(Duration::from_secs(2)).await;
        // A late answer to an older renewal does not shorten it.
        clock.renewed(sent, Duration::from_secs(1));
        assert!(clock.is_live());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!clock.is_live(), "past the deadline");
        assert_eq!(clock.lapsed_for(), Some(Duration::ZERO));
        clock.renewed(Instant::now(), Duration::from_secs(3));
        assert!(clock.is_live());
        tokio::time::advance(Duration::from_secs(1)).await;
        clock.lost();
        assert!(!clock.is_live());
        assert_eq!(clock.lapsed_for(), Some(Duration::ZERO), "lost now");
        tokio::time::advance(Duration::from_secs(1)).await;
        // Lost again later: still counted from the first time.
        clock.lost();
        assert_eq!(clock.lapsed_for(), Some(Duration::from_secs(1)));
    }
}
