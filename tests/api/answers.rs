//! bff's own answers to what no route takes: a method a route does not take is 405
//! `method_not_allowed` with that route's `Allow`, an unknown path under `/auth` is 404
//! `not_found`, both JSON (a page for a navigation); HEAD is answered as GET where GET only reads.

use reqwest::Method;
use serde_json::{Value, json};

use support::{AppOptions, Browser, spawn_app, spawn_app_with};

/// The status, `Allow` and JSON body of an answer (the body must be JSON).
async fn refusal(res: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = res.status().as_u16();
    let allow = res.headers().get("allow").and_then(|v| v.to_str().ok()).map(String::from);
    let content_type = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(content_type.starts_with("application/json"), "{status}: {content_type}");
    let body = res.json().await.expect("a JSON body");
    (status, allow, body)
}

fn method_not_allowed(allow: &str) -> (u16, Option<String>, Value) {
    (405, Some(allow.to_string()), json!({ "error": "method_not_allowed" }))
}

async fn send(browser: &Browser, method: Method, path: &str) -> reqwest::Response {
    browser.send(browser.request(method, path).header("x-csrf", "1")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_a_route_does_not_take_is_405_json_with_the_routes_own_allow() {
    let app = spawn_app().await;
    let browser = app.browser();
    for (method, path, allow) in [
        (Method::GET, "/auth/logout", "POST"),
        (Method::GET, "/auth/backchannel-logout", "POST"),
        (Method::POST, "/auth/user", "GET, HEAD"),
        (Method::POST, "/auth/login", "GET"),
        (Method::PUT, "/auth/callback", "GET"),
        (Method::DELETE, "/healthz", "GET, HEAD"),
        (Method::POST, "/readyz", "GET, HEAD"),
        (Method::POST, "/metrics", "GET, HEAD"),
        (Method::TRACE, "/auth/user", "GET, HEAD"),
        (Method::TRACE, "/auth/logout", "POST"),
        (Method::TRACE, "/healthz", "GET, HEAD"),
        (Method::TRACE, "/api/echo", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        (Method::TRACE, "/", "GET, HEAD"),
        (Method::POST, "/", "GET, HEAD"),
        (Method::DELETE, "/app.js", "GET, HEAD"),
    ] {
        let res = send(&browser, method.clone(), path).await;
        assert_eq!(refusal(res).await, method_not_allowed(allow), "{method} {path}");
    }
    let res = send(&browser, Method::GET, "/auth/logout").await;
    assert_eq!(res.headers()["cache-control"], "no-store", "an /auth answer like any other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_navigation_with_a_method_the_route_does_not_take_gets_a_page_with_allow() {
    let app = spawn_app().await;
    let browser = app.browser();
    // A form posted to the address of a page.
    let res =
        browser.send(browser.request(Method::POST, "/auth/signed-out").header("sec-fetch-mode", "navigate")).await;
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, HEAD");
    assert!(res.headers()["content-type"].to_str().unwrap_or("").starts_with("text/html"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_path_under_auth_is_404_json_or_a_page_for_a_navigation() {
    let app = spawn_app().await;
    let browser = app.browser();
    for method in [Method::GET, Method::POST, Method::TRACE] {
        let res = send(&browser, method.clone(), "/auth/nope").await;
        assert_eq!(refusal(res).await, (404, None, json!({ "error": "not_found" })), "{method} /auth/nope");
    }
    let res = send(&browser, Method::GET, "/auth").await;
    assert_eq!(refusal(res).await, (404, None, json!({ "error": "not_found" })), "/auth itself");

    let page = browser.send(browser.request(Method::GET, "/auth/nope").header("sec-fetch-mode", "navigate")).await;
    assert_eq!(page.status(), 404);
    assert!(page.headers()["content-type"].to_str().unwrap_or("").starts_with("text/html"));
    assert_eq!(page.headers()["cache-control"], "no-store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spa_still_serves_its_files_and_its_routes_to_navigations() {
    let app = spawn_app().await;
    let browser = app.browser();
    let route = browser.send(browser.request(Method::GET, "/orders/42").header("sec-fetch-mode", "navigate")).await;
    assert_eq!(route.status(), 200, "a client-side route gets index.html");
    assert!(route.text().await.unwrap_or_default().contains("<html"));
    assert_eq!(browser.get("/app.js").await.status(), 200);
    let missing = browser.get("/no-such-file.json").await;
    assert_eq!(refusal(missing).await, (404, None, json!({ "error": "not_found" })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_answered_as_get_without_a_body_where_get_only_reads() {
    let app = spawn_app().await;
    let browser = app.browser();
    for path in ["/healthz", "/readyz", "/metrics", "/auth/signed-out", "/auth/style.css", "/", "/app.js"] {
        let res = browser.send(browser.request(Method::HEAD, path)).await;
        assert_eq!(res.status(), 200, "HEAD {path}");
        assert!(res.bytes().await.unwrap_or_default().is_empty(), "HEAD {path} has no body");
    }
    let user = send(&browser, Method::HEAD, "/auth/user").await;
    assert_eq!(user.status(), 401, "HEAD /auth/user is /auth/user's GET: no session");

    // A GET that acts is not done by a HEAD: no sign-in starts, no callback is consumed.
    for path in ["/auth/login", "/auth/callback?state=x&code=y"] {
        let res = browser.send(browser.request(Method::HEAD, path)).await;
        assert_eq!(res.status(), 405, "HEAD {path}");
        assert_eq!(res.headers()["allow"], "GET");
    }
    assert!(app.keys().await.is_empty(), "nothing was stored: {:?}", app.keys().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_answers_like_the_main_one() {
    let port = support::dead_port();
    let _app = spawn_app_with(AppOptions {
        tweak: std::sync::Arc::new(move |c: &mut bff::config::Config| {
            c.server.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        }),
        ..Default::default()
    })
    .await;
    let metrics = Browser::new(&format!("http://127.0.0.1:{port}"));
    support::eventually("the metrics listener answers", std::time::Duration::from_secs(5), || {
        let m = metrics.clone();
        async move { m.http.get(m.url("/metrics")).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    assert_eq!(
        refusal(metrics.send(metrics.request(Method::POST, "/metrics")).await).await,
        method_not_allowed("GET, HEAD")
    );
    let other = metrics.get("/healthz").await;
    assert_eq!(refusal(other).await, (404, None, json!({ "error": "not_found" })));
}
