use actix_web::cookie::{Cookie, SameSite};

use support::{AppOptions, Browser, spawn_app, spawn_app_with};

fn session_set_cookie(res: &reqwest::Response, name: &str) -> Cookie<'static> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| Cookie::parse(v.to_string()).ok())
        .find(|c| c.name() == name)
        .unwrap_or_else(|| panic!("a {name} cookie is set"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_under_http_is_httponly_lax_path_root_and_not_secure() {
    let app = spawn_app().await;
    let res = app.browser().login_as("alice").await;
    let c = session_set_cookie(&res, "bff");
    assert_eq!(c.http_only(), Some(true));
    assert_ne!(c.secure(), Some(true));
    assert_eq!(c.same_site(), Some(SameSite::Lax));
    assert_eq!(c.path(), Some("/"));
    assert!(c.domain().is_none());
    assert_eq!(c.max_age().map(|a| a.whole_seconds()), Some(86_400));
    assert!(c.value().len() > 43, "the value is sealed, not the bare id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_https_the_cookie_is_host_http_prefixed_and_secure() {
    let app = spawn_app_with(AppOptions { https: true, extra_toml: String::new(), ..Default::default() }).await;
    let browser = app.browser();
    let res = browser.start_login(None).await;
    let login = session_set_cookie(&res, "__Host-Http-bff-login");
    assert_eq!(login.secure(), Some(true));
    assert_eq!(login.path(), Some("/"));
    assert!(login.domain().is_none());
    let callback = browser.sign_in_at_provider(&support::location(&res), "alice").await;
    // The provider sends the browser to the https public URL; the test's listener is plain http.
    let session = session_set_cookie(&browser.get(&callback.replace("https://", "http://")).await, "__Host-Http-bff");
    assert_eq!((session.secure(), session.http_only(), session.path()), (Some(true), Some(true), Some("/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_named_as_before_the_prefix_keeps_its_session_and_is_renamed() {
    // An instance as bff was before `session.cookie_prefix`: its cookie is `__Host-bff`.
    let before = spawn_app_with(AppOptions {
        https: true,
        tweak: std::sync::Arc::new(|c: &mut bff::config::Config| {
            c.session.cookie_name = "__Host-bff".into();
            c.session.cookie_legacy_name = None;
        }),
        ..Default::default()
    })
    .await;
    let browser = before.browser();
    let start = browser.start_login(None).await;
    let callback = browser.sign_in_at_provider(&support::location(&start), "alice").await;
    browser.get(&callback.replace("https://", "http://")).await;
    let old = browser.cookie("__Host-bff").expect("the old cookie");
    // The upgraded instance (same store and secret) takes it, at the proxy and at /auth.
    let after = support::spawn_instance_with(&before, |c| {
        c.session.cookie_name = "__Host-Http-bff".into();
        c.session.cookie_legacy_name = Some("__Host-bff".into());
    })
    .await;
    let upgraded = browser.at(&after);
    assert_eq!(upgraded.api(reqwest::Method::GET, "/api/hello").await.status(), 200, "no one is signed out");
    let res = upgraded.user().await;
    assert_eq!(res.status(), 200);
    let renamed = session_set_cookie(&res, "__Host-Http-bff");
    assert!(!renamed.value().is_empty());
    let cleared = session_set_cookie(&res, "__Host-bff");
    assert_eq!(cleared.value(), "");
    assert!(upgraded.cookie("__Host-bff").is_none(), "the browser drops the old one");
    assert_ne!(upgraded.cookie("__Host-Http-bff"), Some(old));
    assert_eq!(upgraded.user().await.status(), 200, "under its new name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_same_site_is_honoured_but_the_login_cookie_stays_lax() {
    let app = spawn_app_with(AppOptions { same_site: "strict", ..Default::default() }).await;
    let browser = app.browser();
    let start = browser.start_login(None).await;
    // The callback is a cross-site navigation from the provider: Strict would lose the binding.
    assert_eq!(session_set_cookie(&start, "bff-login").same_site(), Some(SameSite::Lax));
    let callback = browser.sign_in_at_provider(&support::location(&start), "alice").await;
    let res = browser.get(&callback).await;
    assert_eq!(session_set_cookie(&res, "bff").same_site(), Some(SameSite::Strict));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_foreign_cookies_are_not_sessions() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let good = browser.cookie("bff").expect("session");

    let mut tampered = good.clone().into_bytes();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let forger = Browser::new(&app.address);
    forger.set_cookie("bff", std::str::from_utf8(&tampered).unwrap_or("x"));
    assert_eq!(forger.user().await.status(), 401);
    assert_eq!(forger.api(reqwest::Method::GET, "/api/echo").await.status(), 401);

    // Sealed by another deployment, with another secret.
    let other =
        spawn_app_with(AppOptions { secret: "another-deployment-secret-".repeat(3), ..Default::default() }).await;
    let other_browser = other.browser();
    other_browser.login_as("alice").await;
    let foreign = Browser::new(&app.address);
    foreign.set_cookie("bff", &other_browser.cookie("bff").expect("cookie"));
    assert_eq!(foreign.user().await.status(), 401);
    assert_eq!(foreign.api(reqwest::Method::GET, "/api/echo").await.status(), 401);

    let junk = Browser::new(&app.address);
    junk.set_cookie("bff", "bm90IGEgY29va2ll");
    assert_eq!(junk.user().await.status(), 401);
    assert_eq!(browser.user().await.status(), 200, "the real session is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_cookie_missing_from_the_callback_still_has_its_session_replaced() {
    let app = spawn_app_with(AppOptions { same_site: "strict", ..Default::default() }).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let first = browser.cookie("bff").expect("a session");
    // Signing in again: `/auth/login` is same-site (the cookie comes), the provider's redirect
    // back is cross-site (a Strict cookie stays behind; only the Lax login cookie comes).
    let start = browser.start_login(None).await;
    let callback = browser.sign_in_at_provider(&support::location(&start), "alice").await;
    let login_cookie = browser.cookie("bff-login").expect("the login cookie");
    let res = browser
        .http
        .get(&callback)
        .header("cookie", format!("bff-login={login_cookie}"))
        .send()
        .await
        .expect("callback");
    assert_eq!(res.status(), 302, "signed in");
    let second = session_set_cookie(&res, "bff");
    assert_ne!(second.value(), first);
    // The session the browser had is over: its cookie no longer works anywhere.
    let old = Browser::new(&app.address);
    old.set_cookie("bff", &first);
    support::eventually("the replaced session ends", std::time::Duration::from_secs(5), || {
        let old = old.clone();
        async move { old.user().await.status() == 401 }
    })
    .await;
}
