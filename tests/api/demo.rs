//! `bff demo` as a newcomer runs it: the binary, its banner, and the whole flow over HTTP.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;

use support::{Browser, location};

struct Demo {
    child: Child,
    url: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo(access_token_ttl: u64) -> Demo {
    start_demo_with(access_token_ttl, &[])
}

fn start_demo_with(access_token_ttl: u64, extra: &[&str]) -> Demo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bff"))
        .args(["demo", "--port", "0", "--idp-port", "0", "--api-port", "0", "--access-token-ttl"])
        .arg(access_token_ttl.to_string())
        .args(extra)
        .env_remove("BFF_SESSION__REDIS_URL")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bff demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep reading after the banner: a closed pipe would end the demo at its next line.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.trim().strip_prefix("bff demo is running — open ") {
                let _ = tx.send(rest.trim_end_matches('/').to_string());
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(30)).expect("the banner names the URL to open");
    Demo { child, url }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_whole_flow() {
    let demo = start_demo(6);
    let browser = Browser::new(&demo.url);

    let spa = browser.get("/").await;
    assert_eq!(spa.status(), 200);
    let csp = spa.headers()["content-security-policy"].to_str().expect("csp").to_string();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(spa.headers()["x-content-type-options"], "nosniff");
    assert!(spa.headers().contains_key("referrer-policy"));
    assert!(spa.text().await.expect("html").contains("/app.js"));
    assert_eq!(browser.user().await.status(), 401);

    let start = browser.start_login(Some("/")).await;
    let callback = browser.sign_in_at_provider(&location(&start), "alice").await;
    let landed = browser.get(&callback).await;
    assert_eq!(location(&landed), "/");
    let user: serde_json::Value = browser.user().await.json().await.expect("user");
    assert_eq!(user["name"], "Alice");

    let hello = browser.api(Method::GET, "/api/hello").await;
    assert_eq!(hello.status(), 200);
    let first_expiry: u64 = hello.headers()["x-bff-access-token-expires-at"].to_str().expect("h").parse().expect("n");
    let body: serde_json::Value = hello.json().await.expect("json");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("Alice")), "{body}");

    // Past the refresh point (half of 6 s): the demo API would refuse the old token soon, and
    // bff refreshes it first.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let again = browser.api(Method::GET, "/api/items").await;
    assert_eq!(again.status(), 200);
    let second_expiry: u64 = again.headers()["x-bff-access-token-expires-at"].to_str().expect("h").parse().expect("n");
    assert!(second_expiry > first_expiry, "the token was refreshed");

    let created = browser
        .send(browser.request(Method::POST, "/api/items").header("x-csrf", "1").json(&serde_json::json!({"name": "x"})))
        .await;
    assert_eq!(created.status(), 201);

    let mut events = browser.api(Method::GET, "/api/events").await;
    assert_eq!(events.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), events.chunk())
        .await
        .expect("a tick")
        .expect("chunk")
        .expect("open");
    assert!(String::from_utf8_lossy(&first).contains("\"tick\":0"));
    drop(events);

    let out = browser
        .send(
            browser
                .request(Method::POST, "/auth/logout")
                .header("origin", demo.url.clone())
                .header("content-type", "application/x-www-form-urlencoded"),
        )
        .await;
    assert_eq!(out.status(), 303);
    let back = browser.get(&location(&out)).await;
    assert_eq!(location(&back), format!("{}/", demo.url));
    assert_eq!(browser.api(Method::GET, "/api/hello").await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fapi_demo_pushes_signs_with_its_key_and_binds_tokens_with_dpop() {
    let demo = start_demo_with(30, &["--fapi"]);
    let browser = Browser::new(&demo.url);
    let start = browser.start_login(Some("/")).await;
    let authorize = url::Url::parse(&location(&start)).expect("authorize URL");
    let params: Vec<String> = authorize.query_pairs().map(|(k, _)| k.into_owned()).collect();
    assert_eq!(params, ["client_id", "request_uri"], "a pushed authorization request");
    let callback = browser.sign_in_at_provider(authorize.as_str(), "alice").await;
    assert!(callback.contains("iss="), "RFC 9207");
    assert_eq!(location(&browser.get(&callback).await), "/");
    let user: serde_json::Value = browser.user().await.json().await.expect("user");
    assert_eq!(user["access_token_type"], "DPoP", "{user}");
    // The demo API accepts the DPoP-bound token only with its proof.
    assert_eq!(browser.api(Method::GET, "/api/hello").await.status(), 200);
    let jwks: serde_json::Value = browser.get("/.well-known/jwks.json").await.json().await.expect("jwks");
    assert_eq!(jwks["keys"][0]["kty"], "EC", "the key made for this run, published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_apis_strong_route_asks_for_the_second_factor_through_bff() {
    let demo = start_demo(30);
    let browser = Browser::new(&demo.url);
    let start = browser.start_login(Some("/")).await;
    let callback = browser.sign_in_at_provider(&location(&start), "alice").await;
    assert_eq!(location(&browser.get(&callback).await), "/");

    // Signed in with the password only: the demo API's RFC 9470 challenge, as bff passes it on.
    let refused = browser.api(Method::GET, "/api/strong").await;
    assert_eq!(refused.status(), 401);
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body, serde_json::json!({"error": "step_up_required", "acr_values": bff::demo::idp::ACR_SECOND_FACTOR}));
    assert_eq!(browser.api(Method::GET, "/api/hello").await.status(), 200, "the session lives on");

    crate::step_up::step_up(&browser, &body).await;
    let strong = browser.api(Method::GET, "/api/strong").await;
    assert_eq!(strong.status(), 200);
    let body: serde_json::Value = strong.json().await.expect("json");
    assert_eq!(body["acr"], bff::demo::idp::ACR_SECOND_FACTOR);
}
