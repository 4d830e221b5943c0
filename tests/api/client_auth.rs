//! `private_key_jwt` client authentication (RFC 7523, `oidc.auth_method = "private_key_jwt"`)
//! against the demo provider, which checks each assertion's signature, claims and `jti`.

use std::time::Duration;

use bff::client_keys::ClientKeys;
use bff::config::{AssertionAudience, AuthMethod};
use bff::demo::idp::Quirks;
use reqwest::Method;
use support::{AppOptions, TestApp, client_key_fixtures, spawn_app_with, spawn_instance_with};

use crate::providers::{instance_after, login_here};

fn keys(names: &[&str]) -> ClientKeys {
    let pems: Vec<String> =
        client_key_fixtures(names).iter().map(|p| std::fs::read_to_string(p).expect("fixture")).collect();
    ClientKeys::parse(&pems.iter().map(String::as_str).collect::<Vec<_>>()).expect("keys")
}

fn assertions(app: &TestApp) -> u64 {
    app.idp.provider.counters.client_assertions.load(std::sync::atomic::Ordering::SeqCst)
}

fn options(key: &'static str) -> AppOptions {
    AppOptions { auth_method: AuthMethod::PrivateKeyJwt, client_keys: vec![key], ..AppOptions::short_lived_tokens() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_pushes_signs_in_refreshes_and_revokes_without_a_secret() {
    for key in ["client-ec.pem", "client-rsa.pem"] {
        let app = spawn_app_with(options(key)).await;
        let browser = instance_after(&app, Quirks { par_offered: true, ..Quirks::default() }, |_| {}).await;
        assert_eq!(login_here(&browser).await.status(), 302, "{key}: signed in");
        assert_eq!(app.token_requests("par"), 1);
        let res = browser.api(Method::GET, "/api/echo").await;
        assert_eq!(res.status(), 200);
        app.make_refresh_due(support::token_expiry(&res), support::SHORT_SKEW_SECS);
        assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
        assert_eq!(app.token_requests("refresh_token"), 1);
        assert_eq!(browser.logout().await.status(), 303);
        assert_eq!(app.token_requests("revocation"), 1);
        assert_eq!(assertions(&app), 4, "{key}: the push, the code, the refresh and the revocation each carried one");
        let published: serde_json::Value = browser.get("/.well-known/jwks.json").await.json().await.expect("jwks");
        assert_eq!(published, keys(&[key]).jwks(), "the public key, nothing else");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_provider_does_not_know_is_refused_and_said_so() {
    let app = spawn_app_with(options("client-ec.pem")).await;
    // The provider knows another key.
    app.idp.controls.set_client_jwks(&keys(&["client-ec-next.pem"]).jwks());
    let browser = app.browser();
    let callback = browser.login_as("alice").await;
    assert_ne!(callback.status(), 302, "no sign-in");
    assert_eq!(browser.user().await.status(), 401);
    assert_eq!(assertions(&app), 0);
    // An assertion is good once: the provider refuses a replayed jti.
    let jwt =
        keys(&["client-ec.pem"]).assertion(&app.config.oidc.client_id, &app.idp.issuer, &[], bff::session::now_unix());
    app.idp.controls.set_client_jwks(&keys(&["client-ec.pem"]).jwks());
    let http = reqwest::Client::new();
    let post = || {
        let form = [
            ("grant_type", "client_credentials".to_string()),
            ("client_id", app.config.oidc.client_id.clone()),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()),
            ("client_assertion", jwt.clone().expect("assertion")),
        ];
        http.post(format!("{}/token", app.idp.issuer)).form(&form).send()
    };
    assert_eq!(post().await.expect("token").status(), 200);
    assert_eq!(post().await.expect("token").status(), 401, "replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_key_is_rolled_out_without_logging_anyone_out() {
    let app = spawn_app_with(AppOptions { access_token_ttl: Duration::from_secs(4), ..options("client-ec.pem") }).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    // 1. The provider is given both keys; a new instance signs with the new one and still
    //    publishes the old.
    app.idp.controls.set_client_jwks(&keys(&["client-ec-next.pem", "client-ec.pem"]).jwks());
    let rolled =
        spawn_instance_with(&app, |c| c.oidc.client_keys = Some(keys(&["client-ec-next.pem", "client-ec.pem"]))).await;
    let b = browser.at(&rolled);
    let res = b.api(Method::GET, "/api/echo").await;
    app.make_refresh_due(support::token_expiry(&res), support::SHORT_SKEW_SECS);
    assert_eq!(b.api(Method::GET, "/api/echo").await.status(), 200, "refreshed with the new key");
    let published: serde_json::Value = b.get("/.well-known/jwks.json").await.json().await.expect("jwks");
    assert_eq!(published["keys"].as_array().map(Vec::len), Some(2));
    // 2. The old key is dropped at the provider: the new instance's session goes on.
    app.idp.controls.set_client_jwks(&keys(&["client-ec-next.pem"]).jwks());
    let res = b.api(Method::GET, "/api/echo").await;
    app.make_refresh_due(support::token_expiry(&res), support::SHORT_SKEW_SECS);
    assert_eq!(b.api(Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(app.token_requests("refresh_token"), 2);
    assert_eq!(b.user().await.status(), 200, "nobody was signed out");
}

/// A provider that takes only the receiving endpoint's URL as an assertion's `aud` (Glewlwyd):
/// the default (the issuer) is refused; `client_assertion_audience = "endpoint"` pushes, signs
/// in, refreshes and revokes, each assertion naming the endpoint it is sent to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_only_provider_takes_endpoint_audiences() {
    let app = spawn_app_with(options("client-ec.pem")).await;
    let endpoint_only = Quirks { assertion_aud_endpoint_only: true, ..Quirks::default() };
    app.idp.controls.set_quirks(endpoint_only);
    let browser = app.browser();
    assert_ne!(browser.login_as("alice").await.status(), 302, "the issuer as aud is refused");
    assert_eq!(browser.user().await.status(), 401);
    assert_eq!(assertions(&app), 0);

    let browser = instance_after(&app, Quirks { par_offered: true, ..endpoint_only }, |c| {
        c.oidc.client_assertion_audience = AssertionAudience::Endpoint;
    })
    .await;
    assert_eq!(login_here(&browser).await.status(), 302, "signed in");
    assert_eq!(app.token_requests("par"), 1);
    let res = browser.api(Method::GET, "/api/echo").await;
    assert_eq!(res.status(), 200);
    app.make_refresh_due(support::token_expiry(&res), support::SHORT_SKEW_SECS);
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(app.token_requests("refresh_token"), 1);
    assert_eq!(browser.logout().await.status(), 303);
    assert_eq!(app.token_requests("revocation"), 1);
    assert_eq!(assertions(&app), 4, "the push, the code, the refresh and the revocation");
}

/// A provider that registered the client's key under the operator's own `kid` refuses
/// assertions that name the thumbprint; `client_key_id` sends (and publishes) that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_registered_under_its_own_kid_needs_client_key_id() {
    let app = spawn_app_with(options("client-ec.pem")).await;
    let mut registered = keys(&["client-ec.pem"]).jwks();
    registered["keys"][0]["kid"] = "ops-key-1".into();
    app.idp.controls.set_client_jwks(&registered);
    let browser = app.browser();
    assert_ne!(browser.login_as("alice").await.status(), 302, "the thumbprint names no key the provider knows");
    assert_eq!(assertions(&app), 0);

    let browser = instance_after(&app, Quirks::default(), |c| {
        c.oidc.client_keys = keys(&["client-ec.pem"]).with_signing_kid("ops-key-1").ok();
        c.oidc.client_key_id = Some("ops-key-1".into());
    })
    .await;
    assert_eq!(login_here(&browser).await.status(), 302, "signed in");
    assert_eq!(assertions(&app), 1);
    let published: serde_json::Value = browser.get("/.well-known/jwks.json").await.json().await.expect("jwks");
    assert_eq!(published, registered, "the key under the kid the provider knows it by");
}

/// Key files may be a private JWK or a JWK Set (one private key): their `kid` is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwk_and_jwks_key_files_sign_in_under_their_own_kid() {
    for (file, kid) in [("client-ec.jwk.json", "ops-ec-1"), ("client-rsa.jwks.json", "ops-rsa-1")] {
        let app = spawn_app_with(options(file)).await;
        let browser = app.browser();
        assert_eq!(browser.login_as("alice").await.status(), 302, "{file}: signed in");
        assert_eq!(assertions(&app), 1);
        let published: serde_json::Value = browser.get("/.well-known/jwks.json").await.json().await.expect("jwks");
        assert_eq!(published["keys"][0]["kid"], kid);
        assert!(published["keys"][0].get("d").is_none(), "{file}: never the private part");
    }
}

/// With DPoP and provider nonces, a token request is sent twice; the second one's assertion is
/// made afresh (a `jti` is good once) for the same endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_audiences_survive_the_dpop_nonce_retry() {
    let app = spawn_app_with(AppOptions {
        tweak: std::sync::Arc::new(|c: &mut bff::config::Config| {
            c.oidc.dpop = true;
            c.oidc.client_assertion_audience = AssertionAudience::Endpoint;
        }),
        ..options("client-rsa.pem")
    })
    .await;
    app.idp.controls.set_quirks(Quirks { assertion_aud_endpoint_only: true, ..Quirks::default() });
    app.idp.controls.require_dpop_nonce(true);
    let browser = app.browser();
    assert_eq!(browser.login_as("alice").await.status(), 302);
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(assertions(&app), 2, "the first request's assertion (refused for its proof) and the retry's");
}
