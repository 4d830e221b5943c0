//! `/auth/*`: login, callback, user, logout, and the provider's logouts. Thin: the protocol
//! lives in `oidc`, storage in `session` and `tokens`.

use std::sync::Arc;

use actix_session::Session;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};

use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Deserialize;
use serde_json::json;

use crate::crypto::{digest, random_token};
use crate::error::{AppError, BadRequest};
use crate::http::{Frameable, require_csrf_header, require_csrf_or_same_origin};
use crate::limits::Limit;
use crate::metrics::AuthEvent;
use crate::oidc::{CallbackError, GrantToken, LogoutHint, LogoutTokenError, Oidc, Revocation};
use crate::return_to::ReturnTo;
use crate::session::SessionEntries;
use crate::session::SessionHandle;
use crate::state::AppState;
use crate::telemetry::error_chain;
use crate::tokens::{EndReason, Ended};

fn redirect(status: StatusCode, location: &str) -> actix_web::HttpResponseBuilder {
    let mut res = HttpResponse::build(status);
    if let Ok(v) = HeaderValue::from_str(location) {
        res.insert_header((header::LOCATION, v));
    }
    res
}

#[derive(Deserialize)]
pub struct LoginQuery {
    return_to: Option<String>,
}

/// `GET /auth/login?return_to=/path`
pub async fn login(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    // A malformed query is not an error here: it just means "no return_to".
    let query = web::Query::<LoginQuery>::from_query(req.query_string()).ok();
    let return_to =
        ReturnTo::parse_or_root(query.as_ref().and_then(|q| q.return_to.as_deref()), &state.config.server.public_url);
    // Each start leaves a pending login in the store for ten minutes: limit starts per client
    // address, and logins in progress per browser.
    let limit = state.config.server.login_starts_per_minute;
    let too_many = |retry_after| {
        state.metrics.limited(Limit::LoginRate);
        AppError::LimitedFor(Limit::LoginRate, retry_after).respond(&req, &state.pages)
    };
    let client = crate::limits::client_ip(&req, state.config.server.trusted_proxy_hops);
    if let Some(Err(retry_after)) = client.map(|ip| state.login_limiter.check(ip)) {
        return too_many(retry_after);
    }
    // One binding value per browser, reused while it lives, so several tabs can log in at once.
    let binding = state.cookies.login_binding(&req).unwrap_or_else(random_token);
    match state.logins.room_for(&digest(&binding), limit as usize).await {
        Ok(Ok(())) => {}
        Ok(Err(retry_after)) => return too_many(retry_after),
        Err(e) => return AppError::from(e).respond(&req, &state.pages),
    }
    let (url, csrf_state, pending) = match state.oidc.begin_login(return_to.into_string(), digest(&binding)).await {
        Ok(started) => started,
        Err(e) => {
            tracing::warn!("cannot start a login: {}", error_chain(&e));
            return AppError::IdpUnavailable.respond(&req, &state.pages);
        }
    };
    if let Err(e) = state.logins.put(csrf_state.secret(), &pending).await {
        return AppError::from(e).respond(&req, &state.pages);
    }
    redirect(StatusCode::FOUND, url.as_str()).cookie(state.cookies.login_cookie(&binding)).finish()
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    /// RFC 9207.
    iss: Option<String>,
}

fn callback_error(state: &AppState, status: StatusCode, message: &str) -> HttpResponse {
    state.metrics.auth_event(AuthEvent::LoginFailed);
    state.pages.error(status, message, true)
}

/// `GET /auth/callback?code=…&state=…`
pub async fn callback(req: HttpRequest, state: web::Data<AppState>, session: Session) -> HttpResponse {
    let Ok(query) = web::Query::<CallbackQuery>::from_query(req.query_string()) else {
        return callback_error(&state, StatusCode::BAD_REQUEST, "The sign-in response could not be read.");
    };
    let Some(csrf_state) = query.state.as_deref().filter(|s| !s.is_empty()) else {
        return callback_error(
            &state,
            StatusCode::BAD_REQUEST,
            "The sign-in response did not say which sign-in it answers.",
        );
    };
    let unknown = || {
        callback_error(
            &state,
            StatusCode::BAD_REQUEST,
            "This sign-in is unknown, has expired or was already used. Please start again.",
        )
    };
    // Nothing is consumed by a response that names another issuer or reaches another browser:
    // neither may burn the sign-in of the browser that started it.
    if let Err(e) = state.oidc.check_response_issuer(query.iss.as_deref()) {
        tracing::warn!("callback refused: {e}");
        return callback_error(
            &state,
            StatusCode::BAD_REQUEST,
            "The sign-in response did not come from the expected identity provider.",
        );
    }
    let browser = match state.logins.peek(csrf_state).await {
        Ok(Some(pending)) => pending.browser,
        Ok(None) => return unknown(),
        Err(e) => return AppError::from(e).page(&state.pages),
    };
    let same_browser = state.cookies.login_binding(&req).is_some_and(|b| digest(&b) == browser);
    if !same_browser {
        tracing::warn!("callback completed in a browser other than the one that started the login");
        return callback_error(
            &state,
            StatusCode::BAD_REQUEST,
            "This sign-in was started in another browser. Please start again here.",
        );
    }
    // Taken now: a state works once, whatever happens next.
    let pending = match state.logins.take(csrf_state).await {
        Ok(Some(pending)) => pending,
        Ok(None) => return unknown(),
        Err(e) => return AppError::from(e).page(&state.pages),
    };
    if let Some(error) = &query.error {
        let safe: String = error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
        tracing::info!(error = safe, "the identity provider answered the login with an error");
        let message = match safe.as_str() {
            "access_denied" => "Sign-in was cancelled or refused.".to_string(),
            other => format!("The identity provider could not sign you in ({other})."),
        };
        return callback_error(&state, StatusCode::BAD_REQUEST, &message);
    }
    let Some(code) = query.code.clone().filter(|c| !c.is_empty()) else {
        return callback_error(&state, StatusCode::BAD_REQUEST, "The sign-in response carried no authorization code.");
    };
    let return_to = pending.return_to.clone();
    let login = match state.oidc.complete_login(code, pending).await {
        Ok(login) => login,
        Err(e @ CallbackError::CodeRejected(_)) => {
            tracing::warn!("login failed: {}", error_chain(&e));
            return callback_error(
                &state,
                StatusCode::BAD_REQUEST,
                "The sign-in could not be completed: the identity provider refused it. Please start again.",
            );
        }
        Err(e @ (CallbackError::InvalidIdToken(_) | CallbackError::InvalidUserinfo(_))) => {
            tracing::warn!("login failed: {}", error_chain(&e));
            return callback_error(
                &state,
                StatusCode::BAD_REQUEST,
                "The identity provider's answer could not be accepted.",
            );
        }
        Err(e @ CallbackError::ClientAuth(_)) => {
            tracing::error!("login failed: {}", error_chain(&e));
            return callback_error(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                "This application cannot complete sign-ins right now. Please try again later.",
            );
        }
        Err(CallbackError::Provider(e)) => {
            tracing::warn!("login failed: {}", error_chain(&e));
            return callback_error(
                &state,
                StatusCode::BAD_GATEWAY,
                "The identity provider could not be reached. Please try again.",
            );
        }
    };

    if state.oidc.refresh_token_withheld(&login) {
        state.metrics.auth_event(AuthEvent::LoginWithoutRefreshToken);
    }
    let previous = SessionEntries::read(&session, state.lifetime.now());
    let started = match state.sessions.start(login).await {
        Ok(started) => started,
        Err(e) => return AppError::from(e).page(&state.pages),
    };
    if let Err(e) = SessionEntries::start(&session, &started.id, started.state) {
        tracing::error!("cannot fill the session: {e:#}");
        if let Err(e) = state.sessions.end(&started.handle, EndReason::Abandoned).await {
            tracing::warn!("{}", error_chain(&e));
        }
        return AppError::Internal.page(&state.pages);
    }
    // The browser was signed in already: that session ends (its cookie is replaced now), and
    // so does its grant at the provider, without holding up this sign-in.
    if let Some(previous) = previous {
        match state.sessions.end(&previous.handle, EndReason::Replaced).await {
            Ok(Some(ended)) => {
                let oidc = Arc::clone(&state.oidc);
                tokio::spawn(async move { revoke_grant(&oidc, &previous.handle, &ended).await });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                session = previous.handle.short(),
                "the replaced session stays until it expires: {}",
                error_chain(&e)
            ),
        }
    }
    state.metrics.auth_event(AuthEvent::Login);
    redirect(StatusCode::FOUND, &return_to).finish()
}

/// Asks the provider to end the grant of a session that ended. Failures are logged only: the
/// session has ended anyway, and the provider expires the grant in time.
async fn revoke_grant(oidc: &Oidc, handle: &SessionHandle, ended: &Ended) {
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

/// `GET /auth/user`
pub async fn user(req: HttpRequest, state: web::Data<AppState>, session: Session) -> Result<HttpResponse, AppError> {
    require_csrf_header(&req)?;
    let signed_in = SessionEntries::read(&session, state.lifetime.now()).ok_or(AppError::LoginRequired)?;
    let Some(tokens) = state.tokens.store().load(&signed_in.handle).await? else {
        session.purge();
        return Err(AppError::LoginRequired);
    };
    let user = signed_in.user;
    Ok(HttpResponse::Ok().json(json!({
        "sub": user.sub,
        "name": user.name,
        "email": user.email,
        "claims": user.claims,
        "session": {
            "sid": signed_in.handle.as_str(),
            "expires_at": signed_in.expires_at,
        },
        // When the current access token expires (never the token itself), so the SPA can show it.
        "access_token_expires_at": tokens.expiry().expires_at,
        // `Bearer`, or `DPoP` for tokens bound to the session's key (RFC 9449).
        "access_token_type": tokens.token_type(),
    })))
}

/// `POST /auth/logout`
pub async fn logout(req: HttpRequest, state: web::Data<AppState>, session: Session) -> Result<HttpResponse, AppError> {
    require_csrf_or_same_origin(&req, &state.public_origin)?;
    let mut ended_session = None;
    if let Some(signed_in) = SessionEntries::read(&session, state.lifetime.now()) {
        if let Some(ended) = state.sessions.end(&signed_in.handle, EndReason::SignedOut).await? {
            revoke_grant(&state.oidc, &signed_in.handle, &ended).await;
            ended_session = Some(ended);
        }
        state.metrics.auth_event(AuthEvent::Logout);
    }
    if let Some(binding) = state.cookies.login_binding(&req) {
        state.logins.forget_browser(&digest(&binding)).await?;
    }
    // The session middleware clears the cookie of a session it loaded; one it could not (its
    // state already gone) is cleared here, so the answer carries one removal, not two.
    let middleware_clears_cookie = !session.entries().is_empty();
    session.purge();
    let post_logout = &state.config.oidc.post_logout_redirect;
    let id_token =
        ended_session.as_ref().and_then(|e| e.id_token.as_ref()).filter(|_| state.config.oidc.logout_id_token_hint);
    let hint = match (id_token, ended_session.as_ref().and_then(|e| e.provider_sid.as_deref())) {
        (Some(token), _) => LogoutHint::IdToken(token.secret()),
        (None, Some(sid)) => LogoutHint::ProviderSession(sid),
        (None, None) => LogoutHint::None,
    };
    let target = state.oidc.end_session_url(hint, post_logout).unwrap_or_else(|| post_logout.clone());
    let mut res = redirect(StatusCode::SEE_OTHER, target.as_str());
    res.cookie(state.cookies.login_cookie_removal());
    if !middleware_clears_cookie && state.cookies.session_cookie(&req).is_some() {
        res.cookie(state.cookies.session_cookie_removal());
    }
    Ok(res.finish())
}

#[derive(Deserialize)]
pub struct BackchannelLogout {
    logout_token: Option<String>,
}

/// `POST /auth/backchannel-logout` (OIDC Back-Channel Logout 1.0): the provider ends sessions.
/// Server to server: no anti-forgery header, the signed logout token is the credential.
pub async fn backchannel_logout(state: web::Data<AppState>, form: web::Form<BackchannelLogout>) -> HttpResponse {
    let bad = || AppError::BadRequest(BadRequest::InvalidRequest).error_response();
    let Some(token) = form.logout_token.as_deref().filter(|t| !t.is_empty()) else { return bad() };
    let request = match state.oidc.verify_logout_token(token).await {
        Ok(request) => request,
        Err(LogoutTokenError::Invalid(reason)) => {
            tracing::warn!("back-channel logout refused: {reason}");
            return bad();
        }
        Err(LogoutTokenError::Unavailable(e)) => {
            tracing::warn!("back-channel logout cannot be checked now: {}", error_chain(&e));
            return AppError::IdpUnavailable.error_response();
        }
    };
    match state.sessions.end_for_provider(&request).await {
        Ok(Some(count)) => {
            state.metrics.auth_event(AuthEvent::BackchannelLogout);
            state.metrics.logout_sessions_ended("backchannel", count);
            tracing::info!(
                sessions = count,
                by_sid = request.sid.is_some(),
                by_sub = request.sub.is_some(),
                "back-channel logout"
            );
            HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).finish()
        }
        Ok(None) => {
            tracing::warn!("back-channel logout refused: replayed jti");
            bad()
        }
        Err(e) => AppError::from(e).error_response(),
    }
}

#[derive(Deserialize)]
pub struct FrontchannelLogout {
    iss: Option<String>,
    sid: Option<String>,
}

/// The whole front-channel logout page: the provider's logout page loads it in an iframe and
/// nobody sees it.
const FRONTCHANNEL_PAGE: &str =
    "<!doctype html><html><head><meta charset=\"utf-8\"><title>Signed out</title></head><body></body></html>";

/// `GET /auth/frontchannel-logout?iss=…&sid=…` (OIDC Front-Channel Logout 1.0): the provider's
/// logout page loads this in an iframe. No anti-forgery header (a frame load cannot carry one):
/// `iss` must be the provider, and the sessions that end are those of the provider session `sid`
/// — plus this browser's own, when its cookie comes along (same-site deployments: a cross-site
/// frame gets no Lax cookie). Whatever was or was not ended, the provider gets the same page:
/// it must not be told an error per iframe.
pub async fn frontchannel_logout(req: HttpRequest, state: web::Data<AppState>, session: Session) -> HttpResponse {
    let refuse = |why: &str| {
        tracing::warn!("front-channel logout refused: {why}");
        AppError::BadRequest(BadRequest::InvalidRequest).respond(&req, &state.pages)
    };
    let Ok(query) = web::Query::<FrontchannelLogout>::from_query(req.query_string()) else {
        return refuse("the query cannot be read");
    };
    let sid = match frontchannel_sid(&state.oidc, &query) {
        Ok(sid) => sid,
        Err(why) => return refuse(why),
    };
    let mut ended = 0;
    if let Some(sid) = sid {
        match state.sessions.end_provider_session(sid).await {
            Ok(count) => ended += count,
            Err(e) => return AppError::from(e).respond(&req, &state.pages),
        }
    }
    let mut res = HttpResponse::Ok();
    let own_session = is_frame_load(&req) && state.cookies.session_cookie(&req).is_some();
    if own_session {
        if let Some(signed_in) = SessionEntries::read(&session, state.lifetime.now()) {
            match state.sessions.end(&signed_in.handle, EndReason::FrontChannel).await {
                Ok(Some(_)) => ended += 1,
                // Ended just now by its `sid`.
                Ok(None) => {}
                Err(e) => return AppError::from(e).respond(&req, &state.pages),
            }
        }
        // As at logout: the middleware clears the cookie of a session it loaded, this answer
        // the cookie of one it could not.
        if session.entries().is_empty() {
            res.cookie(state.cookies.session_cookie_removal());
        }
        session.purge();
    }
    state.metrics.auth_event(AuthEvent::FrontchannelLogout);
    if ended == 0 {
        tracing::info!(by_sid = sid.is_some(), by_cookie = own_session, "front-channel logout: no live session to end");
    } else {
        state.metrics.logout_sessions_ended("frontchannel", ended);
        tracing::info!(sessions = ended, by_sid = sid.is_some(), by_cookie = own_session, "front-channel logout");
    }
    let frame_ancestors =
        HeaderValue::from_str(&format!("default-src 'none'; frame-ancestors {}", state.oidc.origin()))
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"));
    let mut res = res
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_SECURITY_POLICY, frame_ancestors))
        .body(FRONTCHANNEL_PAGE);
    res.extensions_mut().insert(Frameable);
    res
}

/// The provider session a front-channel logout names, once its `iss` and `sid` are as OIDC
/// Front-Channel Logout §2 and the provider's metadata want; else why not.
fn frontchannel_sid<'q>(oidc: &Oidc, query: &'q FrontchannelLogout) -> Result<Option<&'q str>, &'static str> {
    let iss = query.iss.as_deref().filter(|v| !v.is_empty());
    let sid = query.sid.as_deref().filter(|v| !v.is_empty());
    match (iss, sid) {
        (Some(iss), _) if !oidc.is_issuer(iss) => Err("iss is not the provider's issuer"),
        // The two come together.
        (None, Some(_)) => Err("sid without iss"),
        // A provider that says it sends `sid` always does; without its metadata bff cannot tell.
        (_, None) if oidc.frontchannel_session_required() != Some(false) => {
            Err("no sid, and the provider sends one (frontchannel_logout_session_supported)")
        }
        (_, sid) => Ok(sid),
    }
}

/// Whether the request loads a frame (`Sec-Fetch-Dest: iframe` or `frame`), or comes from a
/// browser that does not say. A top-level navigation (a link on another site) is the one way a
/// Lax cookie reaches bff cross-site: it must not sign anyone out.
fn is_frame_load(req: &HttpRequest) -> bool {
    req.headers().get("sec-fetch-dest").is_none_or(|dest| matches!(dest.as_bytes(), b"iframe" | b"frame"))
}

/// `GET /auth/signed-out`: a page for deployments whose post-logout target is not the SPA.
pub async fn signed_out(state: web::Data<AppState>) -> HttpResponse {
    state.pages.html(StatusCode::OK, "signed_out.html", tera::Context::new())
}

/// `GET /auth/style.css`: the pages' stylesheet.
pub async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(crate::pages::STYLESHEET)
}
