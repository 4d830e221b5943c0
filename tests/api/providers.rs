//! Working with the providers people run (issue 12): metadata fallbacks, RFC 9207, setup
//! errors that name the fix, lost refresh answers, and the login-flow defects found.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bff::demo::idp::Quirks;

use support::{AppOptions, Browser, TestApp, eventually, location, spawn_app, spawn_app_with, spawn_instance_with};

/// A second bff instance that discovers the provider after `quirks` were switched on.
pub(crate) async fn instance_after(
    app: &TestApp,
    quirks: Quirks,
    tweak: impl FnOnce(&mut bff::config::Config),
) -> Browser {
    app.idp.controls.set_quirks(quirks);
    Browser::new(&spawn_instance_with(app, tweak).await)
}

/// The whole sign-in through `browser`'s instance: the provider redirects to the public URL
/// (the first instance's address), so the callback is sent where the sign-in started, as a load
/// balancer in front of both would.
pub(crate) async fn login_here(browser: &Browser) -> reqwest::Response {
    let start = browser.start_login(None).await;
    let callback = browser.sign_in_at_provider(&location(&start), "alice").await;
    browser.get(&here(browser, &callback)).await
}

fn here(browser: &Browser, url: &str) -> String {
    let mut url = url::Url::parse(url).expect("a URL");
    let base = url::Url::parse(&browser.base).expect("the browser's base");
    let _ = url.set_port(base.port());
    url.to_string()
}

fn refresh_tokens(app: &TestApp) -> Vec<String> {
    app.idp.provider.issued_tokens().into_iter().filter(|t| !t.contains('.')).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_at_an_endpoint_named_only_in_rfc8414_metadata() {
    let app = spawn_app().await;
    let browser = instance_after(&app, Quirks { revocation_only_in_rfc8414: true, ..Quirks::default() }, |_| {}).await;
    assert_eq!(login_here(&browser).await.status(), 302);
    let issued = refresh_tokens(&app);
    assert_eq!(browser.logout().await.status(), 303);
    assert_eq!(app.token_requests("revocation"), 1, "revoked through the RFC 8414 endpoint");
    assert!(!app.idp.provider.refresh_token_active(&issued[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_revocation_endpoint_wins_over_the_providers_metadata() {
    let app = spawn_app().await;
    let dead = format!("http://127.0.0.1:{}/revoke", support::dead_port());
    let browser = instance_after(&app, Quirks::default(), |c| {
        c.oidc.revocation_endpoint = url::Url::parse(&dead).ok();
    })
    .await;
    assert_eq!(login_here(&browser).await.status(), 302);
    let issued = refresh_tokens(&app);
    assert_eq!(browser.logout().await.status(), 303, "a failed revocation does not fail the logout");
    assert_eq!(app.token_requests("revocation"), 0, "the provider's own endpoint was not used");
    assert!(app.idp.provider.refresh_token_active(&issued[0]));
}

/// The provider's redirect to the callback, with its query rewritten by `change`.
async fn callback_url(
    browser: &Browser,
    change: impl Fn(&mut url::form_urlencoded::Serializer<'_, url::UrlQuery<'_>>, &str, &str),
) -> (String, String) {
    let start = browser.start_login(None).await;
    let callback = here(browser, &browser.sign_in_at_provider(&location(&start), "alice").await);
    let original = url::Url::parse(&callback).expect("callback URL");
    let mut changed = original.clone();
    {
        let mut query = changed.query_pairs_mut();
        query.clear();
        for (k, v) in original.query_pairs() {
            change(&mut query, &k, &v);
        }
    }
    (callback, changed.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_response_from_another_issuer_is_refused_and_consumes_nothing() {
    let app = spawn_app().await;
    let browser = app.browser();
    let (genuine, forged) = callback_url(&browser, |q, k, v| {
        q.append_pair(k, if k == "iss" { "https://evil.example" } else { v });
    })
    .await;
    let refused = browser.get(&forged).await;
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap_or_default().contains("expected identity provider"));
    assert_eq!(browser.get(&genuine).await.status(), 302, "the sign-in it mimicked still works");
    assert_eq!(browser.user().await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iss_is_required_when_the_provider_advertises_rfc9207() {
    let app = spawn_app().await;
    let browser =
        instance_after(&app, Quirks { iss_in_authorization_response: true, ..Quirks::default() }, |_| {}).await;
    let (genuine, stripped) = callback_url(&browser, |q, k, v| {
        if k != "iss" {
            q.append_pair(k, v);
        }
    })
    .await;
    assert_eq!(browser.get(&stripped).await.status(), 400);
    assert_eq!(browser.get(&genuine).await.status(), 302);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_opened_in_another_browser_does_not_burn_the_sign_in() {
    let app = spawn_app().await;
    let owner = app.browser();
    let start = owner.start_login(None).await;
    let callback = owner.sign_in_at_provider(&location(&start), "alice").await;
    let stranger = app.browser();
    assert_eq!(stranger.get(&callback).await.status(), 400);
    assert_eq!(owner.get(&callback).await.status(), 302, "the owner's sign-in is intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_cookie_bff_did_not_make_is_ignored() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.set_cookie("bff-login", &"x".repeat(43));
    let start = browser.start_login(None).await;
    let binding = browser.cookie("bff-login").expect("a login cookie");
    assert_ne!(binding, "x".repeat(43), "a value of bff's own making replaces it");
    let callback = browser.sign_in_at_provider(&location(&start), "alice").await;
    assert_eq!(browser.get(&callback).await.status(), 302);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_that_differs_by_a_slash_is_reported_as_a_configuration_error() {
    let app = spawn_app().await;
    let browser = instance_after(&app, Quirks { issuer_with_trailing_slash: true, ..Quirks::default() }, |_| {}).await;
    let res = browser.get("/readyz").await;
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["identity_provider"], "misconfigured");
    let problem = body["problem"].as_str().unwrap_or_default();
    let issuer = &app.idp.issuer;
    assert!(problem.contains("oidc.issuer"), "{problem}");
    assert!(problem.contains(&format!("{issuer:?}")) && problem.contains(&format!("\"{issuer}/\"")), "{problem}");
    // Once the provider is fixed, nothing of it is left (discovery retries with backoff).
    app.idp.controls.set_quirks(Quirks::default());
    let b = browser.clone();
    eventually("ready once the issuers agree", Duration::from_secs(10), || {
        let b = b.clone();
        async move { b.get("/readyz").await.status() == 200 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_answer_was_lost_is_asked_again_and_keeps_the_session() {
    let app = spawn_app_with(AppOptions {
        access_token_ttl: Duration::from_secs(2),
        tweak: std::sync::Arc::new(|c| c.oidc.timeout = Duration::from_secs(1)),
        ..Default::default()
    })
    .await;
    app.idp.controls.set_refresh_reuse_grace(Duration::from_secs(60));
    let browser = app.browser();
    assert_eq!(browser.login_as("alice").await.status(), 302);
    let signed_in_until = access_token_expires_at(&browser).await;
    // The next refresh rotates at the provider, but its answer comes after bff gave up.
    app.idp.controls.hold_next_token_answer(Duration::from_secs(2));
    let b = browser.clone();
    eventually("a refreshed token serves the call", Duration::from_secs(20), || {
        let b = b.clone();
        async move {
            b.api(reqwest::Method::GET, "/api/echo").await.status() == 200
                && access_token_expires_at(&b).await > signed_in_until
        }
    })
    .await;
    let counters = &app.idp.provider.counters;
    assert_eq!(counters.reuse_within_grace.load(Ordering::SeqCst), 1, "asked again with the same token");
    assert_eq!(app.token_requests("reuse"), 0, "not taken for reuse");
    assert_eq!(browser.user().await.status(), 200, "the session survived");
}

async fn access_token_expires_at(browser: &Browser) -> u64 {
    let user: serde_json::Value = browser.user().await.json().await.unwrap_or_default();
    user["access_token_expires_at"].as_u64().unwrap_or(0)
}

/// `GET /auth/login` as if from `address` (bff trusts one proxy in these tests).
async fn start_login_from(browser: &Browser, address: &str) -> reqwest::Response {
    browser.send(browser.request(reqwest::Method::GET, "/auth/login").header("x-forwarded-for", address)).await
}

/// A 429's `Retry-After`, in seconds.
fn retry_after(refused: &reqwest::Response) -> u64 {
    assert_eq!(refused.status(), 429);
    refused.headers()["retry-after"].to_str().ok().and_then(|v| v.parse().ok()).expect("Retry-After")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_sign_ins_do_not_count_against_the_browser() {
    let app = spawn_app_with(AppOptions {
        tweak: std::sync::Arc::new(|c| {
            c.server.login_starts_per_minute = 3;
            c.server.trusted_proxy_hops = 1;
        }),
        ..Default::default()
    })
    .await;
    let browser = app.browser();
    // Each sign-in from another address (one trusted proxy), so only the per-browser count
    // could refuse them.
    for i in 0..5 {
        let start = start_login_from(&browser, &format!("192.0.2.{i}")).await;
        assert_eq!(start.status(), 302, "sign-in {i}");
        let callback = browser.sign_in_at_provider(&location(&start), "alice").await;
        assert_eq!(browser.get(&callback).await.status(), 302, "sign-in {i}");
    }
    // Three left in progress fill the browser's allowance; the answer says for how long.
    for i in 10..13 {
        let start = start_login_from(&browser, &format!("192.0.2.{i}")).await;
        assert_eq!(start.status(), 302);
    }
    let refused = start_login_from(&browser, "192.0.2.99").await;
    let retry_after = retry_after(&refused);
    assert!(retry_after > 500 && retry_after <= 600, "until the oldest login in progress expires: {retry_after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_limit_says_when_its_minute_ends() {
    let app = spawn_app_with(AppOptions {
        tweak: std::sync::Arc::new(|c| c.server.login_starts_per_minute = 2),
        ..Default::default()
    })
    .await;
    for _ in 0..2 {
        assert_eq!(app.browser().start_login(None).await.status(), 302);
    }
    let refused = app.browser().start_login(None).await;
    let retry_after = retry_after(&refused);
    assert!(retry_after > 50 && retry_after <= 60, "{retry_after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_that_replaces_a_session_revokes_its_grant() {
    let app = spawn_app().await;
    let browser = app.browser();
    assert_eq!(browser.login_as("alice").await.status(), 302);
    let first = refresh_tokens(&app);
    assert_eq!(browser.login_as("alice").await.status(), 302);
    eventually("the replaced grant is revoked", Duration::from_secs(5), || {
        let active = app.idp.provider.refresh_token_active(&first[0]);
        async move { !active }
    })
    .await;
    assert_eq!(browser.user().await.status(), 200, "the new session is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_clears_the_session_cookie_once() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let res = browser.logout().await;
    let removals =
        res.headers().get_all("set-cookie").iter().filter(|v| v.to_str().is_ok_and(|v| v.starts_with("bff="))).count();
    assert_eq!(removals, 1);
}
