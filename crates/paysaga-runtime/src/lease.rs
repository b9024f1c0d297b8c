//! The worker's own view of its lease, on its monotonic clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Until when this process knows its lease holds, by its own monotonic clock: the send time
/// of the last successful renewal plus the lease length. A process that was frozen (SIGSTOP,
/// a paused VM) finds it passed when it wakes up. The database's view can only be later: the
/// renewal took effect after it was sent.
#[derive(Debug)]
pub(crate) struct LeaseClock {
    ttl: Duration,
    until: Mutex<Instant>,
}

impl LeaseClock {
    /// A clock whose lease has not been renewed yet (it holds for no time at all).
    pub(crate) fn new(ttl: Duration) -> LeaseClock {
        LeaseClock {
            ttl,
            until: Mutex::new(Instant::now()),
        }
    }

    /// The lease length.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A renewal sent at `sent` succeeded.
    pub(crate) fn renewed(&self, sent: Instant) {
        if let Ok(mut until) = self.until.lock() {
            *until = (*until).max(sent + self.ttl);
        }
    }

    /// Whether the lease surely holds for at least half its length more: the condition for
    /// starting a call whose effect cannot be undone. A worker frozen past its lease and then
    /// thawed may still be running a step whose saga already belongs to another worker; the
    /// fence stops its commit, this check stops its irreversible calls.
    pub(crate) fn fresh(&self) -> bool {
        self.until
            .lock()
            .map(|until| Instant::now() + self.ttl / 2 < *until)
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_never_renewed_is_not_fresh() {
        assert!(!LeaseClock::new(Duration::from_secs(30)).fresh());
    }

    #[test]
    fn a_renewal_makes_it_fresh_for_half_its_length() {
        let clock = LeaseClock::new(Duration::from_millis(200));
        clock.renewed(Instant::now());
        assert!(clock.fresh());
        std::thread::sleep(Duration::from_millis(120));
        assert!(!clock.fresh(), "less than half the lease is left");
    }

    #[test]
    fn an_older_renewal_answered_late_does_not_shorten_it() {
        let clock = LeaseClock::new(Duration::from_secs(30));
        let earlier = Instant::now();
        clock.renewed(earlier + Duration::from_secs(5));
        clock.renewed(earlier);
        assert!(clock.fresh());
    }
}
