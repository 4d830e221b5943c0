//! bff's own paths, listed once: the router serves them (`routes`), the request log and the
//! metrics name them (`http`), and the configuration keeps `[[api]]` prefixes off them
//! (`config`). A route added here has a name and a reserved prefix at once, and does not compile
//! until the router gives it a handler (`routes::resource`, an exhaustive `match`).
//!
//! Below the handlers on purpose: the configuration needs the table without the routes.

use actix_web::http::Method;

/// The methods one of bff's own routes takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Methods {
    /// `GET`, and `HEAD` answered by the same handler without the body: the route only reads.
    Read,
    /// `GET` alone: its `GET` acts (starts or completes a sign-in, ends sessions), which a `HEAD`
    /// (a link checker, a probe) must not do.
    Act,
    /// `POST` alone.
    Post,
    /// `GET` (and `HEAD`) reads, `DELETE` ends what was read.
    ReadOrDelete,
    /// `DELETE` alone.
    Delete,
}

impl Methods {
    /// The `Allow` value of a 405.
    pub fn allow(self) -> &'static str {
        match self {
            Methods::Read => "GET, HEAD",
            Methods::Act => "GET",
            Methods::Post => "POST",
            Methods::ReadOrDelete => "GET, HEAD, DELETE",
            Methods::Delete => "DELETE",
        }
    }

    pub fn takes(self, method: &Method) -> bool {
        match self {
            Methods::Read => method == Method::GET || method == Method::HEAD,
            Methods::Act => method == Method::GET,
            Methods::Post => method == Method::POST,
            Methods::ReadOrDelete => Methods::Read.takes(method) || method == Method::DELETE,
            Methods::Delete => method == Method::DELETE,
        }
    }
}

/// The scope of the routes that need the session: every path under it is bff's (an unknown one
/// is 404, never the SPA's or an API's).
pub const AUTH_SCOPE: &str = "/auth";

/// One of bff's own routes (the proxy's prefixes and the SPA's files aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnRoute {
    Login,
    Callback,
    User,
    Logout,
    BackchannelLogout,
    FrontchannelLogout,
    SignedOut,
    Stylesheet,
    Healthz,
    Readyz,
    /// On `server.metrics_listen`, and on the main listener only with `server.metrics_public`.
    Metrics,
    /// With `private_key_jwt` only.
    Jwks,
    /// The signed-in user's sessions: list them, or end all but this one.
    Sessions,
    /// One of them, by its id (the last path segment): end it.
    Session,
    /// DBSC (`session.dbsc`): the browser registers its device key for the session.
    DbscRegister,
    /// DBSC: the browser renews the bound cookie by signing a challenge.
    DbscRefresh,
}

/// Every route of bff's own. `OwnRoute::path` and `methods` are exhaustive matches, so a new
/// variant needs its path and methods there; [`tests::the_table_names_every_route`] makes it
/// come here too.
pub const OWN_ROUTES: &[OwnRoute] = &[
    OwnRoute::Login,
    OwnRoute::Callback,
    OwnRoute::User,
    OwnRoute::Logout,
    OwnRoute::BackchannelLogout,
    OwnRoute::FrontchannelLogout,
    OwnRoute::SignedOut,
    OwnRoute::Stylesheet,
    OwnRoute::Healthz,
    OwnRoute::Readyz,
    OwnRoute::Metrics,
    OwnRoute::Jwks,
    OwnRoute::Sessions,
    OwnRoute::Session,
    OwnRoute::DbscRegister,
    OwnRoute::DbscRefresh,
];

/// The last segment of a route's path that stands for any one segment (`/auth/sessions/{id}`).
const PARAMETER: &str = "{id}";

impl OwnRoute {
    /// The full path, also the route's name in the request log and in spans.
    pub const fn path(self) -> &'static str {
        match self {
            OwnRoute::Login => "/auth/login",
            OwnRoute::Callback => "/auth/callback",
            OwnRoute::User => "/auth/user",
            OwnRoute::Logout => "/auth/logout",
            OwnRoute::BackchannelLogout => "/auth/backchannel-logout",
            OwnRoute::FrontchannelLogout => "/auth/frontchannel-logout",
            OwnRoute::SignedOut => "/auth/signed-out",
            OwnRoute::Stylesheet => "/auth/style.css",
            OwnRoute::Healthz => "/healthz",
            OwnRoute::Readyz => "/readyz",
            OwnRoute::Metrics => "/metrics",
            OwnRoute::Jwks => "/.well-known/jwks.json",
            OwnRoute::Sessions => "/auth/sessions",
            OwnRoute::Session => "/auth/sessions/{id}",
            OwnRoute::DbscRegister => "/auth/dbsc/register",
            OwnRoute::DbscRefresh => "/auth/dbsc/refresh",
        }
    }

    pub const fn methods(self) -> Methods {
        match self {
            OwnRoute::Login | OwnRoute::Callback | OwnRoute::FrontchannelLogout => Methods::Act,
            OwnRoute::Logout | OwnRoute::BackchannelLogout | OwnRoute::DbscRegister | OwnRoute::DbscRefresh => {
                Methods::Post
            }
            OwnRoute::User
            | OwnRoute::SignedOut
            | OwnRoute::Stylesheet
            | OwnRoute::Healthz
            | OwnRoute::Readyz
            | OwnRoute::Metrics
            | OwnRoute::Jwks => Methods::Read,
            OwnRoute::Sessions => Methods::ReadOrDelete,
            OwnRoute::Session => Methods::Delete,
        }
    }

    /// The scope the router registers it in: `/auth` (behind the session middleware), or `""`.
    pub fn scope(self) -> &'static str {
        if is_under(self.path(), AUTH_SCOPE) { AUTH_SCOPE } else { "" }
    }

    /// Its path inside [`OwnRoute::scope`].
    pub fn path_in_scope(self) -> &'static str {
        self.path().strip_prefix(self.scope()).unwrap_or(self.path())
    }

    /// The route class of the request metrics (`bff_http_requests_total{route}`).
    pub fn class(self) -> &'static str {
        match self {
            OwnRoute::Healthz | OwnRoute::Readyz => "health",
            OwnRoute::Metrics => "metrics",
            // Counted with the SPA's files, as before it had a name: a class of its own would
            // be a new label value for dashboards to learn.
            OwnRoute::Jwks => "static",
            _ if self.scope() == AUTH_SCOPE => "auth",
            _ => "static",
        }
    }

    /// The route serving `path`, if one of bff's own does: its path exactly, or, for a route
    /// whose last segment is a parameter, its path up to there and one non-empty segment.
    pub fn find(path: &str) -> Option<OwnRoute> {
        OWN_ROUTES.iter().copied().find(|r| r.serves(path))
    }

    fn serves(self, path: &str) -> bool {
        match self.path().strip_suffix(PARAMETER) {
            Some(above) => {
                path.strip_prefix(above).is_some_and(|segment| !segment.is_empty() && !segment.contains('/'))
            }
            None => self.path() == path,
        }
    }

    /// The first segment of its path (`/auth`, `/healthz`, `/.well-known`): no `[[api]]` prefix
    /// may be it or lie under it, and none can lie above it (`/` aside, refused on its own).
    fn reserved_prefix(self) -> &'static str {
        let path = self.path();
        let end = path.get(1..).and_then(|rest| rest.find('/')).map_or(path.len(), |i| i + 1);
        path.get(..end).unwrap_or(path)
    }
}

/// Whether `path` is `prefix` or lies under it (whole segments, as the proxy's routes match).
fn is_under(path: &str, prefix: &str) -> bool {
    crate::proxy::strip_prefix(path, prefix).is_some()
}

/// The request-metrics class of a path bff itself answers: one of its routes, or any path under
/// `/auth` (an unknown one there is bff's 404). `None`: an API's or the SPA's.
pub fn class_of(path: &str) -> Option<&'static str> {
    match OwnRoute::find(path) {
        Some(route) => Some(route.class()),
        None => is_under(path, AUTH_SCOPE).then_some("auth"),
    }
}

/// The own path an `[[api]]` prefix would take, if it is or lies under one of them.
pub fn reserved_prefix_of(prefix: &str) -> Option<&'static str> {
    OWN_ROUTES.iter().map(|r| r.reserved_prefix()).find(|reserved| is_under(prefix, reserved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_every_route() {
        // Exhaustive: a new variant does not compile until it is named here, next to the table
        // it must then be added to.
        let position = |r: OwnRoute| match r {
            OwnRoute::Login => 0,
            OwnRoute::Callback => 1,
            OwnRoute::User => 2,
            OwnRoute::Logout => 3,
            OwnRoute::BackchannelLogout => 4,
            OwnRoute::FrontchannelLogout => 5,
            OwnRoute::SignedOut => 6,
            OwnRoute::Stylesheet => 7,
            OwnRoute::Healthz => 8,
            OwnRoute::Readyz => 9,
            OwnRoute::Metrics => 10,
            OwnRoute::Jwks => 11,
            OwnRoute::Sessions => 12,
            OwnRoute::Session => 13,
            OwnRoute::DbscRegister => 14,
            OwnRoute::DbscRefresh => 15,
        };
        assert_eq!(OWN_ROUTES.len(), 16);
        for (i, route) in OWN_ROUTES.iter().enumerate() {
            assert_eq!(position(*route), i, "{route:?}");
        }
    }

    #[test]
    fn paths_are_distinct_and_found_by_themselves() {
        for route in OWN_ROUTES {
            assert_eq!(OwnRoute::find(route.path()), Some(*route));
            assert_eq!(format!("{}{}", route.scope(), route.path_in_scope()), route.path());
        }
        assert_eq!(OwnRoute::find("/auth/nothing"), None);
        assert_eq!(OwnRoute::find("/auth/login/"), None);
        assert_eq!(OwnRoute::find("/auth/sessions/abc"), Some(OwnRoute::Session));
        assert_eq!(OwnRoute::find("/auth/sessions/"), None);
        assert_eq!(OwnRoute::find("/auth/sessions/a/b"), None);
    }

    #[test]
    fn a_route_that_acts_on_get_takes_no_head() {
        for route in OWN_ROUTES {
            let takes: Vec<&str> =
                [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE, Method::TRACE]
                    .iter()
                    .filter(|m| route.methods().takes(m))
                    .map(Method::as_str)
                    .collect();
            assert_eq!(takes.join(", "), route.methods().allow(), "{route:?}");
        }
        for acts in [OwnRoute::Login, OwnRoute::Callback, OwnRoute::FrontchannelLogout] {
            assert!(!acts.methods().takes(&Method::HEAD), "{acts:?}");
        }
    }

    #[test]
    fn every_route_has_a_class_and_the_auth_scope_is_bffs() {
        for route in OWN_ROUTES {
            assert_eq!(class_of(route.path()), Some(route.class()), "{route:?}");
        }
        assert_eq!(class_of("/auth/callback"), Some("auth"));
        assert_eq!(class_of("/auth/anything-else"), Some("auth"));
        assert_eq!(class_of("/auth"), Some("auth"));
        assert_eq!(class_of("/readyz"), Some("health"));
        assert_eq!(class_of("/metrics"), Some("metrics"));
        assert_eq!(class_of("/.well-known/jwks.json"), Some("static"));
        assert_eq!(class_of("/authx"), None);
        assert_eq!(class_of("/healthz/x"), None);
        assert_eq!(class_of("/api/x"), None);
    }

    #[test]
    fn every_own_path_and_what_lies_under_its_first_segment_is_reserved() {
        for route in OWN_ROUTES {
            assert!(reserved_prefix_of(route.path()).is_some(), "{route:?}");
            assert_eq!(reserved_prefix_of(route.reserved_prefix()), Some(route.reserved_prefix()));
            assert!(reserved_prefix_of(&format!("{}/x", route.reserved_prefix())).is_some(), "{route:?}");
        }
        for (prefix, reserved) in [
            ("/auth", "/auth"),
            ("/auth/x", "/auth"),
            ("/healthz", "/healthz"),
            ("/readyz/x", "/readyz"),
            ("/metrics", "/metrics"),
            ("/.well-known", "/.well-known"),
            ("/.well-known/jwks.json", "/.well-known"),
            ("/.well-known/other", "/.well-known"),
        ] {
            assert_eq!(reserved_prefix_of(prefix), Some(reserved), "{prefix}");
        }
        for free in ["/api", "/authors", "/healthzz", "/well-known", "/api/auth", "/api/.well-known"] {
            assert_eq!(reserved_prefix_of(free), None, "{free}");
        }
    }
}
