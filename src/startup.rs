//! Building the application: the store and its cache, the listeners, and each worker's apps
//! (the frontends' and the server's own); the frontends themselves are the runtime's.

use std::net::TcpListener;
use std::rc::Rc;
use std::sync::Arc;

use actix_service::IntoServiceFactory;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{AppConfig, Server, Service, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, ResponseError, guard, web};
use futures_util::future::LocalBoxFuture;

use crate::clock::Clock;
use crate::config::Config;
use crate::frontends::{AppBuilder, AppService, Dispatch, Frontend, Retired};
use crate::http::{observe, security_headers};
use crate::metrics::{CacheMode, CacheName, Metrics};
use crate::routes;
use crate::runtime::{Reloader, Runtime};
use crate::session::KeyLayout;
use crate::store::{ChangeListener, MemoryStore, RedisStore, RedisTopology, Store, StoreError, Untracked};
use crate::tokens::TokenCache;

pub struct Application {
    server: Server,
    /// The separate `/metrics` listener, when `server.metrics_listen` is set.
    metrics_server: Option<Server>,
    /// The admin API's listener, when `server.admin_listen` is set.
    admin_server: Option<Server>,
    /// The plain-HTTP listener that redirects to https, when `server.redirect_http_listen` is set.
    redirect_server: Option<Server>,
    runtime: Arc<Runtime>,
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
pub(crate) fn local_cache(
    config: &Config,
    store: Store,
    keys: &KeyLayout,
    metrics: &Metrics,
) -> (Store, Option<Arc<TokenCache>>) {
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
        let runtime = Runtime::start(config, store, clock).await?;
        let config = Arc::clone(&runtime.boot);
        let dispatch =
            Dispatch { current: runtime.current(), builder: Arc::new(Apps { runtime: Arc::clone(&runtime) }) };
        let mut server = HttpServer::new(move || dispatch.clone())
            .shutdown_timeout(config.server.shutdown_grace.as_secs())
            // actix-web closes idle connections after 5 s: a proxy or client that reuses one a
            // moment later gets no answer (the soak found one such failed call in 537,589).
            .keep_alive(config.server.keep_alive)
            // Off by default in actix-web: an answer written in two pieces (head, then a chunked
            // or streamed body) would wait for the client's delayed ACK, ~40 ms per call.
            .tcp_nodelay(true);
        server = match &runtime.tls {
            Some(tls) => {
                let tls_config = tls.server_config().map_err(|e| anyhow::anyhow!("server.tls_cert_file: {e}"))?;
                tls.watch();
                server.listen_rustls_0_23(listener, tls_config)?
            }
            None => server.listen(listener)?,
        };
        if config.server.workers > 0 {
            server = server.workers(config.server.workers);
        }
        let metrics_server = match config.server.metrics_listen {
            Some(addr) => {
                let runtime = web::Data::from(Arc::clone(&runtime));
                let server = HttpServer::new(move || {
                    App::new().app_data(runtime.clone()).configure(routes::configure_metrics_listener)
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
        let admin_server = match (config.server.admin_listen, &config.server.admin_token) {
            (Some(addr), Some(token)) => {
                let admin = web::Data::new(crate::admin::Admin::new(Arc::clone(&runtime), token));
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(admin.clone())
                        .wrap(from_fn(security_headers))
                        .configure(crate::admin::configure)
                })
                .workers(1)
                .tcp_nodelay(true)
                .disable_signals()
                .bind(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (server.admin_listen): {e}"))?;
                tracing::info!(admin_listen = %addr, "admin API listening");
                Some(server.run())
            }
            _ => None,
        };
        let redirect_server = match config.server.redirect_http_listen {
            Some(addr) => {
                let redirects = web::Data::new(crate::tls::Redirects::new(&config));
                let server = HttpServer::new(move || {
                    App::new().app_data(redirects.clone()).default_service(web::to(crate::tls::redirect))
                })
                .workers(1)
                .keep_alive(config.server.keep_alive)
                .tcp_nodelay(true)
                .disable_signals()
                .bind(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (server.redirect_http_listen): {e}"))?;
                tracing::info!(redirect_http_listen = %addr, "redirecting plain HTTP to https");
                Some(server.run())
            }
            None => None,
        };
        Ok(Application { server: server.run(), metrics_server, admin_server, redirect_server, runtime })
    }

    /// The configuration file the process was started with: what `POST /admin/reload` reads.
    pub fn set_config_file(&self, file: Option<std::path::PathBuf>) {
        self.runtime.set_config_file(file);
    }

    /// What re-reads the configuration (on `SIGHUP`, or a test's call).
    pub fn reloader(&self) -> Reloader {
        Reloader(Arc::clone(&self.runtime))
    }

    /// Serves until SIGTERM/SIGINT (or a handle's `stop`): then stops accepting, lets requests
    /// in flight finish within `server.shutdown_grace_secs`, and releases refresh locks still
    /// held so other instances need not wait for their leases.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let side_handles: Vec<_> = self
            .metrics_server
            .iter()
            .chain(self.admin_server.iter())
            .chain(self.redirect_server.iter())
            .map(Server::handle)
            .collect();
        for server in self.metrics_server.into_iter().chain(self.admin_server).chain(self.redirect_server) {
            tokio::spawn(server);
        }
        let result = self.server.await;
        for handle in side_handles {
            handle.stop(true).await;
        }
        let mut released = 0;
        for frontend in &self.runtime.current().load().frontends {
            released += frontend.state.tokens.release_held_locks().await;
        }
        tracing::info!(released_refresh_locks = released, "bff stopped");
        result
    }
}

/// Builds each worker's apps: a frontend's, and the server's own (health, metrics, 404).
struct Apps {
    runtime: Arc<Runtime>,
}

/// An `App` as the switch calls it.
async fn app_service<T, B>(app: App<T>, config: AppConfig) -> Result<AppService, ()>
where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    let service = Rc::new(app.into_factory().new_service(config).await?);
    Ok(Rc::new(move |req| {
        let service = Rc::clone(&service);
        Box::pin(async move { service.call(req).await.map(|res| res.map_into_boxed_body().into()) })
    }))
}

impl AppBuilder for Apps {
    fn frontend_app(&self, frontend: &Frontend, config: AppConfig) -> LocalBoxFuture<'static, Result<AppService, ()>> {
        let state = frontend.state.clone();
        let runtime = web::Data::from(Arc::clone(&self.runtime));
        Box::pin(async move {
            let base = state.config.frontend.path.clone();
            let app = App::new()
                .app_data(state.clone())
                .app_data(runtime)
                // Made here, on each worker's own thread: see `Proxy::upstream_client`.
                .app_data(web::Data::new(state.proxy.upstream_client()))
                .wrap(from_fn(security_headers))
                .wrap(from_fn(observe));
            if base.is_empty() {
                app_service(app.configure(|cfg| routes::configure(cfg, &state)), config).await
            } else {
                // The frontend's path itself (`/shop`) is sent to its root (`/shop/`): a page served
                // at `/shop` would resolve its relative URLs (`./app.js`) against `/`.
                let root = web::resource(base.clone())
                    .guard(guard::Any(guard::Get()).or(guard::Head()))
                    .to(routes::to_frontend_root);
                let scope = web::scope(&base).configure(|cfg| routes::configure(cfg, &state));
                app_service(app.service(root).service(scope).default_service(web::to(routes::not_found)), config).await
            }
        })
    }

    fn server_app(&self, config: AppConfig) -> LocalBoxFuture<'static, Result<AppService, ()>> {
        let runtime = web::Data::from(Arc::clone(&self.runtime));
        Box::pin(async move {
            let app = App::new()
                .app_data(runtime.clone())
                .wrap(from_fn(security_headers))
                .wrap(from_fn(observe))
                .configure(|cfg| routes::configure_server(cfg, runtime.boot.server.metrics_public));
            app_service(app, config).await
        })
    }

    fn retired_answer(&self, retired: &Retired) -> actix_http::Response<BoxBody> {
        let mut res = crate::error::AppError::LoginRequired.error_response();
        let _ = res.add_cookie(&retired.removal);
        res.into()
    }
}
