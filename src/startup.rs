//! Building the application: stores, provider client, token manager, routes and middleware.

use crate::clock::Clock;
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};

use crate::config::Config;
use crate::crypto::Sealer;
use crate::http::{observe, security_headers};
use crate::limits::RateLimiter;
use crate::metrics::{CacheMode, CacheName, Metrics};
use crate::oidc::Oidc;
use crate::pages::{Pages, STYLESHEET_PATH};
use crate::proxy::Proxy;
use crate::routes;
use crate::session::{CookiePolicy, KeyLayout, PendingLogins, SessionLifetime, SessionStoreAdapter};
use crate::state::{AppState, content_security_policy};
use crate::store::{ChangeListener, MemoryStore, RedisStore, RedisTopology, Store, StoreError, Untracked};
use crate::telemetry::error_chain;
use crate::tokens::{Sessions, TokenCache, TokenManager, TokenStore, TokenTimings};

pub struct Application {
    server: Server,
    /// The separate `/metrics` listener, when `server.metrics_listen` is set.
    metrics_server: Option<Server>,
    state: web::Data<AppState>,
}

/// The store named by the configuration; never connects here (start-up must not fail because
/// Redis is down).
pub fn store_for(config: &Config) -> Result<Store, anyhow::Error> {
    let s = &config.session;
    let topology = if !s.redis_cluster_nodes.is_empty() {
        RedisTopology::Cluster(s.redis_cluster_nodes.clone())
    } else if !s.redis_sentinels.is_empty() {
        RedisTopology::Sentinel { sentinels: s.redis_sentinels.clone(), service: s.redis_sentinel_service.clone() }
    } else if let Some(url) = &s.redis_url {
        RedisTopology::Single(url.clone())
    } else {
        tracing::warn!(
            "session.redis_url is not set: sessions live in this process only (one instance, lost on restart)"
        );
        return Ok(Store::memory(MemoryStore::new()));
    };
    let certs = s.redis_tls.certificates();
    Ok(Store::redis(RedisStore::with_tls(&topology, certs.as_ref(), s.redis_timeout)?))
}

/// With TLS to Redis, one connection attempt at start: a certificate that does not verify (a
/// wrong `session.redis_ca_file`) or a client certificate the server refuses is a configuration
/// mistake, reported as such (exit 2) instead of a bff that starts and is never ready. Redis being
/// down or slow is not: bff starts anyway and `/readyz` says so.
async fn check_redis_tls(config: &Config, store: &Store) -> Result<(), crate::config::ConfigErrors> {
    let s = &config.session;
    let tls = s.redis_url.iter().chain(&s.redis_sentinels).chain(&s.redis_cluster_nodes).any(|url| {
        use secrecy::ExposeSecret;
        url.expose_secret().trim_start().to_ascii_lowercase().starts_with("rediss:")
    });
    if !tls {
        return Ok(());
    }
    match store.ping().await {
        Err(StoreError::Certificate(problem)) => {
            let (key, message) = problem.split_once(": ").unwrap_or(("session.redis_ca_file", problem.as_str()));
            Err(crate::config::ConfigErrors(vec![crate::config::ConfigError {
                key: key.to_string(),
                message: message.to_string(),
            }]))
        }
        Err(e) => {
            tracing::warn!("Redis does not answer yet ({e}); bff starts anyway, /readyz says when it does");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// The coherent local token cache, when configured and the store can keep it coherent; the
/// store returned tells the cache of this instance's writes and must be the one used everywhere.
fn local_cache(config: &Config, store: Store, keys: &KeyLayout, metrics: &Metrics) -> (Store, Option<Arc<TokenCache>>) {
    let cache_metrics = metrics.cache();
    cache_metrics.mode(CacheMode::PerCallRead);
    if !config.tokens.local_cache {
        tracing::info!("tokens.local_cache is off: every API call reads its token set from the store");
        return (store, None);
    }
    let cache = Arc::new(TokenCache::new(
        config.tokens.local_cache_max_entries,
        config.tokens.local_cache_max_bytes,
        keys.clone(),
        cache_metrics.clone(),
        metrics.cache_gauges(CacheName::TokenSets),
    ));
    match store.track_changes(Arc::clone(&cache) as Arc<dyn ChangeListener>) {
        (store, Ok(())) => {
            cache_metrics.mode(CacheMode::Tracking);
            tracing::info!(
                max_entries = config.tokens.local_cache_max_entries.get(),
                max_bytes = config.tokens.local_cache_max_bytes,
                "token cache on: token sets kept in memory, kept coherent by Redis invalidations"
            );
            (store, Some(cache))
        }
        (store, Err(Untracked::Unsupported(why))) => {
            tracing::warn!("tokens.local_cache: {why}; every API call reads its token set from Redis");
            (store, None)
        }
        (store, Err(Untracked::NotNeeded)) => (store, None),
    }
}

impl Application {
    /// Builds the app on `listener` with the store the configuration names.
    pub async fn build(config: Config, listener: TcpListener) -> Result<Application, anyhow::Error> {
        let store = store_for(&config)?;
        check_redis_tls(&config, &store).await?;
        Application::build_with_store(config, listener, store).await
    }

    /// Builds the app on `listener` with a given store (the demo shares one).
    pub async fn build_with_store(
        config: Config,
        listener: TcpListener,
        store: Store,
    ) -> Result<Application, anyhow::Error> {
        Application::build_with_clock(config, listener, store, Clock::system()).await
    }

    /// The same with the clock lifetimes are decided by (a test's, which it moves forward).
    pub async fn build_with_clock(
        config: Config,
        listener: TcpListener,
        store: Store,
        clock: Clock,
    ) -> Result<Application, anyhow::Error> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new()?);
        let store = store.observed_by(Arc::clone(&metrics));
        let sealer = Sealer::new(&config.session.secrets);
        let keys = KeyLayout::new(&config.session.key_prefix);
        let (store, cache) = local_cache(&config, store, &keys, &metrics);
        let oidc = Arc::new(Oidc::new(&config)?);
        if let Err(e) = oidc.discover().await {
            let what = "bff starts anyway and keeps trying (readyz answers 503 until then)";
            if e.is_setup_problem() {
                tracing::error!("{e}; {what}");
            } else {
                tracing::warn!("{}; {what}", error_chain(&e));
            }
            tokio::spawn(Arc::clone(&oidc).discover_until_ready());
        }
        let lifetime = SessionLifetime { idle: config.session.idle_timeout, clock };
        let mut token_store = TokenStore::new(store.clone(), sealer.clone(), keys.clone(), lifetime.clone());
        if let Some(cache) = cache {
            token_store = token_store.with_cache(cache);
        }
        let session_states = SessionStoreAdapter::new(store.clone(), sealer.clone(), keys.clone(), lifetime.clone());
        let sessions = Arc::new(Sessions::new(
            token_store.clone(),
            session_states,
            config.session.absolute_timeout,
            config.tokens.default_expires_in,
        ));
        let tokens = Arc::new(TokenManager::new(
            token_store,
            Arc::clone(&sessions),
            Arc::clone(&oidc),
            TokenTimings {
                refresh_skew: config.tokens.refresh_skew,
                lock_lease: config.tokens.refresh_lock,
                idp_timeout: config.oidc.timeout,
                default_expires_in: config.tokens.default_expires_in,
            },
            Arc::clone(&metrics),
        ));
        let state = web::Data::new(AppState {
            public_origin: config.server.public_url.origin().ascii_serialization(),
            cookies: CookiePolicy::from_config(&config, &metrics),
            lifetime,
            logins: PendingLogins::new(store.clone(), sealer.clone(), keys.clone()),
            sessions,
            pages: Arc::new(Pages::load(&config.server.templates_dir, STYLESHEET_PATH)?),
            proxy: Arc::new(Proxy::new(
                &config,
                Arc::clone(&metrics),
                crate::proxy::global_permits(&config),
                config.server.max_upstream_concurrency,
            )),
            content_security_policy: content_security_policy(&config),
            login_limiter: RateLimiter::new(
                config.server.login_starts_per_minute,
                config.server.max_pending_logins,
                crate::session::PENDING_LOGIN_TTL,
            ),
            metrics,
            oidc,
            store,
            sealer,
            keys,
            tokens,
            config: Arc::clone(&config),
        });

        let app_state = state.clone();
        let mut server = HttpServer::new(move || {
            let state = app_state.clone();
            App::new()
                .app_data(state.clone())
                // Made here, on each worker's own thread: see `Proxy::upstream_client`.
                .app_data(web::Data::new(state.proxy.upstream_client()))
                .wrap(from_fn(security_headers))
                .wrap(from_fn(observe))
                .configure(|cfg| routes::configure(cfg, &state))
        })
        .shutdown_timeout(config.server.shutdown_grace.as_secs())
        // actix-web closes idle connections after 5 s: a proxy or client that reuses one a moment
        // later gets no answer (the soak found one such failed call in 537,589).
        .keep_alive(config.server.keep_alive)
        // Off by default in actix-web: an answer written in two pieces (head, then a chunked or
        // streamed body) would wait for the client's delayed ACK, ~40 ms per call.
        .tcp_nodelay(true)
        .listen(listener)?;
        if config.server.workers > 0 {
            server = server.workers(config.server.workers);
        }
        let metrics_server = match config.server.metrics_listen {
            Some(addr) => {
                let app_state = state.clone();
                let server = HttpServer::new(move || {
                    App::new().app_data(app_state.clone()).configure(routes::configure_metrics_listener)
                })
                .workers(1)
                .tcp_nodelay(true)
                .disable_signals()
                .bind(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (server.metrics_listen): {e}"))?;
                Some(server.run())
            }
            None => None,
        };
        Ok(Application { server: server.run(), metrics_server, state })
    }

    /// Serves until SIGTERM/SIGINT (or a handle's `stop`): then stops accepting, lets requests
    /// in flight finish within `server.shutdown_grace_secs`, and releases refresh locks still
    /// held so other instances need not wait for their leases.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let metrics_handle = self.metrics_server.as_ref().map(Server::handle);
        if let Some(server) = self.metrics_server {
            tokio::spawn(server);
        }
        let result = self.server.await;
        if let Some(handle) = metrics_handle {
            handle.stop(true).await;
        }
        let released = self.state.tokens.release_held_locks().await;
        tracing::info!(released_refresh_locks = released, "bff stopped");
        result
    }
}
