//! The demo provider's HTTP endpoints.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::provider::{Authentication, OAuthError, Presented, Provider, UserinfoAnswer};
use super::{ClientAuthRefusal, GrantRefusal, TokenFault};
use crate::pages::Pages;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::FormConfig::default().limit(64 * 1024))
        .route("/.well-known/openid-configuration", web::get().to(discovery))
        .route("/.well-known/oauth-authorization-server", web::get().to(authorization_server_metadata))
        .route("/jwks", web::get().to(jwks))
        .route("/authorize", web::get().to(authorize))
        .route("/par", web::post().to(pushed_authorization_request))
        .route("/login", web::post().to(login))
        .route("/token", web::post().to(token))
        .route("/revoke", web::post().to(revoke))
        .route("/userinfo", web::get().to(userinfo))
        .route("/end_session", web::get().to(end_session))
        .route("/style.css", web::get().to(stylesheet));
}

fn no_store(mut res: HttpResponse) -> HttpResponse {
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

/// An OAuth error answer, in the style the provider's quirks say: real providers refuse ended
/// grants and bad clients in ways of their own.
fn refusal(p: &Provider, e: &OAuthError) -> HttpResponse {
    let quirks = p.controls.quirks();
    let bare = |status: StatusCode| no_store(HttpResponse::build(status).finish());
    match (e.error, quirks.grant_refusal, quirks.client_auth_refusal) {
        ("invalid_grant", GrantRefusal::InvalidRequest, _) => oauth_error(&OAuthError {
            status: 400,
            error: "invalid_request",
            description: format!("refused: {}", e.description),
        }),
        ("invalid_grant", GrantRefusal::EmptyBody, _) => bare(StatusCode::BAD_REQUEST),
        ("invalid_client", _, ClientAuthRefusal::ForbiddenEmpty) => bare(StatusCode::FORBIDDEN),
        ("invalid_client", _, ClientAuthRefusal::UnauthorizedClient) => {
            oauth_error(&OAuthError { status: 400, error: "unauthorized_client", description: e.description.clone() })
        }
        _ => oauth_error(e),
    }
}

fn oauth_error(e: &OAuthError) -> HttpResponse {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut res = HttpResponse::build(status);
    if status == StatusCode::UNAUTHORIZED {
        res.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"demo\""));
    }
    no_store(res.json(json!({ "error": e.error, "error_description": e.description })))
}

fn redirect(url: &str) -> HttpResponse {
    HttpResponse::Found().insert_header((header::LOCATION, url)).finish()
}

async fn discovery(p: web::Data<Provider>) -> HttpResponse {
    let i = &p.issuer;
    let quirks = p.controls.quirks();
    let mut doc = json!({
        "issuer": if quirks.issuer_with_trailing_slash { format!("{i}/") } else { i.clone() },
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "jwks_uri": format!("{i}/jwks"),
        "userinfo_endpoint": format!("{i}/userinfo"),
        "revocation_endpoint": format!("{i}/revoke"),
        "end_session_endpoint": format!("{i}/end_session"),
        "response_types_supported": ["code"],
        "grant_types_supported": [
            "authorization_code",
            "refresh_token",
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:token-exchange"
        ],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["PS256", "RS256", "ES256"],
        "dpop_signing_alg_values_supported": ["ES256"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["sub", "name", "preferred_username", "email", "email_verified", "sid"],
        "authorization_response_iss_parameter_supported": quirks.iss_in_authorization_response,
    });
    if quirks.frontchannel_only
        && let Some(fields) = doc.as_object_mut()
    {
        fields.insert("frontchannel_logout_supported".into(), json!(true));
        fields.insert("frontchannel_logout_session_supported".into(), json!(true));
        fields.insert("backchannel_logout_supported".into(), json!(false));
    }
    if quirks.no_token_exchange
        && let Some(grants) = doc["grant_types_supported"].as_array_mut()
    {
        grants.retain(|g| g != "urn:ietf:params:oauth:grant-type:token-exchange");
    }
    if quirks.no_dpop_in_metadata
        && let Some(fields) = doc.as_object_mut()
    {
        fields.remove("dpop_signing_alg_values_supported");
    }
    if (quirks.par_offered || quirks.par_required)
        && let Some(fields) = doc.as_object_mut()
    {
        fields.insert("pushed_authorization_request_endpoint".into(), json!(format!("{i}/par")));
        fields.insert("require_pushed_authorization_requests".into(), json!(quirks.par_required));
    }
    if quirks.revocation_only_in_rfc8414
        && let Some(fields) = doc.as_object_mut()
    {
        fields.remove("revocation_endpoint");
    }
    if quirks.no_userinfo_endpoint
        && let Some(fields) = doc.as_object_mut()
    {
        fields.remove("userinfo_endpoint");
    }
    HttpResponse::Ok().json(doc)
}

/// RFC 8414 metadata, as providers serve it next to (and appended to the issuer like) OpenID
/// discovery.
async fn authorization_server_metadata(p: web::Data<Provider>) -> HttpResponse {
    let i = &p.issuer;
    HttpResponse::Ok().json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "jwks_uri": format!("{i}/jwks"),
        "revocation_endpoint": format!("{i}/revoke"),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

async fn jwks(p: web::Data<Provider>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "keys": [p.key.jwk()] }))
}

fn login_page(pages: &Pages, p: &Provider, client_id: &str, interaction: &str) -> HttpResponse {
    let mut ctx = tera::Context::new();
    ctx.insert("client_id", client_id);
    ctx.insert("interaction", interaction);
    ctx.insert("action", "/login");
    ctx.insert("suggested", "alice");
    let mut res = pages.html(StatusCode::OK, "idp_login.html", ctx);
    // The form posts here, and the answer redirects to the client: Chrome applies
    // `form-action` to that redirect too, so the client's origins must be listed.
    let client_origins: Vec<String> = p
        .clients
        .get(client_id)
        .map(|c| {
            c.redirect_uris
                .iter()
                .filter_map(|u| url::Url::parse(u).ok())
                .map(|u| u.origin().ascii_serialization())
                .collect()
        })
        .unwrap_or_default();
    let csp = format!(
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self' {}",
        client_origins.join(" ")
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        res.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    res
}

/// The provider's own sign-in session in the browser (for `prompt=none`).
const BROWSER_SESSION_COOKIE: &str = "demo_idp_session";

async fn authorize(
    req: HttpRequest,
    p: web::Data<Provider>,
    pages: web::Data<Pages>,
    q: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let params = match p.authorization_params(&q) {
        Ok(params) => params,
        Err(reason) => return pages.error(StatusCode::BAD_REQUEST, &reason, false),
    };
    let request = match p.check_authorize(&params) {
        Ok(Ok(request)) => request,
        Ok(Err(error_redirect)) => return redirect(error_redirect.as_str()),
        Err(reason) => return pages.error(StatusCode::BAD_REQUEST, &reason, false),
    };
    if let Some(user) = p.controls.auto_login() {
        return redirect(p.issue_code(request, &user).as_str());
    }
    // Silent: answered from the provider's session, never with a page. (Other requests show
    // the sign-in page every time, as tests expect of this demo.)
    if request.prompt.iter().any(|w| w == "none") {
        let cookie = req.cookie(BROWSER_SESSION_COOKIE);
        return match p.browser_session(cookie.as_ref().map(|c| c.value())) {
            Some(known) if known.satisfies(&request) => redirect(p.issue_code_for(request, known).as_str()),
            _ => redirect(p.interaction_needed(&request).as_str()),
        };
    }
    let client_id = request.client_id.clone();
    let interaction = p.start_interaction(request);
    login_page(&pages, &p, &client_id, &interaction)
}

async fn login(
    p: web::Data<Provider>,
    pages: web::Data<Pages>,
    form: web::Form<HashMap<String, String>>,
) -> HttpResponse {
    let username = form.get("username").map(|u| u.trim()).unwrap_or_default();
    let valid = !username.is_empty()
        && username.len() <= 64
        && username.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    let Some(request) = form.get("interaction").and_then(|id| p.take_interaction(id)) else {
        return pages.error(
            StatusCode::BAD_REQUEST,
            "This sign-in has expired. Go back to the application and start again.",
            false,
        );
    };
    if !valid {
        let client_id = request.client_id.clone();
        let interaction = p.start_interaction(request);
        return login_page(&pages, &p, &client_id, &interaction);
    }
    let authentication = Authentication::now(username, form.get("second_factor").is_some_and(|v| v == "on"));
    let remembered = p.remember_browser(authentication.clone());
    let mut res = redirect(p.issue_code_for(request, authentication).as_str());
    let cookie = actix_web::cookie::Cookie::build(BROWSER_SESSION_COOKIE, remembered)
        .path("/")
        .http_only(true)
        .same_site(actix_web::cookie::SameSite::Lax)
        .finish();
    let _ = res.add_cookie(&cookie);
    res
}

/// `Authorization: Basic` credentials are form-urlencoded before base64 (RFC 6749 §2.3.1).
fn presented(req: &HttpRequest, form: &HashMap<String, String>) -> Presented {
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            let (id, secret) = pair.split_once(':')?;
            let decode =
                |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
            Some((decode(id)?, decode(secret)?))
        });
    let post = match (form.get("client_id"), form.get("client_secret")) {
        (Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
        _ => None,
    };
    let assertion = match (form.get("client_assertion_type").map(String::as_str), form.get("client_assertion")) {
        (Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"), Some(jwt)) => {
            Some((form.get("client_id").cloned(), jwt.clone()))
        }
        _ => None,
    };
    Presented { basic, post, assertion, endpoint: req.path().to_string() }
}

async fn token(req: HttpRequest, p: web::Data<Provider>, form: web::Form<HashMap<String, String>>) -> HttpResponse {
    p.saw_trace_context("/token", &req);
    p.counters.token_endpoint_calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    match p.controls.token_fault() {
        TokenFault::None => {}
        TokenFault::Unavailable => {
            return HttpResponse::ServiceUnavailable()
                .content_type("text/html")
                .body("<html><body><h1>503 Service Unavailable</h1></body></html>");
        }
        TokenFault::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return HttpResponse::GatewayTimeout().finish();
        }
        TokenFault::NotBearer => {
            if let Ok(mut body) = p.token(&form, &presented(&req, &form), dpop_proof(&req)) {
                body["token_type"] = json!("N_A");
                return no_store(HttpResponse::Ok().json(body));
            }
        }
        TokenFault::InvalidGrant => {
            return refusal(
                &p,
                &OAuthError { status: 400, error: "invalid_grant", description: "grant revoked".into() },
            );
        }
    }
    let answer = p.token(&form, &presented(&req, &form), dpop_proof(&req));
    if let Some(hold) = p.controls.take_token_answer_hold() {
        // Done (a refresh token rotated), but the client gives up before it hears of it.
        tokio::time::sleep(hold).await;
    }
    let mut res = match answer {
        Ok(body) => no_store(HttpResponse::Ok().json(body)),
        Err(e) => refusal(&p, &e),
    };
    with_dpop_nonce(&p, &mut res);
    res
}

/// RFC 9449 §8: the nonce the next proofs must carry.
fn with_dpop_nonce(p: &Provider, res: &mut HttpResponse) {
    if p.controls.requires_dpop_nonce()
        && let Ok(nonce) = HeaderValue::from_str(&p.dpop_nonce)
    {
        res.headers_mut().insert(header::HeaderName::from_static("dpop-nonce"), nonce);
    }
}

fn dpop_proof(req: &HttpRequest) -> Option<&str> {
    req.headers().get("dpop").and_then(|v| v.to_str().ok())
}

async fn pushed_authorization_request(
    req: HttpRequest,
    p: web::Data<Provider>,
    form: web::Form<HashMap<String, String>>,
) -> HttpResponse {
    let mut res = match p.push_authorization(&form, &presented(&req, &form), dpop_proof(&req)) {
        Ok(body) => no_store(HttpResponse::Created().json(body)),
        Err(e) => refusal(&p, &e),
    };
    with_dpop_nonce(&p, &mut res);
    res
}

async fn revoke(req: HttpRequest, p: web::Data<Provider>, form: web::Form<HashMap<String, String>>) -> HttpResponse {
    p.saw_trace_context("/revoke", &req);
    match p.revoke(&form, &presented(&req, &form)) {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(e) => refusal(&p, &e),
    }
}

/// A `Bearer` token, or a DPoP-bound one as `DPoP` with a proof made for this request
/// (RFC 9449 §7), as the provider issued it.
async fn userinfo(req: HttpRequest, p: web::Data<Provider>) -> HttpResponse {
    if p.controls.userinfo_fault() == super::UserinfoFault::Unavailable {
        return HttpResponse::ServiceUnavailable().content_type("text/html").body("<h1>503 Service Unavailable</h1>");
    }
    let refused = |why: &str| {
        tracing::info!("demo idp: userinfo refused: {why}");
        HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\", DPoP algs=\"ES256\""))
            .finish()
    };
    let Some((scheme, token)) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| *scheme == "Bearer" || *scheme == "DPoP")
    else {
        return refused("no token");
    };
    let Some(claims) = p.active_access_token(token) else { return refused("not an active access token") };
    let url = format!("{}/userinfo", p.issuer);
    let expected = super::dpop::Expected { method: "GET", url: &url, access_token: Some(token), nonce: None };
    let jkt = claims.cnf.as_ref().and_then(|c| c["jkt"].as_str());
    let proof = req.headers().get("dpop").and_then(|v| v.to_str().ok());
    if let Err(e) = super::dpop::check_binding(scheme, jkt, proof, &expected, &p.seen_proofs) {
        return refused(&format!("{e:?}"));
    }
    match p.userinfo(&claims) {
        Some(Ok(UserinfoAnswer::Json(body))) => no_store(HttpResponse::Ok().json(body)),
        Some(Ok(UserinfoAnswer::Jwt(jwt))) => no_store(HttpResponse::Ok().content_type("application/jwt").body(jwt)),
        Some(Err(e)) => HttpResponse::InternalServerError().body(e.to_string()),
        None => refused("no such user"),
    }
}

async fn end_session(
    req: HttpRequest,
    p: web::Data<Provider>,
    pages: web::Data<Pages>,
    q: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let ended = p.end_session(&q).await;
    // Signed out of the provider too: a later `prompt=none` finds no one.
    p.forget_browser(req.cookie(BROWSER_SESSION_COOKIE).as_ref().map(|c| c.value()));
    let mut res = if !ended.frontchannel.is_empty() {
        frontchannel_page(&ended.frontchannel, ended.target.as_ref())
    } else {
        match ended.target {
            Some(target) => redirect(target.as_str()),
            None => pages.error(StatusCode::OK, "You are signed out of the demo identity provider.", false),
        }
    };
    let mut removal = actix_web::cookie::Cookie::build(BROWSER_SESSION_COOKIE, "").path("/").finish();
    removal.make_removal();
    let _ = res.add_cookie(&removal);
    res
}

/// The end-session page of a front-channel provider: an iframe per client to sign out of, then
/// on to where the client asked to go.
fn frontchannel_page(frames: &[String], target: Option<&url::Url>) -> HttpResponse {
    let escape = |s: &str| s.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;");
    let iframes: String = frames
        .iter()
        .map(|url| format!("<iframe src=\"{}\" width=\"0\" height=\"0\" hidden></iframe>\n", escape(url)))
        .collect();
    // On after the frames had a moment to load (real providers wait for their `load` events).
    let (refresh, link) = match target.map(|t| escape(t.as_str())) {
        Some(to) => (
            format!("<meta http-equiv=\"refresh\" content=\"2;url={to}\">"),
            format!("<p><a href=\"{to}\">Continue</a></p>"),
        ),
        None => (String::new(), String::new()),
    };
    no_store(HttpResponse::Ok().content_type("text/html; charset=utf-8").body(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Signing out</title>{refresh}</head>\n\
         <body><p>You are signed out of the demo identity provider.</p>{link}\n{iframes}</body></html>"
    )))
}

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok().content_type("text/css; charset=utf-8").body(crate::pages::STYLESHEET)
}
