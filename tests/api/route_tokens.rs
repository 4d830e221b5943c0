//! Route token policies that are not the signed-in user's default token: bff's own
//! client-credentials token (`token = "client"`) and audience-bound user tokens (`resource`,
//! RFC 8707), against the demo provider and APIs that check `aud`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bff::config::{ApiConfig, TokenPolicy};
use bff::demo::idp::TokenFault;
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::Value;
use support::{AppOptions, Browser, TestApp, jwt_claims, spawn_app_with, spawn_instance_with};

const ORDERS: &str = "https://orders.example";
const BILLING: &str = "https://billing.example";

/// The bearers the upstream received for `path`, in order.
fn bearers(upstream: &support::upstream::Upstream, path: &str) -> Vec<String> {
    upstream.seen().into_iter().filter(|s| s.path == path).filter_map(|s| s.bearer).collect()
}

async fn json_error(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or_default();
    (status, body["error"].as_str().unwrap_or_default().to_string())
}

/// `calls` concurrent GETs of `path`, spread over `browsers`; their statuses.
async fn concurrently(browsers: &[Browser], path: &str, calls: usize) -> Vec<u16> {
    let requests = (0..calls).map(|i| {
        let b = &browsers[i % browsers.len()];
        async move { b.api(Method::GET, path).await.status().as_u16() }
    });
    join_all(requests).await
}

/// An instance with a `/m2m` route that carries bff's own token for `api:read`.
async fn client_route(app: &TestApp) -> String {
    let upstream = url::Url::parse(&app.upstream.url).expect("url");
    spawn_instance_with(app, |c| {
        c.api.push(ApiConfig {
            prefix: "/m2m".into(),
            upstream,
            token: TokenPolicy::Client,
            scopes: vec!["api:read".into()],
            ..c.api[0].clone()
        });
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_is_shared_by_every_session_and_renewed_once_when_due() {
    let app = spawn_app_with(AppOptions::short_lived_tokens()).await;
    let instance = client_route(&app).await;
    let (alice, bob) = (app.browser(), app.browser());
    alice.login_as("alice").await;
    bob.login_as("bob").await;
    let (alice, bob) = (alice.at(&instance), bob.at(&instance));

    let signed_out = Browser::new(&instance);
    assert_eq!(json_error(signed_out.api(Method::GET, "/m2m/echo").await).await, (401, "login_required".into()));
    let no_csrf = alice.send(alice.request(Method::GET, "/m2m/echo")).await;
    assert_eq!(no_csrf.status(), 403, "a session's cookie authorises the call: X-CSRF is asked for");

    let statuses = concurrently(&[alice.clone(), bob.clone()], "/m2m/echo", 40).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(app.token_requests("client_credentials"), 1, "one token for both sessions and 40 calls");
    let first = bearers(&app.upstream, "/echo");
    assert_eq!(first.len(), 40);
    assert!(first.iter().all(|b| *b == first[0]), "every call carried the same token");
    let claims = jwt_claims(&first[0]);
    assert_eq!(claims["sub"], app.config.oidc.client_id.as_str(), "bff's own token, not a user's");
    assert_eq!(claims["scope"], "api:read");

    // Renewed ahead of its expiry, by one request however many callers find it due.
    let res = alice.api(Method::GET, "/m2m/echo").await;
    app.make_refresh_due(support::token_expiry(&res), support::SHORT_SKEW_SECS);
    let statuses = concurrently(&[alice.clone(), bob.clone()], "/m2m/echo", 40).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(app.token_requests("client_credentials"), 2);
    let renewed = bearers(&app.upstream, "/echo").last().cloned().expect("a bearer");
    assert_ne!(renewed, first[0]);

    // An upstream's 401: a new token and one retry.
    app.upstream.controls.reject_next.store(1, Ordering::SeqCst);
    assert_eq!(bob.api(Method::GET, "/m2m/echo").await.status(), 200);
    assert_eq!(app.token_requests("client_credentials"), 3);
    let seen = bearers(&app.upstream, "/echo");
    assert_eq!(seen[seen.len() - 2], renewed, "the rejected token");
    assert_ne!(seen[seen.len() - 1], renewed, "the retry carried a new one");

    // The users' own grants are decided first on this route too: each session's token fell due
    // with the clock and was refreshed once (a grant the provider ended would end the session).
    assert_eq!(app.token_requests("refresh_token"), 2, "one refresh per session, however many calls");
    let metrics = reqwest::get(format!("{instance}/metrics")).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("bff_client_token_requests_total{frontend=\"default\",outcome=\"ok\"} 3"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_the_provider_will_not_give_is_a_503_and_a_later_call_asks_again() {
    let app = spawn_app_with(AppOptions::default()).await;
    let instance = client_route(&app).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);
    app.idp.controls.set_token_fault(TokenFault::Unavailable);
    let asked = app.token_requests("any");
    for _ in 0..5 {
        assert_eq!(json_error(b.api(Method::GET, "/m2m/echo").await).await, (503, "token_refresh_unavailable".into()));
    }
    assert_eq!(app.token_requests("any"), asked + 1, "one request, then the back-off answers");
    app.idp.controls.set_token_fault(TokenFault::None);
    support::eventually("the client token is got once the back-off passed", Duration::from_secs(5), || async {
        b.api(Method::GET, "/m2m/echo").await.status() == 200
    })
    .await;
    assert_eq!(b.api(Method::GET, "/api/echo").await.status(), 200, "the user's session is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_storm_on_a_client_route_asks_the_provider_once_for_the_token_every_user_shares() {
    let app = spawn_app_with(AppOptions::default()).await;
    let instance = client_route(&app).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);
    assert_eq!(b.api(Method::GET, "/m2m/echo").await.status(), 200);
    assert_eq!(app.token_requests("client_credentials"), 1);
    app.upstream.controls.always_reject.store(true, Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(b.api(Method::GET, "/m2m/echo").await.status(), 401);
    }
    assert_eq!(app.token_requests("client_credentials"), 2, "one renewal after the first 401, then none");
    app.upstream.controls.always_reject.store(false, Ordering::SeqCst);
    assert_eq!(b.api(Method::GET, "/m2m/echo").await.status(), 200);
}

/// An instance with `/orders` and `/billing` routes bound to their audiences, each in front of
/// an API that accepts only tokens for it; `/api` stays on the default audience.
async fn audience_routes(app: &TestApp) -> (String, support::upstream::Upstream, support::upstream::Upstream) {
    let provider = Some(app.idp.provider.clone());
    let orders = support::upstream::spawn_for_audience(provider.clone(), Some(ORDERS)).await;
    let billing = support::upstream::spawn_for_audience(provider, Some(BILLING)).await;
    let (orders_url, billing_url) = (orders.url.clone(), billing.url.clone());
    let instance = spawn_instance_with(app, |c| {
        let base = c.api[0].clone();
        let route = |prefix: &str, upstream: &str, resource: &str| ApiConfig {
            prefix: prefix.into(),
            upstream: url::Url::parse(upstream).expect("url"),
            resource: Some(resource.into()),
            ..base.clone()
        };
        c.api.push(route("/orders", &orders_url, ORDERS));
        c.api.push(route("/billing", &billing_url, BILLING));
        c.api.push(route("/refused", &orders_url, "https://refused.example"));
    })
    .await;
    (instance, orders, billing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_resource_route_gets_a_token_for_its_own_audience() {
    let app = spawn_app_with(AppOptions::default()).await;
    let (instance, orders, billing) = audience_routes(&app).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);

    // Both audiences asked for at once, many times: one refresh each, one after the other on
    // the one rotating refresh token (a replay of the old one would revoke the grant).
    let mut calls = concurrently(std::slice::from_ref(&b), "/orders/echo", 20).await;
    calls.extend(concurrently(std::slice::from_ref(&b), "/billing/echo", 20).await);
    let both = join_all([
        concurrently(std::slice::from_ref(&b), "/orders/echo", 15),
        concurrently(std::slice::from_ref(&b), "/billing/echo", 15),
    ])
    .await;
    calls.extend(both.into_iter().flatten());
    assert!(calls.iter().all(|s| *s == 200), "{calls:?}");
    assert_eq!(app.token_requests("refresh_token"), 2, "one token per audience");
    assert_eq!(app.token_requests("reuse"), 0);
    assert_eq!(b.api(Method::GET, "/api/echo").await.status(), 200, "the default token still works");

    let orders_token = bearers(&orders, "/echo")[0].clone();
    let billing_token = bearers(&billing, "/echo")[0].clone();
    let default_token = bearers(&app.upstream, "/echo")[0].clone();
    assert_eq!(jwt_claims(&orders_token)["aud"], ORDERS);
    assert_eq!(jwt_claims(&billing_token)["aud"], BILLING);
    assert_eq!(jwt_claims(&default_token)["aud"], "demo-api");
    assert!(bearers(&orders, "/echo").iter().all(|t| *t == orders_token), "kept in the token set");

    // An API's 401 refreshes that audience's token only.
    orders.controls.reject_next.store(1, Ordering::SeqCst);
    assert_eq!(b.api(Method::GET, "/orders/echo").await.status(), 200);
    assert_eq!(app.token_requests("refresh_token"), 3);
    assert_ne!(bearers(&orders, "/echo").last(), Some(&orders_token));
    assert_eq!(b.api(Method::GET, "/billing/echo").await.status(), 200);
    assert_eq!(bearers(&billing, "/echo").last(), Some(&billing_token), "billing's token is untouched");
    assert_eq!(b.api(Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(bearers(&app.upstream, "/echo").last(), Some(&default_token), "and so is the default one");

    // A resource the grant does not cover: 403, and the session lives on.
    app.idp.controls.refuse_resource("https://refused.example");
    assert_eq!(json_error(b.api(Method::GET, "/refused/echo").await).await, (403, "resource_not_granted".into()));
    assert_eq!(b.api(Method::GET, "/orders/echo").await.status(), 200);
    assert_eq!(app.token_requests("reuse"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_token_falls_due_on_its_own_and_two_instances_refresh_it_once() {
    let app = spawn_app_with(AppOptions::default()).await;
    let (instance, orders, _billing) = audience_routes(&app).await;
    let (other, ..) = audience_routes(&app).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);
    assert_eq!(b.api(Method::GET, "/api/echo").await.status(), 200);
    let default_token = bearers(&app.upstream, "/echo")[0].clone();

    // The audience token lives 4 s; the default one, issued at sign-in, 300 s.
    app.idp.controls.set_access_token_ttl(Duration::from_secs(4));
    let res = b.api(Method::GET, "/orders/echo").await;
    assert_eq!(res.status(), 200);
    let first = bearers(&orders, "/echo")[0].clone();
    // Skew 30 s, capped at half the lifetime: due 2 s before it expires.
    app.make_refresh_due(support::token_expiry(&res), 2);

    let both = [b.clone(), browser.at(&other)];
    let statuses = concurrently(&both, "/orders/echo", 30).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(app.token_requests("refresh_token"), 2, "one refresh across both instances");
    assert_eq!(app.token_requests("reuse"), 0);
    assert_ne!(bearers(&orders, "/echo").last(), Some(&first));
    assert_eq!(b.api(Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(bearers(&app.upstream, "/echo").last(), Some(&default_token), "the default token was not due");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_refresh_token_a_resource_route_is_refused_and_the_session_kept() {
    let orders = support::upstream::spawn(None).await;
    let orders_url = url::Url::parse(&orders.url).expect("url");
    // Signed in without offline_access: no refresh token to ask for another audience with.
    let options = AppOptions {
        tweak: std::sync::Arc::new(move |c: &mut bff::config::Config| {
            c.oidc.scopes.retain(|s| s != "offline_access");
            let orders = ApiConfig {
                prefix: "/orders".into(),
                upstream: orders_url.clone(),
                resource: Some(ORDERS.into()),
                ..c.api[0].clone()
            };
            c.api.push(orders);
        }),
        ..AppOptions::default()
    };
    let app = spawn_app_with(options).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    assert_eq!(json_error(browser.api(Method::GET, "/orders/echo").await).await, (403, "resource_not_granted".into()));
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
    assert!(orders.seen().is_empty(), "the default token never went to the orders API");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_request_names_the_resources_of_user_routes() {
    let app = spawn_app_with(AppOptions::default()).await;
    let (instance, ..) = audience_routes(&app).await;
    let authorize = support::location(&Browser::new(&instance).start_login(None).await);
    let url = url::Url::parse(&authorize).expect("authorize URL");
    let mut resources: Vec<String> =
        url.query_pairs().filter(|(k, _)| k == "resource").map(|(_, v)| v.into_owned()).collect();
    resources.sort();
    assert_eq!(resources, [BILLING, ORDERS, "https://refused.example"], "RFC 8707 §2.1, each once");
    let plain = support::location(&Browser::new(&app.address).start_login(None).await);
    assert!(!plain.contains("resource="), "no resource route, no resource parameter: {plain}");
}

const LEDGER: &str = "ledger-api";

/// The APIs behind the exchange routes: one that accepts only tokens for the `ledger-api`
/// audience, one only for the orders resource.
async fn exchange_upstreams(app: &TestApp) -> (support::upstream::Upstream, support::upstream::Upstream) {
    let provider = Some(app.idp.provider.clone());
    let ledger = support::upstream::spawn_for_audience(provider.clone(), Some(LEDGER)).await;
    let orders = support::upstream::spawn_for_audience(provider, Some(ORDERS)).await;
    (ledger, orders)
}

/// An instance with `/ledger`, whose user token is exchanged for the `ledger-api` audience
/// (RFC 8693); `/orders-x`, exchanged for the orders resource; and `/orders`, a resource route
/// for that same URI (its token got by refresh, RFC 8707), all three in front of `upstreams`.
async fn exchange_routes(
    app: &TestApp,
    (ledger, orders): &(support::upstream::Upstream, support::upstream::Upstream),
) -> String {
    let (ledger_url, orders_url) = (ledger.url.clone(), orders.url.clone());
    spawn_instance_with(app, |c| {
        let base = ApiConfig { token: TokenPolicy::Exchange, ..c.api[0].clone() };
        let upstream = |url: &str| url::Url::parse(url).expect("url");
        c.api.push(ApiConfig {
            prefix: "/ledger".into(),
            upstream: upstream(&ledger_url),
            audience: Some(LEDGER.into()),
            scopes: vec!["ledger:read".into()],
            ..base.clone()
        });
        c.api.push(ApiConfig {
            prefix: "/orders-x".into(),
            upstream: upstream(&orders_url),
            resource: Some(ORDERS.into()),
            ..base.clone()
        });
        c.api.push(ApiConfig {
            prefix: "/orders".into(),
            upstream: upstream(&orders_url),
            token: TokenPolicy::User,
            resource: Some(ORDERS.into()),
            ..base
        });
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_route_exchanges_once_per_session_and_audience_across_two_instances() {
    let app = spawn_app_with(AppOptions::default()).await;
    let upstreams = exchange_upstreams(&app).await;
    let (first, second) = (exchange_routes(&app, &upstreams).await, exchange_routes(&app, &upstreams).await);
    let (ledger, orders) = &upstreams;
    let (alice, bob) = (app.browser(), app.browser());
    alice.login_as("alice").await;
    bob.login_as("bob").await;

    // 40 calls at once, half on each instance: one exchange for the session and audience.
    let statuses = concurrently(&[alice.at(&first), alice.at(&second)], "/ledger/echo", 40).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(app.token_requests("token_exchange"), 1, "one exchange across both instances");
    let alices = bearers(ledger, "/echo");
    assert_eq!(alices.len(), 40);
    assert!(alices.iter().all(|t| *t == alices[0]), "every call carried the one exchanged token");
    let claims = jwt_claims(&alices[0]);
    assert_eq!((claims["aud"].as_str(), claims["sub"].as_str()), (Some(LEDGER), Some("demo|alice")));
    assert_eq!(claims["scope"], "ledger:read");

    // Another session gets its own.
    let statuses = concurrently(&[bob.at(&first), bob.at(&second)], "/ledger/echo", 40).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(app.token_requests("token_exchange"), 2);
    assert_eq!(jwt_claims(bearers(ledger, "/echo").last().expect("a bearer"))["sub"], "demo|bob");

    // An exchange and a resource route for the same URI keep tokens of their own.
    let a = alice.at(&first);
    assert_eq!(a.api(Method::GET, "/orders-x/echo").await.status(), 200);
    assert_eq!(a.api(Method::GET, "/orders/echo").await.status(), 200);
    assert_eq!(a.api(Method::GET, "/orders-x/echo").await.status(), 200);
    assert_eq!(a.api(Method::GET, "/orders/echo").await.status(), 200);
    let seen = bearers(orders, "/echo");
    assert_eq!(
        (seen[0] == seen[2], seen[1] == seen[3], seen[0] == seen[1]),
        (true, true, false),
        "two tokens, each kept"
    );
    assert_eq!((app.token_requests("token_exchange"), app.token_requests("refresh_token")), (3, 1));
    assert_eq!(app.token_requests("reuse"), 0);

    // The default token still goes to the default route; a logout drops the exchanged ones.
    assert_eq!(a.api(Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(jwt_claims(bearers(&app.upstream, "/echo").last().expect("a bearer"))["aud"], "demo-api");
    a.logout().await;
    assert_eq!(json_error(a.api(Method::GET, "/ledger/echo").await).await, (401, "login_required".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchanged_token_is_renewed_when_due_and_once_after_an_upstreams_401() {
    let app = spawn_app_with(AppOptions::default()).await;
    let upstreams = exchange_upstreams(&app).await;
    let (first, second) = (exchange_routes(&app, &upstreams).await, exchange_routes(&app, &upstreams).await);
    let ledger = &upstreams.0;
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&first);

    // The exchanged token lives 4 s; the default one, issued at sign-in, 300 s.
    app.idp.controls.set_access_token_ttl(Duration::from_secs(4));
    let res = b.api(Method::GET, "/ledger/echo").await;
    assert_eq!(res.status(), 200);
    let exchanged = bearers(ledger, "/echo")[0].clone();
    app.make_refresh_due(support::token_expiry(&res), 2);
    let statuses = concurrently(&[b.clone(), browser.at(&second)], "/ledger/echo", 30).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(app.token_requests("token_exchange"), 2, "renewed once, across both instances");
    assert_eq!(app.token_requests("refresh_token"), 0, "the subject token was not due");
    let renewed = bearers(ledger, "/echo").last().cloned().expect("a bearer");
    assert_ne!(renewed, exchanged);

    // An upstream's 401: one new exchange and one retry; a 401 storm: no more than that (the
    // token got after the 401 lives long enough not to fall due meanwhile).
    app.idp.controls.set_access_token_ttl(Duration::from_secs(300));
    ledger.controls.reject_next.store(1, Ordering::SeqCst);
    assert_eq!(b.api(Method::GET, "/ledger/echo").await.status(), 200);
    assert_eq!(app.token_requests("token_exchange"), 3);
    ledger.controls.always_reject.store(true, Ordering::SeqCst);
    for instance in [&first, &second, &first] {
        assert_eq!(browser.at(instance).api(Method::GET, "/ledger/echo").await.status(), 401);
    }
    assert_eq!(app.token_requests("token_exchange"), 3, "the renewed token is not renewed again, on any instance");
    ledger.controls.always_reject.store(false, Ordering::SeqCst);
    assert_eq!(b.api(Method::GET, "/ledger/echo").await.status(), 200);

    // Both the session's token and the exchanged one due (the latter was issued a few seconds
    // later by the advanced clock: 20 s before the former expires covers both): the subject is
    // refreshed first, then exchanged again.
    let res = b.api(Method::GET, "/api/echo").await;
    app.make_refresh_due(support::token_expiry(&res), 20);
    assert_eq!(b.api(Method::GET, "/ledger/echo").await.status(), 200);
    assert_eq!((app.token_requests("refresh_token"), app.token_requests("token_exchange")), (1, 4));
    assert_eq!(app.token_requests("reuse"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_exchange_is_403_and_a_failing_provider_503_and_the_session_is_kept() {
    let app = spawn_app_with(AppOptions::default()).await;
    let upstreams = exchange_upstreams(&app).await;
    let instance = exchange_routes(&app, &upstreams).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);

    app.idp.controls.refuse_exchange(LEDGER);
    assert_eq!(json_error(b.api(Method::GET, "/ledger/echo").await).await, (403, "exchange_refused".into()));
    assert!(upstreams.0.seen().is_empty(), "nothing went to the API");
    assert_eq!(b.api(Method::GET, "/api/echo").await.status(), 200, "the session lives on");
    // Asked again only after a back-off: calls meanwhile cannot drive the token endpoint.
    for _ in 0..5 {
        assert_eq!(json_error(b.api(Method::GET, "/ledger/echo").await).await, (403, "exchange_refused".into()));
    }
    assert_eq!(app.token_requests("token_exchange"), 1);
    support::eventually("the refused exchange is asked again after its back-off", Duration::from_secs(5), || async {
        b.api(Method::GET, "/ledger/echo").await.status() == 403 && app.token_requests("token_exchange") == 2
    })
    .await;

    // A provider that does not offer the grant (unsupported_grant_type) refuses it too.
    let other = app.browser();
    other.login_as("bob").await;
    app.idp.controls.set_quirks(bff::demo::idp::Quirks { no_token_exchange: true, ..Default::default() });
    let bob = other.at(&instance);
    assert_eq!(json_error(bob.api(Method::GET, "/orders-x/echo").await).await, (403, "exchange_refused".into()));
    app.idp.controls.set_quirks(bff::demo::idp::Quirks::default());
    assert_eq!(bob.api(Method::GET, "/api/echo").await.status(), 200);

    app.idp.controls.set_token_fault(TokenFault::Unavailable);
    let asked = app.token_requests("any");
    for _ in 0..3 {
        assert_eq!(
            json_error(b.api(Method::GET, "/orders-x/echo").await).await,
            (503, "token_refresh_unavailable".into())
        );
    }
    assert_eq!(app.token_requests("any"), asked + 1, "one request, then the back-off answers");
    app.idp.controls.set_token_fault(TokenFault::None);
    support::eventually("the exchange is made once the back-off passed", Duration::from_secs(5), || async {
        b.api(Method::GET, "/orders-x/echo").await.status() == 200
    })
    .await;
    assert_eq!(b.api(Method::GET, "/api/echo").await.status(), 200);
}
