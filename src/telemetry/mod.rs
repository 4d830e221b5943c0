//! Logging and traces. Logs: `tracing` to stderr as text or JSON lines; the level from the
//! configuration unless `RUST_LOG` is set. Traces: with `[telemetry]` (or the `OTEL_*`
//! variables) the same spans are exported over OTLP; each request runs in a span carrying its
//! request id, and its parts (session read, refresh, IdP and upstream calls) in spans of their
//! own, at debug level so that they cost nothing while nothing exports them.

pub mod context;
mod export;

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogFormat, TelemetryConfig};

pub use export::{Export, export};

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (then trace context goes out with every upstream and IdP call).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Flushes the spans not yet exported when dropped (at shutdown).
#[must_use = "spans still queued are lost unless this lives until shutdown"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("bff: could not export the last spans: {e}");
        }
    }
}

/// Logs only (the demo, tools); later calls (tests) are ignored.
pub fn init(format: LogFormat, default_filter: &str) {
    let _ = Registry::default().with(log_layer(format, default_filter)).try_init();
}

/// Logs, and traces when `[telemetry]` or the `OTEL_*` variables ask for them.
pub fn init_with_traces(
    format: LogFormat,
    default_filter: &str,
    config: &TelemetryConfig,
) -> anyhow::Result<Telemetry> {
    let plan = export(config, |name| std::env::var(name).ok());
    let provider = match &plan {
        Export::Off => None,
        Export::To(endpoint) => Some(export::provider(config, endpoint.clone())?),
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("bff"))
            // Source locations, the Rust target and busy/idle times say nothing to whoever
            // reads the trace, and cost every span.
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            // bff reads a span's context from the span itself (`context::inject`), never from
            // OpenTelemetry's thread-local current context: no need to swap it at every poll.
            .with_context_activation(false)
            .with_filter(filter_fn(exported))
    });
    let installed = Registry::default().with(log_layer(format, default_filter)).with(traces).try_init().is_ok();
    EXPORTING.store(installed && provider.is_some(), Ordering::Relaxed);
    if let (true, Export::To(endpoint)) = (exporting(), plan) {
        let to = endpoint.unwrap_or_else(|| "the OTEL_EXPORTER_OTLP_* endpoint".to_string());
        tracing::info!("exporting traces to {to}");
    }
    Ok(Telemetry { provider })
}

/// bff's own spans down to debug (a request's parts) and its events down to info (span events);
/// nothing of the libraries it uses, and not the access log line (the request span has all it
/// says, as attributes: an event per request would be exported for nothing).
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    let ours = meta.target() == "bff" || meta.target().starts_with("bff::");
    let floor = if meta.is_span() { Level::DEBUG } else { Level::INFO };
    let access_log = meta.is_event() && meta.target() == "bff::http" && meta.fields().field("latency_ms").is_some();
    ours && *meta.level() <= floor && !access_log
}

fn log_layer(format: LogFormat, default_filter: &str) -> Box<dyn Layer<Registry> + Send + Sync> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let colour = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(colour);
    match format {
        LogFormat::Text => layer.with_filter(filter).boxed(),
        LogFormat::Json => layer.json().with_current_span(true).with_span_list(false).with_filter(filter).boxed(),
    }
}

/// Whether text logs are coloured: only for a person at a terminal, and never with `NO_COLOR`
/// set to anything (no-color.org). A file, a pipe or a log collector gets plain text: escape
/// codes there are noise that every reader has to strip.
fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// An error and its sources on one line; for logs (never for response bodies).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Whether a span started now would be recorded: not under a trace its sampler dropped (its
/// children would be dropped too, after costing as much to make; the trace context still goes
/// out, from the span that is). A root decides for itself.
fn recorded_here() -> bool {
    let current = tracing::Span::current();
    current.is_none() || is_recorded(&current)
}

/// Whether `span` is exported (its trace was sampled): attributes set on it go somewhere.
pub fn is_recorded(span: &tracing::Span) -> bool {
    exporting() && span.context().span().span_context().is_sampled()
}

/// A span for one part of a request (`make` it): made unless spans are exported and this
/// trace is not recorded. Without export it is made as any debug span (for the logs).
pub fn part_span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if exporting() && !recorded_here() { tracing::Span::none() } else { make() }
}

/// A span for a call bff makes (`peer`: `idp` or `upstream`), named by method and `route` (a
/// bounded name: the IdP endpoint's path, an API route's prefix). No query, header or body goes
/// in: those are where codes and tokens travel. None while nothing exports spans.
pub fn client_span(peer: &'static str, method: &str, route: &str, url: &hyper::Uri) -> tracing::Span {
    if !exporting() || !recorded_here() {
        return tracing::Span::none();
    }
    tracing::debug_span!(
        "client request",
        otel.name = format!("{method} {route}").as_str(),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        "bff.peer" = peer,
        "http.request.method" = method,
        "server.address" = url.host().unwrap_or_default(),
        "server.port" = url.port_u16(),
        "url.path" = url.path(),
        "http.response.status_code" = tracing::field::Empty,
    )
}

/// How a call bff made (in `span`, from `client_span`) ended: its answer's status on the span,
/// or the span marked failed without an answer. (A plain function, not a wrapping future: on
/// the proxy's path a wrapper made every call's future bigger, and moving it cost ~12k
/// instructions per call.)
pub fn record_outcome<T, E>(span: &tracing::Span, result: &Result<T, E>, status: impl FnOnce(&T) -> u16) {
    match result {
        Ok(answer) => record_status(span, status(answer)),
        Err(_) => record_failure(span),
    }
}

/// The answer's status on a span; 5xx marks the span failed.
fn record_status(span: &tracing::Span, status: u16) {
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// A call that got no answer.
fn record_failure(span: &tracing::Span) {
    span.record("otel.status_code", "ERROR");
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::colour;

    #[test]
    fn logs_are_coloured_on_a_terminal_only_and_never_with_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))), "an empty NO_COLOR is as good as none");
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(true, Some(OsStr::new("false"))), "any value at all turns colour off");
        assert!(!colour(false, None), "a file or a pipe gets plain text");
        assert!(!colour(false, Some(OsStr::new("1"))));
    }
}
