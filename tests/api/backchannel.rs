//! OIDC Back-Channel Logout: the provider ends sessions, on every instance; forged, replayed or
//! malformed logout tokens change nothing.

use bff::demo::idp::SigningKey;
use bff::session::now_unix;
use reqwest::Method;
use serde_json::{Value, json};

use support::{CLIENT_ID, TestApp, spawn_app, spawn_second_instance};

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

async fn post_logout_token(base: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{base}/auth/backchannel-logout"))
        .form(&[("logout_token", token)])
        .send()
        .await
        .expect("post")
        .status()
        .as_u16()
}

fn claims(app: &TestApp, sid: &str) -> Value {
    let now = now_unix();
    json!({
        "iss": app.idp.issuer,
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 120,
        "jti": bff::crypto::random_token(),
        "sid": sid,
        "sub": "demo|alice",
        "events": { EVENT: {} },
    })
}

fn sign(app: &TestApp, claims: &Value) -> String {
    app.idp.provider.key.sign(claims, Some("logout+jwt")).expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_the_provider_session_ends_the_bff_session_on_every_instance() {
    let app = spawn_app().await;
    let second = spawn_second_instance(&app).await;
    let alice = app.browser();
    alice.login_as("alice").await;
    let bob = app.browser();
    bob.login_as("bob").await;
    let alice_on_second = alice.at(&second);
    assert_eq!(alice_on_second.api(Method::GET, "/api/echo").await.status(), 200);
    let sid = app.idp.provider.session_of("alice").expect("alice has a provider session");

    let delivered = app.idp.provider.end_provider_session(&sid).await;

    assert_eq!(delivered, 1, "the provider delivered a logout token to bff");
    assert_eq!(alice.user().await.status(), 401);
    assert_eq!(alice_on_second.api(Method::GET, "/api/echo").await.status(), 401);
    assert_eq!(bob.user().await.status(), 200, "other users' sessions stay");
    let keys = app.keys().await;
    assert_eq!(keys.iter().filter(|k| k.ends_with(":session")).count(), 1, "only bob's session is left: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_token_with_only_sub_ends_every_session_of_that_user() {
    let app = spawn_app().await;
    let laptop = app.browser();
    laptop.login_as("alice").await;
    let phone = app.browser();
    phone.login_as("alice").await;
    let mut c = claims(&app, "unused");
    c.as_object_mut().map(|m| m.remove("sid"));

    assert_eq!(post_logout_token(&app.address, &sign(&app, &c)).await, 200);

    assert_eq!(laptop.user().await.status(), 401);
    assert_eq!(phone.user().await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_logout_token_is_refused() {
    let app = spawn_app().await;
    let token = sign(&app, &claims(&app, "some-sid"));
    assert_eq!(post_logout_token(&app.address, &token).await, 200);
    assert_eq!(post_logout_token(&app.address, &token).await, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untyped_and_plainly_typed_logout_tokens_are_accepted() {
    for typ in [None, Some("JWT")] {
        let app = spawn_app().await;
        let browser = app.browser();
        browser.login_as("alice").await;
        let sid = app.idp.provider.session_of("alice").expect("sid");
        let token = app.idp.provider.key.sign(&claims(&app, &sid), typ).expect("sign");
        assert_eq!(post_logout_token(&app.address, &token).await, 200, "{typ:?}");
        assert_eq!(browser.user().await.status(), 401, "{typ:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_logout_tokens_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let sid = app.idp.provider.session_of("alice").expect("sid");
    let rogue = SigningKey::generate("demo-key").expect("key");
    let now = now_unix();
    let spoiled = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = claims(&app, &sid);
        if let Some(m) = c.as_object_mut() {
            f(m);
        }
        sign(&app, &c)
    };
    let cases: Vec<(&str, String)> = vec![
        ("signed with another key", rogue.sign(&claims(&app, &sid), Some("logout+jwt")).expect("sign")),
        ("another audience", spoiled(&|m| drop(m.insert("aud".into(), json!("someone-else"))))),
        ("another issuer", spoiled(&|m| drop(m.insert("iss".into(), json!("https://evil.example"))))),
        ("with a nonce", spoiled(&|m| drop(m.insert("nonce".into(), json!("n"))))),
        ("expired", spoiled(&|m| drop(m.insert("exp".into(), json!(now - 600))))),
        ("without events", spoiled(&|m| drop(m.remove("events")))),
        ("another event", spoiled(&|m| drop(m.insert("events".into(), json!({"urn:x": {}}))))),
        ("without iat", spoiled(&|m| drop(m.remove("iat")))),
        ("without jti", spoiled(&|m| drop(m.remove("jti")))),
        (
            "without sub or sid",
            spoiled(&|m| {
                m.remove("sub");
                m.remove("sid");
            }),
        ),
        (
            "an HMAC token",
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &claims(&app, &sid),
                &jsonwebtoken::EncodingKey::from_secret(support::CLIENT_SECRET.as_bytes()),
            )
            .expect("hs256"),
        ),
        ("alg none", format!("eyJhbGciOiJub25lIn0.{}.", base64_url(&claims(&app, &sid)))),
        ("typed as an access token", app.idp.provider.key.sign(&claims(&app, &sid), Some("at+jwt")).expect("sign")),
        ("issued an hour ago", spoiled(&|m| drop(m.insert("iat".into(), json!(now - 3600))))),
        ("issued in the future", spoiled(&|m| drop(m.insert("iat".into(), json!(now + 600))))),
        ("not a JWT", "garbage".into()),
        ("empty", String::new()),
    ];
    for (what, token) in cases {
        let status = post_logout_token(&app.address, &token).await;
        assert_eq!(status, 400, "{what}");
    }
    let missing = reqwest::Client::new()
        .post(format!("{}/auth/backchannel-logout", app.address))
        .form(&[("x", "y")])
        .send()
        .await
        .expect("post");
    assert_eq!(missing.status(), 400);
    let body = missing.text().await.unwrap_or_default();
    assert_eq!(body, r#"{"error":"invalid_request"}"#, "no detail leaks");
    assert_eq!(browser.user().await.status(), 200, "the session survived every bad token");
}

fn base64_url(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}
