//! An OpenTelemetry collector's OTLP/HTTP traces endpoint (`POST /v1/traces`, protobuf), on
//! loopback: it decodes what it is sent with the protocol's own messages and keeps every span.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

/// One span as the collector got it; ids in hex, attribute values as text.
#[derive(Debug, Clone)]
pub struct ExportedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// `SpanKind` of the protocol: 1 internal, 2 server, 3 client.
    pub kind: i32,
    /// 2: error.
    pub status_code: i32,
    pub attributes: BTreeMap<String, String>,
    /// Each event's name and attributes.
    pub events: Vec<(String, BTreeMap<String, String>)>,
    pub resource: BTreeMap<String, String>,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

impl ExportedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// What a counting collector (`spawn_counting_collector`) was sent: requests, spans, bytes.
#[derive(Default)]
pub struct Counts {
    pub exports: std::sync::atomic::AtomicU64,
    pub spans: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
}

/// A collector that keeps nothing but counts, for load (benches/stack.rs); its base URL.
pub async fn spawn_counting_collector() -> (String, Arc<Counts>) {
    let listener = crate::listener();
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let counts = Arc::new(Counts::default());
    let state = web::Data::from(Arc::clone(&counts));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
            .route(
                "/counts",
                web::get().to(|counts: web::Data<Counts>| async move {
                    use std::sync::atomic::Ordering::Relaxed;
                    let (e, s, b) =
                        (counts.exports.load(Relaxed), counts.spans.load(Relaxed), counts.bytes.load(Relaxed));
                    HttpResponse::Ok().body(format!("exports={e} spans={s} bytes={b}"))
                }),
            )
            .route(
                "/v1/traces",
                web::post().to(|body: web::Bytes, counts: web::Data<Counts>| async move {
                    use std::sync::atomic::Ordering::Relaxed;
                    let Ok(request) = ExportTraceServiceRequest::decode(body.as_ref()) else {
                        return HttpResponse::BadRequest().finish();
                    };
                    let spans: usize =
                        request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
                    counts.exports.fetch_add(1, Relaxed);
                    counts.spans.fetch_add(spans as u64, Relaxed);
                    counts.bytes.fetch_add(body.len() as u64, Relaxed);
                    accepted()
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .expect("listen")
    .run();
    tokio::spawn(server);
    (url, counts)
}

#[derive(Clone)]
pub struct Collector {
    /// The base URL, as `telemetry.otlp_endpoint` takes it.
    pub url: String,
    spans: Arc<Mutex<Vec<ExportedSpan>>>,
    /// Every request body as it arrived, to search for what must never be exported.
    raw: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Collector {
    pub fn spans(&self) -> Vec<ExportedSpan> {
        self.spans.lock().expect("spans").clone()
    }

    pub fn raw_bodies(&self) -> Vec<Vec<u8>> {
        self.raw.lock().expect("raw").clone()
    }

    /// Waits (bounded) until a span satisfies `found`; that span.
    pub async fn until_span(&self, what: &str, limit: Duration, found: impl Fn(&ExportedSpan) -> bool) -> ExportedSpan {
        let mut hit = None;
        crate::eventually(what, limit, || {
            hit = self.spans().into_iter().find(|s| found(s));
            std::future::ready(hit.is_some())
        })
        .await;
        hit.expect("found")
    }
}

pub async fn spawn_collector() -> Collector {
    let listener = crate::listener();
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let collector = Collector { url, spans: Arc::default(), raw: Arc::default() };
    let state = web::Data::new(collector.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
            .route("/v1/traces", web::post().to(export))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .expect("listen")
    .run();
    tokio::spawn(server);
    collector
}

async fn export(req: HttpRequest, body: web::Bytes, collector: web::Data<Collector>) -> HttpResponse {
    let protobuf = req.headers().get("content-type").is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
    if !protobuf {
        return HttpResponse::UnsupportedMediaType().finish();
    }
    let Ok(request) = ExportTraceServiceRequest::decode(body.as_ref()) else {
        return HttpResponse::BadRequest().finish();
    };
    collector.raw.lock().expect("raw").push(body.to_vec());
    let mut spans = collector.spans.lock().expect("spans");
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ExportedSpan {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    status_code: span.status.map_or(0, |s| s.code),
                    attributes: attributes(&span.attributes),
                    events: span.events.iter().map(|e| (e.name.clone(), attributes(&e.attributes))).collect(),
                    resource: resource.clone(),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                });
            }
        }
    }
    accepted()
}

/// OTLP/HTTP's answer to an export taken whole.
fn accepted() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(ExportTraceServiceResponse::default().encode_to_vec())
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(text).unwrap_or_default())).collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
