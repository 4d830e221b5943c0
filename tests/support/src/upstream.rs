//! An upstream API for the proxy tests: it checks the bearer token at the demo provider (so a
//! token the provider considers dead really fails), records what it received and echoes it,
//! and has endpoints for slow answers, event streams, large downloads and uploads, and a
//! WebSocket echo at `/ws` (the demo API's).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use bff::demo::idp::Provider;
use bff::demo::idp::dpop::{BindingError, Expected, check_binding};
use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Default)]
pub struct UpstreamControls {
    /// Answer this many requests with 401 whatever their token.
    pub reject_next: AtomicU32,
    pub always_reject: AtomicBool,
    /// RFC 9449 §9: DPoP proofs must carry this nonce (a 401 `use_dpop_nonce` says so).
    pub dpop_nonce: Mutex<Option<String>>,
}

#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    /// The access token, whatever its scheme (`Bearer`, `DPoP`).
    pub bearer: Option<String>,
    pub scheme: Option<String>,
    /// Every request header, lower-case names (a binary value as `<binary>`).
    pub headers: BTreeMap<String, String>,
}

#[derive(Clone)]
pub struct Upstream {
    pub url: String,
    pub controls: Arc<UpstreamControls>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    /// Waits (bounded) until a request for `path` has arrived: from then on, that call is in
    /// flight (held by a slow endpoint, for instance).
    pub async fn until_received(&self, path: &str) {
        let what = format!("a request for {path} reaches the upstream");
        crate::eventually(&what, Duration::from_secs(10), || async move { self.seen().iter().any(|s| s.path == path) })
            .await;
    }
}

struct State {
    provider: Option<Arc<Provider>>,
    url: String,
    seen_proofs: bff::demo::idp::dpop::SeenProofs,
    /// The `aud` this API accepts (the provider's API audience when `None`).
    audience: Option<String>,
    controls: Arc<UpstreamControls>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

pub async fn spawn(provider: Option<Arc<Provider>>) -> Upstream {
    spawn_for_audience(provider, None).await
}

/// An API that accepts only tokens issued for `audience` (RFC 8707), checked at `provider`.
pub async fn spawn_for_audience(provider: Option<Arc<Provider>>, audience: Option<&str>) -> Upstream {
    let listener = crate::listener();
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let controls = Arc::new(UpstreamControls::default());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let state = web::Data::new(State {
        provider,
        url: url.clone(),
        seen_proofs: Default::default(),
        audience: audience.map(String::from),
        controls: Arc::clone(&controls),
        seen: Arc::clone(&seen),
    });
    let server = HttpServer::new(move || App::new().app_data(state.clone()).default_service(web::to(handle)))
        .workers(2)
        .disable_signals()
        .listen(listener)
        .expect("listen")
        .run();
    tokio::spawn(server);
    Upstream { url, controls, seen }
}

/// The scheme and the token of `Authorization`.
fn credentials(req: &HttpRequest) -> Option<(String, String)> {
    let value = req.headers().get("authorization").and_then(|v| v.to_str().ok())?;
    let (scheme, token) = value.split_once(' ')?;
    Some((scheme.to_string(), token.to_string()))
}

/// A token is used as it is bound: a DPoP-bound one only as `DPoP`, with a proof made with its
/// key for this very request (RFC 9449 §7); a bearer one only as `Bearer`.
fn sender_checked(
    state: &State,
    req: &HttpRequest,
    scheme: &str,
    token: &str,
    cnf: Option<&serde_json::Value>,
) -> Result<(), BindingError> {
    let url = format!("{}{}", state.url, req.path());
    let nonce = state.controls.dpop_nonce.lock().expect("nonce").clone();
    let expected =
        Expected { method: req.method().as_str(), url: &url, access_token: Some(token), nonce: nonce.as_deref() };
    let proof = req.headers().get("dpop").and_then(|v| v.to_str().ok());
    check_binding(scheme, cnf.and_then(|c| c["jkt"].as_str()), proof, &expected, &state.seen_proofs)
}

fn query(req: &HttpRequest, name: &str) -> Option<u64> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
}

async fn handle(req: HttpRequest, mut payload: web::Payload, state: web::Data<State>) -> HttpResponse {
    let presented = credentials(&req);
    let token = presented.as_ref().map(|(_, t)| t.clone());
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("<binary>").to_string()))
        .collect();
    state.seen.lock().expect("seen").push(Seen {
        path: req.path().to_string(),
        bearer: token.clone(),
        scheme: presented.as_ref().map(|(s, _)| s.clone()),
        headers: headers.clone(),
    });
    let claims = match (&state.provider, &presented) {
        (Some(p), Some((_, t))) => match &state.audience {
            Some(audience) => p.active_access_token_for(t, audience),
            None => p.active_access_token(t),
        },
        _ => None,
    };
    let sender = match (&claims, &presented) {
        (Some(c), Some((scheme, t))) => sender_checked(&state, &req, scheme, t, c.cnf.as_ref()),
        _ => Ok(()),
    };
    if sender == Err(BindingError::NonceRequired) {
        let nonce = state.controls.dpop_nonce.lock().expect("nonce").clone().unwrap_or_default();
        return HttpResponse::Unauthorized()
            .insert_header(("www-authenticate", "DPoP error=\"use_dpop_nonce\""))
            .insert_header(("dpop-nonce", nonce))
            .json(json!({ "error": "use_dpop_nonce" }));
    }
    let valid = match &state.provider {
        Some(_) => claims.is_some() && sender.is_ok(),
        None => true,
    };
    let forced = state.controls.always_reject.load(Ordering::SeqCst)
        || state.controls.reject_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if !valid || forced {
        return HttpResponse::Unauthorized()
            .insert_header(("www-authenticate", "Bearer error=\"invalid_token\""))
            .json(json!({ "error": "invalid_token" }));
    }

    let path = req.path().to_string();
    // RFC 9470: only a sign-in with the second factor may call these; any other token gets the
    // step-up challenge (among another scheme's, as servers send several). `/step-up-junk`'s
    // values are not ones bff may pass on.
    if path.starts_with("/step-up") {
        let strong = claims.as_ref().and_then(|c| c.acr.as_deref()) == Some(bff::demo::idp::ACR_SECOND_FACTOR);
        if !strong {
            let params = if path == "/step-up-junk" {
                r#"acr_values="<script>\"x", max_age="-5""#.to_string()
            } else {
                format!(r#"acr_values="{}", max_age=300"#, bff::demo::idp::ACR_SECOND_FACTOR)
            };
            return HttpResponse::Unauthorized()
                .insert_header((
                    "www-authenticate",
                    format!(
                        r#"Basic realm="api", Bearer realm="api", error="insufficient_user_authentication", error_description="a stronger sign-in is required", {params}"#
                    ),
                ))
                .json(json!({ "error": "insufficient_user_authentication" }));
        }
    }
    if path == "/ws" {
        return bff::demo::api::echo_socket(&req, payload);
    }
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_millis(query(&req, "ms").unwrap_or(5000))).await;
        return HttpResponse::Ok().json(json!({ "slow": true }));
    }
    if path == "/chunked" {
        // Two chunks written at once, as streaming frameworks answer small JSON bodies.
        let parts = [Bytes::from_static(b"{\"chunked\":"), Bytes::from_static(b"true}")];
        return HttpResponse::Ok()
            .content_type("application/json")
            .streaming(futures_util::stream::iter(parts.map(Ok::<_, std::io::Error>)));
    }
    if path == "/sse" {
        let count = query(&req, "count").unwrap_or(3);
        let events = futures_util::stream::unfold(0u64, move |i| async move {
            if i >= count {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Some((Ok::<_, std::io::Error>(Bytes::from(format!("id: {i}\ndata: tick {i}\n\n"))), i + 1))
        });
        return HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("cache-control", "no-cache"))
            .streaming(events);
    }
    if path == "/download" {
        let total = query(&req, "bytes").unwrap_or(1024);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = futures_util::stream::unfold(0u64, move |sent| {
            let chunk = chunk.clone();
            async move {
                if sent >= total {
                    return None;
                }
                let n = (total - sent).min(chunk.len() as u64) as usize;
                Some((Ok::<_, std::io::Error>(chunk.slice(..n)), sent + n as u64))
            }
        });
        return HttpResponse::Ok()
            .content_type("application/octet-stream")
            .body(actix_web::body::SizedStream::new(total, chunks));
    }
    if path == "/set-cookie" {
        return HttpResponse::Ok().insert_header(("set-cookie", "upstream=1; Path=/")).json(json!({ "ok": true }));
    }
    // An answer that would change the SPA's security if it reached the browser as it is.
    if path == "/security-headers" {
        return HttpResponse::Ok()
            .insert_header(("set-cookie", "upstream=1; Path=/"))
            .insert_header(("clear-site-data", "\"cookies\", \"storage\""))
            .insert_header(("content-security-policy", "default-src *"))
            .insert_header(("x-upstream-kept", "1"))
            .json(json!({ "ok": true }));
    }

    // Echo, hashing the body as it streams in (uploads of any size).
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut small = Vec::new();
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else { return HttpResponse::BadRequest().finish() };
        len += chunk.len() as u64;
        hasher.update(&chunk);
        if small.len() < 65536 {
            small.extend_from_slice(&chunk[..chunk.len().min(65536 - small.len())]);
        }
    }
    HttpResponse::Ok().json(json!({
        "method": req.method().as_str(),
        "path": path,
        "query": req.query_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&small),
        "body_len": len,
        "body_sha256": format!("{:x}", hasher.finalize()),
    }))
}

/// For raw upstreams written on a socket: the head of the request at the start of `buffer`
/// (lower-cased) and where its body ends (the head's `Content-Length`, none: no body); `None`
/// until the whole head has arrived.
pub fn request_head(buffer: &[u8]) -> Option<(String, usize)> {
    let end = buffer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    Some((head, end + 4 + length))
}
