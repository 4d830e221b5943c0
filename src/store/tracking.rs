//! The invalidation channel of the coherent local cache (docs/CONTRACT.md, "Storage").
//!
//! One RESP3 connection per instance with `CLIENT TRACKING ON` in the default mode makes every
//! cache fill's read. Redis then remembers which keys this connection read and pushes an
//! invalidation on the same connection when one of them changes for any reason (a write by any
//! client, expiry, eviction, `FLUSHALL`). Pushes are handed to the listener from inside the
//! connection's read loop (redis-rs calls the push sender synchronously there), so an
//! invalidation is applied in the order Redis sent it, right after the reply it follows.
//!
//! Why the default mode: only keys this instance has read are tracked (server memory: one
//! tracking-table entry per cached session), a refresh costs one message to each instance that
//! holds the session, and nothing else is sent. `BCAST PREFIX` needs no table but sends every
//! write under the prefix (session states, locks, pending logins, indexes) to every instance;
//! `OPTIN` would add a `CLIENT CACHING YES` per fill on a connection that only makes fills.
//! Figures in docs/BENCHMARKS.md.
//!
//! Whenever the channel is not known to be up the listener is told, and the cache empties and
//! stops filling: at start until tracking is on, when the connection drops (the read loop's
//! disconnection push), when the probe (`ROLE`, which also notices a primary demoted by a
//! failover) goes unanswered or says "replica", and across every reconnection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::Notify;

use super::StoreError;

/// How often the channel proves it is alive.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(25);

/// What the cache hears from the store.
pub trait ChangeListener: Send + Sync + 'static {
    /// Redis says this key changed (written, deleted, expired, evicted).
    fn invalidated(&self, key: &[u8]);
    /// Redis says every key may have changed (`FLUSHALL`, `FLUSHDB`).
    fn everything_invalidated(&self);
    /// This instance is about to write, or has written, this key.
    fn written_locally(&self, key: &str);
    /// The channel is up: tracking is on, fills may start.
    fn channel_up(&self);
    /// The channel is not known to be up: forget everything, fill nothing.
    fn channel_down(&self);
}

/// How the channel reaches Redis; given by the store, which knows the topology.
pub type ClientSource =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<redis::Client, StoreError>> + Send>> + Send + Sync>;

pub struct TrackingChannel {
    source: ClientSource,
    listener: Arc<dyn ChangeListener>,
    timeout: Duration,
    /// The tracked connection, present only while the channel is up.
    conn: RwLock<Option<MultiplexedConnection>>,
    /// Fired when the store saw the primary move (Sentinel): reconnect now.
    reset: Arc<Notify>,
}

/// What a tracked read found.
pub enum TrackedRead {
    /// The channel is not up: read the ordinary way, fill nothing.
    NotTracking,
    /// The value and its remaining time to live; `None`: no such key.
    Value(Option<(Vec<u8>, Duration)>),
}

impl TrackingChannel {
    /// Starts the channel's task on the current runtime; it ends when the channel is dropped.
    pub fn start(source: ClientSource, listener: Arc<dyn ChangeListener>, timeout: Duration) -> Arc<TrackingChannel> {
        listener.channel_down();
        let channel = Arc::new(TrackingChannel {
            source,
            listener,
            timeout,
            conn: RwLock::new(None),
            reset: Arc::new(Notify::new()),
        });
        tokio::spawn(supervise(Arc::downgrade(&channel)));
        channel
    }

    /// `GET` + `PTTL` on the tracked connection, so Redis tracks the key for this instance.
    pub async fn read(&self, key: &str) -> Result<TrackedRead, StoreError> {
        let Some(mut conn) = self.connection() else { return Ok(TrackedRead::NotTracking) };
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
        let read = pipe.query_async::<(Option<Vec<u8>>, i64)>(&mut conn);
        let (value, pttl) =
            tokio::time::timeout(self.timeout, read).await.map_err(|_| StoreError::Timeout(self.timeout))??;
        // A key without a time to live is not one bff wrote; never cache what has no end.
        Ok(match (value, u64::try_from(pttl)) {
            (Some(v), Ok(ms)) => TrackedRead::Value(Some((v, Duration::from_millis(ms)))),
            (Some(_), Err(_)) => TrackedRead::NotTracking,
            (None, _) => TrackedRead::Value(None),
        })
    }

    /// The store found that the primary moved (a failover): empty the cache now and track on
    /// the new primary, without waiting for the next probe.
    pub fn reset(&self) {
        self.set_connection(None);
        self.listener.channel_down();
        self.reset.notify_one();
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_connection(&self, conn: Option<MultiplexedConnection>) {
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = conn;
    }

    /// Connects with RESP3 and a push sender, turns tracking on and probes once.
    async fn open(&self) -> Result<Opened, StoreError> {
        // Bounded: the Sentinel look-up has no timeout of its own and holds the lock the store's
        // own reconnects need.
        let client = tokio::time::timeout(self.timeout, (self.source)())
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))??;
        let mut info = client.get_connection_info().clone();
        info.redis.protocol = redis::ProtocolVersion::RESP3;
        let client =
            redis::Client::open(info).map_err(|source| StoreError::Setup { what: "tracking client", source })?;
        let lost = Arc::new(Notify::new());
        let current = Arc::new(AtomicBool::new(true));
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_push_sender(push_handler(Arc::clone(&self.listener), Arc::clone(&lost), Arc::clone(&current)));
        let connect = async {
            let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
            redis::cmd("CLIENT").arg("SETNAME").arg("bff-tracking").query_async::<()>(&mut conn).await?;
            redis::cmd("CLIENT").arg("TRACKING").arg("ON").query_async::<()>(&mut conn).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        let opened = async {
            let mut conn =
                tokio::time::timeout(self.timeout, connect).await.map_err(|_| StoreError::Timeout(self.timeout))??;
            self.probe(&mut conn).await?;
            Ok(conn)
        }
        .await;
        match opened {
            Ok(conn) => Ok(Opened { conn, lost, current }),
            Err(e) => {
                current.store(false, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// `ROLE`, not `PING`: it also tells when the server tracked is no longer the primary (a
    /// Sentinel failover, or a DNS name or proxy that moved to another node), whose writes this
    /// connection would never hear of. A server that refuses `ROLE` never gets the channel up:
    /// every call then reads Redis, which is safe.
    async fn probe(&self, conn: &mut MultiplexedConnection) -> Result<(), StoreError> {
        let command = redis::cmd("ROLE");
        match tokio::time::timeout(self.timeout, command.query_async::<Vec<Value>>(conn)).await {
            Ok(Ok(role)) if matches!(role.first(), Some(Value::BulkString(r)) if r == b"master") => Ok(()),
            Ok(Ok(_)) => Err(StoreError::NotPrimary),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}

/// A tracked connection and what its read loop reports.
struct Opened {
    conn: MultiplexedConnection,
    /// Fires when the read loop sees the connection end.
    lost: Arc<Notify>,
    /// Cleared when the channel moves on to another connection, so a late disconnection of
    /// this one does not take the new one down.
    current: Arc<AtomicBool>,
}

/// Runs in the connection's read loop: must not block.
fn push_handler(
    listener: Arc<dyn ChangeListener>,
    lost: Arc<Notify>,
    current: Arc<AtomicBool>,
) -> impl Fn(PushInfo) -> Result<(), std::convert::Infallible> + Send + Sync + 'static {
    move |push: PushInfo| {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys) | Value::Set(keys)) => {
                    for key in keys {
                        match key {
                            Value::BulkString(key) => listener.invalidated(key),
                            // Not understood: assume the worst.
                            _ => listener.everything_invalidated(),
                        }
                    }
                }
                // A null list: everything (FLUSHALL / FLUSHDB).
                _ => listener.everything_invalidated(),
            },
            PushKind::Disconnection => {
                if current.load(Ordering::SeqCst) {
                    listener.channel_down();
                }
                lost.notify_one();
            }
            _ => {}
        }
        Ok(())
    }
}

/// Until the connection ends or a probe fails; `None` when the channel was dropped.
async fn watch(channel: &Weak<TrackingChannel>, opened: &Opened) -> Option<StoreError> {
    let mut conn = opened.conn.clone();
    let mut every = tokio::time::interval(PROBE_INTERVAL);
    every.tick().await;
    let reset_signal = Arc::clone(&channel.upgrade()?.reset);
    let reset = reset_signal.notified();
    tokio::pin!(reset);
    loop {
        tokio::select! {
            () = opened.lost.notified() => return Some(StoreError::ChannelClosed),
            () = &mut reset => return Some(StoreError::PrimaryMoved),
            _ = every.tick() => {
                let this = channel.upgrade()?;
                if let Err(e) = this.probe(&mut conn).await {
                    return Some(e);
                }
            }
        }
    }
}

async fn supervise(channel: Weak<TrackingChannel>) {
    let mut delay = FIRST_RECONNECT_DELAY;
    let mut was_up = false;
    let mut reported_failure = false;
    loop {
        let Some(this) = channel.upgrade() else { return };
        match this.open().await {
            Ok(opened) => {
                this.set_connection(Some(opened.conn.clone()));
                this.listener.channel_up();
                if was_up || reported_failure {
                    tracing::info!("token cache: invalidation channel is back; cached token sets are used again");
                }
                was_up = true;
                reported_failure = false;
                delay = FIRST_RECONNECT_DELAY;
                // Only a weak reference while watching, so dropping the store ends the task.
                drop(this);
                let Some(reason) = watch(&channel, &opened).await else { return };
                opened.current.store(false, Ordering::SeqCst);
                let Some(this) = channel.upgrade() else { return };
                this.set_connection(None);
                this.listener.channel_down();
                tracing::warn!(
                    "token cache: invalidation channel lost ({reason}); cache emptied, every call reads Redis until it is back"
                );
            }
            Err(e) => {
                this.set_connection(None);
                this.listener.channel_down();
                if !reported_failure {
                    tracing::warn!(
                        "token cache: invalidation channel not up ({e}); every call reads Redis until it is"
                    );
                    reported_failure = true;
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
    }
}
