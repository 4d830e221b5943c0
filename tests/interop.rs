//! Interop suite: bff (`bff serve`, three processes) against an independent, OpenID-certified
//! provider — panva's `oidc-provider` (tests/interop/provider.mjs) — and an API that checks
//! tokens by introspection at that provider (tests/interop/api.mjs). Rotation and reuse detection
//! are on: a refresh token presented twice revokes the whole grant, so any double refresh would
//! show up as a logout here. Needs `npm ci --prefix tests/interop` (`scripts/test` does it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::panic::AssertUnwindSafe;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use reqwest::Method;
use serde_json::{Value, json};
use support::{dead_port as free_port, port_for_later, report, repository as root};

const ACCESS_TOKEN_TTL: u64 = 5;
const STORM_CALLERS: usize = 32;
const STORM_SECONDS: u64 = 20;

/// A child process, killed when dropped.
struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` and waits for a stdout line starting with `ready`; returns it.
fn start(mut cmd: Command, ready: &str) -> (Process, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let prefix = ready.to_string();
    // Keeps reading (and echoing) after the ready line: a closed pipe would stop the child.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with(&prefix) {
                let _ = tx.send(line.clone());
            } else if std::env::var("INTEROP_LOG").is_ok() {
                println!("    | {line}");
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no `{ready}` line"));
    (Process { child }, line)
}

fn field(line: &str, name: &str) -> String {
    line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}="))).unwrap().to_string()
}

/// A browser: cookies per host, like a browser's (ports do not separate cookies; paths are
/// ignored: the flows here are sequential), no redirects followed.
#[derive(Clone)]
struct Browser {
    http: reqwest::Client,
    jar: Arc<Mutex<HashMap<String, BTreeMap<String, String>>>>,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            jar: Arc::default(),
        }
    }

    fn authority(url: &str) -> String {
        url::Url::parse(url).unwrap().host_str().unwrap().to_string()
    }

    fn cookie(&self, url: &str, name: &str) -> Option<String> {
        self.jar.lock().unwrap().get(&Self::authority(url)).and_then(|c| c.get(name).cloned())
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        form: Option<&[(String, String)]>,
    ) -> reqwest::Response {
        let mut rb = self.http.request(method, url);
        let cookies = self.jar.lock().unwrap().get(&Self::authority(url)).cloned().unwrap_or_default();
        if !cookies.is_empty() {
            rb = rb.header("cookie", cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "));
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(form) = form {
            rb = rb.form(form);
        }
        let res = rb.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let mut jar = self.jar.lock().unwrap();
        let host = jar.entry(Self::authority(url)).or_default();
        for raw in res.headers().get_all("set-cookie") {
            let Ok(c) = actix_web::cookie::Cookie::parse(raw.to_str().unwrap_or_default().to_string()) else {
                continue;
            };
            let gone = c.value().is_empty()
                || c.max_age().is_some_and(|a| a.is_zero() || a.is_negative())
                || c.expires_datetime().is_some_and(|e| e < actix_web::cookie::time::OffsetDateTime::now_utc());
            if gone {
                host.remove(c.name());
            } else {
                host.insert(c.name().to_string(), c.value().to_string());
            }
        }
        res
    }

    async fn get(&self, url: &str) -> reqwest::Response {
        self.send(Method::GET, url, &[], None).await
    }

    async fn api(&self, method: Method, url: &str) -> reqwest::Response {
        self.send(method, url, &[("x-csrf", "1")], None).await
    }
}

fn location(res: &reqwest::Response, base: &str) -> String {
    let raw = res
        .headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location (status {})", res.status()))
        .to_str()
        .unwrap();
    url::Url::parse(base).unwrap().join(raw).unwrap().to_string()
}

fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    html.split(&marker).nth(1).and_then(|rest| rest.split('"').next()).map(String::from)
}

/// Walks the provider's own interaction pages (login, then consent) until it redirects to bff's
/// callback; returns the callback URL.
async fn sign_in_at_provider(browser: &Browser, authorize: &str, issuer: &str, username: &str) -> String {
    let mut url = authorize.to_string();
    for _ in 0..10 {
        let res = browser.get(&url).await;
        if res.status().is_redirection() {
            url = location(&res, &url);
            if !url.starts_with(issuer) {
                return url;
            }
            continue;
        }
        assert_eq!(res.status(), 200, "{url}");
        let html = res.text().await.unwrap();
        let prompt = hidden(&html, "prompt").unwrap_or_else(|| panic!("an interaction form at {url}"));
        let form: Vec<(String, String)> = match prompt.as_str() {
            "login" => vec![
                ("prompt".into(), "login".into()),
                ("login".into(), username.into()),
                ("password".into(), "any".into()),
            ],
            "consent" => vec![("prompt".into(), "consent".into())],
            other => panic!("unexpected prompt {other}"),
        };
        let res = browser.send(Method::POST, &url, &[], Some(&form)).await;
        assert!(res.status().is_redirection(), "{prompt} answered {}", res.status());
        url = location(&res, &url);
    }
    panic!("the provider never sent the browser back to bff");
}

struct Stack {
    _provider: Process,
    _api: Process,
    issuer: String,
    stats: String,
    api: String,
    http: reqwest::Client,
}

impl Stack {
    async fn stats(&self) -> Value {
        self.http.get(format!("{}/stats", self.stats)).send().await.unwrap().json().await.unwrap()
    }

    async fn stat(&self, name: &str) -> u64 {
        self.stats().await[name].as_u64().unwrap_or_else(|| panic!("stat {name}"))
    }

    async fn refresh_tokens(&self) -> Vec<Value> {
        self.http.get(format!("{}/refresh_tokens", self.stats)).send().await.unwrap().json().await.unwrap()
    }

    async fn reject_next_api_calls(&self, n: u32) {
        self.http.post(format!("{}/__reject_next?n={n}", self.api)).send().await.unwrap();
    }
}

struct Bff {
    _process: Process,
    url: String,
}

fn bff_config(
    public_url: &str,
    listen_port: u16,
    issuer: &str,
    client: &str,
    method: &str,
    api: &str,
    prefix: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{listen_port}"
public_url = "{public_url}"
static_dir = ""
workers = 2

[oidc]
issuer = "{issuer}"
client_id = "{client}"
client_secret = "{client}-secret"
auth_method = "{method}"
# oidc-provider grants offline_access (a refresh token) only with an explicit consent prompt.
extra_auth_params = {{ prompt = "consent" }}
timeout_secs = 10

[session]
redis_url = "redis://127.0.0.1:6379"
secret = "interop-session-secret-interop-session-secret-interop-session-secret"
key_prefix = "{prefix}"

[tokens]
refresh_skew_secs = 2

[[api]]
prefix = "/api"
upstream = "{api}"
timeout_secs = 10
"#
    )
}

const ORDERS: &str = "https://orders.interop";
const BILLING: &str = "https://billing.interop";
/// The audience bff exchanges users' tokens for (RFC 8693) on `/ledger`.
const LEDGER: &str = "https://ledger.interop";

/// `base` plus routes bound to the orders and billing APIs (RFC 8707), `/m2m` with bff's own
/// client-credentials token for the orders API, `/ledger` with the user's token exchanged for
/// the ledger API (RFC 8693) and `/vault`, whose audience the provider will not exchange for;
/// the sign-in asks for their scope too.
fn resource_config(base: &str, api: &str) -> String {
    let base = base.replacen(
        "timeout_secs = 10\n",
        "timeout_secs = 10\nscopes = [\"openid\", \"profile\", \"email\", \"offline_access\", \"api:read\"]\n",
        1,
    );
    format!(
        r#"{base}
[[api]]
prefix = "/orders"
upstream = "{api}/aud/orders"
resource = "{ORDERS}"

[[api]]
prefix = "/billing"
upstream = "{api}/aud/billing"
resource = "{BILLING}"

[[api]]
prefix = "/m2m"
upstream = "{api}/aud/orders"
token = "client"
scopes = ["api:read"]
resource = "{ORDERS}"

[[api]]
prefix = "/ledger"
upstream = "{api}/aud/ledger"
token = "exchange"
audience = "{LEDGER}"
scopes = ["api:read"]

[[api]]
prefix = "/vault"
upstream = "{api}/aud/vault"
token = "exchange"
audience = "https://vault.interop"
"#
    )
}

async fn start_bff(config: &str) -> Bff {
    let path = std::env::temp_dir().join(format!("bff-interop-{}.toml", free_port()));
    std::fs::write(&path, config).unwrap();
    let listen = config.split("listen = \"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bff"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("BFF_")) {
        cmd.env_remove(name);
    }
    cmd.args(["serve", "--config"]).arg(&path).env("RUST_LOG", "warn,bff=info,bff::http=warn");
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("bff serve");
    let url = format!("http://{listen}");
    // Ready when /readyz answers 200 (provider metadata loaded, Redis reachable).
    let deadline = Instant::now() + Duration::from_secs(30);
    let http = reqwest::Client::new();
    loop {
        if http.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("bff serve exited: {status}");
        }
        assert!(Instant::now() < deadline, "bff at {url} not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Bff { _process: Process { child }, url }
}

/// Waits (polling the clock, bounded) until the token a proxied answer reports is due for
/// refresh at bff: `refresh_skew_secs` (2) before it expires, decided on whole seconds.
async fn until_due(res: &reqwest::Response) {
    let expires_at: u64 = res.headers()["x-bff-access-token-expires-at"].to_str().unwrap().parse().unwrap();
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let deadline = Instant::now() + Duration::from_secs(ACCESS_TOKEN_TTL + 3);
    while now() + 2 < expires_at {
        assert!(Instant::now() < deadline, "the token did not fall due in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn check(what: &str, detail: impl std::fmt::Display) {
    report(&format!("  ✔ {what}: {detail}"));
}

/// Confirms the sign-out on the provider's end-session page at `url`; the provider's answer.
async fn confirm_provider_logout(browser: &Browser, url: &str, issuer: &str) -> reqwest::Response {
    let page = browser.get(url).await;
    let html = page.text().await.unwrap();
    let xsrf = hidden(&html, "xsrf").expect("the provider's logout form");
    let form = [("xsrf".to_string(), xsrf), ("logout".to_string(), "yes".to_string())];
    browser.send(Method::POST, &format!("{issuer}/session/end/confirm"), &[], Some(&form)).await
}

/// Signs in through bff `entry` (the one whose public URL the provider redirects to).
async fn login(stack: &Stack, entry: &str, browser: &Browser, user: &str) {
    let start = browser.get(&format!("{entry}/auth/login")).await;
    assert_eq!(start.status(), 302);
    // oidc-provider offers pushed authorization requests (RFC 9126): bff uses them (par = auto).
    let authorize = url::Url::parse(&location(&start, entry)).unwrap();
    let params: Vec<String> = authorize.query_pairs().map(|(k, _)| k.into_owned()).collect();
    assert_eq!(params, ["client_id", "request_uri"], "{authorize}");
    let callback = sign_in_at_provider(browser, authorize.as_str(), &stack.issuer, user).await;
    assert!(callback.starts_with(&format!("{entry}/auth/callback?")), "{callback}");
    let done = browser.get(&callback).await;
    assert_eq!(done.status(), 302, "callback");
    assert!(browser.cookie(entry, "bff").is_some());
}

/// What the scenarios share: the provider and the API (Node processes), three bff instances, and
/// alice's browser, whose session scenarios 1 to 6 follow from login to logout.
struct Interop {
    stack: Stack,
    /// A1 and A2 stand behind one public URL (A1's), as behind a load balancer, as client
    /// `bff-basic` (client_secret_basic).
    a1: Bff,
    a2: Bff,
    /// B is client `bff-post` (client_secret_post), at a public URL of its own.
    b: Bff,
    /// C is client `bff-rs`, with routes bound to resources and one with bff's own token.
    c: Bff,
    /// D and D2 are client `bff-jwt` behind one public URL (D's), in the high-security
    /// configuration: private_key_jwt (the key fetched from bff's JWKS), PAR required, DPoP-bound
    /// access tokens required (`dpop_bound_access_tokens`), server nonces, RFC 9207.
    d: Bff,
    d2: Bff,
    /// E is client `bff-kid`: private_key_jwt with a JWK key file, registered at the provider
    /// (inline `jwks`) under the operator's own `kid`, which bff sends as `client_key_id`.
    e: Bff,
    public_a: String,
    alice: Browser,
}

impl Interop {
    async fn start() -> Interop {
        let node_modules = root().join("tests/interop/node_modules/oidc-provider");
        assert!(node_modules.is_dir(), "run `npm ci --prefix tests/interop` (or scripts/test)");

        let (a1_port, a2_port, b_port, c_port, d_port, d2_port, e_port) = (
            port_for_later(),
            port_for_later(),
            port_for_later(),
            port_for_later(),
            port_for_later(),
            port_for_later(),
            port_for_later(),
        );
        let public_a = format!("http://127.0.0.1:{a1_port}");
        let public_b = format!("http://127.0.0.1:{b_port}");
        let public_c = format!("http://127.0.0.1:{c_port}");
        let public_d = format!("http://127.0.0.1:{d_port}");
        let public_e = format!("http://127.0.0.1:{e_port}");
        let client = |id: &str, auth_method: &str, public: &str| {
            json!({
                "client_id": id, "client_secret": format!("{id}-secret"),
                "token_endpoint_auth_method": auth_method,
                "redirect_uris": [format!("{public}/auth/callback")],
                "post_logout_redirect_uris": [format!("{public}/")],
                "backchannel_logout_uri": format!("{public}/auth/backchannel-logout"),
                "backchannel_logout_session_required": true,
                "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            })
        };
        let mut resource_client = client("bff-rs", "client_secret_basic", &public_c);
        resource_client["grant_types"] = json!([
            "authorization_code",
            "refresh_token",
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:token-exchange"
        ]);
        // No shared secret: bff's keys from its JWKS route; pushed authorization requests only.
        let mut jwt_client = client("bff-jwt", "private_key_jwt", &public_d);
        jwt_client["jwks_uri"] = json!(format!("{public_d}/.well-known/jwks.json"));
        jwt_client["require_pushed_authorization_requests"] = json!(true);
        jwt_client["dpop_bound_access_tokens"] = json!(true);
        if let Some(fields) = jwt_client.as_object_mut() {
            fields.remove("client_secret");
        }
        // The JWK fixture's public key, registered under a kid of the operator's choosing.
        let jwk_file = root().join("tests/fixtures/client-ec.jwk.json");
        let mut registered: Value = serde_json::from_str(&std::fs::read_to_string(&jwk_file).unwrap()).unwrap();
        registered.as_object_mut().unwrap().remove("d");
        registered["kid"] = json!("ops-key-1");
        let mut kid_client = client("bff-kid", "private_key_jwt", &public_e);
        kid_client["jwks"] = json!({ "keys": [registered] });
        kid_client.as_object_mut().unwrap().remove("client_secret");
        let clients = json!([
            client("bff-basic", "client_secret_basic", &public_a),
            client("bff-post", "client_secret_post", &public_b),
            resource_client,
            jwt_client,
            kid_client,
        ]);
        let mut provider = Command::new("node");
        provider
            .arg(root().join("tests/interop/provider.mjs"))
            .env("PROVIDER_PORT", "0")
            .env("STATS_PORT", "0")
            .env("ACCESS_TOKEN_TTL", ACCESS_TOKEN_TTL.to_string())
            .env("CLIENTS", clients.to_string())
            .env("RESOURCES", json!([ORDERS, BILLING]).to_string())
            .env("EXCHANGE_AUDIENCES", json!([LEDGER]).to_string());
        let (provider, ready) = start(provider, "READY");
        let issuer = field(&ready, "issuer");
        let stats = field(&ready, "stats");
        let mut api = Command::new("node");
        api.arg(root().join("tests/interop/api.mjs")).env("API_PORT", "0").env("ISSUER", &issuer);
        let (api, ready) = start(api, "READY");
        let api_url = field(&ready, "url");
        let stack = Stack {
            _provider: provider,
            _api: api,
            issuer: issuer.clone(),
            stats,
            api: api_url.clone(),
            http: reqwest::Client::new(),
        };
        report(&format!("interop: oidc-provider 9.13.3 at {issuer}, introspecting API at {api_url}"));

        let prefix = format!("bfftest:interop:{}:", free_port());
        let basic = |port| bff_config(&public_a, port, &issuer, "bff-basic", "client_secret_basic", &api_url, &prefix);
        let a1 = start_bff(&basic(a1_port)).await;
        let a2 = start_bff(&basic(a2_port)).await;
        let b = start_bff(&bff_config(&public_b, b_port, &issuer, "bff-post", "client_secret_post", &api_url, &prefix))
            .await;
        let c = start_bff(&resource_config(
            &bff_config(&public_c, c_port, &issuer, "bff-rs", "client_secret_basic", &api_url, &prefix),
            &api_url,
        ))
        .await;
        let key = root().join("tests/fixtures/client-ec.pem");
        let fapi = |port| {
            bff_config(&public_d, port, &issuer, "bff-jwt", "private_key_jwt", &api_url, &prefix)
                .replace(
                    "client_secret = \"bff-jwt-secret\"",
                    &format!("client_key_file = {:?}", key.display().to_string()),
                )
                .replacen("timeout_secs = 10\n", "timeout_secs = 10\npar = \"required\"\ndpop = true\n", 1)
        };
        let d = start_bff(&fapi(d_port)).await;
        let d2 = start_bff(&fapi(d2_port)).await;
        let e = start_bff(
            &bff_config(&public_e, e_port, &issuer, "bff-kid", "private_key_jwt", &api_url, &prefix).replace(
                "client_secret = \"bff-kid-secret\"",
                &format!("client_key_file = {:?}\nclient_key_id = \"ops-key-1\"", jwk_file.display().to_string()),
            ),
        )
        .await;
        Interop { stack, a1, a2, b, c, d, d2, e, public_a, alice: Browser::new() }
    }
}

/// Runs one scenario; a failure names it (the assertion's own message is printed above it).
async fn scenario(name: &str, run: impl Future<Output = ()>) {
    if let Err(panic) = AssertUnwindSafe(run).catch_unwind().await {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("interop scenario `{name}` failed: {why}");
    }
}

/// The scenarios share the provider, the instances and alice's session, so they run in this
/// order, each under its own name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bff_interoperates_with_a_certified_provider() {
    let it = Interop::start().await;
    macro_rules! run {
        ($($name:ident),* $(,)?) => { $( scenario(stringify!($name), $name(&it)).await; )* };
    }
    run!(
        login_through_the_providers_own_login_and_consent_pages,
        api_calls_go_through_the_proxy_and_pass_introspection,
        tokens_are_refreshed_ahead_of_three_expiries_on_alternating_instances,
        an_api_401_makes_one_refresh_and_one_retry,
        a_storm_on_two_instances_never_presents_a_refresh_token_twice,
        logout_revokes_the_refresh_token_and_ends_the_provider_session,
        client_secret_post_logs_in_refreshes_and_logs_out_on_its_own_instance,
        backchannel_logout_ends_the_session_on_both_instances,
        a_tampered_iss_in_the_authorization_response_is_refused,
        resource_and_client_tokens_are_bound_to_their_audiences,
        an_exchanged_token_reaches_the_api_of_its_audience,
        private_key_jwt_par_and_dpop_log_in_refresh_and_revoke,
        a_dpop_storm_on_two_instances_never_presents_a_refresh_token_twice,
        backchannel_logout_ends_a_dpop_session_on_both_instances,
        a_key_registered_under_its_own_kid_signs_in_with_client_key_id,
    );
    report("interop: all checks passed");
}

/// 1. Login through the provider's own login and consent pages (client_secret_basic).
async fn login_through_the_providers_own_login_and_consent_pages(it: &Interop) {
    let Interop { stack, a1, alice, .. } = it;
    login(stack, &a1.url, alice, "alice").await;
    check("pushed authorization request (RFC 9126)", "the browser carried client_id and request_uri only");
    let user: Value = alice.api(Method::GET, &format!("{}/auth/user", a1.url)).await.json().await.unwrap();
    assert_eq!(user["sub"], "alice");
    assert!(user["claims"]["sid"].is_string(), "the ID token carries sid");
    // oidc-provider puts scope claims in the ID token only when no access token is issued
    // (conformIdTokenClaims): oidc.userinfo = "auto" asked its userinfo endpoint.
    assert_eq!((user["name"].as_str(), user["email"].as_str()), (Some("Alice"), Some("alice@example.com")));
    check("login via oidc-provider's login + consent forms, client_secret_basic", format!("sub={}", user["sub"]));
}

/// 2. API calls through the proxy, checked by introspection.
async fn api_calls_go_through_the_proxy_and_pass_introspection(it: &Interop) {
    let Interop { a1, alice, .. } = it;
    let res = alice.api(Method::GET, &format!("{}/api/things?x=1", a1.url)).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!((body["sub"].as_str(), body["path"].as_str()), (Some("alice"), Some("/things?x=1")));
    check("API call through the proxy", "introspection says active");
}

/// 3. Proactive refreshes over several expiries, with rotation and reuse detection on.
async fn tokens_are_refreshed_ahead_of_three_expiries_on_alternating_instances(it: &Interop) {
    let Interop { stack, a1, a2, alice, .. } = it;
    let grants_before = stack.stat("refresh_token_grants").await;
    let mut res = alice.api(Method::GET, &format!("{}/api/round/0", a1.url)).await;
    for round in 1..=3 {
        until_due(&res).await;
        res = alice
            .api(Method::GET, &format!("{}/api/round/{round}", if round % 2 == 0 { &a2.url } else { &a1.url }))
            .await;
        assert_eq!(res.status(), 200, "round {round}");
    }
    let proactive = stack.stat("refresh_token_grants").await - grants_before;
    assert!(proactive >= 3, "a refresh per expiry, got {proactive}");
    assert_eq!(stack.stat("reuse_detected").await, 0);
    check("proactive refresh across 3 expiries (alternating instances)", format!("{proactive} refreshes, 0 reuse"));
}

/// 4. Refresh-and-retry when the API answers 401 to a token bff still thought good.
async fn an_api_401_makes_one_refresh_and_one_retry(it: &Interop) {
    let Interop { stack, a1, alice, .. } = it;
    let before = stack.stat("refresh_token_grants").await;
    stack.reject_next_api_calls(1).await;
    let res = alice.api(Method::GET, &format!("{}/api/after-401", a1.url)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(stack.stat("refresh_token_grants").await - before, 1);
    check("upstream 401 → one refresh (rotated) → one retry", "200");
}

/// 5. The storm: 32 callers for 20 s, 5 s tokens, two instances sharing Redis.
async fn a_storm_on_two_instances_never_presents_a_refresh_token_twice(it: &Interop) {
    let Interop { stack, a1, a2, alice, .. } = it;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let failures: Arc<Mutex<BTreeMap<u16, u64>>> = Arc::default();
    let refreshes_before = stack.stat("refresh_token_grants").await;
    let deadline = Instant::now() + Duration::from_secs(STORM_SECONDS);
    let callers: Vec<_> = (0..STORM_CALLERS)
        .map(|i| {
            let (browser, base) = (alice.clone(), if i % 2 == 0 { a1.url.clone() } else { a2.url.clone() });
            let (ok, failed, failures) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&failures));
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let status = browser.api(Method::GET, &format!("{base}/api/storm/{i}")).await.status().as_u16();
                    if status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        *failures.lock().unwrap().entry(status).or_default() += 1;
                    }
                }
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap();
    }
    let storm_refreshes = stack.stat("refresh_token_grants").await - refreshes_before;
    let (calls_ok, calls_failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let failure_statuses = failures.lock().unwrap().clone();
    let (reuse, revoked) = (stack.stat("reuse_detected").await, stack.stat("grants_revoked").await);
    report(&format!(
        "  storm: {} calls in {STORM_SECONDS} s by {STORM_CALLERS} callers over 2 instances: {calls_ok} ok, {calls_failed} failed {:?}; {storm_refreshes} refreshes; reuse events {}; grants revoked {}",
        calls_ok + calls_failed,
        failure_statuses,
        reuse,
        revoked,
    ));
    assert_eq!(calls_failed, 0, "no failed call in the storm: {failure_statuses:?}");
    assert_eq!(stack.stat("reuse_detected").await, 0, "no refresh token was ever presented twice");
    assert_eq!(stack.stat("grants_revoked").await, 0);
    assert!(storm_refreshes >= STORM_SECONDS / ACCESS_TOKEN_TTL, "tokens kept being refreshed ({storm_refreshes})");
    check(
        "storm, two instances, rotation + reuse detection",
        format!("{calls_ok} calls, 0 failures, {storm_refreshes} refreshes, 0 reuse"),
    );
}

/// 6. Logout: refresh token revoked at the provider, end-session redirect with id_token_hint.
async fn logout_revokes_the_refresh_token_and_ends_the_provider_session(it: &Interop) {
    let Interop { stack, a1, a2, public_a, alice, .. } = it;
    let issuer = &stack.issuer;
    let out = alice.api(Method::POST, &format!("{}/auth/logout", a1.url)).await;
    assert_eq!(out.status(), 303);
    let end_session = location(&out, &a1.url);
    let end = url::Url::parse(&end_session).unwrap();
    let params: HashMap<String, String> = end.query_pairs().into_owned().collect();
    assert!(end_session.starts_with(&format!("{issuer}/session/end")), "{end_session}");
    assert!(params.get("id_token_hint").is_some_and(|h| h.split('.').count() == 3));
    assert_eq!(params.get("post_logout_redirect_uri"), Some(&format!("{public_a}/")));
    let active: Vec<Value> = stack.refresh_tokens().await.into_iter().filter(|t| t["active"] == true).collect();
    assert!(active.is_empty(), "every refresh token is revoked: {} still active", active.len());
    assert_eq!(alice.api(Method::GET, &format!("{}/auth/user", a2.url)).await.status(), 401);
    // The provider's confirm page, then back to bff.
    let confirm = confirm_provider_logout(alice, &end_session, issuer).await;
    assert!(location(&confirm, issuer).starts_with(&format!("{public_a}/")));
    check("logout: refresh token revoked (introspection/provider says inactive), end-session with id_token_hint", "ok");
}

/// 7. client_secret_post, on its own instance: login, API, a refresh, logout.
async fn client_secret_post_logs_in_refreshes_and_logs_out_on_its_own_instance(it: &Interop) {
    let Interop { stack, b, .. } = it;
    let bob = Browser::new();
    login(stack, &b.url, &bob, "bob").await;
    let res = bob.api(Method::GET, &format!("{}/api/b", b.url)).await;
    assert_eq!(res.status(), 200);
    let before = stack.stat("refresh_token_grants").await;
    until_due(&res).await;
    assert_eq!(bob.api(Method::GET, &format!("{}/api/b2", b.url)).await.status(), 200);
    assert!(stack.stat("refresh_token_grants").await > before);
    assert_eq!(bob.api(Method::POST, &format!("{}/auth/logout", b.url)).await.status(), 303);
    assert!(stack.refresh_tokens().await.iter().all(|t| t["active"] == false));
    check("client_secret_post: login, API, refresh, logout + revocation", "ok");
}

/// 8. Back-channel logout: the session ends at the provider, bff's session dies everywhere.
async fn backchannel_logout_ends_the_session_on_both_instances(it: &Interop) {
    let Interop { stack, a1, a2, .. } = it;
    backchannel_logout_ends_both(stack, a1, a2, "carol").await;
    check("back-channel logout from oidc-provider ends the session on both instances", "ok");
}

/// `user` signs in through `first`, calls through `second`, signs out at the provider: the
/// logout token it sends ends the session on both instances.
async fn backchannel_logout_ends_both(stack: &Stack, first: &Bff, second: &Bff, user: &str) {
    let issuer = &stack.issuer;
    let browser = Browser::new();
    login(stack, &first.url, &browser, user).await;
    assert_eq!(browser.api(Method::GET, &format!("{}/api/c", second.url)).await.status(), 200);
    let backchannel_before = stack.stat("backchannel_ok").await;
    confirm_provider_logout(&browser, &format!("{issuer}/session/end"), issuer).await;
    assert_eq!(stack.stat("backchannel_ok").await - backchannel_before, 1, "bff accepted the logout token");
    assert_eq!(browser.api(Method::GET, &format!("{}/auth/user", first.url)).await.status(), 401);
    assert_eq!(browser.api(Method::GET, &format!("{}/api/c", second.url)).await.status(), 401);
}

/// 9. RFC 9207 (oidc-provider advertises and sends `iss`): a callback whose `iss` names another
///    issuer is refused, and does not use up the sign-in it was copied from.
async fn a_tampered_iss_in_the_authorization_response_is_refused(it: &Interop) {
    let Interop { stack, a1, .. } = it;
    let carol = Browser::new();
    let start = carol.get(&format!("{}/auth/login", a1.url)).await;
    assert_eq!(start.status(), 302);
    let callback = sign_in_at_provider(&carol, &location(&start, &a1.url), &stack.issuer, "carol").await;
    let genuine = url::Url::parse(&callback).unwrap();
    assert!(genuine.query_pairs().any(|(k, v)| k == "iss" && v == stack.issuer.as_str()), "{callback}");
    let mut tampered = genuine.clone();
    let pairs: Vec<(String, String)> = genuine.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    tampered.query_pairs_mut().clear().extend_pairs(
        pairs.iter().map(|(k, v)| (k.as_str(), if k == "iss" { "https://evil.example" } else { v.as_str() })),
    );
    assert_eq!(carol.get(tampered.as_str()).await.status(), 400, "a tampered iss");
    assert_eq!(carol.get(genuine.as_str()).await.status(), 302, "the genuine response still signs in");
    check("RFC 9207: a tampered iss is refused and consumes nothing", "ok");
}

/// 10. RFC 8707 with oidc-provider's resource indicators: the sign-in names both resources, each
///     route gets a token whose `aud` is its API (the API refuses any other), one refresh per
///     audience on the one rotating refresh token; `/m2m` carries bff's own client-credentials
///     token for the orders API, asked for once.
async fn resource_and_client_tokens_are_bound_to_their_audiences(it: &Interop) {
    let Interop { stack, c, .. } = it;
    let dave = Browser::new();
    login(stack, &c.url, &dave, "dave").await;
    let (refreshes, reuse) = (stack.stat("refresh_token_grants").await, stack.stat("reuse_detected").await);
    let call = |path: &'static str| {
        let dave = dave.clone();
        let url = format!("{}{path}", c.url);
        async move {
            let res = dave.api(Method::GET, &url).await;
            assert_eq!(res.status(), 200, "{path}");
            res.json::<Value>().await.unwrap()
        }
    };
    let default = call("/api/x").await;
    assert_ne!(default["aud"], ORDERS);
    for _ in 0..3 {
        let orders = call("/orders/x").await;
        assert_eq!((orders["aud"].as_str(), orders["sub"].as_str()), (Some(ORDERS), Some("dave")), "{orders}");
        let billing = call("/billing/x").await;
        assert_eq!((billing["aud"].as_str(), billing["sub"].as_str()), (Some(BILLING), Some("dave")), "{billing}");
    }
    assert_eq!(stack.stat("refresh_token_grants").await - refreshes, 2, "one token per audience, kept");
    assert_eq!(stack.stat("reuse_detected").await, reuse, "the rotated refresh token is the one used next");
    check("RFC 8707 tokens per route", "orders and billing each got a token for their own aud");

    let before = stack.stat("client_credentials_grants").await;
    for _ in 0..3 {
        let m2m = call("/m2m/x").await;
        assert_eq!((m2m["aud"].as_str(), m2m["client_id"].as_str()), (Some(ORDERS), Some("bff-rs")), "{m2m}");
        assert!(m2m["sub"].is_null(), "bff's own token has no user: {m2m}");
        assert_eq!(m2m["scope"], "api:read");
    }
    assert_eq!(stack.stat("client_credentials_grants").await - before, 1);
    // Each route's calls above carried a token whose `aud` is that route's (the API echoes the
    // introspected `aud`): no route ever sent a token meant for another.
    check("client-credentials route token", "one token, for the orders API, shared across calls");
}

/// 10b. RFC 8693 with a token-exchange grant registered at oidc-provider: `/ledger` carries the
///     user's token exchanged for the ledger API (its `aud`, the same user), exchanged once and
///     kept; an audience the provider will not exchange for is 403 `exchange_refused`, and the
///     session lives on.
async fn an_exchanged_token_reaches_the_api_of_its_audience(it: &Interop) {
    let Interop { stack, c, .. } = it;
    let erin = Browser::new();
    login(stack, &c.url, &erin, "erin").await;
    let before = stack.stat("token_exchange_grants").await;
    for _ in 0..3 {
        let res = erin.api(Method::GET, &format!("{}/ledger/x", c.url)).await;
        assert_eq!(res.status(), 200);
        let ledger: Value = res.json().await.unwrap();
        assert_eq!((ledger["aud"].as_str(), ledger["sub"].as_str()), (Some(LEDGER), Some("erin")), "{ledger}");
        assert_eq!((ledger["client_id"].as_str(), ledger["scope"].as_str()), (Some("bff-rs"), Some("api:read")));
    }
    assert_eq!(stack.stat("token_exchange_grants").await - before, 1, "one exchange, kept in the token set");
    let refused = erin.api(Method::GET, &format!("{}/vault/x", c.url)).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.json::<Value>().await.unwrap()["error"], "exchange_refused");
    let default = erin.api(Method::GET, &format!("{}/api/x", c.url)).await;
    assert_eq!(default.status(), 200, "the session lives on");
    assert_ne!(default.json::<Value>().await.unwrap()["aud"], LEDGER);
    check("RFC 8693 token exchange", "the ledger API got erin's token exchanged for its own aud, once");
}

/// 11. The high-security configuration (oidc-provider's individual features, not its FAPI 2.0
///     profile, which needs https): `private_key_jwt` with bff's key, which oidc-provider fetches
///     from bff's own `/.well-known/jwks.json`; pushed authorization requests required by the
///     client's registration (`par = "required"` at bff); DPoP-bound access tokens required
///     (`dpop_bound_access_tokens`) with server nonces; RFC 9207 `iss`. Sign-in, an API call whose
///     proof the API checks against the token's `cnf.jkt` (introspection), a refresh after a 401,
///     logout with revocation.
async fn private_key_jwt_par_and_dpop_log_in_refresh_and_revoke(it: &Interop) {
    let Interop { stack, d, .. } = it;
    let erin = Browser::new();
    login(stack, &d.url, &erin, "erin").await;
    let res = erin.api(Method::GET, &format!("{}/api/jwt", d.url)).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!((body["sub"].as_str(), body["client_id"].as_str()), (Some("erin"), Some("bff-jwt")));
    assert_eq!(body["dpop"], true, "a DPoP-bound token, its proof checked: {body}");
    let user: Value = erin.api(Method::GET, &format!("{}/auth/user", d.url)).await.json().await.unwrap();
    assert_eq!(user["email"], "erin@example.com", "userinfo asked with the DPoP-bound token, a proof and its nonce");
    let before = stack.stat("refresh_token_grants").await;
    stack.reject_next_api_calls(1).await;
    assert_eq!(erin.api(Method::GET, &format!("{}/api/jwt-401", d.url)).await.status(), 200);
    assert_eq!(stack.stat("refresh_token_grants").await - before, 1, "a refresh with an assertion and a proof");
    let api = api_stats(stack).await;
    assert_eq!(api["dpop_refused"], 0, "every proof bff sent was good: {api}");
    let issued = stack.refresh_tokens().await;
    let latest = issued.last().unwrap()["value"].as_str().unwrap().to_string();
    let logout = erin.api(Method::POST, &format!("{}/auth/logout", d.url)).await;
    assert_eq!(logout.status(), 303);
    let after = stack.refresh_tokens().await;
    let revoked = after.iter().find(|t| t["value"] == latest.as_str()).map(|t| t["active"].clone());
    assert_eq!(revoked, Some(json!(false)), "revoked with an assertion");
    check(
        "private_key_jwt + PAR required + DPoP with nonces",
        format!("login, API ({} proofs checked), refresh, revocation without a client secret", api["dpop_ok"]),
    );
}

async fn api_stats(stack: &Stack) -> Value {
    stack.http.get(format!("{}/__stats", stack.api)).send().await.unwrap().json().await.unwrap()
}

/// 12. The DPoP session on two instances for two token lifetimes: every call proven, at least
///     one refresh per expiry, the one rotating refresh token never presented twice.
async fn a_dpop_storm_on_two_instances_never_presents_a_refresh_token_twice(it: &Interop) {
    let Interop { stack, d, d2, .. } = it;
    let frank = Browser::new();
    login(stack, &d.url, &frank, "frank").await;
    let (refreshes, reuse) = (stack.stat("refresh_token_grants").await, stack.stat("reuse_detected").await);
    let deadline = Instant::now() + Duration::from_secs(2 * ACCESS_TOKEN_TTL + 1);
    let failed = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..8)
        .map(|i| {
            let (frank, failed) = (frank.clone(), Arc::clone(&failed));
            let url = format!("{}/api/storm/{i}", if i % 2 == 0 { &d.url } else { &d2.url });
            tokio::spawn(async move {
                let mut calls = 0u64;
                while Instant::now() < deadline {
                    if frank.api(Method::GET, &url).await.status() != 200 {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let mut calls = 0;
    for caller in callers {
        calls += caller.await.unwrap();
    }
    let refreshed = stack.stat("refresh_token_grants").await - refreshes;
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    assert!(refreshed >= 2, "a refresh per expiry, got {refreshed}");
    assert_eq!(stack.stat("reuse_detected").await, reuse);
    assert_eq!(api_stats(stack).await["dpop_refused"], 0);
    check("DPoP storm, two instances", format!("{calls} calls, 0 failures, {refreshed} refreshes, 0 reuse"));
}

/// 13. Back-channel logout in the high-security configuration: the provider's logout token ends
///     the DPoP session on both instances.
async fn backchannel_logout_ends_a_dpop_session_on_both_instances(it: &Interop) {
    let Interop { stack, d, d2, .. } = it;
    backchannel_logout_ends_both(stack, d, d2, "gina").await;
    check("back-channel logout, high-security configuration", "the DPoP session ended on both instances");
}

/// 14. A key the provider registered under the operator's own `kid` (inline `jwks`, not bff's
///     JWKS): assertions naming the thumbprint would be refused; bff reads the key from a JWK
///     file and sends `client_key_id`. Sign-in (PAR with an assertion), an API call, logout with
///     revocation.
async fn a_key_registered_under_its_own_kid_signs_in_with_client_key_id(it: &Interop) {
    let Interop { stack, e, .. } = it;
    let hana = Browser::new();
    login(stack, &e.url, &hana, "hana").await;
    let res = hana.api(Method::GET, &format!("{}/api/kid", e.url)).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!((body["sub"].as_str(), body["client_id"].as_str()), (Some("hana"), Some("bff-kid")));
    let published: Value =
        stack.http.get(format!("{}/.well-known/jwks.json", e.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(published["keys"][0]["kid"], "ops-key-1");
    let issued = stack.refresh_tokens().await;
    let latest = issued.last().unwrap()["value"].as_str().unwrap().to_string();
    assert_eq!(hana.api(Method::POST, &format!("{}/auth/logout", e.url)).await.status(), 303);
    let after = stack.refresh_tokens().await;
    let revoked = after.iter().find(|t| t["value"] == latest.as_str()).map(|t| t["active"].clone());
    assert_eq!(revoked, Some(json!(false)), "revoked with an assertion");
    check("private_key_jwt, a JWK key file and client_key_id", "login (PAR), API, revocation under kid ops-key-1");
}
