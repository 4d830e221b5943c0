//! The route table. Handlers are thin; the rules they apply live in their modules.
//!
//! bff's own routes are listed once, in [`crate::paths::OWN_ROUTES`], with the methods each
//! takes: the router registers them from there ([`resource`] gives each its handler), a method a
//! route does not take is answered 405 with that route's `Allow`, and request spans are named
//! after them. Every answer bff makes itself is the
//! contract's JSON error, or an HTML page for a browser navigation.

pub mod api;
pub mod auth;
mod dbsc;
pub mod health;
mod jwks;
mod spa;

use actix_web::middleware::from_fn;
use actix_web::{FromRequest, Handler, HttpRequest, HttpResponse, Resource, Responder, ResponseError, guard, web};

use crate::error::AppError;
use crate::http::{AUTH_BODY_LIMIT, auth_guard, reseal_session_cookie};
use crate::paths::{AUTH_SCOPE, OWN_ROUTES, OwnRoute};
use crate::state::AppState;

/// The resource serving one of bff's own routes, to register in its scope
/// ([`OwnRoute::scope`]). Exhaustive: a route added to the table has no path served until it
/// has a handler here.
fn resource(route: OwnRoute) -> Resource {
    match route {
        OwnRoute::Login => own(route, auth::login),
        OwnRoute::Callback => own(route, auth::callback),
        OwnRoute::User => own(route, auth::user),
        OwnRoute::Logout => own(route, auth::logout),
        OwnRoute::BackchannelLogout => own(route, auth::backchannel_logout),
        OwnRoute::FrontchannelLogout => own(route, auth::frontchannel_logout),
        OwnRoute::SignedOut => own(route, auth::signed_out),
        OwnRoute::Stylesheet => own(route, auth::stylesheet),
        OwnRoute::Healthz => own(route, health::healthz),
        OwnRoute::Readyz => own(route, health::readyz),
        OwnRoute::Metrics => own(route, health::metrics),
        OwnRoute::Jwks => own(route, jwks::jwks),
        OwnRoute::Sessions => own(route, auth::sessions),
        OwnRoute::Session => own(route, auth::end_session),
        OwnRoute::DbscRegister => own(route, dbsc::register),
        OwnRoute::DbscRefresh => own(route, dbsc::refresh),
    }
}

/// `handler` for `route` inside its scope: it runs for the methods the route takes, and any
/// other method is answered 405 with the route's `Allow`.
fn own<F, Args>(route: OwnRoute, handler: F) -> Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    let methods = route.methods();
    web::resource(route.path_in_scope())
        .route(web::route().guard(guard::fn_guard(move |ctx| methods.takes(&ctx.head().method))).to(handler))
        .default_service(web::to(move |req: HttpRequest| async move { refuse_method(&req, methods.allow()) }))
}

/// 405 `method_not_allowed` with `allow`: JSON, or a page for a navigation (a form posted to a
/// page's address).
fn refuse_method(req: &HttpRequest, allow: &'static str) -> HttpResponse {
    respond(req, &AppError::MethodNotAllowed(allow.into()))
}

/// `GET /shop` for a frontend under `/shop`: 307 to `/shop/` (the query kept), the root its SPA
/// and its post-logout redirect are at.
pub async fn to_frontend_root(req: HttpRequest) -> HttpResponse {
    let location = match req.query_string() {
        "" => format!("{}/", req.path()),
        query => format!("{}/?{query}", req.path()),
    };
    HttpResponse::TemporaryRedirect().insert_header((actix_web::http::header::LOCATION, location)).finish()
}

/// 404 `not_found`: JSON, or a page for a navigation.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    respond(&req, &AppError::NotFound)
}

fn respond(req: &HttpRequest, error: &AppError) -> HttpResponse {
    match req.app_data::<web::Data<AppState>>() {
        Some(state) => error.respond(req, &state.pages),
        None => error.error_response(),
    }
}

/// Everything one frontend serves, relative to its path. The session middleware sits on
/// `/auth` only: the proxy reads the cookie itself and needs one store read per call, not two.
pub fn configure(cfg: &mut web::ServiceConfig, state: &web::Data<AppState>) {
    cfg.app_data(web::FormConfig::default().limit(AUTH_BODY_LIMIT));
    let mut auth = web::scope(AUTH_SCOPE)
        .wrap(state.cookies.middleware(state.session_store()))
        .wrap(from_fn(reseal_session_cookie))
        .wrap(from_fn(auth_guard));
    for &route in OWN_ROUTES {
        let served_here = match route {
            // The process's own: served by `configure_server` whichever frontend the host is.
            OwnRoute::Healthz | OwnRoute::Readyz | OwnRoute::Metrics => false,
            OwnRoute::Jwks => state.config.oidc.client_keys.is_some(),
            OwnRoute::DbscRegister | OwnRoute::DbscRefresh => state.dbsc.enabled(),
            _ => true,
        };
        if !served_here {
            continue;
        }
        if route.scope() == AUTH_SCOPE {
            auth = auth.service(resource(route));
        } else {
            cfg.service(resource(route));
        }
    }
    // bff's own prefix: an unknown path here is no SPA route.
    cfg.service(auth.default_service(web::to(not_found)));
    if let Some(keys) = &state.config.oidc.client_keys {
        cfg.app_data(web::Data::new(keys.clone()));
    }
    for route in state.proxy.routes() {
        // The route's prefix is a full path; the frontend's scope has taken its path already.
        cfg.service(
            web::scope(state.within(&route.prefix))
                .app_data(web::Data::new(route.clone()))
                .default_service(web::to(api::proxy)),
        );
    }
    spa::configure(cfg, state.config.server.static_dir.as_deref());
}

/// What the process serves whichever frontend a host or path is: health, metrics (with
/// `server.metrics_public`), and 404 for requests no frontend takes.
pub fn configure_server(cfg: &mut web::ServiceConfig, metrics_public: bool) {
    cfg.service(resource(OwnRoute::Healthz)).service(resource(OwnRoute::Readyz));
    if metrics_public {
        cfg.service(resource(OwnRoute::Metrics));
    }
    cfg.default_service(web::to(not_found));
}

/// The separate metrics listener (`server.metrics_listen`): `/metrics`, and 404 for the rest.
pub fn configure_metrics_listener(cfg: &mut web::ServiceConfig) {
    cfg.service(resource(OwnRoute::Metrics)).default_service(web::to(not_found));
}
