use bff::demo::idp::{IdTokenFault, TokenFault};

use support::{location, query_param, spawn_app};

async fn body(res: reqwest::Response) -> String {
    res.text().await.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_without_state_is_refused_with_a_page() {
    let app = spawn_app().await;
    let res = app.browser().get("/auth/callback?code=abc").await;
    assert_eq!(res.status(), 400);
    assert!(res.headers()["content-type"].to_str().unwrap_or_default().starts_with("text/html"));
    assert!(body(res).await.contains("/auth/login"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_state_is_refused() {
    let app = spawn_app().await;
    let res = app.browser().get("/auth/callback?code=abc&state=made-up").await;
    assert_eq!(res.status(), 400);
    assert_eq!(app.token_requests("authorization_code"), 0, "nothing is exchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_callback_is_refused_and_creates_no_second_session() {
    let app = spawn_app().await;
    let browser = app.browser();
    let start = browser.start_login(None).await;
    let callback = browser.sign_in_at_provider(&location(&start), "alice").await;
    assert_eq!(browser.get(&callback).await.status(), 302);
    let first_cookie = browser.cookie("bff");

    let replay = browser.get(&callback).await;

    assert_eq!(replay.status(), 400);
    assert_eq!(app.token_requests("authorization_code"), 1, "the state was consumed, the code not sent again");
    assert_eq!(browser.cookie("bff"), first_cookie);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_in_another_browser_is_refused() {
    let app = spawn_app().await;
    let victim = app.browser();
    let start = victim.start_login(None).await;
    let callback = victim.sign_in_at_provider(&location(&start), "alice").await;

    // An attacker makes the victim's browser complete *their* login, or the reverse: either
    // way the callback arrives without the login cookie of the browser that started it.
    let other = app.browser();
    let res = other.get(&callback).await;

    assert_eq!(res.status(), 400);
    assert!(body(res).await.contains("another browser"));
    assert!(other.cookie("bff").is_none());
    assert_eq!(app.token_requests("authorization_code"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_error_is_shown_as_a_friendly_page() {
    let app = spawn_app().await;
    let browser = app.browser();
    app.idp.controls.set_authorize_error(Some("access_denied"));
    let start = browser.start_login(None).await;
    let back = browser.get(&location(&start)).await;
    assert_eq!(back.status(), 302);
    let callback = location(&back);
    assert_eq!(query_param(&callback, "error").as_deref(), Some("access_denied"));

    let res = browser.get(&callback).await;

    assert_eq!(res.status(), 400);
    let html = body(res).await;
    assert!(html.contains("cancelled or refused"), "{html}");
    assert!(html.contains("href=\"/auth/login\""), "a try-again link");
}

async fn login_with_id_token_fault(fault: IdTokenFault) -> (reqwest::Response, support::TestApp) {
    let app = spawn_app().await;
    app.idp.controls.set_id_token_fault(fault);
    let browser = app.browser();
    let res = browser.login_as("mallory").await;
    assert!(browser.cookie("bff").is_none(), "{fault:?}: no session");
    (res, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_tokens_that_fail_validation_are_refused() {
    for fault in [
        IdTokenFault::WrongNonce,
        IdTokenFault::Expired,
        IdTokenFault::BadSignature,
        IdTokenFault::WrongAudience,
        IdTokenFault::WrongIssuer,
        IdTokenFault::ExtraAudienceWithoutAzp,
        IdTokenFault::WrongAtHash,
        IdTokenFault::IssuedInFuture,
    ] {
        let (res, app) = login_with_id_token_fault(fault).await;
        assert_eq!(res.status(), 400, "{fault:?}");
        assert!(app.keys().await.iter().all(|k| !k.ends_with(":tokens")), "{fault:?}: no token set stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_for_several_audiences_is_accepted_when_azp_names_us() {
    let app = spawn_app().await;
    app.idp.controls.set_id_token_fault(IdTokenFault::ExtraAudienceWithAzp);
    let browser = app.browser();
    assert_eq!(browser.login_as("alice").await.status(), 302);
    assert_eq!(browser.user().await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_response_that_is_not_bearer_is_refused() {
    let app = spawn_app().await;
    app.idp.controls.set_token_fault(TokenFault::NotBearer);
    let browser = app.browser();
    assert_eq!(browser.login_as("alice").await.status(), 400);
    assert!(browser.cookie("bff").is_none(), "no session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_the_provider_rejects_is_a_400() {
    let app = spawn_app().await;
    app.idp.controls.set_token_fault(TokenFault::InvalidGrant);
    let res = app.browser().login_as("alice").await;
    assert_eq!(res.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_silent_provider_during_the_exchange_is_a_502() {
    for fault in [TokenFault::Unavailable, TokenFault::Hang] {
        let app = spawn_app().await;
        app.idp.controls.set_token_fault(fault);
        let res = app.browser().login_as("alice").await;
        assert_eq!(res.status(), 502, "{fault:?}");
        assert!(body(res).await.contains("could not be reached"));
    }
}
