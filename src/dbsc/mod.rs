//! Device Bound Session Credentials (W3C webappsec-dbsc): the session cookie alone stops being
//! enough. At sign-in bff offers the browser a registration; the browser makes a key pair (in
//! a TPM where it has one) and signs bff's challenge; bff keeps the public key in the sealed
//! token set and hands out a short-lived *bound cookie* which the browser renews only by
//! signing a new challenge with that key. A bound session's calls need both cookies: a copied
//! session cookie is worth nothing once the copied bound cookie expires.
//!
//! This module is the protocol and the policy, without storage: the headers and the session
//! instructions (`wire`), the signed proofs (`proof`), the challenges and the bound cookie
//! (`tickets`), and the check a bound session's request must pass. Registering and refreshing
//! (which read and write the session) are `bound_sessions`'. docs/DBSC-NOTES.md has the wire
//! details as Chromium shows them.

mod proof;
mod tickets;
mod wire;

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite, time};
use actix_web::http::header::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::config::{Config, DbscMode, TokenPolicy};
use crate::paths::OwnRoute;
use crate::session::{CookiePolicy, SessionHandle, cookie_pairs};
use proof::unquote;
pub use proof::{Alg, ProofError, PublicJwk, verify_refresh, verify_registration};
pub use tickets::{Challenge, CookieCheck, Purpose, TicketKeys};
pub use wire::{SESSION_ID_HEADER, SKIPPED_HEADER, ended, parse_session_id};

/// The request header carrying the signed proof (registration and refresh).
pub const RESPONSE_HEADER: &str = "secure-session-response";
/// The answer header offering a registration.
pub const REGISTRATION_HEADER: &str = "secure-session-registration";
/// The answer header handing the browser a challenge to sign.
pub const CHALLENGE_HEADER: &str = "secure-session-challenge";

/// How long a challenge may be answered. Registration follows the sign-in's redirect at once,
/// and a refresh signs within its round trip: two minutes leaves room for a slow device (a TPM
/// signs in hundreds of milliseconds) without keeping a challenge useful for long.
pub const CHALLENGE_TTL_SECS: u64 = 120;

/// Seconds past a bound cookie's expiry it is still taken: the browser drops it at its
/// `Max-Age`, so only a call already on its way when it did arrives within this.
const BOUND_COOKIE_GRACE_SECS: u64 = 5;

/// A session's device binding, in its sealed token set: every instance sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceBinding {
    /// The DBSC session identifier the browser knows it by (`Sec-Secure-Session-Id`).
    pub session_id: String,
    pub alg: Alg,
    pub key: PublicJwk,
}

/// Why a request of a session was refused for its device binding (the metrics' `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingRefusal {
    /// `session.dbsc = "required"` and the session never registered.
    Unregistered,
    /// No bound cookie: the browser did not refresh it (or is not the one that registered).
    Missing,
    /// No bound cookie, and the browser says why (`Secure-Session-Skipped`): its refresh failed.
    Skipped,
    Expired,
    Invalid,
}

impl BindingRefusal {
    pub fn label(self) -> &'static str {
        match self {
            BindingRefusal::Unregistered => "unregistered",
            BindingRefusal::Missing => "missing",
            BindingRefusal::Skipped => "skipped",
            BindingRefusal::Expired => "expired",
            BindingRefusal::Invalid => "invalid",
        }
    }
}

/// One frontend's DBSC policy: its mode, keys, bound cookie and scope.
#[derive(Clone)]
pub struct Dbsc {
    pub mode: DbscMode,
    /// `session.dbsc_cookie_ttl_secs`.
    pub cookie_ttl: u64,
    keys: TicketKeys,
    cookie_name: String,
    cookie_path: String,
    secure: bool,
    same_site: SameSite,
    register_path: String,
    refresh_path: String,
    origin: String,
    host: String,
    /// Whether the sign-in's redirect carries the registration offer: only when the provider is
    /// same-site with the frontend (see [`same_site`]); otherwise the SPA's first `/auth/user`
    /// does.
    pub offer_at_callback: bool,
    /// The full paths whose calls need the bound cookie: the routes that carry the user's
    /// token, and `/auth/user` and `/auth/sessions` (they show and end the user's sessions).
    bound_paths: Vec<String>,
}

impl std::fmt::Debug for Dbsc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dbsc").field("mode", &self.mode).field("cookie", &self.cookie_name).finish()
    }
}

impl Dbsc {
    /// From a frontend's configuration (`config.frontend` names it) and its session cookie's
    /// policy: the bound cookie has that cookie's attributes, and its name with `-bound` (see
    /// [`bound_cookie_name`]).
    pub fn from_config(config: &Config, cookies: &CookiePolicy) -> Dbsc {
        let session = &config.session;
        let within = |path: &str| format!("{}{path}", config.frontend.path);
        let mut bound_paths: Vec<String> =
            config.api.iter().filter(|a| a.token != TokenPolicy::None).map(|a| a.prefix.clone()).collect();
        bound_paths.push(within(OwnRoute::User.path()));
        bound_paths.push(within(OwnRoute::Sessions.path()));
        let public = &config.server.public_url;
        Dbsc {
            mode: session.dbsc,
            cookie_ttl: session.dbsc_cookie_ttl.as_secs(),
            keys: TicketKeys::new(&session.secrets, &config.frontend),
            cookie_name: bound_cookie_name(&cookies.name),
            cookie_path: cookies.path.clone(),
            secure: cookies.secure,
            same_site: cookies.same_site,
            register_path: within(OwnRoute::DbscRegister.path()),
            refresh_path: within(OwnRoute::DbscRefresh.path()),
            origin: public.origin().ascii_serialization(),
            host: public.host_str().unwrap_or_default().to_string(),
            offer_at_callback: url::Url::parse(&config.oidc.issuer).is_ok_and(|issuer| same_site(&issuer, public)),
            bound_paths,
        }
    }

    pub fn enabled(&self) -> bool {
        self.mode != DbscMode::Off
    }

    pub fn keys(&self) -> &TicketKeys {
        &self.keys
    }

    /// `Secure-Session-Registration` for a session just signed in, with a fresh challenge.
    pub fn registration_header(&self, handle: &SessionHandle, now: u64) -> Option<HeaderValue> {
        let challenge = self.keys.challenge(Purpose::Register, handle, "", now + CHALLENGE_TTL_SECS);
        wire::registration(&self.register_path, &challenge)
    }

    /// `Secure-Session-Challenge` with a fresh challenge for the device session `id`.
    pub fn challenge_header(&self, handle: &SessionHandle, id: &str, now: u64) -> Option<HeaderValue> {
        let challenge = self.keys.challenge(Purpose::Refresh, handle, id, now + CHALLENGE_TTL_SECS);
        wire::challenge(&challenge, id)
    }

    /// The session instructions for the device session `id`: its refresh endpoint, its scope
    /// (the frontend's origin, the bound paths only) and its credential (the bound cookie,
    /// with the attributes it is set with: the browser compares them).
    pub fn instructions(&self, id: &str) -> serde_json::Value {
        wire::instructions(wire::Instructions {
            id,
            refresh_url: &self.refresh_path,
            origin: &self.origin,
            host: &self.host,
            scope_root: &self.cookie_path,
            bound_paths: &self.bound_paths,
            cookie_name: &self.cookie_name,
            cookie_attributes: &self.cookie_attributes(),
        })
    }

    /// The bound cookie of `handle`'s device session `id`, valid for `cookie_ttl` from `now`.
    pub fn bound_cookie(&self, handle: &SessionHandle, id: &str, now: u64) -> Cookie<'static> {
        let value = self.keys.bound_cookie(handle, id, now + self.cookie_ttl);
        self.cookie_with(value, time::Duration::seconds(i64::try_from(self.cookie_ttl).unwrap_or(i64::MAX)))
    }

    pub fn bound_cookie_removal(&self) -> Cookie<'static> {
        let mut c = self.cookie_with(String::new(), time::Duration::ZERO);
        c.make_removal();
        c
    }

    fn cookie_with(&self, value: String, max_age: time::Duration) -> Cookie<'static> {
        Cookie::build(self.cookie_name.clone(), value)
            .path(self.cookie_path.clone())
            .http_only(true)
            .secure(self.secure)
            .same_site(self.same_site)
            .max_age(max_age)
            .finish()
    }

    /// The attributes the browser compares a cookie against, exactly as `cookie_with` sets
    /// them (`Max-Age` is not compared).
    fn cookie_attributes(&self) -> String {
        let same_site = match self.same_site {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        };
        let secure = if self.secure { "; Secure" } else { "" };
        format!("Path={}{secure}; HttpOnly; SameSite={same_site}", self.cookie_path)
    }

    /// Whether a request of the live session `handle`, bound as `binding` says, may go on: a
    /// bound session needs its valid bound cookie; with `required`, an unbound one is refused.
    /// One HMAC for a bound session, nothing for another; never a store command.
    pub fn check(
        &self,
        req: &HttpRequest,
        handle: &SessionHandle,
        binding: Option<&DeviceBinding>,
        now: u64,
    ) -> Result<(), BindingRefusal> {
        let binding = match (self.mode, binding) {
            (DbscMode::Off, _) | (DbscMode::Optional, None) => return Ok(()),
            (DbscMode::Required, None) => return Err(BindingRefusal::Unregistered),
            (_, Some(binding)) => binding,
        };
        let mut worst = None;
        for value in cookie_pairs(req.headers())
            .filter_map(|pair| pair.split_once('='))
            .filter(|(name, _)| *name == self.cookie_name)
            .map(|(_, value)| value)
        {
            match self.keys.check_bound_cookie(value, handle, &binding.session_id, now, BOUND_COOKIE_GRACE_SECS) {
                CookieCheck::Valid => return Ok(()),
                CookieCheck::Expired => worst = Some(BindingRefusal::Expired),
                CookieCheck::Invalid => worst = worst.or(Some(BindingRefusal::Invalid)),
            }
        }
        Err(worst.unwrap_or(if req.headers().contains_key(SKIPPED_HEADER) {
            BindingRefusal::Skipped
        } else {
            BindingRefusal::Missing
        }))
    }
}

/// Whether a navigation from `a` to `b` is same-site for the browser, as far as bff can tell
/// without the public suffix list: the same scheme, and the same host or the same last two
/// labels of a name. After a cross-site navigation (the provider's redirect to the callback) the
/// browser registers without the `SameSite` session cookie and may not set the bound cookie, so
/// the offer there would only be refused; an over-approximation (`a.co.uk`, `b.co.uk`) costs one
/// refused registration per sign-in, nothing more (`/auth/user` offers it again).
fn same_site(a: &url::Url, b: &url::Url) -> bool {
    let site = |u: &url::Url| -> Option<String> {
        match u.host()? {
            url::Host::Domain(name) => {
                let labels: Vec<&str> = name.trim_end_matches('.').rsplit('.').take(2).collect();
                Some(labels.join("."))
            }
            ip => Some(ip.to_string()),
        }
    };
    a.scheme() == b.scheme() && site(a).is_some() && site(a) == site(b)
}

/// The session cookie's name with `-bound`, but with `__Host-` for `__Host-Http-` and
/// `__Secure-` for `__Http-` (the cookie is `HttpOnly` all the same): Chromium 156 refuses a
/// `__Host-Http-` credential cookie in the session instructions (`InvalidCredentialsCookie`: its
/// `CookieCraving` drops the host-only cookie's domain for `__Host-` names only, so the cookie it
/// synthesizes to check a `__Host-Http-` one is invalid), and the browser then keeps no session.
fn bound_cookie_name(session_cookie: &str) -> String {
    if let Some(rest) = session_cookie.strip_prefix("__Host-Http-") {
        format!("__Host-{rest}-bound")
    } else if let Some(rest) = session_cookie.strip_prefix("__Http-") {
        format!("__Secure-{rest}-bound")
    } else {
        format!("{session_cookie}-bound")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn dbsc(mode: &str) -> Dbsc {
        let toml = format!(
            "[server]\npublic_url = \"https://app.example.com\"\n[oidc]\nissuer = \"https://idp.example.com\"\n\
             client_id = \"c\"\nclient_secret = \"s\"\n[session]\nsecret = \"{}\"\ndbsc = \"{mode}\"\n\
             [[api]]\nprefix = \"/api\"\nupstream = \"http://127.0.0.1:1\"\n\
             [[api]]\nprefix = \"/public\"\nupstream = \"http://127.0.0.1:1\"\ntoken = \"none\"\n",
            "x".repeat(64)
        );
        let config = crate::config::Config::from_toml(&toml).unwrap();
        let metrics = crate::metrics::Metrics::new().unwrap();
        Dbsc::from_config(&config, &CookiePolicy::from_config(&config, &metrics))
    }

    fn binding() -> DeviceBinding {
        DeviceBinding {
            session_id: "dev1".into(),
            alg: Alg::ES256,
            key: PublicJwk::EC { crv: "P-256".into(), x: String::new(), y: String::new() },
        }
    }

    #[test]
    fn a_bound_session_needs_its_live_bound_cookie() {
        let d = dbsc("optional");
        let h = crate::session::SessionId::generate().handle();
        let cookie = d.bound_cookie(&h, "dev1", 1000);
        assert_eq!(cookie.name(), "__Host-bff-bound");
        let with = |c: &str| TestRequest::default().insert_header(("cookie", c)).to_http_request();
        let valid = with(&format!("a=b; {}={}", cookie.name(), cookie.value()));
        assert_eq!(d.check(&valid, &h, Some(&binding()), 1000), Ok(()));
        assert_eq!(d.check(&valid, &h, Some(&binding()), 1000 + 600 + 6), Err(BindingRefusal::Expired));
        let other = crate::session::SessionId::generate().handle();
        assert_eq!(d.check(&valid, &other, Some(&binding()), 1000), Err(BindingRefusal::Invalid));
        let none = TestRequest::default().to_http_request();
        assert_eq!(d.check(&none, &h, Some(&binding()), 1000), Err(BindingRefusal::Missing));
        let skipped = TestRequest::default()
            .insert_header((SKIPPED_HEADER, "unreachable;session_identifier=\"dev1\""))
            .to_http_request();
        assert_eq!(d.check(&skipped, &h, Some(&binding()), 1000), Err(BindingRefusal::Skipped));
        // Unbound: as before DBSC with `optional`.
        assert_eq!(d.check(&none, &h, None, 1000), Ok(()));
    }

    #[test]
    fn the_bound_cookie_keeps_the_session_cookies_prefix_rules_in_a_form_chromium_takes() {
        assert_eq!(bound_cookie_name("__Host-Http-bff"), "__Host-bff-bound");
        assert_eq!(bound_cookie_name("__Http-bff-shop"), "__Secure-bff-shop-bound");
        assert_eq!(bound_cookie_name("__Host-bff"), "__Host-bff-bound");
        assert_eq!(bound_cookie_name("bff"), "bff-bound");
    }

    #[test]
    fn the_offer_goes_with_the_callback_only_for_a_same_site_provider() {
        let url = |u: &str| url::Url::parse(u).unwrap();
        assert!(same_site(&url("https://login.example.com/realms/x"), &url("https://app.example.com")));
        assert!(same_site(&url("http://127.0.0.1:8081"), &url("http://127.0.0.1:9000")));
        assert!(!same_site(&url("https://idp.example.org"), &url("https://app.example.com")));
        assert!(!same_site(&url("http://localhost:7481"), &url("https://localhost:7480")), "schemeful");
    }

    #[test]
    fn required_refuses_an_unbound_session_and_off_checks_nothing() {
        let h = crate::session::SessionId::generate().handle();
        let none = TestRequest::default().to_http_request();
        assert_eq!(dbsc("required").check(&none, &h, None, 0), Err(BindingRefusal::Unregistered));
        assert_eq!(dbsc("off").check(&none, &h, Some(&binding()), 0), Ok(()));
    }

    #[test]
    fn the_instructions_scope_the_token_routes_and_name_the_cookie_as_it_is_set() {
        let d = dbsc("optional");
        let json = d.instructions("dev1");
        assert_eq!(json["session_identifier"], "dev1");
        assert_eq!(json["refresh_url"], "/auth/dbsc/refresh");
        assert_eq!(json["scope"]["origin"], "https://app.example.com");
        assert_eq!(json["scope"]["include_site"], false);
        let rules = json["scope"]["scope_specification"].as_array().unwrap();
        let paths: Vec<(&str, &str)> =
            rules.iter().map(|r| (r["type"].as_str().unwrap(), r["path"].as_str().unwrap())).collect();
        assert_eq!(
            paths,
            [("exclude", "/"), ("include", "/api"), ("include", "/auth/user"), ("include", "/auth/sessions")],
            "a `none` route carries no token: not bound"
        );
        assert!(rules.iter().all(|r| r["domain"] == "app.example.com"));
        let credential = &json["credentials"][0];
        assert_eq!(
            (credential["type"].as_str(), credential["name"].as_str()),
            (Some("cookie"), Some("__Host-bff-bound"))
        );
        assert_eq!(credential["attributes"], "Path=/; Secure; HttpOnly; SameSite=Strict");
        let set = d.bound_cookie(&crate::session::SessionId::generate().handle(), "dev1", 0).to_string();
        for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict", "Max-Age=600"] {
            assert!(set.contains(attribute), "{set}");
        }
    }
}
