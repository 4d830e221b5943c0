//! Pushed authorization requests (RFC 9126, `oidc.par`) against the demo provider.

use bff::config::{AuthMethod, ParMode};
use bff::demo::idp::Quirks;
use support::{AppOptions, Browser, TestApp, location, spawn_app, spawn_app_with};

use crate::providers::{instance_after, login_here};

const OFFERED: Quirks = Quirks { par_offered: true, ..no_quirks() };
const REQUIRED: Quirks = Quirks { par_required: true, ..no_quirks() };

const fn no_quirks() -> Quirks {
    Quirks {
        revocation_only_in_rfc8414: false,
        issuer_with_trailing_slash: false,
        iss_in_authorization_response: false,
        par_offered: false,
        par_required: false,
        no_dpop_in_metadata: false,
        frontchannel_only: false,
        sid_is_sub: false,
    }
}

/// The query of where `/auth/login` sends the browser.
async fn authorize_query(browser: &Browser) -> Vec<(String, String)> {
    let start = browser.start_login(None).await;
    assert_eq!(start.status(), 302);
    url::Url::parse(&location(&start)).expect("a URL").query_pairs().into_owned().collect()
}

fn names(query: &[(String, String)]) -> Vec<&str> {
    query.iter().map(|(k, _)| k.as_str()).collect()
}

async fn pushed_and_signed_in(app: &TestApp, browser: &Browser) {
    let before = app.token_requests("par");
    let query = authorize_query(browser).await;
    assert_eq!(names(&query), ["client_id", "request_uri"], "the browser carries a reference only");
    assert!(query[1].1.starts_with("urn:ietf:params:oauth:request_uri:"));
    assert_eq!(app.token_requests("par"), before + 1);
    assert_eq!(login_here(browser).await.status(), 302, "signed in through the pushed request");
    assert_eq!(browser.user().await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_pushes_when_the_provider_offers_it() {
    let app = spawn_app().await;
    let browser = instance_after(&app, OFFERED, |_| {}).await;
    pushed_and_signed_in(&app, &browser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_pushes_with_client_secret_post_too_and_when_the_provider_requires_it() {
    let app = spawn_app_with(AppOptions { auth_method: AuthMethod::ClientSecretPost, ..AppOptions::default() }).await;
    let browser = instance_after(&app, REQUIRED, |_| {}).await;
    pushed_and_signed_in(&app, &browser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_without_an_offer_and_off_send_the_request_in_the_browser() {
    let app = spawn_app().await;
    let query = authorize_query(&app.browser()).await;
    assert!(names(&query).contains(&"code_challenge") && !names(&query).contains(&"request_uri"), "{query:?}");
    let off = instance_after(&app, OFFERED, |c| c.oidc.par = ParMode::Off).await;
    let query = authorize_query(&off).await;
    assert!(names(&query).contains(&"code_challenge") && !names(&query).contains(&"request_uri"), "{query:?}");
    assert_eq!(app.token_requests("par"), 0);
}

/// `/readyz` names the configuration problem; a sign-in cannot start.
async fn misconfigured(browser: &Browser, names_in_problem: &[&str]) {
    let res = browser.get("/readyz").await;
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["identity_provider"], "misconfigured");
    let problem = body["problem"].as_str().unwrap_or_default();
    for name in names_in_problem {
        assert!(problem.contains(name), "{problem}");
    }
    assert_eq!(browser.api(reqwest::Method::GET, "/auth/login").await.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_without_an_offer_and_off_against_a_provider_that_requires_it_are_configuration_errors() {
    let app = spawn_app().await;
    let required = instance_after(&app, no_quirks(), |c| c.oidc.par = ParMode::Required).await;
    misconfigured(&required, &["oidc.par", "pushed_authorization_request_endpoint"]).await;
    let off = instance_after(&app, REQUIRED, |c| c.oidc.par = ParMode::Off).await;
    misconfigured(&off, &["require_pushed_authorization_requests", "oidc.par"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_the_provider_refuses_is_a_503_and_nothing_is_left_pending() {
    // Registered for client_secret_post, bff authenticates with basic: invalid_client.
    let app =
        spawn_app_with(AppOptions { idp_auth_method: Some(AuthMethod::ClientSecretPost), ..AppOptions::default() })
            .await;
    let browser = instance_after(&app, OFFERED, |_| {}).await;
    let res = browser.api(reqwest::Method::GET, "/auth/login").await;
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["error"], "idp_unavailable");
    assert!(app.keys().await.iter().all(|k| !k.contains("login")), "no pending login: {:?}", app.keys().await);
}
