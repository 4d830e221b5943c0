//! OIDC Front-Channel Logout 1.0: a provider whose logout page loads
//! `/auth/frontchannel-logout?iss=…&sid=…` in an iframe ends bff's sessions of that provider
//! session on every instance; a wrong `iss`, or no `sid` where the provider sends one, is refused;
//! with a provider that sends the user's `sub` as `sid`, the browser's own cookie decides.

use reqwest::Method;
use serde_json::json;

use bff::demo::idp::Quirks;
use support::{Browser, TestApp, location, metric, spawn_app, spawn_second_instance};

use crate::providers::{instance_after, login_here};

const FRONT_CHANNEL: Quirks = Quirks { frontchannel_only: true, ..Quirks::NONE };
const SID_IS_SUB: Quirks = Quirks { frontchannel_only: true, sid_is_sub: true, ..Quirks::NONE };

/// Loads a front-channel URL as the provider page's cross-site iframe does: no bff cookie.
async fn load_frame(url: &str) -> reqwest::Response {
    reqwest::Client::new().get(url).header("sec-fetch-dest", "iframe").send().await.expect("the iframe loads")
}

/// The one front-channel URL the provider loads for `username`'s provider session.
fn frame_url(app: &TestApp, username: &str) -> String {
    let sid = app.idp.provider.session_of(username).expect("a provider session");
    let urls = app.idp.provider.frontchannel_logout_urls(&sid);
    assert_eq!(urls.len(), 1, "one client to sign out: {urls:?}");
    urls[0].clone()
}

fn with_query(url: &str, pairs: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(url).expect("a URL");
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url.to_string()
}

async fn error_of(res: reqwest::Response) -> (u16, serde_json::Value) {
    (res.status().as_u16(), res.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_frame_ends_that_provider_session_on_every_instance() {
    let app = spawn_app().await;
    app.idp.controls.set_quirks(FRONT_CHANNEL);
    let second = spawn_second_instance(&app).await;
    let alice = app.browser();
    alice.login_as("alice").await;
    let bob = app.browser();
    bob.login_as("bob").await;
    let alice_on_second = alice.at(&second);
    assert_eq!(alice_on_second.api(Method::GET, "/api/echo").await.status(), 200);
    let url = frame_url(&app, "alice");
    assert!(url.starts_with(&format!("{}/auth/frontchannel-logout?iss=", app.address)), "{url}");

    let sid = app.idp.provider.session_of("alice").expect("sid");
    assert_eq!(app.idp.provider.end_provider_session(&sid).await, 0, "no back-channel logout from this provider");
    let res = load_frame(&url).await;

    assert_eq!(res.status(), 200);
    assert_eq!(alice.user().await.status(), 401);
    assert_eq!(alice_on_second.api(Method::GET, "/api/echo").await.status(), 401);
    assert_eq!(bob.user().await.status(), 200, "other users' sessions stay");
    let keys = app.keys().await;
    assert_eq!(keys.iter().filter(|k| k.ends_with(":session")).count(), 1, "only bob's session is left: {keys:?}");
    assert_eq!(
        metric(&app.address, "bff_auth_events_total{event=\"frontchannel_logout\",frontend=\"default\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_is_a_no_store_page_only_the_providers_origin_may_frame() {
    let app = spawn_app().await;
    app.idp.controls.set_quirks(FRONT_CHANNEL);
    let alice = app.browser();
    alice.login_as("alice").await;

    let res = load_frame(&frame_url(&app, "alice")).await;

    assert_eq!(res.status(), 200);
    let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
    let provider_origin = url::Url::parse(&app.idp.issuer).expect("issuer").origin().ascii_serialization();
    assert_eq!(header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(
        header("content-security-policy").as_deref(),
        Some(format!("default-src 'none'; frame-ancestors {provider_origin}").as_str())
    );
    assert_eq!(header("x-frame-options"), None, "DENY would contradict frame-ancestors");
    assert!(header("content-type").is_some_and(|t| t.starts_with("text/html")));
    let body = res.text().await.expect("body");
    assert!(body.starts_with("<!doctype html>") && body.len() < 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_session_page_loads_the_frame_and_a_known_iss_with_an_unknown_sid_ends_nothing() {
    let app = spawn_app().await;
    app.idp.controls.set_quirks(FRONT_CHANNEL);
    let alice = app.browser();
    alice.login_as("alice").await;
    let bob = app.browser();
    bob.login_as("bob").await;
    let url = frame_url(&app, "alice");

    // bff's logout sends the browser to the provider, whose page frames bff (already signed out).
    let logout = alice.logout().await;
    assert_eq!(logout.status(), 303);
    let page = alice.get(&location(&logout)).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("the provider's page");
    assert!(html.contains(&format!("<iframe src=\"{}\"", url.replace('&', "&amp;"))), "{html}");
    let res = load_frame(&url).await;

    assert_eq!(res.status(), 200, "the provider is not told an error per iframe");
    let unknown = with_query(&url, &[("iss", &app.idp.issuer), ("sid", "no-such-session")]);
    assert_eq!(load_frame(&unknown).await.status(), 200);
    assert_eq!(bob.user().await.status(), 200, "nothing else ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_iss_is_refused_and_ends_nothing() {
    let app = spawn_app().await;
    app.idp.controls.set_quirks(FRONT_CHANNEL);
    let alice = app.browser();
    alice.login_as("alice").await;
    let url = frame_url(&app, "alice");
    let sid = support::query_param(&url, "sid").expect("sid");
    let slashed = format!("{}/", app.idp.issuer);

    for (what, query) in [
        ("another issuer", vec![("iss", "https://evil.example"), ("sid", sid.as_str())]),
        ("the issuer with a trailing slash", vec![("iss", slashed.as_str()), ("sid", sid.as_str())]),
        ("no iss", vec![("sid", sid.as_str())]),
    ] {
        let res = load_frame(&with_query(&url, &query)).await;
        assert_eq!(error_of(res).await, (400, json!({ "error": "invalid_request" })), "{what}");
    }
    assert_eq!(alice.user().await.status(), 200, "the session survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sid_is_refused_when_the_provider_says_it_sends_one() {
    let app = spawn_app().await;
    let without_iss_sid = format!("{}/auth/frontchannel-logout", app.address);
    let iss_only = with_query(&without_iss_sid, &[("iss", &app.idp.issuer)]);
    // This instance read metadata that says nothing of front-channel sessions: no sid is fine.
    assert_eq!(load_frame(&iss_only).await.status(), 200);
    assert_eq!(load_frame(&without_iss_sid).await.status(), 200);

    let instance = instance_after(&app, FRONT_CHANNEL, |_| {}).await;

    for url in [&iss_only, &without_iss_sid] {
        let res = load_frame(&instance.url(url.trim_start_matches(&app.address))).await;
        assert_eq!(error_of(res).await, (400, json!({ "error": "invalid_request" })), "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sid_as_sub_the_browsers_own_cookie_ends_its_session() {
    let app = spawn_app().await;
    let instance = instance_after(&app, SID_IS_SUB, |_| {}).await;
    assert_eq!(login_here(&instance).await.status(), 302);
    let other_device = app.browser();
    other_device.login_as("alice").await;
    let url = frame_url(&app, "alice");
    assert_eq!(support::query_param(&url, "sid").as_deref(), Some("demo|alice"), "the user's sub as sid");
    // The same site: the browser sends its cookie into the provider's iframe.
    let framed = instance.at(&app.address);
    let cookie = instance.cookie("bff").expect("signed in");

    assert_eq!(load_frame(&url).await.status(), 200, "without the cookie");
    assert_eq!(instance.user().await.status(), 200, "the sid matches no session");
    let navigation = framed.send(framed.request(Method::GET, &url).header("sec-fetch-dest", "document")).await.status();
    assert_eq!(navigation, 200);
    assert_eq!(instance.user().await.status(), 200, "a top-level navigation (a link) signs nobody out");

    let res = framed.send(framed.request(Method::GET, &url).header("sec-fetch-dest", "iframe")).await;

    assert_eq!(res.status(), 200);
    assert!(instance.cookie("bff").is_none(), "the answer clears the cookie");
    instance.set_cookie("bff", &cookie);
    assert_eq!(instance.user().await.status(), 401, "the session is over, not just forgotten by the browser");
    assert_eq!(other_device.user().await.status(), 200, "only this browser's session ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_get_is_taken() {
    let app = spawn_app().await;
    let browser: Browser = app.browser();
    for method in [Method::POST, Method::HEAD, Method::DELETE] {
        let res = browser.send(browser.request(method.clone(), "/auth/frontchannel-logout")).await;
        assert_eq!(res.status(), 405, "{method}");
        assert_eq!(res.headers()["allow"], "GET", "{method}");
    }
}
