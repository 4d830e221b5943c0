//! Idle and absolute session timeouts. The configuration file allows no less than a minute; the
//! tests shorten them in code.

use std::time::Duration;

use reqwest::Method;

use support::{AppOptions, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_ends_and_an_active_one_is_extended() {
    let app = spawn_app_with(AppOptions {
        tweak: std::sync::Arc::new(|c: &mut bff::config::Config| c.session.idle_timeout = Duration::from_secs(3)),
        ..Default::default()
    })
    .await;
    let idle = app.browser();
    idle.login_as("alice").await;
    let active = app.browser();
    active.login_as("bob").await;

    // Active: a call every second for five seconds keeps the three-second idle timeout at bay.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(active.api(Method::GET, "/api/echo").await.status(), 200);
    }

    assert_eq!(idle.user().await.status(), 401, "unused for over three seconds");
    assert_eq!(active.user().await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_outlives_the_absolute_timeout() {
    let app = spawn_app_with(AppOptions {
        tweak: std::sync::Arc::new(|c: &mut bff::config::Config| c.session.absolute_timeout = Duration::from_secs(3)),
        ..Default::default()
    })
    .await;
    let browser = app.browser();
    let res = browser.login_as("alice").await;
    let max_age = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("bff="))
        .map(String::from)
        .unwrap_or_default();
    assert!(max_age.contains("Max-Age=3"), "the cookie lives no longer than the session: {max_age}");

    for _ in 0..2 {
        assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
        app.clock.advance(Duration::from_secs(1));
    }
    // Past the absolute end on the app's clock (the store's own time to live would end it a
    // moment later on the wall clock too).
    app.clock.advance(Duration::from_secs(2));

    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 401);
    assert_eq!(browser.user().await.status(), 401);
}
