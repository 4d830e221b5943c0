//! Which frontend a request is for, and the switch that hands it to that frontend's app.
//!
//! Each frontend is a whole actix `App` of its own (its routes under its path, its state as
//! `web::Data<AppState>`, its cookie and session middleware), built on each worker from a
//! [`Generation`]: the frontends of one configuration. A reload publishes a new generation; every
//! request, even one on a connection opened before, is dispatched by the generation current when
//! it arrives, while requests already dispatched finish with the apps they started on.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_http::{Request, Response};
use actix_web::body::BoxBody;
use actix_web::dev::{AppConfig, Service, ServiceFactory};
use actix_web::http::header;
use actix_web::{Error, HttpMessage, web};
use arc_swap::ArcSwap;
use futures_util::future::LocalBoxFuture;

use crate::config::FrontendIdentity;
use crate::paths::OwnRoute;
use crate::state::AppState;

/// One frontend of a generation.
pub struct Frontend {
    pub identity: FrontendIdentity,
    pub state: web::Data<AppState>,
    /// What its configuration was made of (secrets included, hashed): a reload keeps a frontend
    /// whose fingerprint did not change as it is, sessions, caches and provider metadata.
    pub fingerprint: [u8; 32],
}

/// A frontend a reload removed: requests that still carry its session cookie are told the
/// session is over (401, the cookie cleared) instead of reaching whatever now serves the path.
#[derive(Debug, Clone)]
pub struct Retired {
    pub identity: FrontendIdentity,
    pub cookie_name: String,
    /// Clears that cookie, with the attributes it was set with.
    pub removal: actix_web::cookie::Cookie<'static>,
}

/// How many removed frontends are remembered (oldest forgotten first).
pub const MAX_RETIRED: usize = 64;

/// The frontends of one configuration.
pub struct Generation {
    pub id: u64,
    pub frontends: Vec<Arc<Frontend>>,
    pub retired: Vec<Retired>,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// bff's own process-wide routes (`/healthz`, `/readyz`, `/metrics`) and requests no
    /// frontend serves (404).
    Server,
    Frontend(usize),
    Retired(usize),
}

/// The request's host as sent, with the port it carried (compared without regard to case: no
/// copy is made on each request).
fn request_host(req: &Request) -> Option<&str> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    Some(host.trim())
}

/// Whether `host` (a request's, with or without a port) is one of `hosts` (a configured entry
/// without a port matches any port).
fn host_matches(hosts: &[String], host: Option<&str>) -> Option<bool> {
    if hosts.is_empty() {
        return Some(false);
    }
    let host = host?;
    let without_port = match host.rsplit_once(':') {
        // Not the inside of an IPv6 literal (`[::1]`).
        Some((name, port)) if !port.contains(']') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    // Configured hosts are lower-case.
    hosts.iter().any(|h| h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(without_port)).then_some(true)
}

/// Whether `path` is `base` or under it.
fn path_matches(base: &str, path: &str) -> bool {
    base.is_empty() || path.strip_prefix(base).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The most specific identity matching: one naming the host beats one for any host, then the
/// longer path wins. `None`: none matches.
pub fn most_specific<'a>(
    identities: impl Iterator<Item = &'a FrontendIdentity>,
    host: Option<&str>,
    path: &str,
) -> Option<usize> {
    identities
        .enumerate()
        .filter_map(|(i, id)| {
            let by_host = host_matches(&id.hosts, host)?;
            path_matches(&id.path, path).then_some((i, (by_host, id.path.len())))
        })
        .max_by_key(|(i, rank)| (*rank, std::cmp::Reverse(*i)))
        .map(|(i, _)| i)
}

/// Whether the request carries a cookie named `name`.
fn carries_cookie(req: &Request, name: &str) -> bool {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|pair| pair.trim().split_once('=').is_some_and(|(n, _)| n == name))
}

impl Generation {
    pub fn target(&self, req: &Request) -> Target {
        let path = req.path();
        if [OwnRoute::Healthz, OwnRoute::Readyz, OwnRoute::Metrics].iter().any(|r| r.path() == path) {
            return Target::Server;
        }
        let host = request_host(req);
        let live = most_specific(self.frontends.iter().map(|f| &f.identity), host, path);
        let retired = most_specific(self.retired.iter().map(|r| &r.identity), host, path)
            .filter(|&i| carries_cookie(req, &self.retired[i].cookie_name));
        match (live, retired) {
            (Some(live), Some(retired)) => {
                // The retired frontend only where it was more specific than what serves now.
                let live_rank = rank(&self.frontends[live].identity, host);
                let retired_rank = rank(&self.retired[retired].identity, host);
                if retired_rank > live_rank { Target::Retired(retired) } else { Target::Frontend(live) }
            }
            (Some(live), None) => Target::Frontend(live),
            (None, Some(retired)) => Target::Retired(retired),
            (None, None) => Target::Server,
        }
    }
}

fn rank(id: &FrontendIdentity, host: Option<&str>) -> (bool, usize) {
    (host_matches(&id.hosts, host).unwrap_or(false), id.path.len())
}

/// A built app, as the switch calls it.
pub type AppService = Rc<dyn Fn(Request) -> LocalBoxFuture<'static, Result<Response<BoxBody>, Error>>>;

/// Builds, on one worker, the app of one frontend (or the server's own).
pub trait AppBuilder: Send + Sync + 'static {
    fn frontend_app(&self, frontend: &Frontend, config: AppConfig) -> LocalBoxFuture<'static, Result<AppService, ()>>;
    fn server_app(&self, config: AppConfig) -> LocalBoxFuture<'static, Result<AppService, ()>>;
    /// The answer to a request that carries the session cookie of a removed frontend.
    fn retired_answer(&self, retired: &Retired) -> Response<BoxBody>;
}

/// The current generation, shared by every worker and the reloader.
pub struct Current {
    generation: ArcSwap<Generation>,
    /// The current generation's id, read first on every request: the worker's apps are rebuilt
    /// only when it changed.
    id: AtomicU64,
}

impl Current {
    pub fn new(generation: Generation) -> Current {
        let id = generation.id;
        Current { generation: ArcSwap::from_pointee(generation), id: AtomicU64::new(id) }
    }

    pub fn load(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    pub fn publish(&self, generation: Generation) {
        let id = generation.id;
        self.generation.store(Arc::new(generation));
        self.id.store(id, Ordering::Release);
    }
}

/// The service factory `HttpServer` runs: one [`Switch`] per worker.
#[derive(Clone)]
pub struct Dispatch {
    pub current: Arc<Current>,
    pub builder: Arc<dyn AppBuilder>,
}

/// The apps of one generation, on one worker.
struct Built {
    generation: Arc<Generation>,
    frontends: Vec<AppService>,
}

/// One worker's switch (the state is behind an `Rc`: a request's future owns what it needs).
pub struct Switch(Rc<SwitchState>);

struct SwitchState {
    current: Arc<Current>,
    builder: Arc<dyn AppBuilder>,
    config: AppConfig,
    server: AppService,
    built: RefCell<Option<Rc<Built>>>,
}

impl ServiceFactory<Request> for Dispatch {
    type Response = Response<BoxBody>;
    type Error = Error;
    type Config = AppConfig;
    type Service = Switch;
    type InitError = ();
    type Future = LocalBoxFuture<'static, Result<Switch, ()>>;

    fn new_service(&self, config: AppConfig) -> Self::Future {
        let (current, builder) = (Arc::clone(&self.current), Arc::clone(&self.builder));
        Box::pin(async move {
            let server = builder.server_app(config.clone()).await?;
            let state = Rc::new(SwitchState { current, builder, config, server, built: RefCell::new(None) });
            // The first generation's apps now, so the first requests do not wait for them.
            state.apps().await?;
            Ok(Switch(state))
        })
    }
}

impl SwitchState {
    /// This worker's apps of the current generation, if already built.
    fn ready(&self) -> Option<Rc<Built>> {
        let id = self.current.id.load(Ordering::Acquire);
        self.built.borrow().as_ref().filter(|b| b.generation.id == id).cloned()
    }

    /// This worker's apps of the current generation, built when it changed.
    async fn apps(&self) -> Result<Rc<Built>, ()> {
        if let Some(built) = self.ready() {
            return Ok(built);
        }
        let generation = self.current.load();
        let mut frontends = Vec::with_capacity(generation.frontends.len());
        for frontend in &generation.frontends {
            frontends.push(self.builder.frontend_app(frontend, self.config.clone()).await?);
        }
        let built = Rc::new(Built { generation, frontends });
        *self.built.borrow_mut() = Some(Rc::clone(&built));
        Ok(built)
    }
}

impl Service<Request> for Switch {
    type Response = Response<BoxBody>;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Response<BoxBody>, Error>>;

    actix_web::dev::always_ready!();

    fn call(&self, req: Request) -> Self::Future {
        let state = Rc::clone(&self.0);
        Box::pin(async move {
            let built = match state.ready() {
                Some(built) => built,
                None => match state.apps().await {
                    Ok(built) => built,
                    Err(()) => return (state.server)(req).await,
                },
            };
            dispatch(&built, &state.server, state.builder.as_ref(), req).await
        })
    }
}

async fn dispatch(
    built: &Built,
    server: &AppService,
    builder: &dyn AppBuilder,
    req: Request,
) -> Result<Response<BoxBody>, Error> {
    match built.generation.target(&req) {
        Target::Frontend(i) => match built.frontends.get(i) {
            Some(app) => app(req).await,
            None => server(req).await,
        },
        Target::Retired(i) => match built.generation.retired.get(i) {
            Some(retired) => Ok(builder.retired_answer(retired)),
            None => server(req).await,
        },
        Target::Server => server(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, hosts: &[&str], path: &str) -> FrontendIdentity {
        FrontendIdentity {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path: path.into(),
            implicit: false,
        }
    }

    #[test]
    fn the_most_specific_frontend_wins() {
        let all = [
            id("any", &[], ""),
            id("admin", &[], "/admin"),
            id("shop", &["shop.example"], ""),
            id("shop-admin", &["shop.example"], "/admin"),
            id("deep", &[], "/admin/reports"),
        ];
        let pick = |host: Option<&str>, path: &str| most_specific(all.iter(), host, path).map(|i| all[i].name.as_str());
        assert_eq!(pick(Some("other.example"), "/"), Some("any"));
        assert_eq!(pick(Some("other.example"), "/admin"), Some("admin"));
        assert_eq!(pick(Some("other.example"), "/admin/x"), Some("admin"));
        assert_eq!(pick(Some("other.example"), "/administrator"), Some("any"));
        assert_eq!(pick(Some("other.example"), "/admin/reports/7"), Some("deep"));
        assert_eq!(pick(Some("shop.example"), "/cart"), Some("shop"));
        assert_eq!(pick(Some("shop.example:8443"), "/cart"), Some("shop"));
        assert_eq!(pick(Some("shop.example"), "/admin/users"), Some("shop-admin"));
        // A host match beats a longer path for any host.
        assert_eq!(pick(Some("shop.example"), "/admin/reports"), Some("shop-admin"));
        assert_eq!(pick(None, "/admin"), Some("admin"));
    }

    #[test]
    fn no_match_is_none_and_ports_are_matched_when_configured() {
        let all = [id("a", &["a.example:8080"], ""), id("b", &["b.example"], "/b")];
        let pick = |host: Option<&str>, path: &str| most_specific(all.iter(), host, path);
        assert_eq!(pick(Some("a.example:8080"), "/"), Some(0));
        assert_eq!(pick(Some("a.example"), "/"), None);
        assert_eq!(pick(Some("a.example:9090"), "/"), None);
        assert_eq!(pick(Some("b.example"), "/"), None);
        assert_eq!(pick(Some("b.example:1"), "/b/x"), Some(1));
        assert_eq!(pick(None, "/b"), None);
        assert_eq!(pick(Some("[::1]:8080"), "/"), None);
    }
}
