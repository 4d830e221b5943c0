//! Configuration: one TOML file plus `BFF_<SECTION>__<KEY>` environment overrides, validated once
//! into typed values. Every problem is reported at once, each naming its key path.

mod load;
mod print;
mod sections;
mod walker;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

pub use load::{ConfigError, ConfigErrors, ConfigSource};

/// The validated configuration. Fields are public so tests can build and adjust it in code.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub oidc: OidcConfig,
    pub session: SessionConfig,
    pub tokens: TokensConfig,
    pub api: Vec<ApiConfig>,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    pub level: String,
}

/// OpenTelemetry traces. Each `None` leaves the choice to the standard `OTEL_*` variables.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP collector, as `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` is added).
    pub otlp_endpoint: Option<Url>,
    pub service_name: Option<String>,
    /// Parent-based ratio sampling of the traces bff starts.
    pub sampling_ratio: Option<f64>,
    /// A browser's `traceparent`/`tracestate` are believed (bff's spans join that trace).
    pub trust_incoming_trace_context: bool,
}

impl TelemetryConfig {
    pub const DEFAULT_SERVICE_NAME: &'static str = "bff";
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The origin the browser sees, without a trailing slash.
    pub public_url: Url,
    /// `None` serves no SPA.
    pub static_dir: Option<PathBuf>,
    pub templates_dir: PathBuf,
    /// Worker threads; 0 = one per CPU.
    pub workers: usize,
    /// Serve `/metrics` on this address instead of the main listener.
    pub metrics_listen: Option<SocketAddr>,
    /// On SIGTERM/SIGINT: stop accepting, and give in-flight requests this long to finish.
    pub shutdown_grace: Duration,
    /// Request head (all header names and values) larger than this: 431.
    pub max_header_bytes: usize,
    /// Upstream calls in flight at once in this instance; more wait for none: 429.
    pub max_upstream_concurrency: usize,
    /// The same for each session (in this instance).
    pub max_upstream_concurrency_per_session: usize,
    /// `/auth/login` starts allowed per client address per minute, and pending logins per browser.
    pub login_starts_per_minute: u32,
    /// Proxies in front of bff that append to `X-Forwarded-For` (0: the peer is the client).
    pub trusted_proxy_hops: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    /// RFC 7523 client assertions signed with `client_key_file`.
    PrivateKeyJwt,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Kept exactly as written: discovery compares it byte for byte with the provider's
    /// `issuer` (Auth0's ends with `/`, most others do not).
    pub issuer: String,
    pub client_id: String,
    /// For the `client_secret_*` methods (required with them, refused with `private_key_jwt`).
    pub client_secret: Option<SecretString>,
    /// For `private_key_jwt` (required with it, refused otherwise): the first signs.
    pub client_keys: Option<crate::client_keys::ClientKeys>,
    /// Where they were read from (for `check-config`).
    pub client_key_files: Vec<String>,
    pub auth_method: AuthMethod,
    pub scopes: Vec<String>,
    pub extra_auth_params: BTreeMap<String, String>,
    /// Absolute, same origin as `server.public_url`.
    pub post_logout_redirect: Url,
    pub timeout: Duration,
    /// RFC 7009 revocation endpoint, for a provider whose metadata names none (or a wrong one).
    pub revocation_endpoint: Option<Url>,
    pub par: ParMode,
    /// RFC 9449: sender-constrained tokens, a key per session.
    pub dpop: bool,
    /// The `aud` of `private_key_jwt` client assertions.
    pub client_assertion_audience: AssertionAudience,
    /// `oidc.client_key_id` as configured (already applied to `client_keys`; for `check-config`).
    pub client_key_id: Option<String>,
    /// When the provider's userinfo endpoint is asked for the user's claims at sign-in.
    pub userinfo: UserinfoMode,
}

/// What a client assertion names as its audience (`oidc.client_assertion_audience`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAudience {
    /// The provider's issuer identifier, whichever endpoint the assertion goes to: unambiguous,
    /// what FAPI 2.0 and current drafts ask (an endpoint URL can be replayed by a malicious
    /// authorization server in a multi-provider set-up).
    Issuer,
    /// The URL of the endpoint receiving the request (RFC 7523 §3, OIDC Core §9), for providers
    /// that accept nothing else.
    Endpoint,
}

impl AssertionAudience {
    pub fn as_str(self) -> &'static str {
        match self {
            AssertionAudience::Issuer => "issuer",
            AssertionAudience::Endpoint => "endpoint",
        }
    }
}

/// When the userinfo endpoint is called at sign-in (`oidc.userinfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserinfoMode {
    /// When the ID token lacks the claims the requested scopes stand for; a failed call leaves
    /// the ID token's claims (with a warning).
    Auto,
    /// At every sign-in; a failed call fails the sign-in.
    Always,
    Never,
}

impl UserinfoMode {
    pub fn as_str(self) -> &'static str {
        match self {
            UserinfoMode::Auto => "auto",
            UserinfoMode::Always => "always",
            UserinfoMode::Never => "never",
        }
    }
}

/// When the authorization request is pushed to the provider first (RFC 9126).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParMode {
    /// When the provider offers it.
    Auto,
    /// Always; a provider without it is a configuration error.
    Required,
    /// Never (a provider that requires it is a configuration error).
    Off,
}

impl ParMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ParMode::Auto => "auto",
            ParMode::Required => "required",
            ParMode::Off => "off",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSitePolicy {
    Lax,
    Strict,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// `None` (and no sentinels or cluster nodes): the in-memory store (one instance only).
    pub redis_url: Option<SecretString>,
    /// Sentinels to ask for the primary of `redis_sentinel_service`.
    pub redis_sentinels: Vec<SecretString>,
    pub redis_sentinel_service: String,
    /// Seed nodes of a Redis Cluster.
    pub redis_cluster_nodes: Vec<SecretString>,
    /// The first secret is current; later ones are still accepted when reading (rotation).
    pub secrets: Vec<SecretString>,
    /// Resolved: never empty.
    pub cookie_name: String,
    pub same_site: SameSitePolicy,
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    pub key_prefix: String,
    pub redis_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    pub refresh_skew: Duration,
    pub refresh_lock: Duration,
    /// Lifetime assumed for an access token whose response carried no `expires_in`.
    pub default_expires_in: Duration,
    /// Keep opened token sets in memory, kept coherent by Redis (docs/CONTRACT.md, "Storage").
    pub local_cache: bool,
    /// Sessions per instance in that cache; past it the least recently used go.
    pub local_cache_max_entries: std::num::NonZeroUsize,
    /// Bytes each in-memory cache (token sets, opened cookies) may hold; past it the least
    /// recently used go.
    pub local_cache_max_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Starts with `/`, no trailing `/`.
    pub prefix: String,
    pub upstream: Url,
    pub timeout: Duration,
    pub max_retry_body_bytes: u64,
    pub max_body_bytes: u64,
    /// Request headers not forwarded to this upstream, besides the ones bff never forwards;
    /// lower-case.
    pub request_headers_drop: Vec<String>,
    /// The methods this route takes (upper-case); empty: every method but TRACE and CONNECT.
    /// GET implies HEAD.
    pub methods: Vec<String>,
    /// A request body that sends nothing this long is answered 408.
    pub body_timeout: Duration,
    pub token: TokenPolicy,
    /// RFC 8707 resource indicator: this route's tokens are requested for this audience.
    pub resource: Option<String>,
    /// The scopes of the client-credentials token (`token = "client"` only).
    pub scopes: Vec<String>,
    /// WebSocket upgrades pass through (checked by `Origin`); `false`: refused with 400.
    pub websocket: bool,
}

/// Whose access token a route's upstream gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPolicy {
    /// The signed-in user's; no session is 401.
    User,
    /// The user's while signed in; signed out, the call goes without a token.
    UserOrNone,
    /// None: no session, no `X-CSRF`, never a token (public APIs).
    None,
    /// bff's own client-credentials token, shared by every caller; no session needed.
    Client,
}

impl TokenPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenPolicy::User => "user",
            TokenPolicy::UserOrNone => "user_or_none",
            TokenPolicy::None => "none",
            TokenPolicy::Client => "client",
        }
    }
}

impl Config {
    /// Loads from an optional TOML file and the process environment, then validates.
    pub fn load(file: Option<&std::path::Path>) -> Result<Config, ConfigErrors> {
        load::load(ConfigSource::from_process(file))
    }

    /// Loads from TOML text only (no environment); for tests and embedded set-ups.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        load::load(ConfigSource::from_toml_text(text))
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        print::redacted_toml(self)
    }

    /// `public_url + "/auth/callback"`.
    pub fn redirect_uri(&self) -> String {
        format!("{}/auth/callback", self.server.public_url.as_str().trim_end_matches('/'))
    }

    pub fn is_https(&self) -> bool {
        self.server.public_url.scheme() == "https"
    }
}
