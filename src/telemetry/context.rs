//! W3C trace context (`traceparent`, `tracestate`) in and out. Out: every upstream and IdP
//! request carries the span it is sent from while spans are exported. In: a browser's header is
//! believed only with `telemetry.trust_incoming_trace_context` (a page could otherwise choose
//! the trace ids bff's and the upstreams' spans land in).

use hyper::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static(TRACEPARENT);
const TRACESTATE_HEADER: HeaderName = HeaderName::from_static(TRACESTATE);

/// Writes `span`'s context into `headers` (http 1: hyper's and reqwest's), replacing what was
/// there; for a span not made (an unsampled trace), the current one's. Nothing while spans are
/// not exported. (By hand rather than through the SDK's propagator: that one sends an empty
/// `tracestate` with every call and parses the header names each time.)
pub fn inject(span: &tracing::Span, headers: &mut hyper::HeaderMap) {
    if !super::exporting() {
        return;
    }
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    let context = if span.is_none() { tracing::Span::current().context() } else { span.context() };
    let span = context.span();
    let span_context = span.span_context();
    if !span_context.is_valid() {
        return;
    }
    if let Ok(value) = HeaderValue::try_from(traceparent(span_context)) {
        headers.insert(TRACEPARENT_HEADER, value);
    }
    let state = span_context.trace_state().header();
    if !state.is_empty()
        && let Ok(value) = HeaderValue::try_from(state)
    {
        headers.insert(TRACESTATE_HEADER, value);
    }
}

/// W3C Trace Context §3.2, version 00.
fn traceparent(span_context: &SpanContext) -> String {
    let flags = span_context.trace_flags() & TraceFlags::SAMPLED;
    format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), flags.to_u8())
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::Context;
    use opentelemetry::propagation::{Injector, TextMapPropagator};
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::traceparent;

    struct Map(HashMap<String, String>);

    impl Injector for Map {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_string(), value);
        }
    }

    #[test]
    fn traceparent_is_what_the_sdks_propagator_writes() {
        for flags in [TraceFlags::SAMPLED, TraceFlags::default()] {
            let span_context = SpanContext::new(
                TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("trace id"),
                SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
                flags,
                true,
                TraceState::default(),
            );
            let mut sdk = Map(HashMap::new());
            let context = Context::new().with_remote_span_context(span_context.clone());
            TraceContextPropagator::new().inject_context(&context, &mut sdk);
            assert_eq!(Some(&traceparent(&span_context)), sdk.0.get("traceparent"));
        }
    }
}
