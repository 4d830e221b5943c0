use support::{AppOptions, location, query_param, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_deletes_everything_and_redirects_to_end_session() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    assert!(!app.keys().await.is_empty());
    let refresh_tokens: Vec<String> =
        app.idp.provider.issued_tokens().into_iter().filter(|t| !t.contains('.')).collect();
    assert_eq!(refresh_tokens.len(), 1);
    let sid = app.idp.provider.session_of("alice").expect("a provider session");

    let res = browser.logout().await;

    assert_eq!(res.status(), 303);
    let target = location(&res);
    assert!(target.starts_with(&format!("{}/end_session?", app.idp.issuer)), "{target}");
    // `oidc.logout_id_token_hint = true` (the default): the ID token travels in the URL.
    let hint = query_param(&target, "id_token_hint").expect("id_token_hint");
    assert_eq!(hint.split('.').count(), 3);
    assert_eq!(query_param(&target, "logout_hint"), None);
    assert_eq!(query_param(&target, "post_logout_redirect_uri"), Some(format!("{}/", app.address)));
    assert_eq!(app.token_requests("revocation"), 1);
    assert!(!app.idp.provider.refresh_token_active(&refresh_tokens[0]), "the provider revoked the grant");
    assert_eq!(app.keys().await, Vec::<String>::new(), "session, token set and pending logins are gone");
    assert!(browser.cookie("bff").is_none(), "the cookie is cleared");
    assert!(browser.cookie("bff-login").is_none());
    assert_eq!(browser.user().await.status(), 401);

    // The provider's end-session endpoint sends the browser back to us.
    let back = browser.get(&target).await;
    assert_eq!(back.status(), 302);
    assert_eq!(location(&back), format!("{}/", app.address));
    assert!(app.idp.provider.session_ended(&sid), "the provider session ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_without_id_token_hint_sends_client_id_and_the_sid_as_logout_hint() {
    let app = spawn_app_with(AppOptions {
        tweak: std::sync::Arc::new(|c: &mut bff::config::Config| c.oidc.logout_id_token_hint = false),
        ..Default::default()
    })
    .await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let sid = app.idp.provider.session_of("alice").expect("a provider session");

    let res = browser.logout().await;

    assert_eq!(res.status(), 303);
    let target = location(&res);
    assert!(target.starts_with(&format!("{}/end_session?", app.idp.issuer)), "{target}");
    assert_eq!(query_param(&target, "id_token_hint"), None, "no ID token in the browser's URL");
    assert_eq!(query_param(&target, "logout_hint"), Some(sid.clone()));
    assert_eq!(query_param(&target, "client_id"), Some(support::CLIENT_ID.to_string()));
    for token in app.idp.provider.issued_tokens() {
        assert!(!target.contains(&token), "no token of any kind in the URL");
    }
    assert_eq!(app.token_requests("revocation"), 1);
    assert_eq!(browser.user().await.status(), 401);

    // The provider ends its session by the hint and sends the browser back to us.
    let back = browser.get(&target).await;
    assert_eq!(back.status(), 302);
    assert_eq!(location(&back), format!("{}/", app.address));
    assert!(app.idp.provider.session_ended(&sid), "the provider session ended without an ID token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_needs_csrf_or_a_same_origin_form() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;

    let bare = browser.send(browser.request(reqwest::Method::POST, "/auth/logout")).await;
    assert_eq!(bare.status(), 403);
    let cross_site = browser
        .send(browser.request(reqwest::Method::POST, "/auth/logout").header("origin", "https://evil.example"))
        .await;
    assert_eq!(cross_site.status(), 403);
    assert_eq!(browser.user().await.status(), 200, "still signed in");

    let form = browser
        .send(
            browser
                .request(reqwest::Method::POST, "/auth/logout")
                .header("origin", app.address.clone())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(""),
        )
        .await;
    assert_eq!(form.status(), 303);
    assert_eq!(browser.user().await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_without_a_session_still_redirects() {
    let app = spawn_app().await;
    let res = app.browser().logout().await;
    assert_eq!(res.status(), 303);
    assert_eq!(app.token_requests("revocation"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_drops_this_browsers_pending_logins() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let pending = browser.start_login(Some("/later")).await;
    assert!(app.keys().await.iter().any(|k| k.contains(":login:")));

    browser.logout().await;

    assert!(app.keys().await.is_empty(), "{:?}", app.keys().await);
    let callback = browser.sign_in_at_provider(&location(&pending), "alice").await;
    assert_eq!(browser.get(&callback).await.status(), 400);
}
