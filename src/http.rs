//! Cross-cutting HTTP rules, applied as middleware in `startup` and nowhere else: security
//! headers, the `/auth` guard (body cap, no-store, store outages), access log,
//! and the anti-forgery checks handlers call.

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::InternalError;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpRequest, ResponseError, web};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::{AppError, is_navigation};
use crate::limits::Limit;
use crate::request_id::request_id;
use crate::runtime::Runtime;
use crate::session::cookie_pairs;
use crate::state::AppState;
use crate::telemetry::{self, error_chain};

/// Bodies sent to `/auth/*` (forms, logout tokens) are small.
pub const AUTH_BODY_LIMIT: usize = 64 * 1024;

/// Marks one of bff's own answers that another origin's page may frame (the front-channel logout
/// page): its own `Content-Security-Policy` names that origin in `frame-ancestors`, and no
/// `X-Frame-Options: DENY` is added (a browser that reads only that header would refuse it).
#[derive(Debug, Clone, Copy)]
pub struct Frameable;

/// Security headers on everything bff serves; an upstream's own values are left alone.
pub async fn security_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let csp = req.app_data::<web::Data<AppState>>().map(|s| s.content_security_policy.clone());
    // Only on the TLS listener: a browser ignores it over plain HTTP, and a bff behind a
    // TLS-terminating proxy leaves it to that proxy.
    let hsts = if req.app_config().secure() {
        req.app_data::<web::Data<Runtime>>().and_then(|r| r.hsts.clone())
    } else {
        None
    };
    let mut res = next.call(req).await?;
    let frameable = res.response().extensions().contains::<Frameable>();
    add_security_headers(res.headers_mut(), csp, frameable);
    if let Some(hsts) = hsts {
        res.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, hsts);
    }
    Ok(res)
}

fn add_security_headers(headers: &mut HeaderMap, csp: Option<HeaderValue>, frameable: bool) {
    let mut set_default = |name: HeaderName, value: HeaderValue| {
        if !headers.contains_key(&name) {
            headers.insert(name, value);
        }
    };
    set_default(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // `same-origin`, not `no-referrer`: with `no-referrer` browsers send `Origin: null` on our own
    // form posts (logout), and no URL of ours leaks to another site either way.
    set_default(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !frameable {
        set_default(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    if let Some(csp) = csp {
        set_default(header::CONTENT_SECURITY_POLICY, csp);
    }
}

/// The `/auth` scope, outside the session middleware: caps bodies, marks every answer
/// `no-store`, and turns a session-store failure (which the session middleware reports as an
/// empty 500) into 503 `session_store_unavailable`, as a page for navigations.
pub async fn auth_guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > AUTH_BODY_LIMIT) {
        if let Some(state) = req.app_data::<web::Data<AppState>>() {
            state.metrics.limited(Limit::BodySize);
        }
        let res = AppError::Limited(Limit::BodySize).error_response();
        return Ok(req.into_response(res).map_into_right_body());
    }
    // Everything the error answer needs is taken now: the request itself cannot be kept across
    // the call (the router needs it to itself), so that answer travels as an error.
    let navigation = is_navigation(req.request());
    let state = req.app_data::<web::Data<AppState>>().cloned();
    match next.call(req).await {
        Ok(mut res) => {
            res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(res.map_into_left_body())
        }
        Err(e) => {
            tracing::warn!("session store failed: {}", error_chain(&e));
            let err = AppError::SessionStoreUnavailable;
            let mut res = match (&state, navigation) {
                (Some(state), true) => err.page(&state.pages),
                _ => err.error_response(),
            };
            add_security_headers(res.headers_mut(), state.map(|s| s.content_security_policy.clone()), false);
            Err(InternalError::from_response("session store unavailable", res).into())
        }
    }
}

/// After `session.secret` was rotated: a session cookie sealed with an older secret is sealed
/// again with the current one — in the request, so the session middleware (which knows only the
/// current key) reads it, and in the answer, so the browser keeps the new one. The same for a
/// cookie under the name from before `session.cookie_prefix`: renamed, the old one cleared.
pub async fn reseal_session_cookie(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let Some(resealed) = state.as_ref().and_then(|s| s.cookies.resealed(req.request())) else {
        return next.call(req).await;
    };
    let name = resealed.cookie.name().to_string();
    let rewritten: Vec<String> = cookie_pairs(req.headers())
        .filter(|pair| pair.split('=').next() != Some(name.as_str()))
        .map(String::from)
        .chain(std::iter::once(format!("{name}={}", resealed.cookie.value())))
        .collect();
    if let Ok(v) = HeaderValue::from_str(&rewritten.join("; ")) {
        req.headers_mut().insert(header::COOKIE, v);
    }
    let mut res = next.call(req).await?;
    let sets_cookie =
        res.headers().get_all(header::SET_COOKIE).any(|v| v.to_str().is_ok_and(|v| v.starts_with(&format!("{name}="))));
    if !sets_cookie {
        let _ = res.response_mut().add_cookie(&resealed.cookie);
    }
    if let Some(removal) = &resealed.removal {
        let _ = res.response_mut().add_cookie(removal);
    }
    Ok(res)
}

/// Which kind of route a path is, for metrics and logs (never the path itself: unbounded).
fn route_class(path: &str, state: Option<&AppState>) -> &'static str {
    let within = state.map_or(path, |s| s.within(path));
    if let Some(own) = crate::paths::class_of(within) {
        own
    } else if state.is_some_and(|s| s.proxy.route_for(path).is_some()) {
        "api"
    } else {
        "static"
    }
}

/// The frontend's name (bounded: from the configuration), or nothing for the server's own routes.
fn frontend_of(state: Option<&AppState>) -> &str {
    state.map_or("", |s| s.config.frontend.name.as_str())
}

/// The request's span; exported, it also carries the OpenTelemetry HTTP server attributes and
/// joins the browser's trace when that is believed.
fn request_span(req: &ServiceRequest, id: &str, route: &'static str, state: Option<&AppState>) -> tracing::Span {
    if !telemetry::exporting() {
        return tracing::info_span!("request", request_id = id, route, frontend = frontend_of(state));
    }
    let label = route_label(req.path(), route, state);
    let name = format!("{} {label}", req.method());
    // The name and kind must be fields; the rest go to the exported span only (the log lines
    // carry method, path and status already).
    let span = tracing::info_span!(
        "request",
        request_id = id,
        route,
        frontend = frontend_of(state),
        otel.name = name.as_str(),
        otel.kind = "server"
    );
    // First: a parent can be set only before anything else is done with the span.
    let trusted = state.is_some_and(|s| s.config.telemetry.trust_incoming_trace_context);
    telemetry::context::adopt_incoming(&span, req.headers(), trusted);
    if telemetry::is_recorded(&span) {
        span.set_attribute("http.request.method", req.method().as_str().to_string());
        span.set_attribute("url.path", req.path().to_string());
        span.set_attribute("http.route", label);
    }
    span
}

/// bff's own routes by name ([`crate::paths::OWN_ROUTES`]); an API call by its route's prefix
/// and the SPA's files as one (their paths are unbounded, and a span name must not be).
fn route_label(path: &str, route: &'static str, state: Option<&AppState>) -> String {
    let base = state.map_or("", |s| s.config.frontend.path.as_str());
    let within = state.map_or(path, |s| s.within(path));
    if let Some(named) = crate::paths::OwnRoute::find(within) {
        return format!("{base}{}", named.path());
    }
    match (route, state.and_then(|s| s.proxy.route_for(path))) {
        ("api", Some(api)) => format!("{}/*", api.prefix.trim_end_matches('/')),
        ("auth", _) => format!("{base}{}/*", crate::paths::AUTH_SCOPE),
        _ => format!("{base}/*"),
    }
}

/// Outermost: the request id, the header size limit, one log line and the metrics of every
/// request (method, path without its query — it may hold a code —, status, latency).
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let id = request_id(&req);
    let route = route_class(req.path(), state.as_ref().map(|s| s.get_ref()));
    // Kept for the access log line only when that line is written.
    let logged = tracing::enabled!(tracing::Level::INFO).then(|| (req.method().clone(), req.path().to_string()));
    let span = request_span(&req, &id.0, route, state.as_ref().map(|s| s.get_ref()));
    let target_bytes = req.uri().path().len() + req.uri().query().map_or(0, str::len);
    let header_bytes: usize =
        req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>() + target_bytes;
    // The server's own app (health, requests no frontend takes) has the process's metrics.
    let runtime = if state.is_none() { req.app_data::<web::Data<Runtime>>().cloned() } else { None };
    let metrics =
        state.as_ref().map(|s| Arc::clone(&s.metrics)).or_else(|| runtime.as_ref().map(|r| Arc::clone(&r.metrics)));
    let max_header_bytes = state
        .as_ref()
        .map(|s| s.config.server.max_header_bytes)
        .or_else(|| runtime.as_ref().map(|r| r.boot.server.max_header_bytes))
        .unwrap_or(usize::MAX);
    req.extensions_mut().insert(id.clone());
    let res = if header_bytes > max_header_bytes {
        if let Some(metrics) = &metrics {
            metrics.limited(Limit::HeaderSize);
        }
        Ok(req.into_response(AppError::Limited(Limit::HeaderSize).error_response()).map_into_right_body())
    } else {
        next.call(req).instrument(span.clone()).await.map(ServiceResponse::map_into_left_body)
    };
    let status = match &res {
        Ok(r) => r.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    if let Some(metrics) = &metrics {
        metrics.request(route, status.as_u16(), started.elapsed());
    }
    if telemetry::is_recorded(&span) {
        span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            span.set_status(opentelemetry::trace::Status::error(""));
        }
    }
    if let Some((method, path)) = logged {
        span.in_scope(|| {
            tracing::info!(
                method = %method,
                path = %path,
                status = status.as_u16(),
                latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                "request"
            );
        });
    }
    res.map(|mut r| {
        if let Ok(v) = HeaderValue::from_str(&id.0) {
            r.headers_mut().insert(HeaderName::from_static("x-request-id"), v);
        }
        r
    })
}

/// `X-CSRF: 1`: a header a cross-site form cannot set and a cross-origin `fetch` cannot send
/// without a CORS preflight bff never grants.
pub fn require_csrf_header(req: &HttpRequest) -> Result<(), AppError> {
    // A `HeaderName` constant, not a `&str`: actix parses a string key on every lookup.
    const X_CSRF: actix_web::http::header::HeaderName = actix_web::http::header::HeaderName::from_static("x-csrf");
    match req.headers().get(X_CSRF) {
        Some(v) if v.as_bytes() == b"1" => Ok(()),
        _ => Err(AppError::Csrf),
    }
}

/// `Origin` exactly `public_url`'s origin: what a browser sends with a request our own pages
/// made (a WebSocket handshake, a form post), and what another site's page cannot send.
pub fn require_same_origin(req: &HttpRequest, public_origin: &str) -> Result<(), AppError> {
    match req.headers().get(header::ORIGIN) {
        Some(o) if o.as_bytes() == public_origin.as_bytes() => Ok(()),
        _ => Err(AppError::Csrf),
    }
}

/// Logout also accepts a plain form post from our own pages, recognised by its `Origin` (or,
/// where a browser sends `Origin: null`, by `Sec-Fetch-Site: same-origin`, which pages cannot set).
pub fn require_csrf_or_same_origin(req: &HttpRequest, public_origin: &str) -> Result<(), AppError> {
    if require_csrf_header(req).is_ok() {
        return Ok(());
    }
    let headers = req.headers();
    let origin_ok = require_same_origin(req, public_origin).is_ok();
    let fetch_site_ok = headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"same-origin")
        && headers.get(header::ORIGIN).is_none_or(|o| o.as_bytes() == b"null");
    if origin_ok || fetch_site_ok { Ok(()) } else { Err(AppError::Csrf) }
}

#[cfg(test)]
mod tests {
    use super::{route_class, route_label};
    use crate::paths::OWN_ROUTES;

    #[test]
    fn every_own_route_is_named_and_classed_by_the_table() {
        for route in OWN_ROUTES {
            let class = route_class(route.path(), None);
            assert_eq!(class, route.class(), "{route:?}");
            assert_eq!(route_label(route.path(), class, None), route.path(), "{route:?}");
        }
        assert_eq!(route_class("/auth/nothing", None), "auth");
        assert_eq!(route_class("/healthz/x", None), "static");
    }

    #[test]
    fn span_names_are_bounded() {
        assert_eq!(route_label("/auth/callback", "auth", None), "/auth/callback");
        assert_eq!(route_label("/auth/anything-else", "auth", None), "/auth/*");
        assert_eq!(route_label("/readyz", "health", None), "/readyz");
        assert_eq!(route_label("/.well-known/jwks.json", "static", None), "/.well-known/jwks.json");
        assert_eq!(route_label("/assets/app.3f9a.js", "static", None), "/*");
        assert_eq!(route_label("/users/42/orders", "static", None), "/*");
    }
}
