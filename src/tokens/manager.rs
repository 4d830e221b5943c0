//! A usable access token for a session, refreshing it at most once at a time per session across
//! every instance that shares the store.
//!
//! In one process, concurrent callers for a session share one future ("flight"). Across
//! processes, the flight takes a lock in the store (`SET NX PX` with a random owner, renewed while
//! the provider call runs, released by its owner only); a flight that finds the lock taken polls
//! the token set until its version moves, or until the lock's lease expires and it can take it.
//! After taking the lock the flight reads the token set again and skips the refresh if someone
//! else already did it: two refreshes with a rotating provider that detects reuse would revoke
//! the whole grant.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::Shared;
use hyper::header::HeaderValue;
use tracing::Instrument;

use super::backoff::Backoff;
use super::{
    ClientTokens, DpopBinding, EndReason, ExchangeTarget, Expiry, HotToken, Sessions, Target, TokenOf, TokenSet,
    TokenStore, presented,
};
use crate::crypto::random_token;
use crate::dbsc::DeviceBinding;
use crate::metrics::{ExchangeOutcome, Metrics, RefreshOutcome};
use crate::oidc::{ExchangeError, Oidc, OidcError, RefreshError};
use crate::session::SessionHandle;
use crate::store::{CasOutcome, StoreError};
use crate::telemetry::{self, error_chain};

/// How often a flight that waits on another instance's refresh looks at the token set.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// An access token ready to attach, and which version of the token set it came from.
#[derive(Clone)]
pub struct UsableToken {
    /// The ready `Authorization` header (`Bearer …`, or `DPoP …`).
    pub authorization: Option<HeaderValue>,
    /// For a DPoP-bound token: what a proof for each call needs.
    pub dpop: Option<DpopBinding>,
    pub version: u64,
    pub expires_at: u64,
    /// Got after an upstream refused the one before it (`TokenSet::access_after_rejection`).
    pub after_rejection: bool,
}

impl std::fmt::Debug for UsableToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsableToken").field("version", &self.version).finish_non_exhaustive()
    }
}

impl From<TokenOf<'_>> for UsableToken {
    fn from(token: TokenOf<'_>) -> Self {
        let (authorization, dpop) = presented(token.access_token, token.dpop_key);
        UsableToken {
            authorization,
            dpop,
            version: token.version,
            expires_at: token.expiry.expires_at,
            after_rejection: token.after_rejection,
        }
    }
}

/// Cloned to every caller that joined one refresh, hence the shared causes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// No session, or it is over (expired, logged out, `invalid_grant`): 401 `login_required`.
    #[error("login required")]
    LoginRequired,
    /// The upstream rejected a token that cannot be refreshed (no refresh token): pass its
    /// answer through.
    #[error("the token cannot be refreshed")]
    CannotRefresh,
    /// The grant does not cover the route's resource (no refresh token to ask with, or the
    /// provider answered `invalid_target`): 403 `resource_not_granted`; the session is kept.
    #[error("no token for this resource")]
    NotForResource,
    /// The provider refused to exchange the session's token for the route's audience (RFC 8693):
    /// 403 `exchange_refused`; the session is kept (its own grant is fine).
    #[error("the provider refused the token exchange")]
    ExchangeRefused,
    /// The refresh did not happen now; the session is kept: 503 `token_refresh_unavailable`.
    #[error("token refresh unavailable")]
    RefreshUnavailable(#[source] Arc<RefreshUnavailable>),
    /// 503 `session_store_unavailable`.
    #[error("session store unavailable")]
    Store(#[source] Arc<StoreError>),
}

/// Why a refresh could not be made now.
#[derive(Debug, thiserror::Error)]
pub enum RefreshUnavailable {
    /// The provider is unreachable or failing.
    #[error("the provider failed")]
    Provider(#[source] OidcError),
    #[error("another instance's refresh did not finish in {0:?}")]
    WaitedTooLong(Duration),
    /// The lease ran out while the provider answered (the store could not renew it).
    #[error("the refresh lock was lost during the refresh")]
    LockLost,
    /// Another writer's set replaced the one refreshed, without this audience's token.
    #[error("the token set changed during the refresh")]
    Superseded,
    /// The session's own token, the subject of an exchange, expired before it could be
    /// presented (its refresh failed, or there is nothing to refresh it with).
    #[error("the token to exchange has expired")]
    SubjectExpired,
    /// The provider failed this session's last refresh: the next try waits (`Backoff`).
    #[error("the last refresh failed; the next try waits {0:?}")]
    BackingOff(Duration),
}

impl From<StoreError> for TokenError {
    fn from(e: StoreError) -> Self {
        TokenError::Store(Arc::new(e))
    }
}

impl From<RefreshUnavailable> for TokenError {
    fn from(e: RefreshUnavailable) -> Self {
        TokenError::RefreshUnavailable(Arc::new(e))
    }
}

/// What a caller needs from a flight.
#[derive(Debug, Clone, Copy)]
pub(super) enum Want {
    /// A token not due for refresh.
    Fresh,
    /// A token newer than the one the upstream just rejected.
    NewerThan(u64),
}

pub(super) type FlightResult = Result<UsableToken, TokenError>;

/// Refreshes share a flight per session and audience (`None`: the default one); every flight
/// of a session takes the same store lock, since they all use its one refresh token.
type FlightKey = (SessionHandle, Option<String>);
type Flight = Shared<Pin<Box<dyn Future<Output = FlightResult> + Send>>>;

pub struct TokenManager {
    tokens: TokenStore,
    client: Arc<ClientTokens>,
    sessions: Arc<Sessions>,
    oidc: Arc<Oidc>,
    skew: Duration,
    lease: Duration,
    /// How long a flight waits for another instance's refresh before giving up.
    wait_limit: Duration,
    default_expires_in: Duration,
    flights: Mutex<HashMap<FlightKey, (u64, Flight)>>,
    flight_ids: std::sync::atomic::AtomicU64,
    /// Refresh locks this instance holds (key → owner), released at shutdown if still held.
    held_locks: Mutex<HashMap<String, String>>,
    /// Sessions whose last refresh the provider failed (or refused bff's credentials for).
    backoff: Backoff<SessionHandle>,
    /// Exchanges (session and target) the provider refused: asked again only after a back-off,
    /// so calls on a route the provider will not serve cannot drive its token endpoint.
    refused: Backoff<FlightKey>,
    metrics: Arc<Metrics>,
}

/// Sessions in back-off an instance remembers; past it the least recently failed are forgotten
/// (they only try again sooner).
const BACKOFF_CAPACITY: NonZeroUsize = match NonZeroUsize::new(100_000) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

pub struct TokenTimings {
    pub refresh_skew: Duration,
    pub lock_lease: Duration,
    pub idp_timeout: Duration,
    pub default_expires_in: Duration,
}

impl TokenManager {
    pub fn new(
        tokens: TokenStore,
        sessions: Arc<Sessions>,
        oidc: Arc<Oidc>,
        t: TokenTimings,
        metrics: Arc<Metrics>,
    ) -> TokenManager {
        TokenManager {
            client: Arc::new(ClientTokens::new(
                Arc::clone(&oidc),
                tokens.clock().clone(),
                t.refresh_skew,
                t.default_expires_in,
                Arc::clone(&metrics),
            )),
            tokens,
            sessions,
            oidc,
            skew: t.refresh_skew,
            lease: t.lock_lease,
            // A holder may renew its lease while the provider answers; wait for its two calls
            // (a refresh whose answer was lost is asked once more).
            wait_limit: t.lock_lease + 2 * t.idp_timeout,
            default_expires_in: t.default_expires_in,
            flights: Mutex::new(HashMap::new()),
            flight_ids: std::sync::atomic::AtomicU64::new(0),
            held_locks: Mutex::new(HashMap::new()),
            backoff: Backoff::new(BACKOFF_CAPACITY),
            refused: Backoff::new(BACKOFF_CAPACITY),
            metrics,
        }
    }

    pub fn store(&self) -> &TokenStore {
        &self.tokens
    }

    /// bff's own tokens, for `token = "client"` routes.
    pub fn client_tokens(&self) -> &Arc<ClientTokens> {
        &self.client
    }

    /// The session's decoded view when it lives, else `LoginRequired` (a session past its
    /// absolute end is ended on the way). Who a call is for is decided with this before the call
    /// is admitted: with the local cache it costs no store command.
    pub async fn live_session(&self, handle: &SessionHandle) -> Result<HotToken, TokenError> {
        let hot = self.read_hot(handle).await?.ok_or(TokenError::LoginRequired)?;
        if hot.expiry.session_over(self.tokens.now()) {
            // Reads the whole set to end the session (it names its back-channel index entries);
            // boxed, as `own_token`'s end.
            Box::pin(self.load_live(handle)).await?;
            return Err(TokenError::LoginRequired);
        }
        Ok(hot)
    }

    async fn read_hot(&self, handle: &SessionHandle) -> Result<Option<HotToken>, TokenError> {
        let read = telemetry::part_span(|| {
            tracing::debug_span!("session read", otel.name = "session read", "bff.cache" = tracing::field::Empty)
        });
        Ok(self.tokens.load_hot(handle).instrument(read).await?)
    }

    /// The steady-state path: no store command with the local cache, else one read; no write.
    /// For a `target` other than the default, the session's token for it, got on first use.
    pub async fn access_token(self: &Arc<Self>, handle: &SessionHandle, target: &Target) -> FlightResult {
        let hot = self.read_hot(handle).await?.ok_or(TokenError::LoginRequired)?;
        self.token_in(handle, target, &hot).await
    }

    /// [`Self::access_token`] from a view read just before (by [`Self::live_session`]).
    pub async fn token_in(self: &Arc<Self>, handle: &SessionHandle, target: &Target, hot: &HotToken) -> FlightResult {
        if matches!(target, Target::Exchange(_)) {
            // The subject of an exchange is the session's own token: it is decided first, as
            // on a `user` route (refreshed when due; a grant the provider ended ends the
            // session: 401), so the exchange presents a live token and never outlives the grant.
            self.own_token(handle, &Target::Default, hot).await?;
        }
        self.own_token(handle, target, hot).await
    }

    /// The token for `target` alone, from the view `hot`.
    async fn own_token(self: &Arc<Self>, handle: &SessionHandle, target: &Target, hot: &HotToken) -> FlightResult {
        let now = self.tokens.now();
        // An exchange needs no refresh token: its subject is the session's access token.
        let renewable = hot.has_refresh_token || matches!(target, Target::Exchange(_));
        let Some((usable, expiry)) = hot.usable(target.key()) else {
            // No token for this audience yet: one is asked for with the refresh token (or by
            // an exchange).
            return if renewable {
                self.join_flight(handle, target, Want::Fresh).await
            } else {
                Err(TokenError::NotForResource)
            };
        };
        match decide(expiry, renewable, now, self.skew) {
            Decision::Use => Ok(usable),
            // Refreshed ahead of expiry: while the provider cannot answer, the token in hand is
            // still good until it expires.
            Decision::Refresh => match self.join_flight(handle, target, Want::Fresh).await {
                Err(TokenError::RefreshUnavailable(why)) if !expiry.is_expired(self.tokens.now()) => {
                    tracing::debug!(
                        session = handle.short(),
                        "refresh ahead of expiry failed ({why}); token still valid"
                    );
                    Ok(usable)
                }
                other => other,
            },
            // Reads the whole set to end the session (it names its back-channel index entries).
            // Boxed, as every rare branch of the per-call path: inlined, its store futures would
            // make every call's future (copied whole when actix boxes it) that much larger.
            Decision::End => {
                Box::pin(async {
                    let set = self.load_live(handle).await?;
                    self.end_session(handle, &set, EndReason::Expired).await
                })
                .await
            }
        }
    }

    /// After the upstream answered 401 to `used` (for `target`): a newer token. A token that
    /// was itself got after a refusal is not renewed again until it is due (`CannotRefresh`:
    /// the upstream's 401 goes back), so no caller can drive the provider with 401s.
    pub async fn refresh_after_rejection(
        self: &Arc<Self>,
        handle: &SessionHandle,
        target: &Target,
        used: &UsableToken,
    ) -> FlightResult {
        if used.after_rejection {
            let hot = self.read_hot(handle).await?.ok_or(TokenError::LoginRequired)?;
            if let Some((current, expiry)) = hot.usable(target.key()) {
                if current.version > used.version {
                    return Ok(current);
                }
                if current.version == used.version && !expiry.needs_refresh(self.tokens.now(), self.skew) {
                    self.metrics.refresh(RefreshOutcome::RejectedAgain);
                    return Err(TokenError::CannotRefresh);
                }
            }
        }
        if matches!(target, Target::Exchange(_)) {
            // A new exchange presents the session's token as it is now: refreshed first if due.
            self.access_token(handle, &Target::Default).await?;
        }
        self.join_flight(handle, target, Want::NewerThan(used.version)).await
    }

    async fn load_live(&self, handle: &SessionHandle) -> Result<TokenSet, TokenError> {
        match self.tokens.load(handle).await? {
            Some(set) if !set.expiry.session_over(self.tokens.now()) => Ok(set),
            Some(set) => {
                self.sessions.end_known(handle, Some(&set), EndReason::Expired).await?;
                Err(TokenError::LoginRequired)
            }
            None => Err(TokenError::LoginRequired),
        }
    }

    async fn end_session(&self, handle: &SessionHandle, set: &TokenSet, reason: EndReason) -> FlightResult {
        self.sessions.end_known(handle, Some(set), reason).await?;
        Err(TokenError::LoginRequired)
    }

    async fn join_flight(self: &Arc<Self>, handle: &SessionHandle, target: &Target, want: Want) -> FlightResult {
        if let Some(left) = self.backoff.remaining(handle) {
            self.metrics.refresh(RefreshOutcome::BackedOff);
            return Err(RefreshUnavailable::BackingOff(left).into());
        }
        let key: FlightKey = (handle.clone(), target.key().map(str::to_string));
        if self.refused.remaining(&key).is_some() {
            return Err(TokenError::ExchangeRefused);
        }
        // A flight started for another reason may finish with a token this caller cannot use
        // (rare: it found a newer, still fresh set that this caller already had rejected).
        for _ in 0..2 {
            let result = self.flight(&key, target, want).await?;
            if satisfies(&result, want) {
                return Ok(result);
            }
        }
        Err(TokenError::CannotRefresh)
    }

    fn flight(self: &Arc<Self>, key: &FlightKey, target: &Target, want: Want) -> Flight {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, flight)) = flights.get(key) {
            self.metrics.refresh(RefreshOutcome::Joined);
            return flight.clone();
        }
        let id = self.flight_ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let this = Arc::clone(self);
        let k = key.clone();
        let target = target.clone();
        // The first caller's span is the flight's parent; joiners wait in their own.
        let span = tracing::debug_span!(
            "token refresh",
            otel.name = "token refresh",
            otel.status_code = tracing::field::Empty,
            "bff.resource" = key.1.as_deref(),
            "bff.refresh.lock_waited_ms" = tracing::field::Empty,
        );
        let fut: Pin<Box<dyn Future<Output = FlightResult> + Send>> = Box::pin(
            async move {
                let result = this.run_flight(&k.0, &target, want).await;
                if result.is_err() {
                    tracing::Span::current().record("otel.status_code", "ERROR");
                }
                let mut flights = this.flights.lock().unwrap_or_else(|p| p.into_inner());
                if flights.get(&k).is_some_and(|(fid, _)| *fid == id) {
                    flights.remove(&k);
                }
                result
            }
            .instrument(span),
        );
        let flight = fut.shared();
        flights.insert(key.clone(), (id, flight.clone()));
        flight
    }

    async fn run_flight(&self, handle: &SessionHandle, target: &Target, want: Want) -> FlightResult {
        let lock_key = self.tokens.keys().refresh_lock(handle);
        let store = self.tokens.store();
        let started = Instant::now();
        // Open while another holder's lock is waited for (its length is the span's).
        let mut waiting: Option<tracing::Span> = None;
        let waited = |waiting: &mut Option<tracing::Span>| {
            let waited = started.elapsed();
            tracing::Span::current().record("bff.refresh.lock_waited_ms", waited.as_millis() as u64);
            waiting.take();
            waited
        };
        loop {
            let set = self.load_live(handle).await?;
            if let Some(ready) = ready_token(&set, target.key(), want, self.skew, self.tokens.now()) {
                if waiting.is_some() {
                    // Another instance did the refresh while we waited for its lock.
                    self.metrics.lock_waited(waited(&mut waiting));
                    self.metrics.refresh(RefreshOutcome::Joined);
                }
                return Ok(ready);
            }
            let owner = random_token();
            if store.set_if_absent(&lock_key, owner.as_bytes(), self.lease).await? {
                if waiting.is_some() {
                    self.metrics.lock_waited(waited(&mut waiting));
                }
                self.hold(&lock_key, &owner);
                let result = self.refresh_locked(handle, target, want, &lock_key, &owner).await;
                self.release(&lock_key, &owner).await;
                return result;
            }
            if waiting.is_none() {
                waiting = Some(tracing::debug_span!("refresh lock wait", otel.name = "refresh lock wait"));
            }
            if !keep_waiting(started.elapsed(), self.wait_limit) {
                self.metrics.lock_waited(waited(&mut waiting));
                return Err(RefreshUnavailable::WaitedTooLong(self.wait_limit).into());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Binds the session to a device key (DBSC registration), under the session's refresh lock
    /// so no refresh in flight on any instance writes over it. `false`: it was bound already
    /// (a session registers once; another key never replaces the first).
    pub async fn bind_device(&self, handle: &SessionHandle, device: DeviceBinding) -> Result<bool, TokenError> {
        let lock_key = self.tokens.keys().refresh_lock(handle);
        let started = Instant::now();
        loop {
            if self.load_live(handle).await?.device().is_some() {
                return Ok(false);
            }
            let owner = random_token();
            if self.tokens.store().set_if_absent(&lock_key, owner.as_bytes(), self.lease).await? {
                self.hold(&lock_key, &owner);
                let result = self.bind_locked(handle, device).await;
                self.release(&lock_key, &owner).await;
                return result;
            }
            if !keep_waiting(started.elapsed(), self.wait_limit) {
                return Err(RefreshUnavailable::WaitedTooLong(self.wait_limit).into());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn bind_locked(&self, handle: &SessionHandle, device: DeviceBinding) -> Result<bool, TokenError> {
        let set = self.load_live(handle).await?;
        if set.device().is_some() {
            return Ok(false);
        }
        match self.tokens.replace(handle, set.version, &set.bound_to(device)).await? {
            CasOutcome::Written => Ok(true),
            // Written despite the lock (its lease ran out under a slow store): not ours to
            // overwrite; the browser registers at its next sign-in.
            CasOutcome::Conflict => Err(RefreshUnavailable::LockLost.into()),
            CasOutcome::Missing => Err(TokenError::LoginRequired),
        }
    }

    fn hold(&self, lock_key: &str, owner: &str) {
        self.held_locks.lock().unwrap_or_else(|p| p.into_inner()).insert(lock_key.to_string(), owner.to_string());
        self.metrics.lock_taken();
    }

    async fn release(&self, lock_key: &str, owner: &str) {
        self.held_locks.lock().unwrap_or_else(|p| p.into_inner()).remove(lock_key);
        self.metrics.lock_released();
        if let Err(e) = self.tokens.store().delete_if_equals(lock_key, owner.as_bytes()).await {
            // The lease ends it anyway.
            tracing::warn!("could not release a refresh lock: {}", error_chain(&e));
        }
    }

    /// At shutdown: releases the refresh locks of refreshes that did not finish, so other
    /// instances need not wait for their leases to run out. Returns how many were released.
    pub async fn release_held_locks(&self) -> usize {
        let held: Vec<(String, String)> = self.held_locks.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (key, owner) in &held {
            self.metrics.lock_released();
            if let Err(e) = self.tokens.store().delete_if_equals(key, owner.as_bytes()).await {
                tracing::warn!("could not release a refresh lock at shutdown: {}", error_chain(&e));
            }
        }
        held.len()
    }

    /// Holding the lock: re-read, refresh if still needed, store with a compare-and-set.
    async fn refresh_locked(
        &self,
        handle: &SessionHandle,
        target: &Target,
        want: Want,
        lock_key: &str,
        owner: &str,
    ) -> FlightResult {
        let set = self.load_live(handle).await?;
        let resource = target.key();
        if let Some(ready) = ready_token(&set, resource, want, self.skew, self.tokens.now()) {
            return Ok(ready);
        }
        if let Target::Exchange(exchange) = target {
            return self.exchange_locked(handle, &set, exchange, want, lock_key, owner).await;
        }
        let Some(refresh_token) = set.refresh_token.clone() else {
            return match want {
                Want::NewerThan(_) => Err(TokenError::CannotRefresh),
                Want::Fresh if resource.is_some() => Err(TokenError::NotForResource),
                Want::Fresh if set.expiry.is_expired(self.tokens.now()) => {
                    self.end_session(handle, &set, EndReason::Expired).await
                }
                Want::Fresh => Ok(UsableToken::from(set.access())),
            };
        };

        let refresh = self.oidc.refresh(&refresh_token, &set.sub, resource, set.dpop_key.as_ref());
        let refreshed = self.under_lease(handle, refresh, lock_key, owner).await;
        let refreshed = refreshed.inspect_err(|_| self.metrics.refresh(RefreshOutcome::Transient))?;

        match refreshed {
            Ok(r) => {
                self.backoff.succeeded(handle);
                let mut next = set.refreshed(r, resource, self.tokens.now(), self.default_expires_in);
                if matches!(want, Want::NewerThan(_)) {
                    next.mark_after_rejection(resource);
                }
                let written = self.write_next(handle, &set, &next, resource, "access token refreshed").await;
                if written.is_ok() {
                    self.metrics.refresh(RefreshOutcome::Ok);
                }
                written
            }
            Err(RefreshError::GrantOver(why)) => {
                // A refresh that another holder completed after our read would also make ours
                // look refused; only a grant that is really gone ends the session.
                if let Some(current) = self.tokens.load(handle).await?.filter(|c| c.version != set.version) {
                    return usable(&current, resource);
                }
                self.backoff.succeeded(handle);
                self.metrics.refresh(RefreshOutcome::GrantOver);
                tracing::info!(session = handle.short(), "refresh refused, the grant is over; the session ends: {why}");
                self.end_session(handle, &set, EndReason::GrantRevoked).await
            }
            Err(RefreshError::NotForResource) => {
                tracing::info!(
                    session = handle.short(),
                    resource = resource.unwrap_or_default(),
                    "the provider issues no token for this resource (invalid_target)"
                );
                Err(TokenError::NotForResource)
            }
            Err(RefreshError::ClientAuth(e)) => Err(self.kept_for_later(handle, e, RefreshOutcome::ClientAuth)),
            Err(RefreshError::Unavailable(e)) => Err(self.kept_for_later(handle, e, RefreshOutcome::Transient)),
        }
    }

    /// Holding the lock: exchanges the session's token for one for `exchange` (RFC 8693) and
    /// stores it with a compare-and-set, as a refresh does.
    async fn exchange_locked(
        &self,
        handle: &SessionHandle,
        set: &TokenSet,
        exchange: &ExchangeTarget,
        want: Want,
        lock_key: &str,
        owner: &str,
    ) -> FlightResult {
        let key = Some(exchange.key.as_str());
        // Refreshed just before when it was due (`token_in`): expired here only when that failed.
        if set.expiry.is_expired(self.tokens.now()) {
            return Err(RefreshUnavailable::SubjectExpired.into());
        }
        let call = self.oidc.exchange(
            &set.access_token,
            exchange.audience.as_deref(),
            exchange.resource.as_deref(),
            &exchange.scopes,
        );
        let exchanged = self.under_lease(handle, call, lock_key, owner).await;
        let exchanged = exchanged.inspect_err(|_| self.metrics.token_exchange(ExchangeOutcome::Failed))?;
        let audience = exchange.audience.as_deref().unwrap_or_default();
        let resource = exchange.resource.as_deref().unwrap_or_default();
        match exchanged {
            Ok(token) => {
                self.backoff.succeeded(handle);
                self.refused.succeeded(&(handle.clone(), Some(exchange.key.clone())));
                let mut next = set.exchanged(&exchange.key, token, self.tokens.now(), self.default_expires_in);
                if matches!(want, Want::NewerThan(_)) {
                    next.mark_after_rejection(key);
                }
                let written = self.write_next(handle, set, &next, key, "access token exchanged").await;
                if written.is_ok() {
                    self.metrics.token_exchange(ExchangeOutcome::Ok);
                }
                written
            }
            Err(ExchangeError::Refused(why)) => {
                // The user's grant is fine (the subject token was live): only this audience is
                // refused, so the session stays and the session's back-off does not hold its
                // other tokens; this exchange alone waits one of its own before it is asked again.
                self.metrics.token_exchange(ExchangeOutcome::Refused);
                let wait = self.refused.failed((handle.clone(), Some(exchange.key.clone())));
                tracing::info!(
                    session = handle.short(),
                    audience,
                    resource,
                    retry_in_ms = wait.as_millis() as u64,
                    "token exchange refused: {why}"
                );
                Err(TokenError::ExchangeRefused)
            }
            Err(ExchangeError::ClientAuth(e)) => {
                let wait = self.backoff.failed(handle.clone());
                self.metrics.token_exchange(ExchangeOutcome::Failed);
                tracing::error!(
                    session = handle.short(),
                    retry_in_ms = wait.as_millis() as u64,
                    "token exchange failed; session kept: {}",
                    error_chain(&e)
                );
                Err(RefreshUnavailable::Provider(e).into())
            }
            Err(ExchangeError::Unavailable(e)) => {
                let wait = self.backoff.failed(handle.clone());
                self.metrics.token_exchange(ExchangeOutcome::Failed);
                tracing::warn!(
                    session = handle.short(),
                    retry_in_ms = wait.as_millis() as u64,
                    audience,
                    resource,
                    "token exchange failed; session kept: {}",
                    error_chain(&e)
                );
                Err(RefreshUnavailable::Provider(e).into())
            }
        }
    }

    /// Runs a provider call while renewing the lock's lease; `LockLost` if the lease is lost
    /// first (another instance may take the lock: this call's result must not be written).
    async fn under_lease<T>(
        &self,
        handle: &SessionHandle,
        call: impl Future<Output = T>,
        lock_key: &str,
        owner: &str,
    ) -> Result<T, TokenError> {
        let renew = self.renew_lease(lock_key, owner);
        tokio::pin!(call, renew);
        tokio::select! {
            result = &mut call => Ok(result),
            () = &mut renew => {
                tracing::warn!(session = handle.short(), "refresh lock lost during the provider call; session kept");
                Err(RefreshUnavailable::LockLost.into())
            }
        }
    }

    /// Writes `next`, the set after `set`, with a compare-and-set; the token for `key` from it.
    /// `done` is the log line of a write (`key` names the audience, and for an exchange its
    /// resource and scopes).
    async fn write_next(
        &self,
        handle: &SessionHandle,
        set: &TokenSet,
        next: &TokenSet,
        key: Option<&str>,
        done: &'static str,
    ) -> FlightResult {
        match self.tokens.replace(handle, set.version, next).await? {
            CasOutcome::Written => {
                tracing::info!(
                    session = handle.short(),
                    version = next.version,
                    resource = key.unwrap_or_default(),
                    "{done}"
                );
                usable(next, key)
            }
            CasOutcome::Conflict => {
                // Someone wrote despite our lock (its lease had run out): theirs is newer.
                tracing::warn!(session = handle.short(), "token set changed during refresh; using the stored one");
                let current = self.load_live(handle).await?;
                usable(&current, key)
            }
            CasOutcome::Missing => Err(TokenError::LoginRequired),
        }
    }

    /// A refresh that did not happen now: the session and its refresh token are kept, and the
    /// session waits its back-off before the provider is asked again. bff's own credentials
    /// refused is an operator's problem (error); a provider failing for now is a warning.
    fn kept_for_later(&self, handle: &SessionHandle, e: OidcError, outcome: RefreshOutcome) -> TokenError {
        let wait = self.backoff.failed(handle.clone());
        self.metrics.refresh(outcome);
        let (session, retry_in_ms, why) = (handle.short(), wait.as_millis() as u64, error_chain(&e));
        if outcome == RefreshOutcome::ClientAuth {
            tracing::error!(session, retry_in_ms, "token refresh failed; session kept: {why}");
        } else {
            tracing::warn!(session, retry_in_ms, "token refresh failed; session kept: {why}");
        }
        RefreshUnavailable::Provider(e).into()
    }

    /// Renews the lock lease every third of it while a refresh runs; returns if the lock is lost.
    async fn renew_lease(&self, lock_key: &str, owner: &str) {
        let every = self.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            match self.tokens.store().expire_if_equals(lock_key, owner.as_bytes(), self.lease).await {
                Ok(true) => {}
                Ok(false) => return,
                // A store hiccup: keep going, the next renewal may succeed before the lease ends.
                Err(e) => tracing::warn!("could not renew the refresh lock: {}", error_chain(&e)),
            }
        }
    }
}

/// What the steady-state path does with the token it read.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Use,
    /// Due (within the skew) and refreshable: one refresh, shared by every caller.
    Refresh,
    /// The session is over, or the token expired with nothing to refresh it.
    End,
}

fn decide(expiry: Expiry, has_refresh_token: bool, now: u64, skew: Duration) -> Decision {
    if expiry.session_over(now) {
        Decision::End
    } else if !expiry.needs_refresh(now, skew) {
        Decision::Use
    } else if has_refresh_token {
        Decision::Refresh
    } else if expiry.is_expired(now) {
        Decision::End
    } else {
        // Nothing to refresh with: use the token while it lasts.
        Decision::Use
    }
}

/// Whether a set already answers what the flight was started for (someone else refreshed).
pub(super) fn answers(expiry: Expiry, version: u64, want: Want, now: u64, skew: Duration) -> bool {
    match want {
        Want::Fresh => !expiry.needs_refresh(now, skew),
        Want::NewerThan(v) => version > v && !expiry.is_expired(now),
    }
}

/// A flight that finds another instance's lock polls until the lease and one provider call
/// could have passed; past that the holder is presumed gone or stuck.
fn keep_waiting(waited: Duration, limit: Duration) -> bool {
    waited < limit
}

fn ready_token(set: &TokenSet, resource: Option<&str>, want: Want, skew: Duration, now: u64) -> Option<UsableToken> {
    let token = set.token_for(resource)?;
    answers(token.expiry, token.version, want, now, skew).then(|| UsableToken::from(token))
}

/// A set's token for `resource`; a set written by someone else meanwhile may not have one yet
/// (it refreshed another audience): the caller may try again.
fn usable(set: &TokenSet, resource: Option<&str>) -> FlightResult {
    set.token_for(resource).map(UsableToken::from).ok_or_else(|| RefreshUnavailable::Superseded.into())
}

fn satisfies(token: &UsableToken, want: Want) -> bool {
    match want {
        Want::Fresh => true,
        Want::NewerThan(v) => token.version > v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKEW: Duration = Duration::from_secs(30);

    /// A 300 s token issued at 1000, in a session that ends at 5000.
    fn expiry() -> Expiry {
        Expiry { expires_at: 1300, lifetime_secs: 300, session_expires_at: 5000 }
    }

    #[test]
    fn a_token_is_used_until_due_then_refreshed() {
        assert_eq!(decide(expiry(), true, 1000, SKEW), Decision::Use);
        assert_eq!(decide(expiry(), true, 1269, SKEW), Decision::Use);
        assert_eq!(decide(expiry(), true, 1270, SKEW), Decision::Refresh, "30 s before expiry");
        assert_eq!(decide(expiry(), true, 1400, SKEW), Decision::Refresh, "expired but refreshable");
    }

    #[test]
    fn without_a_refresh_token_a_token_is_used_while_it_lasts_then_the_session_ends() {
        assert_eq!(decide(expiry(), false, 1290, SKEW), Decision::Use, "due, nothing to refresh with");
        assert_eq!(decide(expiry(), false, 1300, SKEW), Decision::End);
    }

    #[test]
    fn a_session_past_its_absolute_end_ends_whatever_its_token() {
        let long_token = Expiry { expires_at: 9000, ..expiry() };
        assert_eq!(decide(long_token, true, 5000, SKEW), Decision::End);
        assert_eq!(decide(long_token, false, 4999, SKEW), Decision::Use);
    }

    #[test]
    fn a_flight_is_answered_by_a_fresh_set_or_by_a_newer_unexpired_one() {
        assert!(answers(expiry(), 1, Want::Fresh, 1000, SKEW));
        assert!(!answers(expiry(), 1, Want::Fresh, 1270, SKEW));
        // After a 401 on version 3: only a later version will do, even if 3 looks fresh.
        assert!(!answers(expiry(), 3, Want::NewerThan(3), 1000, SKEW));
        assert!(answers(expiry(), 4, Want::NewerThan(3), 1000, SKEW));
        assert!(answers(expiry(), 4, Want::NewerThan(3), 1290, SKEW), "due soon is still usable after a 401");
        assert!(!answers(expiry(), 4, Want::NewerThan(3), 1300, SKEW), "not an expired one");
    }

    #[test]
    fn a_joined_result_must_satisfy_the_caller() {
        let token =
            |version| UsableToken { authorization: None, dpop: None, version, expires_at: 0, after_rejection: false };
        assert!(satisfies(&token(1), Want::Fresh));
        assert!(!satisfies(&token(3), Want::NewerThan(3)));
        assert!(satisfies(&token(4), Want::NewerThan(3)));
    }

    #[test]
    fn waiting_for_another_instance_gives_up_at_the_limit() {
        let limit = Duration::from_secs(15);
        assert!(keep_waiting(Duration::from_secs(14), limit));
        assert!(!keep_waiting(limit, limit));
    }
}
