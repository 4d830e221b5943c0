//! Device Bound Session Credentials (`session.dbsc`), through real HTTP: a test browser with its
//! own P-256 or RSA device key registers at sign-in, renews its bound cookie by signing bff's
//! challenges, and a copy of its cookies without the key stops working once the copied bound
//! cookie expires. The app's clock is moved instead of waiting for a cookie to expire.

use std::sync::Arc;
use std::time::Duration;

use bff::config::{Config, DbscMode};
use reqwest::Method;
use serde_json::{Value, json};
use support::dbsc::{self, Device};
use support::{AppOptions, Browser, TestApp, metric, spawn_app_with, spawn_instance_with};

const TTL_SECS: u64 = 600;
const BOUND: &str = "bff-bound";

async fn spawn(mode: DbscMode) -> TestApp {
    spawn_with(mode, AppOptions::default()).await
}

async fn spawn_with(mode: DbscMode, options: AppOptions) -> TestApp {
    spawn_app_with(AppOptions {
        tweak: Arc::new(move |c: &mut Config| {
            c.session.dbsc = mode;
            c.session.dbsc_cookie_ttl = Duration::from_secs(TTL_SECS);
        }),
        ..options
    })
    .await
}

async fn answer(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or_default())
}

async fn call_api(browser: &Browser) -> (u16, Value) {
    answer(browser.api(Method::GET, "/api/orders").await).await
}

/// The browser's cookies copied into another browser (what cookie-stealing malware does).
fn copy_of(browser: &Browser) -> Browser {
    let thief = Browser::new(&browser.base);
    for (name, value) in browser.jar.lock().expect("jar").iter() {
        thief.set_cookie(name, value);
    }
    thief
}

async fn dbsc_metric(app: &TestApp, series: &str) -> f64 {
    metric(&app.address, series).await
}

fn past_the_bound_cookie(app: &TestApp) {
    app.clock.advance(Duration::from_secs(TTL_SECS + 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_offers_registration_and_a_registered_session_calls_with_its_bound_cookie() {
    let app = spawn(DbscMode::Optional).await;
    let browser = app.browser();
    let callback = browser.login_as("alice").await;
    let offer = dbsc::offer(&callback).expect("the sign-in's redirect offers a registration");
    assert_eq!(offer.path, "/auth/dbsc/register");

    let device = Device::p256();
    // No anti-forgery header and no Origin: the browser sends neither with a registration.
    let res = dbsc::register(&browser, &offer.path, &device.registration_proof(&offer.challenge)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    // No challenge in advance: the next refresh comes minutes later, after a challenge's life.
    assert!(dbsc::challenge(&res).is_none());
    let set_cookie: Vec<String> =
        res.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap_or_default().to_string()).collect();
    let bound = set_cookie.iter().find(|c| c.starts_with(&format!("{BOUND}="))).expect("the bound cookie");
    assert!(bound.contains("HttpOnly") && bound.contains("Path=/") && bound.contains("Max-Age=600"), "{bound}");
    assert!(bound.contains("SameSite=Lax"), "the session cookie's SameSite: {bound}");
    let instructions: Value = res.json().await.expect("the session instructions");
    assert!(instructions["session_identifier"].as_str().is_some_and(|id| id.len() == 22));
    assert_eq!(instructions["refresh_url"], "/auth/dbsc/refresh");
    assert_eq!(instructions["scope"]["origin"], app.address.as_str());
    assert_eq!(instructions["scope"]["include_site"], false);
    assert_eq!(
        instructions["credentials"],
        json!([{"type": "cookie", "name": BOUND, "attributes": "Path=/; HttpOnly; SameSite=Lax"}]),
        "exactly the attributes it is set with: the browser compares them"
    );
    let rules: Vec<(String, String)> = instructions["scope"]["scope_specification"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| (r["type"].as_str().unwrap_or("").into(), r["path"].as_str().unwrap_or("").into()))
        .collect();
    assert_eq!(rules[0], ("exclude".into(), "/".into()));
    assert!(rules.contains(&("include".into(), "/api".into())), "{rules:?}");

    assert_eq!(call_api(&browser).await.0, 200);
    let (status, user) = answer(browser.user().await).await;
    assert_eq!((status, &user["device_bound"]), (200, &json!(true)));
    let registered = dbsc_metric(&app, "bff_dbsc_registrations_total{alg=\"ES256\",frontend=\"default\"}").await;
    assert_eq!(registered, 1.0);

    // Without the bound cookie the same session is refused, at the API and at /auth/user.
    let without = copy_of(&browser);
    without.jar.lock().expect("jar").remove(BOUND);
    let (status, body) = call_api(&without).await;
    assert_eq!((status, body), (401, json!({"error": "dbsc_bound_cookie_required"})));
    assert_eq!(answer(without.user().await).await.0, 401);
    let refused =
        dbsc_metric(&app, "bff_dbsc_refusals_total{frontend=\"default\",reason=\"missing\",stage=\"call\"}").await;
    assert_eq!(refused, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_bound_cookie_is_renewed_by_signing_a_challenge_with_the_registered_key() {
    let app = spawn(DbscMode::Optional).await;
    let (browser, device) = (app.browser(), Device::p256());
    let id = dbsc::sign_in_bound(&browser, &device).await;
    let first_cookie = browser.cookie(BOUND).expect("bound cookie");

    past_the_bound_cookie(&app);
    let res = browser.api(Method::GET, "/api/orders").await;
    assert_eq!(res.status(), 401);
    assert!(browser.cookie(BOUND).is_none(), "an expired bound cookie is cleared: the browser refreshes next");

    let renewed = dbsc::refresh_signed(&browser, &device, &id).await;
    assert_eq!(renewed.status(), 200);
    let instructions: Value = renewed.json().await.expect("instructions");
    assert_eq!(instructions["session_identifier"], id.as_str());
    assert_ne!(browser.cookie(BOUND), Some(first_cookie));
    assert_eq!(call_api(&browser).await.0, 200, "the renewed bound cookie does");

    // And again when that one expires.
    past_the_bound_cookie(&app);
    assert_eq!(dbsc::refresh_signed(&browser, &device, &id).await.status(), 200);
    assert_eq!(call_api(&browser).await.0, 200);
    assert_eq!(dbsc_metric(&app, "bff_dbsc_refreshes_total{frontend=\"default\"}").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_session_cookie_without_the_key_stops_working_once_the_bound_cookie_expires() {
    let app = spawn(DbscMode::Optional).await;
    let (browser, device) = (app.browser(), Device::p256());
    let id = dbsc::sign_in_bound(&browser, &device).await;
    let thief = copy_of(&browser);
    assert_eq!(call_api(&thief).await.0, 200, "a copied bound cookie works until it expires");

    past_the_bound_cookie(&app);
    assert_eq!(call_api(&thief).await, (401, json!({"error": "dbsc_bound_cookie_required"})));
    // The thief's own key does not renew it: a new challenge each time, never a cookie.
    let thief_key = Device::p256();
    let first = dbsc::refresh(&thief, &id, None).await;
    let (challenge, _) = dbsc::challenge(&first).expect("a challenge");
    let forged = dbsc::refresh(&thief, &id, Some(&thief_key.refresh_proof(&challenge))).await;
    assert_eq!(forged.status(), 403, "another key: a new challenge, no cookie");
    assert!(forged.headers().get("set-cookie").is_none());
    assert_eq!(call_api(&thief).await.0, 401);
    // Nor can it bind the session to its own key: it is bound, and it has no registration
    // challenge (those come with a sign-in only).
    let register = dbsc::register(&thief, "/auth/dbsc/register", &thief_key.registration_proof(&challenge)).await;
    assert_eq!(answer(register).await, (400, json!({"error": "dbsc_registration_refused"})));
    let bad_signature = "bff_dbsc_refusals_total{frontend=\"default\",reason=\"bad_signature\",stage=\"refresh\"}";
    assert_eq!(dbsc_metric(&app, bad_signature).await, 1.0);

    // The device the session was bound to goes on.
    assert_eq!(dbsc::refresh_signed(&browser, &device, &id).await.status(), 200);
    assert_eq!(call_api(&browser).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_are_single_use_short_lived_and_tied_to_their_session() {
    let app = spawn(DbscMode::Optional).await;
    let (alice, alice_device) = (app.browser(), Device::p256());
    let (bob, bob_device) = (app.browser(), Device::p256());
    let alice_id = dbsc::sign_in_bound(&alice, &alice_device).await;
    let bob_id = dbsc::sign_in_bound(&bob, &bob_device).await;
    past_the_bound_cookie(&app);

    // Replayed: the same signed answer again is refused with a new challenge (a browser resends
    // after a network error: its device session must not end), and gets no cookie.
    let challenge = dbsc::challenge(&dbsc::refresh(&alice, &alice_id, None).await).expect("challenge").0;
    let proof = alice_device.refresh_proof(&challenge);
    assert_eq!(dbsc::refresh(&alice, &alice_id, Some(&proof)).await.status(), 200);
    alice.jar.lock().expect("jar").remove(BOUND);
    let replayed = dbsc::refresh(&alice, &alice_id, Some(&proof)).await;
    assert_eq!(replayed.status(), 403);
    assert!(dbsc::challenge(&replayed).is_some(), "with a new challenge");
    assert!(alice.cookie(BOUND).is_none());

    // Bob's challenge, signed by Bob's key, does not renew Alice's session (nor his own under
    // Alice's id).
    let bob_challenge = dbsc::challenge(&dbsc::refresh(&bob, &bob_id, None).await).expect("challenge").0;
    let foreign = dbsc::refresh(&alice, &alice_id, Some(&alice_device.refresh_proof(&bob_challenge))).await;
    assert_eq!(foreign.status(), 403);
    let crossed = dbsc::refresh(&alice, &bob_id, Some(&bob_device.refresh_proof(&bob_challenge))).await;
    assert_eq!(answer(crossed).await, (200, json!({"session_identifier": bob_id, "continue": false})));

    // Stale: a challenge answered after its two minutes.
    let late = dbsc::challenge(&dbsc::refresh(&alice, &alice_id, None).await).expect("challenge").0;
    app.clock.advance(Duration::from_secs(121));
    assert_eq!(dbsc::refresh(&alice, &alice_id, Some(&alice_device.refresh_proof(&late))).await.status(), 403);

    // A registration challenge is no refresh challenge.
    let offer = dbsc::offer(&app.browser().login_as("alice").await).expect("offer");
    let as_refresh = dbsc::refresh(&alice, &alice_id, Some(&alice_device.refresh_proof(&offer.challenge))).await;
    assert_eq!(as_refresh.status(), 403);
    let stale = "bff_dbsc_refusals_total{frontend=\"default\",reason=\"stale_challenge\",stage=\"refresh\"}";
    assert_eq!(dbsc_metric(&app, stale).await, 3.0);
    let replays = "bff_dbsc_refusals_total{frontend=\"default\",reason=\"replayed_challenge\",stage=\"refresh\"}";
    assert_eq!(dbsc_metric(&app, replays).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_is_refused_for_a_replayed_foreign_or_unsigned_proof() {
    let app = spawn(DbscMode::Optional).await;
    let (alice, bob, device) = (app.browser(), app.browser(), Device::p256());
    let offer = dbsc::offer(&alice.login_as("alice").await).expect("offer");
    let bob_offer = dbsc::offer(&bob.login_as("bob").await).expect("offer");
    let refused = json!({"error": "dbsc_registration_refused"});

    // Bob's registration challenge at Alice's session.
    let foreign = dbsc::register(&alice, &offer.path, &device.registration_proof(&bob_offer.challenge)).await;
    assert_eq!(answer(foreign).await, (400, refused.clone()));
    // A proof whose signature is not its key's.
    let mut tampered = device.registration_proof(&offer.challenge);
    tampered.push('A');
    assert_eq!(answer(dbsc::register(&alice, &offer.path, &tampered).await).await.0, 400);
    // No proof; no session.
    let empty = alice.send(alice.request(Method::POST, "/auth/dbsc/register")).await;
    assert_eq!(answer(empty).await, (400, refused.clone()));
    let stranger = Browser::new(&app.address);
    let no_session = dbsc::register(&stranger, &offer.path, &device.registration_proof(&offer.challenge)).await;
    assert_eq!(no_session.status(), 400);

    // The real one binds; the same proof again (a replay) and a second key do not.
    let proof = device.registration_proof(&offer.challenge);
    assert_eq!(dbsc::register(&alice, &offer.path, &proof).await.status(), 200);
    assert_eq!(answer(dbsc::register(&alice, &offer.path, &proof).await).await, (400, refused));
    let reasons = ["bad_signature", "no_proof", "no_session", "stale_challenge", "replayed_challenge"];
    for reason in reasons {
        let series = format!("bff_dbsc_refusals_total{{frontend=\"default\",reason=\"{reason}\",stage=\"register\"}}");
        assert!(dbsc_metric(&app, &series).await >= 1.0, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rsa_device_registers_and_refreshes() {
    let app = spawn(DbscMode::Optional).await;
    let (browser, device) = (app.browser(), Device::rsa());
    let id = dbsc::sign_in_bound(&browser, &device).await;
    past_the_bound_cookie(&app);
    assert_eq!(dbsc::refresh_signed(&browser, &device, &id).await.status(), 200);
    assert_eq!(call_api(&browser).await.0, 200);
    assert_eq!(dbsc_metric(&app, "bff_dbsc_registrations_total{alg=\"RS256\",frontend=\"default\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_keeps_an_unregistered_session_off_the_api_until_it_registers() {
    let app = spawn(DbscMode::Required).await;
    let browser = app.browser();
    let offer = dbsc::offer(&browser.login_as("alice").await).expect("offer");
    let res = browser.api(Method::GET, "/api/orders").await;
    assert_eq!(
        res.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "the SPA's first call may race the registration"
    );
    assert_eq!(answer(res).await, (401, json!({"error": "dbsc_registration_required"})));
    let (status, user) = answer(browser.user().await).await;
    assert_eq!((status, &user["device_bound"]), (200, &json!(false)), "the SPA learns it is signed in, not bound");

    let device = Device::p256();
    assert_eq!(dbsc::register(&browser, &offer.path, &device.registration_proof(&offer.challenge)).await.status(), 200);
    assert_eq!(call_api(&browser).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_leaves_a_browser_that_never_registers_as_before_and_off_offers_nothing() {
    let app = spawn(DbscMode::Optional).await;
    let browser = app.browser();
    assert!(dbsc::offer(&browser.login_as("alice").await).is_some());
    assert_eq!(call_api(&browser).await.0, 200);
    past_the_bound_cookie(&app);
    assert_eq!(call_api(&browser).await.0, 200);
    assert_eq!(answer(browser.user().await).await.1["device_bound"], false);

    let off = spawn(DbscMode::Off).await;
    let browser = off.browser();
    assert!(dbsc::offer(&browser.login_as("alice").await).is_none());
    assert_eq!(dbsc::refresh(&browser, "AAAAAAAAAAAAAAAAAAAAAA", None).await.status(), 404, "no DBSC routes");
    assert_eq!(call_api(&browser).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_session_tells_the_browser_to_end_its_device_session() {
    let app = spawn(DbscMode::Optional).await;
    let (browser, device) = (app.browser(), Device::p256());
    let id = dbsc::sign_in_bound(&browser, &device).await;
    // Chromium keeps the session cookie it had when asked to refresh after a logout elsewhere;
    // the copy plays that browser.
    let kept = copy_of(&browser);
    let logout = browser.logout().await;
    let cleared: Vec<&str> = logout.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).collect();
    assert!(
        cleared.iter().any(|c| c.starts_with(&format!("{BOUND}=;")) || c.starts_with(&format!("{BOUND}=\"\""))),
        "{cleared:?}"
    );
    let ended = dbsc::refresh(&kept, &id, None).await;
    assert!(ended.headers().get("set-cookie").is_some(), "the bound cookie is cleared");
    assert_eq!(answer(ended).await, (200, json!({"session_identifier": id, "continue": false})));
    // A browser whose session cookie is gone too.
    assert_eq!(answer(dbsc::refresh(&browser, &id, None).await).await.1["continue"], false);

    // Expiry ends it the same way.
    let other = app.browser();
    let other_id = dbsc::sign_in_bound(&other, &device).await;
    app.clock.advance(Duration::from_secs(86_400 + 1));
    assert_eq!(answer(dbsc::refresh(&other, &other_id, None).await).await.1["continue"], false);
    let ended_series = "bff_dbsc_refusals_total{frontend=\"default\",reason=\"session_ended\",stage=\"refresh\"}";
    assert_eq!(dbsc_metric(&app, ended_series).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_made_at_one_instance_holds_at_another() {
    let app = spawn(DbscMode::Optional).await;
    let second = spawn_instance_with(&app, |_| {}).await;
    let (browser, device) = (app.browser(), Device::p256());
    let id = dbsc::sign_in_bound(&browser, &device).await;
    let at_second = browser.at(&second);
    assert_eq!(call_api(&at_second).await.0, 200, "the bound cookie one instance made does at the other");
    let without = copy_of(&at_second);
    without.jar.lock().expect("jar").remove(BOUND);
    assert_eq!(call_api(&without).await.0, 401, "and the other instance knows the session is bound");

    past_the_bound_cookie(&app);
    // A challenge from one instance, answered at the other; its replay at the first.
    let challenge = dbsc::challenge(&dbsc::refresh(&browser, &id, None).await).expect("challenge").0;
    let proof = device.refresh_proof(&challenge);
    assert_eq!(dbsc::refresh(&at_second, &id, Some(&proof)).await.status(), 200);
    assert_eq!(call_api(&browser).await.0, 200);
    browser.jar.lock().expect("jar").remove(BOUND);
    assert_eq!(dbsc::refresh(&browser, &id, Some(&proof)).await.status(), 403, "used once, whichever instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_during_a_token_refresh_keeps_both() {
    // Tokens due for refresh 30 s after sign-in: well within the registration challenge's life.
    let options = AppOptions { access_token_ttl: Duration::from_secs(60), ..AppOptions::default() };
    let app = spawn_with(DbscMode::Optional, options).await;
    let browser = app.browser();
    let callback = browser.login_as("alice").await;
    let offer = dbsc::offer(&callback).expect("offer");
    let user: Value = browser.user().await.json().await.expect("user");
    let expires_at = user["access_token_expires_at"].as_u64().expect("expiry");
    app.make_refresh_due(expires_at, 30);

    let device = Device::p256();
    let proof = device.registration_proof(&offer.challenge);
    let calls = (0..8).map(|_| call_api(&browser));
    let (registered, answers) =
        tokio::join!(dbsc::register(&browser, &offer.path, &proof), futures_util::future::join_all(calls));
    assert_eq!(registered.status(), 200);
    // Calls that left before the binding was written went without the bound cookie; none failed
    // for the refresh.
    assert!(answers.iter().all(|(status, _)| *status == 200 || *status == 401), "{answers:?}");
    assert_eq!(app.token_requests("refresh_token"), 1, "one refresh");
    // The binding survived the refresh, and the refreshed token is the session's.
    let without = copy_of(&browser);
    without.jar.lock().expect("jar").remove(BOUND);
    assert_eq!(call_api(&without).await.0, 401);
    let (status, user) = answer(browser.user().await).await;
    assert_eq!((status, &user["device_bound"]), (200, &json!(true)));
    assert_ne!(user["access_token_expires_at"].as_u64(), Some(expires_at), "and the refreshed token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spas_first_user_call_offers_the_registration_for_a_few_minutes_after_sign_in() {
    let app = spawn(DbscMode::Optional).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    // The SPA's `/auth/user` right after sign-in: same-site, unlike the provider's redirect.
    let user = browser.user().await;
    let offer = dbsc::offer(&user).expect("offered while unbound");
    let device = Device::p256();
    assert_eq!(dbsc::register(&browser, &offer.path, &device.registration_proof(&offer.challenge)).await.status(), 200);
    assert!(dbsc::offer(&browser.user().await).is_none(), "a bound session is not offered again");

    // Past the window, a session that never registered is not offered it any more: a cookie
    // copied later cannot bind the session to another key.
    let late = app.browser();
    late.login_as("bob").await;
    app.clock.advance(Duration::from_secs(301));
    let res = late.user().await;
    assert_eq!(res.status(), 200);
    assert!(dbsc::offer(&res).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_sessions_steady_state_call_makes_no_store_command() {
    const STORE_OPS: &str = "bff_session_store_duration_seconds_count";
    let app = spawn_app_with(AppOptions {
        tweak: Arc::new(|c: &mut Config| {
            c.session.dbsc = DbscMode::Required;
            c.tokens.local_cache = true;
        }),
        ..AppOptions::default()
    })
    .await;
    support::eventually("the invalidation channel is up", Duration::from_secs(5), || {
        let base = app.address.clone();
        async move { metric(&base, "bff_token_cache_channel_up").await == 1.0 }
    })
    .await;
    let (browser, device) = (app.browser(), Device::p256());
    dbsc::sign_in_bound(&browser, &device).await;
    assert_eq!(call_api(&browser).await.0, 200, "the miss that fills");

    let ops = metric(&app.address, STORE_OPS).await;
    for _ in 0..50 {
        assert_eq!(call_api(&browser).await.0, 200);
    }
    assert_eq!(metric(&app.address, STORE_OPS).await, ops, "the bound cookie is checked without the store");
}
