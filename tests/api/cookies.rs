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
async fn under_https_the_cookie_is_host_prefixed_and_secure() {
    let app = spawn_app_with(AppOptions { https: true, extra_toml: String::new(), ..Default::default() }).await;
    let res = app.browser().start_login(None).await;
    let login = session_set_cookie(&res, "__Host-bff-login");
    assert_eq!(login.secure(), Some(true));
    assert_eq!(login.path(), Some("/"));
    assert!(login.domain().is_none());
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
