//! The demo provider's protocol state: clients, authorization requests, codes, grants, tokens.
//!
//! It is strict on purpose, like real providers: PKCE S256 required, codes one-time, refresh
//! tokens rotated on every use with reuse detection (a used refresh token revokes the whole
//! grant), the client must authenticate with its registered method. Tests pass because bff does
//! the protocol right, not because the provider is lenient.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use url::Url;

mod client_auth;

use super::keys::SigningKey;
use super::{Client, Controls, IdTokenFault};
use crate::crypto::random_token;
use crate::session::now_unix;

const CODE_TTL_SECS: u64 = 60;
/// RFC 8693 §2.1 and §3.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// An OAuth error answer: status, `error`, `error_description`.
#[derive(Debug)]
pub struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

fn oauth_error(status: u16, error: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError { status, error, description: description.into() }
}

/// A validated authorization request waiting for the user to sign in.
#[derive(Clone)]
pub struct AuthRequest {
    pub client_id: String,
    pub redirect_uri: Url,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub scope: String,
    pub code_challenge: String,
    /// RFC 9449 §10: the key the code may only be exchanged with.
    pub dpop_jkt: Option<String>,
    /// OpenID Connect Core §3.1.2.1: `prompt`, `max_age` and `acr_values` as asked.
    pub prompt: Vec<String>,
    pub max_age: Option<u64>,
    pub acr_values: Vec<String>,
}

/// `acr` of a sign-in with the user name alone, and with the demo's "second factor" ticked.
pub const ACR_PASSWORD: &str = "urn:bff:demo:pwd";
pub const ACR_SECOND_FACTOR: &str = "urn:bff:demo:mfa";

/// How the user authenticated at the provider: what the ID token reports (`auth_time`, `acr`,
/// `amr`), and what the provider's own session remembers for a later `prompt=none`.
#[derive(Debug, Clone)]
pub struct Authentication {
    pub username: String,
    pub auth_time: u64,
    pub acr: String,
    pub amr: Vec<String>,
}

impl Authentication {
    /// Now, with the user name alone, or with the second factor.
    pub fn now(username: &str, second_factor: bool) -> Authentication {
        let (acr, amr) = if second_factor {
            (ACR_SECOND_FACTOR, vec!["pwd".to_string(), "otp".to_string()])
        } else {
            (ACR_PASSWORD, vec!["pwd".to_string()])
        };
        Authentication { username: username.to_string(), auth_time: now_unix(), acr: acr.into(), amr }
    }

    /// Whether this authentication is what a request asks for: recent enough for its `max_age`
    /// and one of its `acr_values` (when it names any).
    pub fn satisfies(&self, request: &AuthRequest) -> bool {
        let recent = request.max_age.is_none_or(|max_age| now_unix().saturating_sub(self.auth_time) <= max_age);
        let strong = request.acr_values.is_empty() || request.acr_values.contains(&self.acr);
        recent && strong
    }
}

struct Code {
    request: AuthRequest,
    grant_id: String,
    expires_at: u64,
    used: bool,
}

pub struct Grant {
    pub client_id: String,
    pub username: String,
    pub scope: String,
    pub sid: String,
    pub auth_time: u64,
    pub acr: String,
    pub amr: Vec<String>,
    pub revoked: bool,
    /// RFC 9449: the key the grant's tokens are bound to (from the code exchange's proof).
    pub dpop_jkt: Option<String>,
}

struct RefreshRecord {
    grant_id: String,
    used: bool,
    /// Unix seconds of the rotation that used it (for the reuse grace period).
    used_at: u64,
    expires_at: u64,
}

#[derive(Default)]
struct Data {
    interactions: HashMap<String, AuthRequest>,
    codes: HashMap<String, Code>,
    grants: HashMap<String, Grant>,
    refresh_tokens: HashMap<String, RefreshRecord>,
    /// Access-token `jti` → grant.
    access_tokens: HashMap<String, String>,
    /// Client assertion `jti`s seen, until they expire (replays are refused).
    seen_assertions: HashMap<String, u64>,
    /// RFC 9126 `request_uri` → the pushed request's client, parameters and expiry.
    pushed: HashMap<String, (String, HashMap<String, String>, u64)>,
    /// Provider sessions that RP-initiated logout ended (tests read it).
    ended_sessions: Vec<String>,
    /// The provider's own sign-in sessions, by the browser's `demo_idp_session` cookie: what a
    /// `prompt=none` request is answered from.
    browser_sessions: HashMap<String, Authentication>,
}

/// Counters tests read.
#[derive(Default)]
pub struct Counters {
    /// Every request to the token endpoint, answered or not (faults included).
    pub token_endpoint_calls: AtomicU64,
    pub pushed_authorization_requests: AtomicU64,
    /// `private_key_jwt` client assertions accepted.
    pub client_assertions: AtomicU64,
    /// DPoP proofs accepted at the token endpoint.
    pub dpop_proofs: AtomicU64,
    pub authorization_code: AtomicU64,
    pub refresh_token: AtomicU64,
    pub client_credentials: AtomicU64,
    /// Token exchange requests (RFC 8693), answered or refused (not counted while the provider
    /// does not offer the grant: `Quirks::no_token_exchange`).
    pub token_exchange: AtomicU64,
    pub revocations: AtomicU64,
    pub reuse_detected: AtomicU64,
    /// Refresh tokens used again within the grace period (and answered).
    pub reuse_within_grace: AtomicU64,
    pub end_session: AtomicU64,
    pub backchannel_ok: AtomicU64,
    /// Answers of `/userinfo` to an active access token.
    pub userinfo: AtomicU64,
}

/// What `/userinfo` answers.
pub enum UserinfoAnswer {
    Json(Value),
    /// `application/jwt`.
    Jwt(String),
}

/// What an end-session request did: where the browser goes next, and the front-channel logout
/// URIs the page loads first.
pub struct EndSession {
    pub target: Option<Url>,
    pub frontchannel: Vec<String>,
}

/// Client credentials as the request presented them.
#[derive(Default)]
pub struct Presented {
    pub basic: Option<(String, String)>,
    pub post: Option<(String, String)>,
    /// RFC 7523 §2.2: `client_assertion` (of type jwt-bearer) and the form's `client_id`.
    pub assertion: Option<(Option<String>, String)>,
    /// The path of the endpoint they were presented to (`/token`, `/par`, `/revoke`).
    pub endpoint: String,
}

#[derive(Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    pub sid: String,
    /// Profile claims, as Keycloak and others put them in access tokens.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub preferred_username: Option<String>,
    /// RFC 9449 §6: `{"jkt": …}` for a DPoP-bound token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Value>,
    /// How the user authenticated (RFC 9068 §2.2.1), for an API's step-up decisions (RFC 9470);
    /// none in bff's own client-credentials tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
}

pub struct Provider {
    pub issuer: String,
    pub key: SigningKey,
    /// Signs "bad signature" ID tokens for tests: same `kid`, a key nobody published.
    rogue_key: Mutex<Option<std::sync::Arc<SigningKey>>>,
    pub clients: HashMap<String, Client>,
    pub controls: std::sync::Arc<Controls>,
    pub counters: Counters,
    data: Mutex<Data>,
    /// Every token the provider issued, so tests can search logs and pages for them.
    issued: Mutex<Vec<String>>,
    /// The `traceparent` each token and revocation request came with (the last few), to show
    /// that a client propagates its trace.
    trace_contexts: Mutex<std::collections::VecDeque<(&'static str, String)>>,
    pub api_audience: String,
    /// Delivers back-channel logout tokens.
    http: reqwest::Client,
    /// DPoP proofs seen at the token endpoint (replays are refused).
    pub(super) seen_proofs: super::dpop::SeenProofs,
    /// The nonce the token endpoint asks DPoP proofs for, when it asks (RFC 9449 §8).
    pub dpop_nonce: String,
}

pub fn user_claims(username: &str) -> (String, Value) {
    let sub = format!("demo|{username}");
    let mut name = username.to_string();
    if let Some(first) = name.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    let claims = json!({
        "name": name,
        "preferred_username": username,
        "email": format!("{username}@example.com"),
        "email_verified": true,
    });
    (sub, claims)
}

impl Provider {
    pub fn new(
        issuer: String,
        key: SigningKey,
        clients: Vec<Client>,
        controls: std::sync::Arc<Controls>,
        api_audience: String,
    ) -> Provider {
        Provider {
            issuer,
            key,
            rogue_key: Mutex::new(None),
            clients: clients.into_iter().map(|c| (c.client_id.clone(), c)).collect(),
            controls,
            counters: Counters::default(),
            data: Mutex::new(Data::default()),
            issued: Mutex::new(Vec::new()),
            trace_contexts: Mutex::new(std::collections::VecDeque::new()),
            api_audience,
            http: reqwest::Client::builder().timeout(std::time::Duration::from_secs(5)).build().unwrap_or_default(),
            seen_proofs: super::dpop::SeenProofs::default(),
            dpop_nonce: format!("n-{}", random_token()),
        }
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, token: &str) {
        self.issued.lock().unwrap_or_else(|p| p.into_inner()).push(token.to_string());
    }

    pub fn issued_tokens(&self) -> Vec<String> {
        self.issued.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn saw_trace_context(&self, endpoint: &'static str, req: &actix_web::HttpRequest) {
        const KEPT: usize = 64;
        let Some(traceparent) = req.headers().get("traceparent").and_then(|v| v.to_str().ok()) else { return };
        let mut seen = self.trace_contexts.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() == KEPT {
            seen.pop_front();
        }
        seen.push_back((endpoint, traceparent.to_string()));
    }

    /// `(endpoint, traceparent)` of the last requests that carried one.
    pub fn trace_contexts(&self) -> Vec<(&'static str, String)> {
        self.trace_contexts.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// RFC 9126 §2: a client pushes its authorization request; it gets a one-time reference.
    pub fn push_authorization(
        &self,
        form: &HashMap<String, String>,
        presented: &Presented,
        dpop_proof: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let client = self.authenticate(presented)?;
        // RFC 9449 §10.1: a proof binds the request to its key; `dpop_jkt`, if also sent, must
        // name the same key.
        let jkt = self.endpoint_proof(dpop_proof, "/par")?;
        if jkt.is_none() && self.controls.quirks().dpop_required_at_par {
            return Err(oauth_error(400, "invalid_dpop_proof", "this client must send a DPoP proof"));
        }
        if let (Some(jkt), Some(named)) = (&jkt, form.get("dpop_jkt"))
            && jkt != named
        {
            return Err(oauth_error(400, "invalid_dpop_proof", "dpop_jkt does not name the proof's key"));
        }
        if form.contains_key("request_uri") {
            return Err(oauth_error(400, "invalid_request", "request_uri must not be pushed"));
        }
        if form.get("client_id").is_some_and(|id| *id != client.client_id) {
            return Err(oauth_error(400, "invalid_request", "client_id is not the authenticated client"));
        }
        let mut params = form.clone();
        params.remove("client_secret");
        if let Some(jkt) = jkt {
            params.insert("dpop_jkt".into(), jkt);
        }
        params.insert("client_id".into(), client.client_id.clone());
        // Errors that would be redirected at /authorize are answered here instead (§2.3).
        match self.check_authorize(&params) {
            Ok(Ok(_)) => {}
            Ok(Err(redirect)) => {
                let error = redirect.query_pairs().find(|(k, _)| k == "error").map(|(_, v)| v.into_owned());
                return Err(oauth_error(400, "invalid_request", error.unwrap_or_default()));
            }
            Err(reason) => return Err(oauth_error(400, "invalid_request", reason)),
        }
        self.counters.pushed_authorization_requests.fetch_add(1, Ordering::SeqCst);
        let request_uri = format!("urn:ietf:params:oauth:request_uri:{}", random_token());
        let expires_in = 60;
        self.data().pushed.insert(request_uri.clone(), (client.client_id.clone(), params, now_unix() + expires_in));
        Ok(json!({ "request_uri": request_uri, "expires_in": expires_in }))
    }

    /// The parameters of an authorization request: the pushed ones its `request_uri` names (once,
    /// unexpired, for the same client), or the query itself where pushing is not required.
    pub fn authorization_params(&self, q: &HashMap<String, String>) -> Result<HashMap<String, String>, String> {
        let Some(request_uri) = q.get("request_uri") else {
            if self.controls.quirks().par_required {
                return Err("this provider takes pushed authorization requests only (RFC 9126)".into());
            }
            return Ok(q.clone());
        };
        let (client_id, params, expires_at) =
            self.data().pushed.remove(request_uri).ok_or("unknown or already used request_uri")?;
        if q.get("client_id") != Some(&client_id) {
            return Err("request_uri was pushed by another client".into());
        }
        if expires_at < now_unix() {
            return Err("request_uri expired".into());
        }
        Ok(params)
    }

    /// Checks an authorization request. Errors that can be sent back to the client come as
    /// `Ok(Err(redirect))`; a bad client or redirect URI must not redirect (`Err`).
    pub fn check_authorize(&self, q: &HashMap<String, String>) -> Result<Result<AuthRequest, Url>, String> {
        let client_id = q.get("client_id").ok_or("client_id is missing")?;
        let client = self.clients.get(client_id).ok_or("unknown client_id")?;
        let redirect_raw = q.get("redirect_uri").ok_or("redirect_uri is missing")?;
        if !client.redirect_uris.iter().any(|r| r == redirect_raw) {
            return Err("redirect_uri is not registered for this client".into());
        }
        let redirect_uri = Url::parse(redirect_raw).map_err(|_| "redirect_uri is not a URL")?;
        let state = q.get("state").cloned();
        let fail = |error: &str, description: &str| {
            let mut url = redirect_uri.clone();
            url.query_pairs_mut().append_pair("error", error).append_pair("error_description", description);
            if let Some(s) = &state {
                url.query_pairs_mut().append_pair("state", s);
            }
            Ok(Err(url))
        };
        if q.get("response_type").map(String::as_str) != Some("code") {
            return fail("unsupported_response_type", "only response_type=code");
        }
        let scope = q.get("scope").cloned().unwrap_or_default();
        if !scope.split(' ').any(|s| s == "openid") {
            return fail("invalid_scope", "openid is required");
        }
        let Some(code_challenge) = q.get("code_challenge").filter(|c| c.len() >= 43) else {
            return fail("invalid_request", "PKCE code_challenge is required");
        };
        if q.get("code_challenge_method").map(String::as_str) != Some("S256") {
            return fail("invalid_request", "code_challenge_method must be S256");
        }
        if let Some(error) = self.controls.authorize_error() {
            return fail(&error, "refused by the test switch");
        }
        Ok(Ok(AuthRequest {
            client_id: client_id.clone(),
            redirect_uri,
            state,
            nonce: q.get("nonce").cloned(),
            scope,
            code_challenge: code_challenge.clone(),
            dpop_jkt: q.get("dpop_jkt").cloned(),
            prompt: q
                .get("prompt")
                .map(|p| p.split(' ').filter(|w| !w.is_empty()).map(String::from).collect())
                .unwrap_or_default(),
            max_age: q.get("max_age").and_then(|m| m.parse().ok()),
            acr_values: q
                .get("acr_values")
                .map(|a| a.split(' ').filter(|w| !w.is_empty()).map(String::from).collect())
                .unwrap_or_default(),
        }))
    }

    /// The authentication a browser's provider session holds, if it has one.
    pub fn browser_session(&self, cookie: Option<&str>) -> Option<Authentication> {
        self.data().browser_sessions.get(cookie?).cloned()
    }

    /// Remembers a sign-in for the browser; the cookie value that names it.
    pub fn remember_browser(&self, authentication: Authentication) -> String {
        let id = random_token();
        let mut data = self.data();
        // A demo: a bound that keeps a long-running demo's memory in check.
        if data.browser_sessions.len() >= 10_000 {
            data.browser_sessions.clear();
        }
        data.browser_sessions.insert(id.clone(), authentication);
        id
    }

    /// The browser's provider session ends (RP-initiated logout).
    pub fn forget_browser(&self, cookie: Option<&str>) {
        if let Some(cookie) = cookie {
            self.data().browser_sessions.remove(cookie);
        }
    }

    /// `prompt=none` that cannot be answered without the user (§3.1.2.6): back to the client.
    pub fn interaction_needed(&self, request: &AuthRequest) -> Url {
        let mut url = request.redirect_uri.clone();
        url.query_pairs_mut().append_pair("error", "login_required");
        if let Some(s) = &request.state {
            url.query_pairs_mut().append_pair("state", s);
        }
        url.query_pairs_mut().append_pair("iss", &self.issuer);
        url
    }

    pub fn start_interaction(&self, request: AuthRequest) -> String {
        let id = random_token();
        self.data().interactions.insert(id.clone(), request);
        id
    }

    pub fn take_interaction(&self, id: &str) -> Option<AuthRequest> {
        self.data().interactions.remove(id)
    }

    /// The user signed in: a grant and a one-time code, sent back to the client.
    pub fn issue_code(&self, request: AuthRequest, username: &str) -> Url {
        self.issue_code_for(request, Authentication::now(username, false))
    }

    /// The same for an authentication made earlier or with a second factor.
    pub fn issue_code_for(&self, request: AuthRequest, authentication: Authentication) -> Url {
        let username = authentication.username.as_str();
        let code = random_token();
        let grant_id = random_token();
        let mut data = self.data();
        data.grants.insert(
            grant_id.clone(),
            Grant {
                client_id: request.client_id.clone(),
                username: username.to_string(),
                scope: request.scope.clone(),
                sid: random_token(),
                auth_time: authentication.auth_time,
                acr: authentication.acr.clone(),
                amr: authentication.amr.clone(),
                revoked: false,
                dpop_jkt: None,
            },
        );
        let mut url = request.redirect_uri.clone();
        url.query_pairs_mut().append_pair("code", &code);
        if let Some(s) = &request.state {
            url.query_pairs_mut().append_pair("state", s);
        }
        url.query_pairs_mut().append_pair("iss", &self.issuer);
        data.codes.insert(code, Code { request, grant_id, expires_at: now_unix() + CODE_TTL_SECS, used: false });
        url
    }

    pub fn token(
        &self,
        form: &HashMap<String, String>,
        presented: &Presented,
        dpop_proof: Option<&str>,
    ) -> Result<Value, OAuthError> {
        // As certified providers do: the client first (its assertion's jti is used up even if
        // the proof is then refused), then the proof.
        let client = self.authenticate(presented)?;
        let jkt = self.token_proof(dpop_proof)?;
        match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {
                self.counters.authorization_code.fetch_add(1, Ordering::SeqCst);
                self.exchange_code(client, form, jkt)
            }
            Some("refresh_token") => {
                self.counters.refresh_token.fetch_add(1, Ordering::SeqCst);
                self.refresh(client, form, jkt)
            }
            Some("client_credentials") => {
                self.counters.client_credentials.fetch_add(1, Ordering::SeqCst);
                self.client_credentials(client, form)
            }
            Some(TOKEN_EXCHANGE) if !self.controls.quirks().no_token_exchange => {
                self.counters.token_exchange.fetch_add(1, Ordering::SeqCst);
                self.token_exchange(client, form)
            }
            _ => Err(oauth_error(
                400,
                "unsupported_grant_type",
                "authorization_code, refresh_token, client_credentials or token exchange",
            )),
        }
    }

    fn exchange_code(
        &self,
        client: &Client,
        form: &HashMap<String, String>,
        jkt: Option<String>,
    ) -> Result<Value, OAuthError> {
        let invalid = |why: &str| oauth_error(400, "invalid_grant", why);
        let code = form.get("code").ok_or_else(|| oauth_error(400, "invalid_request", "code is missing"))?;
        let (grant_id, request) = {
            let mut data = self.data();
            let Some(entry) = data.codes.get_mut(code) else { return Err(invalid("unknown code")) };
            if entry.used {
                // A replayed code: revoke everything issued from it.
                let grant_id = entry.grant_id.clone();
                if let Some(g) = data.grants.get_mut(&grant_id) {
                    g.revoked = true;
                }
                return Err(invalid("code already used"));
            }
            entry.used = true;
            if entry.expires_at < now_unix() {
                return Err(invalid("code expired"));
            }
            (entry.grant_id.clone(), entry.request.clone())
        };
        if request.client_id != client.client_id {
            return Err(invalid("code was issued to another client"));
        }
        if form.get("redirect_uri").map(String::as_str) != Some(request.redirect_uri.as_str()) {
            return Err(invalid("redirect_uri does not match"));
        }
        if request.dpop_jkt.is_some() && request.dpop_jkt != jkt {
            return Err(invalid("the code is bound to another DPoP key (dpop_jkt)"));
        }
        let verifier = form.get("code_verifier").ok_or_else(|| invalid("code_verifier is missing"))?;
        if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != request.code_challenge {
            return Err(invalid("PKCE verification failed"));
        }
        if let Some(grant) = self.data().grants.get_mut(&grant_id) {
            grant.dpop_jkt = jkt.clone();
        }
        self.tokens_for(&grant_id, request.nonce.as_deref(), true, None, jkt)
    }

    /// RFC 8707 §2: the audience asked for, if any: an absolute URI without a fragment that
    /// this provider has not been told to refuse.
    fn resource(&self, form: &HashMap<String, String>) -> Result<Option<String>, OAuthError> {
        let Some(resource) = form.get("resource") else { return Ok(None) };
        let valid = url::Url::parse(resource).is_ok_and(|u| u.fragment().is_none() && !u.cannot_be_a_base());
        if !valid || self.controls.refuses_resource(resource) {
            return Err(oauth_error(400, "invalid_target", "this resource is not served"));
        }
        Ok(Some(resource.clone()))
    }

    /// bff's own token (RFC 6749 §4.4): its own subject, no refresh or ID token.
    fn client_credentials(&self, client: &Client, form: &HashMap<String, String>) -> Result<Value, OAuthError> {
        let audience = self.resource(form)?;
        let scope = form.get("scope").cloned().unwrap_or_default();
        let now = now_unix();
        let ttl = self.controls.access_token_ttl().as_secs();
        let (grant_id, jti) = (random_token(), random_token());
        let access = AccessClaims {
            iss: self.issuer.clone(),
            sub: client.client_id.clone(),
            aud: audience.unwrap_or_else(|| self.api_audience.clone()),
            exp: now + ttl,
            iat: now,
            jti: jti.clone(),
            client_id: client.client_id.clone(),
            scope: scope.clone(),
            sid: String::new(),
            name: None,
            preferred_username: None,
            cnf: None,
            acr: None,
            auth_time: None,
        };
        let access_token =
            self.key.sign(&access, Some("at+jwt")).map_err(|e| oauth_error(500, "server_error", e.to_string()))?;
        {
            let mut data = self.data();
            let grant = Grant {
                client_id: client.client_id.clone(),
                username: String::new(),
                scope: scope.clone(),
                sid: String::new(),
                auth_time: now,
                acr: String::new(),
                amr: Vec::new(),
                revoked: false,
                dpop_jkt: None,
            };
            data.grants.insert(grant_id.clone(), grant);
            data.access_tokens.insert(jti, grant_id);
        }
        self.remember(&access_token);
        Ok(json!({ "access_token": access_token, "token_type": "Bearer", "expires_in": ttl, "scope": scope }))
    }

    /// RFC 8693: an active access token of this provider, issued to this client, exchanged for
    /// an access token for the `audience` (else the `resource`) asked for: the same user, the
    /// same grant (revoking it revokes this token too), a `Bearer` token whatever the subject's
    /// binding. Refused with `invalid_target` for an audience the controls refuse.
    fn token_exchange(&self, client: &Client, form: &HashMap<String, String>) -> Result<Value, OAuthError> {
        let field = |name: &str| form.get(name).map(String::as_str);
        if field("subject_token_type") != Some(ACCESS_TOKEN_TYPE) {
            return Err(oauth_error(400, "invalid_request", "subject_token_type must be an access token"));
        }
        if field("requested_token_type").is_some_and(|t| t != ACCESS_TOKEN_TYPE) {
            return Err(oauth_error(400, "invalid_request", "only access tokens are issued"));
        }
        let subject =
            field("subject_token").ok_or_else(|| oauth_error(400, "invalid_request", "subject_token is missing"))?;
        let resource = self.resource(form)?;
        let audience = match (field("audience"), resource) {
            (Some(audience), _) => audience.to_string(),
            (None, Some(resource)) => resource,
            (None, None) => return Err(oauth_error(400, "invalid_target", "an audience or a resource is required")),
        };
        if self.controls.refuses_exchange(&audience) {
            return Err(oauth_error(400, "invalid_target", "no exchange for this audience"));
        }
        let invalid = |why: &str| oauth_error(400, "invalid_grant", why);
        let claims = self.key.verify::<AccessClaims>(subject, None, true).ok_or_else(|| invalid("not our token"))?;
        let grant_id = {
            let data = self.data();
            let grant_id = data.access_tokens.get(&claims.jti).cloned().ok_or_else(|| invalid("unknown token"))?;
            let grant = data.grants.get(&grant_id).filter(|g| !g.revoked).ok_or_else(|| invalid("grant revoked"))?;
            if grant.client_id != client.client_id || claims.client_id != client.client_id {
                return Err(invalid("the subject token was issued to another client"));
            }
            grant_id
        };
        let scope = field("scope").map_or_else(|| claims.scope.clone(), String::from);
        let now = now_unix();
        let ttl = self.controls.access_token_ttl().as_secs();
        let jti = random_token();
        let access = AccessClaims {
            iss: self.issuer.clone(),
            aud: audience,
            exp: now + ttl,
            iat: now,
            jti: jti.clone(),
            scope: scope.clone(),
            cnf: None,
            ..claims
        };
        let access_token =
            self.key.sign(&access, Some("at+jwt")).map_err(|e| oauth_error(500, "server_error", e.to_string()))?;
        self.data().access_tokens.insert(jti, grant_id);
        self.remember(&access_token);
        Ok(json!({
            "access_token": access_token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": scope,
        }))
    }

    fn refresh(
        &self,
        client: &Client,
        form: &HashMap<String, String>,
        jkt: Option<String>,
    ) -> Result<Value, OAuthError> {
        let audience = self.resource(form)?;
        let invalid = |why: &str| oauth_error(400, "invalid_grant", why);
        let presented =
            form.get("refresh_token").ok_or_else(|| oauth_error(400, "invalid_request", "refresh_token is missing"))?;
        let grant_id = {
            let mut data = self.data();
            let Some(record) = data.refresh_tokens.get_mut(presented) else {
                return Err(invalid("unknown refresh token"));
            };
            let grant_id = record.grant_id.clone();
            let grace = self.controls.refresh_reuse_grace().as_secs();
            let within_grace = record.used && grace > 0 && now_unix() <= record.used_at + grace;
            if within_grace {
                // A client whose answer was lost asks again with the same token: it gets a
                // fresh pair instead of losing the grant (Okta, Keycloak, oidc-provider offer this).
                self.counters.reuse_within_grace.fetch_add(1, Ordering::SeqCst);
            } else if record.used {
                // Reuse detection: whoever holds the rotated token and whoever replays the old
                // one cannot be told apart, so the grant dies.
                self.counters.reuse_detected.fetch_add(1, Ordering::SeqCst);
                if let Some(g) = data.grants.get_mut(&grant_id) {
                    g.revoked = true;
                }
                tracing::warn!("demo idp: refresh token reuse detected; grant revoked");
                return Err(invalid("refresh token already used"));
            }
            if record.expires_at < now_unix() {
                return Err(invalid("refresh token expired"));
            }
            record.used = true;
            if !within_grace {
                record.used_at = now_unix();
            }
            let grant = data.grants.get(&grant_id).ok_or_else(|| invalid("grant gone"))?;
            if grant.revoked {
                return Err(invalid("grant revoked"));
            }
            if grant.client_id != client.client_id {
                return Err(invalid("refresh token was issued to another client"));
            }
            // A DPoP-bound grant stays bound to its key.
            if grant.dpop_jkt.is_some() && grant.dpop_jkt != jkt {
                return Err(oauth_error(400, "invalid_dpop_proof", "the proof's key is not the grant's"));
            }
            grant_id
        };
        self.tokens_for(&grant_id, None, false, audience, jkt)
    }

    fn rogue_key(&self) -> Option<std::sync::Arc<SigningKey>> {
        let mut slot = self.rogue_key.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = SigningKey::generate("demo-key").ok().map(std::sync::Arc::new);
        }
        slot.clone()
    }

    /// Access token (JWT, for `audience` or the API's), a rotated refresh token when
    /// `offline_access` was granted, ID token.
    fn tokens_for(
        &self,
        grant_id: &str,
        nonce: Option<&str>,
        at_login: bool,
        audience: Option<String>,
        jkt: Option<String>,
    ) -> Result<Value, OAuthError> {
        let server_error = |e: jsonwebtoken::errors::Error| oauth_error(500, "server_error", e.to_string());
        let (grant_client, username, scope, sid, auth_time, acr, amr) = {
            let data = self.data();
            let g = data.grants.get(grant_id).ok_or_else(|| oauth_error(400, "invalid_grant", "grant gone"))?;
            (
                g.client_id.clone(),
                g.username.clone(),
                g.scope.clone(),
                g.sid.clone(),
                g.auth_time,
                g.acr.clone(),
                g.amr.clone(),
            )
        };
        let now = now_unix();
        let ttl = self.controls.access_token_ttl().as_secs();
        let (sub, profile) = user_claims(&username);
        let jti = random_token();
        let access = AccessClaims {
            iss: self.issuer.clone(),
            sub: sub.clone(),
            aud: audience.unwrap_or_else(|| self.api_audience.clone()),
            exp: now + ttl,
            iat: now,
            jti: jti.clone(),
            client_id: grant_client.clone(),
            scope: scope.clone(),
            sid: sid.clone(),
            name: profile.get("name").and_then(|v| v.as_str()).map(String::from),
            preferred_username: Some(username.clone()),
            cnf: jkt.as_ref().map(|jkt| json!({ "jkt": jkt })),
            acr: Some(acr.clone()),
            auth_time: Some(auth_time),
        };
        let access_token = self.key.sign(&access, Some("at+jwt")).map_err(server_error)?;

        let fault = if at_login { self.controls.id_token_fault() } else { IdTokenFault::None };
        let aud = match fault {
            IdTokenFault::WrongAudience => json!("someone-else"),
            IdTokenFault::ExtraAudienceWithAzp | IdTokenFault::ExtraAudienceWithoutAzp => {
                json!([grant_client.clone(), "another-client"])
            }
            _ => json!(grant_client.clone()),
        };
        // OIDC Core §3.3.2.11: the left half of the SHA-256 of the access token.
        let hashed = if fault == IdTokenFault::WrongAtHash { "not-the-access-token" } else { access_token.as_str() };
        let at_hash = URL_SAFE_NO_PAD.encode(&Sha256::digest(hashed.as_bytes())[..16]);
        let mut id_claims = json!({
            "iss": if fault == IdTokenFault::WrongIssuer { "https://evil.example".to_string() } else { self.issuer.clone() },
            "sub": sub,
            "aud": aud,
            "iat": if fault == IdTokenFault::IssuedInFuture { now + 3600 } else { now },
            "exp": if fault == IdTokenFault::Expired { now - 120 } else { now + 300 },
            "auth_time": auth_time,
            "acr": acr,
            "amr": amr,
            "sid": sid,
            "at_hash": at_hash,
        });
        if self.controls.quirks().sid_is_sub
            && let Some(obj) = id_claims.as_object_mut()
        {
            obj.remove("sid");
        }
        if fault == IdTokenFault::ExtraAudienceWithAzp
            && let Some(obj) = id_claims.as_object_mut()
        {
            obj.insert("azp".into(), json!(grant_client.clone()));
        }
        if let (Some(obj), Some(p)) = (id_claims.as_object_mut(), profile.as_object()) {
            if !self.controls.quirks().profile_only_in_userinfo {
                obj.extend(p.clone());
            }
            match (nonce, fault) {
                (Some(_), IdTokenFault::WrongNonce) => {
                    obj.insert("nonce".into(), json!("not-the-nonce"));
                }
                (Some(n), _) => {
                    obj.insert("nonce".into(), json!(n));
                }
                (None, _) => {}
            }
        }
        let id_token = if fault == IdTokenFault::BadSignature {
            let rogue = self.rogue_key().ok_or_else(|| oauth_error(500, "server_error", "no rogue key"))?;
            rogue.sign(&id_claims, Some("JWT")).map_err(server_error)?
        } else {
            self.key.sign(&id_claims, Some("JWT")).map_err(server_error)?
        };

        let refresh_token = (scope.split(' ').any(|s| s == "offline_access")
            && !self.controls.quirks().no_refresh_tokens)
            .then(random_token);
        {
            let mut data = self.data();
            data.access_tokens.insert(jti, grant_id.to_string());
            if let Some(rt) = &refresh_token {
                let expires_at = now + self.controls.refresh_token_ttl().as_secs();
                data.refresh_tokens.insert(
                    rt.clone(),
                    RefreshRecord { grant_id: grant_id.to_string(), used: false, used_at: 0, expires_at },
                );
            }
        }
        self.remember(&access_token);
        self.remember(&id_token);
        let mut body = json!({
            "access_token": access_token,
            "token_type": if jkt.is_some() { "DPoP" } else { "Bearer" },
            "expires_in": ttl,
            "id_token": id_token,
            "scope": scope,
        });
        if let (Some(rt), Some(obj)) = (&refresh_token, body.as_object_mut()) {
            self.remember(rt);
            obj.insert("refresh_token".into(), json!(rt));
        }
        Ok(body)
    }

    /// RFC 7009: revoking a refresh token revokes its grant. Unknown tokens are not an error.
    pub fn revoke(&self, form: &HashMap<String, String>, presented: &Presented) -> Result<(), OAuthError> {
        let client = self.authenticate(presented)?;
        let token = form.get("token").ok_or_else(|| oauth_error(400, "invalid_request", "token is missing"))?;
        self.counters.revocations.fetch_add(1, Ordering::SeqCst);
        let mut data = self.data();
        let grant_id = match data.refresh_tokens.get(token) {
            Some(r) => Some(r.grant_id.clone()),
            None => self
                .key
                .verify::<AccessClaims>(token, None, false)
                .and_then(|c| data.access_tokens.get(&c.jti).cloned()),
        };
        if let Some(grant_id) = grant_id
            && let Some(g) = data.grants.get_mut(&grant_id).filter(|g| g.client_id == client.client_id)
        {
            g.revoked = true;
        }
        Ok(())
    }

    /// An access token for the API's audience that is signed by us, unexpired and whose grant
    /// still lives.
    pub fn active_access_token(&self, token: &str) -> Option<AccessClaims> {
        self.active_access_token_for(token, &self.api_audience)
    }

    /// The same, for an API that is `audience` (RFC 8707): a token meant for another is refused.
    pub fn active_access_token_for(&self, token: &str, audience: &str) -> Option<AccessClaims> {
        let claims = self.key.verify::<AccessClaims>(token, Some(audience), true)?;
        let data = self.data();
        let grant_id = data.access_tokens.get(&claims.jti)?;
        data.grants.get(grant_id).filter(|g| !g.revoked).map(|_| claims)
    }

    /// Whether a refresh token is still usable (for tests that check revocation).
    pub fn refresh_token_active(&self, token: &str) -> bool {
        let data = self.data();
        data.refresh_tokens.get(token).is_some_and(|r| {
            !r.used && r.expires_at >= now_unix() && data.grants.get(&r.grant_id).is_some_and(|g| !g.revoked)
        })
    }

    /// The claims of the user an active access token was issued for: JSON, or with the
    /// `userinfo_signed` quirk a JWT signed by the provider with `iss` and `aud` (OIDC Core
    /// §5.3.2). `None`: the token is not active.
    pub fn userinfo(&self, claims: &AccessClaims) -> Option<Result<UserinfoAnswer, jsonwebtoken::errors::Error>> {
        self.counters.userinfo.fetch_add(1, Ordering::SeqCst);
        let username = claims.sub.strip_prefix("demo|")?.to_string();
        let quirks = self.controls.quirks();
        let (sub, mut profile) = user_claims(if quirks.userinfo_other_sub { "mallory" } else { &username });
        if let Some(obj) = profile.as_object_mut() {
            obj.insert("sub".into(), json!(sub));
        }
        if !quirks.userinfo_signed {
            return Some(Ok(UserinfoAnswer::Json(profile)));
        }
        if let Some(obj) = profile.as_object_mut() {
            obj.insert("iss".into(), json!(self.issuer));
            obj.insert("aud".into(), json!(claims.client_id));
            obj.insert("iat".into(), json!(now_unix()));
        }
        let signed = match self.controls.userinfo_fault() {
            super::UserinfoFault::None | super::UserinfoFault::Unavailable => self.key.sign(&profile, Some("JWT")),
            super::UserinfoFault::BadSignature => match self.rogue_key() {
                Some(rogue) => rogue.sign(&profile, Some("JWT")),
                None => return None,
            },
            super::UserinfoFault::Unsigned => {
                let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
                Ok(format!("{header}.{}.", URL_SAFE_NO_PAD.encode(profile.to_string())))
            }
        };
        Some(signed.map(UserinfoAnswer::Jwt))
    }

    /// RP-initiated logout: ends the provider session (the grants of that `sid`, with
    /// back-channel logout to their clients, or the front-channel URIs the page is to load) and
    /// says where to send the browser, if the client asked for a registered place.
    pub async fn end_session(&self, q: &HashMap<String, String>) -> EndSession {
        self.counters.end_session.fetch_add(1, Ordering::SeqCst);
        #[derive(Deserialize)]
        struct Hint {
            aud: String,
            sub: String,
            sid: Option<String>,
        }
        let hint = q.get("id_token_hint").and_then(|t| self.key.verify::<Hint>(t, None, false));
        // An ID token without `sid` (`sid_is_sub`): the user's live session with that client,
        // as a real provider would find it by its own cookie.
        let sid = hint.as_ref().and_then(|h| {
            h.sid.clone().or_else(|| {
                let data = self.data();
                let username = h.sub.strip_prefix("demo|")?;
                data.grants
                    .values()
                    .find(|g| g.username == username && g.client_id == h.aud && !g.revoked)
                    .map(|g| g.sid.clone())
            })
        });
        // No ID token: `logout_hint` naming a provider session that `client_id` took part in
        // (RP-Initiated Logout leaves the hint's meaning to the provider; this one reads a `sid`.
        // A real provider would also ask the user unless its own cookie names the same session). The grant may be revoked already (the
        // client revokes before it redirects): the provider session outlives it.
        let sid = sid.or_else(|| {
            let wanted = q.get("logout_hint")?;
            let client_id = q.get("client_id")?;
            let data = self.data();
            data.grants.values().any(|g| &g.sid == wanted && &g.client_id == client_id).then(|| wanted.clone())
        });
        let mut frontchannel = Vec::new();
        if let Some(sid) = sid {
            self.data().ended_sessions.push(sid.clone());
            if self.controls.quirks().frontchannel_only {
                frontchannel = self.frontchannel_logout_urls(&sid);
            }
            self.end_provider_session(&sid).await;
        }
        let target = hint.map(|h| h.aud).or_else(|| q.get("client_id").cloned()).and_then(|client_id| {
            let client = self.clients.get(&client_id)?;
            let target = q.get("post_logout_redirect_uri")?;
            if !client.post_logout_redirect_uris.iter().any(|u| u == target) {
                return None;
            }
            let mut url = Url::parse(target).ok()?;
            if let Some(state) = q.get("state") {
                url.query_pairs_mut().append_pair("state", state);
            }
            Some(url)
        });
        EndSession { target, frontchannel }
    }

    /// The URLs the end-session page loads in iframes when the provider session `sid` ends
    /// (OIDC Front-Channel Logout 1.0 §2): each client's `frontchannel_logout_uri` with `iss` and
    /// `sid` — the user's `sub` in place of `sid` with [`super::Quirks::sid_is_sub`]. Tests load
    /// them as the browser would.
    pub fn frontchannel_logout_urls(&self, sid: &str) -> Vec<String> {
        let sid_is_sub = self.controls.quirks().sid_is_sub;
        let mut sessions: Vec<(String, String)> = self
            .data()
            .grants
            .values()
            .filter(|g| g.sid == sid)
            .map(|g| (g.client_id.clone(), if sid_is_sub { user_claims(&g.username).0 } else { sid.to_string() }))
            .collect();
        sessions.sort();
        sessions.dedup();
        sessions
            .into_iter()
            .filter_map(|(client_id, sent_sid)| {
                let mut url = Url::parse(self.clients.get(&client_id)?.frontchannel_logout_uri.as_ref()?).ok()?;
                url.query_pairs_mut().append_pair("iss", &self.issuer).append_pair("sid", &sent_sid);
                Some(url.to_string())
            })
            .collect()
    }

    /// Ends a provider session: its grants are revoked and every client with a back-channel
    /// logout URI gets a logout token (`sid` and `sub`), unless the provider logs out by front
    /// channel only. Returns how many were delivered.
    pub async fn end_provider_session(&self, sid: &str) -> usize {
        let targets: Vec<(String, String)> = {
            let mut data = self.data();
            data.grants
                .values_mut()
                .filter(|g| g.sid == sid && !g.revoked)
                .map(|g| {
                    g.revoked = true;
                    (g.client_id.clone(), user_claims(&g.username).0)
                })
                .collect()
        };
        let mut delivered = 0;
        if self.controls.quirks().frontchannel_only {
            return delivered;
        }
        for (client_id, sub) in targets {
            let Some(uri) = self.clients.get(&client_id).and_then(|c| c.backchannel_logout_uri.clone()) else {
                continue;
            };
            let Ok(token) = self.logout_token(&client_id, Some(&sub), Some(sid)) else { continue };
            let sent = self.http.post(&uri).form(&[("logout_token", token.as_str())]).send().await;
            match sent {
                Ok(res) if res.status().is_success() => {
                    delivered += 1;
                    self.counters.backchannel_ok.fetch_add(1, Ordering::SeqCst);
                }
                Ok(res) => tracing::warn!(status = res.status().as_u16(), "demo idp: back-channel logout refused"),
                Err(e) => tracing::warn!("demo idp: back-channel logout failed: {e}"),
            }
        }
        delivered
    }

    /// An administrator revokes every grant of `username` (no logout token is sent): the next
    /// refresh is refused in the provider's style. Returns how many grants ended.
    pub fn revoke_grants_of(&self, username: &str) -> usize {
        let mut data = self.data();
        let ended = data.grants.values_mut().filter(|g| g.username == username && !g.revoked);
        ended.map(|g| g.revoked = true).count()
    }

    /// Whether RP-initiated logout ended the provider session `sid`.
    pub fn session_ended(&self, sid: &str) -> bool {
        self.data().ended_sessions.iter().any(|s| s == sid)
    }

    /// The provider session (`sid`) of a user's live grants, for tests that end it.
    pub fn session_of(&self, username: &str) -> Option<String> {
        self.data().grants.values().find(|g| g.username == username && !g.revoked).map(|g| g.sid.clone())
    }

    /// A logout token (OIDC Back-Channel Logout 1.0 §2.4) signed by this provider.
    pub fn logout_token(
        &self,
        client_id: &str,
        sub: Option<&str>,
        sid: Option<&str>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.logout_token_typed(client_id, sub, sid, Some("logout+jwt"))
    }

    /// The same with another JWT `typ` header (or none).
    pub fn logout_token_typed(
        &self,
        client_id: &str,
        sub: Option<&str>,
        sid: Option<&str>,
        typ: Option<&str>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = now_unix();
        let mut claims = json!({
            "iss": self.issuer,
            "aud": client_id,
            "iat": now,
            "exp": now + 120,
            "jti": random_token(),
            "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
        });
        if let Some(obj) = claims.as_object_mut() {
            if let Some(sub) = sub {
                obj.insert("sub".into(), json!(sub));
            }
            if let Some(sid) = sid {
                obj.insert("sid".into(), json!(sid));
            }
        }
        self.key.sign(&claims, typ)
    }
}
