//! `/auth/*`: login, callback, user, logout, and the provider's logouts. Thin: the sign-in flow
//! lives in `signin`, the protocol in `oidc`, storage in `session` and `tokens`.

use actix_session::Session;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};

use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Deserialize;
use serde_json::json;

use crate::crypto::digest;
use crate::dbsc::REGISTRATION_HEADER;
use crate::error::{AppError, BadRequest};
use crate::http::{Frameable, require_csrf_header, require_csrf_or_same_origin};
use crate::login_options::{LoginOptions, RawLoginOptions};
use crate::metrics::AuthEvent;
use crate::oidc::{LogoutHint, LogoutTokenError, Oidc};
use crate::session::{Device, SessionEntries, SessionHandle};
use crate::signin::{CallbackParams, CallbackRefusal, LoginRequest, SignIn, revoke_grant};
use crate::state::AppState;
use crate::telemetry::error_chain;
use crate::tokens::EndReason;

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
    prompt: Option<String>,
    login_hint: Option<String>,
    acr_values: Option<String>,
    max_age: Option<String>,
    ui_locales: Option<String>,
}

/// `GET /auth/login?return_to=/path`
pub async fn login(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    // A malformed query is not an error here: it just means "no return_to".
    let query = web::Query::<LoginQuery>::from_query(req.query_string()).ok();
    let raw = query.as_ref().map_or_else(RawLoginOptions::default, |q| RawLoginOptions {
        prompt: q.prompt.as_deref(),
        login_hint: q.login_hint.as_deref(),
        acr_values: q.acr_values.as_deref(),
        max_age: q.max_age.as_deref(),
        ui_locales: q.ui_locales.as_deref(),
    });
    let options = match LoginOptions::read(&raw, &state.config.oidc.login_params) {
        Ok(options) => options,
        Err(refused) => {
            tracing::info!("sign-in refused: {refused}");
            return AppError::BadRequest(BadRequest::LoginParameter).respond(&req, &state.pages);
        }
    };
    let request = LoginRequest {
        return_to: query.as_ref().and_then(|q| q.return_to.as_deref()),
        client: crate::limits::client_ip(&req, state.config.server.trusted_proxy_hops),
        binding: state.cookies.login_binding(&req),
        options,
        current: state.cookies.session_handle(&req),
    };
    match SignIn::new(&state).begin(request).await {
        Ok(begun) => redirect(StatusCode::FOUND, begun.location.as_str())
            .cookie(state.cookies.login_cookie(&begun.binding))
            .finish(),
        Err(refusal) => refusal.error(&state.metrics).respond(&req, &state.pages),
    }
}

/// `GET /auth/callback?code=…&state=…`
pub async fn callback(req: HttpRequest, state: web::Data<AppState>, session: Session) -> HttpResponse {
    let completed = match web::Query::<CallbackParams>::from_query(req.query_string()) {
        Ok(query) => {
            let binding = state.cookies.login_binding(&req);
            let device = Device::of(&req, state.config.server.trusted_proxy_hops);
            SignIn::new(&state).complete(&session, query.into_inner(), binding.as_deref(), &device).await
        }
        Err(_) => Err(CallbackRefusal::Unreadable),
    };
    match completed {
        Ok(completed) => {
            let mut res = redirect(StatusCode::FOUND, &completed.return_to);
            // DBSC: the browser acts on the header of the redirect, registering while the SPA
            // loads (with a same-site provider; else `/auth/user` offers it).
            if state.dbsc.enabled()
                && state.dbsc.offer_at_callback
                && let Some(offer) = state.dbsc.registration_header(&completed.handle, state.lifetime.now())
            {
                res.insert_header((header::HeaderName::from_static(REGISTRATION_HEADER), offer));
            }
            res.finish()
        }
        Err(refusal) => refusal.respond(&state.pages, &state.metrics),
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
    check_device(&req, &state, &signed_in.handle, tokens.device())?;
    let offer = registration_offer(&state, &signed_in, tokens.device().is_some());
    let user = signed_in.user;
    let mut res = HttpResponse::Ok();
    if let Some(offer) = offer {
        res.insert_header((header::HeaderName::from_static(REGISTRATION_HEADER), offer));
    }
    Ok(res.json(json!({
        "sub": user.sub,
        "name": user.name,
        "email": user.email,
        // What the provider says of the authentication (OpenID Connect Core §2), for an SPA
        // that decides whether to ask for a stronger or a fresher one.
        "acr": user.claims.get("acr"),
        "amr": user.claims.get("amr"),
        "auth_time": user.claims.get("auth_time"),
        "claims": user.claims,
        "session": {
            "sid": signed_in.handle.as_str(),
            "expires_at": signed_in.expires_at,
        },
        // When the current access token expires (never the token itself), so the SPA can show it.
        "access_token_expires_at": tokens.expiry().expires_at,
        // `Bearer`, or `DPoP` for tokens bound to the session's key (RFC 9449).
        "access_token_type": tokens.token_type(),
        // Whether the browser bound the session to its device key (DBSC), and whether bff
        // offers it (`session.dbsc`: `off`, `optional`, `required`).
        "device_bound": tokens.device().is_some(),
        "device_binding": state.dbsc.mode.label(),
    })))
}

/// DBSC: the registration offer on `/auth/user`, for a session not bound yet and at most
/// `REGISTRATION_WINDOW` old. The sign-in's redirect carries it first when the provider is
/// same-site; after a cross-site provider's redirect the browser registers without the
/// `SameSite=Strict` session cookie and may not set the bound cookie (Chromium 156: a 400, no
/// session), while the SPA's first `/auth/user` is same-site. Minting a challenge is one HMAC, no store command. The
/// window keeps a cookie copied later from binding the session to another key.
fn registration_offer(state: &AppState, signed_in: &crate::session::SignedIn, bound: bool) -> Option<HeaderValue> {
    if bound || !state.dbsc.enabled() {
        return None;
    }
    let now = state.lifetime.now();
    let started = signed_in.expires_at.saturating_sub(state.config.session.absolute_timeout.as_secs());
    (now <= started + REGISTRATION_WINDOW.as_secs())
        .then(|| state.dbsc.registration_header(&signed_in.handle, now))
        .flatten()
}

/// How long after sign-in `/auth/user` offers the registration.
const REGISTRATION_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// A session bound to a device shows its bound cookie at `/auth/user` and `/auth/sessions` as
/// at the API (they show and end the user's sessions). An unbound one passes, even with
/// `required`: the SPA learns it is signed in and waits for the registration.
fn check_device(
    req: &HttpRequest,
    state: &AppState,
    handle: &SessionHandle,
    device: Option<&crate::dbsc::DeviceBinding>,
) -> Result<(), AppError> {
    if device.is_none() {
        return Ok(());
    }
    state.dbsc.check(req, handle, device, state.lifetime.now()).map_err(|refusal| {
        state.metrics.dbsc_refused("call", refusal.label());
        AppError::DeviceBinding(refusal)
    })
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
    // The browser's device session is not told here (`Clear-Site-Data` would clear every
    // cookie of the site): its next refresh is answered `continue: false`.
    if state.dbsc.enabled() {
        res.cookie(state.dbsc.bound_cookie_removal());
    }
    if !middleware_clears_cookie && state.cookies.session_cookie(&req).is_some() {
        res.cookie(state.cookies.session_cookie_removal());
    }
    Ok(res.finish())
}

/// The signed-in session of this request, if its token set is still there (the same check as
/// `/auth/user`'s: a session ended elsewhere is 401 here at once).
async fn signed_in(
    req: &HttpRequest,
    state: &AppState,
    session: &Session,
) -> Result<crate::session::SignedIn, AppError> {
    let signed_in = SessionEntries::read(session, state.lifetime.now()).ok_or(AppError::LoginRequired)?;
    let Some(tokens) = state.tokens.store().load(&signed_in.handle).await? else {
        session.purge();
        return Err(AppError::LoginRequired);
    };
    check_device(req, state, &signed_in.handle, tokens.device())?;
    Ok(signed_in)
}

/// Ends each session as logout does: its keys go (every instance refuses it at once), then its
/// grant is revoked at the provider: awaited for one session (as at logout), in the background
/// for several (a slow provider must not hold the answer for each of up to
/// `session.max_per_user` revocations). How many were still live.
async fn end_and_revoke(state: &AppState, handles: Vec<SessionHandle>, reason: EndReason) -> Result<usize, AppError> {
    let ended = state.sessions.end_each(handles, reason).await?;
    let count = ended.len();
    if let [(handle, one)] = ended.as_slice() {
        revoke_grant(&state.oidc, handle, one).await;
    } else {
        let oidc = std::sync::Arc::clone(&state.oidc);
        tokio::spawn(async move {
            for (handle, ended) in ended {
                revoke_grant(&oidc, &handle, &ended).await;
            }
        });
    }
    Ok(count)
}

/// `GET /auth/sessions`: the signed-in user's sessions at this frontend, on every device.
/// `DELETE /auth/sessions`: ends all of them but this one.
pub async fn sessions(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: Session,
) -> Result<HttpResponse, AppError> {
    require_csrf_header(&req)?;
    let me = signed_in(&req, &state, &session).await?;
    let listed = state.sessions.list(&me.user.sub).await?;
    if req.method() == Method::DELETE {
        let others: Vec<SessionHandle> = listed.into_iter().map(|l| l.handle).filter(|h| *h != me.handle).collect();
        let ended = end_and_revoke(&state, others, EndReason::EndedByUser).await?;
        tracing::info!(session = me.handle.short(), sessions = ended, "the user ended their other sessions");
        return Ok(HttpResponse::Ok().json(json!({ "ended": ended })));
    }
    let sessions: Vec<serde_json::Value> = listed
        .iter()
        .map(|l| {
            let mut shown = l.to_json();
            if let Some(fields) = shown.as_object_mut() {
                fields.insert("current".into(), (l.handle == me.handle).into());
            }
            shown
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "sessions": sessions })))
}

/// `DELETE /auth/sessions/{id}`: ends one of the user's sessions (this one too: then as a
/// logout without the provider's end-session page). Another user's id, another frontend's, or
/// one that already ended: 404, the same answer as an id that never was.
pub async fn end_session(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    require_csrf_header(&req)?;
    let me = signed_in(&req, &state, &session).await?;
    let handle = SessionHandle::from_stored(&id).ok_or(AppError::NotFound)?;
    if !state.sessions.belongs_to(&handle, &me.user.sub).await? {
        return Err(AppError::NotFound);
    }
    if end_and_revoke(&state, vec![handle.clone()], EndReason::EndedByUser).await? == 0 {
        return Err(AppError::NotFound);
    }
    tracing::info!(session = me.handle.short(), ended = handle.short(), "the user ended a session");
    if handle == me.handle {
        session.purge();
    }
    Ok(HttpResponse::NoContent().finish())
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
