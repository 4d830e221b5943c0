//! The route table. Handlers are thin; the rules they apply live in their modules.

pub mod api;
pub mod auth;
pub mod health;
mod jwks;
mod spa;

use actix_web::middleware::from_fn;
use actix_web::web;

use crate::http::{AUTH_BODY_LIMIT, auth_guard, reseal_session_cookie};
use crate::state::AppState;

/// Everything bff serves. The session middleware sits on `/auth` only: the proxy reads the
/// cookie itself and needs one store read per call, not two.
pub fn configure(cfg: &mut web::ServiceConfig, state: &web::Data<AppState>) {
    cfg.app_data(web::FormConfig::default().limit(AUTH_BODY_LIMIT))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .service(
            web::scope("/auth")
                .wrap(state.cookies.middleware(state.session_store()))
                .wrap(from_fn(reseal_session_cookie))
                .wrap(from_fn(auth_guard))
                .route("/login", web::get().to(auth::login))
                .route("/callback", web::get().to(auth::callback))
                .route("/user", web::get().to(auth::user))
                .route("/logout", web::post().to(auth::logout))
                .route("/backchannel-logout", web::post().to(auth::backchannel_logout))
                .route("/signed-out", web::get().to(auth::signed_out))
                .route("/style.css", web::get().to(auth::stylesheet)),
        );
    if let Some(keys) = &state.config.oidc.client_keys {
        cfg.service(
            web::resource("/.well-known/jwks.json")
                .app_data(web::Data::new(keys.clone()))
                .route(web::get().to(jwks::jwks)),
        );
    }
    for route in state.proxy.routes() {
        cfg.service(
            web::scope(&route.prefix).app_data(web::Data::new(route.clone())).default_service(web::to(api::proxy)),
        );
    }
    spa::configure(cfg, state.config.server.static_dir.as_deref());
}
