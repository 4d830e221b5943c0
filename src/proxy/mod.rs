//! The API proxy: `{prefix}/…` to the configured upstream with the caller's token, one call
//! as named steps (pingora's request phases are the model): the route and its method, CSRF or
//! `Origin` by the route's policy, the path, who the caller is, admission, then the body and the
//! exchange with its retries and the answer (`exchange`), or the WebSocket tunnel (`websocket`).

mod admission;
mod body;
mod caller;
mod exchange;
mod frames;
mod headers;
mod path;
mod pool;
mod respond;
mod route;
mod step_up;
mod websocket;

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use hyper::header::HeaderValue;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Config, TokenPolicy};
use crate::dbsc::Dbsc;
use crate::error::{AppError, BadRequest};
use crate::http::{require_csrf_header, require_same_origin};
use crate::limits::Limit;
use crate::metrics::Metrics;
use crate::session::CookiePolicy;
use crate::tokens::TokenManager;
pub use admission::ProcessPermits;
use admission::{Admission, Shares};

pub use body::{RequestBody, UpstreamBody};
pub use caller::Caller;
pub use path::{PathError, UpstreamBase, strip_prefix, upstream_target};
use pool::UpstreamIncoming;
pub use respond::TOKEN_EXPIRY_HEADER;
pub use route::Route;
pub use step_up::{Requirement, StepUp};
pub use websocket::is_upgrade;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Where one call goes: its route and the upstream URI, checked.
pub struct Destination<'a> {
    route: &'a Route,
    uri: hyper::Uri,
}

/// The connection pools to the upstreams of one actix worker (see `Proxy::upstream_client`),
/// one per way of speaking to an upstream (`api[].http2` and the upstream's scheme): a client
/// that speaks HTTP/2 only cannot fall back, and one that may fall back cannot assume HTTP/2 on
/// a plain connection, so they cannot share a pool.
pub struct UpstreamClient {
    /// HTTP/1.1, driven by the calls themselves (see `pool`).
    http1: pool::Http1Pool,
    /// `http2 = true` on `http://`: HTTP/2 with prior knowledge (h2c, RFC 9113 §3.3).
    h2c: Client<Connector, UpstreamBody>,
    /// `http2 = true` on `https://`: `h2` offered by ALPN, HTTP/1.1 if the upstream declines.
    alpn_h2: Client<Connector, UpstreamBody>,
}

/// How a route speaks to its upstream, decided once from `api[].http2` and the scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UpstreamProtocol {
    Http1,
    PriorKnowledge,
    Alpn,
}

impl UpstreamClient {
    /// Sends `request` (its URI absolute) the way the route speaks to its upstream; the head of
    /// the answer, its body to be read.
    async fn send(
        &self,
        route: &Route,
        request: hyper::Request<UpstreamBody>,
    ) -> Result<hyper::Response<UpstreamIncoming>, pool::BoxError> {
        let h2 = match route.protocol {
            // Boxed: the exchange's future holds it, and actix copies that future whole.
            UpstreamProtocol::Http1 => return Box::pin(self.http1.send(route, request)).await,
            UpstreamProtocol::PriorKnowledge => &self.h2c,
            UpstreamProtocol::Alpn => &self.alpn_h2,
        };
        Ok(h2.request(request).await?.map(UpstreamIncoming::detached))
    }
}

pub struct Proxy {
    /// Longest prefix first, so the most specific route wins.
    routes: Vec<Arc<Route>>,
    /// ALPN `http/1.1` only: routes without `http2`, and every WebSocket (an HTTP/1.1 upgrade).
    connector: Connector,
    /// ALPN `h2` then `http/1.1`: routes with `http2 = true`.
    h2_connector: Connector,
    proto: HeaderValue,
    host: HeaderValue,
    trusted_hops: usize,
    /// `telemetry.trust_incoming_trace_context`.
    trust_trace_context: bool,
    /// Exchanges in flight, in all (the process's permits), for this frontend, per session and
    /// for anonymous callers (a permit lives until its response body ends).
    admission: Admission,
    /// `public_url`'s origin: what a WebSocket handshake's `Origin` must be.
    public_origin: String,
    /// `session.dbsc`: a bound session's calls need the bound cookie.
    dbsc: Dbsc,
    metrics: Arc<Metrics>,
}

/// The process's upstream permits (`server.max_upstream_concurrency`): made once and given to
/// every frontend's `Proxy`, and to those a reload builds, so the cap holds for the process.
pub fn process_permits(config: &Config) -> ProcessPermits {
    let s = &config.server;
    ProcessPermits::new(
        s.max_upstream_concurrency,
        s.max_upstream_concurrency_anonymous,
        s.max_upstream_concurrency_per_address,
    )
}

impl Proxy {
    /// `process`: what every frontend of the process shares ([`process_permits`]);
    /// `frontend_share`: the most exchanges this frontend may have in flight (at or above
    /// `max_upstream_concurrency`: no cap of its own).
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        process: ProcessPermits,
        frontend_share: usize,
        dbsc: Dbsc,
    ) -> Proxy {
        let mut routes: Vec<Arc<Route>> = config.api.iter().map(|a| Arc::new(Route::new(a, &metrics))).collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(Duration::from_secs(5)));
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let https = || hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1();
        let h2_connector = https().enable_http2().wrap_connector(tcp.clone());
        let connector = https().wrap_connector(tcp);

        let public = &config.server.public_url;
        let host = match public.port() {
            Some(port) => format!("{}:{port}", public.host_str().unwrap_or_default()),
            None => public.host_str().unwrap_or_default().to_string(),
        };
        Proxy {
            routes,
            connector,
            h2_connector,
            proto: HeaderValue::try_from(public.scheme()).unwrap_or(HeaderValue::from_static("https")),
            host: HeaderValue::try_from(host).unwrap_or(HeaderValue::from_static("")),
            trusted_hops: config.server.trusted_proxy_hops,
            trust_trace_context: config.telemetry.trust_incoming_trace_context,
            admission: Admission::new(
                Shares { frontend: frontend_share, per_session: config.server.max_upstream_concurrency_per_session },
                process,
            ),
            public_origin: public.origin().ascii_serialization(),
            dbsc,
            metrics,
        }
    }

    /// A client with its own connection pool, for one actix worker. A pooled connection is
    /// driven by the runtime that opened it: shared between workers, a request from one worker
    /// on another's connection costs cross-thread wake-ups and, when that thread is not
    /// scheduled, milliseconds (p99 went from ~1 ms to 42 ms with two workers on two cores).
    /// Redirects are not followed: they go back to the SPA as they are (following them could
    /// leave the upstream).
    /// The pools are empty until a route uses them. Call it on the worker's own thread, inside
    /// its runtime: the HTTP/1.1 pool starts the worker's sweep of idle connections there.
    pub fn upstream_client(&self) -> UpstreamClient {
        let builder = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(Duration::from_secs(60)).pool_timer(TokioTimer::new());
            b
        };
        // An HTTP/2 connection carries every call to its upstream: one that died without a
        // FIN (a NAT or load balancer forgot it) would otherwise stall them all until their
        // timeouts, so it is pinged and dropped when a PING goes unanswered.
        let h2 = |only: bool| {
            let mut b = builder();
            b.http2_only(only)
                .timer(TokioTimer::new())
                .http2_keep_alive_interval(Duration::from_secs(20))
                .http2_keep_alive_timeout(Duration::from_secs(10))
                .http2_keep_alive_while_idle(true);
            b
        };
        UpstreamClient {
            http1: pool::Http1Pool::new(self.connector.clone(), &self.routes),
            h2c: h2(true).build(self.h2_connector.clone()),
            alpn_h2: h2(false).build(self.h2_connector.clone()),
        }
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route serving `path`, if any.
    pub fn route_for(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| strip_prefix(path, &r.prefix).is_some())
    }

    /// Checks the path before anything else: a request that would leave the upstream's base
    /// path is refused before a token is looked at.
    pub fn destination<'a>(&self, req: &HttpRequest, route: &'a Route) -> Result<Destination<'a>, AppError> {
        let invalid = || AppError::BadRequest(BadRequest::InvalidPath);
        let rest = strip_prefix(req.uri().path(), &route.prefix).ok_or_else(invalid)?;
        let target = upstream_target(&route.base, rest, req.uri().query()).map_err(|_| invalid())?;
        let uri = hyper::Uri::try_from(target).map_err(|_| invalid())?;
        Ok(Destination { route, uri })
    }

    /// One call to `{prefix}/…`, step by step. Nothing is admitted before the caller is known,
    /// and nothing of the body is read before the call is admitted.
    pub async fn handle(
        &self,
        req: &HttpRequest,
        payload: web::Payload,
        route: &Route,
        client: &UpstreamClient,
        tokens: &Arc<TokenManager>,
        cookies: &CookiePolicy,
    ) -> Result<HttpResponse, AppError> {
        // The route and its method.
        if !route.takes(req.method().as_str()) {
            return Err(AppError::MethodNotAllowed(route.allowed().into()));
        }
        let upgrade = is_upgrade(req);
        if upgrade && !route.websocket {
            return Err(AppError::BadRequest(BadRequest::WebSocketDisabled));
        }
        // CSRF or Origin by policy: a route that never carries a user's token needs no proof
        // the call came from the SPA; a WebSocket cannot carry a header of the page's choosing,
        // its `Origin` is the proof.
        if route.token != TokenPolicy::None {
            if upgrade { require_same_origin(req, &self.public_origin)? } else { require_csrf_header(req)? }
        }
        // The path: one that would leave the upstream's base path is refused before a session
        // is looked at.
        let destination = self.destination(req, route)?;
        // A body declared larger than the route takes is refused before anything else.
        let content_length = req
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if content_length.is_some_and(|len| len > route.max_body_bytes) {
            return Err(AppError::Limited(Limit::BodySize));
        }
        // Who the caller is, then admission against that caller's share.
        let caller = Caller::identify(req, route, cookies, tokens, self.trusted_hops).await?;
        // A session bound to a device (DBSC) shows its bound cookie: one HMAC, no store command.
        if self.dbsc.enabled()
            && let Some((handle, view)) = caller.live_session()
            && let Err(refusal) = self.dbsc.check(req, handle, view.device.as_deref(), tokens.store().now())
        {
            self.metrics.dbsc_refused("call", refusal.label());
            return Err(AppError::DeviceBinding(refusal));
        }
        // The route's step-up requirement, from the view just read (no store command): a
        // session signed in too weakly or too long ago never reaches the upstream.
        if !route.step_up.is_empty()
            && let Some(step_up) = caller.unmet(&route.step_up, tokens.store().now())
        {
            return Err(self.step_up_required(route, step_up));
        }
        let permit = self.admission.admit(caller.share()).map_err(AppError::Limited)?;
        if upgrade {
            // Boxed: the handshake's connect future is ~6 KB, which inlined made every plain
            // call's future (copied when actix boxes it) as large.
            Box::pin(self.websocket(req, destination, tokens, &caller, (payload, permit))).await
        } else {
            self.exchange(client, req, destination, tokens, &caller, (payload, content_length, permit)).await
        }
    }

    /// The answer to a call that needs a stronger or more recent sign-in; counted, logged.
    fn step_up_required(&self, route: &Route, step_up: StepUp) -> AppError {
        self.metrics.auth_event(crate::metrics::AuthEvent::StepUpRequired);
        tracing::info!(
            api = route.prefix,
            acr_values = step_up.acr_values.as_deref().unwrap_or_default(),
            max_age = step_up.max_age,
            "step-up authentication required"
        );
        AppError::StepUpRequired(step_up)
    }

    /// An upstream's 401 to a call that carried the user's token, read for a step-up
    /// (RFC 9470): `Some` is answered instead of the 401, with no refresh (a refreshed token
    /// carries the same authentication). bff's own token (`client`) or none: not the user's
    /// sign-in to step up, the 401 goes back as it is.
    pub(super) fn upstream_step_up<B>(
        &self,
        caller: &Caller<'_>,
        route: &Route,
        answer: &hyper::Response<B>,
    ) -> Option<AppError> {
        if answer.status() != hyper::StatusCode::UNAUTHORIZED || caller.session().is_none() {
            return None;
        }
        step_up::asked_by(answer.headers()).map(|step_up| self.step_up_required(route, step_up))
    }
}
