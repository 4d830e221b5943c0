//! DPoP (RFC 9449, `oidc.dpop = true`): a key per session, proofs on the token requests and on
//! every upstream call, against the demo provider (which binds tokens with `cnf.jkt`) and an API
//! that checks each proof against the token it comes with.

use std::sync::atomic::Ordering;

use futures_util::future::join_all;
use reqwest::Method;
use support::{AppOptions, Browser, TestApp, jwt_claims, spawn_app_with, spawn_instance_with};

fn dpop_options() -> AppOptions {
    AppOptions {
        tweak: std::sync::Arc::new(|c: &mut bff::config::Config| c.oidc.dpop = true),
        ..AppOptions::short_lived_tokens()
    }
}

fn proofs_at_provider(app: &TestApp) -> u64 {
    app.idp.provider.counters.dpop_proofs.load(Ordering::SeqCst)
}

fn last_call(app: &TestApp, path: &str) -> support::upstream::Seen {
    app.upstream.seen().into_iter().rev().find(|s| s.path == path).expect("the call reached the upstream")
}

fn jkt(token: &str) -> String {
    jwt_claims(token)["cnf"]["jkt"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_is_bound_to_the_sessions_key_and_every_call_proves_it() {
    let app = spawn_app_with(dpop_options()).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    assert_eq!(proofs_at_provider(&app), 1, "the code exchange carried a proof");

    let res = browser.api(Method::GET, "/api/echo").await;
    assert_eq!(res.status(), 200, "the API accepted the token with its proof");
    let seen = last_call(&app, "/echo");
    assert_eq!(seen.scheme.as_deref(), Some("DPoP"));
    let first = seen.bearer.clone().unwrap_or_default();
    let bound_to = jkt(&first);
    assert_eq!(bound_to.len(), 43, "cnf.jkt is a thumbprint");
    assert!(seen.headers.contains_key("dpop"));

    // A refresh is proven with the same key, and the new token is bound to it too.
    app.make_refresh_due(support::token_expiry(&res), support::SHORT_SKEW_SECS);
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(proofs_at_provider(&app), 2);
    let refreshed = last_call(&app, "/echo").bearer.unwrap_or_default();
    assert_ne!(refreshed, first);
    assert_eq!(jkt(&refreshed), bound_to);

    // An upstream 401: one refresh (with a proof), one retry.
    app.upstream.controls.reject_next.store(1, Ordering::SeqCst);
    assert_eq!(browser.api(Method::GET, "/api/after-401").await.status(), 200);
    assert_eq!(proofs_at_provider(&app), 3);
    assert_eq!(app.token_requests("refresh_token"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_is_good_for_its_own_request_once_and_the_token_is_useless_without_one() {
    let app = spawn_app_with(dpop_options()).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
    let seen = last_call(&app, "/echo");
    let (token, proof) = (seen.bearer.unwrap_or_default(), seen.headers.get("dpop").cloned().unwrap_or_default());
    let http = reqwest::Client::new();
    let call = |path: &str, scheme: &str, proof: Option<&str>| {
        let mut request =
            http.get(format!("{}{path}", app.upstream.url)).header("authorization", format!("{scheme} {token}"));
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        request.send()
    };
    assert_eq!(call("/echo", "DPoP", Some(&proof)).await.expect("call").status(), 401, "a replayed proof");
    assert_eq!(call("/other", "DPoP", Some(&proof)).await.expect("call").status(), 401, "a proof for another URL");
    assert_eq!(call("/echo", "DPoP", None).await.expect("call").status(), 401, "no proof");
    assert_eq!(
        call("/echo", "Bearer", None).await.expect("call").status(),
        401,
        "a bound token used as a bearer token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonces_asked_for_by_the_provider_and_by_the_api_are_given_at_the_second_try() {
    let app = spawn_app_with(dpop_options()).await;
    app.idp.controls.require_dpop_nonce(true);
    let browser = app.browser();
    assert_eq!(browser.login_as("alice").await.status(), 302, "the code exchange went through with the nonce");
    assert_eq!(proofs_at_provider(&app), 1);

    *app.upstream.controls.dpop_nonce.lock().expect("nonce") = Some("api-nonce-1".into());
    assert_eq!(browser.api(Method::GET, "/api/nonce").await.status(), 200, "retried once with the API's nonce");
    let tries: Vec<_> = app.upstream.seen().into_iter().filter(|s| s.path == "/nonce").collect();
    assert_eq!(tries.len(), 2);
    let nonce_of = |s: &support::upstream::Seen| {
        jwt_claims(s.headers.get("dpop").map(String::as_str).unwrap_or_default())["nonce"].clone()
    };
    assert_eq!((nonce_of(&tries[0]), nonce_of(&tries[1])), (serde_json::Value::Null, serde_json::json!("api-nonce-1")));
    // The nonce is kept: the next call carries it from the start.
    assert_eq!(browser.api(Method::GET, "/api/nonce-kept").await.status(), 200);
    assert_eq!(app.upstream.seen().iter().filter(|s| s.path == "/nonce-kept").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_over_two_instances_refreshes_a_dpop_session_once() {
    let app = spawn_app_with(dpop_options()).await;
    let other = spawn_instance_with(&app, |_| {}).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let res = browser.api(Method::GET, "/api/echo").await;
    app.make_refresh_due(support::token_expiry(&res), support::SHORT_SKEW_SECS);
    let both = [browser.clone(), browser.at(&other)];
    let calls = (0..40).map(|i| {
        let b: &Browser = &both[i % 2];
        async move { b.api(Method::GET, "/api/storm").await.status().as_u16() }
    });
    let statuses = join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(app.token_requests("refresh_token"), 1, "one refresh across both instances");
    assert_eq!(app.token_requests("reuse"), 0);
    let keys: std::collections::BTreeSet<String> = app
        .upstream
        .seen()
        .into_iter()
        .filter(|s| s.path == "/storm")
        .map(|s| jkt(&s.bearer.unwrap_or_default()))
        .collect();
    assert_eq!(keys.len(), 1, "both instances prove with the session's one key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_private_key_jwt_a_nonce_retry_carries_a_fresh_client_assertion() {
    let app =
        spawn_app_with(AppOptions { auth_method: bff::config::AuthMethod::PrivateKeyJwt, ..dpop_options() }).await;
    app.idp.controls.require_dpop_nonce(true);
    let browser = app.browser();
    assert_eq!(browser.login_as("alice").await.status(), 302, "the assertion of the first try is not replayed");
    let assertions = app.idp.provider.counters.client_assertions.load(Ordering::SeqCst);
    assert_eq!((assertions, proofs_at_provider(&app)), (2, 1), "two assertions, the second with a proven request");
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dpop_an_authorization_response_without_iss_is_refused() {
    // The demo provider sends iss but does not advertise RFC 9207: the metadata does not ask
    // for it, the high-security mode does.
    let app = spawn_app_with(dpop_options()).await;
    let browser = app.browser();
    let start = browser.start_login(None).await;
    let genuine =
        url::Url::parse(&browser.sign_in_at_provider(&support::location(&start), "alice").await).expect("url");
    let mut stripped = genuine.clone();
    let pairs: Vec<(String, String)> =
        genuine.query_pairs().filter(|(k, _)| k != "iss").map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    stripped.query_pairs_mut().clear().extend_pairs(pairs);
    assert_eq!(browser.get(stripped.as_str()).await.status(), 400, "no iss: refused");
    assert_eq!(browser.get(genuine.as_str()).await.status(), 302, "with iss: signed in (nothing was consumed)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_state_dpop_call_makes_no_store_command() {
    let app = spawn_app_with(AppOptions {
        tweak: std::sync::Arc::new(|c: &mut bff::config::Config| {
            c.oidc.dpop = true;
            c.tokens.local_cache = true;
        }),
        ..AppOptions::default()
    })
    .await;
    let base = app.address.clone();
    support::eventually("the invalidation channel is up", std::time::Duration::from_secs(10), || {
        let base = base.clone();
        async move { support::metric(&base, "bff_token_cache_channel_up").await == 1.0 }
    })
    .await;
    let browser = app.browser();
    browser.login_as("alice").await;
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200, "the miss that fills");
    let ops = support::metric(&app.address, "bff_session_store_duration_seconds_count").await;
    for _ in 0..30 {
        assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200, "each with a fresh proof");
    }
    assert_eq!(
        support::metric(&app.address, "bff_session_store_duration_seconds_count").await,
        ops,
        "no store command"
    );
    let proofs: std::collections::BTreeSet<String> =
        app.upstream.seen().into_iter().filter_map(|s| s.headers.get("dpop").cloned()).collect();
    assert_eq!(proofs.len(), 31, "a new proof per call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_against_a_provider_without_it_is_a_configuration_error() {
    let app = spawn_app_with(AppOptions::default()).await;
    let quirks = bff::demo::idp::Quirks { no_dpop_in_metadata: true, ..Default::default() };
    let browser = crate::providers::instance_after(&app, quirks, |c| c.oidc.dpop = true).await;
    let res = browser.get("/readyz").await;
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["identity_provider"], "misconfigured");
    assert!(body["problem"].as_str().is_some_and(|p| p.contains("oidc.dpop")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchanged_token_is_asked_for_without_a_proof_and_sent_as_bearer() {
    let app = spawn_app_with(dpop_options()).await;
    let ledger = support::upstream::spawn_for_audience(Some(app.idp.provider.clone()), Some("ledger-api")).await;
    let upstream = url::Url::parse(&ledger.url).expect("url");
    let instance = spawn_instance_with(&app, |c| {
        c.api.push(bff::config::ApiConfig {
            prefix: "/ledger".into(),
            upstream,
            token: bff::config::TokenPolicy::Exchange,
            audience: Some("ledger-api".into()),
            ..c.api[0].clone()
        });
    })
    .await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let b = browser.at(&instance);
    let proofs = proofs_at_provider(&app);

    assert_eq!(b.api(Method::GET, "/ledger/echo").await.status(), 200);
    assert_eq!(app.token_requests("token_exchange"), 1);
    assert_eq!(proofs_at_provider(&app), proofs, "the exchange carried no proof");
    let seen = ledger.seen().pop().expect("the call reached the ledger API");
    assert_eq!(seen.scheme.as_deref(), Some("Bearer"));
    assert!(!seen.headers.contains_key("dpop"), "no proof for a token bound to no key");
    assert!(jwt_claims(&seen.bearer.unwrap_or_default())["cnf"].is_null());

    // The session's own token stays bound, and proven.
    assert_eq!(b.api(Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(last_call(&app, "/echo").scheme.as_deref(), Some("DPoP"));
}
