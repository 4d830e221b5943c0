//! WebSocket pass-through (issue 13, item 7): the handshake under the proxy's rules, with the
//! `Origin` instead of `X-CSRF`; frames both ways through the tunnel; bff's own closes when the
//! session ends or the socket idles; the socket counted against the concurrency caps.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bff::config::{ApiConfig, Config, TokenPolicy};
use futures_util::SinkExt;
use reqwest::Method;
use support::websocket::{Data, Frame, Message, OpCode, Socket, close_code, next_message, until_closed};
use support::{AppOptions, TestApp, eventually, metric, spawn_app_with, spawn_instance_with, spawn_second_instance};

/// The test configuration's routes time out after 2 s, which is also how long a socket may
/// idle: most tests here give it longer.
fn patient() -> AppOptions {
    AppOptions { tweak: Arc::new(|c: &mut Config| c.api[0].timeout = Duration::from_secs(30)), ..Default::default() }
}

async fn signed_in(options: AppOptions) -> (TestApp, support::Browser) {
    let app = spawn_app_with(options).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    (app, browser)
}

async fn open(browser: &support::Browser, app: &TestApp) -> Socket {
    browser.websocket("/api/ws", Some(&app.address)).await.expect("the socket opens")
}

async fn echoed(socket: &mut Socket, message: Message) -> Message {
    socket.send(message).await.expect("send");
    next_message(socket).await
}

async fn open_sockets(app: &TestApp) -> f64 {
    metric(&app.address, "bff_websockets_open").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_reaches_the_upstream_with_the_bearer_and_echoes_both_ways() {
    let (app, browser) = signed_in(patient()).await;
    let mut socket = browser
        .websocket_with("/api/ws", Some(&app.address), &[("x-forwarded-host", "evil.example"), ("x-custom", "kept")])
        .await
        .expect("101");

    let seen = app.upstream.seen().last().cloned().expect("the handshake reached the upstream");
    assert_eq!(seen.path, "/ws");
    let bearer = seen.bearer.as_deref().expect("a bearer");
    assert!(app.idp.provider.active_access_token(bearer).is_some(), "the session's access token");
    let h = &seen.headers;
    for absent in ["cookie", "x-csrf"] {
        assert!(!h.contains_key(absent), "{absent} is not forwarded: {h:?}");
    }
    assert_eq!(h.get("x-forwarded-for").map(String::as_str), Some("127.0.0.1"));
    assert_ne!(h.get("x-forwarded-host").map(String::as_str), Some("evil.example"));
    assert_eq!(h.get("x-custom").map(String::as_str), Some("kept"));
    assert_eq!(h.get("upgrade").map(String::as_str), Some("websocket"));
    assert!(h.get("connection").is_some_and(|c| c.eq_ignore_ascii_case("upgrade")));
    assert!(h.contains_key("sec-websocket-key") && h.get("sec-websocket-version").map(String::as_str) == Some("13"));
    assert_eq!(open_sockets(&app).await, 1.0);

    assert_eq!(echoed(&mut socket, Message::text("hello")).await, Message::text("hello"));
    let binary: Vec<u8> = (0..=255u8).collect();
    assert_eq!(echoed(&mut socket, Message::binary(binary.clone())).await, Message::binary(binary));
    let large: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i: usize| (i * 31 % 251) as u8).collect();
    assert_eq!(echoed(&mut socket, Message::binary(large.clone())).await, Message::binary(large), "3 MiB whole");
    let ping = Message::Ping(b"are you there".to_vec().into());
    assert_eq!(echoed(&mut socket, ping).await, Message::Pong(b"are you there".to_vec().into()), "the upstream's pong");

    // A fragmented message with a ping between its fragments: the pong comes first, then the
    // whole message.
    socket.send(Message::Frame(Frame::message(&b"frag"[..], OpCode::Data(Data::Text), false))).await.expect("send");
    socket.send(Message::Ping(b"between".to_vec().into())).await.expect("send");
    socket
        .send(Message::Frame(Frame::message(&b"mented"[..], OpCode::Data(Data::Continue), true)))
        .await
        .expect("send");
    assert_eq!(next_message(&mut socket).await, Message::Pong(b"between".to_vec().into()));
    assert_eq!(next_message(&mut socket).await, Message::text("fragmented"));

    socket.close(None).await.expect("close");
    until_closed(&mut socket).await;
    eventually("the gauge goes back down", Duration::from_secs(10), || async { open_sockets(&app).await == 0.0 }).await;
    assert_eq!(
        metric(&app.address, "bff_websocket_upgrades_total{frontend=\"default\",outcome=\"upgraded\"}").await,
        1.0
    );
    assert_eq!(metric(&app.address, "bff_websocket_closes_total{frontend=\"default\",reason=\"peer\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_from_another_origin_or_none_is_refused_and_signed_out_is_401() {
    let (app, browser) = signed_in(patient()).await;
    for origin in [Some("http://evil.example"), Some("null"), None] {
        let refused = browser.websocket("/api/ws", origin).await.expect_err("refused");
        assert_eq!((refused.status, refused.body.as_str()), (403, r#"{"error":"csrf"}"#), "Origin {origin:?}");
    }
    let signed_out = app.browser();
    let refused = signed_out.websocket("/api/ws", Some(&app.address)).await.expect_err("refused");
    assert_eq!((refused.status, refused.body.as_str()), (401, r#"{"error":"login_required"}"#));
    assert!(app.upstream.seen().iter().all(|s| s.path != "/ws"), "nothing reached the upstream");
    assert_eq!(
        metric(&app.address, "bff_websocket_upgrades_total{frontend=\"default\",outcome=\"refused\"}").await,
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_route_upgrades_without_a_session_and_never_sends_a_token() {
    let (app, browser) = signed_in(patient()).await;
    // An upstream that serves callers without a token.
    let open_upstream = support::upstream::spawn(None).await;
    let base = url::Url::parse(&open_upstream.url).expect("url");
    let instance = spawn_instance_with(&app, |c| {
        c.api.push(ApiConfig {
            prefix: "/public".into(),
            upstream: base,
            token: TokenPolicy::None,
            ..c.api[0].clone()
        });
    })
    .await;
    let anonymous = support::Browser::new(&instance);
    let mut anonymous_socket = anonymous.websocket("/public/ws", None).await.expect("no session, no Origin needed");
    assert_eq!(echoed(&mut anonymous_socket, Message::text("hi")).await, Message::text("hi"));
    assert_eq!(open_upstream.seen().last().and_then(|s| s.bearer.clone()), None);

    let mut socket = browser.at(&instance).websocket("/public/ws", Some(&app.address)).await.expect("101");
    assert_eq!(echoed(&mut socket, Message::text("hi")).await, Message::text("hi"));
    let seen = open_upstream.seen().last().cloned().expect("seen");
    assert_eq!(seen.bearer, None, "signed in, still no token");
    assert!(!seen.headers.contains_key("cookie"));

    // Browsers that go away without a Close: both tunnels end.
    assert_eq!(metric(&instance, "bff_websockets_open").await, 2.0);
    drop((anonymous_socket, socket));
    eventually("the gauge goes back down", Duration::from_secs(10), || async {
        metric(&instance, "bff_websockets_open").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_closes_the_socket_with_4401() {
    let (app, browser) = signed_in(patient()).await;
    let mut socket = open(&browser, &app).await;
    assert_eq!(echoed(&mut socket, Message::text("still here")).await, Message::text("still here"));

    assert_eq!(browser.logout().await.status(), 303);

    let close = until_closed(&mut socket).await;
    assert_eq!(close_code(&close), Some(4401), "{close:?}");
    eventually("the gauge goes back down", Duration::from_secs(10), || async { open_sockets(&app).await == 0.0 }).await;
    // Counted as the tunnel ends, with the gauge.
    assert_eq!(
        metric(&app.address, "bff_websocket_closes_total{frontend=\"default\",reason=\"session_ended\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_channel_logout_closes_the_socket_on_another_instance() {
    let (app, browser) = signed_in(patient()).await;
    let second = spawn_second_instance(&app).await;
    let mut socket = browser.at(&second).websocket("/api/ws", Some(&app.address)).await.expect("101");
    assert_eq!(echoed(&mut socket, Message::text("on two")).await, Message::text("on two"));
    let sid = app.idp.provider.session_of("alice").expect("alice has a provider session");

    assert_eq!(app.idp.provider.end_provider_session(&sid).await, 1, "delivered to the first instance");

    assert_eq!(close_code(&until_closed(&mut socket).await), Some(4401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_socket_is_closed_after_the_route_timeout() {
    // The test configuration's 2 s.
    let (app, browser) = signed_in(AppOptions::default()).await;
    let mut socket = open(&browser, &app).await;
    // Taken before the last frame: whenever that frame moved, the socket was quiet from then on,
    // so a close that honours the timeout comes at least 2 s after this (a loaded machine only
    // makes it later).
    let quiet_since = Instant::now();
    assert_eq!(echoed(&mut socket, Message::text("once")).await, Message::text("once"));

    let close = until_closed(&mut socket).await;

    assert_eq!(close_code(&close), Some(4408), "{close:?}");
    assert!(quiet_since.elapsed() >= Duration::from_secs(2), "not before the timeout");
    eventually("the close is counted", Duration::from_secs(10), || async {
        metric(&app.address, "bff_websocket_closes_total{frontend=\"default\",reason=\"idle_timeout\"}").await == 1.0
    })
    .await;
    assert_eq!(browser.user().await.status(), 200, "the session itself goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_socket_holds_one_of_the_sessions_concurrency_permits() {
    let options = AppOptions {
        tweak: Arc::new(|c: &mut Config| {
            c.api[0].timeout = Duration::from_secs(30);
            c.server.max_upstream_concurrency_per_session = 1;
        }),
        ..Default::default()
    };
    let (app, browser) = signed_in(options).await;
    let mut socket = open(&browser, &app).await;

    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 429, "the socket holds the only permit");
    let other = app.browser();
    other.login_as("bob").await;
    assert_eq!(other.api(Method::GET, "/api/echo").await.status(), 200, "other sessions are served");

    socket.close(None).await.expect("close");
    until_closed(&mut socket).await;
    eventually("the permit comes back", Duration::from_secs(10), || async {
        browser.api(Method::GET, "/api/echo").await.status() == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_401_to_the_handshake_is_refreshed_and_retried_once() {
    let (app, browser) = signed_in(patient()).await;
    app.upstream.controls.reject_next.store(1, Ordering::SeqCst);

    let mut socket = open(&browser, &app).await;

    assert_eq!(app.token_requests("refresh_token"), 1);
    let bearers: Vec<Option<String>> =
        app.upstream.seen().iter().filter(|s| s.path == "/ws").map(|s| s.bearer.clone()).collect();
    assert_eq!(bearers.len(), 2);
    assert_ne!(bearers[0], bearers[1], "the retry carries the new token");
    assert_eq!(echoed(&mut socket, Message::text("after a refresh")).await, Message::text("after a refresh"));

    // A second 401 goes back as it is.
    app.upstream.controls.always_reject.store(true, Ordering::SeqCst);
    let refused = browser.websocket("/api/ws", Some(&app.address)).await.expect_err("refused");
    assert_eq!((refused.status, refused.body.as_str()), (401, r#"{"error":"invalid_token"}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_does_not_upgrade_is_answered_as_it_is_and_websocket_false_refuses() {
    let (app, browser) = signed_in(patient()).await;
    // (An endpoint that does not wait for a body: an upgrade request's body only ends with
    // the connection.)
    let refused = browser.websocket("/api/set-cookie", Some(&app.address)).await.expect_err("no upgrade there");
    assert_eq!((refused.status, refused.body.as_str()), (200, r#"{"ok":true}"#), "the upstream's own answer");

    let instance = spawn_instance_with(&app, |c| c.api[0].websocket = false).await;
    let b = browser.at(&instance);
    let refused = b.websocket("/api/ws", Some(&app.address)).await.expect_err("refused");
    assert_eq!((refused.status, refused.body.as_str()), (400, r#"{"error":"websocket_disabled"}"#));
    assert_eq!(b.api(Method::GET, "/api/echo").await.status(), 200, "plain calls still pass");

    let post_only = spawn_instance_with(&app, |c| c.api[0].methods = vec!["POST".into()]).await;
    let refused = browser.at(&post_only).websocket("/api/ws", Some(&app.address)).await.expect_err("refused");
    assert_eq!(refused.status, 405, "the route's methods rule applies to the handshake (a GET)");
}
