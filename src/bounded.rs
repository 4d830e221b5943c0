//! An LRU map bounded by entries and by bytes, for the per-instance caches a client can grow
//! (issue 22: an entry-count cap alone let one cookie fill gigabytes).
//!
//! Bytes are an estimate, honest rather than exact: what the key and value hold on the heap
//! (the caller says, once per insert) plus a fixed overhead for the entry itself. The size of
//! each entry is stored beside it, so eviction and removal never recompute it: O(1) per insert
//! or eviction, nothing on a hit.

use std::borrow::Borrow;
use std::hash::Hash;
use std::num::NonZeroUsize;

use lru::LruCache;

use crate::metrics::CacheGauges;

pub struct BoundedLru<K: Hash + Eq, V> {
    entries: LruCache<K, Entry<V>>,
    bytes: usize,
    max_bytes: usize,
    gauges: CacheGauges,
}

struct Entry<V> {
    value: V,
    bytes: usize,
}

impl<K: Hash + Eq, V> BoundedLru<K, V> {
    /// What each entry costs besides its heap data: the key and value inline, the LRU list's
    /// two links, the hash table's slot (a key reference and a node pointer) and its control
    /// byte, and the allocator's header for the node, rounded up.
    pub const ENTRY_OVERHEAD: usize =
        std::mem::size_of::<K>() + std::mem::size_of::<Entry<V>>() + 6 * std::mem::size_of::<usize>();

    pub fn new(max_entries: NonZeroUsize, max_bytes: usize, gauges: CacheGauges) -> Self {
        gauges.set(0, 0);
        BoundedLru { entries: LruCache::new(max_entries), bytes: 0, max_bytes, gauges }
    }

    /// The value, now the most recently used.
    pub fn get<Q>(&mut self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|e| &e.value)
    }

    pub fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.peek(key).map(|e| &e.value)
    }

    /// Inserts (or replaces) `key`; `heap_bytes`: what key and value hold on the heap. The least
    /// recently used entries go until both bounds hold; an entry larger than the whole budget
    /// is not kept at all.
    pub fn put(&mut self, key: K, value: V, heap_bytes: usize) {
        let bytes = heap_bytes.saturating_add(Self::ENTRY_OVERHEAD);
        if bytes > self.max_bytes {
            if let Some(old) = self.entries.pop(&key) {
                self.bytes -= old.bytes;
            }
            self.publish();
            return;
        }
        if let Some((_, old)) = self.entries.push(key, Entry { value, bytes }) {
            // The replaced value of the same key, or the entry the count bound evicted.
            self.bytes -= old.bytes;
        }
        self.bytes += bytes;
        while self.bytes > self.max_bytes {
            let Some((_, old)) = self.entries.pop_lru() else { break };
            self.bytes -= old.bytes;
        }
        self.publish();
    }

    pub fn pop<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let old = self.entries.pop(key)?;
        self.bytes -= old.bytes;
        self.publish();
        Some(old.value)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
        self.publish();
    }

    pub fn count(&self) -> usize {
        self.entries.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn publish(&self) {
        self.gauges.set(self.entries.len(), self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lru(max_entries: usize, max_bytes: usize) -> BoundedLru<String, String> {
        let max_entries = NonZeroUsize::new(max_entries).unwrap_or(NonZeroUsize::MIN);
        BoundedLru::new(max_entries, max_bytes, CacheGauges::detached())
    }

    fn put(c: &mut BoundedLru<String, String>, k: &str, v: &str) {
        c.put(k.to_string(), v.to_string(), k.len() + v.len());
    }

    const O: usize = BoundedLru::<String, String>::ENTRY_OVERHEAD;

    #[test]
    fn bytes_follow_inserts_replacements_removals_and_clears() {
        let mut c = lru(10, 10_000);
        put(&mut c, "a", "xxxx");
        put(&mut c, "b", "yy");
        assert_eq!(c.bytes(), 5 + 3 + 2 * O);
        put(&mut c, "a", "z");
        assert_eq!((c.count(), c.bytes()), (2, 2 + 3 + 2 * O), "a replaced value's bytes are given back");
        assert_eq!(c.pop("b"), Some("yy".to_string()));
        assert_eq!(c.bytes(), 2 + O);
        c.clear();
        assert_eq!((c.count(), c.bytes()), (0, 0));
    }

    #[test]
    fn the_least_recently_used_go_until_under_the_byte_budget() {
        let mut c = lru(100, 3 * (O + 10));
        for k in ["k0", "k1", "k2"] {
            put(&mut c, k, "vvvvvvvv");
        }
        assert_eq!(c.count(), 3);
        assert!(c.get("k0").is_some(), "k0 is now the most recently used");
        put(&mut c, "k3", "vvvvvvvv");
        assert_eq!(c.count(), 3);
        assert!(c.peek("k1").is_none(), "least recently used, gone");
        assert!(c.peek("k0").is_some() && c.peek("k3").is_some());
        // One large entry pushes out as many as needed.
        put(&mut c, "big", &"v".repeat(2 * (O + 10) - O - 3));
        assert_eq!(c.count(), 2);
        assert!(c.peek("big").is_some() && c.peek("k3").is_some());
        assert!(c.bytes() <= 3 * (O + 10));
    }

    #[test]
    fn the_entry_bound_still_holds_and_its_evictions_are_accounted() {
        let mut c = lru(2, usize::MAX);
        for k in ["a", "b", "c"] {
            put(&mut c, k, "v");
        }
        assert_eq!((c.count(), c.bytes()), (2, 2 * (2 + O)));
    }

    #[test]
    fn an_entry_larger_than_the_budget_is_not_kept_and_drops_an_older_value() {
        let mut c = lru(10, O + 10);
        put(&mut c, "a", "v");
        put(&mut c, "a", &"v".repeat(20));
        assert_eq!((c.count(), c.bytes()), (0, 0));
    }
}
