//! The exchange with the upstream for a plain HTTP call: the body in, the token chosen, the
//! request sent and retried where that is safe (a pooled connection closed unanswered, the
//! upstream's DPoP nonce, a 401 under the one policy in `caller`), and the answer streamed back.

use std::sync::Arc;

use actix_web::web;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use hyper::header::HeaderValue;
use tracing::Instrument;

use super::admission::Permit;
use super::body::{self, BodyLimits, RequestBody, UpstreamBody};
use super::pool::UpstreamIncoming;
use super::respond::respond;
use super::{Caller, Destination, Proxy, Route, UpstreamClient, headers};
use crate::error::{AppError, BadRequest};
use crate::metrics::UpstreamFailure;
use crate::request_id::RequestId;
use crate::telemetry;
use crate::tokens::{TokenManager, UsableToken};

/// How long a request body may take before the session's view is read again after it.
const VIEW_STAYS_CURRENT: std::time::Duration = std::time::Duration::from_millis(500);

const X_REQUEST_ID: hyper::header::HeaderName = hyper::header::HeaderName::from_static("x-request-id");

impl Proxy {
    /// Body, token, forward with its retries, respond: the admitted part of a call.
    pub(super) async fn exchange(
        &self,
        client: &UpstreamClient,
        req: &HttpRequest,
        destination: Destination<'_>,
        tokens: &Arc<TokenManager>,
        caller: &Caller<'_>,
        (payload, content_length, permit): (web::Payload, Option<u64>, Permit),
    ) -> Result<HttpResponse, AppError> {
        let route = destination.route;
        let limits = BodyLimits {
            max_retry: route.max_retry_body_bytes,
            max_body: route.max_body_bytes,
            stall: route.body_timeout,
            min_rate: route.min_body_bytes_per_sec,
        };
        // The session's view read when the caller was identified is current unless the body
        // kept it waiting: only after a slow upload is it read again, so that the call is not
        // sent for a session that ended meanwhile (a token that expired meanwhile is caught
        // either way: its expiry is decided on the clock). Read again after every body, the view
        // cost a second store round trip per call with a body when the local cache is off.
        let waited_from = std::time::Instant::now();
        let body = body::read(payload, content_length, limits).await?;
        let view_current = waited_from.elapsed() < VIEW_STAYS_CURRENT;
        let target = &route.target;
        let token = caller.token(tokens, target, view_current).await?;
        let retry_body = body.retryable();
        let method = hyper::Method::from_bytes(req.method().as_str().as_bytes())
            .map_err(|_| AppError::BadRequest(BadRequest::BadMethod))?;
        let request_headers = || self.request_headers(req, route);

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
                route.authorize(request.headers_mut(), &method, &destination.uri, token);
            }
            self.send(client, request, route)
        };

        let first = match (send(token.as_ref(), outbound).await, &retry_body) {
            // The upstream closed a pooled connection as the request went out (its keep-alive
            // timer ran out first, a race no pool setting removes): an idempotent request may
            // be sent again (RFC 9110 §9.2.2), as Go's and browsers' clients do.
            (Err(SendError::ClosedUnanswered), Some(bytes)) if replayable(req) => {
                tracing::debug!(api = route.prefix, "upstream closed the connection unanswered; sent again");
                send(token.as_ref(), body::buffered(bytes.clone())).await
            }
            (first, _) => first,
        };
        let first = match first {
            // The upstream did not answer in time while the browser's body was still coming (or
            // stopped): that is the browser's slowness, not the upstream's.
            Err(SendError::Timeout) if body_fault.as_ref().is_some_and(|f| f.still_arriving()) => {
                return Err(AppError::RequestTimeout);
            }
            Err(e) => return Err(body_fault.and_then(|f| f.error()).unwrap_or_else(|| e.into())),
            Ok(first) => first,
        };
        let head = req.method() == actix_web::http::Method::HEAD;
        // Only a call that carried a token is retried after a 401.
        let Some(token) = &token else {
            return Ok(respond(first, route, head, None, permit).await);
        };
        // RFC 9449 §9: an upstream that wants its nonce in the proof says so once.
        let first = match (route.took_dpop_nonce(&first, token), &retry_body) {
            (true, Some(bytes)) => {
                drop(first);
                send(Some(token), body::buffered(bytes.clone())).await.map_err(AppError::from)?
            }
            _ => first,
        };
        if first.status() != hyper::StatusCode::UNAUTHORIZED {
            return Ok(respond(first, route, head, Some(token), permit).await);
        }
        // A step-up is not a token to renew: the SPA must sign in again.
        if let Some(step_up) = self.upstream_step_up(caller, route, &first) {
            return Err(step_up);
        }
        let Some(retry_body) = retry_body else {
            return Ok(respond(first, route, head, Some(token), permit).await);
        };
        // Boxed: a renewal is rare, and inlined its future would make every call's larger.
        let Some(fresh) = Box::pin(caller.after_401(tokens, target, token)).await? else {
            return Ok(respond(first, route, head, Some(token), permit).await);
        };
        drop(first);
        let second = send(Some(&fresh), body::buffered(retry_body)).await.map_err(AppError::from)?;
        Ok(respond(second, route, head, Some(&fresh), permit).await)
    }

    /// Sends and waits for the response head only: bodies (downloads, event streams) may take
    /// as long as they take.
    async fn send(
        &self,
        client: &UpstreamClient,
        mut request: hyper::Request<UpstreamBody>,
        route: &Route,
    ) -> Result<hyper::Response<UpstreamIncoming>, SendError> {
        let span = route.client_span(request.method(), request.uri());
        telemetry::context::inject(&span, request.headers_mut());
        let result = self.timed(route, client.send(route, request)).instrument(span.clone()).await;
        telemetry::record_outcome(&span, &result, |r| r.status().as_u16());
        result
    }

    /// An upstream call, bounded by the route's timeout, measured, its failure classified.
    pub(super) async fn timed<T, E: Into<super::pool::BoxError>>(
        &self,
        route: &Route,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, SendError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(route.timeout, call).await;
        route.upstream_latency.observe(started.elapsed().as_secs_f64());
        match result {
            Err(_) => {
                self.metrics.upstream_error(&route.prefix, UpstreamFailure::Timeout);
                tracing::warn!(api = route.prefix, "upstream did not answer within {} s", route.timeout.as_secs());
                Err(SendError::Timeout)
            }
            Ok(Err(e)) => {
                let e: super::pool::BoxError = e.into();
                self.metrics.upstream_error(&route.prefix, UpstreamFailure::Unavailable);
                let closed = closed_unanswered(&*e);
                tracing::warn!(api = route.prefix, "upstream unreachable: {}", crate::telemetry::error_chain(&*e));
                Err(if closed { SendError::ClosedUnanswered } else { SendError::Unreachable })
            }
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// What the upstream gets of the browser's headers (see `headers`), and the request id.
    pub(super) fn request_headers(&self, req: &HttpRequest, route: &Route) -> hyper::HeaderMap {
        let forwarded = headers::ForwardedFor {
            peer: req.peer_addr().map(|a| a.ip()),
            trusted_hops: self.trusted_hops,
            proto: &self.proto,
            host: &self.host,
            keep_trace_context: telemetry::context::keep_browser_context(self.trust_trace_context),
        };
        let policy =
            headers::HeaderPolicy { drop: &route.request_headers_drop, allow: route.request_headers_allow.as_deref() };
        let mut headers = headers::upstream_request_headers(req.headers(), &forwarded, &policy);
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
pub(super) enum SendError {
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

fn closed_unanswered(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    let e: &(dyn std::error::Error + 'static) = e;
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
