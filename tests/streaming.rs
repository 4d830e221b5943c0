//! Large bodies stream through the proxy both ways without being held in memory. A binary of
//! its own: it reads the process's peak memory, which other tests running alongside would blur.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use sha2::{Digest, Sha256};

const SIZE: u64 = 64 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// Peak resident memory of this process so far, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmHWM")
}

fn pattern_chunk(i: u64) -> Vec<u8> {
    vec![(i % 251) as u8; CHUNK]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mebibytes_stream_up_and_down_without_buffering() {
    // The upstream answers once it has the whole upload, and an unoptimised build takes about
    // two seconds to move and hash 64 MiB: the test app's 2 s upstream timeout would cut it off
    // with a 504. What is measured here is memory, not speed.
    let app = support::spawn_app_with(support::AppOptions {
        tweak: std::sync::Arc::new(|c: &mut bff::config::Config| c.api[0].timeout = Duration::from_secs(60)),
        ..Default::default()
    })
    .await;
    let browser = app.browser();
    browser.login_as("alice").await;
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
    let chunks = SIZE / CHUNK as u64;
    let mut expected = Sha256::new();
    for i in 0..chunks {
        expected.update(pattern_chunk(i));
    }
    let expected = format!("{:x}", expected.finalize());
    let before = peak_rss();

    // Upload, chunked (no Content-Length): larger than the retry buffer, so it streams.
    let body = futures_util::stream::iter((0..chunks).map(|i| Ok::<_, std::io::Error>(pattern_chunk(i))));
    let res = browser
        .send(browser.request(Method::POST, "/api/upload").header("x-csrf", "1").body(reqwest::Body::wrap_stream(body)))
        .await;
    assert_eq!(res.status(), 200);
    let echo: serde_json::Value = res.json().await.expect("json");
    assert_eq!(echo["body_len"], SIZE);
    assert_eq!(echo["body_sha256"], expected.as_str(), "byte-exact");

    // Upload with a Content-Length: the length is forwarded, the body still streams.
    let body = futures_util::stream::iter((0..chunks).map(|i| Ok::<_, std::io::Error>(pattern_chunk(i))));
    let res = browser
        .send(
            browser
                .request(Method::PUT, "/api/upload")
                .header("x-csrf", "1")
                .header("content-length", SIZE.to_string())
                .body(reqwest::Body::wrap_stream(body)),
        )
        .await;
    assert_eq!(res.status(), 200);
    let echo: serde_json::Value = res.json().await.expect("json");
    assert_eq!(echo["body_sha256"], expected.as_str());
    assert_eq!(echo["headers"]["content-length"], SIZE.to_string());

    // Download.
    let res = browser.api(Method::GET, &format!("/api/download?bytes={SIZE}")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.content_length(), Some(SIZE), "the length is passed through");
    let mut received = 0u64;
    let mut stream = res.bytes_stream();
    while let Some(chunk) = stream.next().await {
        received += chunk.expect("chunk").len() as u64;
    }
    assert_eq!(received, SIZE);

    let growth = peak_rss().saturating_sub(before);
    println!("peak memory growth while streaming {} MiB up twice and down once: {} MiB", SIZE >> 20, growth >> 20);
    assert!(growth < SIZE / 2, "peak memory grew by {} MiB for {} MiB bodies", growth >> 20, SIZE >> 20);
}
