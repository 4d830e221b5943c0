//! Cookie policy: names, attributes, the session middleware built from them, and reading the
//! session cookie directly where the session middleware is not mounted (the API proxy).

use std::sync::{Arc, Mutex};

use actix_session::SessionMiddleware;
use actix_session::config::{CookieContentSecurity, PersistentSession, TtlExtensionPolicy};
use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, CookieJar, Key, SameSite, time};
use actix_web::http::header::HeaderMap;
use secrecy::SecretString;

use super::{SessionHandle, SessionId, SessionStoreAdapter};
use crate::bounded::BoundedLru;
use crate::config::{Config, FrontendIdentity, SameSitePolicy};
use crate::crypto;
use crate::metrics::{CacheName, Metrics};

/// How long a browser-binding login cookie lives: as long as a pending login.
pub const LOGIN_COOKIE_MAX_AGE_SECS: i64 = 600;

#[derive(Clone)]
pub struct CookiePolicy {
    pub name: String,
    pub login_name: String,
    pub secure: bool,
    pub same_site: SameSite,
    pub max_age: time::Duration,
    /// `/`, or the frontend's path: its cookies go to its own routes only.
    pub path: String,
    /// The name before `session.cookie_prefix` (`__Host-bff`): read, and renamed at `/auth`.
    legacy_name: Option<String>,
    /// The current key first; older ones (secret rotation) still open cookies.
    keys: Vec<Key>,
    /// Session cookies already opened (with `tokens.local_cache`), see `OpenedCookies`.
    opened: Option<Arc<OpenedCookies>>,
}

/// Session cookie values already opened with the current key, and the session each names: the
/// proxy's hot path then skips parsing, decrypting and hashing the cookie (≈ 15 % of a call).
///
/// Why remembering is safe: the map's key is the whole sealed value as the browser sent it, and
/// opening is a pure function of that value and the keys, which do not change while bff runs;
/// so a remembered value opens to the same id every time, and any other value (tampered,
/// forged, sealed with another secret) misses and is opened — and refused — as before. Whether
/// the session is still alive is not remembered here (the token store decides, every call).
/// Only values opened with the current key are kept, so one sealed with a rotated-out secret is
/// still resealed. The values are bearer credentials: they are held like the token cache's
/// access tokens, never logged (no `Debug`), bounded by `tokens.local_cache_max_entries` and
/// `tokens.local_cache_max_bytes`.
///
/// Only values in the form bff writes are kept (`is_canonical_sealed`): the same cookie padded,
/// quoted or percent-encoded otherwise opens just as well, and keeping each such spelling let
/// one cookie fill the cache with copies of itself (issue 22). Those are opened every time.
struct OpenedCookies(Mutex<BoundedLru<String, SessionHandle>>);

/// Length of a sealed session id in standard base64: nonce (12 bytes), the id (43, see
/// `crypto::random_token`) and the tag (16) make 71 bytes, so 96 characters ending in one `=`.
const SEALED_LEN: usize = (12 + 43 + 16_usize).div_ceil(3) * 4;

/// Whether `raw` is a sealed session cookie exactly as bff writes it: the session middleware
/// percent-encodes the value on the way out (`/` as `%2F`, the padding `=` as `%3D`; `+` and
/// letters and digits as they are), the reseal (`http::reseal_session_cookie`) writes it plain.
/// Anything else — whitespace, quotes, other or lower-case escapes, a mix of both forms — is
/// not. Each value in this form decodes to one sealed value and its length is bounded (288 at
/// most), so a session has at most two remembered spellings.
fn is_canonical_sealed(raw: &str) -> bool {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'+';
    if let Some(body) = raw.strip_suffix("%3D") {
        let (mut chars, mut rest) = (0, body.as_bytes());
        while let Some((&b, tail)) = rest.split_first() {
            rest = if plain(b) {
                tail
            } else if let Some(tail) = rest.strip_prefix(b"%2F") {
                tail
            } else {
                return false;
            };
            chars += 1;
        }
        chars == SEALED_LEN - 1
    } else if let Some(body) = raw.strip_suffix('=') {
        body.len() == SEALED_LEN - 1 && body.bytes().all(|b| plain(b) || b == b'/')
    } else {
        false
    }
}

impl std::fmt::Debug for CookiePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookiePolicy").field("name", &self.name).field("secure", &self.secure).finish()
    }
}

/// The cookie key: derived from the secret, identical on every instance, and bound to its
/// frontend (a cookie one frontend sealed opens at no other; the implicit frontend keeps the key
/// it had before frontends existed).
fn cookie_key(secret: &SecretString, frontend: &FrontendIdentity) -> Key {
    let purpose = if frontend.implicit {
        "bff session cookie".to_string()
    } else {
        format!("bff session cookie of frontend {}", frontend.name)
    };
    Key::from(&crypto::derive_key::<64>(secret, &purpose))
}

impl CookiePolicy {
    pub fn from_config(config: &Config, metrics: &Metrics) -> CookiePolicy {
        let name = config.session.cookie_name.clone();
        // `__Host-bff` → `__Host-bff-login`; the prefix rules (Secure, Path=/, no Domain) hold for both.
        let login_name = format!("{name}-login");
        // A prefixed name needs `Secure` (browsers honour it on http://localhost too).
        let secure = config.is_https() || name.starts_with("__");
        CookiePolicy {
            name,
            login_name,
            secure,
            same_site: match config.session.same_site {
                SameSitePolicy::Lax => SameSite::Lax,
                SameSitePolicy::Strict => SameSite::Strict,
            },
            // The cookie lives as long as the session can (the absolute timeout); the idle timeout
            // is enforced by the store's time to live, which requests extend.
            max_age: time::Duration::seconds(
                i64::try_from(config.session.absolute_timeout.as_secs()).unwrap_or(i64::MAX),
            ),
            keys: config.session.secrets.iter().map(|secret| cookie_key(secret, &config.frontend)).collect(),
            legacy_name: config.session.cookie_legacy_name.clone(),
            path: if config.frontend.path.is_empty() { "/".to_string() } else { config.frontend.path.clone() },
            opened: config.tokens.local_cache.then(|| {
                Arc::new(OpenedCookies(Mutex::new(BoundedLru::new(
                    config.tokens.local_cache_max_entries,
                    config.tokens.local_cache_max_bytes,
                    metrics.cache_gauges(CacheName::OpenedCookies),
                ))))
            }),
        }
    }

    pub fn middleware(&self, store: SessionStoreAdapter) -> SessionMiddleware<SessionStoreAdapter> {
        SessionMiddleware::builder(store, self.current_key().clone())
            .cookie_name(self.name.clone())
            .cookie_secure(self.secure)
            .cookie_http_only(true)
            .cookie_same_site(self.same_site)
            .cookie_path(self.path.clone())
            .cookie_domain(None)
            .cookie_content_security(CookieContentSecurity::Private)
            .session_lifecycle(
                PersistentSession::default()
                    .session_ttl(self.max_age)
                    .session_ttl_extension_policy(TtlExtensionPolicy::OnStateChanges),
            )
            .build()
    }

    /// The browser-binding cookie of a login in progress (RFC 9700 §4.7). Always `Lax`: the
    /// callback is a cross-site top-level navigation from the IdP, which `Strict` would strip.
    pub fn login_cookie(&self, value: &str) -> Cookie<'static> {
        Cookie::build(self.login_name.clone(), value.to_string())
            .path(self.path.clone())
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .max_age(time::Duration::seconds(LOGIN_COOKIE_MAX_AGE_SECS))
            .finish()
    }

    pub fn login_cookie_removal(&self) -> Cookie<'static> {
        let mut c = self.login_cookie("");
        c.make_removal();
        c
    }

    /// Clears the session cookie from places that do not run the session middleware.
    pub fn session_cookie_removal(&self) -> Cookie<'static> {
        let mut c = self.session_cookie_with(String::new());
        c.make_removal();
        c
    }

    /// The session cookie's attributes, as the session middleware sets them.
    fn session_cookie_with(&self, value: String) -> Cookie<'static> {
        Cookie::build(self.name.clone(), value)
            .path(self.path.clone())
            .http_only(true)
            .secure(self.secure)
            .same_site(self.same_site)
            .max_age(self.max_age)
            .finish()
    }

    /// The browser-binding value, if it is one bff could have made (`crypto::random_token`).
    pub fn login_binding(&self, req: &HttpRequest) -> Option<String> {
        req.cookie(&self.login_name).map(|c| c.value().to_string()).filter(|v| crypto::is_random_token(v))
    }

    fn current_key(&self) -> &Key {
        let Some(key) = self.keys.first() else { unreachable!("config validation guarantees at least one secret") };
        key
    }

    /// Opens the session cookie with the first key that can; the index of that key. Reads the
    /// header itself: `HttpRequest::cookie` caches what it parses, and the cookie may be
    /// rewritten after this (see `http::reseal_session_cookie`).
    fn open(&self, req: &HttpRequest) -> Option<(SessionId, usize)> {
        self.open_named(req, &self.name)
    }

    fn open_named(&self, req: &HttpRequest, name: &str) -> Option<(SessionId, usize)> {
        let cookie = cookie_pairs(req.headers())
            .filter_map(|pair| Cookie::parse_encoded(pair.to_string()).ok())
            .find(|c| c.name() == name)?;
        self.open_cookie(cookie)
    }

    /// The session of a cookie under the name from before `session.cookie_prefix`, when the
    /// request has none under the current name.
    fn open_legacy(&self, req: &HttpRequest) -> Option<SessionId> {
        let legacy = self.legacy_name.as_deref()?;
        if self.raw_session_cookie(req).is_some() {
            return None;
        }
        self.open_named(req, legacy).map(|(id, _)| id)
    }

    /// Opens a parsed session cookie with the first key that can; the index of that key. The
    /// name is part of what was sealed: a value opens under its own name only.
    fn open_cookie(&self, cookie: Cookie<'static>) -> Option<(SessionId, usize)> {
        let name = cookie.name().to_string();
        let mut jar = CookieJar::new();
        jar.add_original(cookie);
        self.keys.iter().enumerate().find_map(|(i, key)| {
            let opened = jar.private(key).get(&name)?;
            SessionId::parse(opened.value()).map(|id| (id, i))
        })
    }

    /// Reads and decrypts the session cookie; `None` when absent, tampered or foreign.
    pub fn session_cookie(&self, req: &HttpRequest) -> Option<SessionCookie> {
        self.open(req).map(|(id, _)| id).or_else(|| self.open_legacy(req)).map(|id| SessionCookie { id })
    }

    /// The session the request's cookie names, as `session_cookie` tells, remembering values
    /// already opened (see `OpenedCookies`).
    pub fn session_handle(&self, req: &HttpRequest) -> Option<SessionHandle> {
        let (Some(opened), Some(raw)) = (&self.opened, self.raw_session_cookie(req)) else {
            // No memo, or no cookie under the current name (a legacy one may open).
            return self.session_cookie(req).map(|c| c.id.handle());
        };
        let mut memo = opened.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(handle) = memo.get(raw) {
            return Some(handle.clone());
        }
        drop(memo);
        match self.open_value(raw) {
            Some((id, 0)) if is_canonical_sealed(raw) => {
                let handle = id.handle();
                let bytes = raw.len() + handle.as_str().len();
                opened.0.lock().unwrap_or_else(|p| p.into_inner()).put(raw.to_string(), handle.clone(), bytes);
                Some(handle)
            }
            Some((id, _)) => Some(id.handle()),
            // Not this value (another cookie of the same name may open): as without the memo.
            None => self.session_cookie(req).map(|c| c.id.handle()),
        }
    }

    /// The first session cookie's value as sent, without parsing or decoding it.
    fn raw_session_cookie<'r>(&self, req: &'r HttpRequest) -> Option<&'r str> {
        cookie_pairs(req.headers())
            .filter_map(|pair| pair.split_once('='))
            .find(|(name, _)| *name == self.name)
            .map(|(_, value)| value)
    }

    /// Opens one sealed value; the index of the key that opened it.
    fn open_value(&self, raw: &str) -> Option<(SessionId, usize)> {
        self.open_cookie(Cookie::parse_encoded(format!("{}={raw}", self.name)).ok()?)
    }

    /// The session cookie sealed again with the current key, when the request's opens only
    /// with an older one (after `session.secret` was rotated), or under the current name when
    /// the request has it under the name from before `session.cookie_prefix` (with that one's
    /// removal).
    pub fn resealed(&self, req: &HttpRequest) -> Option<Resealed> {
        let (id, removal) = match self.open(req) {
            Some((_, 0)) => return None,
            Some((id, _)) => (id, None),
            None => {
                let id = self.open_legacy(req)?;
                let legacy = self.legacy_name.clone()?;
                let mut removal = Cookie::build(legacy, "").path("/").http_only(true).secure(true).finish();
                removal.make_removal();
                (id, Some(removal))
            }
        };
        let mut jar = CookieJar::new();
        jar.private_mut(self.current_key()).add(self.session_cookie_with(id.expose().to_string()));
        jar.delta().next().cloned().map(|cookie| Resealed { cookie, removal })
    }
}

/// A session cookie to send back in place of the request's (see [`CookiePolicy::resealed`]).
pub struct Resealed {
    pub cookie: Cookie<'static>,
    /// The cookie it replaces, under another name, to clear.
    pub removal: Option<Cookie<'static>>,
}

/// The `name=value` pairs of every `Cookie` header, trimmed, as sent (not decoded).
pub fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
}

/// A session cookie that decrypted: its id may still name no live session.
#[derive(Debug, Clone)]
pub struct SessionCookie {
    pub id: SessionId,
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn config(public_url: &str, same_site: &str) -> Config {
        Config::from_toml(&format!(
            "[server]\npublic_url = \"{public_url}\"\n[oidc]\nissuer = \"https://idp\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
             [session]\nsecret = \"{}\"\nsame_site = \"{same_site}\"\n",
            "k".repeat(64)
        ))
        .unwrap()
    }

    fn policy(config: &Config) -> CookiePolicy {
        CookiePolicy::from_config(config, &Metrics::new().unwrap())
    }

    /// A session cookie sealed with the policy's current key: its value as the session
    /// middleware sends it (`Set-Cookie`, percent-encoded) and as the reseal does (plain).
    fn sealed(policy: &CookiePolicy, id: &SessionId) -> (String, String) {
        let mut jar = CookieJar::new();
        jar.private_mut(policy.current_key()).add(policy.session_cookie_with(id.expose().to_string()));
        let Some(cookie) = jar.delta().next().cloned() else { panic!("cookie") };
        let encoded = cookie.encoded().to_string();
        let Some(value) = encoded.split(';').next().and_then(|p| p.strip_prefix("bff=")) else { panic!("{encoded}") };
        (value.to_string(), cookie.value().to_string())
    }

    fn remembered(policy: &CookiePolicy) -> usize {
        policy.opened.as_ref().map_or(0, |o| o.0.lock().unwrap().count())
    }

    #[test]
    fn the_forms_bff_writes_are_canonical_and_nothing_else() {
        let policy = policy(&config("http://localhost:8080", "lax"));
        for _ in 0..50 {
            let (encoded, plain) = sealed(&policy, &SessionId::generate());
            assert!(is_canonical_sealed(&encoded), "{encoded}");
            assert!(is_canonical_sealed(&plain), "{plain}");
            assert_eq!(plain.len(), SEALED_LEN);
            for other in [
                format!(" {encoded}"),
                format!("\t{plain}"),
                format!("{encoded} "),
                format!("\"{encoded}\""),
                encoded.replace("%2F", "%2f"),
                encoded.replacen('A', "%41", 1),
                plain[..SEALED_LEN - 1].to_string(),
                format!("{plain}="),
                format!("A{plain}"),
                plain.replace('=', "%3D").replacen('/', "%2F", 1),
            ] {
                // A replacement that found nothing to replace leaves bff's own form.
                if other != encoded && other != plain {
                    assert!(!is_canonical_sealed(&other), "{other}");
                }
            }
        }
        assert!(!is_canonical_sealed(""));
        assert!(!is_canonical_sealed("%3D"));
        assert!(!is_canonical_sealed(&format!("{}%3D", "%2F".repeat(SEALED_LEN))));
    }

    #[test]
    fn other_spellings_of_a_cookie_open_but_are_not_remembered() {
        let policy = policy(&config("http://localhost:8080", "lax"));
        let id = SessionId::generate();
        let (encoded, plain) = sealed(&policy, &id);
        let request = |value: &str| {
            TestRequest::default().insert_header(("cookie", format!("other=1; bff={value}"))).to_http_request()
        };
        let spellings = [
            format!("  {encoded}"),
            format!("\t \t{encoded}"),
            format!("\"{encoded}\""),
            encoded.replace("%3D", "%3d"),
            encoded.replacen(|c: char| c.is_ascii_alphabetic(), "%4A", 1),
        ];
        for value in &spellings {
            let expected = Cookie::parse_encoded(format!("bff={value}")).ok().and_then(|c| policy.open_cookie(c));
            assert_eq!(
                policy.session_handle(&request(value)),
                expected.map(|(id, _)| id.handle()),
                "as the session middleware reads it: {value}"
            );
        }
        for value in &spellings[..4] {
            assert_eq!(policy.session_handle(&request(value)), Some(id.handle()), "{value}");
        }
        assert_eq!(remembered(&policy), 0, "no spelling but bff's own is remembered");
        for value in [&encoded, &plain, &encoded] {
            assert_eq!(policy.session_handle(&request(value)), Some(id.handle()));
        }
        assert_eq!(remembered(&policy), 2, "the two forms bff writes");
    }

    #[test]
    fn http_and_https_policies() {
        let http = policy(&config("http://localhost:8080", "lax"));
        assert_eq!((http.name.as_str(), http.secure, http.same_site), ("bff", false, SameSite::Lax));
        let https = policy(&config("https://app.example", "strict"));
        assert_eq!((https.name.as_str(), https.secure), ("__Host-Http-bff", true));
        assert_eq!(https.login_name, "__Host-Http-bff-login");
        assert_eq!(https.same_site, SameSite::Strict);
        let login = https.login_cookie("v");
        assert_eq!(login.same_site(), Some(SameSite::Lax));
        assert_eq!((login.http_only(), login.secure(), login.path()), (Some(true), Some(true), Some("/")));
        assert!(login.domain().is_none());
    }

    #[test]
    fn a_cookie_under_the_name_before_the_prefix_opens_and_is_renamed() {
        let https = policy(&config("https://app.example", "strict"));
        let id = SessionId::generate();
        // What an earlier bff set: the same sealing under `__Host-bff`.
        let mut jar = CookieJar::new();
        jar.private_mut(https.current_key()).add(Cookie::new("__Host-bff", id.expose().to_string()));
        let legacy = jar.delta().next().cloned().unwrap();
        let req = TestRequest::default()
            .insert_header((actix_web::http::header::COOKIE, format!("__Host-bff={}", legacy.value())))
            .to_http_request();
        assert_eq!(https.session_handle(&req), Some(id.handle()));
        let renamed = https.resealed(&req).expect("renamed");
        assert_eq!(renamed.cookie.name(), "__Host-Http-bff");
        let removal = renamed.removal.expect("the old one cleared");
        assert_eq!((removal.name(), removal.value()), ("__Host-bff", ""));
        // With a cookie under the current name, the old one is not looked at.
        let both = TestRequest::default()
            .insert_header((
                actix_web::http::header::COOKIE,
                format!("__Host-bff={}; __Host-Http-bff=garbage", legacy.value()),
            ))
            .to_http_request();
        assert_eq!(https.session_handle(&both), None);
        // Sealed under another name, a value does not open under this one.
        let renamed_value = TestRequest::default()
            .insert_header((actix_web::http::header::COOKIE, format!("__Host-Http-bff={}", legacy.value())))
            .to_http_request();
        assert_eq!(https.session_handle(&renamed_value), None);
    }

    #[test]
    fn session_cookie_round_trips_and_rejects_tampering() {
        let policy = policy(&config("http://localhost:8080", "lax"));
        let id = SessionId::generate();
        let mut jar = CookieJar::new();
        jar.private_mut(policy.current_key()).add(Cookie::new(policy.name.clone(), id.expose().to_string()));
        let Some(sealed) = jar.get(&policy.name).map(|c| c.value().to_string()) else { panic!("cookie") };

        let req = TestRequest::default().cookie(Cookie::new("bff", sealed.clone())).to_http_request();
        assert_eq!(policy.session_cookie(&req).map(|c| c.id.handle()), Some(id.handle()));

        let mut tampered = sealed.into_bytes();
        tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
        let req = TestRequest::default()
            .cookie(Cookie::new("bff", String::from_utf8(tampered).unwrap_or_default()))
            .to_http_request();
        assert!(policy.session_cookie(&req).is_none());

        let req = TestRequest::default().cookie(Cookie::new("bff", id.expose().to_string())).to_http_request();
        assert!(policy.session_cookie(&req).is_none(), "an unencrypted id is not accepted");
    }

    #[test]
    fn remembered_cookies_open_as_before_and_tampered_ones_still_fail() {
        let policy = policy(&config("http://localhost:8080", "lax"));
        let id = SessionId::generate();
        let mut jar = CookieJar::new();
        jar.private_mut(policy.current_key()).add(Cookie::new(policy.name.clone(), id.expose().to_string()));
        let Some(sealed) = jar.get(&policy.name).map(|c| c.value().to_string()) else { panic!("cookie") };
        let request = |value: &str| {
            TestRequest::default().insert_header(("cookie", format!("other=1; bff={value}"))).to_http_request()
        };
        for _ in 0..2 {
            assert_eq!(policy.session_handle(&request(&sealed)), Some(id.handle()), "opened, then remembered");
        }
        let mut tampered = sealed.clone().into_bytes();
        tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap_or_default();
        assert_eq!(policy.session_handle(&request(&tampered)), None);
        assert_eq!(policy.session_handle(&request(id.expose())), None);
        assert_eq!(policy.session_handle(&TestRequest::default().to_http_request()), None);
    }
}

#[cfg(test)]
mod properties {
    use actix_web::test::TestRequest;
    use proptest::prelude::*;

    use super::*;

    const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// One policy for every case: its memory of opened cookies fills as the cases run.
    fn policy() -> &'static CookiePolicy {
        static POLICY: std::sync::OnceLock<CookiePolicy> = std::sync::OnceLock::new();
        POLICY.get_or_init(|| {
            let toml = format!(
                "[server]\npublic_url = \"http://localhost:8080\"\n[oidc]\nissuer = \"https://idp\"\nclient_id = \"c\"\n\
                 client_secret = \"s\"\n[session]\nsecret = \"{}\"\n",
                "k".repeat(64)
            );
            CookiePolicy::from_config(&Config::from_toml(&toml).unwrap(), &Metrics::new().unwrap())
        })
    }

    fn with_cookie_header(value: &str) -> Option<HttpRequest> {
        let value = actix_web::http::header::HeaderValue::from_str(value).ok()?;
        Some(TestRequest::default().insert_header((actix_web::http::header::COOKIE, value)).to_http_request())
    }

    fn sealed_plain(policy: &CookiePolicy, id: &SessionId) -> String {
        let mut jar = CookieJar::new();
        jar.private_mut(policy.current_key()).add(Cookie::new(policy.name.clone(), id.expose().to_string()));
        jar.get(&policy.name).map(|c| c.value().to_string()).unwrap_or_default()
    }

    proptest! {
        #![proptest_config(crate::prop::config())]

        /// Any `Cookie` header: no panic, and the remembered answer is the one opening gives.
        #[test]
        fn any_cookie_header_is_read_without_panic_and_as_opening_reads_it(
            header in prop_oneof!["\\PC{0,200}", "(bff|bff-login|x)=[ -~]{0,120}(; (bff|bff-login)=[ -~]{0,40}){0,2}"],
        ) {
            let policy = policy();
            if let Some(req) = with_cookie_header(&header) {
                let opened = policy.session_cookie(&req).map(|c| c.id.handle());
                prop_assert_eq!(policy.session_handle(&req), opened.clone());
                prop_assert_eq!(policy.session_handle(&req), opened);
                if let Some(binding) = policy.login_binding(&req) {
                    prop_assert!(crypto::is_random_token(&binding));
                }
            }
        }

        /// One character of a sealed cookie changed, added or removed: never accepted.
        #[test]
        fn a_modified_session_cookie_is_never_accepted(
            at in any::<prop::sample::Index>(),
            by in any::<prop::sample::Index>(),
            how in 0u8..3,
        ) {
            let policy = policy();
            let id = SessionId::generate();
            let plain = sealed_plain(policy, &id);
            let c = BASE64[by.index(BASE64.len())];
            let modified = crate::prop::mutate(&plain, at, c, how);
            prop_assert_ne!(&modified, &plain);
            let req = with_cookie_header(&format!("bff={modified}")).unwrap();
            prop_assert_eq!(policy.session_handle(&req), None, "{} from {}", modified, plain);
            prop_assert!(policy.session_cookie(&req).is_none());
        }

        #[test]
        fn a_login_binding_is_the_cookie_as_sent_and_well_formed(
            value in prop_oneof!["[ -~]{0,60}", "[ \t]{0,3}[A-Za-z0-9_-]{43}[ \t]{0,3}", "[A-Za-z0-9_=+/-]{42,44}"],
        ) {
            let policy = policy();
            if let Some(req) = with_cookie_header(&format!("bff-login={value}"))
                && let Some(binding) = policy.login_binding(&req)
            {
                prop_assert!(crypto::is_random_token(&binding));
                prop_assert_eq!(binding.as_str(), value.trim());
            }
        }
    }
}
