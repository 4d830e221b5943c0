//! Sign-in options (`prompt`, `max_age`, `acr_values`, `login_hint`, `ui_locales`) and silent
//! sign-in, through real HTTP against the demo provider, which keeps its own sign-in session in
//! the browser for `prompt=none` and reports `acr`, `amr` and `auth_time`.

use bff::demo::idp::{ACR_PASSWORD, ACR_SECOND_FACTOR};
use reqwest::StatusCode;
use serde_json::Value;
use support::{AppOptions, Browser, location, metric, query_param, spawn_app, spawn_app_with, urlencode};

/// The provider's login form posted; the callback URL and the provider's session cookie.
async fn sign_in_at_provider(browser: &Browser, authorize_url: &str, second_factor: bool) -> (String, String) {
    let (callback, provider_session) = browser.sign_in_at_provider_with(authorize_url, "alice", second_factor).await;
    (callback, provider_session.expect("the provider remembers the sign-in"))
}

async fn user_json(browser: &Browser) -> Value {
    let res = browser.user().await;
    assert_eq!(res.status(), 200, "signed in");
    res.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_reach_the_provider_and_the_id_token_is_checked_against_them() {
    let app = spawn_app().await;
    let browser = app.browser();
    let start =
        browser.get(&format!("/auth/login?prompt=login&max_age=300&acr_values={}", urlencode(ACR_SECOND_FACTOR))).await;
    assert_eq!(start.status(), 302);
    let authorize = location(&start);
    assert_eq!(query_param(&authorize, "prompt").as_deref(), Some("login"));
    assert_eq!(query_param(&authorize, "max_age").as_deref(), Some("300"));
    assert_eq!(query_param(&authorize, "acr_values").as_deref(), Some(ACR_SECOND_FACTOR));
    let (callback, _) = sign_in_at_provider(&browser, &authorize, true).await;
    let done = browser.get(&callback).await;
    assert_eq!(done.status(), 302, "signed in");
    let user = user_json(&browser).await;
    assert_eq!(user["acr"], ACR_SECOND_FACTOR);
    assert_eq!(user["amr"], serde_json::json!(["pwd", "otp"]));
    assert!(user["auth_time"].as_u64().is_some_and(|t| t + 60 >= bff::session::now_unix()), "{user}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weaker_authentication_than_asked_is_refused_and_starts_no_session() {
    let app = spawn_app().await;
    let browser = app.browser();
    let start = browser.get(&format!("/auth/login?acr_values={}", urlencode(ACR_SECOND_FACTOR))).await;
    // The user signs in without the second factor: the provider says so in `acr`.
    let (callback, _) = sign_in_at_provider(&browser, &location(&start), false).await;
    let refused = browser.get(&callback).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let page = refused.text().await.expect("page");
    assert!(page.contains("did not confirm the sign-in this application asked for"), "{page}");
    assert_eq!(browser.user().await.status(), 401, "no session");
    // Without asking, the same sign-in is fine, and reported as it was.
    browser.login_as("alice").await;
    assert_eq!(user_json(&browser).await["acr"], ACR_PASSWORD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_the_configuration_does_not_allow_or_that_are_no_values_are_400() {
    let app = spawn_app().await;
    let browser = app.browser();
    for query in [
        "login_hint=alice",
        "ui_locales=fr",
        "prompt=sudo",
        "prompt=none%20login",
        "max_age=soon",
        "acr_values=%22quoted%22",
    ] {
        let res = browser
            .send(browser.request(reqwest::Method::GET, &format!("/auth/login?{query}")).header("x-csrf", "1"))
            .await;
        assert_eq!(res.status(), 400, "{query}");
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["error"], "invalid_login_parameter", "{query}");
    }
    // What an operator allows goes through.
    let app = spawn_app_with(AppOptions {
        extra_toml: String::new(),
        tweak: std::sync::Arc::new(|c: &mut bff::config::Config| {
            c.oidc.login_params = bff::login_options::LoginParam::ALL.to_vec();
        }),
        ..Default::default()
    })
    .await;
    let start = app.browser().get("/auth/login?login_hint=alice%40example.com&ui_locales=fr-CA%20en").await;
    assert_eq!(start.status(), 302);
    let authorize = location(&start);
    assert_eq!(query_param(&authorize, "login_hint").as_deref(), Some("alice@example.com"));
    assert_eq!(query_param(&authorize, "ui_locales").as_deref(), Some("fr-CA en"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_silent_sign_in_goes_back_to_the_spa_with_the_code_and_keeps_the_session() {
    let app = spawn_app().await;
    let browser = app.browser();
    let start = browser.get(&format!("/auth/login?prompt=none&return_to={}", urlencode("/orders?tab=2#top"))).await;
    let authorize = location(&start);
    assert_eq!(query_param(&authorize, "prompt").as_deref(), Some("none"));
    // No provider session: the provider answers `login_required`, and bff sends the browser
    // back to the SPA, never to an error page.
    let answer = browser.get(&authorize).await;
    assert_eq!(answer.status(), 302);
    let back = browser.get(&location(&answer)).await;
    assert_eq!(back.status(), 302);
    assert_eq!(location(&back), "/orders?tab=2&error=login_required#top");
    assert_eq!(browser.user().await.status(), 401);
    assert!(
        metric(&app.address, "bff_auth_events_total{event=\"silent_login_declined\",frontend=\"default\"}").await
            >= 1.0
    );

    // Signed in, a declined silent sign-in leaves the session as it was.
    browser.login_as("alice").await;
    let before = user_json(&browser).await;
    let start = browser.get("/auth/login?prompt=none").await;
    let answer = browser.get(&location(&start)).await;
    let back = browser.get(&location(&answer)).await;
    assert_eq!(location(&back), "/?error=login_required");
    assert_eq!(user_json(&browser).await["session"], before["session"], "the session is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_sign_in_with_a_provider_session_signs_in_without_a_page() {
    let app = spawn_app().await;
    let browser = app.browser();
    let start = browser.get("/auth/login").await;
    let (callback, provider_session) = sign_in_at_provider(&browser, &location(&start), false).await;
    browser.get(&callback).await;
    let first = user_json(&browser).await;
    // The SPA's session is gone (another tab signed out, say); the provider still knows the user.
    browser.logout().await;
    assert_eq!(browser.user().await.status(), 401);
    let start = browser.get("/auth/login?prompt=none&return_to=/after").await;
    let authorize = location(&start);
    let answer = browser.send(browser.http.get(&authorize).header("cookie", &provider_session)).await;
    assert_eq!(answer.status(), 302, "no page: a code straight away");
    let code_url = location(&answer);
    assert!(query_param(&code_url, "code").is_some(), "{code_url}");
    let done = browser.get(&code_url).await;
    assert_eq!(location(&done), "/after");
    let second = user_json(&browser).await;
    assert_eq!(second["sub"], first["sub"]);
    assert_ne!(second["session"]["sid"], first["session"]["sid"], "a new session");

    // A silent sign-in that asks for more than the provider's session has is declined, not a page.
    let start = browser.get(&format!("/auth/login?prompt=none&acr_values={}", urlencode(ACR_SECOND_FACTOR))).await;
    let answer = browser.send(browser.http.get(location(&start)).header("cookie", &provider_session)).await;
    let back = browser.get(&location(&answer)).await;
    assert_eq!(location(&back), "/?error=login_required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_par_the_options_travel_in_the_pushed_request() {
    let app = spawn_app().await;
    // An instance started after the provider requires pushed requests (it reads that at discovery).
    let quirks = bff::demo::idp::Quirks { par_required: true, ..bff::demo::idp::Quirks::NONE };
    let browser = crate::providers::instance_after(&app, quirks, |_| {}).await;
    let start = browser.get("/auth/login?prompt=none").await;
    assert_eq!(start.status(), 302);
    let authorize = location(&start);
    assert!(query_param(&authorize, "request_uri").is_some(), "{authorize}");
    assert_eq!(query_param(&authorize, "prompt"), None, "only the reference in the browser's URL");
    // The provider read `prompt=none` from the pushed request: no page, `login_required`.
    let answer = browser.get(&authorize).await;
    assert_eq!(answer.status(), 302);
    assert_eq!(query_param(&location(&answer), "error").as_deref(), Some("login_required"));
}
