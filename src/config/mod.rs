//! Configuration: one TOML file plus `BFF_<SECTION>__<KEY>` environment overrides, validated once
//! into typed values. Every problem is reported at once, each naming its key path.

mod frontends;
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
    /// Which frontend this configuration serves: the implicit one of a file without
    /// `[[frontend]]` tables, or one of [`Config::frontends`].
    pub frontend: FrontendIdentity,
    /// The `[[frontend]]` tables, each as a whole configuration: the shared sections (listeners,
    /// Redis, secrets, limits, logs, telemetry) with the frontend's own `public_url`,
    /// `static_dir`, `[oidc]`, session lifetimes and cookie, and `[[api]]` routes. Empty: this
    /// configuration is the one frontend. With frontends, the top level's own `oidc` and `api`
    /// are the first frontend's (use [`Config::views`]).
    pub frontends: Vec<Config>,
}

/// Which requests a frontend serves, and what keeps it apart from the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendIdentity {
    /// `[a-z0-9_-]`, at most 32 bytes: the metrics' `frontend` label and part of its store keys.
    /// `"default"` for the implicit frontend.
    pub name: String,
    /// Lower-case `host` or `host:port`, matched against the request's `Host`; empty: any host.
    pub hosts: Vec<String>,
    /// `""`, or the path prefix it is served under (`/admin`), without a trailing slash.
    pub path: String,
    /// The frontend of a file without `[[frontend]]` tables: its cookie, store keys and sealing
    /// are the ones bff used before frontends existed, so upgrading signs nobody out.
    pub implicit: bool,
}

impl FrontendIdentity {
    pub const IMPLICIT_NAME: &'static str = "default";

    pub fn implicit() -> FrontendIdentity {
        FrontendIdentity { name: Self::IMPLICIT_NAME.into(), hosts: Vec::new(), path: String::new(), implicit: true }
    }
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
    /// Serve `/metrics` on this address (a listener of its own).
    pub metrics_listen: Option<SocketAddr>,
    /// Serve `/metrics` on the main listener too (anyone who reaches bff can read it).
    pub metrics_public: bool,
    /// Serve the admin API (`/admin/*`) on this address (a listener of its own); off if unset.
    pub admin_listen: Option<SocketAddr>,
    /// The admin API's bearer token, read from `server.admin_token_file` at load (a changed
    /// file takes a restart); set exactly when `admin_listen` is.
    pub admin_token: Option<SecretString>,
    /// The path of that file (printed; the token never is).
    pub admin_token_file: Option<String>,
    /// On SIGTERM/SIGINT: stop accepting, and give in-flight requests this long to finish.
    pub shutdown_grace: Duration,
    /// How long an idle keep-alive connection is kept open. Longer than what proxies in front
    /// keep theirs idle (60 s at AWS ALB and nginx), so bff is never the one closing a connection
    /// a proxy is about to reuse.
    pub keep_alive: Duration,
    /// Request head (all header names and values) larger than this: 431.
    pub max_header_bytes: usize,
    /// Upstream calls in flight at once in this instance; more wait for none: 429.
    pub max_upstream_concurrency: usize,
    /// The same for one frontend (its `max_upstream_concurrency`): what one frontend's crowd
    /// leaves to the others.
    pub max_upstream_concurrency_per_frontend: usize,
    /// The same for each session (in this instance).
    pub max_upstream_concurrency_per_session: usize,
    /// The same for calls without a session (public routes, `user_or_none` signed out), in all
    /// (at most `max_upstream_concurrency`) …
    pub max_upstream_concurrency_anonymous: usize,
    /// … and per client address (an IPv6 /64).
    pub max_upstream_concurrency_per_address: usize,
    /// `/auth/login` starts allowed per client address per minute, and pending logins per browser.
    pub login_starts_per_minute: u32,
    /// `/auth/login` starts allowed from all clients together in a pending login's lifetime (10
    /// minutes), per instance: what bounds the pending logins a crowd of addresses can leave.
    pub max_pending_logins: u32,
    /// Proxies in front of bff that append to `X-Forwarded-For` (0: the peer is the client).
    pub trusted_proxy_hops: usize,
    /// TLS on `listen` (`tls_cert_file`, `tls_key_file`); `None`: plain HTTP.
    pub tls: Option<crate::tls::TlsFiles>,
    /// `Strict-Transport-Security: max-age=…` on answers bff itself sends over TLS; zero: none.
    pub hsts_max_age: Duration,
    /// A plain-HTTP listener that answers every request with a 308 to the https origin.
    pub redirect_http_listen: Option<SocketAddr>,
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
    /// Logout sends the ID token as `id_token_hint` (through the browser); `false`: `client_id`
    /// and the provider session's `sid` as `logout_hint` instead.
    pub logout_id_token_hint: bool,
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
    /// The sign-in options `/auth/login` passes on to the provider.
    pub login_params: Vec<crate::login_options::LoginParam>,
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

/// `session.dbsc`: whether sessions are bound to the browser's device key (DBSC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbscMode {
    Off,
    /// Offered at sign-in; a browser that registers is held to it, one that does not is not.
    Optional,
    /// Offered at sign-in; a session that has not registered cannot call the API.
    Required,
}

impl DbscMode {
    pub fn label(self) -> &'static str {
        match self {
            DbscMode::Off => "off",
            DbscMode::Optional => "optional",
            DbscMode::Required => "required",
        }
    }
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
    /// Resolved (the prefix included): never empty.
    pub cookie_name: String,
    /// `session.cookie_prefix` as configured or defaulted (`__Host-Http-`, `__Host-` or `""`).
    pub cookie_prefix: String,
    /// The name this cookie had before `cookie_prefix` existed (`__Host-bff`), still read and
    /// renamed on the next `/auth` request; `None` when the name was configured.
    pub cookie_legacy_name: Option<String>,
    pub same_site: SameSitePolicy,
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    pub key_prefix: String,
    pub redis_timeout: Duration,
    /// What TLS to Redis trusts and presents (`rediss://` URLs only).
    pub redis_tls: RedisTls,
    /// Sessions kept per user (per frontend); a sign-in beyond it ends the oldest.
    pub max_per_user: usize,
    pub dbsc: DbscMode,
    /// How long a bound cookie lives (`dbsc_cookie_ttl_secs`): a stolen one works this long.
    pub dbsc_cookie_ttl: Duration,
}

/// TLS to Redis beyond the system's roots: a private CA and a client certificate, read and
/// checked when the configuration loads. They apply to every connection of the topology: the
/// server, sentinels and the primaries and replicas they name, cluster nodes, and the cache's
/// tracking connection.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// `session.redis_ca_file` and its PEM bundle: the CAs trusted instead of the system's.
    pub ca: Option<(String, Vec<u8>)>,
    /// `session.redis_client_cert_file` / `_key_file`, for servers that ask for one (mTLS).
    pub client: Option<RedisClientCert>,
}

#[derive(Debug, Clone)]
pub struct RedisClientCert {
    pub cert_file: String,
    pub key_file: String,
    pub cert_pem: Vec<u8>,
    /// Never printed.
    pub key_pem: SecretString,
}

impl RedisTls {
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }

    /// Reads and checks the files (PEM certificates; a PEM private key). Errors name the key.
    pub fn from_files(
        ca_file: Option<&str>,
        client_cert_file: Option<&str>,
        client_key_file: Option<&str>,
    ) -> Result<RedisTls, Vec<ConfigError>> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let mut errors = Vec::new();
        let mut problem = |key: &str, message: String| errors.push(ConfigError { key: key.into(), message });
        let read = |key: &str, path: &str, problem: &mut dyn FnMut(&str, String)| match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                problem(key, format!("cannot read {path:?}: {e}"));
                None
            }
        };
        let certificates = |key: &str, path: &str, bytes: Vec<u8>, problem: &mut dyn FnMut(&str, String)| {
            match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
                Ok(certs) if certs.is_empty() => problem(key, format!("{path:?} holds no PEM certificate")),
                Ok(_) => return Some(bytes),
                Err(e) => problem(key, format!("{path:?} is not a PEM certificate bundle ({e})")),
            }
            None
        };
        const CA: &str = "session.redis_ca_file";
        const CERT: &str = "session.redis_client_cert_file";
        const KEY: &str = "session.redis_client_key_file";
        let ca = ca_file.and_then(|path| {
            let bytes = read(CA, path, &mut problem)?;
            certificates(CA, path, bytes, &mut problem).map(|pem| (path.to_string(), pem))
        });
        let client = match (client_cert_file, client_key_file) {
            (None, None) => None,
            (Some(_), None) => {
                problem(KEY, "missing (required with redis_client_cert_file)".into());
                None
            }
            (None, Some(_)) => {
                problem(CERT, "missing (required with redis_client_key_file)".into());
                None
            }
            (Some(cert_file), Some(key_file)) => {
                let cert = read(CERT, cert_file, &mut problem)
                    .and_then(|bytes| certificates(CERT, cert_file, bytes, &mut problem));
                // The key's content is never repeated in a message.
                let key = read(KEY, key_file, &mut problem).and_then(|bytes| {
                    match PrivateKeyDer::from_pem_slice(&bytes) {
                        Ok(_) => String::from_utf8(bytes).ok(),
                        Err(_) => None,
                    }
                    .or_else(|| {
                        problem(KEY, format!("{key_file:?} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"));
                        None
                    })
                });
                match (cert, key) {
                    (Some(cert_pem), Some(key_pem)) => Some(RedisClientCert {
                        cert_file: cert_file.into(),
                        key_file: key_file.into(),
                        cert_pem,
                        key_pem: SecretString::from(key_pem),
                    }),
                    _ => None,
                }
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let tls = RedisTls { ca, client };
        // What the redis crate checks before connecting (the CA certificates as trust anchors):
        // here, so that a bad file stops the start whatever the topology. The client certificate
        // and key are paired at the first connection (see the store's `certificate_problem`).
        if let Some(certs) = tls.certificates()
            && let Err(e) = redis::Client::build_with_tls("rediss://localhost", certs)
        {
            let text = e.to_string();
            let key = if text.contains("root certificate") || text.contains("trust anchors") { CA } else { KEY };
            let message = format!("not usable for TLS ({})", e.detail().unwrap_or(&text));
            return Err(vec![ConfigError { key: key.into(), message }]);
        }
        Ok(tls)
    }

    /// For the redis crate: `None` when the system's roots and no client certificate do.
    pub fn certificates(&self) -> Option<redis::TlsCertificates> {
        use secrecy::ExposeSecret;
        self.is_set().then(|| redis::TlsCertificates {
            client_tls: self.client.as_ref().map(|c| redis::ClientTlsConfig {
                client_cert: c.cert_pem.clone(),
                client_key: c.key_pem.expose_secret().as_bytes().to_vec(),
            }),
            root_cert: self.ca.as_ref().map(|(_, pem)| pem.clone()),
        })
    }
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
    /// Lower-case; when set, only these request headers (and the ones bff writes) go upstream.
    pub request_headers_allow: Option<Vec<String>>,
    /// Lower-case; the upstream's response headers that never reach the browser.
    pub response_headers_drop: Vec<String>,
    /// The methods this route takes (upper-case); empty: every method but TRACE and CONNECT.
    /// GET implies HEAD.
    pub methods: Vec<String>,
    /// A request body that sends nothing this long is answered 408.
    pub body_timeout: Duration,
    /// The average a request body must keep after `body_timeout`'s allowance (bytes per
    /// second, 0: none): each byte buys `1 / min_body_bytes_per_sec` s more.
    pub min_body_bytes_per_sec: u64,
    pub token: TokenPolicy,
    /// RFC 8707 resource indicator: this route's tokens are requested for this audience.
    pub resource: Option<String>,
    /// The `audience` of a token exchange (RFC 8693 §2.1; `token = "exchange"` only).
    pub audience: Option<String>,
    /// The scopes of the client-credentials token or of the exchanged one (`token = "client"`
    /// or `"exchange"` only).
    pub scopes: Vec<String>,
    /// WebSocket upgrades pass through (checked by `Origin`); `false`: refused with 400.
    pub websocket: bool,
    /// How long an HTTP/1.1 connection to the upstream may sit idle in a worker's pool before
    /// bff closes it (`keep_alive_secs`).
    pub keep_alive: Duration,
    /// HTTP/2 to the upstream: prior knowledge (h2c) for `http://`, ALPN `h2` (HTTP/1.1 when the
    /// upstream does not take it) for `https://`; `false`: HTTP/1.1 only. WebSocket handshakes
    /// go over HTTP/1.1 either way.
    pub http2: bool,
    /// Step-up (RFC 9470): the session's `acr` must be one of these before the upstream is
    /// called (none: any). Routes carrying the user's token only.
    pub acr_values: Vec<String>,
    /// Step-up: the session's authentication (`auth_time`) must be at most this many seconds
    /// old. Routes carrying the user's token only.
    pub max_age: Option<u64>,
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
    /// The user's token exchanged at the provider for one for the route's audience (RFC 8693).
    Exchange,
}

impl TokenPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenPolicy::User => "user",
            TokenPolicy::UserOrNone => "user_or_none",
            TokenPolicy::None => "none",
            TokenPolicy::Client => "client",
            TokenPolicy::Exchange => "exchange",
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

    /// `public_url` + the frontend's path + `/auth/callback`.
    pub fn redirect_uri(&self) -> String {
        let callback = crate::paths::OwnRoute::Callback.path();
        format!("{}{}{callback}", self.server.public_url.as_str().trim_end_matches('/'), self.frontend.path)
    }

    /// Every frontend's configuration: the `[[frontend]]` tables, or this one.
    pub fn views(&self) -> Vec<Config> {
        if self.frontends.is_empty() { vec![self.clone()] } else { self.frontends.clone() }
    }

    pub fn is_https(&self) -> bool {
        self.server.public_url.scheme() == "https"
    }
}
