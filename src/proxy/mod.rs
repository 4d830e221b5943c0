//! The API proxy: `{prefix}/…` to the configured upstream with the session's access token,
//! one retry after a refresh when the upstream answers 401 and the body could be kept.

mod admission;
mod body;
mod caller;
mod frames;
mod headers;
mod path;
mod websocket;

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::SizedStream;
use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use futures_util::TryStreamExt;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tracing::Instrument;

use url::Url;

use crate::config::{ApiConfig, Config, TokenPolicy};
use crate::error::{AppError, BadRequest};
use crate::limits::Limit;
use crate::metrics::{Metrics, UpstreamFailure};
use crate::request_id::RequestId;
use crate::session::now_unix;
use crate::telemetry;
use crate::tokens::{ClientGrant, TokenError, TokenManager, UsableToken};
use admission::{Admission, Permit};
use body::BodyLimits;

pub use body::{RequestBody, UpstreamBody};
pub use caller::Caller;
pub use path::{PathError, strip_prefix, upstream_url};
pub use websocket::is_upgrade;

/// One `[[api]]` entry.
#[derive(Debug)]
pub struct Route {
    pub prefix: String,
    base: Url,
    timeout: Duration,
    max_retry_body_bytes: u64,
    max_body_bytes: u64,
    /// Request headers this upstream must not get, lower-case (`request_headers_drop`).
    request_headers_drop: Vec<String>,
    /// `methods`; empty: any (TRACE and CONNECT are refused before routing).
    methods: Vec<String>,
    /// How long a request body may send nothing (`body_timeout_secs`).
    body_timeout: Duration,
    /// Whose token the upstream gets (`token`).
    pub token: TokenPolicy,
    /// The audience of the route's tokens (`resource`, RFC 8707).
    resource: Option<String>,
    /// What bff's own token is asked for with (`token = "client"`).
    pub client_grant: Option<ClientGrant>,
    /// The upstream's last `DPoP-Nonce` (RFC 9449 §9), put in the next proofs.
    dpop_nonce: std::sync::Mutex<Option<String>>,
    /// WebSocket upgrades pass through (`websocket`).
    pub websocket: bool,
    /// How spans name the route: `/api/*` (the paths under it are unbounded).
    span_route: String,
}

/// What a route with no `methods` takes, as `Allow` says it: the methods of RFC 9110 and PATCH,
/// TRACE and CONNECT aside.
const EVERY_METHOD: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

impl Route {
    /// The span of one exchange with this route's upstream (see `telemetry::client_span`).
    pub(super) fn client_span(&self, method: &hyper::Method, uri: &hyper::Uri) -> tracing::Span {
        telemetry::client_span("upstream", method.as_str(), &self.span_route, uri)
    }

    /// Whether the route takes `method` (GET implies HEAD; no route takes TRACE or CONNECT: the
    /// configuration refuses them in `methods`, and an empty list means every other method).
    pub fn takes(&self, method: &str) -> bool {
        if self.methods.is_empty() {
            return !matches!(method, "TRACE" | "CONNECT");
        }
        self.methods.iter().any(|m| m == method || (method == "HEAD" && m == "GET"))
    }

    /// Puts `token` on a request to `uri`: `Authorization`, and for a DPoP-bound token a fresh
    /// proof (RFC 9449 §7: `htm`, `htu`, `ath`, the upstream's nonce when it gave one).
    fn authorize(&self, headers: &mut hyper::HeaderMap, method: &hyper::Method, uri: &hyper::Uri, token: &UsableToken) {
        if let Some(value) = &token.authorization {
            headers.insert(AUTHORIZATION, value.clone());
        }
        let Some(binding) = &token.dpop else { return };
        let nonce = self.dpop_nonce.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let proof =
            binding.key.proof(method.as_str(), &uri.to_string(), Some(&binding.ath), nonce.as_deref(), now_unix());
        match proof.map(HeaderValue::try_from) {
            Ok(Ok(value)) => {
                headers.insert(crate::dpop::DPOP_HEADER, value);
            }
            _ => tracing::warn!(api = self.prefix, "a DPoP proof could not be made; the call goes without one"),
        }
    }

    /// Keeps the nonce an upstream answer offers; `true` when it is a 401 asking for it
    /// (`use_dpop_nonce`) to a DPoP call, which is then sent once more.
    fn took_dpop_nonce(&self, answer: &hyper::Response<Incoming>, token: &UsableToken) -> bool {
        let Some(nonce) = answer.headers().get(crate::dpop::DPOP_NONCE_HEADER).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let previous = self.dpop_nonce.lock().unwrap_or_else(|p| p.into_inner()).replace(nonce.to_string());
        let asked = answer.status() == hyper::StatusCode::UNAUTHORIZED
            && answer
                .headers()
                .get_all(hyper::header::WWW_AUTHENTICATE)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("use_dpop_nonce")));
        asked && token.dpop.is_some() && previous.as_deref() != Some(nonce)
    }

    /// The `Allow` header of a 405 on this route.
    pub fn allowed(&self) -> String {
        if self.methods.is_empty() {
            return EVERY_METHOD.to_string();
        }
        let mut methods = self.methods.clone();
        if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
            methods.push("HEAD".into());
        }
        methods.join(", ")
    }
}

impl From<&ApiConfig> for Route {
    fn from(api: &ApiConfig) -> Self {
        Route {
            prefix: api.prefix.clone(),
            span_route: format!("{}/*", api.prefix.trim_end_matches('/')),
            base: api.upstream.clone(),
            timeout: api.timeout,
            max_retry_body_bytes: api.max_retry_body_bytes,
            request_headers_drop: api.request_headers_drop.clone(),
            methods: api.methods.clone(),
            body_timeout: api.body_timeout,
            token: api.token,
            resource: api.resource.clone(),
            dpop_nonce: std::sync::Mutex::new(None),
            client_grant: (api.token == TokenPolicy::Client)
                .then(|| ClientGrant { scopes: api.scopes.clone(), resource: api.resource.clone() }),
            websocket: api.websocket,
            max_body_bytes: api.max_body_bytes,
        }
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Where one call goes: its route and the upstream URI, checked.
pub struct Destination<'a> {
    route: &'a Route,
    uri: hyper::Uri,
}

/// One proxied call: the browser's request, where it goes, and whose token it carries.
pub struct Call<'a> {
    pub req: &'a HttpRequest,
    pub destination: Destination<'a>,
    pub tokens: &'a Arc<TokenManager>,
    pub caller: Caller<'a>,
}

/// One connection pool to the upstreams per actix worker (see `Proxy::upstream_client`).
pub struct UpstreamClient(Client<Connector, UpstreamBody>);

pub struct Proxy {
    /// Longest prefix first, so the most specific route wins.
    routes: Vec<Arc<Route>>,
    connector: Connector,
    /// The same without HTTP/2 in ALPN: a WebSocket is an HTTP/1.1 upgrade.
    websocket_connector: Connector,
    proto: HeaderValue,
    host: HeaderValue,
    trusted_hops: usize,
    /// `telemetry.trust_incoming_trace_context`.
    trust_trace_context: bool,
    /// Exchanges in flight, in all and per session (a permit lives until its response body ends).
    admission: Admission,
    metrics: Arc<Metrics>,
}

impl Proxy {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Proxy {
        let mut routes: Vec<Arc<Route>> = config.api.iter().map(|a| Arc::new(Route::from(a))).collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(Duration::from_secs(5)));
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let https = || hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1();
        let connector = https().enable_http2().wrap_connector(tcp.clone());
        let websocket_connector = https().wrap_connector(tcp);

        let public = &config.server.public_url;
        let host = match public.port() {
            Some(port) => format!("{}:{port}", public.host_str().unwrap_or_default()),
            None => public.host_str().unwrap_or_default().to_string(),
        };
        Proxy {
            routes,
            connector,
            websocket_connector,
            proto: HeaderValue::try_from(public.scheme()).unwrap_or(HeaderValue::from_static("https")),
            host: HeaderValue::try_from(host).unwrap_or(HeaderValue::from_static("")),
            trusted_hops: config.server.trusted_proxy_hops,
            trust_trace_context: config.telemetry.trust_incoming_trace_context,
            admission: Admission::new(
                config.server.max_upstream_concurrency,
                config.server.max_upstream_concurrency_per_session,
            ),
            metrics,
        }
    }

    /// A client with its own connection pool, for one actix worker. A pooled connection is
    /// driven by the runtime that opened it: shared between workers, a request from one worker
    /// on another's connection costs cross-thread wake-ups and, when that thread is not
    /// scheduled, milliseconds (p99 went from ~1 ms to 42 ms with two workers on two cores).
    /// Redirects are not followed: they go back to the SPA as they are (following them could
    /// leave the upstream).
    pub fn upstream_client(&self) -> UpstreamClient {
        UpstreamClient(
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_timer(TokioTimer::new())
                .build(self.connector.clone()),
        )
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
        let url = upstream_url(&route.base, rest, req.uri().query()).map_err(|_| invalid())?;
        let uri = url.as_str().parse().map_err(|_| invalid())?;
        Ok(Destination { route, uri })
    }

    pub async fn forward(
        &self,
        client: &UpstreamClient,
        call: Call<'_>,
        payload: web::Payload,
    ) -> Result<HttpResponse, AppError> {
        let Call { req, destination, tokens, caller } = call;
        let handle = caller.session();
        let content_length =
            req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if content_length.is_some_and(|len| len > destination.route.max_body_bytes) {
            return Err(AppError::Limited(Limit::BodySize));
        }
        let permit = self.admission.admit(handle).map_err(AppError::Limited)?;
        let limits = BodyLimits {
            max_retry: destination.route.max_retry_body_bytes,
            max_body: destination.route.max_body_bytes,
            stall: destination.route.body_timeout,
        };
        let body = body::read(payload, content_length, limits).await?;
        // After the body is in: a slow upload is not sent with a token that expired meanwhile.
        let resource = destination.route.resource.as_deref();
        let token = caller.token(tokens, resource).await?;
        let retry_body = body.retryable();
        let method = hyper::Method::from_bytes(req.method().as_str().as_bytes())
            .map_err(|_| AppError::BadRequest(BadRequest::BadMethod))?;
        let request_headers = || self.request_headers(req, destination.route);

        let (outbound, body_fault) = match body {
            RequestBody::Buffered(bytes) => (body::buffered(bytes), None),
            RequestBody::Streaming(s) => {
                let fault = Arc::clone(&s.fault);
                (s.into_upstream(), Some(fault))
            }
        };
        // Headers are made again for the rare retry rather than copied for every first try.
        let send = |token: Option<&UsableToken>, body: UpstreamBody| {
            let mut request = hyper::Request::new(body);
            *request.method_mut() = method.clone();
            *request.uri_mut() = destination.uri.clone();
            *request.headers_mut() = request_headers();
            if let Some(token) = token {
                destination.route.authorize(request.headers_mut(), &method, &destination.uri, token);
            }
            self.send(client, request, destination.route)
        };

        let first = match (send(token.as_ref(), outbound).await, &retry_body) {
            // The upstream closed a pooled connection as the request went out (its keep-alive
            // timer ran out first, a race no pool setting removes): an idempotent request may
            // be sent again (RFC 9110 §9.2.2), as Go's and browsers' clients do.
            (Err(SendError::ClosedUnanswered), Some(bytes)) if replayable(req) => {
                tracing::debug!(
                    api = destination.route.prefix,
                    "upstream closed the connection unanswered; sent again"
                );
                send(token.as_ref(), body::buffered(bytes.clone())).await
            }
            (first, _) => first,
        };
        let first = match first {
            Err(e) => return Err(body_fault.and_then(|f| f.error()).unwrap_or_else(|| e.into())),
            Ok(first) => first,
        };
        let head = req.method() == actix_web::http::Method::HEAD;
        // Only a call that carried a token is retried after a 401.
        let Some(token) = &token else {
            return Ok(respond(first, head, None, permit).await);
        };
        // RFC 9449 §9: an upstream that wants its nonce in the proof says so once.
        let first = match (destination.route.took_dpop_nonce(&first, token), &retry_body) {
            (true, Some(bytes)) => {
                drop(first);
                send(Some(token), body::buffered(bytes.clone())).await.map_err(AppError::from)?
            }
            _ => first,
        };
        if first.status() != hyper::StatusCode::UNAUTHORIZED {
            return Ok(respond(first, head, Some(token), permit).await);
        }
        let Some(retry_body) = retry_body else {
            return Ok(respond(first, head, Some(token), permit).await);
        };
        let fresh = match caller.renewed(tokens, resource, token).await {
            Ok(fresh) => fresh,
            // Nothing to refresh with: the upstream's 401 is the answer.
            Err(TokenError::CannotRefresh) => return Ok(respond(first, head, Some(token), permit).await),
            Err(e) => return Err(e.into()),
        };
        drop(first);
        let second = send(Some(&fresh), body::buffered(retry_body)).await.map_err(AppError::from)?;
        Ok(respond(second, head, Some(&fresh), permit).await)
    }

    /// Sends and waits for the response head only: bodies (downloads, event streams) may take
    /// as long as they take.
    async fn send(
        &self,
        client: &UpstreamClient,
        mut request: hyper::Request<UpstreamBody>,
        route: &Route,
    ) -> Result<hyper::Response<Incoming>, SendError> {
        let span = route.client_span(request.method(), request.uri());
        telemetry::context::inject(&span, request.headers_mut());
        let result = self.timed(route, client.0.request(request)).instrument(span.clone()).await;
        telemetry::record_outcome(&span, &result, |r| r.status().as_u16());
        result
    }

    /// An upstream call, bounded by the route's timeout, measured, its failure classified.
    async fn timed<T, E: std::error::Error + 'static>(
        &self,
        route: &Route,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, SendError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(route.timeout, call).await;
        self.metrics.upstream(&route.prefix, started.elapsed());
        match result {
            Err(_) => {
                self.metrics.upstream_error(&route.prefix, UpstreamFailure::Timeout);
                tracing::warn!(api = route.prefix, "upstream did not answer within {} s", route.timeout.as_secs());
                Err(SendError::Timeout)
            }
            Ok(Err(e)) => {
                self.metrics.upstream_error(&route.prefix, UpstreamFailure::Unavailable);
                let closed = closed_unanswered(&e);
                tracing::warn!(api = route.prefix, "upstream unreachable: {}", crate::telemetry::error_chain(&e));
                Err(if closed { SendError::ClosedUnanswered } else { SendError::Unreachable })
            }
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// What the upstream gets of the browser's headers (see `headers`), and the request id.
    fn request_headers(&self, req: &HttpRequest, route: &Route) -> hyper::HeaderMap {
        let forwarded = headers::ForwardedFor {
            peer: req.peer_addr().map(|a| a.ip()),
            trusted_hops: self.trusted_hops,
            proto: &self.proto,
            host: &self.host,
            keep_trace_context: telemetry::context::keep_browser_context(self.trust_trace_context),
        };
        let mut headers = headers::upstream_request_headers(req.headers(), &forwarded, &route.request_headers_drop);
        if let Some(id) = req.extensions().get::<RequestId>()
            && let Ok(v) = HeaderValue::from_str(&id.0)
        {
            headers.insert(X_REQUEST_ID, v);
        }
        headers
    }
}

/// Why an upstream exchange gave no response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendError {
    Timeout,
    /// The connection closed after the request went out and before any answer.
    ClosedUnanswered,
    Unreachable,
}

impl From<SendError> for AppError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Timeout => AppError::UpstreamTimeout,
            SendError::ClosedUnanswered | SendError::Unreachable => AppError::UpstreamUnavailable,
        }
    }
}

fn closed_unanswered(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(cause) = source {
        if cause.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_incomplete_message) {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Whether a request may be sent again without asking: an idempotent method (RFC 9110 §9.2.2),
/// or one its sender marked with an idempotency key.
fn replayable(req: &HttpRequest) -> bool {
    use actix_web::http::Method;
    matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
        || req.headers().contains_key("idempotency-key")
}

/// Tells the SPA when the access token used expires (never the token), so it can show refreshes.
pub const TOKEN_EXPIRY_HEADER: &str = "x-bff-access-token-expires-at";

const X_REQUEST_ID: hyper::header::HeaderName = hyper::header::HeaderName::from_static("x-request-id");

/// Streams the upstream's answer back; the concurrency permit lives as long as the body does.
async fn respond(
    upstream: hyper::Response<Incoming>,
    head_request: bool,
    token: Option<&UsableToken>,
    permit: Permit,
) -> HttpResponse {
    let status = StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut res = HttpResponse::build(status);
    copy_response_headers(&mut res, upstream.headers());
    if let Some(token) = token {
        res.insert_header((
            actix_web::http::header::HeaderName::from_static(TOKEN_EXPIRY_HEADER),
            actix_web::http::header::HeaderValue::from(token.expires_at),
        ));
    }
    let no_body = head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    if no_body {
        return res.finish();
    }
    let length = upstream.body().size_hint().exact();
    let mut stream = upstream.into_body().into_data_stream().map_err(|e| {
        tracing::warn!("upstream body interrupted: {e}");
        std::io::Error::other("upstream body interrupted")
    });
    let mut arrived = Vec::new();
    if length.is_none() {
        match take_arrived(&mut stream).await {
            // Whole already: one write with a length instead of chunks and a last chunk.
            Arrived::Whole(body) => return res.body(body),
            Arrived::Start(start) => arrived = start,
        }
    }
    let stream = futures_util::StreamExt::chain(futures_util::stream::iter(arrived), stream);
    // The permit travels with the body and is dropped when it ends.
    let stream = futures_util::stream::unfold((stream, permit), |(mut stream, permit)| async move {
        futures_util::StreamExt::next(&mut stream).await.map(|item| (item, (stream, permit)))
    });
    match length {
        Some(len) => res.body(SizedStream::new(len, stream)),
        None => res.streaming::<_, std::io::Error>(stream.map_ok(Bytes::from)),
    }
}

/// The upstream's response headers that go back (see `headers`).
fn copy_response_headers(res: &mut actix_web::HttpResponseBuilder, upstream: &hyper::HeaderMap) {
    // http 1 (hyper) to http 0.2 (actix): a standard name maps to its constant, a value is one copy.
    for (name, value) in headers::downstream_response_headers(upstream) {
        if let (Ok(name), Ok(value)) = (
            actix_web::http::header::HeaderName::from_bytes(name.as_str().as_bytes()),
            actix_web::http::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            res.append_header((name, value));
        }
    }
}

/// A body without a length that was read whole already is answered whole up to this size.
const WHOLE_BODY_LIMIT: usize = 64 * 1024;

enum Arrived {
    Whole(Bytes),
    /// What arrived so far; the rest follows as it comes.
    Start(Vec<Result<Bytes, std::io::Error>>),
}

/// Scheduler turns given to the upstream connection's task to hand over what it has read.
const ARRIVAL_TURNS: u32 = 3;

/// What of a chunked answer has already arrived, without waiting for any more: most APIs
/// answer small JSON bodies chunked (streaming frameworks do), all in one go. The connection's
/// task hands the body over only once asked, so it gets a few scheduler turns (no timer, no
/// waiting on the network). An event stream or a slow download is never held back: whatever is
/// not there by then is streamed when it comes.
async fn take_arrived<S>(stream: &mut S) -> Arrived
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut size = 0;
    let mut turns = ARRIVAL_TURNS;
    let error = loop {
        if size > WHOLE_BODY_LIMIT {
            break None;
        }
        match futures_util::FutureExt::now_or_never(futures_util::StreamExt::next(stream)) {
            Some(Some(Ok(chunk))) => {
                size += chunk.len();
                chunks.push(chunk);
            }
            Some(None) => return Arrived::Whole(concat(chunks, size)),
            Some(Some(Err(e))) => break Some(e),
            None if turns > 0 => {
                turns -= 1;
                tokio::task::yield_now().await;
            }
            None => break None,
        }
    };
    Arrived::Start(chunks.into_iter().map(Ok).chain(error.map(Err)).collect())
}

fn concat(mut chunks: Vec<Bytes>, size: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut whole = bytes::BytesMut::with_capacity(size);
    for chunk in &chunks {
        whole.extend_from_slice(chunk);
    }
    whole.freeze()
}
