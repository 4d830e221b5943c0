//! Liveness and readiness.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::state::AppState;

/// `GET /healthz`: the process answers.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the session store answers, the provider's metadata is loaded and the provider
/// has not refused bff's credentials at its last authenticated call.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store_ok = state.store.ping().await.is_ok();
    // A certificate problem with Redis names the key to fix (never a secret).
    let store_problem = if store_ok { None } else { state.store.setup_problem() };
    let metadata_loaded = state.oidc.is_ready();
    let problem = if metadata_loaded { state.oidc.client_auth_problem() } else { state.oidc.setup_problem() };
    let idp_ok = metadata_loaded && problem.is_none();
    let mut body = json!({
        "status": if store_ok && idp_ok { "ready" } else { "not_ready" },
        "session_store": match (store_ok, &store_problem) {
            (true, _) => "ok",
            (false, Some(_)) => "misconfigured",
            (false, None) => "unavailable",
        },
        "identity_provider": match (idp_ok, &problem) {
            (true, _) => "ok",
            (false, Some(_)) => "misconfigured",
            (false, None) => "metadata_not_loaded",
        },
    });
    if let (Some(problem), Some(fields)) = (problem, body.as_object_mut()) {
        // A setup mistake an operator must fix (it names configuration, never a secret).
        fields.insert("problem".into(), problem.into());
    }
    if let (Some(problem), Some(fields)) = (store_problem, body.as_object_mut()) {
        fields.insert("session_store_problem".into(), problem.into());
    }
    if store_ok && idp_ok { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}

/// `GET /metrics`: Prometheus text (on `server.metrics_listen` instead, when that is set).
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(state.metrics.render())
}
