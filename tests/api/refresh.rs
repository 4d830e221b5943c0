//! The token lifecycle through the proxy: refresh ahead of expiry, refresh-and-retry on 401,
//! rotation, single flight in one instance and across two, and every refresh failure.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bff::demo::idp::TokenFault;
use reqwest::Method;

use support::{AppOptions, SHORT_SKEW_SECS, TestApp, spawn_app_with, spawn_second_instance, token_expiry};

/// Access tokens live 2 s, so they are due for refresh after 1 s (the skew is capped at half
/// the lifetime).
async fn short_lived_app() -> TestApp {
    spawn_app_with(AppOptions {
        access_token_ttl: Duration::from_secs(2),
        // The storms here are about one refresh for a hundred callers of one session, not about
        // the session's fair share (tested in edges.rs): every caller is let through.
        tweak: std::sync::Arc::new(|c| c.server.max_upstream_concurrency_per_session = 256),
        ..Default::default()
    })
    .await
}

fn bearers(app: &TestApp) -> Vec<String> {
    app.upstream.seen().into_iter().filter_map(|s| s.bearer).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_about_to_expire_is_refreshed_before_proxying() {
    let app = spawn_app_with(AppOptions::short_lived_tokens()).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let first = browser.api(Method::GET, "/api/echo").await;
    assert_eq!(first.status(), 200);
    assert_eq!(app.token_requests("refresh_token"), 0, "a fresh token is used as it is");

    app.make_refresh_due(token_expiry(&first), SHORT_SKEW_SECS);
    app.idp.controls.set_access_token_ttl(Duration::from_secs(60));
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);

    assert_eq!(app.token_requests("refresh_token"), 1);
    let seen = bearers(&app);
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0], seen[1], "the upstream saw the new token");
    let user: serde_json::Value = browser.user().await.json().await.expect("json");
    assert!(user["access_token_expires_at"].as_u64() > Some(bff::session::now_unix()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_401_triggers_one_refresh_and_one_retry() {
    let app = spawn_app_with(AppOptions::default()).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    app.upstream.controls.reject_next.store(1, Ordering::SeqCst);

    let res = browser.send(browser.request(Method::POST, "/api/echo").header("x-csrf", "1").body("retry me")).await;

    assert_eq!(res.status(), 200);
    let echo: serde_json::Value = res.json().await.expect("json");
    assert_eq!(echo["body"], "retry me", "the buffered body is sent again");
    assert_eq!(app.token_requests("refresh_token"), 1);
    let seen = bearers(&app);
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0], seen[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_401_goes_back_to_the_spa_as_it_is() {
    let app = spawn_app_with(AppOptions::default()).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    app.upstream.controls.always_reject.store(true, Ordering::SeqCst);

    let res = browser.api(Method::GET, "/api/echo").await;

    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<serde_json::Value>().await.ok(), Some(serde_json::json!({"error": "invalid_token"})));
    assert_eq!(app.token_requests("refresh_token"), 1, "one refresh");
    assert_eq!(app.upstream.seen().len(), 2, "one retry");
    app.upstream.controls.always_reject.store(false, Ordering::SeqCst);
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200, "still signed in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_large_to_buffer_is_not_retried() {
    let app = spawn_app_with(AppOptions::default()).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    app.upstream.controls.reject_next.store(1, Ordering::SeqCst);

    // The test app buffers up to 64 KiB for retries.
    let res =
        browser.send(browser.request(Method::PUT, "/api/echo").header("x-csrf", "1").body(vec![b'x'; 100_000])).await;

    assert_eq!(res.status(), 401);
    assert_eq!(app.token_requests("refresh_token"), 0);
    assert_eq!(app.upstream.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_refresh_tokens_are_stored_so_consecutive_refreshes_succeed() {
    let app = spawn_app_with(AppOptions::short_lived_tokens()).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    // The first refresh after an upstream's 401, the next ones when the token falls due.
    app.upstream.controls.reject_next.store(1, Ordering::SeqCst);
    let mut res = browser.api(Method::GET, "/api/echo").await;
    assert_eq!(res.status(), 200, "round 1");
    assert_eq!(app.token_requests("refresh_token"), 1);
    for round in 2..=3 {
        app.make_refresh_due(token_expiry(&res), SHORT_SKEW_SECS);
        res = browser.api(Method::GET, "/api/echo").await;
        assert_eq!(res.status(), 200, "round {round}");
        assert_eq!(app.token_requests("refresh_token"), round);
    }
    assert_eq!(app.token_requests("reuse"), 0, "never a used refresh token presented again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_refuses_every_token_drives_one_refresh_per_token_version_on_any_instance() {
    let app = spawn_app_with(AppOptions::default()).await;
    let second = spawn_second_instance(&app).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let legitimate = app.browser();
    legitimate.login_as("bob").await;
    app.upstream.controls.always_reject.store(true, Ordering::SeqCst);

    // A 401 storm from one user, spread over both instances.
    for i in 0..10 {
        let b = if i % 2 == 0 { browser.clone() } else { browser.at(&second) };
        let res = b.send(b.request(Method::GET, "/api/always-401").header("x-csrf", "1")).await;
        assert_eq!(res.status(), 401, "call {i}: the upstream's answer goes back");
    }
    assert_eq!(app.token_requests("refresh_token"), 1, "one renewal for the token refused, none for its successor");
    let not_renewed =
        support::metric(&app.address, "bff_token_refreshes_total{frontend=\"default\",outcome=\"rejected_again\"}")
            .await
            + support::metric(&second, "bff_token_refreshes_total{frontend=\"default\",outcome=\"rejected_again\"}")
                .await;
    assert_eq!(not_renewed, 9.0, "counted");

    app.upstream.controls.always_reject.store(false, Ordering::SeqCst);
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200, "the renewed token still works");
    assert_eq!(legitimate.api(Method::GET, "/api/echo").await.status(), 200);
}

/// Fires `n` calls at once, spread over the given bff addresses; returns their statuses.
async fn storm(browser: &support::Browser, bases: &[String], n: usize) -> Vec<u16> {
    let calls = (0..n).map(|i| {
        let b = browser.at(&bases[i % bases.len()]);
        async move { b.api(Method::GET, "/api/echo").await.status().as_u16() }
    });
    futures_util::future::join_all(calls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_calls_after_expiry_makes_exactly_one_refresh() {
    let app = short_lived_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    // Past the token's expiry, on the app's clock.
    app.clock.advance(Duration::from_secs(3));
    // The refreshed token must not itself fall due while a slow machine works through the storm.
    app.idp.controls.set_access_token_ttl(Duration::from_secs(60));

    let statuses = storm(&browser, std::slice::from_ref(&app.address), 100).await;

    let failures = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(failures, 0, "{statuses:?}");
    assert_eq!(app.token_requests("refresh_token"), 1);
    assert_eq!(app.token_requests("reuse"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_make_exactly_one_refresh() {
    let app = short_lived_app().await;
    let second = spawn_second_instance(&app).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    // Past the token's expiry, on the app's clock.
    app.clock.advance(Duration::from_secs(3));
    // The refreshed token must not itself fall due while a slow machine works through the storm.
    app.idp.controls.set_access_token_ttl(Duration::from_secs(60));

    let statuses = storm(&browser, &[app.address.clone(), second], 100).await;

    let failures = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(failures, 0, "{statuses:?}");
    assert_eq!(app.token_requests("refresh_token"), 1);
    assert_eq!(app.token_requests("reuse"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_left_by_a_crashed_holder_expires_and_the_next_request_refreshes() {
    let app = short_lived_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    // Past the token's expiry, on the app's clock.
    app.clock.advance(Duration::from_secs(3));
    // Another instance took the lock and died: its lease has 1.5 s left and nobody renews it.
    let lock = app
        .keys()
        .await
        .into_iter()
        .find(|k| k.ends_with(":session"))
        .expect("session key")
        .replace(":session", ":lock");
    let mut redis = app.redis().await;
    let _: () = redis::cmd("SET")
        .arg(&lock)
        .arg("crashed-owner")
        .arg("PX")
        .arg(1500)
        .query_async(&mut redis)
        .await
        .expect("set");

    let res = browser.api(Method::GET, "/api/echo").await;

    assert_eq!(res.status(), 200);
    assert_eq!(app.token_requests("refresh_token"), 1);
    let lock_now: Option<String> = redis::cmd("GET").arg(&lock).query_async(&mut redis).await.expect("get");
    assert_eq!(lock_now, None, "the new holder released its lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_ends_the_session() {
    let app = short_lived_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    // Due for refresh (half of its 2 s), on the app's clock.
    app.clock.advance(Duration::from_secs(1));
    app.idp.controls.set_token_fault(TokenFault::InvalidGrant);

    let res = browser.api(Method::GET, "/api/echo").await;

    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<serde_json::Value>().await.ok(), Some(serde_json::json!({"error": "login_required"})));
    assert!(browser.cookie("bff").is_none(), "the cookie is cleared");
    let left: Vec<String> = app.keys().await.into_iter().filter(|k| !k.contains("login")).collect();
    assert!(left.is_empty(), "session and token set are deleted: {left:?}");
    app.idp.controls.set_token_fault(TokenFault::None);
    assert_eq!(browser.user().await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_silent_provider_keeps_the_session_for_later() {
    for fault in [TokenFault::Unavailable, TokenFault::Hang] {
        let app = short_lived_app().await;
        let browser = app.browser();
        browser.login_as("alice").await;
        // Past the token's expiry, on the app's clock.
        app.clock.advance(Duration::from_secs(3));
        app.idp.controls.set_token_fault(fault);

        let res = browser.api(Method::GET, "/api/echo").await;

        assert_eq!(res.status(), 503, "{fault:?}");
        assert_eq!(
            res.json::<serde_json::Value>().await.ok(),
            Some(serde_json::json!({"error": "token_refresh_unavailable"})),
            "{fault:?}"
        );
        assert!(browser.cookie("bff").is_some());
        app.idp.controls.set_token_fault(TokenFault::None);
        // The session's back-off (1 s after a first failure) passes, then the call works.
        let asked = app.token_requests("any");
        let back = browser.api(Method::GET, "/api/echo").await;
        assert_eq!(back.status(), 503, "{fault:?}: within the back-off");
        assert_eq!(app.token_requests("any"), asked, "{fault:?}: the provider is not asked within the back-off");
        support::eventually("the call works once the provider is back", Duration::from_secs(5), || async {
            browser.api(Method::GET, "/api/echo").await.status() == 200
        })
        .await;
        assert_eq!(app.token_requests("reuse"), 0);
    }
}
