//! Two frontends in one bff, by host and by path: each signs in through its own provider, keeps
//! its own sessions and cookie, sends its API calls to its own upstream with its own provider's
//! token, and is logged out on its own.

use reqwest::Method;
use reqwest::header::SET_COOKIE;
use serde_json::Value;

use support::frontends::{Layout, Side, TwoFrontends};
use support::{jwt_claims, location};

in_both_layouts!(
    each_frontend_signs_in_through_its_own_provider_with_a_cookie_on_its_path,
    a_session_cookie_of_one_frontend_is_refused_at_the_other,
    api_calls_reach_the_frontends_own_upstream_with_its_own_providers_token,
    logging_out_at_one_frontend_leaves_the_other_signed_in,
    back_channel_logout_from_one_provider_ends_only_that_frontends_session,
    a_logout_token_for_a_user_ends_that_users_sessions_at_its_own_frontend_only,
    a_request_no_frontend_serves_is_not_found,
    metrics_are_labelled_with_the_frontend,
    a_return_to_outside_the_frontend_comes_back_to_the_frontend,
);

/// The `Set-Cookie` of an answer for cookie `name`.
fn set_cookie(res: &reqwest::Response, name: &str) -> actix_web::cookie::Cookie<'static> {
    res.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| actix_web::cookie::Cookie::parse(v.to_string()).ok())
        .find(|c| c.name() == name)
        .unwrap_or_else(|| panic!("a Set-Cookie for {name}: {:?}", res.headers()))
}

/// How many authorization codes a frontend's provider exchanged.
fn codes(side: &Side) -> u64 {
    side.idp.provider.counters.authorization_code.load(std::sync::atomic::Ordering::SeqCst)
}

async fn json(res: reqwest::Response) -> Value {
    res.json().await.expect("a JSON body")
}

async fn each_frontend_signs_in_through_its_own_provider_with_a_cookie_on_its_path(layout: Layout) {
    let app = TwoFrontends::spawn(layout).await;
    let at_one = app.browser(&app.one);
    let at_two = at_one.at(&app.two);

    let callback = at_one.login_as("alice").await;

    assert!(callback.status().is_redirection(), "{}", callback.status());
    let cookie = set_cookie(&callback, "bff-one");
    let expected_path = if layout == Layout::Paths { "/one" } else { "/" };
    assert_eq!(cookie.path(), Some(expected_path), "{cookie}");
    assert_eq!((codes(&app.one), codes(&app.two)), (1, 0), "only provider one was used");
    assert_eq!(at_one.user().await.status(), 200);
    assert_eq!(at_two.user().await.status(), 401, "frontend two has no session yet");

    let callback = at_two.login_as("bob").await;

    assert!(callback.status().is_redirection(), "{}", callback.status());
    let cookie = set_cookie(&callback, "bff-two");
    let expected_path = if layout == Layout::Paths { "/two" } else { "/" };
    assert_eq!(cookie.path(), Some(expected_path), "{cookie}");
    assert_eq!((codes(&app.one), codes(&app.two)), (1, 1), "provider two signed bob in");
    let one = json(at_one.user().await).await;
    let two = json(at_two.user().await).await;
    assert!(one.to_string().contains("alice") && !one.to_string().contains("bob"), "{one}");
    assert!(two.to_string().contains("bob") && !two.to_string().contains("alice"), "{two}");
    // Each frontend's sessions are under keys of its own.
    let keys = app.keys().await;
    for name in ["one", "two"] {
        let own = format!("{}fe:{name}:", app.prefix);
        assert!(keys.iter().any(|k| k.starts_with(&own) && k.ends_with(":session")), "{own} in {keys:?}");
    }
    let outside: Vec<&String> = keys.iter().filter(|k| !k.starts_with(&format!("{}fe:", app.prefix))).collect();
    assert!(outside.is_empty(), "no session data outside the frontends' keys: {outside:?}");
}

async fn a_session_cookie_of_one_frontend_is_refused_at_the_other(layout: Layout) {
    let app = TwoFrontends::spawn(layout).await;
    let at_one = app.browser(&app.one);
    at_one.login_as("alice").await;
    let value = at_one.session_cookie().expect("frontend one's session cookie");

    // Sent as it is, and under frontend two's own name: neither opens a session there.
    for name in ["bff-one", "bff-two"] {
        let stranger = app.browser(&app.two);
        stranger.browser.set_cookie(name, &value);
        assert_eq!(stranger.user().await.status(), 401, "{name} at two's /auth/user");
        assert_eq!(stranger.api(Method::GET, "/api/echo").await.status(), 401, "{name} at two's API");
    }
    assert!(app.two.upstream.seen().is_empty(), "nothing reached frontend two's upstream");
    assert_eq!(at_one.user().await.status(), 200, "the session is still good where it belongs");
}

async fn api_calls_reach_the_frontends_own_upstream_with_its_own_providers_token(layout: Layout) {
    let app = TwoFrontends::spawn(layout).await;
    let at_one = app.browser(&app.one);
    let at_two = at_one.at(&app.two);
    at_one.login_as("alice").await;
    at_two.login_as("alice").await;

    for (browser, side, other) in [(&at_one, &app.one, &app.two), (&at_two, &app.two, &app.one)] {
        let before = other.upstream.seen().len();
        let res = browser.api(Method::GET, "/api/echo").await;
        assert_eq!(res.status(), 200, "frontend {}", side.name);
        let seen = side.upstream.seen();
        let call = seen.last().expect("the call reached the frontend's upstream");
        assert_eq!(call.path, "/echo");
        let claims = jwt_claims(call.bearer.as_deref().expect("a token"));
        assert_eq!(claims["iss"], side.idp.issuer.as_str(), "{claims}");
        assert_eq!(claims["aud"], side.audience.as_str(), "{claims}");
        assert_eq!(claims["client_id"], side.client_id.as_str(), "{claims}");
        assert_eq!(other.upstream.seen().len(), before, "nothing went to frontend {}'s upstream", other.name);
    }
}

async fn logging_out_at_one_frontend_leaves_the_other_signed_in(layout: Layout) {
    let app = TwoFrontends::spawn(layout).await;
    let at_one = app.browser(&app.one);
    let at_two = at_one.at(&app.two);
    at_one.login_as("alice").await;
    at_two.login_as("alice").await;

    let res = at_one.logout().await;

    assert_eq!(res.status(), 303);
    let target = location(&res);
    assert!(target.starts_with(&format!("{}/end_session?", app.one.idp.issuer)), "{target}");
    assert!(at_one.session_cookie().is_none(), "frontend one's cookie is cleared");
    assert_eq!(at_one.user().await.status(), 401);
    assert_eq!(at_two.user().await.status(), 200, "frontend two's session stays");
    assert_eq!(at_two.api(Method::GET, "/api/echo").await.status(), 200);
}

async fn back_channel_logout_from_one_provider_ends_only_that_frontends_session(layout: Layout) {
    let app = TwoFrontends::spawn(layout).await;
    let at_one = app.browser(&app.one);
    let at_two = at_one.at(&app.two);
    at_one.login_as("alice").await;
    at_two.login_as("alice").await;
    let sid = app.one.idp.provider.session_of("alice").expect("alice's session at provider one");

    let delivered = app.one.idp.provider.end_provider_session(&sid).await;

    assert_eq!(delivered, 1, "provider one delivered its logout token to frontend one");
    assert_eq!(at_one.user().await.status(), 401);
    assert_eq!(at_two.user().await.status(), 200, "provider two's session, and frontend two's, stay");
    assert_eq!(at_two.api(Method::GET, "/api/echo").await.status(), 200);
}

async fn a_request_no_frontend_serves_is_not_found(layout: Layout) {
    let app = TwoFrontends::spawn(layout).await;
    let http = app.http();
    let misses = match layout {
        // A host no frontend names, and bff's own address (no frontend for any host).
        Layout::Hosts => {
            vec![format!("{}/auth/login", app.nobody()), format!("{}/auth/user", app.nobody())]
        }
        Layout::Paths => vec![
            format!("{}/auth/login", app.address),
            format!("{}/", app.address),
            format!("{}/three/auth/login", app.address),
            format!("{}/onex/auth/login", app.address),
        ],
    };
    for url in misses {
        let res = http.get(&url).header("x-csrf", "1").send().await.expect("request");
        assert_eq!(res.status(), 404, "{url}");
        assert_eq!(json(res).await["error"], "not_found", "{url}");
    }
    // The process-wide routes answer whatever the host.
    let ready = http.get(format!("{}/readyz", app.nobody())).send().await.expect("readyz");
    assert_eq!(ready.status(), 200);
    let body = json(ready).await;
    assert_eq!(body["frontends"]["one"], "ok", "{body}");
    assert_eq!(body["frontends"]["two"], "ok", "{body}");
}

async fn metrics_are_labelled_with_the_frontend(layout: Layout) {
    let app = TwoFrontends::spawn(layout).await;
    let at_one = app.browser(&app.one);
    let at_two = at_one.at(&app.two);
    at_one.login_as("alice").await;
    at_two.login_as("alice").await;
    assert_eq!(at_one.api(Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(at_two.api(Method::GET, "/api/echo").await.status(), 200);

    let text = reqwest::get(format!("{}/metrics", app.address)).await.expect("metrics").text().await.expect("text");

    let requests: Vec<&str> = text.lines().filter(|l| l.starts_with("bff_http_requests_total{")).collect();
    for name in ["one", "two"] {
        let label = format!("frontend=\"{name}\"");
        assert!(requests.iter().any(|l| l.contains(&label)), "{label} in {requests:#?}");
    }
    assert!(!requests.iter().any(|l| l.contains("frontend=\"default\"") && l.contains("/api")), "{requests:#?}");
}

async fn a_return_to_outside_the_frontend_comes_back_to_the_frontend(layout: Layout) {
    let app = TwoFrontends::spawn(layout).await;
    let at_one = app.browser(&app.one);
    let (outside, home) = match layout {
        // Another frontend's origin is another site: one's own root.
        Layout::Hosts => (format!("{}/x", app.two.origin), "/"),
        Layout::Paths => ("/two/x".to_string(), "/one/"),
    };

    let callback = at_one.login_to("alice", Some(&outside)).await;

    assert!(callback.status().is_redirection(), "{}", callback.status());
    let target = location(&callback);
    let target = target.strip_prefix(&app.one.origin).unwrap_or(&target);
    assert_eq!(target, home);

    // A return_to inside the frontend is kept.
    let inside = at_one.path("/orders/7");
    let callback = app.browser(&app.one).login_to("bob", Some(&inside)).await;
    let target = location(&callback);
    assert_eq!(target.strip_prefix(&app.one.origin).unwrap_or(&target), inside);
}

async fn a_logout_token_for_a_user_ends_that_users_sessions_at_its_own_frontend_only(layout: Layout) {
    let app = TwoFrontends::spawn(layout).await;
    let at_one = app.browser(&app.one);
    let at_two = at_one.at(&app.two);
    at_one.login_as("alice").await;
    at_two.login_as("alice").await;
    // Both providers know alice by the same `sub`: a logout token naming only her `sub` must end
    // her sessions at the frontend of the provider that signed it, never at the other one.
    let sub = bff::demo::idp::user_claims("alice").0;
    let post = |side: &Side, token: String| {
        let url = format!("{}{}/auth/backchannel-logout", side.origin, side.path);
        let request = app.http().post(url).form(&[("logout_token", token)]);
        async move { request.send().await.expect("post").status().as_u16() }
    };
    let from_one = |client: &str| app.one.idp.provider.logout_token(client, Some(&sub), None).expect("sign");

    // Provider one's token, for its client, delivered to frontend two: not two's provider.
    assert_eq!(post(&app.two, from_one(&app.one.client_id)).await, 400);
    // Provider one's token made out to frontend two's client id: still not two's provider.
    assert_eq!(post(&app.two, from_one(&app.two.client_id)).await, 400);
    assert_eq!(at_two.user().await.status(), 200, "frontend two's session stays");
    assert_eq!(at_one.user().await.status(), 200, "frontend one's too: the token went elsewhere");

    assert_eq!(post(&app.one, from_one(&app.one.client_id)).await, 200);

    assert_eq!(at_one.user().await.status(), 401, "alice's session at frontend one ended");
    assert_eq!(at_two.user().await.status(), 200, "alice's session at frontend two stays");
}
