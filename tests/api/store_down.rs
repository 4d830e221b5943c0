//! Redis outages: fast 503s, never a hang or a bare 500, and recovery without a restart.

use std::time::{Duration, Instant};

use support::{AppOptions, RedisProcess, dead_port, eventually, spawn_app, spawn_app_with};

/// A bff on the same secret and prefix as `app`, whose Redis URL points at `redis_url`.
async fn twin_with_redis(app: &support::TestApp, redis_url: &str) -> String {
    // Building the instance succeeds: start-up does not need Redis.
    support::spawn_instance_with(app, |c| {
        c.session.redis_url = Some(secrecy::SecretString::from(redis_url.to_string()));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_unreachable_requests_fail_fast_with_503() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let down = twin_with_redis(&app, &format!("redis://127.0.0.1:{}", dead_port())).await;
    let b = browser.at(&down);

    for (what, res) in [
        ("user", b.user().await),
        ("api", b.api(reqwest::Method::GET, "/api/echo").await),
        ("login fetch", b.send(b.request(reqwest::Method::GET, "/auth/login")).await),
    ] {
        assert_eq!(res.status(), 503, "{what}");
        assert_eq!(
            res.json::<serde_json::Value>().await.ok(),
            Some(serde_json::json!({"error": "session_store_unavailable"})),
            "{what}"
        );
    }
    let started = Instant::now();
    let nav = b
        .send(b.request(reqwest::Method::GET, "/auth/user").header("x-csrf", "1").header("sec-fetch-mode", "navigate"))
        .await;
    assert_eq!(nav.status(), 503);
    assert!(nav.headers()["content-type"].to_str().unwrap_or_default().starts_with("text/html"));
    assert!(started.elapsed() < Duration::from_secs(5), "no hang");
    assert_eq!(b.get("/readyz").await.status(), 503);
    assert_eq!(b.get("/healthz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_redis_restart_and_requests_recover_by_themselves() {
    let dir = support::temp_dir("redis");
    let port = dead_port();
    let mut redis = RedisProcess::start(port, &dir);
    redis.answering().await;
    let app = spawn_app_with(AppOptions { redis_url: Some(redis.url()), ..Default::default() }).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    assert_eq!(browser.api(reqwest::Method::GET, "/api/echo").await.status(), 200);

    redis.kill();
    // The local token cache empties when its invalidation connection drops, which bff learns
    // a moment after the kill: until then a cached token set may still serve a call.
    let b = browser.clone();
    eventually("API calls fail fast once Redis is gone", Duration::from_secs(5), || {
        let b = b.clone();
        async move { b.api(reqwest::Method::GET, "/api/echo").await.status() == 503 }
    })
    .await;
    let started = Instant::now();
    assert_eq!(browser.user().await.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5), "503 within the store timeout, not a hang");

    let mut restarted = RedisProcess::start(port, &dir);
    restarted.answering().await;
    let b = browser.clone();
    eventually("bff recovers without a restart", Duration::from_secs(15), || {
        let b = b.clone();
        async move { b.api(reqwest::Method::GET, "/api/echo").await.status() == 200 }
    })
    .await;
    assert_eq!(browser.user().await.status(), 200, "the session survived");
    restarted.kill();
}
