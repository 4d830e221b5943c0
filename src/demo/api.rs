//! The demo API: a few JSON endpoints, an event stream and a WebSocket echo behind bearer-token checks, as a
//! real resource server would do them: signature from the provider's JWKS, issuer, audience and
//! expiry. An expired or forged token gets 401, which is what makes bff refresh.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use serde::Deserialize;
use serde_json::json;
use url::Url;

use crate::demo::idp::ACR_SECOND_FACTOR;
use crate::demo::idp::dpop::{BindingError, Expected, check_binding};
use crate::oidc::jwks::{Expect, JwksVerifier};
use crate::session::now_unix;

/// How long the event stream runs before it ends by itself.
const EVENT_STREAM_TICKS: u64 = 300;

pub struct ApiConfig {
    pub issuer: String,
    pub jwks_uri: Url,
    pub audience: String,
}

struct State {
    verifier: JwksVerifier,
    issuer: String,
    audience: String,
    /// DPoP proofs seen (a replay is refused).
    seen_proofs: crate::demo::idp::dpop::SeenProofs,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    preferred_username: Option<String>,
    /// RFC 9449 §6: the key a DPoP-bound token is bound to.
    #[serde(default)]
    cnf: Option<serde_json::Value>,
    /// How the user authenticated (RFC 9068 §2.2.1), for `/strong`.
    #[serde(default)]
    acr: Option<String>,
    #[serde(default)]
    auth_time: Option<u64>,
}

/// Starts the demo API on `listener`; the returned server must be awaited or spawned.
pub fn start(config: ApiConfig, listener: TcpListener) -> Result<Server, anyhow::Error> {
    let http = crate::oidc::IdpHttp::new(Duration::from_secs(5))?;
    let state = web::Data::new(State {
        verifier: JwksVerifier::new(http, config.jwks_uri),
        issuer: config.issuer,
        audience: config.audience,
        seen_proofs: Default::default(),
    });
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/hello", web::get().to(hello))
            .route("/items", web::get().to(items))
            .route("/items", web::post().to(create_item))
            .route("/time", web::get().to(time))
            .route("/strong", web::get().to(strong))
            .route("/events", web::get().to(events))
            .route("/ws", web::get().to(socket))
    })
    .workers(2)
    .tcp_nodelay(true)
    .disable_signals()
    .listen(listener)?
    .run())
}

fn unauthorized(reason: &str) -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header((
            header::WWW_AUTHENTICATE,
            format!("Bearer error=\"invalid_token\", error_description=\"{reason}\""),
        ))
        .json(json!({ "error": "invalid_token" }))
}

async fn authenticate(req: &HttpRequest, state: &State) -> Result<Claims, HttpResponse> {
    let (scheme, token) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| *scheme == "Bearer" || *scheme == "DPoP")
        .ok_or_else(|| unauthorized("no bearer or DPoP token"))?;
    let claims = verify_token(token, state).await?;
    // A token is used as it is bound (RFC 9449 §7): a DPoP-bound one only with a proof of its key
    // made for this request.
    let jkt = claims.cnf.as_ref().and_then(|c| c["jkt"].as_str());
    // The URL bff called: this server's own Host (not X-Forwarded-Host, which names bff).
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let url = format!("http://{host}{}", req.path());
    let expected = Expected { method: req.method().as_str(), url: &url, access_token: Some(token), nonce: None };
    let proof = req.headers().get("dpop").and_then(|v| v.to_str().ok());
    match check_binding(scheme, jkt, proof, &expected, &state.seen_proofs) {
        Ok(()) => Ok(claims),
        Err(BindingError::Refused(why)) => Err(unauthorized(why)),
        Err(BindingError::NonceRequired) => Err(unauthorized("a DPoP nonce is required")),
    }
}

async fn verify_token(token: &str, state: &State) -> Result<Claims, HttpResponse> {
    let expect = Expect {
        issuer: &state.issuer,
        audience: &state.audience,
        leeway_secs: 0,
        required: &["exp", "sub"],
        types: None,
    };
    state.verifier.verify::<Claims>(token, &expect).await.map_err(|e| {
        tracing::info!("demo api: token refused: {e}");
        unauthorized("the token is invalid or expired")
    })
}

async fn hello(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    match authenticate(&req, &state).await {
        Ok(c) => {
            let who = c.name.or(c.preferred_username).unwrap_or_else(|| c.sub.clone());
            HttpResponse::Ok().json(json!({
                "message": format!("Hello, {who}! This answer came from the demo API."),
                "sub": c.sub,
                "scope": c.scope,
                "token_expires_in": c.exp.saturating_sub(now_unix()),
            }))
        }
        Err(res) => res,
    }
}

async fn items(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    match authenticate(&req, &state).await {
        Ok(_) => HttpResponse::Ok().json(json!([
            { "id": 1, "name": "Refresh tokens stay on the server" },
            { "id": 2, "name": "The browser only holds an HttpOnly cookie" },
            { "id": 3, "name": "One refresh per session at a time" },
        ])),
        Err(res) => res,
    }
}

async fn create_item(req: HttpRequest, state: web::Data<State>, body: web::Json<serde_json::Value>) -> HttpResponse {
    match authenticate(&req, &state).await {
        Ok(c) => HttpResponse::Created()
            .json(json!({ "id": now_unix() % 100_000, "created_by": c.sub, "item": body.into_inner() })),
        Err(res) => res,
    }
}

async fn time(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    match authenticate(&req, &state).await {
        Ok(_) => HttpResponse::Ok().json(json!({ "now": now_unix() })),
        Err(res) => res,
    }
}

/// An endpoint for users who signed in with the second factor only: any other token gets the
/// step-up challenge of RFC 9470 §3, which bff turns into `step_up_required` for the SPA.
async fn strong(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let claims = match authenticate(&req, &state).await {
        Ok(c) => c,
        Err(res) => return res,
    };
    if claims.acr.as_deref() != Some(ACR_SECOND_FACTOR) {
        return HttpResponse::Unauthorized()
            .insert_header((
                header::WWW_AUTHENTICATE,
                format!(
                    "Bearer error=\"insufficient_user_authentication\", \
                     error_description=\"A sign-in with the second factor is required\", \
                     acr_values=\"{ACR_SECOND_FACTOR}\""
                ),
            ))
            .json(json!({ "error": "insufficient_user_authentication" }));
    }
    HttpResponse::Ok().json(json!({
        "message": "This answer needs a sign-in with the second factor.",
        "sub": claims.sub,
        "acr": claims.acr,
        "auth_time": claims.auth_time,
    }))
}

/// Server-sent events: one tick per second, for five minutes.
async fn events(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if let Err(res) = authenticate(&req, &state).await {
        return res;
    }
    let ticks = futures_util::stream::unfold(0u64, |n| async move {
        if n >= EVENT_STREAM_TICKS {
            return None;
        }
        if n > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let event = format!("event: tick\nid: {n}\ndata: {{\"tick\":{n},\"now\":{}}}\n\n", now_unix());
        Some((Ok::<_, std::io::Error>(Bytes::from(event)), n + 1))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(ticks)
}

/// A WebSocket that echoes every message (text, binary, fragmented ones whole) and answers
/// pings; after the bearer check, like the other endpoints.
async fn socket(req: HttpRequest, payload: web::Payload, state: web::Data<State>) -> HttpResponse {
    match authenticate(&req, &state).await {
        Ok(_) => echo_socket(&req, payload),
        Err(res) => res,
    }
}

/// Largest message the echo takes (a bigger one closes the socket).
const ECHO_MAX_MESSAGE: usize = 8 * 1024 * 1024;

/// Accepts a WebSocket handshake and echoes on it (also the tests' upstream WebSocket).
pub fn echo_socket(req: &HttpRequest, payload: web::Payload) -> HttpResponse {
    use actix_ws::AggregatedMessage;
    let (res, mut session, stream) = match actix_ws::handle(req, payload) {
        Ok(parts) => parts,
        Err(e) => return HttpResponse::from_error(e),
    };
    let mut messages =
        stream.max_frame_size(ECHO_MAX_MESSAGE).aggregate_continuations().max_continuation_size(ECHO_MAX_MESSAGE);
    actix_web::rt::spawn(async move {
        let mut close = None;
        while let Some(Ok(message)) = messages.recv().await {
            let sent = match message {
                AggregatedMessage::Text(text) => session.text(text).await,
                AggregatedMessage::Binary(bytes) => session.binary(bytes).await,
                AggregatedMessage::Ping(bytes) => session.pong(&bytes).await,
                AggregatedMessage::Pong(_) => Ok(()),
                AggregatedMessage::Close(reason) => {
                    close = reason;
                    break;
                }
            };
            if sent.is_err() {
                return;
            }
        }
        let _ = session.close(close).await;
    });
    res
}
