//! Redis behind a tuned `ConnectionManager`: bounded connect and response timeouts, a short
//! reconnect backoff, and a deadline on every operation, so a Redis outage turns into fast 503s
//! instead of hung requests. The connection is made lazily: start-up never fails because Redis
//! is down, and the first request after it comes back reconnects.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{RedisFuture, Script, Value};
use secrecy::{ExposeSecret, SecretString};

use super::tracking::{ChangeListener, ClientSource, TrackedRead, TrackingChannel};
use super::{CasOutcome, StoreError, ttl_millis};

/// After a failed connection attempt, callers fail at once for this long instead of each
/// waiting for their own connect timeout.
const RECONNECT_HOLD_OFF: Duration = Duration::from_millis(500);

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

/// Where the data lives.
pub enum RedisTopology {
    /// One server (or a proxy in front of several).
    Single(SecretString),
    /// A primary found through Sentinel; after a failover, the new primary is looked up again.
    Sentinel { sentinels: Vec<SecretString>, service: String },
    /// A Redis Cluster; the client follows slot moves and failovers itself.
    Cluster(Vec<SecretString>),
}

enum Target {
    Single(redis::Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    Cluster(ClusterClient),
}

/// A live connection of any topology; all speak the same commands.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Sentinel(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

thread_local! {
    /// Each thread's own connection per store, for the proxy's hot read (see
    /// `RedisStore::get_with_ttl`).
    static THREAD_CONNECTIONS: RefCell<Vec<(Weak<Inner>, ConnectionManager)>> = const { RefCell::new(Vec::new()) };
}

struct Inner {
    target: Target,
    conn: tokio::sync::RwLock<Option<Conn>>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
    last_failure: Mutex<Option<Instant>>,
    timeout: Duration,
    scripts: Scripts,
    runtime: Option<tokio::runtime::Handle>,
    /// The coherent local cache's invalidation channel, once started.
    tracking: OnceLock<Arc<TrackingChannel>>,
}

#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempts {
    Once,
    RetryOnLostConnection,
}

fn connection_lost(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// Bounded connect and response times, and no retries inside the manager: its backoff starts at
/// one second, and operations would wait out that backoff after Redis is back. One attempt per
/// reconnect; the next operation that finds the connection broken starts the next one.
fn manager_config(timeout: Duration) -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
        .set_number_of_retries(0)
}

// The URLs may carry passwords: errors name the problem, never the value.
fn open_client(url: &SecretString) -> Result<redis::Client, StoreError> {
    redis::Client::open(url.expose_secret()).map_err(|source| StoreError::Setup { what: "Redis URL", source })
}

impl RedisStore {
    /// One Redis server; parses the URL, does not connect.
    pub fn new(url: &SecretString, timeout: Duration) -> Result<RedisStore, StoreError> {
        RedisStore::with_topology(&RedisTopology::Single(url.clone()), timeout)
    }

    /// Parses the addresses; does not connect.
    pub fn with_topology(topology: &RedisTopology, timeout: Duration) -> Result<RedisStore, StoreError> {
        let target = match topology {
            RedisTopology::Single(url) => Target::Single(open_client(url)?),
            RedisTopology::Sentinel { sentinels, service } => {
                let infos = sentinels
                    .iter()
                    .map(|u| open_client(u).map(|c| c.get_connection_info().clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                // The primary and replicas take the credentials of the sentinels' URLs.
                let node = infos.first().map(|i| SentinelNodeConnectionInfo {
                    tls_mode: None,
                    redis_connection_info: Some(i.redis.clone()),
                });
                let client = SentinelClient::build(infos, service.clone(), node, SentinelServerType::Master)
                    .map_err(|source| StoreError::Setup { what: "Sentinel", source })?;
                Target::Sentinel(tokio::sync::Mutex::new(client))
            }
            RedisTopology::Cluster(nodes) => {
                let infos = nodes
                    .iter()
                    .map(|u| open_client(u).map(|c| c.get_connection_info().clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                let client = ClusterClient::builder(infos)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .build()
                    .map_err(|source| StoreError::Setup { what: "Cluster", source })?;
                Target::Cluster(client)
            }
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                target,
                conn: tokio::sync::RwLock::new(None),
                connecting: tokio::sync::Mutex::new(()),
                last_failure: Mutex::new(None),
                timeout,
                scripts: Scripts {
                    replace_if_prefix: Script::new(REPLACE_IF_PREFIX),
                    delete_if_equals: Script::new(DELETE_IF_EQUALS),
                    expire_if_equals: Script::new(EXPIRE_IF_EQUALS),
                    set_add: Script::new(SET_ADD_KEEP_LONGEST),
                },
                runtime: tokio::runtime::Handle::try_current().ok(),
                tracking: OnceLock::new(),
            }),
        })
    }

    /// Starts the invalidation channel for the coherent local cache; `Err` says why this
    /// topology reads Redis on every call instead.
    pub fn start_tracking(&self, listener: Arc<dyn ChangeListener>) -> Result<(), &'static str> {
        let weak = Arc::downgrade(&self.inner);
        let source: ClientSource = match &self.inner.target {
            Target::Single(client) => {
                let client = client.clone();
                Arc::new(move || Box::pin(std::future::ready(Ok(client.clone()))))
            }
            Target::Sentinel(_) => Arc::new(move || {
                let weak = weak.clone();
                Box::pin(async move {
                    let inner = weak.upgrade().ok_or(StoreError::Dropped)?;
                    let Target::Sentinel(sentinel) = &inner.target else {
                        return Err(StoreError::Dropped);
                    };
                    let client = sentinel.lock().await.async_get_client().await;
                    Ok(client?)
                })
            }),
            Target::Cluster(_) => return Err("per-node tracking is not implemented for Redis Cluster"),
        };
        let channel = TrackingChannel::start(source, listener, self.inner.timeout);
        self.inner.tracking.set(channel).map_err(|_| "tracking already started")
    }

    /// A read made on the tracked connection (see `tracking`).
    pub async fn read_tracked(&self, key: &str) -> Result<TrackedRead, StoreError> {
        match self.inner.tracking.get() {
            Some(channel) => channel.read(key).await,
            None => Ok(TrackedRead::NotTracking),
        }
    }

    async fn connect(inner: &Inner) -> Result<Conn, StoreError> {
        let timeout = inner.timeout;
        let attempt = async {
            match &inner.target {
                Target::Single(client) => client
                    .get_connection_manager_with_config(manager_config(timeout))
                    .await
                    .map(Conn::Single)
                    .map_err(StoreError::from),
                Target::Sentinel(sentinel) => {
                    let client = sentinel.lock().await.async_get_client().await.map_err(StoreError::from)?;
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(timeout)
                        .set_response_timeout(timeout);
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(Conn::Sentinel)
                        .map_err(StoreError::from)
                }
                Target::Cluster(client) => {
                    client.get_async_connection().await.map(Conn::Cluster).map_err(StoreError::from)
                }
            }
        };
        tokio::time::timeout(timeout, attempt).await.map_err(|_| StoreError::Timeout(timeout))?
    }

    async fn connection(&self) -> Result<Conn, StoreError> {
        if let Some(conn) = self.inner.conn.read().await.as_ref() {
            return Ok(conn.clone());
        }
        if self.held_off() {
            return Err(StoreError::HeldOff);
        }
        let inner = Arc::clone(&self.inner);
        let connect = async move {
            let _one_at_a_time = inner.connecting.lock().await;
            if let Some(conn) = inner.conn.read().await.as_ref() {
                return Ok(conn.clone());
            }
            let conn = RedisStore::connect(&inner).await?;
            *inner.conn.write().await = Some(conn.clone());
            Ok(conn)
        };
        // The connection's driver task lives on the runtime that makes it. Make it on the
        // runtime that built the store (the main one), not on whichever worker asked first:
        // workers stop at shutdown, and the store is still needed then (releasing locks).
        let result = match &self.inner.runtime {
            Some(runtime) => runtime.spawn(connect).await.unwrap_or_else(|e| Err(StoreError::Task(e))),
            None => connect.await,
        };
        if result.is_err() {
            self.note_failure();
        }
        result
    }

    fn held_off(&self) -> bool {
        self.inner.last_failure.lock().map(|t| t.is_some_and(|t| t.elapsed() < RECONNECT_HOLD_OFF)).unwrap_or(false)
    }

    fn note_failure(&self) {
        if let Ok(mut last) = self.inner.last_failure.lock() {
            *last = Some(Instant::now());
        }
    }

    /// After a failure that may mean the primary moved (Sentinel failover), forget the
    /// connection so the next operation asks the sentinels again. Single servers and clusters
    /// reconnect and follow failovers by themselves.
    async fn forget_connection_if_stale(&self, e: &redis::RedisError) {
        let stale = connection_lost(e) || e.kind() == redis::ErrorKind::ReadOnly;
        if stale && matches!(self.inner.target, Target::Sentinel(_)) {
            *self.inner.conn.write().await = None;
            if let Some(channel) = self.inner.tracking.get() {
                channel.reset();
            }
        }
    }

    /// Runs one round trip under the operation deadline. A connection that was lost (Redis
    /// restarted) is re-established by the first operation that finds it broken; that operation
    /// is tried once more on the new connection, so it is not the request that pays for it.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_with(Attempts::RetryOnLostConnection, op).await
    }

    /// For operations whose repetition after a lost reply would change the outcome (`GETDEL`,
    /// `SET NX`): one attempt.
    async fn run_once<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_with(Attempts::Once, op).await
    }

    async fn run_with<T, F, Fut>(&self, attempts: Attempts, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let deadline = self.inner.timeout;
        let attempt = async {
            let mut retried = false;
            loop {
                let conn = self.connection().await?;
                match op(conn).await {
                    Ok(value) => return Ok(value),
                    Err(e) => {
                        self.forget_connection_if_stale(&e).await;
                        if attempts == Attempts::Once || retried || !connection_lost(&e) {
                            return Err(StoreError::Redis(e));
                        }
                        retried = true;
                    }
                }
            }
        };
        tokio::time::timeout(deadline, attempt).await.map_err(|_| StoreError::Timeout(deadline))?
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await.map(drop) }).await
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await }).await
    }

    /// The hot read of every proxied call. On a single server it goes through a connection owned
    /// by the calling thread (an actix worker), whose driver runs on that thread's runtime: the
    /// shared connection's driver lives on the main runtime, and reaching it costs two
    /// cross-thread wake-ups per call, which at load cost more CPU than the read itself. Commands
    /// queued by the requests of one event-loop turn also leave in one write.
    pub async fn get_with_ttl(&self, key: &str) -> Result<Option<(Vec<u8>, Duration)>, StoreError> {
        let read = |mut c: Conn| async move {
            redis::pipe().cmd("GET").arg(key).cmd("PTTL").arg(key).query_async::<(Option<Vec<u8>>, i64)>(&mut c).await
        };
        let deadline = self.inner.timeout;
        let attempt = async {
            if let Some(conn) = self.thread_connection().await {
                match read(Conn::Single(conn)).await {
                    Ok(reply) => return Ok(reply),
                    // Next time, a new connection (this one's runtime may be gone); now, the
                    // shared one, which also heals itself after a restart of Redis.
                    Err(e) if connection_lost(&e) => self.forget_thread_connection(),
                    Err(e) => return Err(StoreError::Redis(e)),
                }
            }
            self.run(read).await
        };
        let (value, pttl) = tokio::time::timeout(deadline, attempt).await.map_err(|_| {
            self.forget_thread_connection();
            StoreError::Timeout(deadline)
        })??;
        Ok(value.map(|v| (v, Duration::from_millis(u64::try_from(pttl).unwrap_or(0)))))
    }

    /// This thread's connection to a single server, made on first use once the shared
    /// connection exists. `None`: use the shared connection.
    async fn thread_connection(&self) -> Option<ConnectionManager> {
        let Target::Single(client) = &self.inner.target else { return None };
        let mine = Arc::downgrade(&self.inner);
        let existing = THREAD_CONNECTIONS.with(|all| {
            all.borrow().iter().find(|(store, _)| Weak::ptr_eq(store, &mine)).map(|(_, conn)| conn.clone())
        });
        if existing.is_some() {
            return existing;
        }
        if self.held_off() || self.inner.conn.read().await.is_none() {
            return None;
        }
        let Ok(conn) = client.get_connection_manager_with_config(manager_config(self.inner.timeout)).await else {
            self.note_failure();
            return None;
        };
        THREAD_CONNECTIONS.with(|all| {
            let mut all = all.borrow_mut();
            all.retain(|(store, _)| store.strong_count() > 0);
            all.push((mine, conn.clone()));
        });
        Some(conn)
    }

    fn forget_thread_connection(&self) {
        let mine = Arc::downgrade(&self.inner);
        THREAD_CONNECTIONS.with(|all| all.borrow_mut().retain(|(store, _)| !Weak::ptr_eq(store, &mine)));
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
