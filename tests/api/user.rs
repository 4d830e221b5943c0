use support::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_needs_the_csrf_header() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;

    let without = browser.get("/auth/user").await;
    assert_eq!(without.status(), 403);
    assert_eq!(without.json::<serde_json::Value>().await.ok(), Some(serde_json::json!({"error": "csrf"})));

    let wrong = browser.send(browser.request(reqwest::Method::GET, "/auth/user").header("x-csrf", "yes")).await;
    assert_eq!(wrong.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_without_a_session_is_401_json() {
    let app = spawn_app().await;
    let res = app.browser().user().await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert_eq!(res.json::<serde_json::Value>().await.ok(), Some(serde_json::json!({"error": "login_required"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_shows_claims_and_session_but_never_a_token() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;

    let res = browser.user().await;

    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let text = res.text().await.expect("body");
    let body: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["sub"], "demo|alice");
    assert_eq!(body["claims"]["preferred_username"], "alice");
    assert!(body["claims"].get("nonce").is_none());
    assert_eq!(body["session"]["sid"].as_str().map(str::len), Some(22));
    let now = bff::session::now_unix();
    let expires = body["session"]["expires_at"].as_u64().expect("expires_at");
    assert!(expires > now + 86_000 && expires <= now + 86_400);
    assert!(body["access_token_expires_at"].as_u64().is_some_and(|t| t > now));
    for token in app.idp.provider.issued_tokens() {
        assert!(!text.contains(&token), "a token reached the browser");
    }
}
