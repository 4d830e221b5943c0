//! `[[frontend]]` tables: each read as a whole configuration over the shared sections, and the
//! rules that keep frontends apart (names, hosts and paths, cookies).

use std::collections::BTreeSet;
use std::path::PathBuf;

use url::Url;

use super::sections::{CookieNaming, is_secure_context};
use super::walker::{Section, Walker};
use super::{Config, FrontendIdentity, LogConfig, ServerConfig, SessionConfig, TelemetryConfig, TokensConfig};

impl Walker<'_> {
    /// The `[[frontend]]` tables, each made a whole configuration over the shared sections.
    pub(super) fn frontends(&mut self, top: &Section<'_>, shared: Option<&Shared>) -> Option<Vec<Config>> {
        let items = self.tables(top, "frontend")?;
        if items.is_empty() {
            self.error("frontend", "must hold at least one [[frontend]] table");
            return None;
        }
        let several = items.len() > 1;
        let mut out: Vec<Config> = Vec::new();
        let mut complete = true;
        for (i, dict) in items.into_iter().enumerate() {
            let mut f = Section { path: format!("frontend[{i}]"), dict: Some(dict), known: BTreeSet::new() };
            match self.frontend(&mut f, shared, several) {
                Some(config) => {
                    self.check_apart(&f, &config, &out);
                    out.push(config);
                }
                None => complete = false,
            }
            self.finish(f);
        }
        complete.then_some(out)
    }

    /// One `[[frontend]]` table over the shared sections.
    fn frontend(&mut self, f: &mut Section<'_>, shared: Option<&Shared>, several: bool) -> Option<Config> {
        let name = self.required_string(f, "name").and_then(|name| {
            let valid = name.len() <= 32
                && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if !valid {
                self.error(f.key("name"), "at most 32 of a-z, 0-9, '-' and '_', starting with a letter or digit");
                return None;
            }
            Some(name)
        });
        let hosts: Vec<String> = self
            .string_list(f, "hosts")
            .unwrap_or_default()
            .iter()
            .filter_map(|raw| match frontend_host(raw) {
                Some(host) => Some(host),
                None => {
                    self.error(f.key("hosts"), format!("{raw:?} is not a host or host:port"));
                    None
                }
            })
            .collect();
        let path = self.string_or(f, "path", "");
        let path = if path.is_empty() || path == "/" { Some(String::new()) } else { self.frontend_path(f, &path) };
        let public_url = match self.string(f, "public_url") {
            Some(raw) => self.origin(f, "public_url", &raw),
            None if hosts.is_empty() => shared.map(|s| s.server.public_url.clone()),
            None => {
                self.error(f.key("public_url"), "missing (required with hosts: the origin the browser sees)");
                None
            }
        };
        let static_dir = self.string_or(f, "static_dir", "");
        let share = self.optional_uint(f, "max_upstream_concurrency", 1).map(|n| n as usize);
        let (Some(shared), Some(public_url), Some(path)) = (shared, public_url, path) else {
            // Read anyway, so every problem of the table is reported at once.
            for own in ["oidc", "session", "api"] {
                f.known.insert(own);
            }
            return None;
        };
        if shared.server.tls.is_some() && public_url.scheme() != "https" {
            self.error(f.key("public_url"), "must be https:// when server.tls_cert_file is set (bff serves TLS)");
        }
        let all = shared.server.max_upstream_concurrency;
        // Several frontends: none may take more than three quarters of the instance by default,
        // so a crowd at one leaves the others room.
        let default_share = if several { (all * 3 / 4).max(1) } else { all };
        let server = ServerConfig {
            public_url,
            static_dir: (!static_dir.is_empty()).then(|| PathBuf::from(static_dir)),
            max_upstream_concurrency_per_frontend: share.unwrap_or(default_share).min(all),
            ..shared.server.clone()
        };
        let oidc = self.oidc(f, Some(&server), &format!("{path}/"));
        f.known.insert("session");
        let session = self.frontend_session(f, &shared.session, &server, name.as_deref(), &path);
        let api = self.apis(f, &path);
        Some(Config {
            server,
            oidc: oidc?,
            session: session?,
            tokens: shared.tokens.clone(),
            api,
            log: shared.log.clone(),
            telemetry: shared.telemetry.clone(),
            frontend: FrontendIdentity { name: name?, hosts, path, implicit: false },
            frontends: Vec::new(),
        })
    }

    /// A frontend's `[frontend.session]`: its cookie and lifetimes (the rest is shared); its
    /// store keys are its own.
    fn frontend_session(
        &mut self,
        f: &Section<'_>,
        shared: &SessionConfig,
        server: &ServerConfig,
        name: Option<&str>,
        path: &str,
    ) -> Option<SessionConfig> {
        let mut s = self.section(f, "session");
        let https = server.public_url.scheme() == "https";
        let name = name?;
        let base = format!("bff-{name}");
        // The shared prefix where it fits this frontend's origin (an http frontend among https
        // ones gets none).
        let secure_context = is_secure_context(&server.public_url);
        let default_prefix = if secure_context { shared.cookie_prefix.as_str() } else { "" };
        let naming = CookieNaming {
            https,
            secure_context,
            base: &base,
            path,
            default_prefix,
            default_same_site: shared.same_site,
            legacy: false,
        };
        let (cookie, same_site) = self.cookie(&mut s, naming);
        let cookie_name = cookie.name;
        if cookie_name.starts_with("__Host-") && !path.is_empty() {
            self.error(s.key("cookie_name"), "a __Host- cookie cannot be limited to the frontend's path");
        }
        let (idle_timeout, absolute_timeout) = self.lifetimes(&mut s, shared.idle_timeout, shared.absolute_timeout);
        let (dbsc, dbsc_cookie_ttl) = self.dbsc(&mut s, shared.dbsc, shared.dbsc_cookie_ttl);
        self.finish(s);
        Some(SessionConfig {
            cookie_name,
            cookie_prefix: cookie.prefix,
            cookie_legacy_name: None,
            same_site: same_site?,
            idle_timeout,
            absolute_timeout,
            key_prefix: format!("{}{}{name}:", shared.key_prefix, crate::session::FRONTEND_KEYS),
            dbsc: dbsc?,
            dbsc_cookie_ttl,
            ..shared.clone()
        })
    }

    /// Frontends must be told apart: no two select the same host and path, none shares another's
    /// cookie name.
    fn check_apart(&mut self, f: &Section<'_>, config: &Config, earlier: &[Config]) {
        let selects = |c: &Config| -> Vec<(String, String)> {
            let hosts = if c.frontend.hosts.is_empty() { vec!["*".to_string()] } else { c.frontend.hosts.clone() };
            hosts.into_iter().map(|h| (h, c.frontend.path.clone())).collect()
        };
        for (j, other) in earlier.iter().enumerate() {
            if other.frontend.name == config.frontend.name {
                self.error(f.key("name"), format!("duplicate name (also frontend[{j}])"));
            }
            if let Some((host, path)) = selects(config).into_iter().find(|s| selects(other).contains(s)) {
                let path = if path.is_empty() { "/" } else { path.as_str() };
                self.error(f.key("path"), format!("host {host:?} and path {path:?} are also frontend[{j}]'s"));
            }
            if other.session.cookie_name == config.session.cookie_name {
                self.error(f.key("session.cookie_name"), format!("also frontend[{j}]'s cookie"));
            }
        }
    }

    /// A frontend's `path`: a plain path off bff's own routes.
    fn frontend_path(&mut self, f: &Section<'_>, raw: &str) -> Option<String> {
        let key = f.key("path");
        let path = raw.trim_end_matches('/').to_string();
        let allowed = |c: char| c.is_ascii_alphanumeric() || "/-._~".contains(c);
        if !path.starts_with('/')
            || !path.chars().all(allowed)
            || path.contains("//")
            || path.split('/').any(|seg| seg == "." || seg == "..")
        {
            self.error(
                key,
                format!("{raw:?} must be a plain path starting with '/' (letters, digits, '-', '.', '_', '~')"),
            );
            return None;
        }
        if let Some(reserved) = crate::paths::reserved_prefix_of(&path) {
            self.error(key, format!("{path:?} collides with a route of bff itself (under {reserved})"));
            return None;
        }
        Some(path)
    }
}

/// The shared sections every frontend is made over.
pub(super) struct Shared {
    pub(super) server: ServerConfig,
    pub(super) session: SessionConfig,
    pub(super) tokens: TokensConfig,
    pub(super) log: LogConfig,
    pub(super) telemetry: TelemetryConfig,
}

/// A `hosts` entry as requests are matched against it: lower-case `host` or `host:port`.
fn frontend_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.contains(['/', '@', '?', '#']) {
        return None;
    }
    let url = Url::parse(&format!("http://{raw}/")).ok()?;
    let host = url.host_str()?.to_ascii_lowercase();
    // `Url` drops the scheme's default port: `host:80` is kept as written.
    let port = url
        .port()
        .map(|p| p.to_string())
        .or_else(|| raw.rsplit_once(':').map(|(_, p)| p.to_string()).filter(|p| p == "80"));
    Some(match port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}
