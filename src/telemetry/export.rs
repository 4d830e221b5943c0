//! Where spans go: an OTLP/HTTP (protobuf) exporter behind a batch processor, configured from
//! `[telemetry]` first and the standard `OTEL_*` variables for what it leaves unset.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

use crate::config::TelemetryConfig;

const TRACES_PATH: &str = "/v1/traces";
/// An export that takes longer is given up (the batch is dropped; the next one is tried).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether spans are exported, and to which traces URL (`None`: the one the `OTEL_*`
/// variables name, which the exporter resolves itself).
#[derive(Debug, PartialEq, Eq)]
pub enum Export {
    Off,
    To(Option<String>),
}

/// `[telemetry]` decides; else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_ENDPOINT` turn export on; `OTEL_SDK_DISABLED=true` or
/// `OTEL_TRACES_EXPORTER=none` turn it off whatever else says.
pub fn export(config: &TelemetryConfig, env: impl Fn(&str) -> Option<String>) -> Export {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    if disabled {
        return Export::Off;
    }
    if let Some(url) = &config.otlp_endpoint {
        return Export::To(Some(traces_url(url.as_str())));
    }
    if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        return Export::To(None);
    }
    Export::Off
}

/// A collector's base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it, with the traces path
/// added (a URL that already ends with it is kept).
fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with(TRACES_PATH) { base.to_string() } else { format!("{base}{TRACES_PATH}") }
}

/// The tracer provider for `endpoint`; its batch processor exports from a thread of its own.
pub fn provider(config: &TelemetryConfig, endpoint: Option<String>) -> anyhow::Result<SdkTracerProvider> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(ExportClient::new()?);
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter.build()?;
    let mut builder = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(config.service_name.as_deref()));
    if let Some(ratio) = config.sampling_ratio {
        // Parent-based: a trace the browser started (when trusted) keeps its own decision.
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))));
    }
    Ok(builder.build())
}

/// `service.name`: the configured one, else `OTEL_SERVICE_NAME` (or `OTEL_RESOURCE_ATTRIBUTES`),
/// else `bff`; `OTEL_RESOURCE_ATTRIBUTES` adds the rest.
fn resource(configured: Option<&str>) -> Resource {
    let detected = Resource::builder().build();
    let from_env = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let name = match configured {
        Some(name) => Some(name.to_string()),
        None if from_env => None,
        None => Some(TelemetryConfig::DEFAULT_SERVICE_NAME.to_string()),
    };
    let builder =
        Resource::builder().with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    match name {
        Some(name) => builder.with_service_name(name).build(),
        None => builder.build(),
    }
}

/// The exporter's HTTP client: bff's reqwest (rustls) on a one-thread runtime of its own, so
/// an export never runs on, or waits for, a server worker — the batch processor calls it from
/// its own thread, outside any runtime.
#[derive(Debug)]
struct ExportClient {
    http: reqwest::Client,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ExportClient {
    fn new() -> anyhow::Result<ExportClient> {
        let http = reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bff-otlp-export")
            .enable_all()
            .build()?;
        Ok(ExportClient { http, runtime: Some(runtime) })
    }
}

impl Drop for ExportClient {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime's task.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let runtime = self.runtime.as_ref().ok_or("the export runtime is gone")?;
        let request = reqwest::Request::try_from(request)?;
        let http = self.http.clone();
        let answer = runtime
            .spawn(async move {
                let response = http.execute(request).await?;
                let status = response.status();
                let headers = response.headers().clone();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            })
            .await??;
        let (status, headers, body) = answer;
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
        move |name| vars.get(name).cloned()
    }

    fn configured(url: &str) -> TelemetryConfig {
        TelemetryConfig { otlp_endpoint: Some(url.parse().expect("url")), ..TelemetryConfig::default() }
    }

    #[test]
    fn nothing_configured_exports_nothing() {
        assert_eq!(export(&TelemetryConfig::default(), env(&[])), Export::Off);
        assert_eq!(export(&TelemetryConfig::default(), env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])), Export::Off);
    }

    #[test]
    fn the_configured_endpoint_is_a_base_url_and_wins_over_the_environment() {
        let vars = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://other:4318/v1/traces")];
        assert_eq!(
            export(&configured("http://collector:4318"), env(&vars)),
            Export::To(Some("http://collector:4318/v1/traces".into()))
        );
        assert_eq!(
            export(&configured("https://c.example/otlp/"), env(&[])),
            Export::To(Some("https://c.example/otlp/v1/traces".into()))
        );
        assert_eq!(
            export(&configured("http://c:4318/v1/traces"), env(&[])),
            Export::To(Some("http://c:4318/v1/traces".into()))
        );
    }

    #[test]
    fn the_standard_variables_turn_export_on_and_off() {
        for name in ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] {
            assert_eq!(export(&TelemetryConfig::default(), env(&[(name, "http://c:4318")])), Export::To(None));
        }
        for off in [("OTEL_SDK_DISABLED", "TRUE"), ("OTEL_TRACES_EXPORTER", "none")] {
            assert_eq!(export(&configured("http://c:4318"), env(&[off])), Export::Off);
        }
        assert_eq!(
            export(&configured("http://c:4318"), env(&[("OTEL_SDK_DISABLED", "false")])),
            Export::To(Some("http://c:4318/v1/traces".into()))
        );
    }
}
