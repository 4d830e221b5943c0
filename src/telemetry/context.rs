//! W3C trace context (`traceparent`, `tracestate`) in and out. Out: every upstream and IdP
//! request carries the span it is sent from while spans are exported. In: a browser's header is
//! believed only with `telemetry.trust_incoming_trace_context` (a page could otherwise choose
//! the trace ids bff's and the upstreams' spans land in).

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_http::HeaderInjector;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Writes `span`'s context into `headers` (http 1: hyper's and reqwest's), replacing what was
/// there. Nothing while spans are not exported.
pub fn inject(span: &tracing::Span, headers: &mut hyper::HeaderMap) {
    if !super::exporting() {
        return;
    }
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// Makes the browser's trace context `span`'s parent, when it is believed and spans are exported.
pub fn adopt_incoming(span: &tracing::Span, headers: &actix_web::http::header::HeaderMap, trusted: bool) {
    if !trusted || !super::exporting() || !headers.contains_key(TRACEPARENT) {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&InboundHeaders(headers));
    // Fails only for a span that is already entered or not recorded; the span stays a root.
    let _ = span.set_parent(parent);
}

/// What an upstream gets of the browser's own trace context headers: kept only when believed
/// and bff adds none of its own (spans not exported: bff stays transparent).
pub fn keep_browser_context(trusted: bool) -> bool {
    trusted && !super::exporting()
}

struct InboundHeaders<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for InboundHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(actix_web::http::header::HeaderName::as_str).collect()
    }
}
