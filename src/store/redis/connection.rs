//! Where the data lives and how bff stays connected to it: one server, a primary found through
//! Sentinel, or a Cluster, behind bounded connect and response timeouts, a short reconnect
//! hold-off, and a deadline on every operation, so a Redis outage turns into fast 503s instead
//! of hung requests. The connection is made lazily: start-up never fails because Redis is down,
//! and the first request after it comes back reconnects. The commands are in `mod.rs`.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{ConnectionInfo, RedisFuture, TlsCertificates, TlsMode, Value};
use secrecy::{ExposeSecret, SecretString};

use super::Scripts;
use crate::store::StoreError;
use crate::store::tracking::{ChangeListener, ClientSource, TrackedRead, TrackingChannel};

/// After a failed connection attempt, callers fail at once for this long instead of each
/// waiting for their own connect timeout.
const RECONNECT_HOLD_OFF: Duration = Duration::from_millis(500);

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
pub(super) enum Conn {
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

pub(super) struct Inner {
    target: Target,
    conn: tokio::sync::RwLock<Option<Conn>>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
    last_failure: Mutex<Option<Instant>>,
    pub(super) timeout: Duration,
    pub(super) scripts: Scripts,
    runtime: Option<tokio::runtime::Handle>,
    /// The coherent local cache's invalidation channel, once started.
    tracking: OnceLock<Arc<TrackingChannel>>,
    /// The last connection attempt's certificate problem (see `certificate_problem`).
    certificate_problem: Mutex<Option<String>>,
}

#[derive(Clone)]
pub struct RedisStore {
    pub(super) inner: Arc<Inner>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempts {
    Once,
    RetryOnLostConnection,
}

/// A failed handshake because of a certificate, told in terms of the configuration. rustls'
/// errors reach us only as text inside the redis crate's I/O error, hence the matching on it.
fn certificate_problem(e: &redis::RedisError) -> Option<String> {
    let text = e.to_string();
    if text.contains("invalid peer certificate") {
        return Some(format!(
            "session.redis_ca_file: the Redis server's TLS certificate does not verify against it (or, unset, \
             against the system's roots): {}",
            e.detail().unwrap_or(&text)
        ));
    }
    // rustls refused the pair (a key that is not the certificate's, a certificate it cannot read).
    if text.contains("Unable to build client with TLS parameters") {
        return Some(format!(
            "session.redis_client_cert_file: the client certificate and session.redis_client_key_file are not \
             usable together: {}",
            e.detail().unwrap_or(&text)
        ));
    }
    // The server's alerts about ours: CertificateRequired, BadCertificate, UnknownCA, …
    let alert = text.split_once("received fatal alert: ").map(|(_, alert)| alert.to_ascii_lowercase());
    if alert.is_some_and(|a| a.contains("certificate") || a.starts_with("unknownca")) {
        return Some(format!(
            "session.redis_client_cert_file: the Redis server refused bff's client certificate (or wants one): {}",
            e.detail().unwrap_or(&text)
        ));
    }
    None
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

/// A client for one server, with the configured CA and client certificate when its URL is
/// `rediss://` (the configuration refuses them otherwise).
fn open_client_with(url: &SecretString, certs: Option<&TlsCertificates>) -> Result<redis::Client, StoreError> {
    match certs {
        Some(certs) => redis::Client::build_with_tls(url.expose_secret(), certs.clone()).map_err(|source| {
            StoreError::Setup { what: "Redis TLS (session.redis_ca_file, redis_client_cert_file)", source }
        }),
        None => open_client(url),
    }
}

/// Sentinel over TLS: the sentinels and the primary (and replicas) they name are all reached by
/// TLS, trusting the configured CA and presenting the client certificate. The builder applies one
/// set of credentials to every sentinel and one to the data nodes: the first URL's, as without TLS.
fn tls_sentinel(
    infos: &[ConnectionInfo],
    service: &str,
    certs: Option<&TlsCertificates>,
) -> Result<SentinelClient, StoreError> {
    let setup = |source| StoreError::Setup { what: "Sentinel", source };
    let mut builder = SentinelClientBuilder::new(
        infos.iter().map(|i| i.addr.clone()),
        service.to_string(),
        SentinelServerType::Master,
    )
    .map_err(setup)?
    .set_client_to_sentinel_tls_mode(TlsMode::Secure)
    .set_client_to_redis_tls_mode(TlsMode::Secure);
    if let Some(first) = infos.first() {
        let redis = &first.redis;
        builder = builder.set_client_to_redis_db(redis.db).set_client_to_redis_protocol(redis.protocol);
        if let Some(username) = &redis.username {
            builder = builder
                .set_client_to_sentinel_username(username.clone())
                .set_client_to_redis_username(username.clone());
        }
        if let Some(password) = &redis.password {
            builder = builder
                .set_client_to_sentinel_password(password.clone())
                .set_client_to_redis_password(password.clone());
        }
    }
    if let Some(certs) = certs {
        builder =
            builder.set_client_to_sentinel_certificates(certs.clone()).set_client_to_redis_certificates(certs.clone());
    }
    builder.build().map_err(setup)
}

impl RedisStore {
    /// One Redis server; parses the URL, does not connect.
    pub fn new(url: &SecretString, timeout: Duration) -> Result<RedisStore, StoreError> {
        RedisStore::with_topology(&RedisTopology::Single(url.clone()), timeout)
    }

    /// Parses the addresses; does not connect.
    pub fn with_topology(topology: &RedisTopology, timeout: Duration) -> Result<RedisStore, StoreError> {
        RedisStore::with_tls(topology, None, timeout)
    }

    /// Parses the addresses; does not connect. `certs`: the CA and client certificate for
    /// `rediss://` URLs (`None`: the system's roots, no client certificate).
    pub fn with_tls(
        topology: &RedisTopology,
        certs: Option<&TlsCertificates>,
        timeout: Duration,
    ) -> Result<RedisStore, StoreError> {
        let target = match topology {
            RedisTopology::Single(url) => Target::Single(open_client_with(url, certs)?),
            RedisTopology::Sentinel { sentinels, service } => {
                let infos = sentinels
                    .iter()
                    .map(|u| open_client(u).map(|c| c.get_connection_info().clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                if infos.iter().any(|i| matches!(i.addr, redis::ConnectionAddr::TcpTls { .. })) {
                    let client = tls_sentinel(&infos, service, certs)?;
                    return Ok(RedisStore::from_target(Target::Sentinel(tokio::sync::Mutex::new(client)), timeout));
                }
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
                let mut builder =
                    ClusterClient::builder(infos).connection_timeout(timeout).response_timeout(timeout).retries(2);
                if let Some(certs) = certs {
                    builder = builder.certs(certs.clone());
                }
                let client = builder.build().map_err(|source| StoreError::Setup { what: "Cluster", source })?;
                Target::Cluster(client)
            }
        };
        Ok(RedisStore::from_target(target, timeout))
    }

    fn from_target(target: Target, timeout: Duration) -> RedisStore {
        RedisStore {
            inner: Arc::new(Inner {
                target,
                conn: tokio::sync::RwLock::new(None),
                connecting: tokio::sync::Mutex::new(()),
                last_failure: Mutex::new(None),
                timeout,
                scripts: Scripts::new(),
                runtime: tokio::runtime::Handle::try_current().ok(),
                tracking: OnceLock::new(),
                certificate_problem: Mutex::new(None),
            }),
        }
    }

    /// Why connections fail, when a certificate is the reason (the key to fix); else `None`.
    pub fn certificate_problem(&self) -> Option<String> {
        self.inner.certificate_problem.lock().ok().and_then(|p| p.clone())
    }

    /// Remembers (or clears) a certificate problem of a connection attempt, and says it as such.
    fn note_attempt(inner: &Inner, result: Result<Conn, StoreError>) -> Result<Conn, StoreError> {
        let problem = match &result {
            Err(StoreError::Redis(e)) => certificate_problem(e),
            _ => None,
        };
        if let Ok(mut last) = inner.certificate_problem.lock() {
            last.clone_from(&problem);
        }
        match problem {
            Some(problem) => {
                tracing::error!("{problem}");
                Err(StoreError::Certificate(problem))
            }
            None => result,
        }
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
            let conn = RedisStore::note_attempt(&inner, RedisStore::connect(&inner).await)?;
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
    pub(super) async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_with(Attempts::RetryOnLostConnection, op).await
    }

    /// For operations whose repetition after a lost reply would change the outcome (`GETDEL`,
    /// `SET NX`): one attempt.
    pub(super) async fn run_once<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
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

    /// For the hot read of every proxied call. On a single server it goes through a connection
    /// owned by the calling thread (an actix worker), whose driver runs on that thread's
    /// runtime: the shared connection's driver lives on the main runtime, and reaching it costs
    /// two cross-thread wake-ups per call, which at load cost more CPU than the read itself.
    /// Commands queued by the requests of one event-loop turn also leave in one write.
    pub(super) async fn run_on_thread_connection<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let deadline = self.inner.timeout;
        let attempt = async {
            if let Some(conn) = self.thread_connection().await {
                match op(Conn::Single(conn)).await {
                    Ok(reply) => return Ok(reply),
                    // Next time, a new connection (this one's runtime may be gone); now, the
                    // shared one, which also heals itself after a restart of Redis.
                    Err(e) if connection_lost(&e) => self.forget_thread_connection(),
                    Err(e) => return Err(StoreError::Redis(e)),
                }
            }
            self.run(op).await
        };
        tokio::time::timeout(deadline, attempt).await.map_err(|_| {
            self.forget_thread_connection();
            StoreError::Timeout(deadline)
        })?
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
}
