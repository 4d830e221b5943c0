//! Prometheus metrics, one registry per app instance (no global state: tests run several
//! instances in one process). Every label has a bounded set of values: route classes, status
//! classes, configured API prefixes, fixed outcome names — never a path, user or session.

use crate::limits::Limit;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets from 0.5 ms to 30 s.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// One frontend's view of this process's metrics: the shared families, and the `frontend` label
/// value its per-frontend series carry. Cheap to clone; every view of one process renders the
/// same registry.
#[derive(Clone)]
pub struct Metrics {
    families: Arc<Families>,
    /// The `[[frontend]]`'s name, `"default"` for a configuration without frontends. Shared:
    /// one allocation per frontend, not one per view.
    frontend: Arc<str>,
    /// The series every request touches, found once (see `RequestSeries`).
    request_series: Arc<RequestSeries>,
}

/// The request counter and latency series of this frontend by route class and status class,
/// remembered once found: `with_label_values` hashes every label value (SipHash) and looks the
/// series up under a lock, ~3k instructions per request for the two families, for series that
/// are the same few on nearly every call. The labels are `&'static str` of small fixed sets
/// (route classes, status classes), so the lists stay a handful of entries long, compared by
/// value (equal pointers first).
#[derive(Default)]
struct RequestSeries {
    counters: std::sync::Mutex<Vec<(&'static str, &'static str, IntCounter)>>,
    durations: std::sync::Mutex<Vec<(&'static str, Histogram)>>,
}

fn same(a: &'static str, b: &'static str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// The registry and its families, one per process: the per-frontend families carry a `frontend`
/// label (first); store, refresh-lock and cache families are the process's and carry none.
struct Families {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    upstream_errors: IntCounterVec,
    refreshes: IntCounterVec,
    client_tokens: IntCounterVec,
    token_exchanges: IntCounterVec,
    lock_wait: Histogram,
    locks_active: IntGauge,
    auth_events: IntCounterVec,
    logout_sessions_ended: IntCounterVec,
    store_duration: HistogramVec,
    store_errors: IntCounterVec,
    limited: IntCounterVec,
    websocket_upgrades: IntCounterVec,
    websocket_closes: IntCounterVec,
    websockets_open: IntGauge,
    config_reloads: IntCounterVec,
    dbsc_registrations: IntCounterVec,
    dbsc_refreshes: IntCounterVec,
    dbsc_refusals: IntCounterVec,
    cache: CacheMetrics,
    cache_entries: IntGaugeVec,
    cache_bytes: IntGaugeVec,
    tls_certificate_reloads: IntCounterVec,
}

/// The per-instance in-memory caches, by their `cache` label.
#[derive(Debug, Clone, Copy)]
pub enum CacheName {
    /// Opened token sets (`tokens::cache`).
    TokenSets,
    /// Session cookie values already opened (`session::cookie`).
    OpenedCookies,
}

impl CacheName {
    fn label(self) -> &'static str {
        match self {
            CacheName::TokenSets => "token_sets",
            CacheName::OpenedCookies => "opened_cookies",
        }
    }
}

/// One cache's size gauges, resolved once (no label look-up per change).
#[derive(Clone)]
pub struct CacheGauges {
    entries: IntGauge,
    bytes: IntGauge,
}

impl CacheGauges {
    pub fn set(&self, entries: usize, bytes: usize) {
        self.entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Gauges in no registry, for a cache nobody scrapes.
    #[cfg(test)]
    pub fn detached() -> CacheGauges {
        let gauge = |name| IntGauge::new(name, "unregistered").unwrap_or_else(|e| panic!("a fixed valid name: {e}"));
        CacheGauges { entries: gauge("entries"), bytes: gauge("bytes") }
    }
}

/// The coherent local token cache's counters, resolved once (no label look-up per call).
#[derive(Clone)]
pub struct CacheMetrics {
    hits: IntCounter,
    misses: IntCounter,
    fills: IntCounter,
    invalidations: IntCounter,
    entries: IntGauge,
    channel_up: IntGauge,
    mode: IntGaugeVec,
}

/// How this instance finds token sets: the labels of `bff_token_cache_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Cached, kept coherent by Redis' invalidations.
    Tracking,
    /// Read from the store on every call (`local_cache = false`, the in-memory store, or a
    /// topology without tracking).
    PerCallRead,
}

impl CacheMetrics {
    pub fn hit(&self) {
        self.hits.inc();
    }
    pub fn miss(&self) {
        self.misses.inc();
    }
    pub fn filled(&self) {
        self.fills.inc();
    }
    pub fn invalidation(&self) {
        self.invalidations.inc();
    }
    pub fn entries(&self, n: usize) {
        self.entries.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    pub fn channel_up(&self, up: bool) {
        self.channel_up.set(i64::from(up));
    }
    pub fn mode(&self, mode: CacheMode) {
        for (label, this) in [("tracking", CacheMode::Tracking), ("per_call_read", CacheMode::PerCallRead)] {
            self.mode.with_label_values(&[label]).set(i64::from(mode == this));
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("frontend", &self.frontend).finish_non_exhaustive()
    }
}

/// A sign-in event, by its `auth_events_total` label.
#[derive(Debug, Clone, Copy)]
pub enum AuthEvent {
    Login,
    LoginFailed,
    Logout,
    BackchannelLogout,
    /// A sign-in that asked for `offline_access` and got no refresh token.
    LoginWithoutRefreshToken,
    FrontchannelLogout,
    /// A `prompt=none` sign-in the provider could not do without the user (sent back to the SPA).
    SilentLoginDeclined,
    /// A proxied call answered `step_up_required` (RFC 9470): by the upstream or the route.
    StepUpRequired,
}

impl AuthEvent {
    fn label(self) -> &'static str {
        match self {
            AuthEvent::Login => "login",
            AuthEvent::LoginFailed => "login_failed",
            AuthEvent::Logout => "logout",
            AuthEvent::BackchannelLogout => "backchannel_logout",
            AuthEvent::LoginWithoutRefreshToken => "login_without_refresh_token",
            AuthEvent::FrontchannelLogout => "frontchannel_logout",
            AuthEvent::SilentLoginDeclined => "silent_login_declined",
            AuthEvent::StepUpRequired => "step_up_required",
        }
    }
}

/// How an upstream call failed, by its `upstream_errors_total` label.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamFailure {
    Timeout,
    Unavailable,
}

impl UpstreamFailure {
    fn label(self) -> &'static str {
        match self {
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Unavailable => "unavailable",
        }
    }
}

/// How a token refresh ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    Ok,
    /// The provider ended the grant (`invalid_grant` or another refusal of it): the session ends.
    GrantOver,
    Transient,
    /// The provider refused bff's client authentication: the session is kept.
    ClientAuth,
    /// Not asked: the session's last refresh failed and its back-off has not passed.
    BackedOff,
    /// Not asked: an upstream refused a token that was itself got after a refusal, and it is not
    /// due yet; its 401 went back as it was.
    RejectedAgain,
    /// The caller used another caller's refresh (same process or another instance).
    Joined,
}

impl RefreshOutcome {
    fn label(self) -> &'static str {
        match self {
            RefreshOutcome::Ok => "ok",
            RefreshOutcome::GrantOver => "grant_over",
            RefreshOutcome::Transient => "transient",
            RefreshOutcome::ClientAuth => "client_auth_refused",
            RefreshOutcome::BackedOff => "backed_off",
            RefreshOutcome::RejectedAgain => "rejected_again",
            RefreshOutcome::Joined => "joined",
        }
    }
}

/// How a token exchange (RFC 8693) ended.
#[derive(Debug, Clone, Copy)]
pub enum ExchangeOutcome {
    Ok,
    /// The provider will not exchange for that audience: 403 `exchange_refused`.
    Refused,
    /// Unreachable, failing, or bff's credentials refused: 503, the session kept.
    Failed,
}

/// Why bff closed a WebSocket, by its `websocket_closes_total` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketEnd {
    /// The browser or the upstream closed it (or went away).
    Peer,
    /// The session ended (logout, back-channel logout, expiry), on any instance.
    SessionEnded,
    /// Nothing went either way for the route's `timeout_secs`.
    Idle,
}

impl SocketEnd {
    pub fn label(self) -> &'static str {
        match self {
            SocketEnd::Peer => "peer",
            SocketEnd::SessionEnded => "session_ended",
            SocketEnd::Idle => "idle_timeout",
        }
    }
}

/// One open WebSocket, counted in `websockets_open` while it lives.
pub struct OpenSocket(IntGauge);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The per-frontend families' labels: `frontend` first, then the family's own.
fn labelled<'a>(own: &[&'a str]) -> Vec<&'a str> {
    std::iter::once("frontend").chain(own.iter().copied()).collect()
}

impl Families {
    fn new() -> Result<Families, prometheus::Error> {
        let registry = Registry::new_custom(Some("bff".into()), None)?;
        let hist = |name: &str, help: &str| HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
        let f = Families {
            requests: IntCounterVec::new(
                Opts::new("http_requests_total", "Requests answered, by frontend, route class and status class"),
                &labelled(&["route", "status"]),
            )?,
            request_duration: HistogramVec::new(
                hist("http_request_duration_seconds", "Time to the response head"),
                &labelled(&["route"]),
            )?,
            upstream_duration: HistogramVec::new(
                hist("upstream_duration_seconds", "Upstream time to response head, by API prefix"),
                &labelled(&["api"]),
            )?,
            upstream_errors: IntCounterVec::new(
                Opts::new("upstream_errors_total", "Upstream calls that failed, by API prefix and kind"),
                &labelled(&["api", "kind"]),
            )?,
            refreshes: IntCounterVec::new(
                Opts::new("token_refreshes_total", "Access-token refreshes by outcome"),
                &labelled(&["outcome"]),
            )?,
            client_tokens: IntCounterVec::new(
                Opts::new("client_token_requests_total", "Client-credentials token requests, by outcome"),
                &labelled(&["outcome"]),
            )?,
            token_exchanges: IntCounterVec::new(
                Opts::new("token_exchanges_total", "Token exchanges (RFC 8693) asked of the provider, by outcome"),
                &labelled(&["outcome"]),
            )?,
            lock_wait: Histogram::with_opts(hist(
                "refresh_lock_wait_seconds",
                "Time spent waiting for another instance's refresh",
            ))?,
            locks_active: IntGauge::new("refresh_locks_active", "Refresh locks this instance holds now")?,
            auth_events: IntCounterVec::new(
                Opts::new(
                    "auth_events_total",
                    "Logins, failed logins, logouts, back-channel and front-channel logouts",
                ),
                &labelled(&["event"]),
            )?,
            logout_sessions_ended: IntCounterVec::new(
                Opts::new("logout_sessions_ended_total", "Sessions ended by the provider's logouts, by channel"),
                &labelled(&["channel"]),
            )?,
            store_duration: HistogramVec::new(
                hist("session_store_duration_seconds", "Session store operations"),
                &["op"],
            )?,
            store_errors: IntCounterVec::new(
                Opts::new("session_store_errors_total", "Session store operations that failed"),
                &["op"],
            )?,
            limited: IntCounterVec::new(
                Opts::new("requests_limited_total", "Requests refused by a limit"),
                &labelled(&["limit"]),
            )?,
            websocket_upgrades: IntCounterVec::new(
                Opts::new(
                    "websocket_upgrades_total",
                    "WebSocket upgrade requests: upgraded, refused (by bff or the upstream), failed (5xx)",
                ),
                &labelled(&["outcome"]),
            )?,
            websocket_closes: IntCounterVec::new(
                Opts::new("websocket_closes_total", "WebSockets that ended, by why"),
                &labelled(&["reason"]),
            )?,
            websockets_open: IntGauge::new("websockets_open", "WebSockets open through this instance now")?,
            config_reloads: IntCounterVec::new(
                Opts::new("config_reloads_total", "Configuration reloads, applied or refused"),
                &["outcome"],
            )?,
            dbsc_registrations: IntCounterVec::new(
                Opts::new("dbsc_registrations_total", "Sessions bound to a device key (DBSC), by algorithm"),
                &labelled(&["alg"]),
            )?,
            dbsc_refreshes: IntCounterVec::new(
                Opts::new("dbsc_refreshes_total", "Bound cookies renewed for a signed challenge (DBSC)"),
                &labelled(&[]),
            )?,
            dbsc_refusals: IntCounterVec::new(
                Opts::new(
                    "dbsc_refusals_total",
                    "DBSC refusals: registrations, refreshes and calls of bound sessions, by stage and reason",
                ),
                &labelled(&["stage", "reason"]),
            )?,
            cache: CacheMetrics {
                hits: IntCounter::new("token_cache_hits_total", "API calls answered from the local token cache")?,
                misses: IntCounter::new(
                    "token_cache_misses_total",
                    "API calls that read the token set from the store",
                )?,
                fills: IntCounter::new("token_cache_fills_total", "Token sets read from the store and cached")?,
                invalidations: IntCounter::new(
                    "token_cache_invalidations_total",
                    "Invalidation messages received from Redis (a key, or everything)",
                )?,
                entries: IntGauge::new("token_cache_entries", "Sessions held in the local token cache")?,
                channel_up: IntGauge::new(
                    "token_cache_channel_up",
                    "1 while the invalidation channel is up (the cache is used), 0 otherwise",
                )?,
                mode: IntGaugeVec::new(
                    Opts::new("token_cache_mode", "How token sets are found: 1 on the mode in force"),
                    &["mode"],
                )?,
            },
            cache_entries: IntGaugeVec::new(
                Opts::new("cache_entries", "Entries held in each in-memory cache of this instance"),
                &["cache"],
            )?,
            cache_bytes: IntGaugeVec::new(
                Opts::new(
                    "cache_bytes",
                    "Estimated bytes held in each in-memory cache of this instance (bounded by tokens.local_cache_max_bytes)",
                ),
                &["cache"],
            )?,
            tls_certificate_reloads: IntCounterVec::new(
                Opts::new(
                    "tls_certificate_reloads_total",
                    "Changed TLS certificate files: applied, or refused (the certificate before still serves)",
                ),
                &["outcome"],
            )?,
            registry,
        };
        f.registry.register(Box::new(f.requests.clone()))?;
        f.registry.register(Box::new(f.request_duration.clone()))?;
        f.registry.register(Box::new(f.upstream_duration.clone()))?;
        f.registry.register(Box::new(f.upstream_errors.clone()))?;
        f.registry.register(Box::new(f.refreshes.clone()))?;
        f.registry.register(Box::new(f.client_tokens.clone()))?;
        f.registry.register(Box::new(f.token_exchanges.clone()))?;
        f.registry.register(Box::new(f.lock_wait.clone()))?;
        f.registry.register(Box::new(f.locks_active.clone()))?;
        f.registry.register(Box::new(f.auth_events.clone()))?;
        f.registry.register(Box::new(f.logout_sessions_ended.clone()))?;
        f.registry.register(Box::new(f.store_duration.clone()))?;
        f.registry.register(Box::new(f.store_errors.clone()))?;
        f.registry.register(Box::new(f.limited.clone()))?;
        f.registry.register(Box::new(f.websocket_upgrades.clone()))?;
        f.registry.register(Box::new(f.websocket_closes.clone()))?;
        f.registry.register(Box::new(f.websockets_open.clone()))?;
        f.registry.register(Box::new(f.config_reloads.clone()))?;
        f.registry.register(Box::new(f.dbsc_registrations.clone()))?;
        f.registry.register(Box::new(f.dbsc_refreshes.clone()))?;
        f.registry.register(Box::new(f.dbsc_refusals.clone()))?;
        f.registry.register(Box::new(f.cache.hits.clone()))?;
        f.registry.register(Box::new(f.cache.misses.clone()))?;
        f.registry.register(Box::new(f.cache.fills.clone()))?;
        f.registry.register(Box::new(f.cache.invalidations.clone()))?;
        f.registry.register(Box::new(f.cache.entries.clone()))?;
        f.registry.register(Box::new(f.cache.channel_up.clone()))?;
        f.registry.register(Box::new(f.cache.mode.clone()))?;
        f.registry.register(Box::new(f.cache_entries.clone()))?;
        f.registry.register(Box::new(f.cache_bytes.clone()))?;
        f.registry.register(Box::new(f.tls_certificate_reloads.clone()))?;
        Ok(f)
    }
}

impl Metrics {
    /// A new registry, its view for the frontend `"default"` (a configuration without
    /// `[[frontend]]`); the other frontends' views come from `for_frontend`.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        Ok(Metrics {
            families: Arc::new(Families::new()?),
            frontend: Arc::from(crate::config::FrontendIdentity::IMPLICIT_NAME),
            request_series: Arc::default(),
        })
    }

    /// The view of the same registry for the frontend `name`: its per-frontend series carry
    /// `frontend="{name}"`, the per-process ones are shared with every other view.
    pub fn for_frontend(&self, name: &str) -> Metrics {
        Metrics { families: Arc::clone(&self.families), frontend: Arc::from(name), request_series: Arc::default() }
    }

    /// The `frontend` label value of this view.
    pub fn frontend(&self) -> &str {
        &self.frontend
    }

    pub fn request(&self, route: &'static str, status: u16, elapsed: Duration) {
        let class = status_class(status);
        let memo = &self.request_series;
        {
            let mut counters = memo.counters.lock().unwrap_or_else(|p| p.into_inner());
            match counters.iter().find(|(r, c, _)| same(r, route) && same(c, class)) {
                Some((_, _, counter)) => counter.inc(),
                None => {
                    let counter = self.families.requests.with_label_values(&[self.frontend(), route, class]);
                    counter.inc();
                    counters.push((route, class, counter));
                }
            }
        }
        let mut durations = memo.durations.lock().unwrap_or_else(|p| p.into_inner());
        match durations.iter().find(|(r, _)| same(r, route)) {
            Some((_, histogram)) => histogram.observe(elapsed.as_secs_f64()),
            None => {
                let histogram = self.families.request_duration.with_label_values(&[self.frontend(), route]);
                histogram.observe(elapsed.as_secs_f64());
                durations.push((route, histogram));
            }
        }
    }

    /// The upstream latency series of the API prefix `api`, for its route to keep.
    pub fn upstream_series(&self, api: &str) -> Histogram {
        self.families.upstream_duration.with_label_values(&[self.frontend(), api])
    }

    pub fn upstream_error(&self, api: &str, failure: UpstreamFailure) {
        self.families.upstream_errors.with_label_values(&[self.frontend(), api, failure.label()]).inc();
    }

    pub fn refresh(&self, outcome: RefreshOutcome) {
        self.families.refreshes.with_label_values(&[self.frontend(), outcome.label()]).inc();
    }

    /// A client-credentials token request; `ok`: a token came back.
    pub fn client_token(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.families.client_tokens.with_label_values(&[self.frontend(), outcome]).inc();
    }

    /// A token exchange asked of the provider.
    pub fn token_exchange(&self, outcome: ExchangeOutcome) {
        let label = match outcome {
            ExchangeOutcome::Ok => "ok",
            ExchangeOutcome::Refused => "refused",
            ExchangeOutcome::Failed => "failed",
        };
        self.families.token_exchanges.with_label_values(&[self.frontend(), label]).inc();
    }

    pub fn lock_waited(&self, elapsed: Duration) {
        self.families.lock_wait.observe(elapsed.as_secs_f64());
    }

    pub fn lock_taken(&self) {
        self.families.locks_active.inc();
    }

    pub fn lock_released(&self) {
        self.families.locks_active.dec();
    }

    pub fn auth_event(&self, event: AuthEvent) {
        self.families.auth_events.with_label_values(&[self.frontend(), event.label()]).inc();
    }

    /// `channel`: `backchannel` or `frontchannel`.
    pub fn logout_sessions_ended(&self, channel: &'static str, count: usize) {
        self.families.logout_sessions_ended.with_label_values(&[self.frontend(), channel]).inc_by(count as u64);
    }

    pub fn store_op(&self, op: &'static str, elapsed: Duration, ok: bool) {
        let f = &self.families;
        f.store_duration.with_label_values(&[op]).observe(elapsed.as_secs_f64());
        if !ok {
            f.store_errors.with_label_values(&[op]).inc();
        }
    }

    /// A session bound to a device key signed with `alg`.
    pub fn dbsc_registered(&self, alg: &'static str) {
        self.families.dbsc_registrations.with_label_values(&[self.frontend(), alg]).inc();
    }

    pub fn dbsc_refreshed(&self) {
        self.families.dbsc_refreshes.with_label_values(&[self.frontend()]).inc();
    }

    /// `stage`: `register`, `refresh` or `call`; `reason`: why (docs/CONTRACT.md lists them).
    pub fn dbsc_refused(&self, stage: &'static str, reason: &'static str) {
        self.families.dbsc_refusals.with_label_values(&[self.frontend(), stage, reason]).inc();
    }

    pub fn limited(&self, limit: Limit) {
        self.families.limited.with_label_values(&[self.frontend(), limit.label()]).inc();
    }

    /// A WebSocket upgrade request answered with `status`.
    pub fn websocket_upgrade(&self, status: u16) {
        let outcome = match status {
            101 => "upgraded",
            500.. => "failed",
            _ => "refused",
        };
        self.families.websocket_upgrades.with_label_values(&[self.frontend(), outcome]).inc();
    }

    /// Counts a WebSocket as open until the guard is dropped.
    pub fn websocket_opened(&self) -> OpenSocket {
        self.families.websockets_open.inc();
        OpenSocket(self.families.websockets_open.clone())
    }

    pub fn websocket_closed(&self, end: SocketEnd) {
        self.families.websocket_closes.with_label_values(&[self.frontend(), end.label()]).inc();
    }

    /// A configuration reload: `applied`, or refused (the running configuration kept). The
    /// process's, not a frontend's: a reload replaces every frontend at once.
    pub fn config_reload(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "refused" };
        self.families.config_reloads.with_label_values(&[outcome]).inc();
    }

    pub fn tls_certificate_reload(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "refused" };
        self.families.tls_certificate_reloads.with_label_values(&[outcome]).inc();
    }

    pub fn cache(&self) -> CacheMetrics {
        self.families.cache.clone()
    }

    pub fn cache_gauges(&self, cache: CacheName) -> CacheGauges {
        let label = [cache.label()];
        CacheGauges {
            entries: self.families.cache_entries.with_label_values(&label),
            bytes: self.families.cache_bytes.with_label_values(&label),
        }
    }

    /// The Prometheus text exposition format: every frontend's series (any view renders all).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.families.registry.gather(), &mut out) {
            tracing::error!("rendering metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_bounded_labels() {
        let m = Metrics::new().unwrap();
        m.request("api", 204, Duration::from_millis(3));
        m.refresh(RefreshOutcome::Joined);
        m.store_op("get", Duration::from_micros(200), false);
        let text = m.render();
        // The text format sorts each series' labels by name: `frontend` comes where it sorts.
        assert!(
            text.contains("bff_http_requests_total{frontend=\"default\",route=\"api\",status=\"2xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("bff_token_refreshes_total{frontend=\"default\",outcome=\"joined\"} 1"));
        assert!(text.contains("bff_session_store_errors_total{op=\"get\"} 1"));
        assert!(text.contains("bff_refresh_locks_active 0"));
        let socket = m.websocket_opened();
        m.websocket_upgrade(101);
        m.websocket_upgrade(403);
        assert!(m.render().contains("bff_websockets_open 1"));
        drop(socket);
        m.websocket_closed(SocketEnd::Idle);
        let text = m.render();
        assert!(text.contains("bff_websockets_open 0"));
        assert!(text.contains("bff_websocket_upgrades_total{frontend=\"default\",outcome=\"upgraded\"} 1"), "{text}");
        assert!(text.contains("bff_websocket_upgrades_total{frontend=\"default\",outcome=\"refused\"} 1"));
        assert!(text.contains("bff_websocket_closes_total{frontend=\"default\",reason=\"idle_timeout\"} 1"));
    }

    #[test]
    fn frontends_share_one_registry_under_their_own_label() {
        let default = Metrics::new().unwrap();
        let shop = default.for_frontend("shop");
        let admin = shop.for_frontend("admin");
        assert_eq!((default.frontend(), shop.frontend(), admin.frontend()), ("default", "shop", "admin"));
        shop.request("api", 200, Duration::from_millis(1));
        shop.request("api", 201, Duration::from_millis(1));
        admin.request("api", 500, Duration::from_millis(1));
        admin.limited(Limit::UpstreamConcurrency);
        admin.upstream_error("/api", UpstreamFailure::Timeout);
        shop.store_op("get", Duration::from_micros(100), false);
        admin.store_op("get", Duration::from_micros(100), false);
        admin.lock_taken();
        // Every view renders the same registry.
        let text = default.render();
        assert_eq!(text, shop.render());
        assert!(text.contains("bff_http_requests_total{frontend=\"shop\",route=\"api\",status=\"2xx\"} 2"), "{text}");
        assert!(text.contains("bff_http_requests_total{frontend=\"admin\",route=\"api\",status=\"5xx\"} 1"));
        assert!(!text.contains("bff_http_requests_total{frontend=\"default\""), "nothing counted for default");
        assert!(text.contains("bff_requests_limited_total{frontend=\"admin\",limit=\"upstream_concurrency\"} 1"));
        assert!(text.contains("bff_upstream_errors_total{api=\"/api\",frontend=\"admin\",kind=\"timeout\"} 1"));
        // Per-process families: one series for all frontends.
        assert!(text.contains("bff_session_store_errors_total{op=\"get\"} 2"), "{text}");
        assert!(text.contains("bff_refresh_locks_active 1"));
    }

    #[test]
    fn reloads_are_counted_by_outcome() {
        let m = Metrics::new().unwrap().for_frontend("shop");
        m.config_reload(true);
        m.config_reload(false);
        m.config_reload(true);
        let text = m.render();
        assert!(text.contains("bff_config_reloads_total{outcome=\"applied\"} 2"), "{text}");
        assert!(text.contains("bff_config_reloads_total{outcome=\"refused\"} 1"));
    }
}
