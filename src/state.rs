//! What handlers share, built once at start-up and handed out as `web::Data<AppState>`.

use std::sync::Arc;

use actix_web::http::header::HeaderValue;

use crate::config::Config;
use crate::crypto::Sealer;
use crate::dbsc::Dbsc;
use crate::limits::RateLimiter;
use crate::metrics::Metrics;
use crate::oidc::Oidc;
use crate::pages::Pages;
use crate::proxy::Proxy;
use crate::session::{CookiePolicy, KeyLayout, PendingLogins, SessionLifetime, SessionStoreAdapter};
use crate::store::Store;
use crate::tokens::{Sessions, TokenManager};

pub struct AppState {
    pub config: Arc<Config>,
    /// `public_url` as an origin (`https://app.example.com`), for `Origin` checks.
    pub public_origin: String,
    pub oidc: Arc<Oidc>,
    pub store: Store,
    pub sealer: Sealer,
    pub keys: KeyLayout,
    pub cookies: CookiePolicy,
    /// The frontend's DBSC policy (`session.dbsc`).
    pub dbsc: Dbsc,
    pub lifetime: SessionLifetime,
    pub tokens: Arc<TokenManager>,
    pub logins: PendingLogins,
    /// Starts and ends signed-in sessions.
    pub sessions: Arc<Sessions>,
    pub pages: Arc<Pages>,
    pub proxy: Arc<Proxy>,
    pub content_security_policy: HeaderValue,
    pub metrics: Arc<Metrics>,
    /// Shared by every frontend: a client's sign-in starts count wherever they go.
    pub login_limiter: Arc<RateLimiter>,
}

impl AppState {
    /// `path` without the frontend's own path in front: where it is among the frontend's routes.
    pub fn within<'p>(&self, path: &'p str) -> &'p str {
        path.strip_prefix(self.config.frontend.path.as_str()).unwrap_or(path)
    }

    pub fn session_store(&self) -> SessionStoreAdapter {
        SessionStoreAdapter::new(self.store.clone(), self.sealer.clone(), self.keys.clone(), self.lifetime.clone())
    }
}

/// Scripts, styles and fetches from our own origin only; forms may also post to the provider
/// (logout redirects there, and Chrome applies `form-action` to redirects).
pub fn content_security_policy(config: &Config) -> HeaderValue {
    let idp_origin = url::Url::parse(&config.oidc.issuer).map(|u| u.origin().ascii_serialization()).unwrap_or_default();
    let policy = format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self' {idp_origin}"
    );
    HeaderValue::from_str(policy.trim())
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"))
}
