//! The key-value store behind sessions, token sets, pending logins and refresh locks: Redis
//! (shared by every instance) or memory (one instance only). Both give the same atomic
//! primitives, and one conformance suite (`tests/store_conformance.rs`) runs against both.
//!
//! Values are opaque bytes here; encryption happens a layer up (`crypto::Sealer`).

mod memory;
mod redis;
mod tracking;

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;

pub use memory::MemoryStore;
pub use redis::{RedisStore, RedisTopology};
pub use tracking::{ChangeListener, TrackedRead};

/// The store could not be reached, did not answer in time, or refused a command. Callers
/// answer 503. The cause stays attached (`source()`); logs print the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable")]
    Redis(#[from] ::redis::RedisError),
    #[error("session store did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// A connection attempt failed moments ago; callers fail at once until the hold-off ends.
    #[error("session store not connected (reconnecting)")]
    HeldOff,
    /// The configured addresses do not make a valid client (the cause never repeats the URL).
    #[error("invalid session store set-up ({what})")]
    Setup {
        what: &'static str,
        #[source]
        source: ::redis::RedisError,
    },
    #[error("cannot encode {what}")]
    Encoding {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("the tracked server is not the primary")]
    NotPrimary,
    #[error("the invalidation channel's connection closed")]
    ChannelClosed,
    #[error("the primary moved")]
    PrimaryMoved,
    #[error("the store's connection task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("the store was dropped")]
    Dropped,
    /// A TLS handshake with Redis failed on a certificate: a set-up mistake, named by its key.
    #[error("{0}")]
    Certificate(String),
}

/// Why a store does not keep a local cache coherent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untracked {
    /// One process holds everything (the in-memory store): there is nothing to cache.
    NotNeeded,
    /// This Redis set-up cannot tell of changes (why, for the log): every call reads it.
    Unsupported(&'static str),
}

/// Result of a compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    Written,
    /// The current value did not match: someone else wrote first.
    Conflict,
    Missing,
}

#[derive(Clone)]
enum Backend {
    Redis(RedisStore),
    Memory(MemoryStore),
}

/// A store, with its operations timed and counted when metrics are attached.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    metrics: Option<Arc<Metrics>>,
    /// Told of this instance's writes (the coherent local cache).
    listener: Option<Arc<dyn ChangeListener>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

/// Each backend's future is boxed: a Redis command's future is ~4 KB, and inlined it made every
/// future that may touch the store as large — the proxy's handler future among them (~8 KB),
/// copied whole when actix boxes it, on every call, though the steady state (a cache hit) makes
/// no store command at all. A store command now costs one allocation instead.
macro_rules! dispatch {
    ($self:ident, $op:literal, $s:ident => $call:expr) => {{
        let started = std::time::Instant::now();
        let result = match &$self.backend {
            Backend::Redis($s) => Box::pin($call).await,
            Backend::Memory($s) => Box::pin($call).await,
        };
        if let Some(metrics) = &$self.metrics {
            metrics.store_op($op, started.elapsed(), result.is_ok());
        }
        result
    }};
}

impl Store {
    pub fn redis(store: RedisStore) -> Store {
        Store { backend: Backend::Redis(store), metrics: None, listener: None }
    }

    pub fn memory(store: MemoryStore) -> Store {
        Store { backend: Backend::Memory(store), metrics: None, listener: None }
    }

    /// The same store, reporting to `metrics`.
    pub fn observed_by(self, metrics: Arc<Metrics>) -> Store {
        Store { metrics: Some(metrics), ..self }
    }

    /// The same store, keeping `listener` told of changes: this instance's writes at once, and
    /// every change in Redis through the invalidation channel. `Err` says why this store cannot
    /// tell of changes made elsewhere (every call then reads it).
    pub fn track_changes(self, listener: Arc<dyn ChangeListener>) -> (Store, Result<(), Untracked>) {
        let tracking = match &self.backend {
            Backend::Redis(redis) => redis.start_tracking(Arc::clone(&listener)).map_err(Untracked::Unsupported),
            Backend::Memory(_) => Err(Untracked::NotNeeded),
        };
        let listener = tracking.is_ok().then_some(listener);
        (Store { listener, ..self }, tracking)
    }

    /// A read on the invalidation channel's connection, so the value may be cached.
    pub async fn read_tracked(&self, key: &str) -> Result<TrackedRead, StoreError> {
        dispatch!(self, "read_tracked", s => s.read_tracked(key))
    }

    /// Tells the listener of a write now and again when the guard is dropped — after the write,
    /// or when the write's future is dropped midway: a fill racing the write is refused, and one
    /// that read the old value just before it is dropped. The lock operations (`set_if_absent`,
    /// `delete_if_equals`, `expire_if_equals`) and set indexes never hold token sets and do not
    /// tell; `expire` only lengthens a life, and Redis' invalidation brings the new one.
    fn writing<'a>(&'a self, keys: &'a [&'a str]) -> Writing<'a> {
        let writing = Writing { listener: self.listener.as_ref(), keys };
        writing.tell();
        writing
    }

    /// Why the last connection attempt failed, when that is a certificate problem an operator
    /// must fix (it names the configuration key); `None` once a connection succeeds.
    pub fn setup_problem(&self) -> Option<String> {
        match &self.backend {
            Backend::Redis(redis) => redis.certificate_problem(),
            Backend::Memory(_) => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Redis(_) => "redis",
            Backend::Memory(_) => "memory",
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, "ping", s => s.ping())
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        dispatch!(self, "get", s => s.get(key))
    }

    /// The value and its remaining time to live, in one round trip.
    pub async fn get_with_ttl(&self, key: &str) -> Result<Option<(Vec<u8>, Duration)>, StoreError> {
        dispatch!(self, "get_with_ttl", s => s.get_with_ttl(key))
    }

    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let keys = [key];
        let _after = self.writing(&keys);
        dispatch!(self, "set", s => s.set(key, value, ttl))
    }

    /// Writes only when the key exists; false when it does not.
    pub async fn set_if_exists(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        let keys = [key];
        let _after = self.writing(&keys);
        dispatch!(self, "set_if_exists", s => s.set_if_exists(key, value, ttl))
    }

    /// Writes only when the key is absent; false when it exists (a lock taken by someone else).
    pub async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        dispatch!(self, "set_if_absent", s => s.set_if_absent(key, value, ttl))
    }

    /// Reads and deletes in one step: a value can be taken once.
    pub async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let keys = [key];
        let _after = self.writing(&keys);
        dispatch!(self, "take", s => s.take(key))
    }

    /// Deletes keys. Several keys must share one hash tag (one Redis Cluster slot).
    pub async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let _after = self.writing(&names);
        dispatch!(self, "delete", s => s.delete(keys))
    }

    /// Sets the time to live of keys that exist. Several keys must share one hash tag.
    /// A cached value is not dropped for a new time to live: Redis' invalidation (an expire
    /// is a change) brings the new one.
    pub async fn expire(&self, keys: &[String], ttl: Duration) -> Result<(), StoreError> {
        dispatch!(self, "expire", s => s.expire(keys, ttl))
    }

    /// Replaces the value, keeping its time to live, when the current value starts with
    /// `expected_prefix`.
    pub async fn replace_if_prefix(
        &self,
        key: &str,
        expected_prefix: &[u8],
        value: &[u8],
    ) -> Result<CasOutcome, StoreError> {
        let keys = [key];
        let _after = self.writing(&keys);
        dispatch!(self, "replace_if_prefix", s => s.replace_if_prefix(key, expected_prefix, value))
    }

    /// Deletes the key when it holds `value` (a lock released by its owner only).
    pub async fn delete_if_equals(&self, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        dispatch!(self, "delete_if_equals", s => s.delete_if_equals(key, value))
    }

    /// Renews the time to live when the key holds `value` (a lock lease renewed by its owner).
    pub async fn expire_if_equals(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        dispatch!(self, "expire_if_equals", s => s.expire_if_equals(key, value, ttl))
    }

    /// Adds a member to a set and makes the set live at least `ttl` (never shortens it).
    pub async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        dispatch!(self, "set_add", s => s.set_add(key, member, ttl))
    }

    pub async fn set_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        dispatch!(self, "set_members", s => s.set_members(key))
    }

    pub async fn set_remove(&self, key: &str, member: &str) -> Result<(), StoreError> {
        dispatch!(self, "set_remove", s => s.set_remove(key, member))
    }
}

#[must_use]
struct Writing<'a> {
    listener: Option<&'a Arc<dyn ChangeListener>>,
    keys: &'a [&'a str],
}

impl Writing<'_> {
    fn tell(&self) {
        if let Some(listener) = self.listener {
            for key in self.keys {
                listener.written_locally(key);
            }
        }
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.tell();
    }
}

fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
