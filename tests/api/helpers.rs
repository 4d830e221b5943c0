//! Spawning the system under test: the demo provider, an echo upstream and bff, each on
//! port 0 over loopback, with real Redis under a key prefix of the test's own.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use bff::Application;
use bff::config::{AuthMethod, Config};
use bff::demo::idp::{self, Client, IdpConfig, RunningIdp};
use redis::AsyncCommands;
use reqwest::header::{COOKIE, SET_COOKIE};

use crate::upstream::{self, Upstream};

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const CLIENT_ID: &str = "bff-test";
pub const CLIENT_SECRET: &str = "test-client-secret";

static TRACING: Once = Once::new();

/// Logs go to the test output only with `TEST_LOG=1`.
pub fn init_tracing() {
    TRACING.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            bff::telemetry::init(bff::config::LogFormat::Text, "debug");
        }
    });
}

pub fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a loopback port")
}

/// A port where nothing listens (bound, then released).
pub fn dead_port() -> u16 {
    listener().local_addr().expect("local addr").port()
}

pub fn random_id() -> String {
    bff::crypto::random_token()[..12].to_string()
}

pub struct IdpOptions {
    pub auth_method: AuthMethod,
    pub access_token_ttl: Duration,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
}

pub async fn spawn_idp(options: IdpOptions) -> RunningIdp {
    let config = IdpConfig {
        clients: vec![Client {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            auth_method: options.auth_method,
            redirect_uris: options.redirect_uris,
            post_logout_redirect_uris: options.post_logout_redirect_uris,
            backchannel_logout_uri: options.backchannel_logout_uri,
        }],
        access_token_ttl: options.access_token_ttl,
        api_audience: "demo-api".into(),
        templates_dir: "templates".into(),
    };
    let (running, server) = idp::start(config, listener()).expect("start the demo provider");
    tokio::spawn(server);
    running
}

/// How a test wants its app.
pub struct AppOptions {
    pub auth_method: AuthMethod,
    pub access_token_ttl: Duration,
    /// `None`: the in-memory store.
    pub redis_url: Option<String>,
    pub https: bool,
    pub extra_toml: String,
    pub refresh_skew_secs: u64,
    /// The method the provider registered the client with, when it differs from bff's.
    pub idp_auth_method: Option<AuthMethod>,
    pub same_site: &'static str,
    pub secret: String,
    /// Adjusts the configuration in code, past what the file format allows (short timeouts).
    pub tweak: Arc<dyn Fn(&mut Config) + Send + Sync>,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            auth_method: AuthMethod::ClientSecretBasic,
            access_token_ttl: Duration::from_secs(300),
            redis_url: Some(REDIS_URL.into()),
            https: false,
            extra_toml: String::new(),
            refresh_skew_secs: 30,
            idp_auth_method: None,
            same_site: "lax",
            secret: test_secret(),
            tweak: Arc::new(|_| {}),
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub config: Config,
    pub idp: RunningIdp,
    pub upstream: Upstream,
    pub prefix: String,
}

pub fn test_secret() -> String {
    "test-session-secret-".repeat(4)
}

/// The configuration a test app runs with; `public_url` and the upstream are filled in.
pub fn config_toml(public_url: &str, issuer: &str, upstream: &str, prefix: &str, o: &AppOptions) -> String {
    let redis = o.redis_url.as_ref().map(|u| format!("redis_url = \"{u}\"\n")).unwrap_or_default();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "{public_url}"
static_dir = "static"
templates_dir = "templates"
workers = 2

[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
auth_method = "{method}"
timeout_secs = 2

[session]
{redis}secret = "{secret}"
same_site = "{same_site}"
key_prefix = "{prefix}"
redis_timeout_ms = 1000

[tokens]
refresh_skew_secs = {skew}
refresh_lock_ms = 3000
local_cache = {local_cache}

[[api]]
prefix = "/api"
upstream = "{upstream}"
timeout_secs = 2
max_retry_body_bytes = 65536
max_body_bytes = 104857600
{extra}
"#,
        method = o.auth_method.as_str(),
        secret = o.secret,
        same_site = o.same_site,
        skew = o.refresh_skew_secs,
        local_cache = local_cache_default(),
        extra = o.extra_toml,
    )
}

/// On unless `BFF_TEST_LOCAL_CACHE=false`: CI runs the token and proxy tests both ways.
pub fn local_cache_default() -> bool {
    std::env::var("BFF_TEST_LOCAL_CACHE").map(|v| v != "false").unwrap_or(true)
}

/// The sum of every sample of a metric on an instance's `/metrics` (all label sets).
pub async fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics")).await.expect("metrics").text().await.expect("text");
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    init_tracing();
    let app_listener = listener();
    let port = app_listener.local_addr().expect("addr").port();
    // Under "https" the test still speaks plain HTTP to the listener; only the cookie policy
    // and the URLs bff builds change.
    let public_url =
        if options.https { format!("https://127.0.0.1:{port}") } else { format!("http://127.0.0.1:{port}") };
    let idp = spawn_idp(IdpOptions {
        auth_method: options.idp_auth_method.unwrap_or(options.auth_method),
        access_token_ttl: options.access_token_ttl,
        redirect_uris: vec![format!("{public_url}/auth/callback")],
        post_logout_redirect_uris: vec![format!("{public_url}/")],
        backchannel_logout_uri: Some(format!("{public_url}/auth/backchannel-logout")),
    })
    .await;
    let upstream = upstream::spawn(Some(Arc::clone(&idp.provider))).await;
    let prefix = format!("bfftest:{}:", random_id());
    let toml =
        config_toml(&public_url, &idp.issuer, &upstream.url, &prefix, &options).replace("UPSTREAM", &upstream.url);
    let mut config = Config::from_toml(&toml).expect("test config is valid");
    (options.tweak)(&mut config);
    let app = Application::build(config.clone(), app_listener).await.expect("build the app");
    tokio::spawn(app.run_until_stopped());
    TestApp { address: format!("http://127.0.0.1:{port}"), config, idp, upstream, prefix }
}

/// Another bff instance for the same provider, upstream and store: the scale-out case.
pub async fn spawn_second_instance(first: &TestApp) -> String {
    spawn_instance_with(first, |_| {}).await
}

/// Another instance of `first`'s configuration, adjusted by `tweak`; its base URL. It keeps the
/// same public origin: a load balancer would present both as one site.
pub async fn spawn_instance_with(first: &TestApp, tweak: impl FnOnce(&mut Config)) -> String {
    let app_listener = listener();
    let port = app_listener.local_addr().expect("addr").port();
    let mut config = first.config.clone();
    config.server.listen = app_listener.local_addr().expect("addr");
    tweak(&mut config);
    let app = Application::build(config, app_listener).await.expect("build another instance");
    tokio::spawn(app.run_until_stopped());
    format!("http://127.0.0.1:{port}")
}

impl TestApp {
    pub fn browser(&self) -> Browser {
        Browser::new(&self.address)
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(REDIS_URL)
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test Redis")
    }

    /// Every key this app wrote.
    pub async fn keys(&self) -> Vec<String> {
        let mut conn = self.redis().await;
        let mut keys: Vec<String> = conn.keys(format!("{}*", self.prefix)).await.expect("KEYS");
        keys.sort();
        keys
    }

    pub fn token_requests(&self, grant: &str) -> u64 {
        let c = &self.idp.provider.counters;
        let counter = match grant {
            "authorization_code" => &c.authorization_code,
            "refresh_token" => &c.refresh_token,
            "revocation" => &c.revocations,
            "reuse" => &c.reuse_detected,
            other => panic!("no counter {other}"),
        };
        counter.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A browser: follows nothing by itself, keeps the app's cookies like a browser would.
#[derive(Clone)]
pub struct Browser {
    pub http: reqwest::Client,
    pub base: String,
    pub jar: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Browser {
    pub fn new(base: &str) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            base: base.to_string(),
            jar: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// The same cookies, another base URL (a second instance behind the same site).
    pub fn at(&self, base: &str) -> Browser {
        Browser { http: self.http.clone(), base: base.to_string(), jar: Arc::clone(&self.jar) }
    }

    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http") { path_or_url.to_string() } else { format!("{}{path_or_url}", self.base) }
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.jar.lock().expect("jar").get(name).cloned()
    }

    pub fn set_cookie(&self, name: &str, value: &str) {
        self.jar.lock().expect("jar").insert(name.into(), value.into());
    }

    fn cookie_header(&self) -> Option<String> {
        let jar = self.jar.lock().expect("jar");
        (!jar.is_empty()).then(|| jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "))
    }

    pub fn absorb(&self, res: &reqwest::Response) {
        if !res.url().as_str().starts_with(&self.base) {
            return;
        }
        let mut jar = self.jar.lock().expect("jar");
        for raw in res.headers().get_all(SET_COOKIE) {
            let Ok(text) = raw.to_str() else { continue };
            let Ok(c) = actix_web::cookie::Cookie::parse(text.to_string()) else { continue };
            let removed = c.max_age().is_some_and(|a| a.is_zero() || a.is_negative()) || c.value().is_empty();
            if removed {
                jar.remove(c.name());
            } else {
                jar.insert(c.name().to_string(), c.value().to_string());
            }
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = self.url(path);
        let mut rb = self.http.request(method, &url);
        if url.starts_with(&self.base)
            && let Some(cookies) = self.cookie_header()
        {
            rb = rb.header(COOKIE, cookies);
        }
        rb
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> reqwest::Response {
        let res = rb.send().await.expect("request");
        self.absorb(&res);
        res
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// A `fetch` from the SPA: with the anti-forgery header.
    pub async fn api(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.send(self.request(method, path).header("x-csrf", "1")).await
    }

    pub async fn user(&self) -> reqwest::Response {
        self.api(reqwest::Method::GET, "/auth/user").await
    }

    pub async fn logout(&self) -> reqwest::Response {
        self.api(reqwest::Method::POST, "/auth/logout").await
    }

    /// `/auth/login` → the provider's authorize URL (not followed).
    pub async fn start_login(&self, return_to: Option<&str>) -> reqwest::Response {
        let path = match return_to {
            Some(r) => format!("/auth/login?return_to={}", urlencode(r)),
            None => "/auth/login".to_string(),
        };
        self.get(&path).await
    }

    /// Signs in at the provider's login form; returns the callback URL it redirects to.
    pub async fn sign_in_at_provider(&self, authorize_url: &str, username: &str) -> String {
        let page = self.get(authorize_url).await;
        assert_eq!(page.status(), 200, "the provider shows its login page");
        let html = page.text().await.expect("login page");
        let interaction = html
            .split("name=\"interaction\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("an interaction id on the login page")
            .to_string();
        let login_url = authorize_url.split("/authorize").next().expect("issuer").to_string() + "/login";
        let res = self
            .send(self.http.post(login_url).form(&[("interaction", interaction.as_str()), ("username", username)]))
            .await;
        assert_eq!(res.status(), 302, "the provider redirects back");
        location(&res)
    }

    /// The whole browser login; returns the callback's answer.
    pub async fn login_as(&self, username: &str) -> reqwest::Response {
        self.login_to(username, None).await
    }

    pub async fn login_to(&self, username: &str, return_to: Option<&str>) -> reqwest::Response {
        let start = self.start_login(return_to).await;
        assert_eq!(start.status(), 302, "login redirects to the provider");
        let callback = self.sign_in_at_provider(&location(&start), username).await;
        self.get(&callback).await
    }
}

pub fn location(res: &reqwest::Response) -> String {
    res.headers().get("location").and_then(|v| v.to_str().ok()).expect("a Location header").to_string()
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url).ok()?.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Waits (bounded) until a condition holds; for background effects such as readiness.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {limit:?}");
}

/// Sends a request line exactly as given (no client-side path normalisation) and returns the
/// status code: how an attacker probes for path escapes.
pub async fn raw_status(base: &str, method: &str, raw_path: &str, headers: &[(&str, String)]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(authority).await.expect("connect");
    let mut request = format!("{method} {raw_path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A Redis server of the test's own, for what must not touch the shared one (restarts,
/// `FLUSHALL`, killed connections).
pub struct RedisProcess {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl RedisProcess {
    /// With an append-only file in `dir`: data survives a restart on the same port and dir.
    pub fn start(port: u16, dir: &std::path::Path) -> RedisProcess {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        RedisProcess { child, port, dir: dir.to_path_buf() }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A fresh server on a free port and a temporary dir, answering.
    pub async fn spawn() -> RedisProcess {
        let dir = std::env::temp_dir().join(format!("bff-redis-{}", random_id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let redis = RedisProcess::start(dead_port(), &dir);
        let url = redis.url();
        eventually("redis starts", Duration::from_secs(10), || redis_answers(&url)).await;
        redis
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test's Redis")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn redis_answers(url: &str) -> bool {
    match redis::Client::open(url) {
        Ok(c) => match c.get_multiplexed_async_connection().await {
            Ok(mut conn) => redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok(),
            Err(_) => false,
        },
        Err(_) => false,
    }
}
