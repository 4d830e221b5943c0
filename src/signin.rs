//! Signing in, from `GET /auth/login` to the session `GET /auth/callback` starts: [`SignIn::begin`]
//! (admission, the login binding, the pending login, the authorization request) and
//! [`SignIn::complete`] (the RFC 9207 `iss` and binding checks, the pending login taken once, the
//! code exchange, the new session, the end of the one it replaces). The handlers read the
//! request and turn the outcome into an answer; every way a callback is refused is one
//! [`CallbackRefusal`], answered by [`CallbackRefusal::respond`] alone.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_session::Session;
use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde::Deserialize;
use url::Url;

use crate::crypto::{digest, random_token};
use crate::error::AppError;
use crate::limits::{Limit, RateLimiter};
use crate::login_options::{LoginOptions, Unmet, is_interaction_needed};
use crate::metrics::{AuthEvent, Metrics};
use crate::oidc::{CallbackError, GrantToken, Oidc, OidcError, ResponseIssuerError, Revocation, TokenEndpointError};
use crate::pages::Pages;
use crate::return_to::ReturnTo;
use crate::session::{Device, PendingLogins, SessionEntries, SessionHandle, SessionLifetime};
use crate::state::AppState;
use crate::store::StoreError;
use crate::telemetry::error_chain;
use crate::tokens::{EndReason, Ended, Sessions};

/// The sign-in service: the parts of the application a sign-in uses.
pub struct SignIn<'a> {
    oidc: &'a Arc<Oidc>,
    logins: &'a PendingLogins,
    sessions: &'a Sessions,
    limiter: &'a RateLimiter,
    lifetime: &'a SessionLifetime,
    metrics: &'a Metrics,
    public_url: &'a Url,
    /// The frontend's path: where the browser may be sent back to.
    base_path: &'a str,
    /// `server.login_starts_per_minute`, which also bounds the logins in progress per browser.
    logins_per_browser: usize,
}

/// What `GET /auth/login` was asked, read from the request.
pub struct LoginRequest<'r> {
    /// `?return_to=`, as sent; anything but a same-origin relative path becomes `/`.
    pub return_to: Option<&'r str>,
    /// The client address the limits count (`None`: not known, not limited by address).
    pub client: Option<IpAddr>,
    /// The value of this browser's login cookie, when it has a well-formed one.
    pub binding: Option<String>,
    /// What the SPA asked of the provider, validated.
    pub options: LoginOptions,
    /// The session the browser's cookie names now, if any.
    pub current: Option<SessionHandle>,
}

/// A sign-in started: the browser goes to `location` carrying the login cookie `binding`.
pub struct Begun {
    /// The provider's authorization endpoint, with the request (or a pushed request's reference).
    pub location: Url,
    /// The login cookie's value: the browser's own when it had one, so several tabs can sign in
    /// at once.
    pub binding: String,
}

/// Why a sign-in cannot start.
#[derive(Debug, thiserror::Error)]
pub enum LoginRefusal {
    /// Over the starts per client address, over the starts of all clients, or over the logins
    /// in progress of this browser: free again after this long.
    #[error("too many logins (free again in {0:?})")]
    TooMany(Duration),
    #[error(transparent)]
    StoreDown(#[from] StoreError),
    /// No metadata yet, or the pushed authorization request refused or unanswered.
    #[error("the identity provider cannot start a login")]
    ProviderUnavailable(#[source] OidcError),
}

impl LoginRefusal {
    /// The error `GET /auth/login` answers with (JSON, or a page for a navigation); counted and
    /// logged here.
    pub fn error(self, metrics: &Metrics) -> AppError {
        match self {
            LoginRefusal::TooMany(retry_after) => {
                metrics.limited(Limit::LoginRate);
                AppError::LimitedFor(Limit::LoginRate, retry_after)
            }
            LoginRefusal::StoreDown(e) => AppError::from(e),
            LoginRefusal::ProviderUnavailable(e) => {
                tracing::warn!("cannot start a login: {}", error_chain(&e));
                AppError::IdpUnavailable
            }
        }
    }
}

/// The provider's redirect to `GET /auth/callback`: its query.
#[derive(Deserialize)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    /// RFC 9207.
    pub iss: Option<String>,
}

/// A sign-in completed: the browser's session is the new one; the browser goes to `return_to`.
pub struct Completed {
    pub return_to: String,
    /// The session it started.
    pub handle: SessionHandle,
}

/// Every way a callback is refused. [`CallbackRefusal::answer`] says how each is answered.
#[derive(Debug, thiserror::Error)]
pub enum CallbackRefusal {
    #[error("the callback's query cannot be read")]
    Unreadable,
    #[error("the callback names no state")]
    NoState,
    /// Unknown, expired or already used (a replay).
    #[error("the state is unknown, expired or already used")]
    UnknownState,
    /// The login binding cookie is missing or another browser's (RFC 9700 §4.7).
    #[error("callback completed in a browser other than the one that started the login")]
    OtherBrowser,
    /// RFC 9207: another `iss`, or none where one is required.
    #[error("callback refused: {0}")]
    OtherIssuer(ResponseIssuerError),
    /// The provider's `error=`, reduced to at most 64 of `[A-Za-z0-9_]` (it is shown and logged).
    #[error("the identity provider answered the login with an error ({0})")]
    ProviderError(String),
    #[error("the callback carries no code")]
    NoCode,
    /// The provider refused the code (`invalid_grant` and other client errors).
    #[error("the identity provider refused the code exchange")]
    CodeRefused(#[source] TokenEndpointError),
    #[error("the ID token failed validation: {0}")]
    IdTokenInvalid(String),
    /// A userinfo answer that must not be believed (another `sub`, a bad signature).
    #[error("the userinfo response was refused: {0}")]
    UserinfoRefused(String),
    /// The provider refused bff's own client authentication: a setup problem.
    #[error("the identity provider refused bff's client authentication at the code exchange")]
    CredentialsRefused(#[source] TokenEndpointError),
    /// Unreachable, timed out, 5xx (also userinfo with `oidc.userinfo = "always"`).
    #[error(transparent)]
    ProviderUnavailable(OidcError),
    #[error(transparent)]
    StoreDown(#[from] StoreError),
    /// The session was stored but could not be put into the browser's (and was ended again).
    #[error("cannot fill the session")]
    SessionNotFilled(#[source] anyhow::Error),
    /// `prompt=none` and the provider needs the user: back to the SPA with `?error=`.
    #[error("the silent sign-in needs the user")]
    InteractionNeeded { return_to: String },
    /// The ID token does not show the `max_age` or `acr_values` the sign-in asked for.
    #[error("the authentication falls short of what was asked: {0}")]
    AuthenticationUnmet(Unmet),
}

impl From<CallbackError> for CallbackRefusal {
    fn from(e: CallbackError) -> Self {
        match e {
            CallbackError::CodeRejected(e) => CallbackRefusal::CodeRefused(e),
            CallbackError::InvalidIdToken(why) => CallbackRefusal::IdTokenInvalid(why),
            CallbackError::InvalidUserinfo(why) => CallbackRefusal::UserinfoRefused(why),
            CallbackError::ClientAuth(e) => CallbackRefusal::CredentialsRefused(e),
            CallbackError::Provider(e) => CallbackRefusal::ProviderUnavailable(e),
        }
    }
}

/// How a callback refusal is answered.
#[derive(Debug)]
pub enum CallbackAnswer {
    /// The sign-in is refused: the error page with this status and sentence and a link to
    /// start again, counted as `login_failed`.
    Refused(StatusCode, Cow<'static, str>),
    /// bff could not do its part: that error's own page, not counted as a refused sign-in.
    Failed(AppError),
    /// Not a page: the browser goes back to the SPA (a declined silent sign-in).
    Redirect(String),
}

impl CallbackRefusal {
    /// The provider's `error=`, kept to what may be shown and logged.
    pub fn provider_error(raw: &str) -> CallbackRefusal {
        CallbackRefusal::ProviderError(
            raw.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect(),
        )
    }

    /// The status and the page's sentence of each refusal.
    pub fn answer(&self) -> CallbackAnswer {
        use CallbackRefusal as R;
        let refused = |status, sentence: &'static str| CallbackAnswer::Refused(status, Cow::Borrowed(sentence));
        match self {
            R::Unreadable => refused(StatusCode::BAD_REQUEST, "The sign-in response could not be read."),
            R::NoState => {
                refused(StatusCode::BAD_REQUEST, "The sign-in response did not say which sign-in it answers.")
            }
            R::UnknownState => refused(
                StatusCode::BAD_REQUEST,
                "This sign-in is unknown, has expired or was already used. Please start again.",
            ),
            R::OtherBrowser => refused(
                StatusCode::BAD_REQUEST,
                "This sign-in was started in another browser. Please start again here.",
            ),
            R::OtherIssuer(_) => refused(
                StatusCode::BAD_REQUEST,
                "The sign-in response did not come from the expected identity provider.",
            ),
            R::ProviderError(code) if code == "access_denied" => {
                refused(StatusCode::BAD_REQUEST, "Sign-in was cancelled or refused.")
            }
            R::ProviderError(code) => CallbackAnswer::Refused(
                StatusCode::BAD_REQUEST,
                Cow::Owned(format!("The identity provider could not sign you in ({code}).")),
            ),
            R::NoCode => refused(StatusCode::BAD_REQUEST, "The sign-in response carried no authorization code."),
            R::CodeRefused(_) => refused(
                StatusCode::BAD_REQUEST,
                "The sign-in could not be completed: the identity provider refused it. Please start again.",
            ),
            R::IdTokenInvalid(_) | R::UserinfoRefused(_) => {
                refused(StatusCode::BAD_REQUEST, "The identity provider's answer could not be accepted.")
            }
            R::CredentialsRefused(_) => refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "This application cannot complete sign-ins right now. Please try again later.",
            ),
            R::ProviderUnavailable(_) => {
                refused(StatusCode::BAD_GATEWAY, "The identity provider could not be reached. Please try again.")
            }
            R::InteractionNeeded { return_to } => CallbackAnswer::Redirect(return_to.clone()),
            R::AuthenticationUnmet(_) => refused(
                StatusCode::FORBIDDEN,
                "The identity provider did not confirm the sign-in this application asked for \
                 (a recent or a stronger authentication). Please sign in again.",
            ),
            R::StoreDown(_) => CallbackAnswer::Failed(AppError::SessionStoreUnavailable),
            R::SessionNotFilled(_) => CallbackAnswer::Failed(AppError::Internal),
        }
    }

    /// The one log line of a refusal, if it gets one: what an operator may act on, at the level
    /// that says who must (a refused client authentication is a setup problem: error).
    fn log(&self) {
        use CallbackRefusal as R;
        match self {
            // What any browser can send: nothing to act on.
            R::Unreadable | R::NoState | R::UnknownState | R::NoCode | R::InteractionNeeded { .. } => {}
            R::AuthenticationUnmet(unmet) => tracing::warn!("login refused: {unmet}"),
            R::OtherIssuer(_) | R::OtherBrowser => tracing::warn!("{self}"),
            R::ProviderError(code) => {
                tracing::info!(error = code, "the identity provider answered the login with an error");
            }
            R::CodeRefused(_) | R::IdTokenInvalid(_) | R::UserinfoRefused(_) | R::ProviderUnavailable(_) => {
                tracing::warn!("login failed: {}", error_chain(self));
            }
            R::CredentialsRefused(_) => tracing::error!("login failed: {}", error_chain(self)),
            R::StoreDown(e) => tracing::warn!("{}", error_chain(e)),
            R::SessionNotFilled(e) => tracing::error!("cannot fill the session: {e:#}"),
        }
    }

    /// The callback's answer to this refusal: always a page (the callback is a navigation),
    /// logged and counted.
    pub fn respond(&self, pages: &Pages, metrics: &Metrics) -> HttpResponse {
        self.log();
        match self.answer() {
            CallbackAnswer::Refused(status, sentence) => {
                metrics.auth_event(AuthEvent::LoginFailed);
                pages.error(status, &sentence, true)
            }
            CallbackAnswer::Failed(error) => error.page(pages),
            CallbackAnswer::Redirect(location) => {
                let mut res = HttpResponse::Found();
                if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&location) {
                    res.insert_header((actix_web::http::header::LOCATION, v));
                }
                res.finish()
            }
        }
    }
}

/// `return_to` with `error=<code>` added to its query (before a fragment). The code is the
/// provider's, one of the four [`is_interaction_needed`] accepts.
fn with_error(return_to: &str, code: &str) -> String {
    let (before, fragment) = match return_to.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (return_to, None),
    };
    let separator = if before.contains('?') { '&' } else { '?' };
    let mut out = format!("{before}{separator}error={code}");
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

impl<'a> SignIn<'a> {
    pub fn new(state: &'a AppState) -> SignIn<'a> {
        SignIn {
            oidc: &state.oidc,
            logins: &state.logins,
            sessions: &state.sessions,
            limiter: &state.login_limiter,
            lifetime: &state.lifetime,
            metrics: &state.metrics,
            public_url: &state.config.server.public_url,
            base_path: &state.config.frontend.path,
            logins_per_browser: state.config.server.login_starts_per_minute as usize,
        }
    }

    /// Starts a sign-in: authorization code + PKCE with a fresh `state` and `nonce`, stored
    /// one-time as a pending login bound to this browser's login cookie.
    pub async fn begin(&self, request: LoginRequest<'_>) -> Result<Begun, LoginRefusal> {
        let return_to = ReturnTo::parse_under(request.return_to, self.public_url, self.base_path);
        // Each start leaves a pending login in the store for ten minutes: limit starts per client
        // address, and logins in progress per browser.
        if let Some(Err(retry_after)) = request.client.map(|ip| self.limiter.check(ip)) {
            return Err(LoginRefusal::TooMany(retry_after));
        }
        // One binding value per browser, reused while it lives, so several tabs can log in at once.
        let binding = request.binding.unwrap_or_else(random_token);
        self.logins.room_for(&digest(&binding), self.logins_per_browser).await?.map_err(LoginRefusal::TooMany)?;
        let (location, csrf_state, mut pending) = self
            .oidc
            .begin_login(return_to.into_string(), digest(&binding), request.options)
            .await
            .map_err(LoginRefusal::ProviderUnavailable)?;
        pending.replaces = request.current.map(|h| h.as_str().to_string());
        self.logins.put(csrf_state.secret(), &pending).await?;
        Ok(Begun { location, binding })
    }

    /// Completes a sign-in from the provider's redirect and the browser's login cookie
    /// (`binding`): a new session in `session`, and the one it held before ended.
    pub async fn complete(
        &self,
        session: &Session,
        params: CallbackParams,
        binding: Option<&str>,
        device: &Device,
    ) -> Result<Completed, CallbackRefusal> {
        let Some(csrf_state) = params.state.as_deref().filter(|s| !s.is_empty()) else {
            return Err(CallbackRefusal::NoState);
        };
        // Nothing is consumed by a response that names another issuer or reaches another browser:
        // neither may burn the sign-in of the browser that started it.
        self.oidc.check_response_issuer(params.iss.as_deref()).map_err(CallbackRefusal::OtherIssuer)?;
        let browser = self.logins.peek(csrf_state).await?.ok_or(CallbackRefusal::UnknownState)?.browser;
        if binding.is_none_or(|b| digest(b) != browser) {
            return Err(CallbackRefusal::OtherBrowser);
        }
        // Taken now: a state works once, whatever happens next.
        let pending = self.logins.take(csrf_state).await?.ok_or(CallbackRefusal::UnknownState)?;
        if let Some(error) = &params.error {
            // A silent sign-in the provider cannot do without the user: the SPA hears it where
            // it asked from, and decides (a page or a loop would strand it).
            if pending.options.is_silent() && is_interaction_needed(error) {
                self.metrics.auth_event(AuthEvent::SilentLoginDeclined);
                return Err(CallbackRefusal::InteractionNeeded { return_to: with_error(&pending.return_to, error) });
            }
            return Err(CallbackRefusal::provider_error(error));
        }
        let Some(code) = params.code.filter(|c| !c.is_empty()) else {
            return Err(CallbackRefusal::NoCode);
        };
        let return_to = pending.return_to.clone();
        let asked = pending.options.clone();
        let replaces = pending.replaces.as_deref().and_then(SessionHandle::from_stored);
        let login = self.oidc.complete_login(code, pending).await?;
        if let Err(unmet) = asked.check(&login.user.claims, self.lifetime.now()) {
            // No session: the grant it would have held is handed back.
            if let Some(refresh) = login.refresh_token.clone() {
                let oidc = Arc::clone(self.oidc);
                tokio::spawn(async move {
                    if let Err(e) = oidc.revoke(GrantToken::Refresh(&refresh)).await {
                        tracing::warn!("revoking the refused sign-in's refresh token failed: {}", error_chain(&e));
                    }
                });
            }
            return Err(CallbackRefusal::AuthenticationUnmet(unmet));
        }

        if self.oidc.refresh_token_withheld(&login) {
            self.metrics.auth_event(AuthEvent::LoginWithoutRefreshToken);
        }
        // The cookie sent with the callback, else the one the sign-in started with (a
        // `SameSite=Strict` cookie does not come with the provider's cross-site redirect).
        let previous = SessionEntries::read(session, self.lifetime.now()).map(|p| p.handle).or(replaces);
        let sub = login.user.sub.clone();
        let started = self.sessions.start(login, device).await?;
        if let Err(e) = SessionEntries::start(session, &started.id, started.state) {
            if let Err(end) = self.sessions.end(&started.handle, EndReason::Abandoned).await {
                tracing::warn!("{}", error_chain(&end));
            }
            return Err(CallbackRefusal::SessionNotFilled(e));
        }
        // The browser was signed in already: that session ends (its cookie is replaced now), and
        // so does its grant at the provider, without holding up this sign-in.
        if let Some(previous) = previous {
            self.end_replaced(previous).await;
        }
        self.end_beyond_limit(&sub, &started.handle).await;
        self.metrics.auth_event(AuthEvent::Login);
        Ok(Completed { return_to, handle: started.handle })
    }

    /// Ends the user's oldest sessions beyond `session.max_per_user`, their grants in the
    /// background. A failure leaves them to their timeouts: the sign-in itself succeeded.
    async fn end_beyond_limit(&self, sub: &str, keep: &SessionHandle) {
        let ended = match self.sessions.beyond_limit(sub, keep).await {
            Ok(handles) if handles.is_empty() => return,
            Ok(handles) => self.sessions.end_each(handles, EndReason::OverLimit).await,
            Err(e) => Err(e),
        };
        match ended {
            Ok(ended) => {
                tracing::info!(sessions = ended.len(), "sessions beyond session.max_per_user ended");
                let oidc = Arc::clone(self.oidc);
                tokio::spawn(async move {
                    for (handle, ended) in ended {
                        revoke_grant(&oidc, &handle, &ended).await;
                    }
                });
            }
            Err(e) => tracing::warn!("the sessions beyond session.max_per_user were not ended: {}", error_chain(&e)),
        }
    }

    /// Ends the session a sign-in replaced, and its grant in the background. A failure leaves
    /// it to expire: the browser no longer holds its cookie.
    async fn end_replaced(&self, handle: SessionHandle) {
        match self.sessions.end(&handle, EndReason::Replaced).await {
            Ok(Some(ended)) => {
                let oidc = Arc::clone(self.oidc);
                tokio::spawn(async move { revoke_grant(&oidc, &handle, &ended).await });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                session = handle.short(),
                "the replaced session stays until it expires: {}",
                error_chain(&e)
            ),
        }
    }
}

/// Asks the provider to end the grant of a session that ended (replaced by a sign-in, or
/// signed out). Failures are logged only: the session has ended anyway, and the provider
/// expires the grant in time.
pub async fn revoke_grant(oidc: &Oidc, handle: &SessionHandle, ended: &Ended) {
    let grant = ended.grant();
    let which = match grant {
        GrantToken::Refresh(_) => "refresh token",
        GrantToken::Access(_) => "access token (the session had no refresh token)",
    };
    match oidc.revoke(grant).await {
        Ok(Revocation::Revoked) => tracing::info!(session = handle.short(), "{which} revoked at the provider"),
        Ok(Revocation::NoEndpoint) => tracing::info!(
            session = handle.short(),
            "{which} not revoked: the provider has no revocation endpoint \
             (none in its metadata; oidc.revocation_endpoint is not set)"
        ),
        Err(e) => tracing::warn!(session = handle.short(), "revoking the {which} failed: {}", error_chain(&e)),
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::to_bytes;
    use actix_web::http::StatusCode;

    use super::*;

    fn token_endpoint_error() -> TokenEndpointError {
        TokenEndpointError::Other("refused".into())
    }

    /// A refused sign-in's status and sentence, the code of the error whose page it gets, or
    /// where the browser is sent instead of a page.
    #[derive(Debug)]
    enum Expected {
        Page(u16, &'static str),
        Error(&'static str),
        Redirect(&'static str),
    }

    /// One of each refusal, with today's answer.
    fn every_refusal() -> Vec<(CallbackRefusal, Expected)> {
        vec![
            (CallbackRefusal::Unreadable, Expected::Page(400, "The sign-in response could not be read.")),
            (
                CallbackRefusal::NoState,
                Expected::Page(400, "The sign-in response did not say which sign-in it answers."),
            ),
            (
                CallbackRefusal::UnknownState,
                Expected::Page(400, "This sign-in is unknown, has expired or was already used. Please start again."),
            ),
            (
                CallbackRefusal::OtherBrowser,
                Expected::Page(400, "This sign-in was started in another browser. Please start again here."),
            ),
            (
                CallbackRefusal::OtherIssuer(ResponseIssuerError::Missing),
                Expected::Page(400, "The sign-in response did not come from the expected identity provider."),
            ),
            (
                CallbackRefusal::ProviderError("access_denied".into()),
                Expected::Page(400, "Sign-in was cancelled or refused."),
            ),
            (
                CallbackRefusal::ProviderError("login_required".into()),
                Expected::Page(400, "The identity provider could not sign you in (login_required)."),
            ),
            (CallbackRefusal::NoCode, Expected::Page(400, "The sign-in response carried no authorization code.")),
            (
                CallbackRefusal::CodeRefused(token_endpoint_error()),
                Expected::Page(
                    400,
                    "The sign-in could not be completed: the identity provider refused it. Please start again.",
                ),
            ),
            (
                CallbackRefusal::IdTokenInvalid("nonce".into()),
                Expected::Page(400, "The identity provider's answer could not be accepted."),
            ),
            (
                CallbackRefusal::UserinfoRefused("another sub".into()),
                Expected::Page(400, "The identity provider's answer could not be accepted."),
            ),
            (
                CallbackRefusal::CredentialsRefused(token_endpoint_error()),
                Expected::Page(503, "This application cannot complete sign-ins right now. Please try again later."),
            ),
            (
                CallbackRefusal::ProviderUnavailable(OidcError::NotReady),
                Expected::Page(502, "The identity provider could not be reached. Please try again."),
            ),
            (CallbackRefusal::StoreDown(StoreError::HeldOff), Expected::Error("session_store_unavailable")),
            (CallbackRefusal::SessionNotFilled(anyhow::anyhow!("no")), Expected::Error("internal")),
            (
                CallbackRefusal::InteractionNeeded { return_to: "/a?error=login_required".into() },
                Expected::Redirect("/a?error=login_required"),
            ),
            (
                CallbackRefusal::AuthenticationUnmet(Unmet::OtherAcr),
                Expected::Page(
                    403,
                    "The identity provider did not confirm the sign-in this application asked for \
                     (a recent or a stronger authentication). Please sign in again.",
                ),
            ),
        ]
    }

    #[test]
    fn every_refusal_is_listed_here() {
        // Exhaustive: a new refusal does not compile until it is named here, and then needs a
        // row above (the count).
        let named = |r: &CallbackRefusal| match r {
            CallbackRefusal::Unreadable
            | CallbackRefusal::NoState
            | CallbackRefusal::UnknownState
            | CallbackRefusal::OtherBrowser
            | CallbackRefusal::OtherIssuer(_)
            | CallbackRefusal::ProviderError(_)
            | CallbackRefusal::NoCode
            | CallbackRefusal::CodeRefused(_)
            | CallbackRefusal::IdTokenInvalid(_)
            | CallbackRefusal::UserinfoRefused(_)
            | CallbackRefusal::CredentialsRefused(_)
            | CallbackRefusal::ProviderUnavailable(_)
            | CallbackRefusal::StoreDown(_)
            | CallbackRefusal::SessionNotFilled(_)
            | CallbackRefusal::InteractionNeeded { .. }
            | CallbackRefusal::AuthenticationUnmet(_) => std::mem::discriminant(r),
        };
        let kinds: std::collections::HashSet<_> = every_refusal().iter().map(|(r, _)| named(r)).collect();
        assert_eq!(kinds.len(), 16);
    }

    #[test]
    fn each_refusal_has_its_status_and_sentence() {
        for (refusal, expected) in every_refusal() {
            match (refusal.answer(), expected) {
                (CallbackAnswer::Refused(status, sentence), Expected::Page(code, text)) => {
                    assert_eq!(status.as_u16(), code, "{refusal:?}");
                    assert_eq!(sentence, text, "{refusal:?}");
                }
                (CallbackAnswer::Failed(error), Expected::Error(code)) => {
                    assert_eq!(error.code(), code, "{refusal:?}")
                }
                (CallbackAnswer::Redirect(location), Expected::Redirect(to)) => assert_eq!(location, to, "{refusal:?}"),
                (answer, expected) => panic!("{refusal:?}: {answer:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn the_code_exchange_failures_become_their_refusals() {
        let from = |e| CallbackRefusal::from(e).answer();
        let status = |a: CallbackAnswer| match a {
            CallbackAnswer::Refused(status, _) => status,
            CallbackAnswer::Failed(e) => actix_web::ResponseError::status_code(&e),
            CallbackAnswer::Redirect(_) => StatusCode::FOUND,
        };
        assert_eq!(status(from(CallbackError::CodeRejected(token_endpoint_error()))), StatusCode::BAD_REQUEST);
        assert_eq!(status(from(CallbackError::InvalidIdToken("x".into()))), StatusCode::BAD_REQUEST);
        assert_eq!(status(from(CallbackError::InvalidUserinfo("x".into()))), StatusCode::BAD_REQUEST);
        assert_eq!(status(from(CallbackError::ClientAuth(token_endpoint_error()))), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(from(CallbackError::Provider(OidcError::NotReady))), StatusCode::BAD_GATEWAY);
    }

    #[actix_web::test]
    async fn a_refused_sign_in_is_a_counted_page_and_a_failure_of_bffs_is_not() {
        let pages = Pages::load(std::path::Path::new("/nonexistent"), crate::pages::STYLESHEET_PATH).unwrap();
        let metrics = Metrics::new().unwrap();
        let failed =
            |m: &Metrics| m.render().contains("bff_auth_events_total{event=\"login_failed\",frontend=\"default\"} 1");

        let res = CallbackRefusal::provider_error("<b>").respond(&pages, &metrics);
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let body = String::from_utf8(to_bytes(res.into_body()).await.unwrap().to_vec()).unwrap();
        // The provider's code is filtered before it is shown.
        assert!(body.contains("The identity provider could not sign you in (b)."), "{body}");
        assert!(body.contains("href=\"/auth/login\""), "a way to start again: {body}");
        assert!(failed(&metrics));

        let res = CallbackRefusal::StoreDown(StoreError::HeldOff).respond(&pages, &metrics);
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let res = CallbackRefusal::SessionNotFilled(anyhow::anyhow!("no")).respond(&pages, &metrics);
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(failed(&metrics), "still one login_failed");
    }

    #[test]
    fn a_declined_silent_sign_in_names_the_code_in_the_query_before_a_fragment() {
        assert_eq!(with_error("/", "login_required"), "/?error=login_required");
        assert_eq!(with_error("/a?b=1", "consent_required"), "/a?b=1&error=consent_required");
        assert_eq!(with_error("/a#top", "login_required"), "/a?error=login_required#top");
        assert_eq!(with_error("/a?b=1#x?y", "interaction_required"), "/a?b=1&error=interaction_required#x?y");
    }

    #[test]
    fn the_providers_error_is_cut_to_a_short_code() {
        let cut = |raw: &str| match CallbackRefusal::provider_error(raw) {
            CallbackRefusal::ProviderError(code) => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(cut("access_denied"), "access_denied");
        assert_eq!(cut("<script>x</script> é"), "scriptxscript");
        assert_eq!(cut(&"a".repeat(100)).len(), 64);
    }

    #[test]
    fn login_refusals_are_the_contracts_errors() {
        let metrics = Metrics::new().unwrap();
        let too_many = LoginRefusal::TooMany(Duration::from_secs(3)).error(&metrics);
        assert_eq!(too_many.code(), "too_many_logins");
        assert!(metrics.render().contains("bff_requests_limited_total{frontend=\"default\",limit=\"login_rate\"} 1"));
        assert_eq!(LoginRefusal::StoreDown(StoreError::HeldOff).error(&metrics).code(), "session_store_unavailable");
        assert_eq!(LoginRefusal::ProviderUnavailable(OidcError::NotReady).error(&metrics).code(), "idp_unavailable");
    }
}
