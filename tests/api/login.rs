use std::collections::HashSet;

use crate::helpers::{Browser, location, query_param, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_redirects_to_the_provider_with_pkce_state_and_nonce() {
    let app = spawn_app().await;
    let browser = app.browser();

    let res = browser.start_login(Some("/orders/7?x=1")).await;

    assert_eq!(res.status(), 302);
    let url = location(&res);
    assert!(url.starts_with(&format!("{}/authorize?", app.idp.issuer)), "{url}");
    assert_eq!(query_param(&url, "response_type").as_deref(), Some("code"));
    assert_eq!(query_param(&url, "client_id").as_deref(), Some("bff-test"));
    assert_eq!(query_param(&url, "redirect_uri"), Some(format!("{}/auth/callback", app.address)));
    assert_eq!(query_param(&url, "code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(query_param(&url, "code_challenge").map(|c| c.len()), Some(43));
    assert!(query_param(&url, "state").is_some_and(|s| s.len() >= 22));
    assert!(query_param(&url, "nonce").is_some_and(|s| s.len() >= 22));
    let scope = query_param(&url, "scope").unwrap_or_default();
    let scopes: HashSet<&str> = scope.split(' ').collect();
    assert_eq!(scopes, HashSet::from(["openid", "profile", "email", "offline_access"]));
    assert!(browser.cookie("bff-login").is_some(), "the login is bound to this browser");
    assert_eq!(res.headers()["cache-control"], "no-store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_login_lands_on_return_to_with_a_session() {
    let app = spawn_app().await;
    let browser = app.browser();

    let res = browser.login_to("alice", Some("/orders/7?x=1")).await;

    assert_eq!(res.status(), 302);
    assert_eq!(location(&res), "/orders/7?x=1");
    assert!(browser.cookie("bff").is_some());
    let user = browser.user().await;
    assert_eq!(user.status(), 200);
    let body: serde_json::Value = user.json().await.expect("json");
    assert_eq!(body["sub"], "demo|alice");
    assert_eq!(body["name"], "Alice");
    assert_eq!(body["email"], "alice@example.com");
    assert_eq!(app.token_requests("authorization_code"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_redirect_attempts_in_return_to_land_on_root() {
    let app = spawn_app().await;
    for evil in [
        "//evil.example",
        "//evil.example/path",
        "/\\evil.example",
        "https://evil.example/",
        "http:evil.example",
        "javascript:alert(1)",
        "evil.example",
        "/\t/evil.example",
        "%2F%2Fevil.example",
        "///evil.example",
    ] {
        let browser = app.browser();
        let res = browser.login_to("bob", Some(evil)).await;
        assert_eq!(res.status(), 302, "{evil}");
        assert_eq!(location(&res), "/", "{evil:?} must not leave the origin");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_id_changes_at_login() {
    let app = spawn_app().await;
    let browser = app.browser();
    assert_eq!(browser.login_as("carol").await.status(), 302);
    let first = browser.cookie("bff").expect("session cookie");

    assert_eq!(browser.login_as("carol").await.status(), 302);
    let second = browser.cookie("bff").expect("session cookie");

    assert_ne!(first, second);
    // The session before the second login is gone (no fixation, no orphan).
    let old = Browser::new(&app.address);
    old.set_cookie("bff", &first);
    assert_eq!(old.user().await.status(), 401);
    assert_eq!(browser.user().await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_can_log_in_at_once() {
    let app = spawn_app().await;
    let browser = app.browser();
    let tab1 = browser.start_login(Some("/one")).await;
    let tab2 = browser.start_login(Some("/two")).await;
    let cb1 = browser.sign_in_at_provider(&location(&tab1), "dave").await;
    let cb2 = browser.sign_in_at_provider(&location(&tab2), "dave").await;

    let (r2, r1) = tokio::join!(browser.get(&cb2), browser.get(&cb1));

    assert_eq!(r1.status(), 302);
    assert_eq!(location(&r1), "/one");
    assert_eq!(r2.status(), 302);
    assert_eq!(location(&r2), "/two");
    assert_eq!(browser.user().await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_client_authentication_works_too() {
    let app = crate::helpers::spawn_app_with(crate::helpers::AppOptions {
        auth_method: bff::config::AuthMethod::ClientSecretPost,
        ..Default::default()
    })
    .await;
    let browser = app.browser();
    assert_eq!(browser.login_as("erin").await.status(), 302);
    assert_eq!(browser.user().await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_authenticating_with_an_unregistered_method_gets_an_error_page() {
    // The provider registered the client for client_secret_post; bff is set to basic.
    let app = crate::helpers::spawn_app_with(crate::helpers::AppOptions {
        idp_auth_method: Some(bff::config::AuthMethod::ClientSecretPost),
        ..Default::default()
    })
    .await;
    let browser = app.browser();

    let res = browser.login_as("frank").await;

    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap_or_default().contains("/auth/login"), "a way to try again");
    assert!(browser.cookie("bff").is_none());
}
