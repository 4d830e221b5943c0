//! The admin API, on a listener of its own (`server.admin_listen`), for operators: the sessions
//! of a user across every frontend, ending them (a suspended account, a stolen device), and
//! reloading the configuration file. Every request needs `Authorization: Bearer <token>`, the
//! token of `server.admin_token_file`; every refusal is the same 401, whatever was wrong, and
//! every action is logged as an audit line (target `bff::admin`) that never holds the token.

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{Next, from_fn};
use actix_web::{Error, HttpResponse, ResponseError, web};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::{AppError, BadRequest};
use crate::runtime::{Reloader, Runtime};
use crate::session::SessionHandle;
use crate::signin::revoke_grant;
use crate::tokens::EndReason;

/// `Authorization` values longer than this are refused unread (no token is this long: the
/// configuration refuses one over 512 bytes).
pub const MAX_AUTHORIZATION_BYTES: usize = 1024;

/// What the admin listener's handlers share.
pub struct Admin {
    runtime: Arc<Runtime>,
    /// SHA-256 of the token: what a presented token's digest is compared with.
    token_digest: [u8; 32],
}

impl Admin {
    pub fn new(runtime: Arc<Runtime>, token: &SecretString) -> Admin {
        Admin { runtime, token_digest: Sha256::digest(token.expose_secret().as_bytes()).into() }
    }

    /// Whether `presented` is the token. In constant time: both are hashed, and the digests
    /// compared with a fold over every byte (no early exit), so the time taken tells nothing of
    /// how much of a guess was right.
    fn accepts(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.iter().zip(self.token_digest.iter()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
    }
}

/// The token of an `Authorization: Bearer <token>` header within the bound.
fn bearer(req: &ServiceRequest) -> Option<&[u8]> {
    let value = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    if value.len() > MAX_AUTHORIZATION_BYTES {
        return None;
    }
    let (scheme, token) = value.split_at(value.iter().position(|b| *b == b' ')?);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| token.trim_ascii()).filter(|t| !t.is_empty())
}

/// Every admin request: the token, or 401 before anything is read or routed.
async fn authenticate(req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse, Error> {
    let admin = req.app_data::<web::Data<Admin>>().cloned();
    let allowed = admin.is_some_and(|admin| bearer(&req).is_some_and(|token| admin.accepts(token)));
    if !allowed {
        tracing::warn!(target: "bff::admin", path = req.path(), "admin request refused: no valid token");
        return Ok(req.into_response(AppError::AdminUnauthorized.error_response()));
    }
    next.call(req).await.map(ServiceResponse::map_into_boxed_body)
}

/// The admin listener's routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .wrap(from_fn(authenticate))
            .route("/sessions", web::get().to(list_sessions))
            .route("/sessions", web::delete().to(end_sessions))
            .route("/reload", web::post().to(reload))
            .default_service(web::to(|| async { AppError::NotFound.error_response() })),
    )
    .default_service(web::to(|| async { AppError::AdminUnauthorized.error_response() }));
}

#[derive(Deserialize)]
struct Query {
    sub: Option<String>,
    sid: Option<String>,
}

impl Query {
    fn read(raw: &str) -> Result<Query, AppError> {
        let query =
            web::Query::<Query>::from_query(raw).map_err(|_| AppError::BadRequest(BadRequest::InvalidRequest))?;
        let Query { sub, sid } = query.into_inner();
        Ok(Query { sub: sub.filter(|v| !v.is_empty()), sid: sid.filter(|v| !v.is_empty()) })
    }
}

/// `GET /admin/sessions?sub=…`: the user's sessions at every frontend of the configuration
/// serving now.
async fn list_sessions(req: actix_web::HttpRequest, admin: web::Data<Admin>) -> Result<HttpResponse, AppError> {
    let Query { sub: Some(sub), sid: None } = Query::read(req.query_string())? else {
        return Err(AppError::BadRequest(BadRequest::InvalidRequest));
    };
    let mut frontends = Vec::new();
    let mut total = 0;
    for frontend in &admin.runtime.current().load().frontends {
        let listed = frontend.state.sessions.list(&sub).await?;
        total += listed.len();
        let sessions: Vec<_> = listed.iter().map(|l| l.to_json()).collect();
        frontends.push(json!({ "frontend": frontend.identity.name, "sessions": sessions }));
    }
    audit("list_sessions", total, "by sub");
    Ok(no_store(HttpResponse::Ok()).json(json!({ "frontends": frontends })))
}

/// `DELETE /admin/sessions?sub=…` (every session of the user) or `?sid=…` (those of one
/// provider session): ended at every frontend as a logout ends them, their grants revoked.
async fn end_sessions(req: actix_web::HttpRequest, admin: web::Data<Admin>) -> Result<HttpResponse, AppError> {
    let query = Query::read(req.query_string())?;
    let by = match (&query.sub, &query.sid) {
        (Some(_), None) => "sub",
        (None, Some(_)) => "sid",
        _ => return Err(AppError::BadRequest(BadRequest::InvalidRequest)),
    };
    let mut frontends = Vec::new();
    let mut total = 0;
    for frontend in &admin.runtime.current().load().frontends {
        let sessions = &frontend.state.sessions;
        let handles: Vec<SessionHandle> = match (&query.sub, &query.sid) {
            (Some(sub), _) => sessions.list(sub).await?.into_iter().map(|l| l.handle).collect(),
            (_, Some(sid)) => sessions.of_provider_session(sid).await?,
            _ => Vec::new(),
        };
        let ended = sessions.end_each(handles, EndReason::EndedByAdmin).await?;
        total += ended.len();
        frontends.push(json!({ "frontend": frontend.identity.name, "ended": ended.len() }));
        // Ended now, for every instance; the provider is told in the background, each
        // revocation logged (a slow provider must not hold the operator's answer).
        let oidc = Arc::clone(&frontend.state.oidc);
        tokio::spawn(async move {
            for (handle, ended) in ended {
                revoke_grant(&oidc, &handle, &ended).await;
            }
        });
    }
    audit("end_sessions", total, &format!("by {by}, their grants being revoked"));
    Ok(no_store(HttpResponse::Ok()).json(json!({ "ended": total, "frontends": frontends })))
}

/// `POST /admin/reload`: the configuration file read again and applied, as on `SIGHUP`.
async fn reload(admin: web::Data<Admin>) -> Result<HttpResponse, AppError> {
    let reloader = Reloader(Arc::clone(&admin.runtime));
    // The file the process was started with (`None`: the environment alone, as at start).
    let file = admin.runtime.config_file();
    match reloader.reload(Config::load(file.as_deref())).await {
        Ok(summary) => {
            let what = format!(
                "configuration applied ({} frontends added, {} changed, {} removed)",
                summary.added.len(),
                summary.changed.len(),
                summary.removed.len()
            );
            audit("reload", 0, &what);
            Ok(no_store(HttpResponse::Ok()).json(json!({
                "added": summary.added,
                "changed": summary.changed,
                "removed": summary.removed,
                "unchanged": summary.unchanged,
            })))
        }
        Err(errors) => {
            let what =
                format!("refused, {} problems (logged above); the configuration before it serves", errors.0.len());
            audit("reload", 0, &what);
            Err(AppError::ConfigRefused)
        }
    }
}

/// One audit line per admin action: the word `admin`, the action, how many sessions it touched,
/// and what else it says. It is given no part of the request: the token cannot reach the log.
fn audit(action: &'static str, sessions: usize, what: &str) {
    tracing::info!(target: "bff::admin", action, sessions, "admin {action}: {sessions} sessions, {what}");
}

fn no_store(mut res: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    res.insert_header((header::CACHE_CONTROL, "no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    /// What a `tracing` subscriber writes, kept for a test to read.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn audit_lines_name_admin_the_action_and_the_count() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, || audit("end_sessions", 3, "by sub"));
        let text = String::from_utf8(captured.0.lock().map(|b| b.clone()).unwrap_or_default()).unwrap_or_default();
        assert!(text.contains("bff::admin") && text.contains("admin end_sessions: 3 sessions"), "{text}");
        assert!(text.contains("sessions=3"), "{text}");
    }

    #[test]
    fn bearer_tokens_are_read_within_the_bound() {
        let with = |value: &str| TestRequest::default().insert_header((header::AUTHORIZATION, value)).to_srv_request();
        let token = |req: &ServiceRequest| bearer(req).map(<[u8]>::to_vec);
        assert_eq!(token(&with("Bearer abc")), Some(b"abc".to_vec()));
        assert_eq!(token(&with("bearer  abc ")), Some(b"abc".to_vec()));
        assert_eq!(token(&with("Basic abc")), None);
        assert_eq!(token(&with("Bearer")), None);
        assert_eq!(token(&with("Bearer ")), None);
        assert_eq!(token(&with(&format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_BYTES)))), None);
        assert_eq!(token(&TestRequest::default().to_srv_request()), None);
    }
}
