//! Back-off after a failed provider call: the next try for the same key waits 1 s, then twice
//! as long after each failure, up to 30 s; calls in between fail at once without asking the
//! provider. A failing provider then gets one request per session per back-off, not one per
//! API call, and recovers without a storm when it comes back.
//!
//! Per instance and bounded: the least recently failed keys are forgotten past `capacity`
//! (forgetting one only lets its next call try at once).

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wait {
    until: Instant,
    delay: Duration,
}

/// The delay after a failure that followed a wait of `previous` (none: the first failure).
fn next_delay(previous: Option<Duration>) -> Duration {
    previous.map_or(FIRST_DELAY, |d| (d * 2).min(MAX_DELAY))
}

pub struct Backoff<K: Hash + Eq> {
    waits: Mutex<LruCache<K, Wait>>,
}

impl<K: Hash + Eq> Backoff<K> {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Backoff { waits: Mutex::new(LruCache::new(capacity)) }
    }

    /// How long calls for `key` must still wait; `None`: try now.
    pub fn remaining(&self, key: &K) -> Option<Duration> {
        self.remaining_at(key, Instant::now())
    }

    fn remaining_at(&self, key: &K, now: Instant) -> Option<Duration> {
        let waits = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        let wait = waits.peek(key)?;
        wait.until.checked_duration_since(now).filter(|left| !left.is_zero())
    }

    /// A call for `key` failed: returns how long the next one waits.
    pub fn failed(&self, key: K) -> Duration {
        self.failed_at(key, Instant::now())
    }

    fn failed_at(&self, key: K, now: Instant) -> Duration {
        let mut waits = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        let delay = next_delay(waits.peek(&key).map(|w| w.delay));
        waits.put(key, Wait { until: now + delay, delay });
        delay
    }

    /// A call for `key` succeeded (or its subject is gone): no more waiting.
    pub fn succeeded(&self, key: &K) {
        let mut waits = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        waits.pop(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.waits.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_from_one_second_to_thirty() {
        let backoff = Backoff::new(NonZeroUsize::MIN.saturating_add(9));
        let start = Instant::now();
        let delays: Vec<u64> = (0..8).map(|_| backoff.failed_at("s", start).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn calls_wait_until_the_delay_has_passed_and_a_success_ends_it() {
        let backoff = Backoff::new(NonZeroUsize::MIN.saturating_add(9));
        let start = Instant::now();
        assert_eq!(backoff.remaining_at(&"s", start), None);
        backoff.failed_at("s", start);
        assert_eq!(backoff.remaining_at(&"s", start + Duration::from_millis(400)), Some(Duration::from_millis(600)));
        assert_eq!(backoff.remaining_at(&"s", start + Duration::from_secs(1)), None);
        assert_eq!(backoff.remaining_at(&"other", start), None, "per key");
        backoff.succeeded(&"s");
        assert_eq!(backoff.failed_at("s", start), FIRST_DELAY, "a success starts the sequence again");
    }

    #[test]
    fn memory_is_bounded_by_forgetting_the_oldest() {
        let backoff = Backoff::new(NonZeroUsize::MIN.saturating_add(1));
        let start = Instant::now();
        for key in 0..100 {
            backoff.failed_at(key, start);
        }
        assert_eq!(backoff.len(), 2);
        assert!(backoff.remaining_at(&99, start).is_some());
        assert!(backoff.remaining_at(&0, start).is_none());
    }
}
