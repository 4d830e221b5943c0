//! The API proxy: what goes upstream, what comes back, and what never passes.

use reqwest::Method;
use serde_json::Value;

use support::{AppOptions, raw_status, spawn_app, spawn_app_with};

async fn json(res: reqwest::Response) -> Value {
    res.json().await.expect("json body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_token_is_attached_and_browser_credentials_stay_behind() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;

    let res = browser
        .send(
            browser
                .request(Method::GET, "/api/echo/items?x=1&y=%2F")
                .header("x-csrf", "1")
                .header("authorization", "Basic bWFsbG9yeTpzZWNyZXQ=")
                .header("connection", "keep-alive, x-hop")
                .header("x-hop", "drop me")
                .header("x-forwarded-host", "evil.example")
                .header("x-custom", "kept"),
        )
        .await;

    assert_eq!(res.status(), 200);
    let echo = json(res).await;
    assert_eq!(echo["path"], "/echo/items");
    assert_eq!(echo["query"], "x=1&y=%2F");
    let headers = &echo["headers"];
    let bearer = headers["authorization"].as_str().expect("authorization").to_string();
    assert!(bearer.starts_with("Bearer "), "{bearer}");
    assert!(app.idp.provider.active_access_token(&bearer[7..]).is_some(), "a real access token");
    assert!(headers.get("cookie").is_none(), "the browser's cookie never goes upstream");
    assert!(headers.get("x-csrf").is_none());
    assert!(headers.get("x-hop").is_none(), "headers named by Connection are hop-by-hop");
    assert_eq!(headers["x-custom"], "kept");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], app.address.trim_start_matches("http://"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_need_the_csrf_header_and_a_session() {
    let app = spawn_app().await;
    let browser = app.browser();
    let anonymous = browser.api(Method::GET, "/api/echo").await;
    assert_eq!(anonymous.status(), 401, "a 401, never a redirect");
    assert_eq!(json(anonymous).await, serde_json::json!({"error": "login_required"}));

    browser.login_as("alice").await;
    let no_csrf = browser.get("/api/echo").await;
    assert_eq!(no_csrf.status(), 403);
    assert_eq!(json(no_csrf).await, serde_json::json!({"error": "csrf"}));
    assert!(app.upstream.seen().is_empty(), "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_escapes_are_refused_before_anything_is_sent() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let cookie = format!("bff={}", browser.cookie("bff").expect("cookie"));
    let headers = [("cookie", cookie), ("x-csrf", "1".to_string())];
    for raw in [
        "/api/..",
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/api/%2E%2E/admin",
        "/api/.%2e/admin",
        "/api/a/../../admin",
        "/api/a/%2e%2e/%2e%2e/admin",
        "/api/a%2f..%2f..%2fadmin",
        "/api/%2e%2e%2fadmin",
        "/api/..%5cadmin",
        "/api/a%5c..%5c..%5cadmin",
        "/api/a%00b",
    ] {
        assert_eq!(raw_status(&app.address, "GET", raw, &headers).await, 400, "{raw}");
    }
    assert!(app.upstream.seen().is_empty(), "no escape attempt reached the upstream");
    // Dot segments that stay inside the prefix are resolved, not refused.
    assert_eq!(raw_status(&app.address, "GET", "/api/a/../echo", &headers).await, 200);
    assert_eq!(app.upstream.seen().last().map(|s| s.path.clone()).as_deref(), Some("/echo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_queries_and_bodies_pass_through() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    for method in [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let with_body = method != Method::GET;
        let mut rb = browser.request(method.clone(), "/api/things/7?sort=name&q=a+b").header("x-csrf", "1");
        if with_body {
            rb = rb.header("content-type", "application/json").body(r#"{"name":"seven"}"#);
        }
        let res = browser.send(rb).await;
        assert_eq!(res.status(), 200, "{method}");
        let echo = json(res).await;
        assert_eq!(echo["method"], method.as_str());
        assert_eq!(echo["path"], "/things/7");
        assert_eq!(echo["query"], "sort=name&q=a+b");
        if with_body {
            assert_eq!(echo["body"], r#"{"name":"seven"}"#, "{method}");
            assert_eq!(echo["headers"]["content-type"], "application/json");
        }
    }
    let head = browser.api(Method::HEAD, "/api/echo").await;
    assert_eq!(head.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cookies_and_hop_by_hop_headers_never_reach_the_browser() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let res = browser.api(Method::GET, "/api/set-cookie").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("set-cookie").is_none());
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_that_arrived_whole_goes_back_with_its_length() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    // The fixture streams two chunks (no length); both have arrived when bff answers.
    let res = browser.api(Method::GET, "/api/chunked").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-length"], "16");
    assert!(res.headers().get("transfer-encoding").is_none());
    assert_eq!(res.text().await.unwrap(), r#"{"chunked":true}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_flow_as_events_arrive() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    // 1000 events 300 ms apart: a proxy that buffered would show nothing for five minutes.
    let mut res = browser.api(Method::GET, "/api/sse?count=1000").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    while !seen.contains("tick 1") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), res.chunk())
            .await
            .expect("events arrive while the stream is open")
            .expect("chunk")
            .expect("stream still open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.starts_with("id: 0\ndata: tick 0\n\n"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_502_and_a_slow_one_504() {
    let app = spawn_app_with(AppOptions {
        extra_toml: format!(
            "[[api]]\nprefix = \"/down\"\nupstream = \"http://127.0.0.1:{}\"\ntimeout_secs = 1\n",
            support::dead_port()
        ),
        ..Default::default()
    })
    .await;
    let browser = app.browser();
    browser.login_as("alice").await;

    let down = browser.api(Method::GET, "/down/x").await;
    assert_eq!(down.status(), 502);
    assert_eq!(json(down).await, serde_json::json!({"error": "upstream_unavailable"}));
    let slow = browser.api(Method::GET, "/api/slow?ms=5000").await;
    assert_eq!(slow.status(), 504);
    assert_eq!(json(slow).await, serde_json::json!({"error": "upstream_timeout"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_prefix_wins_and_base_paths_are_kept() {
    let app = spawn_app().await;
    let second = support::upstream::spawn(None).await;
    let v2_upstream = url::Url::parse(&format!("{}/base/v2", second.url)).expect("url");
    // An instance with an extra, longer route; it shares the first one's sessions.
    let instance = support::spawn_instance_with(&app, |c| {
        let v2 = bff::config::ApiConfig { prefix: "/api/v2".into(), upstream: v2_upstream, ..c.api[0].clone() };
        c.api.push(v2);
    })
    .await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);

    let v2 = json(b.api(Method::GET, "/api/v2/orders?x=1").await).await;
    assert_eq!(v2["path"], "/base/v2/orders");
    assert_eq!(v2["query"], "x=1");
    let v1 = json(b.api(Method::GET, "/api/v2x").await).await;
    assert_eq!(v1["path"], "/v2x", "/api/v2x is not under /api/v2");
    assert_eq!(second.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_with_413() {
    let app = spawn_app_with(AppOptions {
        extra_toml:
            "[[api]]\nprefix = \"/small\"\nupstream = \"UPSTREAM\"\nmax_retry_body_bytes = 512\nmax_body_bytes = 1024\n"
                .into(),
        ..Default::default()
    })
    .await;
    let browser = app.browser();
    browser.login_as("alice").await;

    let declared =
        browser.send(browser.request(Method::POST, "/small/echo").header("x-csrf", "1").body(vec![b'a'; 2000])).await;
    assert_eq!(declared.status(), 413);
    assert_eq!(json(declared).await, serde_json::json!({"error": "payload_too_large"}));

    // Chunked, no Content-Length: caught while streaming.
    let chunks = futures_util::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![b'b'; 100])));
    let streamed = browser
        .send(
            browser.request(Method::POST, "/small/echo").header("x-csrf", "1").body(reqwest::Body::wrap_stream(chunks)),
        )
        .await;
    assert_eq!(streamed.status(), 413);

    let fits =
        browser.send(browser.request(Method::POST, "/small/echo").header("x-csrf", "1").body(vec![b'c'; 1000])).await;
    assert_eq!(fits.status(), 200);
    assert_eq!(json(fits).await["body_len"], 1000);

    let auth = browser
        .send(browser.request(Method::POST, "/auth/logout").header("x-csrf", "1").body(vec![b'd'; 70_000]))
        .await;
    assert_eq!(auth.status(), 413, "/auth bodies are capped at 64 KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_and_connect_are_refused_everywhere() {
    let app = spawn_app().await;
    let browser = app.browser();
    for path in ["/", "/api/echo", "/auth/user"] {
        let res = browser.send(browser.request(Method::TRACE, path)).await;
        assert_eq!(res.status(), 405, "{path}");
    }
    assert_eq!(raw_status(&app.address, "CONNECT", "127.0.0.1:22", &[]).await, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_with_a_dead_session_gets_401_and_loses_the_cookie() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let mut redis = app.redis().await;
    for key in app.keys().await {
        let _: () = redis::AsyncCommands::del(&mut redis, key).await.expect("del");
    }
    let res = browser.api(Method::GET, "/api/echo").await;
    assert_eq!(res.status(), 401);
    assert!(browser.cookie("bff").is_none());
}
