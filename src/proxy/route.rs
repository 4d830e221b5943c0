//! One `[[api]]` route: where it goes, what it takes, how its tokens are sent.

use std::time::Duration;

use hyper::header::{AUTHORIZATION, HeaderValue};

use crate::config::{ApiConfig, TokenPolicy};
use crate::session::now_unix;
use crate::telemetry;
use crate::tokens::{ClientGrant, ExchangeTarget, Target, UsableToken};

/// One `[[api]]` entry.
#[derive(Debug)]
pub struct Route {
    pub prefix: String,
    pub(super) base: super::UpstreamBase,
    pub(super) timeout: Duration,
    pub(super) max_retry_body_bytes: u64,
    pub(super) max_body_bytes: u64,
    /// Request headers this upstream must not get, lower-case (`request_headers_drop`).
    pub(super) request_headers_drop: Vec<String>,
    /// `request_headers_allow`, lower-case.
    pub(super) request_headers_allow: Option<Vec<String>>,
    /// `response_headers_drop`, lower-case.
    pub(super) response_headers_drop: Vec<String>,
    /// `methods`; empty: any (TRACE and CONNECT are refused before routing).
    methods: Vec<String>,
    /// How long a request body may send nothing (`body_timeout_secs`).
    pub(super) body_timeout: Duration,
    /// The average a request body must keep (`min_body_bytes_per_sec`, 0: none).
    pub(super) min_body_bytes_per_sec: u64,
    /// Whose token the upstream gets (`token`).
    pub token: TokenPolicy,
    /// Which of the session's tokens a user's call carries (`token`, `resource`, `audience`).
    pub(super) target: Target,
    /// What bff's own token is asked for with (`token = "client"`).
    pub client_grant: Option<ClientGrant>,
    /// The upstream's last `DPoP-Nonce` (RFC 9449 §9), put in the next proofs.
    dpop_nonce: std::sync::Mutex<Option<String>>,
    /// WebSocket upgrades pass through (`websocket`).
    pub websocket: bool,
    /// How long an idle HTTP/1.1 connection is kept (`keep_alive_secs`).
    pub(super) keep_alive: std::time::Duration,
    /// HTTP/1.1, or HTTP/2 by prior knowledge or ALPN (`http2` and the upstream's scheme).
    pub(super) protocol: super::UpstreamProtocol,
    /// The session's authentication this route needs (`acr_values`, `max_age`).
    pub(super) step_up: super::Requirement,
    /// How spans name the route: `/api/*` (the paths under it are unbounded).
    span_route: String,
    /// `bff_upstream_duration_seconds` of this prefix, found once (not per call).
    pub(super) upstream_latency: prometheus::Histogram,
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
    pub(super) fn authorize(
        &self,
        headers: &mut hyper::HeaderMap,
        method: &hyper::Method,
        uri: &hyper::Uri,
        token: &UsableToken,
    ) {
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
    pub(super) fn took_dpop_nonce<B>(&self, answer: &hyper::Response<B>, token: &UsableToken) -> bool {
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

impl Route {
    /// The route of one `[[api]]` entry, its series in `metrics`.
    pub fn new(api: &ApiConfig, metrics: &crate::metrics::Metrics) -> Self {
        Route {
            upstream_latency: metrics.upstream_series(&api.prefix),
            prefix: api.prefix.clone(),
            span_route: format!("{}/*", api.prefix.trim_end_matches('/')),
            base: super::UpstreamBase::from(&api.upstream),
            timeout: api.timeout,
            max_retry_body_bytes: api.max_retry_body_bytes,
            request_headers_drop: api.request_headers_drop.clone(),
            request_headers_allow: api.request_headers_allow.clone(),
            response_headers_drop: api.response_headers_drop.clone(),
            methods: api.methods.clone(),
            body_timeout: api.body_timeout,
            min_body_bytes_per_sec: api.min_body_bytes_per_sec,
            token: api.token,
            target: match (api.token, &api.resource) {
                (TokenPolicy::Exchange, _) => Target::Exchange(std::sync::Arc::new(ExchangeTarget::new(
                    api.audience.clone(),
                    api.resource.clone(),
                    api.scopes.clone(),
                ))),
                (_, Some(resource)) => Target::Resource(resource.clone()),
                (_, None) => Target::Default,
            },
            dpop_nonce: std::sync::Mutex::new(None),
            client_grant: (api.token == TokenPolicy::Client)
                .then(|| ClientGrant { scopes: api.scopes.clone(), resource: api.resource.clone() }),
            websocket: api.websocket,
            keep_alive: api.keep_alive,
            protocol: match (api.http2, api.upstream.scheme()) {
                (false, _) => super::UpstreamProtocol::Http1,
                (true, "https") => super::UpstreamProtocol::Alpn,
                (true, _) => super::UpstreamProtocol::PriorKnowledge,
            },
            step_up: super::Requirement { acr_values: api.acr_values.clone(), max_age: api.max_age },
            max_body_bytes: api.max_body_bytes,
        }
    }
}
