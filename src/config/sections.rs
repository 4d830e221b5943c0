//! The per-section rules of the configuration: which keys each section has, their defaults,
//! and what makes a value valid (alone and together with others). The walk itself is `walker`.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::value::{Dict, Value};
use secrecy::SecretString;
use url::Url;

use crate::client_keys::ClientKeys;
use crate::login_options::LoginParam;

use super::frontends::Shared;
use super::walker::{Section, Walker, describe};
use super::{
    ApiConfig, AssertionAudience, AuthMethod, Config, DbscMode, FrontendIdentity, LogConfig, LogFormat, OidcConfig,
    ParMode, RedisTls, SameSitePolicy, ServerConfig, SessionConfig, TelemetryConfig, TokenPolicy, TokensConfig,
    UserinfoMode,
};

/// `tokens.local_cache_max_bytes`' default, 256 MiB: the default 100,000 sessions at about
/// 2.6 KB each. A token-cache entry is its access token (a signed JWT, typically 1–2 KB) plus
/// about 300 bytes of bookkeeping; an opened-cookie entry at most about 450 bytes. So typical
/// sessions fit the entry count before the byte budget binds, and a flood of huge tokens or
/// values cannot take more than this per cache.
const DEFAULT_CACHE_MAX_BYTES: u64 = 256 * 1024 * 1024;

const MIN_SECRET_BYTES: usize = 64;
/// `session.dbsc_cookie_ttl_secs`: renewed about every 8 minutes (browsers refresh 2 minutes
/// before expiry), so a stolen bound cookie works for at most 10.
const DEFAULT_DBSC_COOKIE_TTL: Duration = Duration::from_secs(600);
/// `server.admin_token_file`: a token shorter than this could be guessed.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 32;
/// The longest admin token: the admin listener refuses longer `Authorization` headers unread.
pub const MAX_ADMIN_TOKEN_BYTES: usize = 512;
/// Authorization request parameters bff sets itself; `extra_auth_params` may not replace them.
const RESERVED_AUTH_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "request_uri",
];

impl Walker<'_> {
    pub(super) fn config(&mut self, root: &Dict) -> Option<Config> {
        let mut top = Section { path: String::new(), dict: Some(root), known: BTreeSet::new() };
        let server = self.server(&mut top);
        let session = self.session(&mut top, server.as_ref());
        let tokens = self.tokens(&mut top);
        let log = self.log(&mut top);
        let telemetry = self.telemetry(&mut top);
        top.known.extend(["server", "oidc", "session", "tokens", "api", "log", "telemetry", "frontend"]);
        if root.contains_key("frontend") {
            for own in ["oidc", "api"] {
                if root.contains_key(own) {
                    self.error(own, format!("with [[frontend]] tables, each frontend has its own (frontend[].{own})"));
                }
            }
            // Read by no one with frontends: set here, they would look as if they applied.
            for (section, key, instead) in [
                ("server", "static_dir", "frontend[].static_dir"),
                ("session", "cookie_name", "frontend[].session.cookie_name"),
            ] {
                let set = matches!(root.get(section), Some(Value::Dict(_, d)) if d.contains_key(key));
                if set {
                    self.error(format!("{section}.{key}"), format!("with [[frontend]] tables, set {instead} instead"));
                }
            }
            let shared = match (server, session) {
                (Some(server), Some(session)) => Some(Shared { server, session, tokens, log, telemetry }),
                _ => None,
            };
            let frontends = self.frontends(&top, shared.as_ref());
            self.finish(top);
            let (frontends, shared) = (frontends?, shared?);
            let first = frontends.first()?;
            // The shared sections as written; `oidc`, `api` and `frontend` are the first
            // frontend's, for code that reads one (serving uses `views`).
            return Some(Config {
                oidc: first.oidc.clone(),
                api: first.api.clone(),
                frontend: first.frontend.clone(),
                server: shared.server,
                session: shared.session,
                tokens: shared.tokens,
                log: shared.log,
                telemetry: shared.telemetry,
                frontends,
            });
        }
        let oidc = self.oidc(&mut top, server.as_ref(), "/");
        let api = self.apis(&mut top, "");
        self.finish(top);
        Some(Config {
            server: server?,
            oidc: oidc?,
            session: session?,
            tokens,
            api,
            log,
            telemetry,
            frontend: FrontendIdentity::implicit(),
            frontends: Vec::new(),
        })
    }

    /// The tables of an array of tables (`[[api]]`, `[[frontend]]`) under `parent`; `None` when
    /// it is absent or not an array (reported), an entry that is not a table reported and left out.
    pub(super) fn tables<'v>(&mut self, parent: &Section<'v>, name: &str) -> Option<Vec<&'v Dict>> {
        let key = parent.key(name);
        match parent.dict.and_then(|d| d.get(name))? {
            Value::Array(_, items) => Some(
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| match v {
                        Value::Dict(_, d) => Some(d),
                        other => {
                            self.error(format!("{key}[{i}]"), format!("expected a table, found {}", describe(other)));
                            None
                        }
                    })
                    .collect(),
            ),
            other => {
                let short = name.rsplit('.').next().unwrap_or(name);
                self.error(&key, format!("expected an array of tables ([[{short}]]), found {}", describe(other)));
                None
            }
        }
    }

    /// An origin (`scheme://host[:port]`), nothing after it.
    pub(super) fn origin(&mut self, s: &Section<'_>, name: &str, raw: &str) -> Option<Url> {
        let url = self.url(&s.key(name), raw, name)?;
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            self.error(s.key(name), "must be an origin (scheme://host[:port]) with no path, query or fragment");
            return None;
        }
        Some(url)
    }

    fn telemetry(&mut self, top: &mut Section<'_>) -> TelemetryConfig {
        let mut s = self.section(top, "telemetry");
        let otlp_endpoint = self
            .string(&mut s, "otlp_endpoint")
            .filter(|raw| !raw.is_empty())
            .and_then(|raw| self.url(&s.key("otlp_endpoint"), &raw, "otlp_endpoint"));
        let service_name = self.string(&mut s, "service_name");
        if service_name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            self.error(s.key("service_name"), "must not be empty");
        }
        let sampling_ratio = self.ratio(&mut s, "sampling_ratio");
        let trust_incoming_trace_context = self.boolean(&mut s, "trust_incoming_trace_context", false);
        self.finish(s);
        TelemetryConfig { otlp_endpoint, service_name, sampling_ratio, trust_incoming_trace_context }
    }

    fn log(&mut self, top: &mut Section<'_>) -> LogConfig {
        let mut s = self.section(top, "log");
        let format = match self.string_or(&mut s, "format", "text").to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                self.error(s.key("format"), format!("must be \"text\" or \"json\" (got {other:?})"));
                LogFormat::Text
            }
        };
        let level = self.string_or(&mut s, "level", "info");
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            self.error(s.key("level"), format!("not a log filter ({level:?}); e.g. \"info\" or \"warn,bff=debug\""));
        }
        self.finish(s);
        LogConfig { format, level }
    }

    fn server(&mut self, top: &mut Section<'_>) -> Option<ServerConfig> {
        let mut s = self.section(top, "server");
        let listen_raw = self.string_or(&mut s, "listen", "127.0.0.1:8080");
        let listen = match listen_raw.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(s.key("listen"), format!("not an address:port ({listen_raw:?})"));
                None
            }
        };
        let public_raw = self.string_or(&mut s, "public_url", "http://localhost:8080");
        let public_url = self.origin(&s, "public_url", &public_raw);
        let static_dir = self.string_or(&mut s, "static_dir", "static");
        let templates_dir = self.string_or(&mut s, "templates_dir", "templates");
        let workers = self.uint(&mut s, "workers", 0, 0) as usize;
        let metrics_listen = self.string(&mut s, "metrics_listen").filter(|m| !m.is_empty()).and_then(|raw| {
            raw.parse::<SocketAddr>()
                .map_err(|_| self.error(s.key("metrics_listen"), format!("not an address:port ({raw:?})")))
                .ok()
        });
        let metrics_public = self.boolean(&mut s, "metrics_public", false);
        let admin_listen = self.string(&mut s, "admin_listen").filter(|m| !m.is_empty()).and_then(|raw| {
            raw.parse::<SocketAddr>()
                .map_err(|_| self.error(s.key("admin_listen"), format!("not an address:port ({raw:?})")))
                .ok()
        });
        let admin_token_file = self.string(&mut s, "admin_token_file").filter(|p| !p.is_empty());
        let admin_token = self.admin_token(&s, admin_token_file.as_deref(), admin_listen.is_some());
        let shutdown_grace = self.secs(&mut s, "shutdown_grace_secs", 30, 0);
        let keep_alive = self.secs(&mut s, "keep_alive_secs", 75, 1);
        let max_header_bytes = self.uint(&mut s, "max_header_bytes", 16_384, 1024) as usize;
        let max_upstream_concurrency = self.uint(&mut s, "max_upstream_concurrency", 1024, 1) as usize;
        let max_upstream_concurrency_per_session =
            self.uint(&mut s, "max_upstream_concurrency_per_session", 64, 1) as usize;
        // Unset: a quarter of the whole, so signed-in sessions keep three quarters whatever the
        // public routes get, at any size of deployment; one address at most 16 of that.
        let max_upstream_concurrency_anonymous = self
            .optional_uint(&mut s, "max_upstream_concurrency_anonymous", 1)
            .map_or((max_upstream_concurrency / 4).max(1), |n| n as usize)
            .min(max_upstream_concurrency);
        let max_upstream_concurrency_per_address = self
            .optional_uint(&mut s, "max_upstream_concurrency_per_address", 1)
            .map_or(max_upstream_concurrency_anonymous.min(16), |n| n as usize);
        let login_starts_per_minute =
            u32::try_from(self.uint(&mut s, "login_starts_per_minute", 30, 1)).unwrap_or(u32::MAX);
        let max_pending_logins = u32::try_from(self.uint(&mut s, "max_pending_logins", 20_000, 1)).unwrap_or(u32::MAX);
        let trusted_proxy_hops = self.uint(&mut s, "trusted_proxy_hops", 0, 0) as usize;
        let tls = self.tls(&mut s, public_url.as_ref());
        let hsts_max_age = self.secs(&mut s, "hsts_max_age_secs", 31_536_000, 0);
        let redirect_http_listen =
            self.string(&mut s, "redirect_http_listen").filter(|m| !m.is_empty()).and_then(|raw| {
                raw.parse::<SocketAddr>()
                    .map_err(|_| self.error(s.key("redirect_http_listen"), format!("not an address:port ({raw:?})")))
                    .ok()
            });
        if redirect_http_listen.is_some() && tls.is_none() {
            self.error(
                s.key("redirect_http_listen"),
                "set server.tls_cert_file and server.tls_key_file too (it redirects to bff's https listener)",
            );
        }
        self.finish(s);
        Some(ServerConfig {
            listen: listen?,
            public_url: public_url?,
            static_dir: (!static_dir.is_empty()).then(|| PathBuf::from(static_dir)),
            templates_dir: PathBuf::from(templates_dir),
            workers,
            metrics_listen,
            metrics_public,
            admin_listen,
            admin_token,
            admin_token_file,
            shutdown_grace,
            keep_alive,
            max_header_bytes,
            max_upstream_concurrency,
            max_upstream_concurrency_per_frontend: max_upstream_concurrency,
            max_upstream_concurrency_per_session,
            max_upstream_concurrency_anonymous,
            max_upstream_concurrency_per_address,
            login_starts_per_minute,
            max_pending_logins,
            trusted_proxy_hops,
            tls,
            hsts_max_age,
            redirect_http_listen,
        })
    }

    /// `server.tls_cert_file` and `server.tls_key_file`: both or neither, read and checked
    /// here (a key that does not load, or is not the certificate's, refuses the start).
    fn tls(&mut self, s: &mut Section<'_>, public_url: Option<&Url>) -> Option<crate::tls::TlsFiles> {
        let cert = self.string(s, "tls_cert_file").filter(|p| !p.is_empty());
        let key = self.string(s, "tls_key_file").filter(|p| !p.is_empty());
        let files = match (cert, key) {
            (None, None) => return None,
            (Some(_), None) => {
                self.error(s.key("tls_key_file"), "missing: server.tls_cert_file needs the certificate's private key");
                return None;
            }
            (None, Some(_)) => {
                self.error(s.key("tls_cert_file"), "missing: server.tls_key_file needs its certificate chain");
                return None;
            }
            (Some(cert), Some(key)) => crate::tls::TlsFiles { cert_file: cert.into(), key_file: key.into() },
        };
        if let Err(e) = crate::tls::load(&files) {
            let key = if e.key == crate::tls::CERT_KEY { "tls_cert_file" } else { "tls_key_file" };
            self.error(s.key(key), e.message);
            return None;
        }
        if public_url.is_some_and(|u| u.scheme() != "https") {
            // The browser reaches bff over TLS: cookies, redirect URIs and the origin checks
            // all follow public_url.
            self.error(s.key("public_url"), "must be https:// when server.tls_cert_file is set (bff serves TLS)");
        }
        Some(files)
    }

    /// `[oidc]` (or a frontend's); `post_logout_default` is the frontend's root.
    pub(super) fn oidc(
        &mut self,
        top: &mut Section<'_>,
        server: Option<&ServerConfig>,
        post_logout_default: &str,
    ) -> Option<OidcConfig> {
        top.known.insert("oidc");
        let mut s = self.section(top, "oidc");
        let issuer = self
            .required_string(&mut s, "issuer")
            .and_then(|raw| self.url(&s.key("issuer"), &raw, "issuer").map(|_| raw));
        let client_id = self.required_string(&mut s, "client_id");
        let auth_method = match self.string_or(&mut s, "auth_method", "client_secret_basic").as_str() {
            "client_secret_basic" => Some(AuthMethod::ClientSecretBasic),
            "client_secret_post" => Some(AuthMethod::ClientSecretPost),
            "private_key_jwt" => Some(AuthMethod::PrivateKeyJwt),
            other => {
                self.error(
                    s.key("auth_method"),
                    format!(
                        "must be \"client_secret_basic\", \"client_secret_post\" or \"private_key_jwt\" (got {other:?})"
                    ),
                );
                None
            }
        };
        let with_keys = auth_method == Some(AuthMethod::PrivateKeyJwt);
        let client_key_files = self.string_list(&mut s, "client_key_file").unwrap_or_default();
        let client_keys = self.client_keys(&s, &client_key_files, with_keys);
        let client_key_id = self.string(&mut s, "client_key_id").filter(|kid| !kid.is_empty());
        let client_keys = match (client_keys, &client_key_id) {
            (Some(Some(keys)), Some(kid)) => match keys.with_signing_kid(kid) {
                Ok(keys) => Some(Some(keys)),
                Err(e) => {
                    self.error(
                        s.key("client_key_id"),
                        format!("{e}; the keys, in order: {}", client_key_files.join(", ")),
                    );
                    None
                }
            },
            (Some(None), Some(_)) => {
                self.error(s.key("client_key_id"), "is used with auth_method = \"private_key_jwt\" only");
                None
            }
            (keys, _) => keys,
        };
        let client_assertion_audience = match self.string_or(&mut s, "client_assertion_audience", "issuer").as_str() {
            "issuer" => AssertionAudience::Issuer,
            "endpoint" => AssertionAudience::Endpoint,
            other => {
                self.error(
                    s.key("client_assertion_audience"),
                    format!("must be \"issuer\" or \"endpoint\" (got {other:?})"),
                );
                AssertionAudience::Issuer
            }
        };
        let client_secret = if with_keys {
            // Read (so neither is reported unknown), only to be refused.
            let inline = self.value(&mut s, "client_secret").is_some();
            if self.value(&mut s, "client_secret_file").is_some() || inline {
                self.error(s.key("client_secret"), "is not used with auth_method = \"private_key_jwt\"; remove it");
            }
            Some(None)
        } else {
            self.client_secret(&mut s).map(Some)
        };
        let scopes = self
            .string_list(&mut s, "scopes")
            .unwrap_or_else(|| ["openid", "profile", "email", "offline_access"].map(String::from).to_vec());
        if !scopes.iter().any(|sc| sc == "openid") {
            self.error(s.key("scopes"), "must include \"openid\"");
        }
        if let Some(bad) = scopes.iter().find(|sc| sc.is_empty() || sc.contains(char::is_whitespace)) {
            self.error(s.key("scopes"), format!("{bad:?} is not a valid scope"));
        }
        let extra_auth_params = self.string_map(&mut s, "extra_auth_params");
        for reserved in RESERVED_AUTH_PARAMS {
            if extra_auth_params.contains_key(*reserved) {
                self.error(
                    format!("{}.{reserved}", s.key("extra_auth_params")),
                    "is set by bff itself and cannot be overridden",
                );
            }
        }
        let post_logout_raw = self.string_or(&mut s, "post_logout_redirect", post_logout_default);
        let post_logout_redirect = server.and_then(|server| {
            resolve_same_origin(&server.public_url, &post_logout_raw)
                .map_err(|msg| self.error(s.key("post_logout_redirect"), msg))
                .ok()
        });
        let timeout = self.secs(&mut s, "timeout_secs", 10, 1);
        let revocation_endpoint = self
            .string(&mut s, "revocation_endpoint")
            .filter(|raw| !raw.trim().is_empty())
            .and_then(|raw| self.url(&s.key("revocation_endpoint"), raw.trim(), "revocation_endpoint"));
        let par = match self.string_or(&mut s, "par", "auto").as_str() {
            "auto" => ParMode::Auto,
            "required" => ParMode::Required,
            "off" => ParMode::Off,
            other => {
                self.error(s.key("par"), format!("must be \"auto\", \"required\" or \"off\" (got {other:?})"));
                ParMode::Auto
            }
        };
        let dpop = self.boolean(&mut s, "dpop", false);
        let logout_id_token_hint = self.boolean(&mut s, "logout_id_token_hint", true);
        let userinfo = match self.string_or(&mut s, "userinfo", "auto").as_str() {
            "auto" => UserinfoMode::Auto,
            "always" => UserinfoMode::Always,
            "never" => UserinfoMode::Never,
            other => {
                self.error(s.key("userinfo"), format!("must be \"auto\", \"always\" or \"never\" (got {other:?})"));
                UserinfoMode::Auto
            }
        };
        let login_params = match self.string_list(&mut s, "login_params") {
            None => LoginParam::DEFAULT_ALLOWED.to_vec(),
            Some(names) => names
                .iter()
                .filter_map(|name| {
                    let param = LoginParam::parse(name);
                    if param.is_none() {
                        let known: Vec<&str> = LoginParam::ALL.iter().map(|p| p.name()).collect();
                        self.error(s.key("login_params"), format!("{name:?} is none of {}", known.join(", ")));
                    }
                    param
                })
                .collect(),
        };
        self.finish(s);
        Some(OidcConfig {
            login_params,
            client_assertion_audience,
            client_key_id,
            userinfo,
            dpop,
            par,
            issuer: issuer?,
            client_id: client_id?,
            client_secret: client_secret?,
            client_keys: client_keys?,
            client_key_files,
            auth_method: auth_method?,
            scopes,
            extra_auth_params,
            post_logout_redirect: post_logout_redirect?,
            logout_id_token_hint,
            timeout,
            revocation_endpoint,
        })
    }

    /// `client_key_file`: one path or a list; read and checked now. `Some(None)`: not used.
    fn client_keys(&mut self, s: &Section<'_>, paths: &[String], wanted: bool) -> Option<Option<ClientKeys>> {
        let key = s.key("client_key_file");
        match (wanted, paths.is_empty()) {
            (false, true) => return Some(None),
            (false, false) => {
                self.error(key, "is used with auth_method = \"private_key_jwt\" only");
                return None;
            }
            (true, true) => {
                self.error(key, "missing (required with auth_method = \"private_key_jwt\")");
                return None;
            }
            (true, false) => {}
        }
        let mut texts = Vec::new();
        for path in paths {
            match std::fs::read_to_string(path) {
                Ok(text) => texts.push(text),
                Err(e) => {
                    self.error(key.clone(), format!("cannot read {path}: {e}"));
                    return None;
                }
            }
        }
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        match ClientKeys::parse(&texts) {
            Ok(keys) => Some(Some(keys)),
            Err(e) => {
                self.error(key, e);
                None
            }
        }
    }

    /// `server.admin_token_file`: read once, here (a changed file takes a restart). Needed with
    /// `admin_listen`, of no use without it.
    fn admin_token(&mut self, s: &Section<'_>, path: Option<&str>, listening: bool) -> Option<SecretString> {
        const KEY: &str = "admin_token_file";
        let path = match (path, listening) {
            (Some(path), true) => path,
            (Some(_), false) => {
                self.error(s.key(KEY), "set server.admin_listen too (the token is for its listener only)");
                return None;
            }
            (None, true) => {
                self.error(s.key(KEY), "missing: server.admin_listen needs the file holding its bearer token");
                return None;
            }
            (None, false) => return None,
        };
        match std::fs::read_to_string(path) {
            Ok(contents) => {
                // A token file usually ends with a newline that is not part of the token.
                let token = contents.trim_end_matches(['\r', '\n']);
                if token.is_empty() {
                    self.error(s.key(KEY), format!("{path} is empty"));
                    None
                } else if token.len() < MIN_ADMIN_TOKEN_BYTES {
                    // The length only: the value is never printed.
                    self.error(
                        s.key(KEY),
                        format!(
                            "the token in {path} must be at least {MIN_ADMIN_TOKEN_BYTES} bytes (got {})",
                            token.len()
                        ),
                    );
                    None
                } else if token.len() > MAX_ADMIN_TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
                    self.error(
                        s.key(KEY),
                        format!(
                            "the token in {path} must be at most {MAX_ADMIN_TOKEN_BYTES} printable ASCII characters \
                             without spaces (it is sent as `Authorization: Bearer <token>`)"
                        ),
                    );
                    None
                } else {
                    Some(SecretString::from(token.to_string()))
                }
            }
            Err(e) => {
                self.error(s.key(KEY), format!("cannot read {path}: {e}"));
                None
            }
        }
    }

    fn client_secret(&mut self, s: &mut Section<'_>) -> Option<SecretString> {
        let inline = self.string(s, "client_secret");
        let file = self.string(s, "client_secret_file");
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.error(s.key("client_secret_file"), "set either client_secret or client_secret_file, not both");
                None
            }
            (Some(secret), None) if secret.is_empty() => {
                self.error(s.key("client_secret"), "must not be empty");
                None
            }
            (Some(secret), None) => Some(SecretString::from(secret)),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(contents) => {
                    // Secret files usually end with a newline that is not part of the secret.
                    let secret = contents.trim_end_matches(['\r', '\n']).to_string();
                    if secret.is_empty() {
                        self.error(s.key("client_secret_file"), format!("{path} is empty"));
                        None
                    } else {
                        Some(SecretString::from(secret))
                    }
                }
                Err(e) => {
                    self.error(s.key("client_secret_file"), format!("cannot read {path}: {e}"));
                    None
                }
            },
            (None, None) => {
                self.error(s.key("client_secret"), "missing (required, or set client_secret_file)");
                None
            }
        }
    }

    fn session(&mut self, top: &mut Section<'_>, server: Option<&ServerConfig>) -> Option<SessionConfig> {
        let mut s = self.section(top, "session");
        let redis_url = self.string(&mut s, "redis_url").filter(|u| !u.is_empty());
        let redis_sentinels = self.string_list(&mut s, "redis_sentinels").unwrap_or_default();
        let redis_sentinel_service = self.string_or(&mut s, "redis_sentinel_service", "mymaster");
        let redis_cluster_nodes = self.string_list(&mut s, "redis_cluster_nodes").unwrap_or_default();
        let check_url = |w: &mut Self, key: String, raw: &str| match Url::parse(raw) {
            Ok(url) if matches!(url.scheme(), "redis" | "rediss" | "redis+unix" | "unix") => {}
            // The URL may hold a password: name the problem, not the value.
            _ => w.error(key, "must be a redis://, rediss:// or unix:// URL"),
        };
        if let Some(raw) = &redis_url {
            check_url(self, s.key("redis_url"), raw);
        }
        for (i, raw) in redis_sentinels.iter().enumerate() {
            check_url(self, format!("{}[{i}]", s.key("redis_sentinels")), raw);
        }
        for (i, raw) in redis_cluster_nodes.iter().enumerate() {
            check_url(self, format!("{}[{i}]", s.key("redis_cluster_nodes")), raw);
        }
        let topologies = [redis_url.is_some(), !redis_sentinels.is_empty(), !redis_cluster_nodes.is_empty()];
        if topologies.iter().filter(|t| **t).count() > 1 {
            self.error(s.key("redis_url"), "set one of redis_url, redis_sentinels and redis_cluster_nodes");
        }
        // TLS is all or nothing: the primaries and replicas Sentinel names, and the nodes a
        // cluster names, are reached the way the configured URLs say.
        let tls_of = |raw: &String| raw.trim_start().to_ascii_lowercase().starts_with("rediss:");
        for (name, list) in [("redis_sentinels", &redis_sentinels), ("redis_cluster_nodes", &redis_cluster_nodes)] {
            if list.iter().any(tls_of) && !list.iter().all(tls_of) {
                self.error(s.key(name), "mixes rediss:// and other URLs: use rediss:// for all or none");
            }
        }
        let uses_tls = redis_url.iter().chain(&redis_sentinels).chain(&redis_cluster_nodes).any(tls_of);
        let path = |w: &mut Self, s: &mut Section<'_>, name: &'static str| {
            let value = w.string(s, name).filter(|p| !p.is_empty());
            if value.is_some() && !uses_tls {
                w.error(s.key(name), "needs rediss:// Redis URLs (TLS)");
            }
            value
        };
        let ca_file = path(self, &mut s, "redis_ca_file");
        let client_cert_file = path(self, &mut s, "redis_client_cert_file");
        let client_key_file = path(self, &mut s, "redis_client_key_file");
        let redis_tls =
            RedisTls::from_files(ca_file.as_deref(), client_cert_file.as_deref(), client_key_file.as_deref())
                .unwrap_or_else(|errors| {
                    for e in errors {
                        self.error(e.key, e.message);
                    }
                    RedisTls::default()
                });
        let secrets = match self.string_list(&mut s, "secret") {
            None => {
                self.error(s.key("secret"), format!("missing (required, at least {MIN_SECRET_BYTES} bytes)"));
                None
            }
            Some(list) if list.is_empty() => {
                self.error(s.key("secret"), "must hold at least one secret");
                None
            }
            Some(list) => {
                for (i, secret) in list.iter().enumerate() {
                    if secret.len() < MIN_SECRET_BYTES {
                        let key = if list.len() == 1 { s.key("secret") } else { format!("{}[{i}]", s.key("secret")) };
                        self.error(key, format!("must be at least {MIN_SECRET_BYTES} bytes (got {})", secret.len()));
                    }
                }
                Some(list.into_iter().map(SecretString::from).collect::<Vec<_>>())
            }
        };
        let https = server.is_some_and(|s| s.public_url.scheme() == "https");
        let naming = CookieNaming {
            https,
            secure_context: server.is_some_and(|s| is_secure_context(&s.public_url)),
            base: "bff",
            path: "",
            default_prefix: if https { "__Host-Http-" } else { "" },
            default_same_site: SameSitePolicy::Strict,
            legacy: true,
        };
        let (cookie, same_site) = self.cookie(&mut s, naming);
        let (idle_timeout, absolute_timeout) =
            self.lifetimes(&mut s, Duration::from_secs(28_800), Duration::from_secs(86_400));
        let key_prefix = self.string_or(&mut s, "key_prefix", "bff:");
        if key_prefix.contains(['{', '}']) || key_prefix.contains(char::is_whitespace) {
            // Braces are Redis Cluster hash tags: bff puts its own around each session id.
            self.error(s.key("key_prefix"), "must not contain braces or white space");
        }
        let redis_timeout = Duration::from_millis(self.uint(&mut s, "redis_timeout_ms", 2000, 10));
        let max_per_user = usize::try_from(self.uint(&mut s, "max_per_user", 50, 1)).unwrap_or(usize::MAX);
        let (dbsc, dbsc_cookie_ttl) = self.dbsc(&mut s, DbscMode::Off, DEFAULT_DBSC_COOKIE_TTL);
        self.finish(s);
        Some(SessionConfig {
            redis_url: redis_url.map(SecretString::from),
            redis_sentinels: redis_sentinels.into_iter().map(SecretString::from).collect(),
            redis_sentinel_service,
            redis_cluster_nodes: redis_cluster_nodes.into_iter().map(SecretString::from).collect(),
            secrets: secrets?,
            cookie_name: cookie.name,
            cookie_prefix: cookie.prefix,
            cookie_legacy_name: cookie.legacy,
            same_site: same_site?,
            idle_timeout,
            absolute_timeout,
            key_prefix,
            redis_timeout,
            redis_tls,
            max_per_user,
            dbsc: dbsc?,
            dbsc_cookie_ttl,
        })
    }

    /// `dbsc` and `dbsc_cookie_ttl_secs` of `[session]` or a frontend's (the shared values are
    /// a frontend's defaults).
    pub(super) fn dbsc(
        &mut self,
        s: &mut Section<'_>,
        default_mode: DbscMode,
        default_ttl: Duration,
    ) -> (Option<DbscMode>, Duration) {
        let mode = match self.string_or(s, "dbsc", default_mode.label()).to_ascii_lowercase().as_str() {
            "off" => Some(DbscMode::Off),
            "optional" => Some(DbscMode::Optional),
            "required" => Some(DbscMode::Required),
            other => {
                self.error(s.key("dbsc"), format!("must be \"off\", \"optional\" or \"required\" (got {other:?})"));
                None
            }
        };
        // Under the browser's proactive refresh threshold (120 s) every call would be held for
        // a refresh; allowed (tests, demonstrations), but not below a few seconds.
        let ttl = Duration::from_secs(self.uint(s, "dbsc_cookie_ttl_secs", default_ttl.as_secs(), 5));
        (mode, ttl)
    }

    /// `cookie_prefix`, `cookie_name` and `same_site` of `[session]` or a frontend's. `base`:
    /// the name after the prefix when `cookie_name` is not set; `default_prefix`: the prefix
    /// when `cookie_prefix` is not set; `path`: the frontend's (a `__Host-` cookie must have
    /// `Path=/`, so under a path `__Host-Http-` becomes `__Http-` and `__Host-` `__Secure-`).
    pub(super) fn cookie(&mut self, s: &mut Section<'_>, naming: CookieNaming<'_>) -> (Cookie, Option<SameSitePolicy>) {
        let raw_prefix = self.string(s, "cookie_prefix");
        let prefix = match raw_prefix.as_deref().unwrap_or(naming.default_prefix) {
            p @ ("__Host-Http-" | "__Host-" | "") => p.to_string(),
            other => {
                self.error(
                    s.key("cookie_prefix"),
                    format!("must be \"__Host-Http-\", \"__Host-\" or \"\" (got {other:?})"),
                );
                String::new()
            }
        };
        if !prefix.is_empty() && !naming.secure_context {
            self.error(
                s.key("cookie_prefix"),
                "a prefixed cookie needs an https public_url (or http on localhost): browsers keep it for secure origins only",
            );
        }
        let prefix = match (naming.path.is_empty(), prefix.as_str()) {
            (false, "__Host-Http-") => "__Http-".to_string(),
            (false, "__Host-") => "__Secure-".to_string(),
            _ => prefix,
        };
        let raw_name = self.string(s, "cookie_name").filter(|n| !n.is_empty());
        let name = match &raw_name {
            None => format!("{prefix}{}", naming.base),
            Some(name) => {
                if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                    self.error(s.key("cookie_name"), "may only hold letters, digits, '-', '_' and '.'");
                }
                if name.starts_with("__") {
                    // Written the way it was before `cookie_prefix`: kept as it is.
                    if raw_prefix.is_some() {
                        self.error(
                            s.key("cookie_name"),
                            "has a prefix of its own: set cookie_prefix = \"\" or drop it here",
                        );
                    }
                    if !naming.secure_context {
                        self.error(s.key("cookie_name"), "a __Host- or __Secure- cookie needs an https public_url");
                    }
                    name.clone()
                } else {
                    format!("{prefix}{name}")
                }
            }
        };
        // The name bff used before `cookie_prefix` existed: still read, and renamed (an upgrade
        // signs no one out).
        let legacy =
            (naming.https && naming.path.is_empty() && raw_prefix.is_none() && raw_name.is_none() && naming.legacy)
                .then(|| format!("__Host-{}", naming.base))
                .filter(|legacy| *legacy != name);
        let default_same_site = match naming.default_same_site {
            SameSitePolicy::Lax => "lax",
            SameSitePolicy::Strict => "strict",
        };
        let same_site = match self.string_or(s, "same_site", default_same_site).to_ascii_lowercase().as_str() {
            "lax" => Some(SameSitePolicy::Lax),
            "strict" => Some(SameSitePolicy::Strict),
            other => {
                self.error(s.key("same_site"), format!("must be \"lax\" or \"strict\" (got {other:?})"));
                None
            }
        };
        (Cookie { name, prefix: raw_prefix.unwrap_or_else(|| naming.default_prefix.to_string()), legacy }, same_site)
    }

    /// `idle_timeout_secs` and `absolute_timeout_secs` of `[session]` or a frontend's.
    pub(super) fn lifetimes(
        &mut self,
        s: &mut Section<'_>,
        idle: Duration,
        absolute: Duration,
    ) -> (Duration, Duration) {
        let idle_timeout = self.secs(s, "idle_timeout_secs", idle.as_secs(), 60);
        let absolute_timeout = self.secs(s, "absolute_timeout_secs", absolute.as_secs(), 60);
        if idle_timeout > absolute_timeout {
            self.error(s.key("idle_timeout_secs"), "must not exceed absolute_timeout_secs");
        }
        (idle_timeout, absolute_timeout)
    }

    fn tokens(&mut self, top: &mut Section<'_>) -> TokensConfig {
        let mut s = self.section(top, "tokens");
        let refresh_skew = self.secs(&mut s, "refresh_skew_secs", 30, 0);
        let refresh_lock = Duration::from_millis(self.uint(&mut s, "refresh_lock_ms", 10_000, 100));
        let default_expires_in = self.secs(&mut s, "default_expires_in_secs", 300, 1);
        let local_cache = self.boolean(&mut s, "local_cache", true);
        let max_entries = self.uint(&mut s, "local_cache_max_entries", 100_000, 1);
        let local_cache_max_entries = usize::try_from(max_entries)
            .ok()
            .and_then(std::num::NonZeroUsize::new)
            .unwrap_or(std::num::NonZeroUsize::MIN);
        let max_bytes = self.uint(&mut s, "local_cache_max_bytes", DEFAULT_CACHE_MAX_BYTES, 65_536);
        let local_cache_max_bytes = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        self.finish(s);
        TokensConfig {
            refresh_skew,
            refresh_lock,
            default_expires_in,
            local_cache,
            local_cache_max_entries,
            local_cache_max_bytes,
        }
    }

    /// `[[api]]` routes (or a frontend's, whose prefixes are full paths under its `path`).
    pub(super) fn apis(&mut self, top: &mut Section<'_>, frontend_path: &str) -> Vec<ApiConfig> {
        top.known.insert("api");
        let api_key = top.key("api");
        let items = self.tables(top, "api").unwrap_or_default();
        let mut out = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, dict) in items.into_iter().enumerate() {
            let mut s = Section { path: format!("{api_key}[{i}]"), dict: Some(dict), known: BTreeSet::new() };
            let prefix = self.required_string(&mut s, "prefix").and_then(|p| self.api_prefix(&s, p, frontend_path));
            if let Some(p) = &prefix
                && let Some(first) = seen.insert(p.clone(), i)
            {
                self.error(s.key("prefix"), format!("duplicate prefix {p:?} (also {api_key}[{first}])"));
            }
            let upstream = self.required_string(&mut s, "upstream").and_then(|raw| {
                let url = self.url(&s.key("upstream"), &raw, "upstream")?;
                if url.query().is_some() || url.fragment().is_some() {
                    self.error(s.key("upstream"), "must not carry a query or fragment");
                    return None;
                }
                Some(url)
            });
            let timeout = self.secs(&mut s, "timeout_secs", 30, 1);
            let body_timeout = self.secs(&mut s, "body_timeout_secs", 30, 1);
            let min_body_bytes_per_sec = self.uint(&mut s, "min_body_bytes_per_sec", 500, 0);
            let token = match self.string_or(&mut s, "token", "user").as_str() {
                "user" => TokenPolicy::User,
                "user_or_none" => TokenPolicy::UserOrNone,
                "none" => TokenPolicy::None,
                "client" => TokenPolicy::Client,
                "exchange" => TokenPolicy::Exchange,
                other => {
                    self.error(
                        s.key("token"),
                        format!(
                            "must be \"user\", \"user_or_none\", \"none\", \"client\" or \"exchange\" (got {other:?})"
                        ),
                    );
                    TokenPolicy::User
                }
            };
            let resource =
                self.string(&mut s, "resource").filter(|r| !r.is_empty()).and_then(|raw| self.resource(&s, token, raw));
            let audience = self.string(&mut s, "audience").filter(|a| !a.is_empty());
            if audience.is_some() && token != TokenPolicy::Exchange {
                self.error(s.key("audience"), "applies to token = \"exchange\" only");
            }
            if token == TokenPolicy::Exchange && audience.is_none() && resource.is_none() {
                self.error(
                    s.key("audience"),
                    "token = \"exchange\" needs an audience or a resource to exchange the user's token for",
                );
            }
            let scopes = self.string_list(&mut s, "scopes").unwrap_or_default();
            if !scopes.is_empty() && !matches!(token, TokenPolicy::Client | TokenPolicy::Exchange) {
                self.error(
                    s.key("scopes"),
                    "applies to token = \"client\" or \"exchange\" only (a user's token has the scopes of the sign-in)",
                );
            }
            if let Some(bad) = scopes.iter().find(|scope| !is_scope_token(scope)) {
                self.error(s.key("scopes"), format!("{bad:?} is not a scope (RFC 6749 §3.3)"));
            }
            let max_retry_body_bytes = self.uint(&mut s, "max_retry_body_bytes", 1_048_576, 0);
            let max_body_bytes = self.uint(&mut s, "max_body_bytes", 104_857_600, 0);
            if max_retry_body_bytes > max_body_bytes {
                self.error(s.key("max_retry_body_bytes"), "must not exceed max_body_bytes");
            }
            let request_headers_drop = self.header_names(&mut s, "request_headers_drop").unwrap_or_default();
            let request_headers_allow = self.header_names(&mut s, "request_headers_allow");
            let response_headers_drop = self
                .header_names(&mut s, "response_headers_drop")
                .unwrap_or_else(|| vec!["set-cookie".into(), "clear-site-data".into()]);
            let methods: Vec<String> = self
                .string_list(&mut s, "methods")
                .unwrap_or_default()
                .into_iter()
                .map(|m| m.trim().to_ascii_uppercase())
                .collect();
            for method in &methods {
                let valid = actix_web::http::Method::from_bytes(method.as_bytes()).is_ok();
                if !valid || method == "TRACE" || method == "CONNECT" {
                    self.error(s.key("methods"), format!("{method:?} is not a method a route can take"));
                }
            }
            let websocket = self.boolean(&mut s, "websocket", true);
            let http2 = self.boolean(&mut s, "http2", false);
            let keep_alive = self.secs(&mut s, "keep_alive_secs", 60, 1);
            let (acr_values, max_age) = self.step_up(&mut s, token);
            self.finish(s);
            if let (Some(prefix), Some(upstream)) = (prefix, upstream) {
                out.push(ApiConfig {
                    websocket,
                    http2,
                    keep_alive,
                    acr_values,
                    max_age,
                    token,
                    resource,
                    audience,
                    scopes,
                    methods,
                    body_timeout,
                    min_body_bytes_per_sec,
                    prefix,
                    upstream,
                    timeout,
                    max_retry_body_bytes,
                    max_body_bytes,
                    request_headers_drop,
                    request_headers_allow,
                    response_headers_drop,
                });
            }
        }
        out
    }

    /// `acr_values` and `max_age`: a route's step-up requirement, checked against the session's
    /// sign-in, so only on a route that carries the user's token. Values as `/auth/login` takes
    /// them, since the SPA signs in again with them.
    fn step_up(&mut self, s: &mut Section<'_>, token: TokenPolicy) -> (Vec<String>, Option<u64>) {
        let acr_values = self.string_list(s, "acr_values").unwrap_or_default();
        let max_age = self.optional_uint(s, "max_age", 0);
        if let Some(bad) = acr_values.iter().find(|v| {
            v.is_empty() || v.len() > 128 || !v.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        }) {
            self.error(
                s.key("acr_values"),
                format!("{bad:?} is not an acr value (visible ASCII, no quotes, 128 bytes at most)"),
            );
        }
        if acr_values.len() > 8 {
            self.error(s.key("acr_values"), "at most 8 values (what /auth/login takes back)");
        }
        if max_age.is_some_and(|m| m > 10 * 365 * 24 * 3600) {
            self.error(s.key("max_age"), "must be at most ten years (in seconds)");
        }
        let wanted = !acr_values.is_empty() || max_age.is_some();
        if wanted && matches!(token, TokenPolicy::None | TokenPolicy::Client) {
            let key = if acr_values.is_empty() { "max_age" } else { "acr_values" };
            self.error(
                s.key(key),
                format!(
                    "applies to routes that carry the user's token only (token = \"user\", \"user_or_none\" or \"exchange\"), not token = \"{}\": the requirement is checked against the user's sign-in",
                    token.as_str()
                ),
            );
        }
        (acr_values, max_age)
    }

    /// A list of header names, lower-case; `None` when the key is absent.
    fn header_names(&mut self, s: &mut Section<'_>, name: &'static str) -> Option<Vec<String>> {
        let names: Vec<String> =
            self.string_list(s, name)?.into_iter().map(|n| n.trim().to_ascii_lowercase()).collect();
        if let Some(bad) = names.iter().find(|n| actix_web::http::header::HeaderName::from_bytes(n.as_bytes()).is_err())
        {
            self.error(s.key(name), format!("{bad:?} is not a header name"));
        }
        Some(names)
    }

    /// RFC 8707 §2: an absolute URI without a fragment; meaningless on a route without a token.
    fn resource(&mut self, s: &Section<'_>, token: TokenPolicy, raw: String) -> Option<String> {
        if token == TokenPolicy::None {
            self.error(s.key("resource"), "a route with token = \"none\" gets no token to bind to a resource");
            return None;
        }
        match Url::parse(&raw) {
            Ok(url) if url.fragment().is_none() && !url.cannot_be_a_base() => Some(raw),
            _ => {
                self.error(s.key("resource"), format!("must be an absolute URI without a fragment (got {raw:?})"));
                None
            }
        }
    }

    fn api_prefix(&mut self, s: &Section<'_>, raw: String, frontend_path: &str) -> Option<String> {
        let key = s.key("prefix");
        if !raw.starts_with('/') {
            self.error(key, format!("must start with '/' (got {raw:?})"));
            return None;
        }
        let prefix = raw.trim_end_matches('/').to_string();
        // A frontend's routes live under its path: the part after it is what must stay off bff's
        // own routes and off the SPA's root.
        let Some(within) = prefix.strip_prefix(frontend_path).filter(|w| w.is_empty() || w.starts_with('/')) else {
            self.error(key, format!("{prefix:?} must be under the frontend's path {frontend_path:?}"));
            return None;
        };
        if within.is_empty() {
            let root = if frontend_path.is_empty() { "/" } else { frontend_path };
            self.error(key, format!("must not be {root:?}: the SPA and /auth live there"));
            return None;
        }
        // Every own path is reserved whether or not this configuration serves it (`/metrics`
        // off the public listener, `/.well-known/jwks.json` without `private_key_jwt`): turning
        // a feature on must not take a path an API already has.
        if let Some(reserved) = crate::paths::reserved_prefix_of(within) {
            self.error(
                key,
                format!("{prefix:?} collides with a route of bff itself (under {frontend_path}{reserved})"),
            );
            return None;
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || "/-._~".contains(c);
        if !prefix.chars().all(allowed)
            || prefix.contains("//")
            || prefix.split('/').any(|seg| seg == "." || seg == "..")
        {
            self.error(key, format!("{prefix:?} must be a plain path (letters, digits, '-', '.', '_', '~')"));
            return None;
        }
        Some(prefix)
    }
}

/// How a session cookie is named where it is configured.
pub(super) struct CookieNaming<'a> {
    pub(super) https: bool,
    /// https, or http on a loopback host: where browsers keep `Secure` (and prefixed) cookies.
    pub(super) secure_context: bool,
    pub(super) base: &'a str,
    pub(super) path: &'a str,
    pub(super) default_prefix: &'a str,
    pub(super) default_same_site: SameSitePolicy,
    /// Whether a name from before `cookie_prefix` is still read (the implicit frontend only).
    pub(super) legacy: bool,
}

/// A session cookie's name, the prefix setting it was made with, and the name it had before.
pub(super) struct Cookie {
    pub(super) name: String,
    pub(super) prefix: String,
    pub(super) legacy: Option<String>,
}

/// https, or http on `localhost` or a loopback address: browsers treat those as secure origins.
pub(super) fn is_secure_context(url: &Url) -> bool {
    url.scheme() == "https"
        || match url.host() {
            Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
}

/// Resolves `raw` against `origin`; the result must stay on that origin.
pub(crate) fn resolve_same_origin(origin: &Url, raw: &str) -> Result<Url, String> {
    let url = origin.join(raw).map_err(|e| format!("not a valid URL or path ({e})"))?;
    if url.origin() != origin.origin() {
        return Err(format!(
            "must be on the same origin as server.public_url ({})",
            origin.origin().ascii_serialization()
        ));
    }
    Ok(url)
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty() && scope.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}
