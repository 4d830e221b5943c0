//! Redis as bff's store: the commands, and the Lua scripts that make the compare-and-set
//! operations atomic. Connecting, topologies and deadlines are `connection`'s.

mod connection;

use std::time::Duration;

use redis::{Script, Value};

use super::{CasOutcome, StoreError, ttl_millis};
use connection::Conn;

pub use connection::{RedisStore, RedisTopology};

const REPLACE_IF_PREFIX: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
if string.sub(cur, 1, string.len(ARGV[1])) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1";

const DELETE_IF_EQUALS: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

const EXPIRE_IF_EQUALS: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0";

/// Adds to a set and extends its life to at least the given TTL, never shortening it.
const SET_ADD_KEEP_LONGEST: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1";

struct Scripts {
    replace_if_prefix: Script,
    delete_if_equals: Script,
    expire_if_equals: Script,
    set_add: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            replace_if_prefix: Script::new(REPLACE_IF_PREFIX),
            delete_if_equals: Script::new(DELETE_IF_EQUALS),
            expire_if_equals: Script::new(EXPIRE_IF_EQUALS),
            set_add: Script::new(SET_ADD_KEEP_LONGEST),
        }
    }
}

/// The condition of a conditional `SET`.
#[derive(Clone, Copy)]
enum Only {
    IfExists,
    IfAbsent,
}

impl Only {
    fn arg(self) -> &'static str {
        match self {
            Only::IfExists => "XX",
            Only::IfAbsent => "NX",
        }
    }
}

impl RedisStore {
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await.map(drop) }).await
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await }).await
    }

    /// The hot read of every proxied call (on this thread's own connection: see
    /// `run_on_thread_connection`).
    pub async fn get_with_ttl(&self, key: &str) -> Result<Option<(Vec<u8>, Duration)>, StoreError> {
        let read = |mut c: Conn| async move {
            redis::pipe().cmd("GET").arg(key).cmd("PTTL").arg(key).query_async::<(Option<Vec<u8>>, i64)>(&mut c).await
        };
        let (value, pttl) = self.run_on_thread_connection(read).await?;
        Ok(value.map(|v| (v, Duration::from_millis(u64::try_from(pttl).unwrap_or(0)))))
    }

    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        self.run(|mut c| async move {
            redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ttl_millis(ttl)).query_async::<()>(&mut c).await
        })
        .await
    }

    async fn set_conditional(&self, key: &str, value: &[u8], ttl: Duration, only: Only) -> Result<bool, StoreError> {
        let op = |mut c: Conn| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_millis(ttl))
                .arg(only.arg())
                .query_async(&mut c)
                .await
        };
        // A lost reply to `SET NX` would make the retry see our own write as someone else's.
        let reply: Value = match only {
            Only::IfAbsent => self.run_once(op).await?,
            Only::IfExists => self.run(op).await?,
        };
        Ok(!matches!(reply, Value::Nil))
    }

    pub async fn set_if_exists(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        self.set_conditional(key, value, ttl, Only::IfExists).await
    }

    pub async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        self.set_conditional(key, value, ttl, Only::IfAbsent).await
    }

    pub async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run_once(|mut c| async move { redis::cmd("GETDEL").arg(key).query_async(&mut c).await }).await
    }

    pub async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.run(|mut c| async move { redis::cmd("DEL").arg(keys).query_async::<()>(&mut c).await }).await
    }

    pub async fn expire(&self, keys: &[String], ttl: Duration) -> Result<(), StoreError> {
        let ms = ttl_millis(ttl);
        self.run(|mut c| async move {
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.cmd("PEXPIRE").arg(key).arg(ms).ignore();
            }
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    pub async fn replace_if_prefix(&self, key: &str, prefix: &[u8], value: &[u8]) -> Result<CasOutcome, StoreError> {
        let script = &self.inner.scripts.replace_if_prefix;
        let code: i64 =
            self.run(|mut c| async move { script.key(key).arg(prefix).arg(value).invoke_async(&mut c).await }).await?;
        Ok(match code {
            1 => CasOutcome::Written,
            0 => CasOutcome::Conflict,
            _ => CasOutcome::Missing,
        })
    }

    pub async fn delete_if_equals(&self, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let script = &self.inner.scripts.delete_if_equals;
        let n: i64 = self.run(|mut c| async move { script.key(key).arg(value).invoke_async(&mut c).await }).await?;
        Ok(n == 1)
    }

    pub async fn expire_if_equals(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        let script = &self.inner.scripts.expire_if_equals;
        let ms = ttl_millis(ttl);
        let n: i64 =
            self.run(|mut c| async move { script.key(key).arg(value).arg(ms).invoke_async(&mut c).await }).await?;
        Ok(n == 1)
    }

    pub async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        let script = &self.inner.scripts.set_add;
        let ms = ttl_millis(ttl);
        self.run(|mut c| async move { script.key(key).arg(member).arg(ms).invoke_async::<i64>(&mut c).await })
            .await
            .map(drop)
    }

    pub async fn set_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        self.run(|mut c| async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await }).await
    }

    pub async fn set_remove(&self, key: &str, member: &str) -> Result<(), StoreError> {
        self.run(|mut c| async move { redis::cmd("SREM").arg(key).arg(member).query_async::<()>(&mut c).await }).await
    }
}
