use support::{location, query_param, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_deletes_everything_and_redirects_to_end_session() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    assert!(!app.keys().await.is_empty());
    let refresh_tokens: Vec<String> =
        app.idp.provider.issued_tokens().into_iter().filter(|t| !t.contains('.')).collect();
    assert_eq!(refresh_tokens.len(), 1);

    let res = browser.logout().await;

    assert_eq!(res.status(), 303);
    let target = location(&res);
    assert!(target.starts_with(&format!("{}/end_session?", app.idp.issuer)), "{target}");
    let hint = query_param(&target, "id_token_hint").expect("id_token_hint");
    assert_eq!(hint.split('.').count(), 3);
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
