//! The coherent local token cache (docs/CONTRACT.md, "Storage"): no store command on a steady-state
//! call, and every change — made by another instance or by Redis itself — refused or picked up
//! by every instance once the invalidation arrives (polled with a deadline, never slept for).
//! Two instances share one Redis in every test here; the tests that flush, restart or cut
//! connections run a Redis of their own.

use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use support::{AppOptions, Browser, RedisProcess, TestApp, eventually, metric, spawn_app_with, spawn_instance_with};

const DEADLINE: Duration = Duration::from_secs(5);
const STORE_OPS: &str = "bff_session_store_duration_seconds_count";

fn cache_on(c: &mut bff::config::Config) {
    c.tokens.local_cache = true;
}

async fn app_with_cache(redis_url: Option<String>) -> TestApp {
    let mut options = AppOptions { tweak: std::sync::Arc::new(cache_on), ..Default::default() };
    if let Some(url) = redis_url {
        options.redis_url = Some(url);
    }
    spawn_app_with(options).await
}

/// Waits until an instance's invalidation channel is up, so its next miss fills the cache.
async fn channel_up(base: &str) {
    let base = base.to_string();
    eventually("the invalidation channel is up", DEADLINE, || {
        let base = base.clone();
        async move { metric(&base, "bff_token_cache_channel_up").await == 1.0 }
    })
    .await;
}

/// Two instances with the cache on, both channels up.
async fn two_instances(redis_url: Option<String>) -> (TestApp, String) {
    let app = app_with_cache(redis_url).await;
    let second = spawn_instance_with(&app, cache_on).await;
    channel_up(&app.address).await;
    channel_up(&second).await;
    (app, second)
}

/// Two cached instances, alice signed in on the first and answered from the cache on both.
struct AliceOnTwo {
    app: TestApp,
    second: String,
    alice: Browser,
    alice_on_second: Browser,
    /// Her session cookie as it was before anything cleared it.
    cookie: String,
}

async fn alice_cached_on_two(redis_url: Option<String>) -> AliceOnTwo {
    let (app, second) = two_instances(redis_url).await;
    let alice = app.browser();
    alice.login_as("alice").await;
    let cookie = cookie_of(&app, &alice);
    let alice_on_second = alice.at(&second);
    cached_on(&app.address, &alice).await;
    cached_on(&second, &alice_on_second).await;
    AliceOnTwo { app, second, alice, alice_on_second, cookie }
}

async fn api_status(browser: &Browser) -> u16 {
    browser.api(Method::GET, "/api/echo").await.status().as_u16()
}

/// Polls until the browser's API call is refused with bff's own 401, decided without calling
/// the upstream. The cookie is sent as it was every time: a refusal clears it, and a browser
/// without a cookie would be refused whatever the cache holds. A stale cached token would reach
/// the upstream (which may refuse it too, the provider having revoked it).
async fn refused_eventually(what: &str, app: &TestApp, browser: &Browser, cookie: &str) {
    let url = browser.url("/api/echo");
    let cookie = cookie.to_string();
    let seen = app.upstream.seen.clone();
    let client = reqwest::Client::new();
    eventually(what, DEADLINE, || {
        let (client, url, cookie, seen) = (client.clone(), url.clone(), cookie.clone(), seen.clone());
        async move {
            let before = seen.lock().unwrap().len();
            let res = client.get(url).header("cookie", cookie).header("x-csrf", "1").send().await.unwrap();
            let upstream_called = seen.lock().unwrap().len() != before;
            res.status() == 401
                && !upstream_called
                && res.json::<serde_json::Value>().await.ok() == Some(json!({"error": "login_required"}))
        }
    })
    .await;
}

/// The session cookie as the browser holds it now (a logout clears it in the browser; the
/// tests replay it as a stolen or stale cookie would be).
fn cookie_of(app: &TestApp, browser: &Browser) -> String {
    let name = &app.config.session.cookie_name;
    format!("{name}={}", browser.cookie(name).expect("signed in"))
}

/// Calls until one is answered from the cache: the instance holds the session.
async fn cached_on(base: &str, browser: &Browser) {
    let hits = metric(base, "bff_token_cache_hits_total").await;
    assert_eq!(api_status(browser).await, 200);
    assert_eq!(api_status(browser).await, 200);
    assert!(metric(base, "bff_token_cache_hits_total").await > hits, "served from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_state_call_makes_no_store_command() {
    let app = app_with_cache(None).await;
    channel_up(&app.address).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    assert_eq!(api_status(&browser).await, 200, "the miss that fills");

    let ops = metric(&app.address, STORE_OPS).await;
    let hits = metric(&app.address, "bff_token_cache_hits_total").await;
    for _ in 0..50 {
        assert_eq!(api_status(&browser).await, 200);
    }
    assert_eq!(metric(&app.address, STORE_OPS).await, ops, "no store command in 50 calls");
    assert_eq!(metric(&app.address, "bff_token_cache_hits_total").await, hits + 50.0);
    assert_eq!(metric(&app.address, "bff_token_cache_entries").await, 1.0);
    let text = reqwest::get(format!("{}/metrics", app.address)).await.unwrap().text().await.unwrap();
    assert!(text.contains("bff_token_cache_mode{mode=\"tracking\"} 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_cache_every_call_reads_the_store_once() {
    let app = spawn_app_with(AppOptions {
        tweak: std::sync::Arc::new(|c| c.tokens.local_cache = false),
        ..Default::default()
    })
    .await;
    let browser = app.browser();
    browser.login_as("alice").await;
    assert_eq!(api_status(&browser).await, 200);
    let ops = metric(&app.address, STORE_OPS).await;
    for _ in 0..20 {
        assert_eq!(api_status(&browser).await, 200);
    }
    assert_eq!(metric(&app.address, STORE_OPS).await, ops + 20.0, "one read per call");
    assert_eq!(metric(&app.address, "bff_token_cache_hits_total").await, 0.0);
    let text = reqwest::get(format!("{}/metrics", app.address)).await.unwrap().text().await.unwrap();
    assert!(text.contains("bff_token_cache_mode{mode=\"per_call_read\"} 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_memory_store_reads_on_every_call() {
    let app =
        spawn_app_with(AppOptions { redis_url: None, tweak: std::sync::Arc::new(cache_on), ..Default::default() })
            .await;
    let browser = app.browser();
    browser.login_as("alice").await;
    assert_eq!(api_status(&browser).await, 200);
    let text = reqwest::get(format!("{}/metrics", app.address)).await.unwrap().text().await.unwrap();
    assert!(text.contains("bff_token_cache_mode{mode=\"per_call_read\"} 1"), "{text}");
    assert!(text.contains("bff_token_cache_channel_up 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_instance_is_refused_by_the_other() {
    let AliceOnTwo { app, second, alice, alice_on_second, cookie } = alice_cached_on_two(None).await;
    let invalidations = metric(&second, "bff_token_cache_invalidations_total").await;

    assert_eq!(alice.logout().await.status(), 303);

    assert_eq!(api_status(&alice).await, 401, "at once on the instance that made the change");
    refused_eventually("the other instance refuses the logged-out session", &app, &alice_on_second, &cookie).await;
    assert!(metric(&second, "bff_token_cache_invalidations_total").await > invalidations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_channel_logout_on_one_instance_is_refused_by_the_other() {
    let AliceOnTwo { app, second, alice_on_second, cookie, .. } = alice_cached_on_two(None).await;
    let bob = app.browser();
    bob.login_as("bob").await;
    let bob_on_second = bob.at(&second);
    cached_on(&second, &bob_on_second).await;

    let sid = app.idp.provider.session_of("alice").expect("alice has a provider session");
    assert_eq!(app.idp.provider.end_provider_session(&sid).await, 1, "delivered to the first instance");

    refused_eventually("the other instance refuses the ended session", &app, &alice_on_second, &cookie).await;
    assert_eq!(api_status(&bob_on_second).await, 200, "other sessions stay cached and usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_on_one_instance_reaches_the_other_which_never_sends_the_old_refresh_token() {
    let AliceOnTwo { app, alice, alice_on_second, .. } = alice_cached_on_two(None).await;
    let old = app.upstream.seen().last().and_then(|s| s.bearer.clone()).expect("a bearer");

    // The upstream rejects the next call: the first instance refreshes (rotating the refresh
    // token) and retries. The second instance's cached token is still unexpired: only the
    // invalidation can tell it.
    app.upstream.controls.reject_next.store(1, Ordering::SeqCst);
    assert_eq!(api_status(&alice).await, 200);
    assert_eq!(app.token_requests("refresh_token"), 1);
    let new = app.upstream.seen().last().and_then(|s| s.bearer.clone()).expect("a bearer");
    assert_ne!(old, new);

    let (b, upstream) = (alice_on_second.clone(), app.upstream.seen.clone());
    let expected = new.clone();
    eventually("the other instance sends the new access token", DEADLINE, || {
        let (b, upstream, expected) = (b.clone(), upstream.clone(), expected.clone());
        async move {
            b.api(Method::GET, "/api/echo").await.status() == 200
                && upstream.lock().unwrap().last().and_then(|s| s.bearer.clone()) == Some(expected)
        }
    })
    .await;
    for _ in 0..10 {
        assert_eq!(api_status(&alice_on_second).await, 200);
    }
    assert_eq!(app.upstream.seen().last().and_then(|s| s.bearer.clone()), Some(new));
    assert_eq!(app.token_requests("refresh_token"), 1, "the second instance did not refresh");
    assert_eq!(app.idp.provider.counters.reuse_detected.load(Ordering::SeqCst), 0, "no refresh token reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_is_refused_by_every_instance() {
    let redis = RedisProcess::spawn().await;
    let AliceOnTwo { app, alice, alice_on_second, cookie, .. } = alice_cached_on_two(Some(redis.url())).await;

    let mut conn = redis.connection().await;
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await.unwrap();

    refused_eventually("the first instance refuses after FLUSHALL", &app, &alice, &cookie).await;
    refused_eventually("the second instance refuses after FLUSHALL", &app, &alice_on_second, &cookie).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_lost_sessions_are_refused_and_new_logins_work() {
    let mut redis = RedisProcess::spawn().await;
    let AliceOnTwo { app, second, alice, alice_on_second, cookie } = alice_cached_on_two(Some(redis.url())).await;

    // The same port, a new data directory: everything is gone.
    let port = redis.port();
    redis.kill();
    let restarted = RedisProcess::start(port, &support::temp_dir("redis"));
    restarted.answering().await;

    refused_eventually("the first instance refuses the lost session", &app, &alice, &cookie).await;
    refused_eventually("the second instance refuses the lost session", &app, &alice_on_second, &cookie).await;
    let again = app.browser();
    again.login_as("alice").await;
    assert_eq!(api_status(&again).await, 200);
    assert_eq!(api_status(&again.at(&second)).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_channel_is_noticed_and_a_logout_made_meanwhile_is_refused() {
    let redis = RedisProcess::spawn().await;
    let AliceOnTwo { app, second, alice, alice_on_second, cookie } = alice_cached_on_two(Some(redis.url())).await;

    // Every connection of both instances, the invalidation channels included.
    let mut conn = redis.connection().await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(killed >= 2, "killed {killed}");
    assert_eq!(alice.logout().await.status(), 303);

    refused_eventually("the other instance refuses after losing its channel", &app, &alice_on_second, &cookie).await;
    let bob = app.browser();
    bob.login_as("bob").await;
    channel_up(&second).await;
    cached_on(&second, &bob.at(&second)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_timeout_ends_the_cached_session_too() {
    let idle = |c: &mut bff::config::Config| {
        c.tokens.local_cache = true;
        c.session.idle_timeout = Duration::from_secs(2);
    };
    let app = spawn_app_with(AppOptions { tweak: std::sync::Arc::new(idle), ..Default::default() }).await;
    let second = spawn_instance_with(&app, idle).await;
    channel_up(&second).await;
    let alice = app.browser();
    alice.login_as("alice").await;
    let alice_on_second = alice.at(&second);
    cached_on(&second, &alice_on_second).await;

    // No call meanwhile (a call would extend the session): wait for Redis to end it.
    let conn = app.redis().await;
    let key = format!("{}*:tokens", app.prefix);
    eventually("the token set expires in Redis", Duration::from_secs(10), || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move { redis::cmd("KEYS").arg(&key).query_async::<Vec<String>>(&mut conn).await.unwrap().is_empty() }
    })
    .await;

    // The cached entry was never trusted past the time to live the store gave it.
    assert_eq!(api_status(&alice_on_second).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_sessions_than_the_cache_holds_are_all_served_right() {
    let small = |c: &mut bff::config::Config| {
        c.tokens.local_cache = true;
        c.tokens.local_cache_max_entries = NonZeroUsize::new(2).unwrap();
    };
    let app = spawn_app_with(AppOptions { tweak: std::sync::Arc::new(small), ..Default::default() }).await;
    channel_up(&app.address).await;
    let users = ["alice", "bob", "carol", "dave", "erin"];
    let mut browsers = Vec::new();
    for user in users {
        let b = app.browser();
        b.login_as(user).await;
        browsers.push(b);
    }
    for _round in 0..3 {
        for (user, b) in users.iter().zip(&browsers) {
            assert_eq!(api_status(b).await, 200);
            let bearer = app.upstream.seen().last().and_then(|s| s.bearer.clone()).expect("bearer");
            let claims = app.idp.provider.active_access_token(&bearer).expect("an active token");
            assert!(claims.sub.ends_with(user), "{user}'s call carried {}'s token", claims.sub);
        }
        assert!(metric(&app.address, "bff_token_cache_entries").await <= 2.0);
    }
    assert!(metric(&app.address, "bff_token_cache_fills_total").await >= 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_probe_takes_the_channel_down_until_redis_answers_again() {
    let redis = RedisProcess::spawn().await;
    let app = app_with_cache(Some(redis.url())).await;
    channel_up(&app.address).await;
    let alice = app.browser();
    alice.login_as("alice").await;
    cached_on(&app.address, &alice).await;

    // Redis stops answering without closing anything (as behind a partition): only the
    // channel's probe, unanswered within redis_timeout_ms, can tell.
    let mut conn = redis.connection().await;
    redis::cmd("CLIENT").arg("PAUSE").arg(4000).arg("ALL").query_async::<()>(&mut conn).await.unwrap();
    let base = app.address.clone();
    eventually("the channel is taken down and the cache emptied", Duration::from_secs(4), || {
        let base = base.clone();
        async move {
            metric(&base, "bff_token_cache_channel_up").await == 0.0
                && metric(&base, "bff_token_cache_entries").await == 0.0
        }
    })
    .await;
    redis::cmd("CLIENT").arg("UNPAUSE").query_async::<()>(&mut conn).await.unwrap();
    channel_up(&app.address).await;
    cached_on(&app.address, &alice).await;
}
