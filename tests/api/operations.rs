//! Running it in production: metrics, request ids, limits.

use std::time::Duration;

use reqwest::Method;

use support::{AppOptions, SHORT_SKEW_SECS, spawn_app, spawn_app_with, token_expiry};

fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok())).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happens_with_bounded_labels_only() {
    let app = spawn_app_with(AppOptions::short_lived_tokens()).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let first = browser.api(Method::GET, "/api/echo/private/path/42").await;
    assert_eq!(first.status(), 200);
    assert_eq!(app.token_requests("refresh_token"), 0, "the first call uses the login's token");
    // One refresh: the next call finds the token due, and the new one lives a minute.
    app.make_refresh_due(token_expiry(&first), SHORT_SKEW_SECS);
    app.idp.controls.set_access_token_ttl(Duration::from_secs(60));
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(browser.logout().await.status(), 303);

    let res = browser.get("/metrics").await;

    assert_eq!(res.status(), 200);
    let text = res.text().await.expect("text");
    assert!(
        metric(&text, "bff_http_requests_total{frontend=\"default\",route=\"api\",status=\"2xx\"}") >= 2.0,
        "{text}"
    );
    assert!(metric(&text, "bff_http_requests_total{frontend=\"default\",route=\"auth\",status=\"3xx\"}") >= 2.0);
    assert!(metric(&text, "bff_upstream_duration_seconds_count{api=\"/api\",frontend=\"default\"}") >= 2.0);
    assert_eq!(metric(&text, "bff_token_refreshes_total{frontend=\"default\",outcome=\"ok\"}"), 1.0);
    assert_eq!(metric(&text, "bff_auth_events_total{event=\"login\",frontend=\"default\"}"), 1.0);
    assert_eq!(metric(&text, "bff_auth_events_total{event=\"logout\",frontend=\"default\"}"), 1.0);
    assert!(metric(&text, "bff_session_store_duration_seconds_count{op=\"get_with_ttl\"}") >= 2.0);
    assert_eq!(metric(&text, "bff_refresh_locks_active"), 0.0);
    for private in ["alice", "/echo", "private"] {
        assert!(!text.contains(private), "{private} in the metrics");
    }
    for token in app.idp.provider.issued_tokens() {
        assert!(!text.contains(&token));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_not_on_the_public_listener_by_default() {
    let app = spawn_app_with(AppOptions {
        // The test harness turns `metrics_public` on; this is bff's default.
        tweak: std::sync::Arc::new(|c: &mut bff::config::Config| c.server.metrics_public = false),
        ..Default::default()
    })
    .await;
    let default = bff::config::Config::from_toml(
        &support::app::config_toml(
            "http://localhost:8080",
            "http://idp.example",
            "http://127.0.0.1:9",
            "p:",
            &AppOptions::default(),
        )
        .replace("metrics_public = true", ""),
    );
    assert!(!default.expect("config").server.metrics_public, "off unless configured");

    let res = reqwest::get(format!("{}/metrics", app.address)).await.expect("send");
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<serde_json::Value>().await.expect("json"), serde_json::json!({ "error": "not_found" }));
    assert_eq!(app.browser().get("/healthz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_live_on_their_own_listener() {
    let port = support::dead_port();
    let app = spawn_app_with(AppOptions {
        tweak: std::sync::Arc::new(move |c: &mut bff::config::Config| {
            c.server.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
            c.server.metrics_public = false;
        }),
        ..Default::default()
    })
    .await;
    assert_eq!(app.browser().get("/healthz").await.status(), 200);

    assert_eq!(app.browser().get("/metrics").await.status(), 404, "not on the public listener");
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics listener")
        .text()
        .await
        .expect("text");
    assert!(
        metric(&text, "bff_http_requests_total{frontend=\"default\",route=\"health\",status=\"2xx\"}") >= 1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_when_well_formed_and_forwarded_upstream() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;

    let res = browser
        .send(browser.request(Method::GET, "/api/echo").header("x-csrf", "1").header("x-request-id", "trace-abc_123"))
        .await;
    assert_eq!(res.headers()["x-request-id"], "trace-abc_123");
    let echo: serde_json::Value = res.json().await.expect("json");
    assert_eq!(echo["headers"]["x-request-id"], "trace-abc_123");

    let res = browser
        .send(browser.request(Method::GET, "/api/echo").header("x-csrf", "1").header("x-request-id", "<script>"))
        .await;
    let id = res.headers()["x-request-id"].to_str().expect("id").to_string();
    assert_eq!(id.len(), 22, "a malformed id is replaced: {id}");
    let echo: serde_json::Value = res.json().await.expect("json");
    assert_eq!(echo["headers"]["x-request-id"], id.as_str());
    assert!(browser.get("/healthz").await.headers().contains_key("x-request-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let app = spawn_app().await;
    let browser = app.browser();
    let res = browser.send(browser.request(Method::GET, "/healthz").header("x-big", "a".repeat(20_000))).await;
    assert_eq!(res.status(), 431);
    assert_eq!(res.json::<serde_json::Value>().await.ok(), Some(serde_json::json!({"error": "headers_too_large"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upstream_calls_are_capped() {
    let app = spawn_app_with(AppOptions {
        tweak: std::sync::Arc::new(|c: &mut bff::config::Config| c.server.max_upstream_concurrency = 1),
        ..Default::default()
    })
    .await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let slow = {
        let b = browser.clone();
        tokio::spawn(async move { b.api(Method::GET, "/api/slow?ms=1500").await.status() })
    };
    // Once the upstream has it, the slow call holds the only permit for 1.5 s.
    app.upstream.until_received("/slow").await;

    let refused = browser.api(Method::GET, "/api/echo").await;

    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(refused.json::<serde_json::Value>().await.ok(), Some(serde_json::json!({"error": "upstream_busy"})));
    assert_eq!(slow.await.expect("slow call"), 200);
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200, "the permit came back");
    let text = browser.get("/metrics").await.text().await.expect("metrics");
    assert_eq!(metric(&text, "bff_requests_limited_total{frontend=\"default\",limit=\"upstream_concurrency\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_starts_are_limited_per_client_address() {
    let app = spawn_app_with(AppOptions {
        tweak: std::sync::Arc::new(|c: &mut bff::config::Config| c.server.login_starts_per_minute = 3),
        ..Default::default()
    })
    .await;
    for i in 0..3 {
        // A fresh browser each time, as a script without cookies would be.
        assert_eq!(app.browser().start_login(None).await.status(), 302, "start {i}");
    }
    let res = app.browser().start_login(None).await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.json::<serde_json::Value>().await.ok(), Some(serde_json::json!({"error": "too_many_logins"})));
    let keys = app.keys().await;
    assert_eq!(keys.iter().filter(|k| k.contains(":login:")).count(), 3, "no pending login for the refused start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_in_progress_are_limited_per_browser() {
    let app = spawn_app_with(AppOptions {
        tweak: std::sync::Arc::new(|c: &mut bff::config::Config| {
            c.server.login_starts_per_minute = 3;
            // Behind one trusted proxy: every start below comes from another client address.
            c.server.trusted_proxy_hops = 1;
        }),
        ..Default::default()
    })
    .await;
    let browser = app.browser();
    for i in 0..4u8 {
        let res = browser
            .send(browser.request(Method::GET, "/auth/login").header("x-forwarded-for", format!("198.51.100.{i}")))
            .await;
        let expected = if i < 3 { 302 } else { 429 };
        assert_eq!(res.status(), expected, "start {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_outlives_actix_webs_five_seconds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let authority = app.address.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&authority).await.expect("connect");
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    let status = async |stream: &mut tokio::net::TcpStream| {
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut buf = vec![0; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).split(' ').nth(1).map(String::from)
    };
    assert_eq!(status(&mut stream).await.as_deref(), Some("200"));
    // Idle past actix-web's default keep-alive (5 s), as a proxy's pooled connection is: the
    // idleness itself is what is tested, so this waits on the clock.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(status(&mut stream).await.as_deref(), Some("200"), "the connection is still served");
}
