//! Liveness and readiness.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::runtime::{ReloadStatus, Runtime};

/// `GET /healthz`: the process answers.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the session store answers, and every frontend's provider metadata is loaded
/// and its provider has not refused bff's credentials at its last authenticated call. With
/// several frontends, `frontends` says which is not ready; after a reload, `configuration` says
/// whether the file was applied (a refused file leaves bff ready: the one before still serves).
pub async fn readyz(runtime: web::Data<Runtime>) -> HttpResponse {
    let store_ok = runtime.store.ping().await.is_ok();
    // A certificate problem with Redis names the key to fix (never a secret).
    let store_problem = if store_ok { None } else { runtime.store.setup_problem() };
    let generation = runtime.current().load();
    let mut idp_status = "ok";
    let mut idp_problem = None;
    let mut per_frontend = serde_json::Map::new();
    let several = generation.frontends.len() > 1;
    for frontend in &generation.frontends {
        let oidc = &frontend.state.oidc;
        let metadata_loaded = oidc.is_ready();
        let problem = if metadata_loaded { oidc.client_auth_problem() } else { oidc.setup_problem() };
        let status = match (metadata_loaded && problem.is_none(), &problem) {
            (true, _) => "ok",
            (false, Some(_)) => "misconfigured",
            (false, None) => "metadata_not_loaded",
        };
        per_frontend.insert(frontend.identity.name.clone(), status.into());
        if status != "ok" && idp_status == "ok" {
            idp_status = status;
            // A setup mistake an operator must fix (it names configuration, never a secret).
            idp_problem =
                problem.map(|p| if several { format!("frontend {:?}: {p}", frontend.identity.name) } else { p });
        }
    }
    let ready = store_ok && idp_status == "ok";
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "session_store": match (store_ok, &store_problem) {
            (true, _) => "ok",
            (false, Some(_)) => "misconfigured",
            (false, None) => "unavailable",
        },
        "identity_provider": idp_status,
    });
    if let Some(fields) = body.as_object_mut() {
        if let Some(problem) = idp_problem {
            fields.insert("problem".into(), problem.into());
        }
        if let Some(problem) = store_problem {
            fields.insert("session_store_problem".into(), problem.into());
        }
        if several {
            fields.insert("frontends".into(), per_frontend.into());
        }
        match runtime.last_reload() {
            Some(ReloadStatus::Applied) => {
                fields.insert("configuration".into(), json!({ "last_reload": "applied" }));
            }
            Some(ReloadStatus::Refused(problems)) => {
                fields.insert("configuration".into(), json!({ "last_reload": "refused", "problems": problems }));
            }
            None => {}
        }
    }
    if ready { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}

/// `GET /metrics`: Prometheus text (on `server.metrics_listen` instead, when that is set).
pub async fn metrics(runtime: web::Data<Runtime>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(runtime.metrics.render())
}
