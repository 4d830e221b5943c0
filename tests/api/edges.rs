//! The proxy's edges (issue 13): paths an upstream could read as climbing out of its base, and
//! headers an upstream could trust as set by infrastructure.

use reqwest::Method;
use serde_json::Value;
use support::{raw_status, spawn_app, spawn_instance_with};

/// An instance whose `/api/v1` route goes to `{upstream}/v1`, and the signed-in cookie header.
async fn based_route() -> (support::TestApp, String, [(&'static str, String); 2]) {
    let app = spawn_app().await;
    let base = url::Url::parse(&format!("{}/v1", app.upstream.url)).expect("url");
    let instance = spawn_instance_with(&app, |c| {
        let v1 = bff::config::ApiConfig { prefix: "/api/v1".into(), upstream: base, ..c.api[0].clone() };
        c.api.push(v1);
    })
    .await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let cookie = format!("bff={}", browser.cookie("bff").expect("cookie"));
    (app, instance, [("cookie", cookie), ("x-csrf", "1".to_string())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_parameters_and_double_encodings_never_leave_the_base_path() {
    let (app, instance, headers) = based_route().await;
    for raw in [
        "/api/v1/..;/secret",
        "/api/v1/..%3B/secret",
        "/api/v1/..%3b/secret",
        "/api/v1/x/..;/..;/secret",
        "/api/v1/.;/..;/secret",
        "/api/v1/%2e%2e;/secret",
        "/api/v1/%2e%2e%3b/secret",
        "/api/v1/..;jsessionid=1/secret",
        "/api/v1/.%2e;x/secret",
        "/api/v1/%252e%252e/secret",
        "/api/v1/%252e%252e;/secret",
        "/api/v1/a%252f..%252f..%252fsecret",
        "/api/v1/..%253b/secret",
        "/api/v1/%252e/secret",
    ] {
        assert_eq!(raw_status(&instance, "GET", raw, &headers).await, 400, "{raw}");
    }
    assert!(app.upstream.seen().is_empty(), "no escape attempt reached the upstream");
    // Resolved inside the base: what arrives has no dot segment left for the upstream to read.
    for (raw, arrives) in [
        ("/api/v1/a/..;/echo", "/v1/echo"),
        ("/api/v1/a/.;/echo", "/v1/a/echo"),
        ("/api/v1/a/b/..%3B/..;x/echo", "/v1/echo"),
    ] {
        assert_eq!(raw_status(&instance, "GET", raw, &headers).await, 200, "{raw}");
        assert_eq!(app.upstream.seen().last().map(|s| s.path.clone()).as_deref(), Some(arrives), "{raw}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_an_upstream_may_trust_never_come_from_the_browser() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let infrastructure = [
        ("forwarded", "for=10.9.9.9;host=evil"),
        ("x-forwarded-for", "10.9.9.9"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-prefix", "/admin"),
        ("x-forwarded-server", "evil"),
        ("x-real-ip", "10.9.9.9"),
        ("true-client-ip", "10.9.9.9"),
        ("x-original-url", "/admin/delete"),
        ("x-rewrite-url", "/admin/delete"),
        ("x-http-method-override", "DELETE"),
        ("x-method-override", "DELETE"),
    ];
    let mut request = browser.request(Method::GET, "/api/echo").header("x-csrf", "1").header("x-custom", "kept");
    for (name, value) in infrastructure {
        request = request.header(name, value);
    }
    let echo: Value = browser.send(request).await.json().await.expect("echo");
    let seen = &echo["headers"];
    for (name, _) in infrastructure {
        let value = seen.get(name).and_then(Value::as_str).unwrap_or_default();
        assert!(!value.contains("evil") && !value.contains("10.9.9.9") && !value.contains("admin"), "{name}: {value}");
    }
    for name in
        ["forwarded", "x-forwarded-port", "x-forwarded-prefix", "x-real-ip", "x-original-url", "x-method-override"]
    {
        assert!(seen.get(name).is_none(), "{name} is not forwarded");
    }
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "no trusted proxy: the peer alone");
    assert_eq!(seen["x-custom"], "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_keeps_what_two_trusted_proxies_added() {
    let app = spawn_app().await;
    let instance = spawn_instance_with(&app, |c| c.server.trusted_proxy_hops = 2).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);
    let request = b
        .request(Method::GET, "/api/echo")
        .header("x-csrf", "1")
        .header("x-forwarded-for", "10.9.9.9, 203.0.113.5, 198.51.100.7");
    let echo: Value = b.send(request).await.json().await.expect("echo");
    assert_eq!(echo["headers"]["x-forwarded-for"], "203.0.113.5, 198.51.100.7, 127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_drop_more_request_headers() {
    let app = spawn_app().await;
    let instance = spawn_instance_with(&app, |c| c.api[0].request_headers_drop = vec!["x-tenant".into()]).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);
    let request =
        b.request(Method::GET, "/api/echo").header("x-csrf", "1").header("X-Tenant", "other").header("x-keep", "1");
    let echo: Value = b.send(request).await.json().await.expect("echo");
    assert!(echo["headers"].get("x-tenant").is_none());
    assert_eq!(echo["headers"]["x-keep"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_takes_only_its_methods() {
    let app = spawn_app().await;
    let instance = spawn_instance_with(&app, |c| c.api[0].methods = vec!["GET".into(), "POST".into()]).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);
    assert_eq!(b.api(Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(b.api(Method::HEAD, "/api/echo").await.status(), 200, "GET implies HEAD");
    assert_eq!(b.api(Method::POST, "/api/echo").await.status(), 200);
    let delete = b.api(Method::DELETE, "/api/echo").await;
    assert_eq!(delete.status(), 405);
    assert_eq!(delete.headers()["allow"], "GET, POST, HEAD");
    let seen = app.upstream.seen().len();
    assert_eq!(b.api(Method::PUT, "/api/echo").await.status(), 405);
    assert_eq!(app.upstream.seen().len(), seen, "a refused method reaches nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_cannot_take_the_capacity_the_others_need() {
    // Slow calls that hold their permits until every call has been made.
    let app = support::spawn_app_with(support::AppOptions {
        tweak: std::sync::Arc::new(|c: &mut bff::config::Config| c.api[0].timeout = std::time::Duration::from_secs(10)),
        ..Default::default()
    })
    .await;
    let (greedy, other) = (app.browser(), app.browser());
    greedy.login_as("alice").await;
    other.login_as("bob").await;
    // 1,100 slow calls at once from one session, more than the global cap (1,024): 64 (its
    // share) go through, the rest are refused at once.
    let calls: Vec<_> = (0..1100)
        .map(|_| {
            let b = greedy.clone();
            tokio::spawn(async move { b.api(Method::GET, "/api/slow?ms=5000").await.status().as_u16() })
        })
        .collect();
    let upstream = app.upstream.clone();
    support::eventually("the greedy session holds its share", std::time::Duration::from_secs(10), || {
        let slow = upstream.seen().iter().filter(|s| s.path == "/slow").count();
        async move { slow >= 64 }
    })
    .await;
    for _ in 0..5 {
        assert_eq!(other.api(Method::GET, "/api/echo").await.status(), 200, "another session is served meanwhile");
    }
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.expect("call"));
    }
    let served = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(served + refused, 1100, "{statuses:?}");
    assert!((64..=80).contains(&served), "the session's share, give or take calls that came late: {served}");
    let text = greedy.get("/metrics").await.text().await.expect("metrics");
    assert!(text.contains("bff_requests_limited_total{frontend=\"default\",limit=\"session_concurrency\"}"), "counted");
}

/// Sends a request whose body stops after `sent` of its declared `declared` bytes; the status.
async fn stalled_upload(base: &str, cookie: &str, declared: usize, sent: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(authority).await.expect("connect");
    let head = format!(
        "POST /api/echo HTTP/1.1\r\nHost: {authority}\r\nCookie: {cookie}\r\nX-CSRF: 1\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(&vec![b'a'; sent]).await.expect("write");
    let mut response = vec![0; 1024];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut response)).await;
    let n = read.ok().and_then(Result::ok).unwrap_or(0);
    String::from_utf8_lossy(&response[..n]).split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_answered_408_and_frees_its_permit() {
    let app = spawn_app().await;
    let instance = spawn_instance_with(&app, |c| {
        c.api[0].body_timeout = std::time::Duration::from_secs(1);
        c.server.max_upstream_concurrency = 1;
    })
    .await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let cookie = format!("bff={}", browser.cookie("bff").expect("cookie"));
    // Buffered (under max_retry_body_bytes) and streamed (over it) bodies alike.
    assert_eq!(stalled_upload(&instance, &cookie, 100, 10).await, 408);
    assert_eq!(stalled_upload(&instance, &cookie, 200_000, 100_000).await, 408);
    assert_eq!(browser.at(&instance).api(Method::GET, "/api/echo").await.status(), 200, "the only permit is back");
}

/// A GET without `X-CSRF`, as a page or another site could make it.
async fn plain(b: &support::Browser, path: &str) -> reqwest::Response {
    b.send(b.request(Method::GET, path)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_policies_decide_whose_token_the_upstream_gets() {
    use bff::config::TokenPolicy;
    let app = spawn_app().await;
    // An upstream that serves callers with or without a token.
    let open = support::upstream::spawn(None).await;
    let open_url = url::Url::parse(&open.url).expect("url");
    let instance = spawn_instance_with(&app, |c| {
        let base = bff::config::ApiConfig { upstream: open_url, ..c.api[0].clone() };
        c.api.push(bff::config::ApiConfig { prefix: "/public".into(), token: TokenPolicy::None, ..base.clone() });
        c.api.push(bff::config::ApiConfig { prefix: "/maybe".into(), token: TokenPolicy::UserOrNone, ..base });
    })
    .await;
    let bearer_seen = |_: &support::TestApp| open.seen().last().and_then(|s| s.bearer.clone());
    let signed_out = support::Browser::new(&instance);
    // `none`: no session, no X-CSRF, never a token.
    assert_eq!(plain(&signed_out, "/public/echo").await.status(), 200);
    assert_eq!(bearer_seen(&app), None);
    // `user_or_none` signed out: forwarded without a token (X-CSRF still asked for).
    assert_eq!(plain(&signed_out, "/maybe/echo").await.status(), 403);
    assert_eq!(signed_out.api(Method::GET, "/maybe/echo").await.status(), 200);
    assert_eq!(bearer_seen(&app), None);
    // `user` (the default) signed out: 401.
    assert_eq!(signed_out.api(Method::GET, "/api/echo").await.status(), 401);

    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);
    assert_eq!(b.api(Method::GET, "/maybe/echo").await.status(), 200);
    assert!(bearer_seen(&app).is_some(), "signed in: the user's token");
    assert_eq!(plain(&b, "/public/echo").await.status(), 200);
    assert_eq!(bearer_seen(&app), None, "a public route never gets the user's token");
}

/// An upstream that answers the first request of each connection with keep-alive, then closes
/// the connection when the next request arrives, unanswered (as a server whose keep-alive timer
/// fires just as a pooled connection is used); counts the requests it read.
async fn upstream_closing_reused_connections() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let requests = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = std::sync::Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut answered = 0;
                let mut chunk = [0u8; 4096];
                while let Ok(n) = socket.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    // Requests without bodies (GET) or with small ones that arrive with the head.
                    while let Some((_, request_end)) = support::upstream::request_head(&buffer) {
                        if buffer.len() < request_end {
                            break;
                        }
                        buffer.drain(..request_end);
                        seen.fetch_add(1, Ordering::SeqCst);
                        if answered == 1 {
                            return;
                        }
                        answered += 1;
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_call_on_a_connection_the_upstream_just_closed_is_sent_again() {
    use std::sync::atomic::Ordering;
    let app = spawn_app().await;
    let (url, requests) = upstream_closing_reused_connections().await;
    let upstream = url::Url::parse(&url).expect("url");
    let instance = spawn_instance_with(&app, |c| {
        // One worker: every call goes through the one pool, so the second reuses the connection.
        c.server.workers = 1;
        c.api.push(bff::config::ApiConfig { prefix: "/racy".into(), upstream, ..c.api[0].clone() });
    })
    .await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);
    assert_eq!(b.api(Method::GET, "/racy/a").await.status(), 200);
    assert_eq!(b.api(Method::GET, "/racy/b").await.status(), 200, "sent again on a new connection");
    assert_eq!(requests.load(Ordering::SeqCst), 3, "the closed one, then the one answered");
    // A POST may have been acted on: its sender decides, bff does not send it twice.
    let post = b.send(b.request(Method::POST, "/racy/c").header("x-csrf", "1").body("x")).await;
    assert_eq!(post.status(), 502);
    assert_eq!(requests.load(Ordering::SeqCst), 4);
    assert_eq!(b.api(Method::GET, "/racy/e").await.status(), 200, "a new connection, answered");
    let keyed =
        b.send(b.request(Method::POST, "/racy/d").header("x-csrf", "1").header("idempotency-key", "k1").body("x"));
    assert_eq!(keyed.await.status(), 200, "unless it carries an idempotency key");
    assert_eq!(requests.load(Ordering::SeqCst), 7, "the keyed POST was sent twice");
}
