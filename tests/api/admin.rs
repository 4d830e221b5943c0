//! The admin API (`server.admin_listen`): its refusals, the sessions of a user across
//! instances, ending them, and the reload.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use support::{AppOptions, TestApp, spawn_app_with, spawn_instance_with};

const TOKEN: &str = "admin-token-for-the-tests-0123456789abcdef";

/// An app with the admin listener on a port of its own; the admin API's base URL.
async fn spawn_with_admin() -> (TestApp, String) {
    let port = support::dead_port();
    let app = spawn_app_with(AppOptions {
        tweak: Arc::new(move |c: &mut bff::config::Config| {
            c.server.admin_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
            c.server.admin_token = Some(secrecy::SecretString::from(TOKEN.to_string()));
        }),
        ..Default::default()
    })
    .await;
    let admin = format!("http://127.0.0.1:{port}");
    let probe = admin.clone();
    support::eventually("the admin listener answers", Duration::from_secs(5), || {
        let url = format!("{probe}/admin/sessions?sub=x");
        async move { reqwest::get(url).await.is_ok() }
    })
    .await;
    (app, admin)
}

fn call(method: Method, url: &str, token: Option<&str>) -> reqwest::RequestBuilder {
    let rb = reqwest::Client::new().request(method, url);
    match token {
        Some(token) => rb.header("authorization", format!("Bearer {token}")),
        None => rb,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_without_the_token() {
    let (app, admin) = spawn_with_admin().await;
    let url = format!("{admin}/admin/sessions?sub=demo%7Calice");
    let over_long = "a".repeat(2048);
    let wrong_same_length = "b".repeat(TOKEN.len());
    let mut refusals = vec![
        call(Method::GET, &url, None),
        call(Method::GET, &url, Some("wrong")),
        call(Method::GET, &url, Some(&wrong_same_length)),
        call(Method::GET, &url, Some(&over_long)),
        call(Method::GET, &url, Some(&format!("{TOKEN}x"))),
        call(Method::DELETE, &url, Some(&TOKEN[..TOKEN.len() - 1])),
        call(Method::POST, &format!("{admin}/admin/reload"), None),
        call(Method::GET, &format!("{admin}/admin/nothing"), None),
        call(Method::GET, &format!("{admin}/"), None),
        reqwest::Client::new().get(&url).header("authorization", format!("Basic {TOKEN}")),
        // The right token after 1 KiB of padding is still over the bound.
        reqwest::Client::new().get(&url).header("authorization", format!("Bearer {}{TOKEN}", " ".repeat(1100))),
    ];
    for (i, request) in refusals.drain(..).enumerate() {
        let res = request.send().await.unwrap();
        assert_eq!(res.status(), 401, "refusal {i}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer", "refusal {i}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body, serde_json::json!({"error": "unauthorized"}), "refusal {i}");
    }
    // The main listener serves no admin API.
    let main = call(Method::GET, &format!("{}/admin/sessions?sub=x", app.address), Some(TOKEN)).send().await.unwrap();
    assert_eq!(main.status(), 404);
    // With the token: an unknown path is 404, a missing query 400.
    let unknown = call(Method::GET, &format!("{admin}/admin/nothing"), Some(TOKEN)).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let no_sub = call(Method::GET, &format!("{admin}/admin/sessions"), Some(TOKEN)).send().await.unwrap();
    assert_eq!(no_sub.status(), 400);
    let both = call(Method::DELETE, &format!("{admin}/admin/sessions?sub=a&sid=b"), Some(TOKEN)).send().await.unwrap();
    assert_eq!(both.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_and_ends_a_users_sessions_on_every_instance() {
    let (app, admin) = spawn_with_admin().await;
    // The second instance without an admin listener (its port is the first's).
    let second = spawn_instance_with(&app, |c| {
        c.server.admin_listen = None;
        c.server.admin_token = None;
    })
    .await;
    let laptop = app.browser();
    laptop.login_as("alice").await;
    let phone = app.browser();
    phone.login_as("alice").await;
    let phone = phone.at(&second);
    let bob = app.browser();
    bob.login_as("bob").await;
    let refresh_tokens: Vec<String> =
        app.idp.provider.issued_tokens().into_iter().filter(|t| !t.contains('.')).collect();
    assert_eq!(refresh_tokens.len(), 3);
    assert_eq!(phone.api(Method::GET, "/api/echo").await.status(), 200);

    let url = format!("{admin}/admin/sessions?sub=demo%7Calice");
    let listed: Value = call(Method::GET, &url, Some(TOKEN)).send().await.unwrap().json().await.unwrap();
    let frontends = listed["frontends"].as_array().unwrap();
    assert_eq!(frontends.len(), 1, "{listed}");
    assert_eq!(frontends[0]["frontend"], "default");
    assert_eq!(frontends[0]["sessions"].as_array().map(Vec::len), Some(2), "{listed}");

    let res = call(Method::DELETE, &url, Some(TOKEN)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let ended: Value = res.json().await.unwrap();
    assert_eq!(ended["ended"], 2, "{ended}");
    assert_eq!(ended["frontends"][0]["ended"], 2, "{ended}");
    assert_eq!(laptop.user().await.status(), 401);
    assert_eq!(phone.api(Method::GET, "/api/echo").await.status(), 401, "the other instance refuses it at once");
    assert_eq!(bob.user().await.status(), 200, "other users' sessions stay");
    let active: Vec<&String> = refresh_tokens.iter().filter(|t| app.idp.provider.refresh_token_active(t)).collect();
    assert_eq!(active.len(), 1, "alice's two grants are revoked, bob's is not");
    let after: Value = call(Method::GET, &url, Some(TOKEN)).send().await.unwrap().json().await.unwrap();
    assert_eq!(after["frontends"][0]["sessions"].as_array().map(Vec::len), Some(0));

    // By provider session.
    let sid = app.idp.provider.session_of("bob").expect("bob's provider session");
    let by_sid = format!("{admin}/admin/sessions?sid={}", support::urlencode(&sid));
    let ended: Value = call(Method::DELETE, &by_sid, Some(TOKEN)).send().await.unwrap().json().await.unwrap();
    assert_eq!(ended["ended"], 1, "{ended}");
    assert_eq!(bob.user().await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_reload_reads_the_file_the_process_started_with() {
    // The provider and upstream of a test app; a bff of its own started from a file, as
    // `bff serve --config` is, its admin token in a file too.
    let app = support::spawn_app().await;
    let dir = support::temp_dir("admin-reload");
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let port = support::dead_port();
    let listener = support::listener();
    let public_url = format!("http://{}", listener.local_addr().unwrap());
    let toml =
        support::config_toml(&public_url, &app.idp.issuer, &app.upstream.url, &app.prefix, &AppOptions::default())
            .replace(
                "metrics_public = true",
                &format!(
                    "metrics_public = true\nadmin_listen = \"127.0.0.1:{port}\"\nadmin_token_file = {token_file:?}"
                ),
            );
    let file = dir.join("bff.toml");
    std::fs::write(&file, &toml).unwrap();
    let config = bff::config::Config::load(Some(&file)).expect("the file loads");
    let bff = bff::Application::build(config, listener).await.expect("build");
    bff.set_config_file(Some(file.clone()));
    tokio::spawn(bff.run_until_stopped());
    let admin = format!("http://127.0.0.1:{port}");
    let reload = || call(Method::POST, &format!("{admin}/admin/reload"), Some(TOKEN)).send();
    support::eventually("the admin listener answers", Duration::from_secs(5), || async {
        reload().await.is_ok_and(|r| r.status() == 200)
    })
    .await;

    let unchanged: Value = reload().await.unwrap().json().await.unwrap();
    assert_eq!(unchanged["unchanged"], serde_json::json!(["default"]), "{unchanged}");
    std::fs::write(&file, toml.replace("timeout_secs = 2\n\n[session]", "timeout_secs = 3\n\n[session]")).unwrap();
    let changed: Value = reload().await.unwrap().json().await.unwrap();
    assert_eq!(changed["changed"], serde_json::json!(["default"]), "{changed}");
    // A key only a restart applies: refused, the configuration before it still serves.
    std::fs::write(&file, toml.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:1")).unwrap();
    let refused = reload().await.unwrap();
    assert_eq!(refused.status(), 422);
    assert_eq!(refused.json::<Value>().await.unwrap(), serde_json::json!({"error": "config_refused"}));
    assert_eq!(reqwest::get(format!("{public_url}/healthz")).await.unwrap().status(), 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_file_the_admin_reload_reads_the_environment_alone() {
    let (app, admin) = spawn_with_admin().await;
    let _ = app;
    // No file was given to this app: the reload reads the environment alone, which is no valid
    // configuration here, so it is refused and the configuration before it still serves.
    let res = call(Method::POST, &format!("{admin}/admin/reload"), Some(TOKEN)).send().await.unwrap();
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"error": "config_refused"}));
    assert_eq!(app.browser().get("/healthz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_ends_a_users_sessions_at_every_frontend() {
    use support::frontends::{Layout, TwoFrontends};
    let port = support::dead_port();
    let app = TwoFrontends::spawn_with(Layout::Paths, |c| {
        c.server.admin_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        c.server.admin_token = Some(secrecy::SecretString::from(TOKEN.to_string()));
    })
    .await;
    let admin = format!("http://127.0.0.1:{port}");
    let probe = format!("{admin}/admin/sessions?sub=x");
    support::eventually("the admin listener answers", Duration::from_secs(5), || {
        let url = probe.clone();
        async move { reqwest::get(url).await.is_ok() }
    })
    .await;
    let at_one = app.browser(&app.one);
    let at_two = at_one.at(&app.two);
    at_one.login_as("alice").await;
    at_two.login_as("alice").await;
    let url = format!("{admin}/admin/sessions?sub=demo%7Calice");
    let listed: Value = call(Method::GET, &url, Some(TOKEN)).send().await.unwrap().json().await.unwrap();
    let per_frontend: Vec<(String, usize)> = listed["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["frontend"].as_str().unwrap().to_string(), f["sessions"].as_array().map_or(0, Vec::len)))
        .collect();
    assert_eq!(per_frontend, [("one".to_string(), 1), ("two".to_string(), 1)], "{listed}");
    let ended: Value = call(Method::DELETE, &url, Some(TOKEN)).send().await.unwrap().json().await.unwrap();
    assert_eq!(ended["ended"], 2, "{ended}");
    assert_eq!(at_one.user().await.status(), 401);
    assert_eq!(at_two.user().await.status(), 401);
}
