//! The demo OpenID Provider: discovery, JWKS, authorization (a login page, or an automatic
//! sign-in for tests), token (authorization_code with PKCE, refresh_token with rotation and
//! reuse detection, client credentials, token exchange), revocation, userinfo and end-session, over real HTTP.
//!
//! Demo and test fixture only; never a production identity provider.

pub mod dpop;
mod handlers;
mod keys;
mod provider;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};

pub use keys::SigningKey;
pub use provider::{ACR_PASSWORD, ACR_SECOND_FACTOR, AccessClaims, Authentication, Provider, user_claims};

use crate::config::AuthMethod;
use crate::pages::Pages;

/// A client registered at the demo provider.
#[derive(Debug, Clone)]
pub struct Client {
    pub client_id: String,
    pub client_secret: String,
    /// The one method this client must authenticate with, as real registrations do.
    pub auth_method: AuthMethod,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// Where logout tokens go when the provider session ends (OIDC Back-Channel Logout).
    pub backchannel_logout_uri: Option<String>,
    /// What the end-session page loads in an iframe, with `iss` and `sid`, when the provider
    /// logs out by front channel (OIDC Front-Channel Logout; [`Quirks::frontchannel_only`]).
    pub frontchannel_logout_uri: Option<String>,
}

/// What the token endpoint does instead of answering properly (tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    None,
    /// 503 with an HTML body, like a load balancer in trouble.
    Unavailable,
    /// Never answers.
    Hang,
    /// 400 `invalid_grant`, as if the grant were revoked.
    InvalidGrant,
    /// Answers with a `token_type` other than `Bearer`.
    NotBearer,
}

/// How the next login's ID token is spoiled (tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenFault {
    None,
    WrongNonce,
    Expired,
    BadSignature,
    WrongAudience,
    WrongIssuer,
    /// `aud` has a second audience and `azp` names the client (valid).
    ExtraAudienceWithAzp,
    /// `aud` has a second audience and no `azp` (OIDC Core §3.1.3.7: refused).
    ExtraAudienceWithoutAzp,
    /// `at_hash` of another access token.
    WrongAtHash,
    /// `iat` an hour ahead.
    IssuedInFuture,
}

/// Switches tests (and the demo) flip at run time.
/// Ways real providers differ from the demo's defaults, switched on by tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quirks {
    /// The revocation endpoint is listed in RFC 8414 metadata only, not in OpenID discovery.
    pub revocation_only_in_rfc8414: bool,
    /// Discovery names the issuer with a trailing `/` (a common cause of "issuer mismatch").
    pub issuer_with_trailing_slash: bool,
    /// RFC 9207: `iss` in the authorization response, advertised in discovery.
    pub iss_in_authorization_response: bool,
    /// RFC 9126: a pushed authorization request endpoint, advertised in discovery.
    pub par_offered: bool,
    /// RFC 9126 §5: authorization requests only by reference to a pushed one (implies offered).
    pub par_required: bool,
    /// Discovery does not list `dpop_signing_alg_values_supported` (a provider without DPoP).
    pub no_dpop_in_metadata: bool,
    /// How a grant that is over (refresh token revoked, expired, reused; a used code) is refused.
    pub grant_refusal: GrantRefusal,
    /// How a client whose authentication fails is refused, at the token and PAR endpoints.
    pub client_auth_refusal: ClientAuthRefusal,
    /// A pushed authorization request must carry a DPoP proof (RFC 9449 §10.1), as providers
    /// that require DPoP-bound clients do.
    pub dpop_required_at_par: bool,
    /// No refresh token is issued, even when `offline_access` was granted (a client without the
    /// refresh_token grant enabled).
    pub no_refresh_tokens: bool,
    /// A client assertion's `aud` must be the URL of the endpoint receiving it (`/token`,
    /// `/par`, `/revoke`), not the issuer (Glewlwyd).
    pub assertion_aud_endpoint_only: bool,
    /// The ID token carries no profile or email claims; `/userinfo` has them (a common default).
    pub profile_only_in_userinfo: bool,
    /// `/userinfo` answers with another user's `sub` (OIDC Core §5.3.2: must be refused).
    pub userinfo_other_sub: bool,
    /// `/userinfo` answers a signed JWT (`application/jwt`, with `iss` and `aud`).
    pub userinfo_signed: bool,
    /// Discovery names no `userinfo_endpoint`.
    pub no_userinfo_endpoint: bool,
    /// Sign-out reaches clients by front channel only (OIDC Front-Channel Logout 1.0): discovery
    /// advertises `frontchannel_logout_supported` and `frontchannel_logout_session_supported`,
    /// no back-channel logout URI is called, and the end-session page loads each client's
    /// `frontchannel_logout_uri` in an iframe.
    pub frontchannel_only: bool,
    /// ID tokens carry no `sid`, and the front-channel `sid` is the user's `sub` (a provider seen
    /// in the wild).
    pub sid_is_sub: bool,
    /// No token exchange (RFC 8693): discovery does not list the grant, the token endpoint
    /// answers it `unsupported_grant_type`.
    pub no_token_exchange: bool,
}

impl Quirks {
    /// The demo's own behaviour (`Default`, usable in `const` items).
    pub const NONE: Quirks = Quirks {
        revocation_only_in_rfc8414: false,
        issuer_with_trailing_slash: false,
        iss_in_authorization_response: false,
        par_offered: false,
        par_required: false,
        no_dpop_in_metadata: false,
        grant_refusal: GrantRefusal::InvalidGrant,
        client_auth_refusal: ClientAuthRefusal::InvalidClient,
        dpop_required_at_par: false,
        no_refresh_tokens: false,
        assertion_aud_endpoint_only: false,
        profile_only_in_userinfo: false,
        userinfo_other_sub: false,
        userinfo_signed: false,
        no_userinfo_endpoint: false,
        frontchannel_only: false,
        sid_is_sub: false,
        no_token_exchange: false,
    };
}

/// How the token endpoint says a grant is over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GrantRefusal {
    /// 400 `invalid_grant` (RFC 6749 §5.2).
    #[default]
    InvalidGrant,
    /// 400 `invalid_request` (LemonLDAP::NG, for a refresh whose SSO session ended).
    InvalidRequest,
    /// 400 with an empty body (Glewlwyd).
    EmptyBody,
}

/// How an endpoint that authenticates clients refuses a bad one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientAuthRefusal {
    /// 401 `invalid_client` (RFC 6749 §5.2).
    #[default]
    InvalidClient,
    /// 403 with no body (Glewlwyd at its PAR endpoint).
    ForbiddenEmpty,
    /// 400 `unauthorized_client` (seen at a code exchange with a wrong secret).
    UnauthorizedClient,
}

/// How `/userinfo` answers badly (tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserinfoFault {
    None,
    /// 503, like a provider in trouble.
    Unavailable,
    /// With `Quirks::userinfo_signed`: signed by a key the provider does not publish.
    BadSignature,
    /// With `Quirks::userinfo_signed`: `alg: none`, no signature.
    Unsigned,
}

pub struct Controls {
    quirks: Mutex<Quirks>,
    refresh_reuse_grace_secs: AtomicU64,
    /// The next token answer is made, then held back this long (an answer lost to a timeout).
    hold_next_token_answer: Mutex<Option<Duration>>,
    access_token_ttl_secs: AtomicU64,
    refresh_token_ttl_secs: AtomicU64,
    auto_login: Mutex<Option<String>>,
    token_fault: Mutex<TokenFault>,
    id_token_fault: Mutex<IdTokenFault>,
    authorize_error: Mutex<Option<String>>,
    /// Resources (RFC 8707) answered `invalid_target`.
    refused_resources: Mutex<Vec<String>>,
    /// Audiences a token exchange (RFC 8693) is refused for (`invalid_target`).
    refused_exchanges: Mutex<Vec<String>>,
    /// The public keys `private_key_jwt` clients sign with (their registered JWKS).
    client_jwks: Mutex<Vec<serde_json::Value>>,
    /// The token endpoint asks DPoP proofs for its nonce.
    dpop_nonce_required: std::sync::atomic::AtomicBool,
    userinfo_fault: Mutex<UserinfoFault>,
}

fn read<T: Clone>(m: &Mutex<T>) -> T {
    m.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(m: &Mutex<T>, value: T) {
    *m.lock().unwrap_or_else(|p| p.into_inner()) = value;
}

impl Controls {
    pub fn new(access_token_ttl: Duration) -> Controls {
        Controls {
            quirks: Mutex::new(Quirks::default()),
            refresh_reuse_grace_secs: AtomicU64::new(0),
            hold_next_token_answer: Mutex::new(None),
            access_token_ttl_secs: AtomicU64::new(access_token_ttl.as_secs()),
            refresh_token_ttl_secs: AtomicU64::new(86_400),
            auto_login: Mutex::new(None),
            token_fault: Mutex::new(TokenFault::None),
            id_token_fault: Mutex::new(IdTokenFault::None),
            authorize_error: Mutex::new(None),
            refused_resources: Mutex::new(Vec::new()),
            refused_exchanges: Mutex::new(Vec::new()),
            client_jwks: Mutex::new(Vec::new()),
            dpop_nonce_required: std::sync::atomic::AtomicBool::new(false),
            userinfo_fault: Mutex::new(UserinfoFault::None),
        }
    }

    /// How long a rotated-out refresh token may still be used (0: reuse revokes the grant).
    pub fn set_refresh_reuse_grace(&self, grace: Duration) {
        self.refresh_reuse_grace_secs.store(grace.as_secs(), Ordering::SeqCst);
    }

    pub fn refresh_reuse_grace(&self) -> Duration {
        Duration::from_secs(self.refresh_reuse_grace_secs.load(Ordering::SeqCst))
    }

    pub fn hold_next_token_answer(&self, hold: Duration) {
        write(&self.hold_next_token_answer, Some(hold));
    }

    fn take_token_answer_hold(&self) -> Option<Duration> {
        self.hold_next_token_answer.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub fn set_quirks(&self, quirks: Quirks) {
        write(&self.quirks, quirks);
    }

    pub fn quirks(&self) -> Quirks {
        read(&self.quirks)
    }

    pub fn access_token_ttl(&self) -> Duration {
        Duration::from_secs(self.access_token_ttl_secs.load(Ordering::SeqCst))
    }

    pub fn set_access_token_ttl(&self, ttl: Duration) {
        self.access_token_ttl_secs.store(ttl.as_secs(), Ordering::SeqCst);
    }

    pub fn refresh_token_ttl(&self) -> Duration {
        Duration::from_secs(self.refresh_token_ttl_secs.load(Ordering::SeqCst))
    }

    /// Sign this user in at `/authorize` without showing the login page.
    pub fn set_auto_login(&self, username: Option<&str>) {
        write(&self.auto_login, username.map(String::from));
    }

    pub fn auto_login(&self) -> Option<String> {
        read(&self.auto_login)
    }

    pub fn set_token_fault(&self, fault: TokenFault) {
        write(&self.token_fault, fault);
    }

    pub fn token_fault(&self) -> TokenFault {
        read(&self.token_fault)
    }

    pub fn set_id_token_fault(&self, fault: IdTokenFault) {
        write(&self.id_token_fault, fault);
    }

    pub fn id_token_fault(&self) -> IdTokenFault {
        read(&self.id_token_fault)
    }

    /// Answer the next authorization requests with `error=<code>`.
    pub fn set_authorize_error(&self, error: Option<&str>) {
        write(&self.authorize_error, error.map(String::from));
    }

    pub fn authorize_error(&self) -> Option<String> {
        read(&self.authorize_error)
    }

    pub fn set_userinfo_fault(&self, fault: UserinfoFault) {
        write(&self.userinfo_fault, fault);
    }

    pub fn userinfo_fault(&self) -> UserinfoFault {
        read(&self.userinfo_fault)
    }

    pub fn require_dpop_nonce(&self, required: bool) {
        self.dpop_nonce_required.store(required, Ordering::SeqCst);
    }

    pub fn requires_dpop_nonce(&self) -> bool {
        self.dpop_nonce_required.load(Ordering::SeqCst)
    }

    /// Registers the keys (a JWK Set's `keys`) that `private_key_jwt` clients sign with.
    pub fn set_client_jwks(&self, jwks: &serde_json::Value) {
        write(&self.client_jwks, jwks["keys"].as_array().cloned().unwrap_or_default());
    }

    pub fn client_jwks(&self) -> Vec<serde_json::Value> {
        read(&self.client_jwks)
    }

    /// Answer token requests for `resource` with `invalid_target` (a grant that does not cover it).
    pub fn refuse_resource(&self, resource: &str) {
        self.refused_resources.lock().unwrap_or_else(|p| p.into_inner()).push(resource.to_string());
    }

    pub fn refuses_resource(&self, resource: &str) -> bool {
        self.refused_resources.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|r| r == resource)
    }

    /// Answer token exchanges for `audience` (or that resource) with `invalid_target`.
    pub fn refuse_exchange(&self, audience: &str) {
        self.refused_exchanges.lock().unwrap_or_else(|p| p.into_inner()).push(audience.to_string());
    }

    pub fn refuses_exchange(&self, audience: &str) -> bool {
        self.refused_exchanges.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|a| a == audience)
    }
}

pub struct IdpConfig {
    pub clients: Vec<Client>,
    pub access_token_ttl: Duration,
    /// The `aud` of access tokens (what the demo API checks).
    pub api_audience: String,
    pub templates_dir: PathBuf,
}

/// A running provider: its issuer URL, its state and switches, and a handle to stop it.
#[derive(Clone)]
pub struct RunningIdp {
    pub issuer: String,
    pub provider: Arc<Provider>,
    pub controls: Arc<Controls>,
    pub handle: ServerHandle,
}

/// Starts the provider on `listener` (issuer `http://<its address>`). The returned server must
/// be awaited or spawned.
pub fn start(config: IdpConfig, listener: TcpListener) -> Result<(RunningIdp, Server), anyhow::Error> {
    let addr = listener.local_addr()?;
    let issuer = format!("http://{addr}");
    let controls = Arc::new(Controls::new(config.access_token_ttl));
    let provider = Arc::new(Provider::new(
        issuer.clone(),
        SigningKey::generate("demo-key")?,
        config.clients,
        Arc::clone(&controls),
        config.api_audience,
    ));
    let pages = web::Data::new(Pages::load(&config.templates_dir, "/style.css")?);
    let data = web::Data::from(Arc::clone(&provider));
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).app_data(pages.clone()).configure(handlers::configure)
    })
    .workers(2)
    .tcp_nodelay(true)
    .disable_signals()
    .listen(listener)?
    .run();
    let running = RunningIdp { issuer, provider, controls, handle: server.handle() };
    Ok((running, server))
}
