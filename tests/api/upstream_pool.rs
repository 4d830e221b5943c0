//! The HTTP/1.1 connections to an upstream (issue 27): driven by the calls themselves, kept per
//! worker and route, given back when an answer ends, never used once the upstream closed them.
//! Against a raw upstream that counts the connections it accepts and the requests it reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Method;
use support::{spawn_app, spawn_instance_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    requests: AtomicUsize,
    /// Connections the upstream has closed itself (`/close-after`).
    closed: AtomicUsize,
    /// Connections bff has closed (the upstream read their end).
    closed_by_bff: AtomicUsize,
}

/// Answers by path: `/length` 2 bytes with a length, `/chunked` the same chunked, `/empty` 204,
/// `/slow` three chunks 20 ms apart, `/close-after` an answer with a length, and 50 ms later the
/// upstream closes the connection (no `Connection: close`: as a server whose idle timer fires).
async fn counting_upstream() -> (String, Arc<Counts>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let counts = Arc::new(Counts::default());
    let shared = Arc::clone(&counts);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            shared.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(socket, Arc::clone(&shared)));
        }
    });
    (url, counts)
}

async fn serve(mut socket: tokio::net::TcpStream, counts: Arc<Counts>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some((head, request_end)) = support::upstream::request_head(&buffer) else {
            match socket.read(&mut chunk).await {
                Ok(0) => {
                    counts.closed_by_bff.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        while buffer.len() < request_end {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        buffer.drain(..request_end);
        counts.requests.fetch_add(1, Ordering::SeqCst);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let head_only = head.starts_with("head ");
        let written = match path.as_str() {
            "/chunked" => {
                socket.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n").await
            }
            "/empty" => socket.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await,
            "/slow" => {
                let mut result = socket.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
                for part in ["1\r\na\r\n", "1\r\nb\r\n", "1\r\nc\r\n0\r\n\r\n"] {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    result = result.and(socket.write_all(part.as_bytes()).await);
                }
                result
            }
            "/close-after" => {
                let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                // Later than the answer: bff has put the connection back by then.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = socket.shutdown().await;
                counts.closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            _ if head_only => socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n").await,
            _ => socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await,
        };
        if written.is_err() {
            return;
        }
    }
}

/// A signed-in browser at an instance with one worker (one pool) and a `/raw` route to `url`.
async fn browser_with_raw_route(url: &str) -> (support::TestApp, support::Browser, String) {
    browser_with_raw_route_kept(url, Duration::from_secs(60)).await
}

/// The same, the route's idle connections kept `keep_alive`.
async fn browser_with_raw_route_kept(url: &str, keep_alive: Duration) -> (support::TestApp, support::Browser, String) {
    let app = spawn_app().await;
    let upstream = url::Url::parse(url).expect("url");
    let instance = spawn_instance_with(&app, |c| {
        c.server.workers = 1;
        c.api.push(bff::config::ApiConfig { prefix: "/raw".into(), upstream, keep_alive, ..c.api[0].clone() });
    })
    .await;
    let browser = app.browser();
    browser.login_as("alice").await;
    (app, browser, instance)
}

#[tokio::test]
async fn sequential_calls_share_one_connection_whatever_their_answer() {
    let (url, counts) = counting_upstream().await;
    let (_app, browser, instance) = browser_with_raw_route(&url).await;
    let b = browser.at(&instance);
    for round in 0..5 {
        for path in ["/raw/length", "/raw/chunked", "/raw/empty", "/raw/slow"] {
            let res = b.api(Method::GET, path).await;
            assert!(res.status().is_success(), "{path} in round {round}: {}", res.status());
            let body = res.text().await.expect("body");
            let expected = match path {
                "/raw/empty" => "",
                "/raw/slow" => "abc",
                _ => "ok",
            };
            assert_eq!(body, expected, "{path}");
        }
        let head = b.send(b.request(Method::HEAD, "/raw/length").header("x-csrf", "1")).await;
        assert_eq!(head.status(), 200);
        let post = b.send(b.request(Method::POST, "/raw/length").header("x-csrf", "1").body("hello")).await;
        assert_eq!(post.status(), 200);
    }
    assert_eq!(counts.requests.load(Ordering::SeqCst), 30);
    assert_eq!(
        counts.connections.load(Ordering::SeqCst),
        1,
        "every answer (with a length, chunked, 204, HEAD, streamed) gave its connection back"
    );
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used_even_for_a_post() {
    let (url, counts) = counting_upstream().await;
    let (_app, browser, instance) = browser_with_raw_route(&url).await;
    let b = browser.at(&instance);
    assert_eq!(b.api(Method::GET, "/raw/close-after").await.status(), 200);
    // Until the upstream has closed its end (then its FIN is on bff's socket: loopback).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while counts.closed.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the upstream never closed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A POST is never sent twice: it must not go out on the closed connection at all.
    let post = b.send(b.request(Method::POST, "/raw/length").header("x-csrf", "1").body("x")).await;
    assert_eq!(post.status(), 200, "sent on a new connection");
    assert_eq!(counts.requests.load(Ordering::SeqCst), 2);
    assert_eq!(counts.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_answer_left_unread_closes_its_connection_and_the_next_call_opens_another() {
    let (url, counts) = counting_upstream().await;
    let (_app, browser, instance) = browser_with_raw_route(&url).await;
    // The browser goes away after the head of a streamed answer.
    let cookie = format!("bff={}", browser.cookie("bff").expect("cookie"));
    let mut stream = tokio::net::TcpStream::connect(instance.trim_start_matches("http://")).await.expect("connect");
    let request = format!("GET /raw/slow HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\nx-csrf: 1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).await.expect("read");
    assert_eq!(&first, b"HTTP/1.1 200");
    drop(stream);
    let b = browser.at(&instance);
    for _ in 0..3 {
        let res = b.api(Method::GET, "/raw/length").await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.expect("body"), "ok");
    }
    assert_eq!(counts.connections.load(Ordering::SeqCst), 2, "a second connection, then kept");
}

#[tokio::test]
async fn concurrent_calls_open_connections_as_needed_then_reuse_them() {
    let (url, counts) = counting_upstream().await;
    let (_app, browser, instance) = browser_with_raw_route(&url).await;
    let b = browser.at(&instance);
    let calls = (0..40).map(|i| {
        let b = &b;
        async move {
            let path = if i % 2 == 0 { "/raw/slow" } else { "/raw/chunked" };
            let res = b.api(Method::GET, path).await;
            (res.status(), res.text().await.unwrap_or_default())
        }
    });
    for (status, body) in futures_util::future::join_all(calls).await {
        assert_eq!(status, 200);
        assert!(body == "abc" || body == "ok", "{body}");
    }
    let opened = counts.connections.load(Ordering::SeqCst);
    assert!((1..=40).contains(&opened), "{opened} connections for 40 calls");
    for _ in 0..10 {
        assert_eq!(b.api(Method::GET, "/raw/length").await.status(), 200);
    }
    assert_eq!(counts.connections.load(Ordering::SeqCst), opened, "the idle ones were used again");
    assert_eq!(counts.requests.load(Ordering::SeqCst), 50);
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_routes_keep_alive_without_another_call() {
    let (url, counts) = counting_upstream().await;
    let (_app, browser, instance) = browser_with_raw_route_kept(&url, Duration::from_secs(1)).await;
    let b = browser.at(&instance);
    assert_eq!(b.api(Method::GET, "/raw/length").await.status(), 200);
    assert_eq!(b.api(Method::GET, "/raw/length").await.status(), 200);
    assert_eq!(counts.connections.load(Ordering::SeqCst), 1);
    // The worker's sweep closes it (keep-alive 1 s, swept every 0.5 s): no call needed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while counts.closed_by_bff.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "bff never closed the idle connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.api(Method::GET, "/raw/length").await.status(), 200);
    assert_eq!(counts.connections.load(Ordering::SeqCst), 2, "a new connection after the old one was closed");
}
