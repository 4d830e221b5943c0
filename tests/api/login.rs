use std::collections::HashSet;

use support::{Browser, location, query_param, spawn_app};

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
    let keys_of_one_session = app.keys().await.len();

    assert_eq!(browser.login_as("carol").await.status(), 302);
    let second = browser.cookie("bff").expect("session cookie");

    assert_ne!(first, second);
    assert_eq!(app.keys().await.len(), keys_of_one_session, "the replaced session left nothing behind");
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
    let app = support::spawn_app_with(support::AppOptions {
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
    let app = support::spawn_app_with(support::AppOptions {
        idp_auth_method: Some(bff::config::AuthMethod::ClientSecretPost),
        ..Default::default()
    })
    .await;
    let browser = app.browser();

    let res = browser.login_as("frank").await;

    // bff's own client authentication was refused (invalid_client): a setup problem, not the
    // user's, so 503 rather than the 400 of a refused sign-in.
    assert_eq!(res.status(), 503);
    assert!(res.text().await.unwrap_or_default().contains("/auth/login"), "a way to try again");
    assert!(browser.cookie("bff").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_memory_store_serves_a_whole_session() {
    let app = support::spawn_app_with(support::AppOptions { redis_url: None, ..Default::default() }).await;
    let browser = app.browser();
    assert_eq!(browser.login_as("gina").await.status(), 302);
    assert_eq!(browser.user().await.status(), 200);
    assert_eq!(browser.api(reqwest::Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(browser.logout().await.status(), 303);
    assert_eq!(browser.user().await.status(), 401);
    assert!(app.keys().await.is_empty(), "nothing went to Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bff_starts_before_its_provider_and_becomes_ready_when_it_appears() {
    // The provider's port is reserved but nobody answers yet.
    let idp_listener = support::listener();
    let idp_port = idp_listener.local_addr().expect("addr").port();
    drop(idp_listener);
    let app_listener = support::listener();
    let port = app_listener.local_addr().expect("addr").port();
    let public_url = format!("http://127.0.0.1:{port}");
    let options = support::AppOptions::default();
    let toml = support::config_toml(
        &public_url,
        &format!("http://127.0.0.1:{idp_port}"),
        "http://127.0.0.1:9",
        &format!("bfftest:{}:", support::random_id()),
        &options,
    );
    let config = bff::config::Config::from_toml(&toml).expect("config");
    let app = bff::Application::build(config, app_listener).await.expect("starts without its provider");
    tokio::spawn(app.run_until_stopped());
    let browser = Browser::new(&public_url);
    assert_eq!(browser.get("/readyz").await.status(), 503);
    assert_eq!(browser.get("/healthz").await.status(), 200);
    assert_eq!(browser.start_login(None).await.status(), 503, "no login without provider metadata");

    let config = bff::demo::idp::IdpConfig {
        clients: vec![bff::demo::idp::Client {
            client_id: support::CLIENT_ID.into(),
            client_secret: support::CLIENT_SECRET.into(),
            auth_method: bff::config::AuthMethod::ClientSecretBasic,
            redirect_uris: vec![format!("{public_url}/auth/callback")],
            post_logout_redirect_uris: vec![],
            backchannel_logout_uri: None,
            frontchannel_logout_uri: None,
        }],
        access_token_ttl: std::time::Duration::from_secs(300),
        api_audience: "demo-api".into(),
        templates_dir: "templates".into(),
    };
    let listener = std::net::TcpListener::bind(("127.0.0.1", idp_port)).expect("the reserved port is free again");
    let (_idp, server) = bff::demo::idp::start(config, listener).expect("idp");
    tokio::spawn(server);

    let b = browser.clone();
    support::eventually("ready once the provider answers", std::time::Duration::from_secs(15), || {
        let b = b.clone();
        async move { b.get("/readyz").await.status() == 200 }
    })
    .await;
    assert_eq!(browser.login_as("hank").await.status(), 302);
}
