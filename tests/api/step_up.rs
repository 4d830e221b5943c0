//! Step-up authentication (RFC 9470), through real HTTP against the demo provider: an upstream's
//! `insufficient_user_authentication` 401 and a route's own `acr_values`/`max_age` become
//! 401 `step_up_required` for the SPA, which signs in again with those values.

use bff::config::ApiConfig;
use bff::demo::idp::{ACR_PASSWORD, ACR_SECOND_FACTOR};
use reqwest::Method;
use serde_json::{Value, json};
use support::{Browser, TestApp, location, metric, spawn_app, spawn_instance_with, urlencode};

/// The provider's login form posted with the second factor ticked; the callback URL.
pub(crate) async fn sign_in_with_second_factor(browser: &Browser, authorize_url: &str) -> String {
    browser.sign_in_at_provider_with(authorize_url, "alice", true).await.0
}

/// What the SPA does with a `step_up_required`: `/auth/login` with its values, the sign-in with
/// the second factor, the callback.
pub(crate) async fn step_up(browser: &Browser, answer: &Value) {
    let mut query = Vec::new();
    if let Some(acr) = answer["acr_values"].as_str() {
        query.push(format!("acr_values={}", urlencode(acr)));
    }
    if let Some(max_age) = answer["max_age"].as_u64() {
        query.push(format!("max_age={max_age}"));
    }
    let start = browser.get(&format!("/auth/login?{}", query.join("&"))).await;
    assert_eq!(start.status(), 302, "the SPA's values are taken back: {answer}");
    let callback = sign_in_with_second_factor(browser, &location(&start)).await;
    let done = browser.get(&callback).await;
    let status = done.status();
    assert_eq!(status, 302, "signed in again: {}", done.text().await.unwrap_or_default());
}

async fn answer(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or_default())
}

fn calls_to(app: &TestApp, path: &str) -> usize {
    app.upstream.seen().iter().filter(|s| s.path == path).count()
}

async fn step_ups(app: &TestApp) -> f64 {
    metric(&app.address, "bff_auth_events_total{event=\"step_up_required\",frontend=\"default\"}").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_step_up_reaches_the_spa_unrefreshed_and_the_session_lives_on() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let refreshes = app.token_requests("refresh_token");

    let (status, body) = answer(browser.api(Method::GET, "/api/step-up").await).await;
    assert_eq!(status, 401);
    assert_eq!(body, json!({"error": "step_up_required", "acr_values": ACR_SECOND_FACTOR, "max_age": 300}));
    // A call with a body that could be sent again is not sent again either.
    let post = browser.send(browser.request(Method::POST, "/api/step-up").header("x-csrf", "1").body("{}")).await;
    assert_eq!(answer(post).await.1["error"], "step_up_required");
    assert_eq!(calls_to(&app, "/step-up"), 2, "each call reached the upstream once: no retry");
    assert_eq!(app.token_requests("refresh_token"), refreshes, "no refresh: it would carry the same sign-in");

    // Values bff may not pass on are dropped, never reflected.
    let (status, body) = answer(browser.api(Method::GET, "/api/step-up-junk").await).await;
    assert_eq!((status, body), (401, json!({"error": "step_up_required"})));

    // A WebSocket handshake likewise.
    let Err(refused) = browser.websocket("/api/step-up", Some(&app.address)).await else {
        panic!("the handshake was let through")
    };
    assert_eq!(refused.status, 401);
    assert_eq!(serde_json::from_str::<Value>(&refused.body).unwrap_or_default()["error"], "step_up_required");

    // The session is untouched: other routes work, the user is who they were.
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
    let user: Value = browser.user().await.json().await.expect("user");
    assert_eq!(user["acr"], ACR_PASSWORD);
    assert_eq!(app.token_requests("refresh_token"), refreshes);
    assert!(step_ups(&app).await >= 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_step_up_required_the_spa_signs_in_again_and_the_call_goes_through() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let (status, body) = answer(browser.api(Method::GET, "/api/step-up").await).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("step_up_required")));

    step_up(&browser, &body).await;
    let res = browser.api(Method::GET, "/api/step-up").await;
    assert_eq!(res.status(), 200, "signed in with the second factor");
    let user: Value = browser.user().await.json().await.expect("user");
    assert_eq!(user["acr"], ACR_SECOND_FACTOR);
}

/// An instance with `/strong` (second factor only) and `/recent` (signed in within a minute)
/// routes to the test upstream.
async fn routes_with_requirements(app: &TestApp) -> String {
    let upstream = url::Url::parse(&app.upstream.url).expect("url");
    spawn_instance_with(app, |c| {
        c.api.push(ApiConfig {
            prefix: "/strong".into(),
            upstream: upstream.clone(),
            acr_values: vec!["urn:example:other".into(), ACR_SECOND_FACTOR.into()],
            ..c.api[0].clone()
        });
        c.api.push(ApiConfig { prefix: "/recent".into(), upstream, max_age: Some(60), ..c.api[0].clone() });
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_acr_values_are_checked_before_the_upstream_is_called() {
    let app = spawn_app().await;
    let instance = routes_with_requirements(&app).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);

    let before = app.upstream.seen().len();
    let (status, body) = answer(b.api(Method::GET, "/strong/echo").await).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"error": "step_up_required", "acr_values": format!("urn:example:other {ACR_SECOND_FACTOR}")})
    );
    assert_eq!(app.upstream.seen().len(), before, "the upstream was not called");
    assert_eq!(b.api(Method::GET, "/api/echo").await.status(), 200, "other routes still serve the session");

    // The SPA's round trip (at the instance the provider sends the browser back to).
    step_up(&browser, &body).await;
    assert_eq!(b.api(Method::GET, "/strong/echo").await.status(), 200);
    assert_eq!(app.upstream.seen().last().map(|s| s.path.clone()).as_deref(), Some("/echo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_max_age_asks_for_a_recent_sign_in() {
    let app = spawn_app().await;
    let instance = routes_with_requirements(&app).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);
    let user: Value = b.user().await.json().await.expect("user");
    let auth_time = user["auth_time"].as_u64().expect("auth_time");
    assert_eq!(b.api(Method::GET, "/recent/echo").await.status(), 200, "signed in just now");

    app.advance_clock_to(auth_time + 61);
    let before = app.upstream.seen().len();
    let (status, body) = answer(b.api(Method::GET, "/recent/echo").await).await;
    assert_eq!((status, body), (401, json!({"error": "step_up_required", "max_age": 60})));
    assert_eq!(app.upstream.seen().len(), before, "the upstream was not called");
    assert_eq!(b.api(Method::GET, "/api/echo").await.status(), 200, "other routes still serve the session");
}
