//! The coherent local cache of opened token sets (docs/CONTRACT.md, "Storage"; `tokens.local_cache`).
//!
//! A steady-state API call finds its session's token view here and makes no Redis command.
//! Redis keeps the cache coherent: every fill is read on the store's tracked connection, and
//! Redis pushes an invalidation when that key changes (`store::tracking`); this instance's own
//! writes invalidate at once, before and after the write.
//!
//! The guard against the read/invalidation race: a miss first puts a placeholder holding a
//! ticket number, then reads. An invalidation removes whatever the slot holds, placeholder or
//! value; the fill is stored only if its own placeholder is still there and the channel has not
//! gone down or come back since (the epoch). So an invalidation applied at any moment after the
//! read was issued leaves nothing behind, and one applied after the fill removes the value.
//!
//! What is kept is what the proxy's hot path uses (`HotToken`: the access token and the
//! expiries), never the refresh or ID token: refresh decisions read Redis (`TokenStore::load`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::{HotToken, UsableToken};
use crate::bounded::BoundedLru;
use crate::metrics::{CacheGauges, CacheMetrics};
use crate::session::{KeyLayout, SessionHandle};
use crate::store::ChangeListener;

/// A cached view and how long the store said it lives.
pub struct CachedToken {
    pub view: HotToken,
    /// Fill time (when the read was issued) plus the key's time to live then: never trusted
    /// past it, whatever the channel says (idle timeout without an invalidation).
    pub valid_until: Instant,
    /// An idle-timeout extension for this value was started (one per value).
    touch_started: AtomicBool,
}

impl CachedToken {
    /// True the first time only.
    pub fn start_touch(&self) -> bool {
        !self.touch_started.swap(true, Ordering::AcqRel)
    }
}

enum Slot {
    /// A read for this session is in flight; its ticket.
    Pending(u64),
    Filled(Arc<CachedToken>),
}

struct State {
    slots: BoundedLru<String, Slot>,
    /// The channel is up: fills are allowed.
    up: bool,
    /// Moves on every flush (channel down or up, flush-all): fills from before are refused.
    epoch: u64,
    next_ticket: u64,
}

/// A miss's right to fill, taken before the read. Dropped without `complete_fill` (the read
/// failed, found nothing to keep, or the request went away mid-read), it frees its placeholder,
/// which would otherwise hold off every other fill for the session.
#[must_use]
pub struct FillTicket<'c> {
    cache: &'c TokenCache,
    handle: String,
    ticket: u64,
    epoch: u64,
    completed: bool,
}

impl Drop for FillTicket<'_> {
    fn drop(&mut self) {
        if self.completed {
            return;
        }
        let mut state = self.cache.state();
        if matches!(state.slots.peek(&self.handle), Some(Slot::Pending(t)) if *t == self.ticket) {
            state.slots.pop(&self.handle);
            self.cache.metrics.entries(state.slots.count());
        }
    }
}

pub struct TokenCache {
    state: Mutex<State>,
    keys: KeyLayout,
    metrics: CacheMetrics,
}

impl TokenCache {
    pub fn new(
        max_entries: std::num::NonZeroUsize,
        max_bytes: usize,
        keys: KeyLayout,
        metrics: CacheMetrics,
        gauges: CacheGauges,
    ) -> TokenCache {
        metrics.channel_up(false);
        let slots = BoundedLru::new(max_entries, max_bytes, gauges);
        TokenCache { state: Mutex::new(State { slots, up: false, epoch: 0, next_ticket: 0 }), keys, metrics }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A value still within the store's time to live, or `None` (a miss).
    pub fn get(&self, handle: &SessionHandle, now: Instant) -> Option<Arc<CachedToken>> {
        let mut state = self.state();
        let found = match state.slots.get(handle.as_str()) {
            Some(Slot::Filled(entry)) if now < entry.valid_until => Some(Arc::clone(entry)),
            Some(Slot::Filled(_)) => {
                state.slots.pop(handle.as_str());
                self.metrics.entries(state.slots.count());
                None
            }
            _ => None,
        };
        drop(state);
        match found {
            Some(_) => self.metrics.hit(),
            None => self.metrics.miss(),
        }
        found
    }

    /// Before a miss's read; `None` while the channel is not up, or while another read for the
    /// session is already filling (read, but do not fill: concurrent misses must not keep
    /// superseding each other's fills).
    pub fn begin_fill(&self, handle: &SessionHandle) -> Option<FillTicket<'_>> {
        let mut state = self.state();
        if !state.up || matches!(state.slots.peek(handle.as_str()), Some(Slot::Pending(_))) {
            return None;
        }
        state.next_ticket += 1;
        let ticket = state.next_ticket;
        state.slots.put(handle.as_str().to_string(), Slot::Pending(ticket), handle.as_str().len());
        self.metrics.entries(state.slots.count());
        Some(FillTicket {
            cache: self,
            handle: handle.as_str().to_string(),
            ticket,
            epoch: state.epoch,
            completed: false,
        })
    }

    /// Stores the value read under `ticket` unless something invalidated it meanwhile.
    pub fn complete_fill(&self, mut fill: FillTicket<'_>, view: HotToken, valid_until: Instant) -> bool {
        let mut state = self.state();
        let ours = matches!(state.slots.peek(&fill.handle), Some(Slot::Pending(t)) if *t == fill.ticket);
        if !(ours && state.up && state.epoch == fill.epoch) {
            return false;
        }
        let bytes = fill.handle.len() + view_bytes(&view);
        let entry = CachedToken { view, valid_until, touch_started: AtomicBool::new(false) };
        state.slots.put(std::mem::take(&mut fill.handle), Slot::Filled(Arc::new(entry)), bytes);
        fill.completed = true;
        self.metrics.filled();
        true
    }

    /// Drops what is held for a session (its idle extension failed: read Redis again).
    pub fn forget_session(&self, handle: &SessionHandle) {
        self.forget(handle.as_str());
    }

    fn forget(&self, handle: &str) {
        let mut state = self.state();
        if state.slots.pop(handle).is_some() {
            self.metrics.entries(state.slots.count());
        }
    }

    /// Empties the cache; `up`: the channel state from now on, `None` keeps it (in the same
    /// critical section, so a flush-all cannot undo a concurrent up or down).
    fn flush(&self, up: Option<bool>) {
        let mut state = self.state();
        state.slots.clear();
        state.epoch += 1;
        if let Some(up) = up {
            state.up = up;
        }
        self.metrics.entries(0);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state().slots.count()
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.state().slots.bytes()
    }
}

/// What a cached view holds on the heap (its `Arc` allocation included), estimated: the tokens
/// are what can be large.
fn view_bytes(view: &HotToken) -> usize {
    fn token(t: &UsableToken) -> usize {
        t.authorization.as_ref().map_or(0, |h| h.len())
            + t.dpop.as_ref().map_or(0, |d| std::mem::size_of_val(d) + d.ath.len())
    }
    let audiences: usize = view.audiences.iter().map(|a| std::mem::size_of_val(a) + a.0.len() + token(&a.1)).sum();
    // Two reference counts precede each `Arc`'s value.
    let acr = view.acr.as_ref().map_or(0, |a| 2 * std::mem::size_of::<usize>() + a.len());
    let device = view.device.as_ref().map_or(0, |d| {
        2 * std::mem::size_of::<usize>() + std::mem::size_of_val(d.as_ref()) + d.session_id.len() + d.key.encoded_len()
    });
    2 * std::mem::size_of::<usize>()
        + std::mem::size_of::<CachedToken>()
        + token(&view.access)
        + audiences
        + acr
        + device
}

impl ChangeListener for TokenCache {
    fn invalidated(&self, key: &[u8]) {
        self.metrics.invalidation();
        if let Some(handle) = std::str::from_utf8(key).ok().and_then(|k| self.keys.session_of_tokens_key(k)) {
            self.forget(handle);
        }
    }

    fn everything_invalidated(&self) {
        self.metrics.invalidation();
        self.flush(None);
    }

    fn written_locally(&self, key: &str) {
        if let Some(handle) = self.keys.session_of_tokens_key(key) {
            self.forget(handle);
        }
    }

    fn channel_up(&self) {
        self.flush(Some(true));
        self.metrics.channel_up(true);
    }

    fn channel_down(&self) {
        self.flush(Some(false));
        self.metrics.channel_up(false);
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;
    use std::time::Duration;

    use openidconnect::AccessToken;

    use super::*;
    use crate::metrics::Metrics;
    use crate::session::SessionId;

    fn view(version: u64) -> HotToken {
        view_sized(version, 0)
    }

    fn view_sized(version: u64, padding: usize) -> HotToken {
        let token = format!("at{version}{}", "x".repeat(padding));
        let authorization = super::super::bearer_header(&AccessToken::new(token));
        HotToken {
            access: crate::tokens::UsableToken {
                authorization,
                dpop: None,
                version,
                expires_at: u64::MAX,
                after_rejection: false,
            },
            expiry: crate::tokens::Expiry { expires_at: u64::MAX, lifetime_secs: 300, session_expires_at: u64::MAX },
            has_refresh_token: true,
            audiences: std::sync::Arc::default(),
            acr: None,
            auth_time: None,
            device: None,
        }
    }

    fn cache(max: usize) -> (TokenCache, KeyLayout) {
        cache_of_bytes(max, usize::MAX)
    }

    fn cache_of_bytes(max: usize, max_bytes: usize) -> (TokenCache, KeyLayout) {
        let keys = KeyLayout::new("t:");
        let metrics = Metrics::new().map(|m| m.cache()).unwrap_or_else(|e| panic!("metrics: {e}"));
        let max = NonZeroUsize::new(max).unwrap_or(NonZeroUsize::MIN);
        let cache = TokenCache::new(max, max_bytes, keys.clone(), metrics, CacheGauges::detached());
        cache.channel_up();
        (cache, keys)
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn version_of(cache: &TokenCache, h: &SessionHandle) -> Option<u64> {
        cache.get(h, Instant::now()).map(|e| e.view.access.version)
    }

    #[test]
    fn a_fill_is_served_until_invalidated() {
        let (cache, keys) = cache(10);
        let h = SessionId::generate().handle();
        assert!(cache.get(&h, Instant::now()).is_none());
        let fill = cache.begin_fill(&h).unwrap_or_else(|| panic!("channel is up"));
        assert!(cache.complete_fill(fill, view(1), later()));
        assert_eq!(version_of(&cache, &h), Some(1));
        cache.invalidated(keys.tokens(&h).as_bytes());
        assert_eq!(version_of(&cache, &h), None);
    }

    #[test]
    fn an_invalidation_between_the_read_and_its_fill_wins() {
        let (cache, keys) = cache(10);
        let h = SessionId::generate().handle();
        let fill = cache.begin_fill(&h).unwrap_or_else(|| panic!("channel is up"));
        // The read was sent; Redis changed the key and its invalidation was applied before the
        // reply's fill: the old value must not be stored.
        cache.invalidated(keys.tokens(&h).as_bytes());
        assert!(!cache.complete_fill(fill, view(1), later()));
        assert_eq!(version_of(&cache, &h), None);
    }

    #[test]
    fn a_local_write_or_a_flush_during_the_read_refuses_the_fill() {
        let (cache, keys) = cache(10);
        let h = SessionId::generate().handle();
        let fill = cache.begin_fill(&h).unwrap_or_else(|| panic!("up"));
        cache.written_locally(&keys.tokens(&h));
        assert!(!cache.complete_fill(fill, view(1), later()));

        let fill = cache.begin_fill(&h).unwrap_or_else(|| panic!("up"));
        cache.everything_invalidated();
        assert!(!cache.complete_fill(fill, view(1), later()));

        // Down and back up between the read and the fill: the read may have gone to a
        // connection Redis no longer tracks for us.
        let fill = cache.begin_fill(&h).unwrap_or_else(|| panic!("up"));
        cache.channel_down();
        cache.channel_up();
        assert!(!cache.complete_fill(fill, view(1), later()));
        assert_eq!(version_of(&cache, &h), None);
    }

    #[test]
    fn a_second_read_while_one_fills_reads_without_filling() {
        let (cache, _) = cache(10);
        let h = SessionId::generate().handle();
        let first = cache.begin_fill(&h).unwrap_or_else(|| panic!("up"));
        assert!(cache.begin_fill(&h).is_none(), "one fill at a time per session");
        assert!(cache.complete_fill(first, view(1), later()));
        assert_eq!(version_of(&cache, &h), Some(1));
        // An abandoned fill frees the slot for the next miss.
        let other = SessionId::generate().handle();
        let fill = cache.begin_fill(&other).unwrap_or_else(|| panic!("up"));
        drop(fill);
        assert!(cache.begin_fill(&other).is_some());
    }

    #[test]
    fn a_flush_all_keeps_the_channel_state() {
        let (cache, _) = cache(10);
        cache.everything_invalidated();
        assert!(cache.begin_fill(&SessionId::generate().handle()).is_some(), "still up");
        cache.channel_down();
        cache.everything_invalidated();
        assert!(cache.begin_fill(&SessionId::generate().handle()).is_none(), "still down");
    }

    #[test]
    fn nothing_is_filled_or_served_while_the_channel_is_down() {
        let (cache, _) = cache(10);
        let h = SessionId::generate().handle();
        let fill = cache.begin_fill(&h).unwrap_or_else(|| panic!("up"));
        assert!(cache.complete_fill(fill, view(1), later()));
        cache.channel_down();
        assert_eq!(version_of(&cache, &h), None, "emptied");
        assert!(cache.begin_fill(&h).is_none(), "no fills while down");
        cache.channel_up();
        assert!(cache.begin_fill(&h).is_some());
    }

    #[test]
    fn an_entry_is_never_trusted_past_the_store_time_to_live() {
        let (cache, _) = cache(10);
        let h = SessionId::generate().handle();
        let fill = cache.begin_fill(&h).unwrap_or_else(|| panic!("up"));
        let valid_until = Instant::now() + Duration::from_secs(5);
        assert!(cache.complete_fill(fill, view(1), valid_until));
        assert!(cache.get(&h, valid_until - Duration::from_millis(1)).is_some());
        assert!(cache.get(&h, valid_until).is_none());
        assert_eq!(cache.len(), 0, "the expired entry is dropped");
    }

    #[test]
    fn memory_is_bounded_and_the_least_recently_used_go_first() {
        let (cache, _) = cache(3);
        let handles: Vec<SessionHandle> = (0..5).map(|_| SessionId::generate().handle()).collect();
        for (i, h) in handles.iter().enumerate() {
            if i == 3 {
                // Touch the first so it is the most recently used.
                assert!(cache.get(&handles[0], Instant::now()).is_some());
            }
            let fill = cache.begin_fill(h).unwrap_or_else(|| panic!("up"));
            assert!(cache.complete_fill(fill, view(i as u64), later()));
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&handles[0], Instant::now()).is_some(), "recently used, kept");
        assert!(cache.get(&handles[4], Instant::now()).is_some());
        assert!(cache.get(&handles[1], Instant::now()).is_none(), "least recently used, gone");
    }

    #[test]
    fn keys_of_other_kinds_and_prefixes_are_ignored() {
        let (cache, keys) = cache(10);
        let h = SessionId::generate().handle();
        let fill = cache.begin_fill(&h).unwrap_or_else(|| panic!("up"));
        assert!(cache.complete_fill(fill, view(1), later()));
        cache.invalidated(keys.session(&h).as_bytes());
        cache.invalidated(KeyLayout::new("other:").tokens(&h).as_bytes());
        cache.invalidated(&[0xff, 0xfe]);
        assert_eq!(version_of(&cache, &h), Some(1));
    }

    #[test]
    fn an_extension_is_started_once_per_value() {
        let (cache, _) = cache(10);
        let h = SessionId::generate().handle();
        let fill = cache.begin_fill(&h).unwrap_or_else(|| panic!("up"));
        assert!(cache.complete_fill(fill, view(1), later()));
        let entry = cache.get(&h, Instant::now()).unwrap_or_else(|| panic!("filled"));
        assert!(entry.start_touch());
        assert!(!entry.start_touch());
    }

    #[test]
    fn large_tokens_are_bounded_by_bytes_not_only_by_count() {
        let budget = 64 * 1024;
        let (cache, _) = cache_of_bytes(1000, budget);
        let handles: Vec<SessionHandle> = (0..20).map(|_| SessionId::generate().handle()).collect();
        for (i, h) in handles.iter().enumerate() {
            let fill = cache.begin_fill(h).unwrap_or_else(|| panic!("up"));
            assert!(cache.complete_fill(fill, view_sized(i as u64, 16 * 1024), later()));
            assert!(cache.bytes() <= budget, "{} bytes held", cache.bytes());
        }
        assert!(cache.len() < 4, "16 KB tokens: at most three fit in 64 KB, {} held", cache.len());
        assert!(cache.bytes() > 3 * 16 * 1024 / 2, "each entry counts its token: {}", cache.bytes());
        assert!(cache.get(&handles[19], Instant::now()).is_some(), "the newest is kept");
        assert!(cache.get(&handles[0], Instant::now()).is_none(), "the oldest went");
        cache.everything_invalidated();
        assert_eq!(cache.bytes(), 0);
    }
}
