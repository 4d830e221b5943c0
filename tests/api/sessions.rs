//! The user's own sessions: `GET /auth/sessions`, `DELETE /auth/sessions/{id}`, `DELETE
//! /auth/sessions`, across two instances, and `session.max_per_user`.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use support::{AppOptions, Browser, TestApp, spawn_app, spawn_app_with, spawn_second_instance};

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
                      Chrome/120.0.0.0 Safari/537.36";

/// A browser that says it is `user_agent`.
fn browser_of(base: &str, user_agent: &str) -> Browser {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(user_agent)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    Browser::with_client(base, http)
}

/// Signs `browser` in as `user`; the refresh token the provider issued for that sign-in.
async fn sign_in(app: &TestApp, browser: &Browser, user: &str) -> String {
    let refresh = |app: &TestApp| -> Vec<String> {
        app.idp.provider.issued_tokens().into_iter().filter(|t| !t.contains('.')).collect()
    };
    let before = refresh(app);
    assert_eq!(browser.login_as(user).await.status(), 302);
    let mut new: Vec<String> = refresh(app).into_iter().filter(|t| !before.contains(t)).collect();
    assert_eq!(new.len(), 1, "one refresh token per sign-in");
    new.remove(0)
}

async fn list(browser: &Browser) -> Vec<Value> {
    let res = browser.api(Method::GET, "/auth/sessions").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["sessions"].as_array().cloned().unwrap_or_default()
}

fn current_id(sessions: &[Value]) -> String {
    let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1, "{sessions:?}");
    current[0]["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_sees_their_sessions_on_every_device_and_instance_and_ends_one_everywhere() {
    let app = spawn_app().await;
    let second = spawn_second_instance(&app).await;
    let laptop = browser_of(&app.address, FIREFOX);
    let laptop_refresh = sign_in(&app, &laptop, "alice").await;
    // Signed in through the public URL (the provider sends it back there), then served by the
    // second instance.
    let phone = browser_of(&app.address, CHROME);
    let phone_refresh = sign_in(&app, &phone, "alice").await;
    let phone = phone.at(&second);
    let bob = app.browser();
    sign_in(&app, &bob, "bob").await;

    // Both of alice's sessions, whichever instance is asked; never bob's.
    let from_laptop = list(&laptop).await;
    let from_phone = list(&phone).await;
    assert_eq!(from_laptop.len(), 2, "{from_laptop:?}");
    assert_eq!(from_phone.len(), 2, "{from_phone:?}");
    let laptop_id = current_id(&from_laptop);
    let phone_id = current_id(&from_phone);
    assert_ne!(laptop_id, phone_id);
    let user: Value = laptop.user().await.json().await.unwrap();
    assert_eq!(user["session"]["sid"].as_str(), Some(laptop_id.as_str()), "the id is the public session name");
    for cookie in [laptop.cookie("bff"), phone.cookie("bff")].into_iter().flatten() {
        assert!(!Value::from(from_laptop.clone()).to_string().contains(&cookie), "no cookie value is listed");
    }
    let phone_row = from_laptop.iter().find(|s| s["id"] == phone_id.as_str()).unwrap();
    assert_eq!(phone_row["user_agent"], "Chrome on Windows");
    assert_eq!(phone_row["address"], "127.0.0.0/24");
    assert_eq!(phone_row["current"], false);
    let laptop_row = from_laptop.iter().find(|s| s["id"] == laptop_id.as_str()).unwrap();
    assert_eq!(laptop_row["user_agent"], "Firefox on Linux");
    let created = laptop_row["created_at"].as_u64().unwrap();
    let last_used = laptop_row["last_used_at"].as_u64().unwrap();
    assert_eq!(last_used % 60, 0, "to the minute");
    assert!(last_used <= created && created - last_used < 60, "created {created}, last used {last_used}");
    assert_eq!(list(&bob).await.len(), 1, "bob sees his own only");

    // Bob cannot end alice's session: it is not his (the same answer as an id that never was).
    let by_bob = bob.api(Method::DELETE, &format!("/auth/sessions/{phone_id}")).await;
    assert_eq!(by_bob.status(), 404);
    assert_eq!(bob.api(Method::DELETE, "/auth/sessions/not-a-session-id").await.status(), 404);
    assert_eq!(phone.user().await.status(), 200);
    // Not without the anti-forgery header either.
    let forged = laptop.send(laptop.request(Method::DELETE, &format!("/auth/sessions/{phone_id}"))).await;
    assert_eq!(forged.status(), 403);

    // The laptop (first instance) ends the phone's session (served by the second): refused there
    // at once, on the proxy's path too, and its grant revoked like a logout's.
    assert_eq!(phone.api(Method::GET, "/api/echo").await.status(), 200);
    let ended = laptop.api(Method::DELETE, &format!("/auth/sessions/{phone_id}")).await;
    assert_eq!(ended.status(), 204);
    assert_eq!(phone.api(Method::GET, "/api/echo").await.status(), 401);
    assert_eq!(phone.at(&app.address).user().await.status(), 401);
    assert!(!app.idp.provider.refresh_token_active(&phone_refresh), "the phone's grant is revoked");
    assert!(app.idp.provider.refresh_token_active(&laptop_refresh), "the laptop's is not");
    assert_eq!(list(&laptop).await.len(), 1);
    assert!(
        !app.keys().await.iter().any(|k| k.contains(&format!("{{{phone_id}}}"))),
        "nothing of the phone's session is left"
    );
    // Once ended, it is not found again.
    assert_eq!(laptop.api(Method::DELETE, &format!("/auth/sessions/{phone_id}")).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_all_other_sessions_keeps_this_one() {
    let app = spawn_app().await;
    let second = spawn_second_instance(&app).await;
    let here = app.browser();
    let here_refresh = sign_in(&app, &here, "alice").await;
    let mut others = Vec::new();
    for base in [&app.address, &second] {
        let other = app.browser();
        let refresh = sign_in(&app, &other, "alice").await;
        others.push((other.at(base), refresh));
    }
    assert_eq!(list(&here).await.len(), 3);

    assert_eq!(here.send(here.request(Method::DELETE, "/auth/sessions")).await.status(), 403, "needs X-CSRF");
    let res = here.api(Method::DELETE, "/auth/sessions").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["ended"], 2);
    for (other, refresh) in &others {
        assert_eq!(other.user().await.status(), 401);
        assert_eq!(other.api(Method::GET, "/api/echo").await.status(), 401);
        // Revoked in the background: the sessions themselves are over already.
        support::eventually("the other grants are revoked", Duration::from_secs(5), || async {
            !app.idp.provider.refresh_token_active(refresh)
        })
        .await;
    }
    assert_eq!(here.user().await.status(), 200);
    assert!(app.idp.provider.refresh_token_active(&here_refresh));
    let left = list(&here).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["current"], true);

    // Ending this one by its id is a sign-out: the cookie goes.
    let id = current_id(&left);
    assert_eq!(here.api(Method::DELETE, &format!("/auth/sessions/{id}")).await.status(), 204);
    assert!(here.cookie("bff").is_none());
    assert_eq!(here.api(Method::GET, "/auth/sessions").await.status(), 401);
    assert!(!app.idp.provider.refresh_token_active(&here_refresh));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_beyond_max_per_user_ends_the_oldest_sessions() {
    let app = spawn_app_with(AppOptions {
        tweak: std::sync::Arc::new(|c: &mut bff::config::Config| c.session.max_per_user = 2),
        ..Default::default()
    })
    .await;
    let mut browsers = Vec::new();
    for _ in 0..3 {
        let browser = app.browser();
        let refresh = sign_in(&app, &browser, "alice").await;
        browsers.push((browser, refresh));
        // Starts seconds apart, so "oldest" is well defined (the app's clock, not the wall's).
        app.advance_clock_to(app.clock.now_unix() + 2);
    }
    let (oldest, oldest_refresh) = &browsers[0];
    assert_eq!(oldest.user().await.status(), 401, "the oldest session ended");
    support::eventually("the oldest grant is revoked", Duration::from_secs(5), || async {
        !app.idp.provider.refresh_token_active(oldest_refresh)
    })
    .await;
    for (browser, refresh) in &browsers[1..] {
        assert_eq!(browser.user().await.status(), 200);
        assert!(app.idp.provider.refresh_token_active(refresh));
    }
    assert_eq!(list(&browsers[2].0).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_routes_take_their_methods_and_need_a_session() {
    let app = spawn_app().await;
    let nobody = app.browser();
    assert_eq!(nobody.api(Method::GET, "/auth/sessions").await.status(), 401);
    assert_eq!(nobody.api(Method::DELETE, "/auth/sessions").await.status(), 401);
    assert_eq!(nobody.api(Method::DELETE, "/auth/sessions/abc").await.status(), 401);
    let post = nobody.api(Method::POST, "/auth/sessions").await;
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD, DELETE");
    let get_one = nobody.api(Method::GET, "/auth/sessions/abc").await;
    assert_eq!(get_one.status(), 405);
    assert_eq!(get_one.headers()["allow"], "DELETE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_lists_and_ends_its_own_sessions_only() {
    use support::frontends::{Layout, TwoFrontends};
    let app = TwoFrontends::spawn(Layout::Paths).await;
    let at_one = app.browser(&app.one);
    let at_two = at_one.at(&app.two);
    at_one.login_as("alice").await;
    at_two.login_as("alice").await;

    let listed = |browser: &support::frontends::FrontendBrowser| {
        let browser = browser.clone();
        async move {
            let res = browser.api(Method::GET, "/auth/sessions").await;
            assert_eq!(res.status(), 200);
            res.json::<Value>().await.unwrap()["sessions"].as_array().cloned().unwrap_or_default()
        }
    };
    let at_one_listed = listed(&at_one).await;
    let at_two_listed = listed(&at_two).await;
    assert_eq!((at_one_listed.len(), at_two_listed.len()), (1, 1), "{at_one_listed:?} {at_two_listed:?}");
    let two_id = current_id(&at_two_listed);

    // The same user, another frontend's session: not found here, and it lives on.
    let res = at_one.api(Method::DELETE, &format!("/auth/sessions/{two_id}")).await;
    assert_eq!(res.status(), 404);
    assert_eq!(at_one.api(Method::DELETE, "/auth/sessions").await.json::<Value>().await.unwrap()["ended"], 0);
    assert_eq!(at_two.user().await.status(), 200);
}
