//! The OpenID Provider as bff sees it: discovery (retried in the background until it succeeds),
//! the authorization request, code exchange with ID-token validation, refresh, revocation and
//! the end-session URL. One HTTP client, no redirects followed, every call bounded in time.

mod dpop_client;
mod grants;
mod http;
pub mod jwks;
mod login;
mod logout_token;
mod metadata;
mod probe;
mod token_endpoint;
mod userinfo;

pub use http::IdpHttp;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode,
    CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthType, ClientId, ClientSecret, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    IssuerUrl, ProviderMetadata, RedirectUrl,
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::client_keys::ClientKeys;
use crate::config::{AssertionAudience, AuthMethod, Config, ParMode, TokenPolicy, UserinfoMode};

pub use grants::{ClientToken, ExchangeError, Exchanged, GrantToken, RefreshError, Refreshed, Revocation};
pub use login::{CallbackError, LoginResult, PendingLogin, ResponseIssuerError};
pub use logout_token::{LogoutRequest, LogoutTokenError};
pub use probe::{Finding, Severity};
pub use token_endpoint::{Refusal, TokenEndpointError, Verdict};

/// A cause kept as it came (types of the HTTP and discovery layers that bff does not name).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Endpoints outside core discovery that bff uses when the provider has them.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ExtraProviderMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_session_endpoint: Option<String>,
    /// RFC 9207: the provider puts `iss` in every authorization response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_response_iss_parameter_supported: Option<bool>,
    /// RFC 9126.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_authorization_request_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_pushed_authorization_requests: Option<bool>,
    /// RFC 9449 §5.1: the provider takes DPoP proofs signed with these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_signing_alg_values_supported: Option<Vec<String>>,
    /// OIDC Back-Channel Logout 1.0 §2.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backchannel_logout_supported: Option<bool>,
    /// OIDC Front-Channel Logout 1.0 §3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontchannel_logout_supported: Option<bool>,
    /// … and puts `iss` and `sid` in their query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontchannel_logout_session_supported: Option<bool>,
}
impl AdditionalProviderMetadata for ExtraProviderMetadata {}

pub type DiscoveredMetadata = ProviderMetadata<
    ExtraProviderMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// The client typestate after discovery: authorization endpoint known, token and userinfo
/// endpoints "maybe" (discovery may omit them), revocation handled separately.
type DiscoveredClient =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// What discovery produced.
pub struct Provider {
    client: DiscoveredClient,
    revocation_url: Option<Url>,
    end_session_url: Option<Url>,
    jwks_uri: Url,
    /// RFC 9207 advertised: an authorization response without `iss` is refused.
    requires_response_iss: bool,
    /// Where authorization requests are pushed first (RFC 9126), when they are.
    par_url: Option<Url>,
    /// `token_endpoint_auth_signing_alg_values_supported`: what a client assertion may use.
    assertion_algs: Vec<String>,
    /// The ID token algorithms discovery lists that bff accepts (asymmetric only).
    id_token_algs: Vec<CoreJwsSigningAlgorithm>,
    /// What else the metadata says the provider offers, for `check-config --online`.
    offers: probe::Offers,
    /// What the provider says of front-channel logout.
    frontchannel: FrontChannel,
    loaded_at: Instant,
}

/// What a provider's metadata says of OIDC Front-Channel Logout 1.0 (§3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontChannel {
    /// `frontchannel_logout_supported`: it loads its clients' logout URIs in iframes.
    pub supported: bool,
    /// `frontchannel_logout_session_supported`: with `iss` and `sid` in their query.
    pub session_supported: bool,
}

/// Seconds of clock difference tolerated on an ID token's `iat`.
const ID_TOKEN_LEEWAY_SECS: i64 = 30;

impl Provider {
    /// OIDC Core §3.1.3.7 steps 4-5, which the library leaves to its users: with several
    /// audiences `azp` must be present, and when present it must name this client.
    fn check_authorized_party(&self, claims: &openidconnect::core::CoreIdTokenClaims) -> Result<(), String> {
        match claims.authorized_party() {
            Some(azp) if azp.as_str() != self.client.client_id().as_str() => {
                Err(format!("azp names another client ({:?})", azp.as_str()))
            }
            None if claims.audiences().len() > 1 => Err("several audiences and no azp".into()),
            _ => Ok(()),
        }
    }

    /// The ID-token checks (OIDC Core §3.1.3.7): signature with one of `id_token_algs`, `iss`,
    /// `aud`, `exp`, `iat` not in the future, and `azp` = our client when there are several
    /// audiences (the library requires it then). HMAC algorithms are left out: their key would be
    /// the client secret, which a provider that lists them may not mean for ID tokens.
    fn id_token_verifier(&self) -> openidconnect::core::CoreIdTokenVerifier<'_> {
        self.client
            .id_token_verifier()
            .set_allowed_algs(self.id_token_algs.clone())
            .set_other_audience_verifier_fn(|_| true)
            .set_issue_time_verifier_fn(|iat| {
                let latest = chrono::Utc::now() + chrono::Duration::seconds(ID_TOKEN_LEEWAY_SECS);
                if iat > latest { Err(format!("issued in the future ({iat})")) } else { Ok(()) }
            })
    }
}

/// Failures talking to the provider, by what the caller should do about them.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("identity provider metadata not loaded yet")]
    NotReady,
    #[error("discovery failed")]
    Discovery(#[source] BoxError),
    /// A setup mistake, not an outage: said as such, with the fix.
    #[error(
        "configuration error: oidc.issuer is {configured:?} but the provider's discovery document says its issuer is \
         {advertised:?}; set oidc.issuer to exactly {advertised:?} (issuers are compared character for character, \
         a trailing slash included)"
    )]
    IssuerMismatch { configured: String, advertised: String },
    #[error("the provider's metadata names no token endpoint")]
    NoTokenEndpoint(#[source] openidconnect::ConfigurationError),
    #[error("the token endpoint failed")]
    TokenEndpoint(#[from] TokenEndpointError),
    #[error("the revocation request failed")]
    Revocation(#[source] TokenEndpointError),
    /// bff sends access tokens as it was configured to (`Bearer`, or `DPoP` with `oidc.dpop`);
    /// one of another type is never used.
    #[error("the token response's token_type is {0:?}, not the one expected")]
    UnsupportedTokenType(String),
    #[error("DPoP")]
    Dpop(#[from] crate::dpop::DpopError),
    #[error("the provider's signing keys cannot be fetched")]
    Keys(#[source] reqwest::Error),
    #[error(
        "configuration error: oidc.par = \"required\" but the provider's metadata names no \
         pushed_authorization_request_endpoint (RFC 9126); enable pushed authorization requests at the provider, \
         or set oidc.par = \"auto\""
    )]
    ParNotOffered,
    #[error(
        "configuration error: the provider requires pushed authorization requests \
         (require_pushed_authorization_requests) but oidc.par = \"off\"; set oidc.par = \"auto\""
    )]
    ParRequiredByProvider,
    #[error(
        "configuration error: oidc.dpop = true but the provider's metadata does not list ES256 in \
         dpop_signing_alg_values_supported (RFC 9449); enable DPoP at the provider, or set oidc.dpop = false"
    )]
    DpopNotOffered,
    /// With `oidc.userinfo = "always"`.
    #[error(
        "configuration error: oidc.userinfo is \"always\" but the provider's metadata names no userinfo_endpoint; \
         set oidc.userinfo = \"auto\" or \"never\""
    )]
    UserinfoNotOffered,
    #[error("the userinfo endpoint failed: {0}")]
    Userinfo(String),
    #[error("the client assertion cannot be signed")]
    ClientAssertion(#[source] jsonwebtoken::errors::Error),
    #[error("the pushed authorization request failed")]
    Push(#[source] TokenEndpointError),
}

impl OidcError {
    /// The provider answers, but not as the configuration expects: reported by `/readyz` and
    /// `bff check-config --online` with the fix.
    pub fn is_setup_problem(&self) -> bool {
        matches!(
            self,
            OidcError::IssuerMismatch { .. }
                | OidcError::ParNotOffered
                | OidcError::ParRequiredByProvider
                | OidcError::DpopNotOffered
                | OidcError::UserinfoNotOffered
        )
    }

    /// What an answer of an endpoint that authenticated bff means; anything else (no metadata,
    /// a key that cannot sign) is worth trying again.
    pub fn verdict(&self) -> Verdict {
        match self {
            OidcError::TokenEndpoint(e) | OidcError::Revocation(e) | OidcError::Push(e) => e.verdict(),
            _ => Verdict::Transient,
        }
    }
}

/// Do not refetch the JWKS for an unknown key more often than this.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// How bff proves it is the client.
enum Credential {
    Secret(ClientSecret),
    Keys(ClientKeys),
}

impl Credential {
    fn secret(&self) -> Option<ClientSecret> {
        match self {
            Credential::Secret(secret) => Some(secret.clone()),
            Credential::Keys(_) => None,
        }
    }
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub struct Oidc {
    issuer: IssuerUrl,
    client_id: ClientId,
    credential: Credential,
    auth_type: AuthType,
    auth_method: AuthMethod,
    /// What client assertions name as `aud`.
    assertion_audience: AssertionAudience,
    /// When sign-in asks the userinfo endpoint for the user's claims.
    userinfo: UserinfoMode,
    redirect_uri: RedirectUrl,
    scopes: Vec<String>,
    extra_auth_params: Vec<(String, String)>,
    /// The `resource` of routes that carry a user's token, named in the authorization request
    /// (RFC 8707 §2.1): providers that implement resource indicators grant only those.
    user_resources: Vec<String>,
    /// Some route exchanges users' tokens (`token = "exchange"`), which the provider must offer.
    exchanges: bool,
    par: ParMode,
    /// RFC 9449: token requests carry a proof of the session's key; tokens are `DPoP`.
    dpop: bool,
    /// The provider's last `DPoP-Nonce` (RFC 9449 §8), sent with the next proofs.
    dpop_nonce: std::sync::Mutex<Option<String>>,
    http: IdpHttp,
    /// `oidc.revocation_endpoint`: wins over whatever the provider's metadata says.
    configured_revocation_url: Option<Url>,
    /// The "logout will not revoke" warning is given once, not at every rediscovery.
    warned_no_revocation: std::sync::atomic::AtomicBool,
    /// The "no refresh token although offline_access was asked for" warning, once per process.
    warned_no_refresh_token: std::sync::atomic::AtomicBool,
    provider: RwLock<Option<Arc<Provider>>>,
    /// The configuration problem the last discovery found, for `/readyz` and `check-config`.
    setup_problem: RwLock<Option<String>>,
    /// The provider's last refusal of bff's client authentication, until a call succeeds.
    client_auth_refused: RwLock<Option<String>>,
    /// Checks logout tokens against the provider's JWKS (made on first use).
    logout_verifier: std::sync::Mutex<Option<(Url, Arc<jwks::JwksVerifier>)>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc").field("issuer", &self.issuer.as_str()).field("ready", &self.is_ready()).finish()
    }
}

impl Oidc {
    pub fn new(config: &Config) -> Result<Oidc, anyhow::Error> {
        Ok(Oidc {
            issuer: IssuerUrl::new(config.oidc.issuer.clone())?,
            client_id: ClientId::new(config.oidc.client_id.clone()),
            credential: match (&config.oidc.client_keys, &config.oidc.client_secret) {
                (Some(keys), _) => Credential::Keys(keys.clone()),
                (None, Some(secret)) => Credential::Secret(ClientSecret::new(secret.expose_secret().to_string())),
                (None, None) => anyhow::bail!("oidc: neither a client secret nor client keys"),
            },
            auth_type: match config.oidc.auth_method {
                AuthMethod::ClientSecretBasic => AuthType::BasicAuth,
                // With an assertion, oauth2 sends client_id in the body and no secret.
                AuthMethod::ClientSecretPost | AuthMethod::PrivateKeyJwt => AuthType::RequestBody,
            },
            auth_method: config.oidc.auth_method,
            assertion_audience: config.oidc.client_assertion_audience,
            userinfo: config.oidc.userinfo,
            redirect_uri: RedirectUrl::new(config.redirect_uri())?,
            scopes: config.oidc.scopes.clone(),
            extra_auth_params: config.oidc.extra_auth_params.clone().into_iter().collect(),
            exchanges: config.api.iter().any(|api| api.token == TokenPolicy::Exchange),
            user_resources: {
                let mut resources: Vec<String> = config
                    .api
                    .iter()
                    .filter(|api| matches!(api.token, TokenPolicy::User | TokenPolicy::UserOrNone))
                    .filter_map(|api| api.resource.clone())
                    .collect();
                resources.sort();
                resources.dedup();
                resources
            },
            par: config.oidc.par,
            dpop: config.oidc.dpop,
            dpop_nonce: std::sync::Mutex::new(None),
            http: IdpHttp::new(config.oidc.timeout)?,
            configured_revocation_url: config.oidc.revocation_endpoint.clone(),
            warned_no_revocation: std::sync::atomic::AtomicBool::new(false),
            warned_no_refresh_token: std::sync::atomic::AtomicBool::new(false),
            provider: RwLock::new(None),
            setup_problem: RwLock::new(None),
            client_auth_refused: RwLock::new(None),
            logout_verifier: std::sync::Mutex::new(None),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.provider.read().map(|p| p.is_some()).unwrap_or(false)
    }

    fn provider(&self) -> Result<Arc<Provider>, OidcError> {
        self.provider.read().ok().and_then(|p| p.clone()).ok_or(OidcError::NotReady)
    }

    /// Fetches the discovery document and the JWKS; the issuer must match the configured one.
    pub async fn discover(&self) -> Result<(), OidcError> {
        let result = self.load_metadata().await;
        let problem = match &result {
            Err(e) if e.is_setup_problem() => Some(e.to_string()),
            _ => None,
        };
        if let Ok(mut slot) = self.setup_problem.write() {
            *slot = problem;
        }
        result
    }

    /// A configuration problem discovery found (the provider answers, but not as configured).
    pub fn setup_problem(&self) -> Option<String> {
        self.setup_problem.read().ok().and_then(|p| p.clone())
    }

    /// The provider refused bff's client authentication at its last authenticated call: every
    /// sign-in and refresh fails until the configuration (or the registration) is fixed.
    pub fn client_auth_problem(&self) -> Option<String> {
        self.client_auth_refused.read().ok().and_then(|p| p.clone())
    }

    /// A failed oauth2 token request read with its recorded answer (`TokenEndpointError::read`),
    /// and what it said of bff's credentials kept (`note_client_auth`): every token request's
    /// answer goes through here.
    fn read_answer<T>(
        &self,
        answer: Result<T, token_endpoint::RequestError>,
        recorder: &token_endpoint::Recorder<'_>,
    ) -> Result<T, TokenEndpointError> {
        let answer = answer.map_err(|e| TokenEndpointError::read(e, recorder, self.auth_method));
        self.note_client_auth(answer.as_ref().map(|_| ()));
        answer
    }

    /// Keeps what an authenticated call (token, PAR, revocation) said of bff's credentials: a
    /// success clears an earlier refusal, a refusal of the credentials is kept and logged as an
    /// error once.
    fn note_client_auth(&self, outcome: Result<(), &TokenEndpointError>) {
        let Ok(mut slot) = self.client_auth_refused.write() else { return };
        match outcome {
            Ok(()) => {
                if slot.take().is_some() {
                    tracing::info!("the provider accepts bff's client authentication again");
                }
            }
            Err(e) if e.verdict() == Verdict::ClientAuth => {
                if slot.is_none() {
                    tracing::error!("{e}");
                }
                *slot = Some(format!("{e}"));
            }
            Err(_) => {}
        }
    }

    /// The `issuer` the provider's discovery document names, read without validating it.
    async fn advertised_issuer(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Issuer {
            issuer: String,
        }
        let url = self.issuer.join(".well-known/openid-configuration").ok()?;
        let doc: Issuer = self.http.send(self.http.get(url)).await.ok()?.json().await.ok()?;
        Some(doc.issuer)
    }

    async fn load_metadata(&self) -> Result<(), OidcError> {
        let metadata = match DiscoveredMetadata::discover_async(self.issuer.clone(), &self.http).await {
            Ok(metadata) => metadata,
            Err(e) => {
                if matches!(e, openidconnect::DiscoveryError::Validation(_))
                    && let Some(advertised) = self.advertised_issuer().await
                    && advertised != self.issuer.as_str()
                {
                    return Err(OidcError::IssuerMismatch { configured: self.issuer.to_string(), advertised });
                }
                return Err(OidcError::Discovery(Box::new(e)));
            }
        };
        let parse_optional = |raw: &Option<String>, what: &str| -> Option<Url> {
            let raw = raw.as_ref()?;
            Url::parse(raw).map_err(|e| tracing::warn!("ignoring the provider's {what} ({e})")).ok()
        };
        let extra = metadata.additional_metadata();
        let mut revocation_url = self
            .configured_revocation_url
            .clone()
            .or_else(|| parse_optional(&extra.revocation_endpoint, "revocation_endpoint"));
        if revocation_url.is_none()
            && let Some(more) = metadata::fetch(&self.http, self.issuer.as_str()).await
        {
            revocation_url = parse_optional(&more.revocation_endpoint, "RFC 8414 revocation_endpoint");
        }
        if revocation_url.is_none() && !self.warned_no_revocation.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "the provider names no revocation endpoint (neither in OpenID discovery nor in RFC 8414 metadata): \
                 logout will not revoke refresh tokens at the provider; set oidc.revocation_endpoint if it has one"
            );
        }
        let end_session_url = parse_optional(&extra.end_session_endpoint, "end_session_endpoint");
        let requires_response_iss = extra.authorization_response_iss_parameter_supported == Some(true);
        let frontchannel = FrontChannel {
            supported: extra.frontchannel_logout_supported == Some(true),
            session_supported: extra.frontchannel_logout_session_supported == Some(true),
        };
        let dpop_offered =
            extra.dpop_signing_alg_values_supported.as_ref().is_some_and(|algs| algs.iter().any(|a| a == "ES256"));
        if self.dpop && !dpop_offered {
            return Err(OidcError::DpopNotOffered);
        }
        if self.userinfo == UserinfoMode::Always && metadata.userinfo_endpoint().is_none() {
            return Err(OidcError::UserinfoNotOffered);
        }
        let offered_par =
            parse_optional(&extra.pushed_authorization_request_endpoint, "pushed_authorization_request_endpoint");
        let par_url = match (self.par, offered_par) {
            (ParMode::Off, _) if extra.require_pushed_authorization_requests == Some(true) => {
                return Err(OidcError::ParRequiredByProvider);
            }
            (ParMode::Off, _) => None,
            (ParMode::Required, None) => return Err(OidcError::ParNotOffered),
            (_, offered) => offered,
        };
        let id_token_algs: Vec<CoreJwsSigningAlgorithm> = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|alg| {
                !matches!(
                    alg,
                    CoreJwsSigningAlgorithm::HmacSha256
                        | CoreJwsSigningAlgorithm::HmacSha384
                        | CoreJwsSigningAlgorithm::HmacSha512
                        | CoreJwsSigningAlgorithm::None
                )
            })
            .cloned()
            .collect();
        if id_token_algs.is_empty() {
            tracing::error!(
                "the provider lists no asymmetric ID token algorithm (id_token_signing_alg_values_supported); \
                 every sign-in will fail"
            );
        }
        let jwks_uri = metadata.jwks_uri().url().clone();
        let assertion_algs: Vec<String> = metadata
            .token_endpoint_auth_signing_alg_values_supported()
            .map(|algs| algs.iter().filter_map(|a| serde_json::to_value(a).ok()?.as_str().map(String::from)).collect())
            .unwrap_or_default();
        let offers = probe::Offers::read(&metadata, revocation_url.is_some());
        let client = CoreClient::from_provider_metadata(metadata, self.client_id.clone(), self.credential.secret())
            .set_redirect_uri(self.redirect_uri.clone())
            .set_auth_type(self.auth_type.clone());
        let provider = Provider {
            client,
            revocation_url,
            end_session_url,
            jwks_uri,
            requires_response_iss,
            par_url,
            assertion_algs,
            id_token_algs,
            offers,
            frontchannel,
            loaded_at: Instant::now(),
        };
        if let Ok(mut slot) = self.provider.write() {
            *slot = Some(Arc::new(provider));
        }
        Ok(())
    }

    /// The `client_assertion_type` and `client_assertion` fields of a request to `endpoint`, with
    /// `private_key_jwt`; `None` with a client secret. Its `aud` is the issuer, or with
    /// `client_assertion_audience = "endpoint"` the URL of `endpoint`, the one receiving it.
    fn client_assertion(
        &self,
        provider: &Provider,
        endpoint: &str,
    ) -> Result<Option<[(&'static str, String); 2]>, OidcError> {
        let Credential::Keys(keys) = &self.credential else { return Ok(None) };
        let audience = match self.assertion_audience {
            AssertionAudience::Issuer => self.issuer.as_str(),
            AssertionAudience::Endpoint => endpoint,
        };
        let jwt = keys
            .assertion(self.client_id.as_str(), audience, &provider.assertion_algs, crate::session::now_unix())
            .map_err(OidcError::ClientAssertion)?;
        Ok(Some([("client_assertion_type", JWT_BEARER.to_string()), ("client_assertion", jwt)]))
    }

    /// The token endpoint's URL (discovery may omit it: then no token request is made at all).
    fn token_url(provider: &Provider) -> &str {
        provider.client.token_uri().map_or("", |url| url.as_str())
    }

    /// Keeps trying discovery until it succeeds: a bff that starts before its provider is normal.
    pub async fn discover_until_ready(self: Arc<Self>) {
        let mut delay = Duration::from_millis(500);
        loop {
            match self.discover().await {
                Ok(()) => {
                    tracing::info!(issuer = self.issuer.as_str(), "identity provider metadata loaded");
                    return;
                }
                Err(e @ OidcError::IssuerMismatch { .. }) => {
                    tracing::error!(retry_in_ms = delay.as_millis() as u64, "{e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    tracing::warn!(
                        issuer = self.issuer.as_str(),
                        retry_in_ms = delay.as_millis() as u64,
                        "{}",
                        crate::telemetry::error_chain(&e)
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Re-reads discovery and the JWKS after an ID token named a key we do not know (key
    /// rotation), at most once per interval. True when fresh keys were loaded.
    async fn refresh_keys(&self) -> bool {
        let stale = self.provider().map(|p| p.loaded_at.elapsed() > JWKS_REFETCH_INTERVAL).unwrap_or(true);
        stale && self.discover().await.is_ok()
    }

    /// A sign-in that asked for `offline_access` came without a refresh token: its session ends
    /// when the access token expires. Warned once per process (it is the provider's setup, the
    /// same for every sign-in); true when so, for the counter.
    pub fn refresh_token_withheld(&self, login: &LoginResult) -> bool {
        if login.refresh_token.is_some() || !self.scopes.iter().any(|s| s == "offline_access") {
            return false;
        }
        if !self.warned_no_refresh_token.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                access_token_expires_in_secs = login.expires_in.map(|d| d.as_secs()),
                "the provider issued no refresh token although oidc.scopes asks for offline_access: sessions end \
                 when their access token expires; enable the refresh_token grant (and offline access) for client \
                 {:?} at the provider, or remove offline_access from oidc.scopes",
                self.client_id.as_str()
            );
        }
        true
    }

    /// What the provider's metadata says of front-channel logout; `None` until it is loaded.
    /// (Also what a configuration check can list as missing at the provider.)
    pub fn frontchannel(&self) -> Option<FrontChannel> {
        self.provider().ok().map(|p| p.frontchannel)
    }

    /// Whether a front-channel logout request must carry `sid` (and `iss`): the provider says it
    /// sends them (`frontchannel_logout_session_supported`). `None` until the metadata is loaded.
    pub fn frontchannel_session_required(&self) -> Option<bool> {
        self.frontchannel().map(|f| f.session_supported)
    }

    /// Whether `iss` names this provider, exactly as configured (OIDC Front-Channel Logout §2).
    pub fn is_issuer(&self, iss: &str) -> bool {
        iss == self.issuer.as_str()
    }

    /// The provider's origin (scheme, host, port of the issuer URL), the one page that may frame
    /// bff's front-channel logout answer.
    pub fn origin(&self) -> String {
        self.issuer.url().origin().ascii_serialization()
    }

    /// The RP-initiated logout URL, when the provider has an end-session endpoint. The browser
    /// carries it: whatever `hint` puts in it lands in its history and the provider's logs.
    pub fn end_session_url(&self, hint: LogoutHint<'_>, post_logout_redirect: &Url) -> Option<Url> {
        let provider = self.provider().ok()?;
        let mut url = provider.end_session_url.clone()?;
        {
            let mut q = url.query_pairs_mut();
            match hint {
                LogoutHint::IdToken(token) => {
                    q.append_pair("id_token_hint", token);
                }
                LogoutHint::ProviderSession(sid) => {
                    q.append_pair("logout_hint", sid);
                }
                LogoutHint::None => {}
            }
            q.append_pair("post_logout_redirect_uri", post_logout_redirect.as_str());
            q.append_pair("client_id", self.client_id.as_str());
        }
        Some(url)
    }
}

/// What the end-session URL tells the provider about the session that ends (RP-Initiated
/// Logout 1.0 §2; `client_id` is always sent).
#[derive(Debug, Clone, Copy)]
pub enum LogoutHint<'a> {
    /// `id_token_hint`: lets providers end the session without asking the user, at the price of
    /// the ID token (the user's claims, not a credential for APIs) in the browser's URL.
    IdToken(&'a str),
    /// `logout_hint` = the provider session's `sid`, which several providers accept with
    /// `client_id`.
    ProviderSession(&'a str),
    /// Nothing known: the provider asks the user or goes by its own cookie.
    None,
}

/// Who is signed in, as the SPA may see it: claims only, never a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserInfo {
    pub sub: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// A raw ID token (a JWT). Its `Debug` is redacted; it leaves bff only as `id_token_hint`
/// (unless `oidc.logout_id_token_hint = false`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawIdToken(String);

impl std::fmt::Debug for RawIdToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawIdToken([redacted])")
    }
}

impl RawIdToken {
    pub fn new(jwt: String) -> RawIdToken {
        RawIdToken(jwt)
    }

    /// # Security Warning
    /// Only for the `id_token_hint` of the end-session redirect.
    pub fn secret(&self) -> &str {
        &self.0
    }
}
