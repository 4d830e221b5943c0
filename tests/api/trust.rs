//! Trust boundaries (issue 23): client routes end with the user's grant, headers an upstream may
//! trust never come from the browser, addresses behind proxies are read one way, back-channel
//! logout by subject, and upstream answers that would change the SPA's security.

use bff::config::{ApiConfig, TokenPolicy};
use bff::demo::idp::Quirks;
use reqwest::Method;
use support::{Browser, TestApp, spawn_app, spawn_app_with, spawn_instance_with};

/// An instance with a `/m2m` route carrying bff's own token.
async fn with_client_route(app: &TestApp) -> String {
    let upstream = url::Url::parse(&app.upstream.url).expect("url");
    spawn_instance_with(app, |c| {
        c.api.push(ApiConfig { prefix: "/m2m".into(), upstream, token: TokenPolicy::Client, ..c.api[0].clone() });
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_route_ends_with_the_users_grant() {
    let app = spawn_app_with(support::AppOptions::short_lived_tokens()).await;
    let instance = with_client_route(&app).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);
    let first = b.api(Method::GET, "/api/echo").await;
    assert_eq!(first.status(), 200);
    assert_eq!(b.api(Method::GET, "/m2m/echo").await.status(), 200);
    // The provider ended the grant, and told nobody; the user's token falls due.
    assert_eq!(app.idp.provider.revoke_grants_of("alice"), 1);
    app.make_refresh_due(support::token_expiry(&first), support::SHORT_SKEW_SECS);

    let res = b.api(Method::GET, "/m2m/echo").await;
    assert_eq!(res.status(), 401, "the client route asks the user's grant first");
    assert_eq!(b.api(Method::GET, "/api/echo").await.status(), 401, "and the session is over everywhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_an_upstream_may_trust_never_come_from_the_browser() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let forged = [
        "X-Remote-User",
        "Remote-User",
        "X-Auth-Request-Email",
        "X-Auth-Request-User",
        "X-Amzn-Oidc-Identity",
        "X-Amzn-Oidc-Data",
        "X-Amzn-Oidc-Accesstoken",
        "X-MS-CLIENT-PRINCIPAL-NAME",
        "X-MS-CLIENT-PRINCIPAL-ID",
        "X-Envoy-External-Address",
        "X-Envoy-Original-Path",
        "Fastly-Client-IP",
        "X-Cluster-Client-IP",
        "X-ProxyUser-Ip",
        "Front-End-Https",
        "Via",
        "DPoP",
        "baggage",
        "X-Remote-Group",
        "Akamai-Client-IP",
    ];
    let mut request = browser.request(Method::GET, "/api/echo").header("x-csrf", "1").header("x-kept", "yes");
    for name in forged {
        request = request.header(name, "forged");
    }
    assert_eq!(browser.send(request).await.status(), 200);
    let seen = app.upstream.seen().pop().expect("the call reached the upstream");
    for name in forged {
        assert!(!seen.headers.contains_key(&name.to_ascii_lowercase()), "{name} reached the upstream");
    }
    assert_eq!(seen.headers.get("x-kept").map(String::as_str), Some("yes"), "other headers still go");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_allow_list_only_those_headers_and_bffs_own_cross() {
    let app = spawn_app().await;
    let instance = spawn_instance_with(&app, |c| {
        c.api[0].request_headers_allow = Some(vec!["accept".into(), "x-tenant".into()]);
    })
    .await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);
    let request = b
        .request(Method::POST, "/api/echo")
        .header("x-csrf", "1")
        .header("accept", "application/json")
        .header("x-tenant", "t1")
        .header("x-other", "no")
        .header("content-type", "text/plain")
        .body("hello");
    let res = b.send(request).await;
    assert_eq!(res.status(), 200);
    let echo: serde_json::Value = res.json().await.expect("json");
    assert_eq!(echo["body"], "hello", "the body and its framing still go");
    let seen = app.upstream.seen().pop().expect("seen");
    let mut names: Vec<&str> = seen.headers.keys().map(String::as_str).collect();
    names.sort_unstable();
    for name in &names {
        let allowed = ["accept", "x-tenant", "content-type", "content-length", "host", "authorization", "traceparent"]
            .contains(name)
            || name.starts_with("x-forwarded-")
            || *name == "x-request-id";
        assert!(allowed, "{name} crossed: {names:?}");
    }
    assert!(names.contains(&"x-tenant") && names.contains(&"authorization"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_written_with_a_port_is_read_by_position_for_the_login_limit() {
    let app = spawn_app().await;
    let instance = spawn_instance_with(&app, |c| {
        c.server.trusted_proxy_hops = 1;
        c.server.login_starts_per_minute = 3;
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        // Each start claims another address on the left; the trusted proxy appended the real
        // one with its port, as some cloud load balancers write it.
        let b = Browser::new(&instance);
        let res = b
            .send(
                b.request(Method::GET, "/auth/login")
                    .header("x-forwarded-for", format!("198.51.100.{i}, 203.0.113.10:40000")),
            )
            .await;
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [302, 302, 302, 429, 429, 429], "one client, three starts");
    // What the upstream is told agrees with what the limit read.
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);
    let res = b
        .send(
            b.request(Method::GET, "/api/echo")
                .header("x-csrf", "1")
                .header("x-forwarded-for", "6.6.6.6, [2001:db8::7]:443"),
        )
        .await;
    assert_eq!(res.status(), 200);
    let seen = app.upstream.seen().pop().expect("seen");
    assert_eq!(seen.headers.get("x-forwarded-for").map(String::as_str), Some("2001:db8::7, 127.0.0.1"));
}

/// What the provider's back-channel delivery does; the status.
async fn post_logout_token(app: &TestApp, token: String) -> u16 {
    let res = reqwest::Client::new()
        .post(format!("{}/auth/backchannel-logout", app.address))
        .form(&[("logout_token", token)])
        .send()
        .await
        .expect("post");
    res.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_token_with_a_sid_never_indexed_ends_the_subjects_sessions() {
    let app = spawn_app().await;
    // ID tokens without `sid`: nothing is indexed by provider session.
    app.idp.controls.set_quirks(Quirks { sid_is_sub: true, ..Quirks::default() });
    let (laptop, phone, other) = (app.browser(), app.browser(), app.browser());
    laptop.login_as("alice").await;
    phone.login_as("alice").await;
    other.login_as("bob").await;
    let sub = bff::demo::idp::user_claims("alice").0;
    let token =
        app.idp.provider.logout_token(support::CLIENT_ID, Some(&sub), Some("op-session-unknown")).expect("token");
    assert_eq!(post_logout_token(&app, token).await, 200);
    assert_eq!(laptop.user().await.status(), 401, "the subject's sessions ended");
    assert_eq!(phone.user().await.status(), 401);
    assert_eq!(other.user().await.status(), 200, "another user's session lives");
    let ended =
        support::metric(&app.address, "bff_logout_sessions_ended_total{channel=\"backchannel\",frontend=\"default\"}")
            .await;
    assert_eq!(ended, 2.0, "counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sid_that_names_another_provider_session_leaves_it_alone() {
    let app = spawn_app().await;
    let (laptop, phone) = (app.browser(), app.browser());
    laptop.login_as("alice").await;
    phone.login_as("alice").await;
    let sub = bff::demo::idp::user_claims("alice").0;
    // Both sessions carry their own sid; a logout token for a third, unknown one ends neither.
    let token =
        app.idp.provider.logout_token(support::CLIENT_ID, Some(&sub), Some("op-session-unknown")).expect("token");
    assert_eq!(post_logout_token(&app, token).await, 200);
    assert_eq!(laptop.user().await.status(), 200);
    assert_eq!(phone.user().await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answers_cannot_change_the_spas_security() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let res = browser.api(Method::GET, "/api/security-headers").await;
    assert_eq!(res.status(), 200);
    let headers = res.headers();
    assert!(headers.get("set-cookie").is_none());
    assert!(headers.get("clear-site-data").is_none());
    assert_eq!(headers.get("x-content-type-options").and_then(|v| v.to_str().ok()), Some("nosniff"));
    assert_eq!(headers.get("x-upstream-kept").and_then(|v| v.to_str().ok()), Some("1"));

    // A route that also drops the upstream's CSP.
    let instance = spawn_instance_with(&app, |c| {
        c.api[0].response_headers_drop =
            vec!["set-cookie".into(), "clear-site-data".into(), "content-security-policy".into()];
    })
    .await;
    let res = browser.at(&instance).api(Method::GET, "/api/security-headers").await;
    let csp = res.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(!csp.contains("default-src *"), "the upstream's CSP was dropped (bff's own stays): {csp}");
}
