//! Hostile load (issue 22), each attack run beside a legitimate user whose calls must all
//! succeed: trickling bodies on a public route, dead cookies, empty path segments.

use std::time::Duration;

use bff::config::{ApiConfig, Config, TokenPolicy};
use reqwest::Method;
use support::{TestApp, spawn_app, spawn_instance_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A public route `/public` in front of an upstream that serves callers without a token.
async fn with_public_route(c: &mut bff::config::Config, open: &support::upstream::Upstream) {
    let upstream = url::Url::parse(&open.url).expect("url");
    let public = ApiConfig { prefix: "/public".into(), token: TokenPolicy::None, upstream, ..c.api[0].clone() };
    c.api.push(public);
}

/// A small deployment (16 upstream calls in flight) with a public route, bodies allowed 2 s of
/// silence.
async fn small_deployment(app: &TestApp, open: &support::upstream::Upstream) -> String {
    let mut config = app.config.clone();
    with_public_route(&mut config, open).await;
    spawn_instance_with(app, move |c| {
        *c = Config { server: c.server.clone(), ..config };
        c.server.max_upstream_concurrency = 16;
        c.server.max_upstream_concurrency_anonymous = 4;
        // All attackers come from one address: the anonymous share is what refuses them here.
        c.server.max_upstream_concurrency_per_address = 16;
        for api in &mut c.api {
            api.body_timeout = Duration::from_secs(2);
        }
    })
    .await
}

/// A socket that declares a large body and sends one byte every `every`, then reports the
/// status it got (0 if none) and when.
async fn trickle(base: String, path: &str, cookie: Option<String>, every: Duration) -> (u16, Duration) {
    let authority = base.trim_start_matches("http://").to_string();
    let started = std::time::Instant::now();
    let Ok(mut stream) = tokio::net::TcpStream::connect(&authority).await else { return (0, started.elapsed()) };
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\nX-CSRF: 1\r\n")).unwrap_or_default();
    let head = format!("POST {path} HTTP/1.1\r\nHost: {authority}\r\n{cookie}Content-Length: 1000000\r\n\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return (0, started.elapsed());
    }
    let mut response = vec![0; 512];
    // Bounded: at most 20 bytes, 20 × `every`.
    for _ in 0..20 {
        match tokio::time::timeout(every, stream.read(&mut response)).await {
            Ok(Ok(n)) if n > 0 => {
                let text = String::from_utf8_lossy(&response[..n]);
                return (text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), started.elapsed());
            }
            Ok(_) => return (0, started.elapsed()),
            Err(_) => {
                if stream.write_all(b"x").await.is_err() {
                    return (0, started.elapsed());
                }
            }
        }
    }
    (0, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_bodies_on_a_public_route_cannot_starve_signed_in_users() {
    let app = spawn_app().await;
    let open = support::upstream::spawn(None).await;
    let instance = small_deployment(&app, &open).await;
    let user = app.browser();
    user.login_as("alice").await;
    let user = user.at(&instance);

    // 16 sockets, as many as the whole deployment's capacity, each a byte a second: under the
    // stall limit (2 s), far under the minimum rate (500 B/s after the 2 s allowance).
    let attackers: Vec<_> = (0..16)
        .map(|_| tokio::spawn(trickle(instance.clone(), "/public/echo", None, Duration::from_secs(1))))
        .collect();
    // Meanwhile the signed-in user is served: anonymous calls hold at most their share (4).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..10 {
        assert_eq!(user.api(Method::GET, "/api/echo").await.status(), 200, "call {i} of the legitimate user");
    }
    let mut outcomes = Vec::new();
    for attacker in attackers {
        outcomes.push(attacker.await.expect("attacker"));
    }
    let timed_out = outcomes.iter().filter(|(status, _)| *status == 408).count();
    let refused = outcomes.iter().filter(|(status, _)| *status == 429).count();
    assert_eq!(timed_out + refused, 16, "{outcomes:?}");
    assert_eq!(timed_out, 4, "the anonymous share (4) was admitted, then ended by the rate: {outcomes:?}");
    for (status, after) in &outcomes {
        if *status == 408 {
            assert!(*after < Duration::from_secs(6), "a trickle ends within the allowance and a little: {after:?}");
        }
    }
    assert_eq!(user.api(Method::GET, "/api/echo").await.status(), 200);
    let metrics = reqwest::get(format!("{instance}/metrics")).await.expect("metrics").text().await.expect("text");
    assert!(
        metrics.contains("bff_requests_limited_total{frontend=\"default\",limit=\"anonymous_concurrency\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_its_part_of_the_anonymous_share_and_no_more() {
    let app = spawn_app().await;
    let open = support::upstream::spawn(None).await;
    let mut config = app.config.clone();
    with_public_route(&mut config, &open).await;
    let instance = spawn_instance_with(&app, move |c| {
        *c = Config { server: c.server.clone(), ..config };
        c.server.max_upstream_concurrency_anonymous = 8;
        c.server.max_upstream_concurrency_per_address = 2;
    })
    .await;
    let anonymous = support::Browser::new(&instance);
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let b = anonymous.clone();
            tokio::spawn(async move { b.get("/public/slow?ms=1500").await.status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.expect("call"));
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429], "one address (127.0.0.1) holds 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_cookie_is_401_at_once_and_never_holds_a_share() {
    let app = spawn_app().await;
    let instance = spawn_instance_with(&app, |c| {
        c.server.max_upstream_concurrency_per_session = 4;
        c.api[0].body_timeout = Duration::from_secs(5);
    })
    .await;
    let gone = app.browser();
    gone.login_as("mallory").await;
    let cookie = format!("bff={}", gone.cookie("bff").expect("cookie"));
    assert_eq!(gone.logout().await.status(), 303);
    let user = app.browser();
    user.login_as("alice").await;
    let user = user.at(&instance);

    // Slow bodies with the dead cookie: each is refused before its body is read.
    let attackers: Vec<_> = (0..8)
        .map(|_| tokio::spawn(trickle(instance.clone(), "/api/echo", Some(cookie.clone()), Duration::from_secs(1))))
        .collect();
    for attacker in attackers {
        let (status, after) = attacker.await.expect("attacker");
        assert_eq!(status, 401, "a logged-out cookie is 401, not 429");
        assert!(after < Duration::from_secs(2), "at once, not after the body: {after:?}");
    }
    assert_eq!(user.api(Method::GET, "/api/echo").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_path_segments_never_reach_the_upstream() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let cookie = format!("bff={}", browser.cookie("bff").expect("cookie"));
    let headers = [("Cookie", cookie), ("X-CSRF", "1".to_string())];
    for path in ["/api//evil.example/x", "/api/a/..//evil.example/x", "/api/a//b", "/api/%2e%2e//evil.example"] {
        assert_eq!(support::raw_status(&app.address, "GET", path, &headers).await, 400, "{path}");
    }
    assert!(app.upstream.seen().iter().all(|s| !s.path.starts_with("//")), "nothing went out as //host");
    assert!(app.upstream.seen().is_empty(), "nothing went out at all");
    assert_eq!(support::raw_status(&app.address, "GET", "/api/echo/", &headers).await, 200, "a trailing slash is fine");
}
