//! Profile claims from the userinfo endpoint (`oidc.userinfo`, OIDC Core §5.3) for providers
//! whose ID tokens carry none: asked once at sign-in, kept with the session.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bff::config::{Config, UserinfoMode};
use bff::demo::idp::{Quirks, UserinfoFault};
use reqwest::Method;
use support::{AppOptions, TestApp, spawn_app, spawn_app_with};

use crate::providers::instance_after;

const PROFILE_IN_USERINFO: Quirks = Quirks { profile_only_in_userinfo: true, ..Quirks::NONE };

fn userinfo_calls(app: &TestApp) -> u64 {
    app.idp.provider.counters.userinfo.load(Ordering::SeqCst)
}

fn with(tweak: impl Fn(&mut Config) + Send + Sync + 'static) -> AppOptions {
    AppOptions { tweak: Arc::new(tweak), ..AppOptions::default() }
}

async fn user(browser: &support::Browser) -> serde_json::Value {
    let res = browser.user().await;
    assert_eq!(res.status(), 200);
    res.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_asks_userinfo_once_at_sign_in_when_the_id_token_lacks_the_profile() {
    let app = spawn_app().await;
    app.idp.controls.set_quirks(PROFILE_IN_USERINFO);
    let browser = app.browser();
    assert_eq!(browser.login_as("alice").await.status(), 302);
    let body = user(&browser).await;
    assert_eq!((body["name"].as_str(), body["email"].as_str()), (Some("Alice"), Some("alice@example.com")));
    assert_eq!(body["claims"]["preferred_username"], "alice");
    assert_eq!(body["sub"], "demo|alice");
    assert_eq!(userinfo_calls(&app), 1, "asked at sign-in");
    user(&browser).await;
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(userinfo_calls(&app), 1, "kept with the session: never asked again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_does_not_ask_when_the_id_token_has_the_claims_and_never_never_asks() {
    let app = spawn_app().await;
    let browser = app.browser();
    assert_eq!(browser.login_as("alice").await.status(), 302);
    assert_eq!(user(&browser).await["email"], "alice@example.com");
    assert_eq!(userinfo_calls(&app), 0);

    let app = spawn_app_with(with(|c| c.oidc.userinfo = UserinfoMode::Never)).await;
    app.idp.controls.set_quirks(PROFILE_IN_USERINFO);
    let browser = app.browser();
    assert_eq!(browser.login_as("alice").await.status(), 302);
    let body = user(&browser).await;
    assert_eq!((body["name"].clone(), body["email"].clone()), (serde_json::Value::Null, serde_json::Value::Null));
    assert_eq!(userinfo_calls(&app), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_asks_even_when_the_id_token_has_the_claims() {
    let app = spawn_app_with(with(|c| c.oidc.userinfo = UserinfoMode::Always)).await;
    let browser = app.browser();
    assert_eq!(browser.login_as("alice").await.status(), 302);
    assert_eq!(userinfo_calls(&app), 1);
    let body = user(&browser).await;
    assert!(body["claims"].get("sid").is_some(), "the ID token's claims stay");
    assert_eq!(body["name"], "Alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_userinfo_answer_about_another_user_refuses_the_sign_in() {
    let app = spawn_app().await;
    app.idp.controls.set_quirks(Quirks { userinfo_other_sub: true, ..PROFILE_IN_USERINFO });
    let browser = app.browser();
    let callback = browser.login_as("alice").await;
    assert_eq!(callback.status(), 400);
    assert!(callback.text().await.unwrap_or_default().contains("could not be accepted"));
    assert_eq!(browser.user().await.status(), 401, "no session");
    assert!(!app.keys().await.iter().any(|k| k.ends_with(":session") || k.ends_with(":tokens")), "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_userinfo_answer_is_verified_and_a_forged_or_unsigned_one_refused() {
    let app = spawn_app().await;
    app.idp.controls.set_quirks(Quirks { userinfo_signed: true, ..PROFILE_IN_USERINFO });
    let browser = app.browser();
    assert_eq!(browser.login_as("alice").await.status(), 302);
    let body = user(&browser).await;
    assert_eq!(body["email"], "alice@example.com");
    assert!(body["claims"].get("aud").is_some_and(|aud| aud == "bff-test"), "the ID token's aud, kept");

    for fault in [UserinfoFault::BadSignature, UserinfoFault::Unsigned] {
        app.idp.controls.set_userinfo_fault(fault);
        let browser = app.browser();
        assert_eq!(browser.login_as("alice").await.status(), 400, "{fault:?}");
        assert_eq!(browser.user().await.status(), 401, "{fault:?}: no session");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dpop_userinfo_is_asked_with_the_bound_token_and_a_proof() {
    let app = spawn_app_with(with(|c| c.oidc.dpop = true)).await;
    app.idp.controls.set_quirks(PROFILE_IN_USERINFO);
    let browser = app.browser();
    assert_eq!(browser.login_as("alice").await.status(), 302);
    assert_eq!(user(&browser).await["name"], "Alice");
    assert_eq!(userinfo_calls(&app), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_userinfo_endpoint_leaves_auto_with_the_id_token_and_fails_always() {
    let app = spawn_app().await;
    app.idp.controls.set_quirks(PROFILE_IN_USERINFO);
    app.idp.controls.set_userinfo_fault(UserinfoFault::Unavailable);
    let browser = app.browser();
    assert_eq!(browser.login_as("alice").await.status(), 302, "auto: signed in all the same");
    let body = user(&browser).await;
    assert_eq!((body["sub"].as_str(), body["email"].as_str()), (Some("demo|alice"), None));

    let app = spawn_app_with(with(|c| c.oidc.userinfo = UserinfoMode::Always)).await;
    app.idp.controls.set_userinfo_fault(UserinfoFault::Unavailable);
    let browser = app.browser();
    assert_eq!(browser.login_as("alice").await.status(), 502, "always: the sign-in needs it");
    assert_eq!(browser.user().await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_against_a_provider_without_a_userinfo_endpoint_is_a_configuration_error() {
    let app = spawn_app().await;
    let quirks = Quirks { no_userinfo_endpoint: true, ..Quirks::NONE };
    let always = instance_after(&app, quirks, |c| c.oidc.userinfo = UserinfoMode::Always).await;
    let res = always.get("/readyz").await;
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["identity_provider"], "misconfigured");
    let problem = body["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("oidc.userinfo") && problem.contains("userinfo_endpoint"), "{problem}");
    let auto = instance_after(&app, quirks, |_| {}).await;
    assert_eq!(auto.get("/readyz").await.status(), 200, "auto asks only a provider that has one");
}
