//! OpenTelemetry traces: `bff serve` exports its spans over OTLP/HTTP to a collector started by
//! the test, which decodes them with the protocol's own messages. The spans, their parents and
//! attributes; the trace context the upstream and the provider get; what a browser's own
//! trace context may do; and that nothing secret is ever exported.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use support::otlp::{Collector, ExportedSpan, spawn_collector};
use support::{AppOptions, location, query_param, spawn_app_with, test_secret, token_expiry, until_refresh_due};

use crate::cli::Served;

/// What a page (or anyone calling bff) could send as its own trace context.
const BROWSER_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const BROWSER_SPAN_ID: &str = "b7ad6b7169203331";
const BROWSER_TRACESTATE: &str = "vendor=opaque";

fn browser_traceparent() -> String {
    format!("00-{BROWSER_TRACE_ID}-{BROWSER_SPAN_ID}-01")
}

/// Exports every 100 ms instead of every 5 s; a resource attribute through the standard variable.
const ENV: &[(&str, &str)] =
    &[("OTEL_BSP_SCHEDULE_DELAY", "100"), ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")];
const WAIT: Duration = Duration::from_secs(20);
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const ERROR: i32 = 2;

fn telemetry_toml(collector: &Collector, more: &str) -> String {
    format!("\n[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"bff-under-test\"\n{more}", collector.url)
}

/// `(trace id, parent span id, flags)` of a `traceparent`.
fn parse_traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "a W3C traceparent: {value}");
    assert_eq!(parts[0], "00");
    (parts[1].to_string(), parts[2].to_string(), parts[3].to_string())
}

/// The trace context the upstream got with its last call for `path`.
fn upstream_context(served_upstream: &support::upstream::Upstream, path: &str) -> (Option<String>, Option<String>) {
    let seen = served_upstream.seen();
    let last = seen.iter().rev().find(|s| s.path == path).expect("the upstream got the call");
    (last.headers.get("traceparent").cloned(), last.headers.get("tracestate").cloned())
}

async fn child_of(collector: &Collector, parent: &ExportedSpan, name: &str) -> ExportedSpan {
    let what = format!("a span {name:?} under {:?}", parent.name);
    let (parent_id, name) = (parent.span_id.clone(), name.to_string());
    collector.until_span(&what, WAIT, move |s| s.parent_span_id == parent_id && s.name == name).await
}

async fn api_call_with_browser_context(browser: &support::Browser) -> reqwest::Response {
    let request = browser
        .request(Method::GET, "/api/echo")
        .header("x-csrf", "1")
        .header("traceparent", browser_traceparent())
        .header("tracestate", BROWSER_TRACESTATE);
    browser.send(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_is_traced_through_the_upstream_and_the_provider_and_nothing_secret_is_exported() {
    let collector = spawn_collector().await;
    let mut served = Served::start_with_env(4, &[], &telemetry_toml(&collector, ""), None, ENV).await;
    let browser = served.browser.clone();
    let provider = Arc::clone(&served.idp.provider);

    // The login: the code exchange is a provider call in the callback's span.
    let start = browser.start_login(None).await;
    let callback = browser.sign_in_at_provider(&location(&start), "alice").await;
    let code = query_param(&callback, "code").expect("code");
    assert_eq!(browser.get(&callback).await.status(), 302);
    let cookie = browser.cookie("bff").expect("session cookie");
    let callback_span = collector.until_span("the callback's span", WAIT, |s| s.name == "GET /auth/callback").await;
    assert_eq!((callback_span.kind, callback_span.attribute("http.response.status_code")), (SERVER, Some("302")));
    let exchange = child_of(&collector, &callback_span, "POST /token").await;
    assert_eq!(exchange.kind, CLIENT);
    assert_eq!(exchange.attribute("bff.peer"), Some("idp"));
    assert_eq!(exchange.attribute("http.response.status_code"), Some("200"));
    assert_eq!(exchange.trace_id, callback_span.trace_id);
    let sent = format!("00-{}-{}-01", exchange.trace_id, exchange.span_id);
    assert!(provider.trace_contexts().contains(&("/token", sent)), "the provider got the exchange's context");

    // An API call: request span → session read and upstream call; the upstream is in the trace.
    let res = api_call_with_browser_context(&browser).await;
    assert_eq!(res.status(), 200);
    let expires_at = token_expiry(&res);
    let (traceparent, tracestate) = upstream_context(&served.upstream, "/echo");
    let (trace_id, parent_id, flags) = parse_traceparent(&traceparent.expect("the upstream gets a traceparent"));
    assert_ne!(trace_id, BROWSER_TRACE_ID, "a browser's trace context is not believed by default");
    assert_eq!(flags, "01");
    assert_ne!(tracestate.as_deref(), Some(BROWSER_TRACESTATE), "nor its tracestate passed on");
    let upstream_call = collector.until_span("the upstream call's span", WAIT, |s| s.span_id == parent_id).await;
    assert_eq!((upstream_call.name.as_str(), upstream_call.kind), ("GET /api/*", CLIENT));
    assert_eq!(upstream_call.trace_id, trace_id, "the upstream sees bff's trace id");
    for (key, value) in [
        ("bff.peer", "upstream"),
        ("http.request.method", "GET"),
        ("url.path", "/echo"),
        ("server.address", "127.0.0.1"),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(upstream_call.attribute(key), Some(value), "{key} of {upstream_call:?}");
    }
    let request = collector.until_span("the request's span", WAIT, |s| s.span_id == upstream_call.parent_span_id).await;
    assert_eq!((request.name.as_str(), request.kind), ("GET /api/*", SERVER));
    assert_eq!(request.parent_span_id, "", "a root span: the browser's context was not adopted");
    for (key, value) in [
        ("http.request.method", "GET"),
        ("http.route", "/api/*"),
        ("url.path", "/api/echo"),
        ("http.response.status_code", "200"),
        ("route", "api"),
    ] {
        assert_eq!(request.attribute(key), Some(value), "{key} of {request:?}");
    }
    assert!(request.attribute("request_id").is_some_and(|id| !id.is_empty()));
    assert_eq!(request.resource.get("service.name").map(String::as_str), Some("bff-under-test"));
    assert_eq!(request.resource.get("deployment.environment").map(String::as_str), Some("test"));
    assert_eq!(request.resource.get("service.version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")));
    let read = child_of(&collector, &request, "session read").await;
    assert!(matches!(read.attribute("bff.cache"), Some("hit" | "miss" | "off")), "{read:?}");
    assert!(read.start_unix_nano >= request.start_unix_nano && read.end_unix_nano <= request.end_unix_nano);

    // A refresh: its span is in the call's trace, the provider call in it.
    until_refresh_due(expires_at, 1).await;
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
    let refresh = collector.until_span("the refresh's span", WAIT, |s| s.name == "token refresh").await;
    let refreshing_call = collector.until_span("its request", WAIT, |s| s.span_id == refresh.parent_span_id).await;
    assert_eq!(refreshing_call.name, "GET /api/*");
    let refresh_call = child_of(&collector, &refresh, "POST /token").await;
    assert_eq!(refresh_call.attribute("bff.peer"), Some("idp"));
    let sent = format!("00-{}-{}-01", refresh_call.trace_id, refresh_call.span_id);
    assert!(provider.trace_contexts().contains(&("/token", sent)), "the provider got the refresh's context");
    assert!(
        refresh.events.iter().any(|(name, _)| name == "access token refreshed"),
        "the log line is a span event: {refresh:?}"
    );

    // Logout revokes the grant: a provider call in the logout's span.
    assert_eq!(browser.logout().await.status(), 303);
    let logout = collector.until_span("the logout's span", WAIT, |s| s.name == "POST /auth/logout").await;
    let revocation = child_of(&collector, &logout, "POST /revoke").await;
    let sent = format!("00-{}-{}-01", revocation.trace_id, revocation.span_id);
    assert!(provider.trace_contexts().contains(&("/revoke", sent)), "the provider got the revocation's context");

    // Shutdown exports what is still queued; then nothing secret may be in any of it.
    served.stop_cleanly(Duration::from_secs(10)).await;
    let mut secrets: Vec<(String, String)> =
        provider.issued_tokens().into_iter().map(|t| ("token".to_string(), t)).collect();
    secrets.push(("code".into(), code));
    secrets.push(("cookie".into(), cookie));
    secrets.push(("client secret".into(), support::CLIENT_SECRET.into()));
    secrets.push(("session secret".into(), test_secret()));
    let bodies = collector.raw_bodies();
    assert!(!bodies.is_empty());
    for (what, secret) in &secrets {
        assert!(
            !bodies.iter().any(|body| body.windows(secret.len()).any(|w| w == secret.as_bytes())),
            "a {what} was exported"
        );
    }
    for span in collector.spans() {
        for (key, value) in &span.attributes {
            assert!(!value.contains("code="), "{key} of {} carries a query", span.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_browser_trace_context_is_joined_and_passed_on() {
    let collector = spawn_collector().await;
    let extra = telemetry_toml(&collector, "trust_incoming_trace_context = true\n");
    let mut served = Served::start_with_env(300, &[], &extra, None, ENV).await;
    served.browser.login_as("alice").await;

    assert_eq!(api_call_with_browser_context(&served.browser).await.status(), 200);
    let (traceparent, tracestate) = upstream_context(&served.upstream, "/echo");
    let (trace_id, parent_id, _) = parse_traceparent(&traceparent.expect("a traceparent"));
    assert_eq!(trace_id, BROWSER_TRACE_ID, "the browser's trace goes on");
    assert_ne!(parent_id, BROWSER_SPAN_ID, "with bff's span as the upstream's parent");
    assert_eq!(tracestate.as_deref(), Some(BROWSER_TRACESTATE));
    let upstream_call = collector.until_span("the upstream call's span", WAIT, |s| s.span_id == parent_id).await;
    let request = collector.until_span("the request's span", WAIT, |s| s.span_id == upstream_call.parent_span_id).await;
    assert_eq!((request.trace_id.as_str(), request.parent_span_id.as_str()), (BROWSER_TRACE_ID, BROWSER_SPAN_ID));
    served.stop_cleanly(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_mark_their_spans() {
    let collector = spawn_collector().await;
    let down = format!("\n[[api]]\nprefix = \"/down\"\nupstream = \"http://127.0.0.1:{}\"\n", support::dead_port());
    let extra = telemetry_toml(&collector, "") + &down;
    let mut served = Served::start_with_env(300, &[], &extra, None, ENV).await;
    served.browser.login_as("alice").await;
    assert_eq!(served.browser.api(Method::GET, "/down/x").await.status(), 502);
    let request =
        collector.until_span("the failed call's span", WAIT, |s| s.name == "GET /down/*" && s.kind == SERVER).await;
    assert_eq!((request.attribute("http.response.status_code"), request.status_code), (Some("502"), ERROR));
    let upstream_call = child_of(&collector, &request, "GET /down/*").await;
    assert_eq!(upstream_call.status_code, ERROR);
    assert_eq!(upstream_call.attribute("http.response.status_code"), None, "no answer came");
    served.stop_cleanly(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_sampling_ratio_of_0_nothing_is_exported_and_the_upstream_is_told_so() {
    let collector = spawn_collector().await;
    let extra = telemetry_toml(&collector, "sampling_ratio = 0.0\n");
    let mut served = Served::start_with_env(300, &[], &extra, None, ENV).await;
    served.browser.login_as("alice").await;
    assert_eq!(served.browser.api(Method::GET, "/api/echo").await.status(), 200);
    let (traceparent, _) = upstream_context(&served.upstream, "/echo");
    let (_, _, flags) = parse_traceparent(&traceparent.expect("the context goes upstream all the same"));
    assert_eq!(flags, "00", "not sampled: the upstream need not record it either");
    // Shutdown exports everything still queued: had anything been sampled, it is there now.
    served.stop_cleanly(Duration::from_secs(10)).await;
    assert!(collector.spans().is_empty(), "{:?}", collector.spans());
}

/// Another instance's refresh lock (put there by the test, for 1.5 s) is waited for in a span of
/// its own, and the refresh says how long it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_another_instances_refresh_lock_is_a_span() {
    let collector = spawn_collector().await;
    let mut served = Served::start_with_env(4, &[], &telemetry_toml(&collector, ""), None, ENV).await;
    let browser = served.browser.clone();
    browser.login_as("alice").await;
    let res = browser.api(Method::GET, "/api/echo").await;
    assert_eq!(res.status(), 200);
    let expires_at = token_expiry(&res);
    let client = redis::Client::open(support::REDIS_URL).expect("redis");
    let mut redis = client.get_multiplexed_async_connection().await.expect("redis");
    let keys: Vec<String> =
        redis::AsyncCommands::keys(&mut redis, format!("{}*:tokens", served.prefix)).await.expect("keys");
    assert_eq!(keys.len(), 1, "one session: {keys:?}");
    let lock = keys[0].replace(":tokens", ":lock");

    until_refresh_due(expires_at, 1).await;
    let held: bool = redis::cmd("SET")
        .arg(&lock)
        .arg("another-instance")
        .arg("PX")
        .arg(1500)
        .arg("NX")
        .query_async::<Option<String>>(&mut redis)
        .await
        .expect("set")
        .is_some();
    assert!(held);
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);

    let refresh =
        collector.until_span("the refresh's span", WAIT, |s| s.name == "token refresh" && s.end_unix_nano > 0).await;
    let waited_ms: u64 =
        refresh.attribute("bff.refresh.lock_waited_ms").and_then(|v| v.parse().ok()).expect("the wait is recorded");
    assert!(waited_ms >= 1000, "it waited until the other lease ran out: {waited_ms} ms");
    let wait = child_of(&collector, &refresh, "refresh lock wait").await;
    assert!(wait.end_unix_nano - wait.start_unix_nano >= 1_000_000_000, "{wait:?}");
    let call = child_of(&collector, &refresh, "POST /token").await;
    assert!(call.start_unix_nano >= wait.end_unix_nano, "the provider is asked after the wait");
    served.stop_cleanly(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websockets_life_is_one_span_under_its_handshake() {
    use futures_util::SinkExt;
    use support::websocket::{Message, close_code, next_message, until_closed};

    let collector = spawn_collector().await;
    let mut served = Served::start_with_env(300, &[], &telemetry_toml(&collector, ""), None, ENV).await;
    let browser = served.browser.clone();
    browser.login_as("alice").await;
    let mut socket = browser.websocket("/api/ws", Some(&browser.base)).await.expect("the socket opens");
    socket.send(Message::Text("hello".into())).await.expect("send");
    assert_eq!(next_message(&mut socket).await, Message::Text("hello".into()));
    // Logout ends the session, which closes the socket.
    assert_eq!(browser.logout().await.status(), 303);
    assert_eq!(close_code(&until_closed(&mut socket).await), Some(4401));

    let lifetime = collector
        .until_span("the socket's span", WAIT, |s| s.name == "websocket" && s.attribute("bff.websocket.end").is_some())
        .await;
    assert_eq!(lifetime.attribute("bff.websocket.end"), Some("session_ended"));
    assert_eq!(lifetime.attribute("bff.route"), Some("/api"));
    let handshake = collector.until_span("the handshake's span", WAIT, |s| s.span_id == lifetime.parent_span_id).await;
    assert_eq!((handshake.name.as_str(), handshake.kind), ("GET /api/*", SERVER));
    let upstream_handshake = child_of(&collector, &handshake, "GET /api/*").await;
    assert_eq!(upstream_handshake.attribute("http.response.status_code"), Some("101"));
    assert!(lifetime.end_unix_nano > handshake.end_unix_nano, "the socket outlives its handshake");
    let (traceparent, _) = upstream_context(&served.upstream, "/ws");
    let (trace_id, parent_id, _) = parse_traceparent(&traceparent.expect("the handshake carries a traceparent"));
    assert_eq!((trace_id, parent_id), (upstream_handshake.trace_id.clone(), upstream_handshake.span_id.clone()));
    served.stop_cleanly(Duration::from_secs(10)).await;
}

/// Without telemetry (this process exports nothing) bff adds no trace context; a browser's goes
/// upstream only when it is believed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_export_a_browser_trace_context_passes_only_when_trusted() {
    for trusted in [false, true] {
        let app = spawn_app_with(AppOptions {
            tweak: Arc::new(move |c| c.telemetry.trust_incoming_trace_context = trusted),
            ..AppOptions::default()
        })
        .await;
        let browser = app.browser();
        browser.login_as("alice").await;
        assert_eq!(api_call_with_browser_context(&browser).await.status(), 200);
        let context = upstream_context(&app.upstream, "/echo");
        let expected =
            if trusted { (Some(browser_traceparent()), Some(BROWSER_TRACESTATE.to_string())) } else { (None, None) };
        assert_eq!(context, expected, "trusted: {trusted}");
    }
}

/// A collector that takes connections and never answers, then one that is gone: calls are
/// served all the same, a failed export is logged, and shutdown does not wait for it long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_hangs_or_is_gone_costs_the_calls_nothing() {
    let silent = support::listener();
    let silent_url = format!("http://{}", silent.local_addr().expect("addr"));
    let gone_url = format!("http://127.0.0.1:{}", support::dead_port());
    for endpoint in [silent_url, gone_url.clone()] {
        let extra = format!("\n[telemetry]\notlp_endpoint = \"{endpoint}\"\n");
        let mut served = Served::start_with_env(300, &[], &extra, None, ENV).await;
        served.browser.login_as("alice").await;
        for _ in 0..20 {
            assert_eq!(served.browser.api(Method::GET, "/api/echo").await.status(), 200);
        }
        assert!(served.logs().contains(&format!("exporting traces to {endpoint}/v1/traces")), "{}", served.logs());
        if endpoint == gone_url {
            support::eventually("the failed export is logged", WAIT, || {
                std::future::ready(served.logs().contains("BatchSpanProcessor.ExportError"))
            })
            .await;
        }
        served.stop_cleanly(Duration::from_secs(15)).await;
    }
    drop(silent);
}
