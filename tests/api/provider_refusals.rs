//! How bff reads a provider's refusals (issue 21): a grant that is over ends the session however
//! the provider says so, a refusal of bff's own credentials keeps sessions and is reported, a
//! failing provider is asked again only after a back-off; DPoP from the pushed request on; a
//! sign-in without the refresh token asked for is counted.

use std::sync::Arc;
use std::time::Duration;

use bff::config::Config;
use bff::demo::idp::{ClientAuthRefusal, GrantRefusal, Quirks, TokenFault};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::Value;
use support::{AppOptions, Browser, TestApp, location, metric, spawn_app_with};

use crate::providers::{instance_after, login_here};

async fn json(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn wrong_secret(c: &mut Config) {
    c.oidc.client_secret = Some(SecretString::from("not-the-registered-secret"));
}

/// Forces the next call to refresh: the upstream refuses the token once.
fn refuse_next_token(app: &TestApp) {
    app.upstream.controls.reject_next.store(1, std::sync::atomic::Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_ended_with_invalid_request_or_an_empty_400_ends_the_session_at_once() {
    for style in [GrantRefusal::InvalidRequest, GrantRefusal::EmptyBody, GrantRefusal::InvalidGrant] {
        let app = spawn_app_with(AppOptions::default()).await;
        app.idp.controls.set_quirks(Quirks { grant_refusal: style, ..Quirks::default() });
        let browser = app.browser();
        browser.login_as("alice").await;
        assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
        // The provider's SSO session timed out, or an administrator revoked the grant: no
        // logout token reaches bff.
        assert_eq!(app.idp.provider.revoke_grants_of("alice"), 1);
        refuse_next_token(&app);

        let (status, body) = json(browser.api(Method::GET, "/api/echo").await).await;
        assert_eq!((status, body), (401, serde_json::json!({"error": "login_required"})), "{style:?}");
        assert_eq!(app.token_requests("refresh_token"), 1, "{style:?}: asked once");
        assert!(browser.cookie("bff").is_none(), "{style:?}: the cookie is cleared");
        assert_eq!(browser.user().await.status(), 401, "{style:?}: /auth/user agrees at once");
        let left: Vec<String> = app.keys().await.into_iter().filter(|k| !k.contains("login")).collect();
        assert!(left.is_empty(), "{style:?}: session and token set deleted: {left:?}");
        assert_eq!(app.token_requests("any"), 2, "{style:?}: the code exchange and the one refresh, no more");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_bffs_credentials_keeps_sessions_backs_off_and_is_reported_by_readyz() {
    for style in [ClientAuthRefusal::InvalidClient, ClientAuthRefusal::ForbiddenEmpty] {
        let app = spawn_app_with(AppOptions::default()).await;
        let browser = app.browser();
        browser.login_as("alice").await;
        // A second instance whose secret the provider does not accept (a rotation done on one
        // side only), sharing the sessions.
        let broken =
            instance_after(&app, Quirks { client_auth_refusal: style, ..Quirks::default() }, wrong_secret).await;
        let there = browser.at(&broken.base);
        assert_eq!(json(reqwest::get(format!("{}/readyz", broken.base)).await.unwrap()).await.0, 200);
        refuse_next_token(&app);

        let (status, body) = json(there.api(Method::GET, "/api/echo").await).await;
        assert_eq!((status, body), (503, serde_json::json!({"error": "token_refresh_unavailable"})), "{style:?}");
        let asked = app.token_requests("any");
        refuse_next_token(&app);
        assert_eq!(there.api(Method::GET, "/api/echo").await.status(), 503, "{style:?}");
        assert_eq!(app.token_requests("any"), asked, "{style:?}: within the back-off the provider is not asked");

        let (status, ready) = json(reqwest::get(format!("{}/readyz", broken.base)).await.unwrap()).await;
        assert_eq!(status, 503, "{style:?}");
        assert_eq!(ready["identity_provider"], "misconfigured", "{style:?}");
        let problem = ready["problem"].as_str().unwrap_or_default();
        assert!(
            problem.contains("client authentication") && problem.contains("oidc.client_secret"),
            "{style:?}: {problem}"
        );
        assert!(!problem.contains("not-the-registered-secret"), "never the secret itself");

        assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200, "{style:?}: the session was kept");
        assert_eq!(json(reqwest::get(format!("{}/readyz", app.address)).await.unwrap()).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_is_asked_once_per_back_off_while_a_still_valid_token_keeps_working() {
    let app = spawn_app_with(AppOptions::short_lived_tokens()).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let first = browser.api(Method::GET, "/api/echo").await;
    assert_eq!(first.status(), 200);
    let expires_at = support::token_expiry(&first);

    // Due for refresh but not expired: the refresh fails, the token in hand is still used.
    app.make_refresh_due(expires_at, support::SHORT_SKEW_SECS);
    app.idp.controls.set_token_fault(TokenFault::Unavailable);
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200, "the unexpired token is used");
    let asked = app.token_requests("any");
    assert_eq!(asked, 2, "the code exchange and one refresh");

    // Expired: 503 at once, without asking again inside the back-off.
    app.advance_clock_to(expires_at);
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(browser.api(Method::GET, "/api/echo").await.status().as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    assert!(app.token_requests("any") <= asked + 1, "at most one more try in the back-off window");

    app.idp.controls.set_token_fault(TokenFault::None);
    support::eventually("the session works once the provider is back", Duration::from_secs(10), || async {
        browser.api(Method::GET, "/api/echo").await.status() == 200
    })
    .await;
    assert_eq!(app.token_requests("reuse"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_exchange_refused_in_any_style_is_the_400_page_never_a_502() {
    for style in [GrantRefusal::InvalidRequest, GrantRefusal::EmptyBody] {
        let app = spawn_app_with(AppOptions::default()).await;
        app.idp.controls.set_quirks(Quirks { grant_refusal: style, ..Quirks::default() });
        app.idp.controls.set_token_fault(TokenFault::InvalidGrant);
        let res = app.browser().login_as("alice").await;
        assert_eq!(res.status(), 400, "{style:?}");
        let page = res.text().await.unwrap_or_default();
        assert!(page.contains("sign-in could not be completed"), "{style:?}: {page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_exchange_that_refuses_bffs_credentials_is_a_503_page_and_readyz_says_why() {
    for style in [ClientAuthRefusal::InvalidClient, ClientAuthRefusal::UnauthorizedClient] {
        let app = spawn_app_with(AppOptions::default()).await;
        let broken =
            instance_after(&app, Quirks { client_auth_refusal: style, ..Quirks::default() }, wrong_secret).await;
        let res = login_here(&broken).await;
        let status = res.status().as_u16();
        let page = res.text().await.unwrap_or_default();
        match style {
            // bff's credentials, named as such.
            ClientAuthRefusal::InvalidClient => {
                assert_eq!(status, 503, "{page}");
                assert!(page.contains("cannot complete sign-ins"), "{page}");
                let ready: Value = reqwest::get(format!("{}/readyz", broken.base)).await.unwrap().json().await.unwrap();
                assert_eq!(ready["identity_provider"], "misconfigured");
            }
            // RFC 6749 says the client may not use the grant; the sign-in is refused (400) and
            // the log says that a wrong credential is one cause.
            _ => assert_eq!(status, 400, "{page}"),
        }
        assert!(broken.cookie("bff").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_request_refused_with_a_bare_403_is_reported_as_bffs_credentials() {
    let app = spawn_app_with(AppOptions::default()).await;
    let quirks =
        Quirks { par_offered: true, client_auth_refusal: ClientAuthRefusal::ForbiddenEmpty, ..Quirks::default() };
    let broken = instance_after(&app, quirks, wrong_secret).await;
    let (status, body) = json(broken.start_login(None).await).await;
    assert_eq!((status, body), (503, serde_json::json!({"error": "idp_unavailable"})));
    let ready: Value = reqwest::get(format!("{}/readyz", broken.base)).await.unwrap().json().await.unwrap();
    let problem = ready["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("403 with an empty body") && problem.contains("oidc.client_secret"), "{problem}");
}

fn dpop_par_options() -> AppOptions {
    AppOptions {
        tweak: Arc::new(|c: &mut Config| {
            c.oidc.dpop = true;
            c.oidc.par = bff::config::ParMode::Required;
        }),
        ..AppOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dpop_the_pushed_request_is_proven_and_the_code_bound_to_the_same_key() {
    let app = spawn_app_with(AppOptions::default()).await;
    let quirks = Quirks {
        par_required: true,
        dpop_required_at_par: true,
        iss_in_authorization_response: true,
        ..Quirks::default()
    };
    let options = dpop_par_options();
    let tweak = Arc::clone(&options.tweak);
    app.idp.controls.require_dpop_nonce(true);
    let browser = instance_after(&app, quirks, move |c| tweak(c)).await;
    let proofs_before = app.idp.provider.counters.dpop_proofs.load(std::sync::atomic::Ordering::SeqCst);

    let start = browser.start_login(None).await;
    assert_eq!(start.status(), 302, "the push was accepted (after the nonce the provider asked for)");
    assert_eq!(app.token_requests("par"), 1);
    let callback = browser.sign_in_at_provider(&location(&start), "alice").await;
    let mut here = url::Url::parse(&callback).unwrap();
    let _ = here.set_port(url::Url::parse(&browser.base).unwrap().port());
    assert_eq!(browser.get(here.as_str()).await.status(), 302, "signed in");
    // The push was proven (its retry with the nonce included), then the code exchange with the
    // same key: the provider refuses an exchange whose key is not the pushed `dpop_jkt`.
    let proofs = app.idp.provider.counters.dpop_proofs.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(proofs - proofs_before, 2, "one proof at PAR, one at the code exchange");
    let res = browser.api(Method::GET, "/api/echo").await;
    assert_eq!(res.status(), 200);
    let user: Value = browser.user().await.json().await.unwrap();
    assert_eq!(user["access_token_type"], "DPoP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_proof_at_par_a_provider_that_requires_one_refuses_and_bff_sends_one() {
    let app = spawn_app_with(AppOptions::default()).await;
    let quirks = Quirks { par_offered: true, dpop_required_at_par: true, ..Quirks::default() };
    // Without DPoP bff sends no proof: the provider's refusal is the sign-in's 503.
    let plain = instance_after(&app, quirks, |_| {}).await;
    assert_eq!(plain.start_login(None).await.status(), 503);
    // With DPoP, the proof goes with the push.
    let options = dpop_par_options();
    let tweak = Arc::clone(&options.tweak);
    let quirks = Quirks { iss_in_authorization_response: true, ..quirks };
    let proven: Browser = instance_after(&app, quirks, move |c| tweak(c)).await;
    assert_eq!(login_here(&proven).await.status(), 302);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_without_the_refresh_token_asked_for_is_counted() {
    let app = spawn_app_with(AppOptions::default()).await;
    app.idp.controls.set_quirks(Quirks { no_refresh_tokens: true, ..Quirks::default() });
    for (n, user) in ["alice", "bob"].iter().enumerate() {
        let browser = app.browser();
        assert_eq!(browser.login_as(user).await.status(), 302);
        let counted =
            metric(&app.address, "bff_auth_events_total{event=\"login_without_refresh_token\",frontend=\"default\"}")
                .await as usize;
        assert_eq!(counted, n + 1);
    }
    app.idp.controls.set_quirks(Quirks::default());
    assert_eq!(app.browser().login_as("carol").await.status(), 302);
    let counted =
        metric(&app.address, "bff_auth_events_total{event=\"login_without_refresh_token\",frontend=\"default\"}").await;
    assert_eq!(counted, 2.0, "a sign-in with its refresh token is not counted");
}
