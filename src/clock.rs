//! The clock that session and token lifetimes are decided by (due for refresh, expired, past
//! the absolute timeout, a store entry's time to live). It is the system's, in Unix seconds; an
//! instance's clock can be moved forward as a whole (tests, and demos of expiry), so that what
//! happens when a token falls due is shown without waiting for it. Protocol timestamps that
//! others check (a client assertion's or a DPoP proof's `iat`) stay on the system clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Cheap to clone and to read (one atomic load beside the system time); every clone shares the
/// same offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    ahead_secs: Arc<AtomicU64>,
}

impl Clock {
    pub fn system() -> Clock {
        Clock::default()
    }

    /// Unix seconds.
    pub fn now_unix(&self) -> u64 {
        crate::session::now_unix() + self.ahead_secs.load(Ordering::Relaxed)
    }

    /// Moves this clock (and every clone of it) forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.ahead_secs.fetch_add(by.as_secs(), Ordering::Relaxed);
    }

    /// Moves this clock forward until it reads at least `unix_secs`.
    pub fn advance_to(&self, unix_secs: u64) {
        let now = self.now_unix();
        if unix_secs > now {
            self.advance(Duration::from_secs(unix_secs - now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_moves_forward_for_every_clone_and_never_back() {
        let clock = Clock::system();
        let other = clock.clone();
        let before = clock.now_unix();
        clock.advance(Duration::from_secs(3600));
        assert!(other.now_unix() >= before + 3600);
        let later = other.now_unix();
        other.advance_to(later - 100);
        assert!(clock.now_unix() >= later, "advance_to never goes back");
        assert!(Clock::system().now_unix() < later, "a new clock is the system's");
    }
}
