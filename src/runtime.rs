//! What outlives a configuration (the store, metrics, caches, the instance's shares and limits)
//! and the frontends of the current one; a reload builds the frontends of a new file and
//! switches to them at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::web;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::crypto::Sealer;
use crate::dbsc::Dbsc;
use crate::frontends::{Current, Frontend, Generation, MAX_RETIRED, Retired};
use crate::limits::RateLimiter;
use crate::metrics::Metrics;
use crate::oidc::Oidc;
use crate::pages::{Pages, STYLESHEET_PATH};
use crate::proxy::{ProcessPermits, Proxy};
use crate::session::{CookiePolicy, KeyLayout, PendingLogins, SessionLifetime, SessionStoreAdapter};
use crate::state::{AppState, content_security_policy};
use crate::store::Store;
use crate::telemetry::error_chain;
use crate::tls::Tls;
use crate::tokens::{Sessions, TokenCache, TokenManager, TokenStore, TokenTimings};

pub struct Runtime {
    /// The configuration bff started with: its process-wide sections hold until a restart.
    pub boot: Arc<Config>,
    pub store: Store,
    /// Unlabelled (`frontend="default"`); each frontend has its own labelled handle.
    pub metrics: Arc<Metrics>,
    cache: Option<Arc<TokenCache>>,
    clock: Clock,
    /// The upstream shares every frontend draws on (global, anonymous, per address).
    upstream_permits: ProcessPermits,
    /// Sign-in starts per client address, whichever frontend they go to.
    login_limiter: Arc<RateLimiter>,
    current: Arc<Current>,
    next_generation: AtomicU64,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    last_reload: Mutex<Option<ReloadStatus>>,
    /// The configuration file the process was started with, what a reload reads again.
    config_file: Mutex<Option<std::path::PathBuf>>,
    /// The main listener's certificate, when `server.tls_cert_file` is set.
    pub tls: Option<Arc<Tls>>,
    /// `Strict-Transport-Security` for answers over TLS (none without TLS, or with
    /// `server.hsts_max_age_secs = 0`).
    pub hsts: Option<actix_web::http::header::HeaderValue>,
}

/// The outcome of the last reload, for `/readyz`.
#[derive(Debug, Clone)]
pub enum ReloadStatus {
    Applied,
    /// The file was refused; these are its problems (key paths and sentences, never values of
    /// secrets), and the configuration before it still serves.
    Refused(Vec<String>),
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// Re-reads the configuration: `SIGHUP`, or a test.
#[derive(Clone)]
pub struct Reloader(pub(crate) Arc<Runtime>);

impl Reloader {
    /// Applies a loaded configuration, or records why the file was refused.
    pub async fn reload(&self, loaded: Result<Config, ConfigErrors>) -> Result<ReloadSummary, ConfigErrors> {
        let runtime = &self.0;
        let _one_at_a_time = runtime.reloading.lock().await;
        let outcome = match loaded {
            Ok(config) => runtime.apply(config).await,
            Err(errors) => Err(errors),
        };
        // The certificate files too, whatever became of the configuration: a certificate
        // manager signals a reload after a rotation without touching the configuration.
        if let Some(tls) = &runtime.tls {
            let tls = Arc::clone(tls);
            let _ = tokio::task::spawn_blocking(move || tls.check_rotation()).await;
        }
        match &outcome {
            Ok(summary) => {
                tracing::info!(
                    added = ?summary.added,
                    changed = ?summary.changed,
                    removed = ?summary.removed,
                    unchanged = ?summary.unchanged,
                    "configuration reloaded"
                );
                runtime.record(ReloadStatus::Applied);
            }
            Err(errors) => {
                tracing::error!(
                    problems = errors.0.len(),
                    "configuration reload refused; the configuration before it still serves:\n{errors}"
                );
                runtime.record(ReloadStatus::Refused(errors.0.iter().map(ToString::to_string).collect()));
            }
        }
        outcome
    }
}

fn problem(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), message: message.into() }
}

impl Runtime {
    /// The process-wide parts and the first configuration's frontends. A provider that does
    /// not answer does not stop the start: its frontend keeps trying, `/readyz` says so.
    pub async fn start(config: Config, store: Store, clock: Clock) -> Result<Arc<Runtime>, anyhow::Error> {
        let metrics = Arc::new(Metrics::new()?);
        let store = store.observed_by(Arc::clone(&metrics));
        // The cache knows keys by their base prefix: every frontend's are under it.
        let (store, cache) =
            crate::startup::local_cache(&config, store, &KeyLayout::new(&config.session.key_prefix), &metrics);
        let s = &config.server;
        let tls = match &s.tls {
            Some(files) => Some(Arc::new(
                Tls::new(files.clone(), Arc::clone(&metrics))
                    .map_err(|e| ConfigErrors(vec![ConfigError { key: e.key.to_string(), message: e.message }]))?,
            )),
            None => None,
        };
        let runtime = Runtime {
            upstream_permits: crate::proxy::process_permits(&config),
            login_limiter: Arc::new(RateLimiter::new(
                s.login_starts_per_minute,
                s.max_pending_logins,
                crate::session::PENDING_LOGIN_TTL,
            )),
            boot: Arc::new(config.clone()),
            store,
            metrics,
            cache,
            clock,
            current: Arc::new(Current::new(Generation { id: 0, frontends: Vec::new(), retired: Vec::new() })),
            next_generation: AtomicU64::new(1),
            reloading: tokio::sync::Mutex::new(()),
            last_reload: Mutex::new(None),
            config_file: Mutex::new(None),
            hsts: tls.as_ref().and_then(|_| crate::tls::hsts_header(config.server.hsts_max_age)),
            tls,
        };
        let mut frontends = Vec::new();
        for view in config.views() {
            let state = runtime.frontend_state(&view)?;
            if let Err(e) = state.oidc.discover().await {
                let what = format!(
                    "frontend {:?}: bff starts anyway and keeps trying (readyz answers 503 until then)",
                    view.frontend.name
                );
                if e.is_setup_problem() {
                    tracing::error!("{e}; {what}");
                } else {
                    tracing::warn!("{}; {what}", error_chain(&e));
                }
                tokio::spawn(Arc::clone(&state.oidc).discover_until_ready());
            }
            frontends.push(Arc::new(Frontend {
                identity: view.frontend.clone(),
                fingerprint: fingerprint(&view),
                state,
            }));
        }
        runtime.current.publish(Generation { id: runtime.next_id(), frontends, retired: Vec::new() });
        Ok(Arc::new(runtime))
    }

    pub fn current(&self) -> Arc<Current> {
        Arc::clone(&self.current)
    }

    /// The configuration file a reload reads (`POST /admin/reload`); set by whoever loaded it.
    pub fn set_config_file(&self, file: Option<std::path::PathBuf>) {
        *self.config_file.lock().unwrap_or_else(|p| p.into_inner()) = file;
    }

    pub fn config_file(&self) -> Option<std::path::PathBuf> {
        self.config_file.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn last_reload(&self) -> Option<ReloadStatus> {
        self.last_reload.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, status: ReloadStatus) {
        self.metrics.config_reload(matches!(status, ReloadStatus::Applied));
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }

    fn next_id(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// One frontend's state over the process-wide parts.
    fn frontend_state(&self, config: &Config) -> Result<web::Data<AppState>, anyhow::Error> {
        let config = Arc::new(config.clone());
        let metrics = Arc::new(self.metrics.for_frontend(&config.frontend.name));
        let sealer = Sealer::new(&config.session.secrets);
        let keys = KeyLayout::new(&config.session.key_prefix);
        let oidc = Arc::new(Oidc::new(&config)?);
        let lifetime = SessionLifetime { idle: config.session.idle_timeout, clock: self.clock.clone() };
        let mut token_store = TokenStore::new(self.store.clone(), sealer.clone(), keys.clone(), lifetime.clone());
        if let Some(cache) = &self.cache {
            token_store = token_store.with_cache(Arc::clone(cache));
        }
        let session_states =
            SessionStoreAdapter::new(self.store.clone(), sealer.clone(), keys.clone(), lifetime.clone());
        let sessions = Arc::new(Sessions::new(
            token_store.clone(),
            session_states,
            config.session.absolute_timeout,
            config.tokens.default_expires_in,
            config.session.max_per_user,
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
        let pages = Pages::load(&config.server.templates_dir, STYLESHEET_PATH)?.under(&config.frontend.path);
        let cookies = CookiePolicy::from_config(&config, &metrics);
        let dbsc = Dbsc::from_config(&config, &cookies);
        Ok(web::Data::new(AppState {
            public_origin: config.server.public_url.origin().ascii_serialization(),
            dbsc: dbsc.clone(),
            cookies,
            lifetime,
            logins: PendingLogins::new(self.store.clone(), sealer.clone(), keys.clone()),
            sessions,
            pages: Arc::new(pages),
            proxy: Arc::new(Proxy::new(
                &config,
                Arc::clone(&metrics),
                self.upstream_permits.clone(),
                config.server.max_upstream_concurrency_per_frontend,
                dbsc,
            )),
            content_security_policy: content_security_policy(&config),
            login_limiter: Arc::clone(&self.login_limiter),
            metrics,
            oidc,
            store: self.store.clone(),
            sealer,
            keys,
            tokens,
            config,
        }))
    }

    /// A new configuration: refused as a whole if it changes what only a restart can, or if a
    /// new or changed frontend's provider metadata cannot be fetched; otherwise its frontends
    /// replace the current ones at once (unchanged ones kept as they are).
    async fn apply(&self, config: Config) -> Result<ReloadSummary, ConfigErrors> {
        let restart_only = needs_restart(&self.boot, &config);
        if !restart_only.is_empty() {
            return Err(ConfigErrors(
                restart_only
                    .into_iter()
                    .map(|key| problem(key, "changed: this takes a restart, not a reload (nothing was changed)"))
                    .collect(),
            ));
        }
        let old = self.current.load();
        let mut summary = ReloadSummary::default();
        let mut frontends = Vec::new();
        let mut errors = Vec::new();
        for (i, view) in config.views().into_iter().enumerate() {
            let print = fingerprint(&view);
            let name = view.frontend.name.clone();
            let earlier = old.frontends.iter().find(|f| f.identity.name == name);
            if let Some(kept) = earlier.filter(|f| f.fingerprint == print && f.identity == view.frontend) {
                summary.unchanged.push(name);
                frontends.push(Arc::clone(kept));
                continue;
            }
            let key = if config.frontends.is_empty() { "oidc".to_string() } else { format!("frontend[{i}]") };
            let state = match self.frontend_state(&view) {
                Ok(state) => state,
                Err(e) => {
                    errors.push(problem(key, format!("{e:#}")));
                    continue;
                }
            };
            // Before the switch: a frontend whose provider cannot be reached now would leave its
            // users unable to sign in.
            if let Err(e) = state.oidc.discover().await {
                errors.push(problem(
                    key,
                    format!("frontend {name:?}: the provider's metadata could not be fetched ({})", error_chain(&e)),
                ));
                continue;
            }
            if earlier.is_some() {
                summary.changed.push(name)
            } else {
                summary.added.push(name)
            };
            frontends.push(Arc::new(Frontend { identity: view.frontend.clone(), fingerprint: print, state }));
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let mut retired: Vec<Retired> = old
            .retired
            .iter()
            .filter(|r| !frontends.iter().any(|f| f.identity.name == r.identity.name))
            .cloned()
            .collect();
        for gone in old.frontends.iter().filter(|f| !frontends.iter().any(|n| n.identity.name == f.identity.name)) {
            summary.removed.push(gone.identity.name.clone());
            retired.push(Retired {
                identity: gone.identity.clone(),
                cookie_name: gone.state.cookies.name.clone(),
                removal: gone.state.cookies.session_cookie_removal(),
            });
        }
        let overflow = retired.len().saturating_sub(MAX_RETIRED);
        retired.drain(..overflow);
        self.current.publish(Generation { id: self.next_id(), frontends, retired });
        Ok(summary)
    }
}

/// What a frontend's configuration is made of, secrets included (hashed, never kept).
fn fingerprint(view: &Config) -> [u8; 32] {
    let mut hash = Sha256::new();
    // `Debug` prints every value but secrets (redacted): those are added on their own.
    hash.update(format!("{view:?}").as_bytes());
    if let Some(secret) = &view.oidc.client_secret {
        hash.update(b"\0client_secret\0");
        hash.update(secret.expose_secret().as_bytes());
    }
    if let Some(keys) = &view.oidc.client_keys {
        hash.update(b"\0client_keys\0");
        hash.update(keys.jwks().to_string().as_bytes());
        hash.update(keys.signing_kid().as_bytes());
    }
    for secret in &view.session.secrets {
        hash.update(b"\0session_secret\0");
        hash.update(secret.expose_secret().as_bytes());
    }
    hash.finalize().into()
}

/// The keys whose change a reload cannot apply: listeners, workers, Redis and the session
/// secret, the instance's limits, caches, logs and telemetry.
fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&running.server, &new.server);
    let (sa, sb) = (&running.session, &new.session);
    let secrets = |list: &[secrecy::SecretString]| -> Vec<String> {
        list.iter().map(|s| crate::crypto::digest(s.expose_secret())).collect()
    };
    let redis = |s: &crate::config::SessionConfig| {
        (
            s.redis_url.as_ref().map(|u| crate::crypto::digest(u.expose_secret())),
            secrets(&s.redis_sentinels),
            s.redis_sentinel_service.clone(),
            secrets(&s.redis_cluster_nodes),
            s.redis_timeout,
            format!("{:?}", s.redis_tls),
        )
    };
    let checks: [(&'static str, bool); 24] = [
        ("server.listen", a.listen != b.listen),
        ("server.workers", a.workers != b.workers),
        ("server.metrics_listen", a.metrics_listen != b.metrics_listen),
        ("server.metrics_public", a.metrics_public != b.metrics_public),
        ("server.admin_listen", a.admin_listen != b.admin_listen),
        (
            "server.admin_token_file",
            a.admin_token.as_ref().map(|t| crate::crypto::digest(t.expose_secret()))
                != b.admin_token.as_ref().map(|t| crate::crypto::digest(t.expose_secret())),
        ),
        ("session.max_per_user", sa.max_per_user != sb.max_per_user),
        ("server.templates_dir", a.templates_dir != b.templates_dir),
        ("server.shutdown_grace_secs", a.shutdown_grace != b.shutdown_grace),
        ("server.keep_alive_secs", a.keep_alive != b.keep_alive),
        ("server.max_header_bytes", a.max_header_bytes != b.max_header_bytes),
        (
            "server.max_upstream_concurrency",
            (a.max_upstream_concurrency, a.max_upstream_concurrency_per_session)
                != (b.max_upstream_concurrency, b.max_upstream_concurrency_per_session),
        ),
        (
            "server.max_upstream_concurrency_anonymous",
            (a.max_upstream_concurrency_anonymous, a.max_upstream_concurrency_per_address)
                != (b.max_upstream_concurrency_anonymous, b.max_upstream_concurrency_per_address),
        ),
        (
            "server.login_starts_per_minute",
            (a.login_starts_per_minute, a.max_pending_logins) != (b.login_starts_per_minute, b.max_pending_logins),
        ),
        ("server.trusted_proxy_hops", a.trusted_proxy_hops != b.trusted_proxy_hops),
        // The paths: the files' contents are read again by every reload (and every few seconds).
        ("server.tls_cert_file", a.tls != b.tls),
        ("server.hsts_max_age_secs", a.hsts_max_age != b.hsts_max_age),
        ("server.redirect_http_listen", a.redirect_http_listen != b.redirect_http_listen),
        ("session.redis_url", redis(sa) != redis(sb)),
        ("session.secret", secrets(&sa.secrets) != secrets(&sb.secrets)),
        ("session.key_prefix", sa.key_prefix != sb.key_prefix),
        ("tokens", format!("{:?}", running.tokens) != format!("{:?}", new.tokens)),
        ("log", format!("{:?}", running.log) != format!("{:?}", new.log)),
        ("telemetry", format!("{:?}", running.telemetry) != format!("{:?}", new.telemetry)),
    ];
    checks.into_iter().filter_map(|(key, changed)| changed.then_some(key)).collect()
}
