//! The in-memory store: the same primitives as Redis, for one instance (the demo, or a single
//! process with no Redis). Expired entries are dropped when touched and swept now and then.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{CasOutcome, StoreError, TrackedRead};

/// Sweep expired entries every this many writes, so an idle map does not grow without bound.
const SWEEP_EVERY: u64 = 1024;

enum Data {
    Bytes(Vec<u8>),
    Set(BTreeSet<String>),
}

struct Entry {
    data: Data,
    expires_at: Instant,
}

#[derive(Default)]
struct Map {
    entries: HashMap<String, Entry>,
    writes: u64,
}

impl Map {
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.entries.get(key).is_some_and(|e| e.expires_at <= now) {
            self.entries.remove(key);
        }
        self.entries.get_mut(key)
    }

    fn bytes(&mut self, key: &str, now: Instant) -> Option<&mut Vec<u8>> {
        match self.live(key, now) {
            Some(Entry { data: Data::Bytes(b), .. }) => Some(b),
            _ => None,
        }
    }

    fn insert(&mut self, key: &str, data: Data, ttl: Duration, now: Instant) {
        self.writes += 1;
        if self.writes.is_multiple_of(SWEEP_EVERY) {
            self.entries.retain(|_, e| e.expires_at > now);
        }
        self.entries.insert(key.to_string(), Entry { data, expires_at: now + ttl });
    }
}

#[derive(Clone, Default)]
pub struct MemoryStore {
    map: Arc<Mutex<Map>>,
    /// Unit tests of callers: the write (1-based) that fails, to check what a failure midway
    /// leaves behind.
    #[cfg(test)]
    failing_write: Arc<Mutex<Option<(u32, u32)>>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Makes the `n`th write from now fail (once).
    #[cfg(test)]
    pub(crate) fn fail_write(&self, n: u32) {
        *self.failing_write.lock().unwrap_or_else(|p| p.into_inner()) = Some((0, n));
    }

    /// Every live key.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> Vec<String> {
        let now = Instant::now();
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entries.iter().filter(|(_, e)| e.expires_at > now).map(|(k, _)| k.clone()).collect()
    }

    fn write(&self) -> Result<MutexGuard<'_, Map>, StoreError> {
        #[cfg(test)]
        {
            let mut plan = self.failing_write.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((done, fail_at)) = plan.as_mut() {
                *done += 1;
                if *done == *fail_at {
                    return Err(StoreError::HeldOff);
                }
            }
        }
        self.lock()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Map>, StoreError> {
        // A panic while holding the lock cannot leave a half-written entry (every write is a
        // single insert or remove), so a poisoned map is still consistent.
        Ok(self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.lock().map(drop)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.bytes(key, Instant::now()).cloned())
    }

    /// One process holds everything: there is no change made elsewhere to be told of.
    pub async fn read_tracked(&self, _key: &str) -> Result<TrackedRead, StoreError> {
        Ok(TrackedRead::NotTracking)
    }

    pub async fn get_with_ttl(&self, key: &str) -> Result<Option<(Vec<u8>, Duration)>, StoreError> {
        let now = Instant::now();
        let mut map = self.lock()?;
        Ok(match map.live(key, now) {
            Some(Entry { data: Data::Bytes(b), expires_at }) => Some((b.clone(), *expires_at - now)),
            _ => None,
        })
    }

    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        self.write()?.insert(key, Data::Bytes(value.to_vec()), ttl, Instant::now());
        Ok(())
    }

    pub async fn set_if_exists(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut map = self.write()?;
        if map.live(key, now).is_none() {
            return Ok(false);
        }
        map.insert(key, Data::Bytes(value.to_vec()), ttl, now);
        Ok(true)
    }

    pub async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut map = self.write()?;
        if map.live(key, now).is_some() {
            return Ok(false);
        }
        map.insert(key, Data::Bytes(value.to_vec()), ttl, now);
        Ok(true)
    }

    pub async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let now = Instant::now();
        let mut map = self.write()?;
        if map.bytes(key, now).is_none() {
            return Ok(None);
        }
        Ok(match map.entries.remove(key) {
            Some(Entry { data: Data::Bytes(b), .. }) => Some(b),
            _ => None,
        })
    }

    pub async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        let mut map = self.write()?;
        for key in keys {
            map.entries.remove(key);
        }
        Ok(())
    }

    pub async fn expire(&self, keys: &[String], ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut map = self.write()?;
        for key in keys {
            if let Some(entry) = map.live(key, now) {
                entry.expires_at = now + ttl;
            }
        }
        Ok(())
    }

    pub async fn replace_if_prefix(&self, key: &str, prefix: &[u8], value: &[u8]) -> Result<CasOutcome, StoreError> {
        let mut map = self.write()?;
        Ok(match map.bytes(key, Instant::now()) {
            None => CasOutcome::Missing,
            Some(current) if !current.starts_with(prefix) => CasOutcome::Conflict,
            Some(current) => {
                *current = value.to_vec();
                CasOutcome::Written
            }
        })
    }

    pub async fn delete_if_equals(&self, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let mut map = self.write()?;
        if map.bytes(key, Instant::now()).is_some_and(|v| v.as_slice() == value) {
            map.entries.remove(key);
            return Ok(true);
        }
        Ok(false)
    }

    pub async fn expire_if_equals(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut map = self.write()?;
        match map.live(key, now) {
            Some(entry) if matches!(&entry.data, Data::Bytes(b) if b.as_slice() == value) => {
                entry.expires_at = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut map = self.write()?;
        match map.live(key, now) {
            Some(Entry { data: Data::Set(set), expires_at }) => {
                set.insert(member.to_string());
                *expires_at = (*expires_at).max(now + ttl);
            }
            _ => map.insert(key, Data::Set(BTreeSet::from([member.to_string()])), ttl, now),
        }
        Ok(())
    }

    pub async fn set_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let mut map = self.lock()?;
        Ok(match map.live(key, Instant::now()) {
            Some(Entry { data: Data::Set(set), .. }) => set.iter().cloned().collect(),
            _ => Vec::new(),
        })
    }

    pub async fn set_remove(&self, key: &str, member: &str) -> Result<(), StoreError> {
        let mut map = self.write()?;
        if let Some(Entry { data: Data::Set(set), .. }) = map.live(key, Instant::now()) {
            set.remove(member);
            if set.is_empty() {
                map.entries.remove(key);
            }
        }
        Ok(())
    }
}
