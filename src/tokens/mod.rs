//! The token set of a session and where it is kept.
//!
//! The token set lives under its own key, sealed, prefixed with its version in clear
//! (`v7.<sealed>`) so a Lua compare-and-set can check the version without the key to open it.
//! Only this module writes it: `Sessions` (the lifecycle) when a session starts and ends, and
//! the token manager after a refresh, only with that compare-and-set, so a request that read an
//! older set can never write back a refresh token that was already rotated. The writes are
//! private to the module: the compiler holds every other module to reading.

mod backoff;
mod cache;
mod client;
mod hot;
mod lifecycle;
mod manager;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::{AccessToken, RefreshToken};
use serde::{Deserialize, Serialize};

use crate::crypto::Sealer;
use crate::dbsc::DeviceBinding;
use crate::dpop::DpopKey;
use crate::oidc::{Exchanged, LoginResult, RawIdToken, Refreshed};
use crate::session::{KeyLayout, SessionHandle, SessionLifetime, SessionMeta};
use crate::store::{CasOutcome, Store, StoreError, TrackedRead};
use crate::telemetry::error_chain;

pub use cache::TokenCache;
pub use client::{ClientGrant, ClientTokens};
pub use hot::HotToken;
pub use lifecycle::{EndReason, Ended, Listed, Sessions, Started};
pub use manager::{RefreshUnavailable, TokenError, TokenManager, TokenTimings, UsableToken};

/// Which of a session's tokens a route's upstream gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The sign-in's own access token.
    Default,
    /// A token for this resource (RFC 8707), got with the refresh token.
    Resource(String),
    /// A token got by exchanging the default one at the provider (RFC 8693).
    Exchange(Arc<ExchangeTarget>),
}

impl Target {
    /// Where the set keeps this target's token (`None`: the default token).
    pub fn key(&self) -> Option<&str> {
        match self {
            Target::Default => None,
            Target::Resource(resource) => Some(resource),
            Target::Exchange(exchange) => Some(&exchange.key),
        }
    }
}

/// What a token exchange asks for (`api[].audience`, `resource`, `scopes`).
#[derive(Debug, PartialEq, Eq)]
pub struct ExchangeTarget {
    pub audience: Option<String>,
    pub resource: Option<String>,
    pub scopes: Vec<String>,
    /// The token set's key: a JSON array, which no resource key (an absolute URI, starting with
    /// its scheme) can equal, so an exchange and a resource route for the same URI never share
    /// a token; the scopes are part of it, since they change what the token allows.
    key: String,
}

impl ExchangeTarget {
    pub fn new(audience: Option<String>, resource: Option<String>, scopes: Vec<String>) -> ExchangeTarget {
        let key = serde_json::json!(["exchange", audience, resource, scopes]).to_string();
        ExchangeTarget { audience, resource, scopes, key }
    }
}

/// Extend a session's idle timeout at most this often (or every half idle timeout, if that is
/// shorter): a steady stream of API calls costs a write once a minute, and, without the local
/// cache, one read each (with it, one read after each extension, which invalidates the set).
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// Made by [`TokenSet::issue`] only, written by this module only (the fields are private).
#[derive(Serialize, Deserialize)]
pub struct TokenSet {
    access_token: AccessToken,
    refresh_token: Option<RefreshToken>,
    id_token: Option<RawIdToken>,
    #[serde(flatten)]
    expiry: Expiry,
    sub: String,
    /// The provider's session id, to find this session again for back-channel logout.
    #[serde(default)]
    provider_sid: Option<String>,
    version: u64,
    /// The version that issued `access_token` (a refresh for another audience moves `version`
    /// only). Absent in sets written before audiences: `version`.
    #[serde(default)]
    access_version: Option<u64>,
    /// Tokens for other audiences (RFC 8707), by resource, got with the one refresh token.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    audiences: BTreeMap<String, AudienceToken>,
    /// RFC 9449: the key every token of the set is bound to (`oidc.dpop`), made at sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dpop_key: Option<DpopKey>,
    /// `access_token` was got because an upstream refused the one before it: a 401 on it is
    /// passed through, not renewed again, until it is due (in the set, so every instance
    /// agrees: one renewal per token version, whichever instance the 401s reach).
    #[serde(default, skip_serializing_if = "is_false")]
    access_after_rejection: bool,
    /// How the user authenticated at sign-in (the ID token's `acr` and `auth_time`), for the
    /// proxy's step-up checks (`api[].acr_values`, `max_age`) without reading the session's
    /// state: a refresh keeps them (it is no new authentication). Absent in sets written
    /// before bff kept them: such a session satisfies no requirement until it signs in again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth_time: Option<u64>,
    /// The browser's device key, once it registered (DBSC, `session.dbsc`): every instance
    /// then asks this session's calls for the bound cookie. Kept across refreshes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<DeviceBinding>,
}

fn is_false(b: &bool) -> bool {
    !b
}

/// A session's token for one resource.
#[derive(Clone, Serialize, Deserialize)]
struct AudienceToken {
    access_token: AccessToken,
    expires_at: u64,
    lifetime_secs: u64,
    /// The version of the set that issued it.
    version: u64,
    /// See `TokenSet::access_after_rejection`.
    #[serde(default, skip_serializing_if = "is_false")]
    after_rejection: bool,
    /// Sent as `Bearer` whatever the set's DPoP key: an exchanged token (RFC 8693), which bff
    /// asks for without a proof, so the provider cannot bind it.
    #[serde(default, skip_serializing_if = "is_false")]
    bearer: bool,
}

/// One access token of a set and what decides its use.
pub struct TokenOf<'s> {
    pub access_token: &'s AccessToken,
    pub dpop_key: Option<&'s DpopKey>,
    pub expiry: Expiry,
    /// The set version that issued this token: a 401 on it asks for a later one.
    pub version: u64,
    /// It was got after an upstream refused the one before it.
    pub after_rejection: bool,
}

/// When a session's access token and the session itself end, and the decisions made on them;
/// one type for the whole set and for the proxy's decoded view of it (`HotToken`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiry {
    /// Unix seconds.
    pub expires_at: u64,
    /// The access token's lifetime as issued, to cap the refresh skew.
    pub lifetime_secs: u64,
    /// Unix seconds: the session's absolute end.
    pub session_expires_at: u64,
}

/// What the provider issued, at sign-in or at a refresh.
struct Issued {
    access_token: AccessToken,
    refresh_token: Option<RefreshToken>,
    id_token: Option<RawIdToken>,
    expires_in: Option<Duration>,
    dpop_key: Option<DpopKey>,
}

impl From<LoginResult> for Issued {
    fn from(login: LoginResult) -> Self {
        Issued {
            access_token: login.access_token,
            refresh_token: login.refresh_token,
            id_token: Some(login.id_token),
            expires_in: login.expires_in,
            dpop_key: login.dpop_key,
        }
    }
}

impl From<Refreshed> for Issued {
    fn from(r: Refreshed) -> Self {
        Issued {
            access_token: r.access_token,
            refresh_token: r.refresh_token,
            id_token: r.id_token,
            expires_in: r.expires_in,
            dpop_key: None,
        }
    }
}

/// Who a session belongs to, until when, and how they authenticated: fixed at sign-in, carried
/// by every later set.
struct Owner {
    sub: String,
    provider_sid: Option<String>,
    session_expires_at: u64,
    acr: Option<String>,
    auth_time: Option<u64>,
}

impl Owner {
    /// The owner a set carries on to the next one.
    fn of(set: &TokenSet) -> Owner {
        Owner {
            sub: set.sub.clone(),
            provider_sid: set.provider_sid.clone(),
            session_expires_at: set.expiry.session_expires_at,
            acr: set.acr.clone(),
            auth_time: set.auth_time,
        }
    }
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("expires_at", &self.expiry.expires_at)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Expiry {
    /// The access token expires within the skew, capped at half its lifetime so short-lived
    /// tokens are still used for a while before being refreshed.
    pub fn needs_refresh(&self, now: u64, skew: Duration) -> bool {
        let skew = skew.as_secs().min(self.lifetime_secs / 2);
        now.saturating_add(skew) >= self.expires_at
    }

    pub fn is_expired(&self, now: u64) -> bool {
        now >= self.expires_at
    }

    pub fn session_over(&self, now: u64) -> bool {
        now >= self.session_expires_at
    }
}

impl TokenSet {
    /// The one constructor: what the provider issued, for `owner`, following `previous` (none
    /// at sign-in). An answer without a refresh token or an ID token keeps the previous ones
    /// (the provider did not rotate).
    fn issue(
        issued: Issued,
        owner: Owner,
        previous: Option<&TokenSet>,
        now: u64,
        default_expires_in: Duration,
    ) -> TokenSet {
        let lifetime = issued.expires_in.unwrap_or(default_expires_in).as_secs();
        let version = previous.map_or(1, |p| p.version + 1);
        TokenSet {
            access_token: issued.access_token,
            refresh_token: issued.refresh_token.or_else(|| previous.and_then(|p| p.refresh_token.clone())),
            id_token: issued.id_token.or_else(|| previous.and_then(|p| p.id_token.clone())),
            expiry: Expiry {
                expires_at: now + lifetime,
                lifetime_secs: lifetime,
                session_expires_at: owner.session_expires_at,
            },
            sub: owner.sub,
            provider_sid: owner.provider_sid,
            version,
            access_version: Some(version),
            // Each audience's token lives on until it is due (the refresh token is shared).
            audiences: previous.map(|p| p.audiences.clone()).unwrap_or_default(),
            dpop_key: issued.dpop_key.or_else(|| previous.and_then(|p| p.dpop_key.clone())),
            access_after_rejection: false,
            acr: owner.acr,
            auth_time: owner.auth_time,
            device: previous.and_then(|p| p.device.clone()),
        }
    }

    /// The next version, after a refresh for `resource` (the default audience when `None`):
    /// only that audience's token changes; a rotated refresh token replaces the one all use.
    fn refreshed(&self, r: Refreshed, resource: Option<&str>, now: u64, default_expires_in: Duration) -> TokenSet {
        let owner = Owner::of(self);
        let Some(resource) = resource else {
            return TokenSet::issue(r.into(), owner, Some(self), now, default_expires_in);
        };
        let Refreshed { access_token, refresh_token, id_token, expires_in } = r;
        let lifetime = expires_in.unwrap_or(default_expires_in).as_secs();
        let kept = Issued {
            access_token: self.access_token.clone(),
            refresh_token,
            id_token,
            expires_in: None,
            dpop_key: None,
        };
        let mut next = TokenSet::issue(kept, owner, Some(self), now, default_expires_in);
        // The default audience's token is the one it was.
        next.expiry = self.expiry;
        next.access_version = Some(self.access_version());
        next.access_after_rejection = self.access_after_rejection;
        let token = AudienceToken {
            access_token,
            expires_at: now + lifetime,
            lifetime_secs: lifetime,
            version: next.version,
            after_rejection: false,
            bearer: false,
        };
        next.audiences.insert(resource.to_string(), token);
        next
    }

    /// The next version, after a token exchange stored under `key`: that token is new, everything
    /// else (the default token, the refresh token, the other audiences) is kept.
    fn exchanged(&self, key: &str, exchanged: Exchanged, now: u64, default_expires_in: Duration) -> TokenSet {
        let mut next = self.successor();
        let lifetime = exchanged.expires_in.unwrap_or(default_expires_in).as_secs();
        let token = AudienceToken {
            access_token: exchanged.access_token,
            expires_at: now + lifetime,
            lifetime_secs: lifetime,
            version: next.version,
            after_rejection: false,
            bearer: true,
        };
        next.audiences.insert(key.to_string(), token);
        next
    }

    /// The same set at the next version; its tokens keep the versions that issued them.
    fn successor(&self) -> TokenSet {
        TokenSet {
            access_token: self.access_token.clone(),
            refresh_token: self.refresh_token.clone(),
            id_token: self.id_token.clone(),
            expiry: self.expiry,
            sub: self.sub.clone(),
            provider_sid: self.provider_sid.clone(),
            version: self.version + 1,
            access_version: Some(self.access_version()),
            audiences: self.audiences.clone(),
            dpop_key: self.dpop_key.clone(),
            access_after_rejection: self.access_after_rejection,
            acr: self.acr.clone(),
            auth_time: self.auth_time,
            device: self.device.clone(),
        }
    }

    /// Marks `resource`'s token (the default audience's when `None`) as got after an upstream
    /// refused the one before it.
    fn mark_after_rejection(&mut self, resource: Option<&str>) {
        match resource {
            None => self.access_after_rejection = true,
            Some(r) => {
                if let Some(token) = self.audiences.get_mut(r) {
                    token.after_rejection = true;
                }
            }
        }
    }

    fn access_version(&self) -> u64 {
        self.access_version.unwrap_or(self.version)
    }

    /// How the set's tokens are sent: `DPoP` when they are bound to a key, else `Bearer`.
    pub fn token_type(&self) -> &'static str {
        if self.dpop_key.is_some() { "DPoP" } else { "Bearer" }
    }

    /// The default audience's token.
    pub fn access(&self) -> TokenOf<'_> {
        TokenOf {
            access_token: &self.access_token,
            dpop_key: self.dpop_key.as_ref(),
            expiry: self.expiry,
            version: self.access_version(),
            after_rejection: self.access_after_rejection,
        }
    }

    /// The token for `resource` (the default audience when `None`), if the set has one.
    pub fn token_for(&self, resource: Option<&str>) -> Option<TokenOf<'_>> {
        match resource {
            None => Some(self.access()),
            Some(r) => self.audiences.get(r).map(|t| TokenOf {
                access_token: &t.access_token,
                dpop_key: self.dpop_key.as_ref().filter(|_| !t.bearer),
                expiry: Expiry { expires_at: t.expires_at, lifetime_secs: t.lifetime_secs, ..self.expiry },
                version: t.version,
                after_rejection: t.after_rejection,
            }),
        }
    }

    pub fn expiry(&self) -> Expiry {
        self.expiry
    }

    /// The browser's device key, if the session registered one (DBSC).
    pub fn device(&self) -> Option<&DeviceBinding> {
        self.device.as_ref()
    }

    /// The next version, bound to `device`: nothing else changes (the tokens keep the versions
    /// that issued them), but the version moves, so a refresh that read the set before cannot
    /// write over the binding.
    fn bound_to(&self, device: DeviceBinding) -> TokenSet {
        TokenSet { device: Some(device), ..self.successor() }
    }
}

/// `Authorization: Bearer <access token>`, made once per token set and marked sensitive (`Debug`
/// shows no value; HTTP/2 never indexes it). `None` for a token that is not a valid header value.
pub fn bearer_header(token: &AccessToken) -> Option<hyper::header::HeaderValue> {
    authorization_header("Bearer", token)
}

fn authorization_header(scheme: &str, token: &AccessToken) -> Option<hyper::header::HeaderValue> {
    let mut value = hyper::header::HeaderValue::try_from(format!("{scheme} {}", token.secret())).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// What a call needs to send a DPoP-bound token (RFC 9449 §7): the key and the token's hash.
#[derive(Clone)]
pub struct DpopBinding {
    pub key: DpopKey,
    /// `ath`, computed once per token.
    pub ath: Arc<str>,
}

/// The `Authorization` header of a token of a set with `dpop_key` (`DPoP …`) or without
/// (`Bearer …`), and the binding a proof needs.
pub(super) fn presented(
    token: &AccessToken,
    dpop_key: Option<&DpopKey>,
) -> (Option<hyper::header::HeaderValue>, Option<DpopBinding>) {
    match dpop_key {
        Some(key) => (
            authorization_header("DPoP", token),
            Some(DpopBinding { key: key.clone(), ath: crate::dpop::access_token_hash(token.secret()).into() }),
        ),
        None => (bearer_header(token), None),
    }
}

fn version_prefix(version: u64) -> Vec<u8> {
    format!("v{version}.").into_bytes()
}

/// Reads and writes token sets; also extends a session's idle time to live.
#[derive(Clone)]
pub struct TokenStore {
    store: Store,
    sealer: Sealer,
    keys: KeyLayout,
    lifetime: SessionLifetime,
    hot: Arc<hot::HotViews>,
    /// The coherent local cache, when on and the store can keep it coherent.
    cache: Option<Arc<TokenCache>>,
}

impl TokenStore {
    pub fn new(store: Store, sealer: Sealer, keys: KeyLayout, lifetime: SessionLifetime) -> TokenStore {
        TokenStore { store, sealer, keys, lifetime, hot: Arc::default(), cache: None }
    }

    /// Unix seconds by the clock lifetimes are decided by.
    pub fn now(&self) -> u64 {
        self.lifetime.now()
    }

    pub fn clock(&self) -> &crate::clock::Clock {
        &self.lifetime.clock
    }

    /// The same, answering the proxy's reads from `cache` (the store must be the one that
    /// keeps it coherent: `Store::track_changes`).
    pub fn with_cache(self, cache: Arc<TokenCache>) -> TokenStore {
        TokenStore { cache: Some(cache), ..self }
    }

    fn keys(&self) -> &KeyLayout {
        &self.keys
    }

    fn store(&self) -> &Store {
        &self.store
    }

    fn encode(&self, key: &str, set: &TokenSet) -> Result<Vec<u8>, StoreError> {
        let plain = serde_json::to_vec(set).map_err(|source| StoreError::Encoding { what: "a token set", source })?;
        let mut out = version_prefix(set.version);
        let aad = [key.as_bytes(), &out].concat();
        out.extend_from_slice(&self.sealer.seal(&aad, &plain));
        Ok(out)
    }

    /// The token set, and whether it was sealed with the current secret.
    fn decode(&self, key: &str, raw: &[u8]) -> Option<(TokenSet, bool)> {
        let dot = raw.iter().position(|b| *b == b'.')?;
        let (prefix, sealed) = (&raw[..=dot], &raw[dot + 1..]);
        let aad = [key.as_bytes(), prefix].concat();
        let (plain, current) = self.sealer.open_noting_key(&aad, sealed)?;
        let set: TokenSet = serde_json::from_slice(&plain).ok()?;
        // The clear prefix is authenticated as associated data; check it names this version.
        (version_prefix(set.version) == prefix).then_some((set, current))
    }

    /// The first token set of a session, at login.
    async fn create(&self, handle: &SessionHandle, set: &TokenSet) -> Result<(), StoreError> {
        let key = self.keys.tokens(handle);
        let ttl = self.lifetime.ttl(set.expiry.session_expires_at).unwrap_or(Duration::from_millis(1));
        self.store.set(&key, &self.encode(&key, set)?, ttl).await
    }

    /// A new session's device and start, and its first use (the start), each sealed under its
    /// own key, for as long as its token set.
    async fn create_meta(&self, handle: &SessionHandle, meta: &SessionMeta, expires_at: u64) -> Result<(), StoreError> {
        let key = self.keys.session_meta(handle);
        let ttl = self.lifetime.ttl(expires_at).unwrap_or(Duration::from_millis(1));
        let plain =
            serde_json::to_vec(meta).map_err(|source| StoreError::Encoding { what: "a session's device", source })?;
        self.store.set(&key, &self.sealer.seal(key.as_bytes(), &plain), ttl).await?;
        let seen_key = self.keys.session_seen(handle);
        let minute = meta.created_at / 60 * 60;
        self.store.set(&seen_key, &self.sealer.seal(seen_key.as_bytes(), minute.to_string().as_bytes()), ttl).await
    }

    /// What the user is shown of a session: its device and start, and when it was last used
    /// (Unix seconds, to the minute; `None` if unreadable). `None`: nothing is kept
    /// (the session ended, or it started before sessions kept it).
    pub async fn meta(&self, handle: &SessionHandle) -> Result<Option<(SessionMeta, Option<u64>)>, StoreError> {
        let key = self.keys.session_meta(handle);
        let Some(raw) = self.store.get(&key).await? else { return Ok(None) };
        let Some(meta) = self.sealer.open(key.as_bytes(), &raw).and_then(|p| serde_json::from_slice(&p).ok()) else {
            return Ok(None);
        };
        let seen_key = self.keys.session_seen(handle);
        let seen = self.store.get(&seen_key).await?.and_then(|raw| {
            let plain = self.sealer.open(seen_key.as_bytes(), &raw)?;
            std::str::from_utf8(&plain).ok()?.parse::<u64>().ok()
        });
        Ok(Some((meta, seen)))
    }

    /// Whether the session's token set is still there (one read, nothing opened).
    pub async fn exists(&self, handle: &SessionHandle) -> Result<bool, StoreError> {
        Ok(self.store.get(&self.keys.tokens(handle)).await?.is_some())
    }

    /// One round trip. `None`: no session (logged out, expired, or unreadable).
    pub async fn load(&self, handle: &SessionHandle) -> Result<Option<TokenSet>, StoreError> {
        let key = self.keys.tokens(handle);
        let Some((raw, ttl)) = self.store.get_with_ttl(&key).await? else { return Ok(None) };
        let Some((set, _)) = self.open(handle, &key, &raw).await? else { return Ok(None) };
        self.touch_if_due(handle, ttl, set.expiry.session_expires_at);
        Ok(Some(set))
    }

    /// The proxy's read. With the cache: no store command while the cached value is valid; a
    /// miss reads on the tracked connection and fills. Without: one round trip (`load_uncached`).
    /// How it was read goes on the current span's `bff.cache` (the proxy's "session read").
    pub async fn load_hot(&self, handle: &SessionHandle) -> Result<Option<HotToken>, StoreError> {
        // Only a debug span has the field: without one (nothing exports or logs at debug), no
        // look-up of the current span on every call.
        let read = |how: &'static str| {
            if tracing::level_enabled!(tracing::Level::DEBUG) {
                tracing::Span::current().record("bff.cache", how);
            }
        };
        let Some(cache) = &self.cache else {
            read("off");
            return self.load_uncached(handle).await;
        };
        let now = Instant::now();
        if let Some(entry) = cache.get(handle, now) {
            read("hit");
            let remaining = entry.valid_until.saturating_duration_since(now);
            if let Some(target) = self.touch_target(remaining, entry.view.expiry.session_expires_at)
                && entry.start_touch()
            {
                self.touch(handle, target);
            }
            return Ok(Some(entry.view.clone()));
        }
        read("miss");
        // Boxed: the miss's store reads would otherwise make every call's future larger,
        // hits included (see `Store`'s `dispatch!`).
        Box::pin(self.fill(cache, handle, now)).await
    }

    /// A cache miss: read on the tracked connection and fill.
    async fn fill(
        &self,
        cache: &TokenCache,
        handle: &SessionHandle,
        now: Instant,
    ) -> Result<Option<HotToken>, StoreError> {
        let Some(fill) = cache.begin_fill(handle) else { return self.load_uncached(handle).await };
        let key = self.keys.tokens(handle);
        // On every early return the ticket is dropped, which frees its placeholder.
        let (raw, ttl) = match self.store.read_tracked(&key).await {
            Ok(TrackedRead::Value(Some(read))) => read,
            Ok(TrackedRead::Value(None)) => return Ok(None),
            Ok(TrackedRead::NotTracking) => return self.load_uncached(handle).await,
            // The tracked connection failed (half-open until its probe notices): this call
            // reads on the ordinary connection instead of failing.
            Err(e) => {
                tracing::debug!("tracked read failed ({}); reading without the cache", error_chain(&e));
                return self.load_uncached(handle).await;
            }
        };
        let Some((set, resealed)) = self.open(handle, &key, &raw).await? else { return Ok(None) };
        let view = HotToken::from(&set);
        if !resealed {
            cache.complete_fill(fill, view.clone(), now + ttl);
        }
        self.touch_if_due(handle, ttl, view.expiry.session_expires_at);
        Ok(Some(view))
    }

    /// One round trip; a value already opened once is not opened again (see `hot`).
    async fn load_uncached(&self, handle: &SessionHandle) -> Result<Option<HotToken>, StoreError> {
        let key = self.keys.tokens(handle);
        let Some((raw, ttl)) = self.store.get_with_ttl(&key).await? else {
            self.hot.forget(&key);
            return Ok(None);
        };
        let fingerprint = hot::fingerprint(&raw);
        let known = fingerprint.as_deref().and_then(|fp| self.hot.get(&key, fp));
        let view = match known {
            Some(view) => view,
            None => {
                let Some((set, resealed)) = self.open(handle, &key, &raw).await? else { return Ok(None) };
                let view = HotToken::from(&set);
                if let Some(fp) = fingerprint.filter(|_| !resealed) {
                    self.hot.put(&key, fp, view.clone());
                }
                view
            }
        };
        self.touch_if_due(handle, ttl, view.expiry.session_expires_at);
        Ok(Some(view))
    }

    /// Opens a stored value; one sealed under a rotated-out secret is sealed again (same
    /// version, same TTL). The flag tells whether it was.
    async fn open(
        &self,
        handle: &SessionHandle,
        key: &str,
        raw: &[u8],
    ) -> Result<Option<(TokenSet, bool)>, StoreError> {
        let Some((set, current)) = self.decode(key, raw) else {
            tracing::warn!(session = handle.short(), "token set does not open with any configured secret");
            self.hot.forget(key);
            return Ok(None);
        };
        if !current {
            self.replace(handle, set.version, &set).await?;
        }
        Ok(Some((set, !current)))
    }

    /// Writes `new` only if the stored set is still `expected_version`.
    async fn replace(
        &self,
        handle: &SessionHandle,
        expected_version: u64,
        new: &TokenSet,
    ) -> Result<CasOutcome, StoreError> {
        let key = self.keys.tokens(handle);
        self.store.replace_if_prefix(&key, &version_prefix(expected_version), &self.encode(&key, new)?).await
    }

    /// Removes everything of a session: its state, token set and refresh lock.
    async fn delete_session(&self, handle: &SessionHandle) -> Result<(), StoreError> {
        self.store.delete(&self.keys.all_of_session(handle)).await
    }

    /// The idle time to live to extend to, when the last extension is over a minute old (the
    /// remaining time to live tells).
    fn touch_target(&self, ttl: Duration, session_expires_at: u64) -> Option<Duration> {
        let target = self.lifetime.ttl(session_expires_at)?;
        (target > ttl + TOUCH_INTERVAL.min(self.lifetime.idle / 2)).then_some(target)
    }

    fn touch_if_due(&self, handle: &SessionHandle, ttl: Duration, session_expires_at: u64) {
        if let Some(target) = self.touch_target(ttl, session_expires_at) {
            self.touch(handle, target);
        }
    }

    /// Extends the idle timeout in the background: the request does not wait for it. A failed
    /// extension drops the cached value, so the next call reads Redis and tries again (a cached
    /// value starts one extension only). It also records when the session was last used: an
    /// extension is due at most once a minute and on use only, so the record is right to the
    /// minute without a store command of its own on any call.
    fn touch(&self, handle: &SessionHandle, target: Duration) {
        let store = self.store.clone();
        let keys = vec![self.keys.session(handle), self.keys.tokens(handle), self.keys.session_meta(handle)];
        let seen_key = self.keys.session_seen(handle);
        let minute = self.now() / 60 * 60;
        let seen = self.sealer.seal(seen_key.as_bytes(), minute.to_string().as_bytes());
        let cache = self.cache.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            let extended = match store.expire(&keys, target).await {
                // Only over the record made at sign-in: a session that ended meanwhile gets none.
                Ok(()) => store.set_if_exists(&seen_key, &seen, target).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = extended {
                tracing::warn!(session = handle.short(), "could not extend the session: {}", error_chain(&e));
                if let Some(cache) = cache {
                    cache.forget_session(&handle);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(access: &str, refresh: Option<&str>, expires_in: Option<u64>) -> Issued {
        Issued {
            access_token: AccessToken::new(access.into()),
            refresh_token: refresh.map(|r| RefreshToken::new(r.into())),
            id_token: None,
            expires_in: expires_in.map(Duration::from_secs),
            dpop_key: None,
        }
    }

    fn owner() -> Owner {
        Owner {
            sub: "s".into(),
            provider_sid: Some("sid".into()),
            session_expires_at: u64::MAX,
            acr: Some("mfa".into()),
            auth_time: Some(1000),
        }
    }

    fn set(expires_at: u64, lifetime_secs: u64) -> TokenSet {
        let now = expires_at - lifetime_secs;
        TokenSet::issue(issued("at", Some("rt"), Some(lifetime_secs)), owner(), None, now, Duration::ZERO)
    }

    #[test]
    fn refresh_is_due_within_the_skew_capped_at_half_the_lifetime() {
        let skew = Duration::from_secs(30);
        let expiry = |expires_at, lifetime_secs| set(expires_at, lifetime_secs).expiry();
        // A 300 s token refreshes 30 s before expiry.
        assert!(!expiry(1000, 300).needs_refresh(969, skew));
        assert!(expiry(1000, 300).needs_refresh(970, skew));
        // A 10 s token refreshes 5 s before expiry, not at once.
        assert!(!expiry(1000, 10).needs_refresh(994, skew));
        assert!(expiry(1000, 10).needs_refresh(995, skew));
        assert!(expiry(1000, 10).is_expired(1000));
        assert!(!expiry(1000, 10).session_over(1000));
    }

    #[test]
    fn a_refresh_keeps_the_owner_and_what_the_provider_did_not_rotate() {
        let first = set(1300, 300);
        assert_eq!(first.version, 1);
        let rotated =
            TokenSet::issue(issued("at2", Some("rt2"), None), owner(), Some(&first), 2000, Duration::from_secs(60));
        assert_eq!((rotated.version, rotated.expiry.expires_at, rotated.expiry.lifetime_secs), (2, 2060, 60));
        assert_eq!(rotated.refresh_token.as_ref().map(|t| t.secret().as_str()), Some("rt2"));
        let kept = TokenSet::issue(issued("at3", None, Some(10)), owner(), Some(&rotated), 3000, Duration::ZERO);
        assert_eq!(kept.refresh_token.as_ref().map(|t| t.secret().as_str()), Some("rt2"), "not rotated: kept");
        assert_eq!((kept.version, kept.provider_sid.as_deref()), (3, Some("sid")));
    }

    #[test]
    fn the_sign_ins_authentication_outlives_refreshes_and_exchanges_and_old_sets_still_open() {
        let first = set(1300, 300);
        let auth = |s: &TokenSet| (s.acr.clone(), s.auth_time);
        let signed_in = (Some("mfa".to_string()), Some(1000));
        let default = first.refreshed(refreshed("at2", Some("rt2"), 300), None, 1200, Duration::ZERO);
        let orders = default.refreshed(refreshed("o", None, 60), Some("https://orders"), 1250, Duration::ZERO);
        let exchanged = orders.exchanged(
            "k",
            Exchanged { access_token: AccessToken::new("x".into()), expires_in: None },
            1260,
            Duration::ZERO,
        );
        for s in [&first, &default, &orders, &exchanged] {
            assert_eq!(auth(s), signed_in, "a refresh is no new authentication");
        }
        let view = HotToken::from(&exchanged);
        assert_eq!((view.acr.as_deref(), view.auth_time), (Some("mfa"), Some(1000)));
        // A set written before bff kept them opens, without them.
        let mut json = serde_json::to_value(&first).unwrap_or_default();
        if let Some(o) = json.as_object_mut() {
            o.remove("acr");
            o.remove("auth_time");
        }
        let old: Option<TokenSet> = serde_json::from_value(json).ok();
        assert_eq!(old.as_ref().map(auth), Some((None, None)));
    }

    fn refreshed(access: &str, refresh: Option<&str>, expires_in: u64) -> Refreshed {
        Refreshed {
            access_token: AccessToken::new(access.into()),
            refresh_token: refresh.map(|r| RefreshToken::new(r.into())),
            id_token: None,
            expires_in: Some(Duration::from_secs(expires_in)),
        }
    }

    fn secret_of(token: Option<TokenOf<'_>>) -> Option<String> {
        token.map(|t| t.access_token.secret().clone())
    }

    #[test]
    fn an_audience_refresh_changes_that_audience_only_and_shares_the_rotated_refresh_token() {
        let first = set(1300, 300);
        assert!(first.token_for(Some("https://orders")).is_none());
        let orders =
            first.refreshed(refreshed("orders-1", Some("rt2"), 60), Some("https://orders"), 1100, Duration::ZERO);
        assert_eq!(orders.version, 2);
        assert_eq!(secret_of(orders.token_for(None)).as_deref(), Some("at"), "the default token is kept");
        assert_eq!(orders.expiry(), first.expiry());
        assert_eq!(orders.access().version, 1, "and still counts as issued by version 1");
        let token = orders.token_for(Some("https://orders"));
        assert_eq!(
            token.as_ref().map(|t| (t.expiry.expires_at, t.expiry.lifetime_secs, t.version)),
            Some((1160, 60, 2))
        );
        assert_eq!(orders.refresh_token.as_ref().map(|t| t.secret().as_str()), Some("rt2"), "rotation applies to all");

        // A default refresh keeps the audience tokens; an audience refresh without rotation
        // keeps the refresh token.
        let default = orders.refreshed(refreshed("at2", None, 300), None, 1200, Duration::ZERO);
        assert_eq!((default.version, default.access().version), (3, 3));
        assert_eq!(secret_of(default.token_for(Some("https://orders"))).as_deref(), Some("orders-1"));
        assert_eq!(default.token_for(Some("https://orders")).map(|t| t.version), Some(2));
        let billing =
            default.refreshed(refreshed("billing-1", None, 60), Some("https://billing"), 1250, Duration::ZERO);
        assert_eq!(billing.refresh_token.as_ref().map(|t| t.secret().as_str()), Some("rt2"));
        assert_eq!(secret_of(billing.token_for(Some("https://billing"))).as_deref(), Some("billing-1"));
        assert_eq!(secret_of(billing.token_for(Some("https://orders"))).as_deref(), Some("orders-1"));
    }

    #[test]
    fn an_exchanged_token_is_kept_under_a_key_of_its_own_and_sent_as_bearer() {
        let exchange = ExchangeTarget::new(None, Some("https://orders".into()), vec!["a".into()]);
        let target = Target::Exchange(Arc::new(exchange));
        let key = target.key().unwrap_or_default().to_string();
        assert_ne!(Some(key.as_str()), Target::Resource("https://orders".into()).key());
        let other = ExchangeTarget::new(None, Some("https://orders".into()), vec!["b".into()]);
        assert_ne!(key, other.key, "other scopes, another token");
        let by_audience = ExchangeTarget::new(Some("https://orders".into()), None, Vec::new());
        assert_ne!(by_audience.key, ExchangeTarget::new(None, Some("https://orders".into()), Vec::new()).key);

        let mut first = set(1300, 300);
        first.dpop_key = crate::dpop::DpopKey::generate().ok();
        let orders = first.refreshed(refreshed("orders-1", None, 60), Some("https://orders"), 1100, Duration::ZERO);
        let exchanged =
            Exchanged { access_token: AccessToken::new("x-1".into()), expires_in: Some(Duration::from_secs(30)) };
        let next = orders.exchanged(&key, exchanged, 1200, Duration::ZERO);
        assert_eq!(next.version, orders.version + 1);
        assert_eq!(secret_of(next.token_for(Some(&key))).as_deref(), Some("x-1"));
        assert_eq!(secret_of(next.token_for(Some("https://orders"))).as_deref(), Some("orders-1"), "kept");
        assert_eq!(secret_of(next.token_for(None)).as_deref(), Some("at"));
        assert_eq!(next.access().version, 1, "the default token is the one it was");
        assert_eq!(next.refresh_token.as_ref().map(|t| t.secret().as_str()), Some("rt"));
        let token = next.token_for(Some(&key));
        assert_eq!(token.as_ref().map(|t| (t.expiry.expires_at, t.version)), Some((1230, next.version)));
        assert!(token.is_some_and(|t| t.dpop_key.is_none()), "an exchanged token is never DPoP-bound");
        assert!(next.token_for(Some("https://orders")).is_some_and(|t| t.dpop_key.is_some()));
        // And it survives a refresh of the default token.
        let default = next.refreshed(refreshed("at2", None, 300), None, 1250, Duration::ZERO);
        assert_eq!(secret_of(default.token_for(Some(&key))).as_deref(), Some("x-1"));
    }

    #[test]
    fn a_set_written_before_audiences_opens_with_its_token_issued_by_its_version() {
        let mut json = serde_json::to_value(set(1000, 10)).unwrap_or_default();
        if let Some(obj) = json.as_object_mut() {
            obj.remove("access_version");
            obj.insert("version".into(), serde_json::json!(7));
        }
        let old: Option<TokenSet> = serde_json::from_value(json).ok();
        assert_eq!(old.map(|s| s.access().version), Some(7));
    }

    #[test]
    fn the_stored_form_is_unchanged_by_the_expiry_type() {
        // Sets written before `Expiry` existed must still open.
        let json = serde_json::to_value(set(1000, 10)).unwrap_or_default();
        for field in ["expires_at", "lifetime_secs", "session_expires_at", "version", "sub", "provider_sid"] {
            assert!(json.get(field).is_some(), "{field} in {json}");
        }
    }

    #[test]
    fn debug_never_shows_tokens() {
        let shown = format!("{:?}", set(1, 1));
        assert!(!shown.contains("at\"") && !shown.contains("rt"), "{shown}");
    }

    #[tokio::test]
    async fn the_idle_extension_records_the_last_use_to_the_minute_and_never_revives_an_ended_session() {
        let memory = crate::store::MemoryStore::new();
        let clock = crate::clock::Clock::system();
        let ts = TokenStore::new(
            Store::memory(memory.clone()),
            Sealer::new(&[secrecy::SecretString::from("x".repeat(64))]),
            KeyLayout::new("t:"),
            SessionLifetime { idle: Duration::from_secs(600), clock: clock.clone() },
        );
        let handle = crate::session::SessionId::generate().handle();
        let started = clock.now_unix();
        let meta = SessionMeta::new(started, Some("curl/8"), None);
        let far = started + 86_400;
        assert!(ts.create_meta(&handle, &meta, far).await.is_ok());
        let read = ts.meta(&handle).await.ok().flatten();
        assert_eq!(
            read.as_ref().map(|(m, seen)| (m.user_agent.as_str(), *seen)),
            Some(("curl", Some(started / 60 * 60)))
        );

        // Used three minutes later: the extension writes the minute of that use.
        clock.advance(Duration::from_secs(180));
        ts.touch(&handle, Duration::from_secs(600));
        let expected = Some((started + 180) / 60 * 60);
        for _ in 0..200 {
            if ts.meta(&handle).await.ok().flatten().and_then(|(_, seen)| seen) == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(ts.meta(&handle).await.ok().flatten().and_then(|(_, seen)| seen), expected);

        // An extension racing the session's end writes nothing back (a negative: the spawned
        // extension is given a moment to run on this single-threaded runtime).
        assert!(ts.delete_session(&handle).await.is_ok());
        ts.touch(&handle, Duration::from_secs(600));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(memory.keys(), Vec::<String>::new());
    }

    #[test]
    fn encoded_sets_carry_their_version_and_refuse_another_key() {
        let secret = secrecy::SecretString::from("x".repeat(64));
        let ts = TokenStore::new(
            Store::memory(crate::store::MemoryStore::new()),
            Sealer::new(&[secret]),
            KeyLayout::new("t:"),
            SessionLifetime { idle: Duration::from_secs(60), clock: crate::clock::Clock::system() },
        );
        let mut s = set(5, 5);
        s.version = 42;
        let raw = ts.encode("k1", &s).unwrap_or_default();
        assert!(raw.starts_with(b"v42."));
        assert_eq!(ts.decode("k1", &raw).map(|(s, current)| (s.version, current)), Some((42, true)));
        assert!(ts.decode("k2", &raw).is_none());
        let mut forged = b"v43.".to_vec();
        forged.extend_from_slice(&raw[4..]);
        assert!(ts.decode("k1", &forged).is_none(), "the clear version is authenticated");
    }
}
