//! The route table. Handlers are thin; the rules they apply live in their modules.
//!
//! bff's own routes are listed once, in [`OWN_ROUTES`], with the methods each takes: the router
//! registers them from there, a method a route does not take is answered 405 with that route's
//! `Allow`, and request spans are named after them. Every answer bff makes itself is the
//! contract's JSON error, or an HTML page for a browser navigation.

pub mod api;
pub mod auth;
pub mod health;
mod jwks;
mod spa;

use actix_web::http::Method;
use actix_web::middleware::from_fn;
use actix_web::{FromRequest, Handler, HttpRequest, HttpResponse, Resource, Responder, ResponseError, guard, web};

use crate::error::AppError;
use crate::http::{AUTH_BODY_LIMIT, auth_guard, reseal_session_cookie};
use crate::state::AppState;

/// The methods one of bff's own routes takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Methods {
    /// `GET`, and `HEAD` answered by the same handler without the body: the route only reads.
    Read,
    /// `GET` alone: its `GET` acts (starts or completes a sign-in, ends sessions), which a `HEAD`
    /// (a link checker, a probe) must not do.
    Act,
    /// `POST` alone.
    Post,
}

impl Methods {
    /// The `Allow` value of a 405.
    pub fn allow(self) -> &'static str {
        match self {
            Methods::Read => "GET, HEAD",
            Methods::Act => "GET",
            Methods::Post => "POST",
        }
    }

    pub fn takes(self, method: &Method) -> bool {
        match self {
            Methods::Read => method == Method::GET || method == Method::HEAD,
            Methods::Act => method == Method::GET,
            Methods::Post => method == Method::POST,
        }
    }
}

/// One of bff's own routes: its full path and the methods it takes.
#[derive(Debug, Clone, Copy)]
pub struct OwnRoute {
    pub path: &'static str,
    pub methods: Methods,
}

const fn route(path: &'static str, methods: Methods) -> OwnRoute {
    OwnRoute { path, methods }
}

pub const LOGIN: OwnRoute = route("/auth/login", Methods::Act);
pub const CALLBACK: OwnRoute = route("/auth/callback", Methods::Act);
pub const USER: OwnRoute = route("/auth/user", Methods::Read);
pub const LOGOUT: OwnRoute = route("/auth/logout", Methods::Post);
pub const BACKCHANNEL_LOGOUT: OwnRoute = route("/auth/backchannel-logout", Methods::Post);
pub const FRONTCHANNEL_LOGOUT: OwnRoute = route("/auth/frontchannel-logout", Methods::Act);
pub const SIGNED_OUT: OwnRoute = route("/auth/signed-out", Methods::Read);
pub const STYLESHEET: OwnRoute = route("/auth/style.css", Methods::Read);
pub const HEALTHZ: OwnRoute = route("/healthz", Methods::Read);
pub const READYZ: OwnRoute = route("/readyz", Methods::Read);
/// On `server.metrics_listen`, and on the main listener only with `server.metrics_public`.
pub const METRICS: OwnRoute = route("/metrics", Methods::Read);
/// With `private_key_jwt` only.
pub const JWKS: OwnRoute = route("/.well-known/jwks.json", Methods::Read);

/// Every route of bff's own (the proxy's prefixes and the SPA's files aside).
pub const OWN_ROUTES: &[OwnRoute] = &[
    LOGIN,
    CALLBACK,
    USER,
    LOGOUT,
    BACKCHANNEL_LOGOUT,
    FRONTCHANNEL_LOGOUT,
    SIGNED_OUT,
    STYLESHEET,
    HEALTHZ,
    READYZ,
    METRICS,
    JWKS,
];

/// The scope of the routes that need the session.
const AUTH_SCOPE: &str = "/auth";

/// Registers `handler` for `route` inside `scope` (`""` at the top): it runs for the methods the
/// route takes, and any other method is answered 405 with the route's `Allow`.
pub fn own<F, Args>(scope: &str, route: OwnRoute, handler: F) -> Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    let methods = route.methods;
    web::resource(route.path.strip_prefix(scope).unwrap_or(route.path))
        .route(web::route().guard(guard::fn_guard(move |ctx| methods.takes(&ctx.head().method))).to(handler))
        .default_service(web::to(move |req: HttpRequest| async move { refuse_method(&req, methods.allow()) }))
}

/// 405 `method_not_allowed` with `allow`: JSON, or a page for a navigation (a form posted to a
/// page's address).
fn refuse_method(req: &HttpRequest, allow: &'static str) -> HttpResponse {
    respond(req, &AppError::MethodNotAllowed(allow.into()))
}

/// 404 `not_found`: JSON, or a page for a navigation.
async fn not_found(req: HttpRequest) -> HttpResponse {
    respond(&req, &AppError::NotFound)
}

fn respond(req: &HttpRequest, error: &AppError) -> HttpResponse {
    match req.app_data::<web::Data<AppState>>() {
        Some(state) => error.respond(req, &state.pages),
        None => error.error_response(),
    }
}

/// Everything bff serves. The session middleware sits on `/auth` only: the proxy reads the
/// cookie itself and needs one store read per call, not two.
pub fn configure(cfg: &mut web::ServiceConfig, state: &web::Data<AppState>) {
    cfg.app_data(web::FormConfig::default().limit(AUTH_BODY_LIMIT))
        .service(own("", HEALTHZ, health::healthz))
        .service(own("", READYZ, health::readyz))
        .service(
            web::scope(AUTH_SCOPE)
                .wrap(state.cookies.middleware(state.session_store()))
                .wrap(from_fn(reseal_session_cookie))
                .wrap(from_fn(auth_guard))
                .service(own(AUTH_SCOPE, LOGIN, auth::login))
                .service(own(AUTH_SCOPE, CALLBACK, auth::callback))
                .service(own(AUTH_SCOPE, USER, auth::user))
                .service(own(AUTH_SCOPE, LOGOUT, auth::logout))
                .service(own(AUTH_SCOPE, BACKCHANNEL_LOGOUT, auth::backchannel_logout))
                .service(own(AUTH_SCOPE, FRONTCHANNEL_LOGOUT, auth::frontchannel_logout))
                .service(own(AUTH_SCOPE, SIGNED_OUT, auth::signed_out))
                .service(own(AUTH_SCOPE, STYLESHEET, auth::stylesheet))
                // bff's own prefix: an unknown path here is no SPA route.
                .default_service(web::to(not_found)),
        );
    if let Some(keys) = &state.config.oidc.client_keys {
        cfg.app_data(web::Data::new(keys.clone())).service(own("", JWKS, jwks::jwks));
    }
    for route in state.proxy.routes() {
        cfg.service(
            web::scope(&route.prefix).app_data(web::Data::new(route.clone())).default_service(web::to(api::proxy)),
        );
    }
    spa::configure(cfg, state.config.server.static_dir.as_deref());
}

/// The separate metrics listener (`server.metrics_listen`): `/metrics`, and 404 for the rest.
pub fn configure_metrics_listener(cfg: &mut web::ServiceConfig) {
    cfg.service(own("", METRICS, health::metrics)).default_service(web::to(not_found));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_that_acts_on_get_takes_no_head() {
        for route in OWN_ROUTES {
            let takes: Vec<&str> = [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::TRACE]
                .iter()
                .filter(|m| route.methods.takes(m))
                .map(Method::as_str)
                .collect();
            assert_eq!(takes.join(", "), route.methods.allow(), "{}", route.path);
        }
        for acts in [LOGIN, CALLBACK, FRONTCHANNEL_LOGOUT] {
            assert!(!acts.methods.takes(&Method::HEAD), "{}", acts.path);
        }
    }
}
