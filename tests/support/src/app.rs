//! bff in the test's process, on port 0 over loopback, with the demo provider and the fake
//! upstream each on a port of their own, and real Redis under a key prefix of the test's own.

use std::sync::{Arc, Once};
use std::time::Duration;

use bff::Application;
use bff::clock::Clock;
use bff::config::{AuthMethod, Config};
use bff::demo::idp::{self, Client, IdpConfig, RunningIdp};
use redis::AsyncCommands;

use crate::browser::Browser;
use crate::upstream::{self, Upstream};
use crate::{eventually, listener, random_id};

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

pub struct IdpOptions {
    pub auth_method: AuthMethod,
    pub access_token_ttl: Duration,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
    pub frontchannel_logout_uri: Option<String>,
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
            frontchannel_logout_uri: options.frontchannel_logout_uri,
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
    /// With `private_key_jwt`: the key fixtures bff signs with (`client-ec.pem` when empty); the
    /// provider is given their public keys.
    pub client_keys: Vec<&'static str>,
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
            client_keys: Vec::new(),
            tweak: Arc::new(|_| {}),
        }
    }
}

impl AppOptions {
    /// Access tokens that live 4 s, refreshed 1 s ahead of their expiry ([`SHORT_SKEW_SECS`]).
    /// Expiry is kept in whole seconds, so such a token falls due between 2 and 3 s after it was
    /// issued: a call within 2 s of the login finds it fresh wherever in a second the test
    /// started, and [`until_refresh_due`] waits for the moment it is not.
    pub fn short_lived_tokens() -> AppOptions {
        AppOptions {
            access_token_ttl: Duration::from_secs(4),
            refresh_skew_secs: SHORT_SKEW_SECS,
            ..Default::default()
        }
    }
}

/// The refresh skew of [`AppOptions::short_lived_tokens`] (below half the lifetime, so not capped).
pub const SHORT_SKEW_SECS: u64 = 1;

pub struct TestApp {
    pub address: String,
    pub config: Config,
    pub idp: RunningIdp,
    pub upstream: Upstream,
    pub prefix: String,
    /// The clock the app (and every instance made from it) decides lifetimes by.
    pub clock: Clock,
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
# The tests read metrics from the address they call; bff's default keeps them off it.
metrics_public = true

[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
{credential}
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
        credential = match o.auth_method {
            AuthMethod::PrivateKeyJwt => format!("client_key_file = {:?}", client_key_fixtures(&o.client_keys)),
            _ => format!("client_secret = \"{CLIENT_SECRET}\""),
        },
        secret = o.secret,
        same_site = o.same_site,
        skew = o.refresh_skew_secs,
        local_cache = local_cache_default(),
        extra = o.extra_toml,
    )
}

/// The paths of key fixtures (`tests/fixtures/<name>`); `client-ec.pem` when none are named.
pub fn client_key_fixtures(names: &[&str]) -> Vec<String> {
    let names = if names.is_empty() { &["client-ec.pem"][..] } else { names };
    names.iter().map(|n| crate::repository().join("tests/fixtures").join(n).display().to_string()).collect()
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

/// The expiry (unix seconds) of the access token a proxied call went out with, as bff reports it.
pub fn token_expiry(res: &reqwest::Response) -> u64 {
    let header = res.headers().get("x-bff-access-token-expires-at").expect("a proxied response reports the expiry");
    header.to_str().ok().and_then(|v| v.parse().ok()).expect("unix seconds")
}

/// Waits until a token expiring at `expires_at` is due for refresh, `skew_secs` being the skew
/// bff applies to it (the configured one, capped at half the token's lifetime), on the wall
/// clock: for a bff that runs as a process of its own (`bff serve`). An app in the test's process
/// is moved there at once instead ([`TestApp::make_refresh_due`]).
pub async fn until_refresh_due(expires_at: u64, skew_secs: u64) {
    let limit = Duration::from_secs(expires_at.saturating_sub(bff::session::now_unix()) + 2);
    eventually(
        "the access token falls due",
        limit,
        || async move { bff::session::now_unix() + skew_secs >= expires_at },
    )
    .await;
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
        frontchannel_logout_uri: Some(format!("{public_url}/auth/frontchannel-logout")),
    })
    .await;
    let upstream = upstream::spawn(Some(Arc::clone(&idp.provider))).await;
    let prefix = format!("bfftest:{}:", random_id());
    let toml =
        config_toml(&public_url, &idp.issuer, &upstream.url, &prefix, &options).replace("UPSTREAM", &upstream.url);
    let mut config = Config::from_toml(&toml).expect("test config is valid");
    if let Some(keys) = &config.oidc.client_keys {
        idp.controls.set_client_jwks(&keys.jwks());
    }
    (options.tweak)(&mut config);
    let clock = Clock::system();
    let store = bff::startup::store_for(&config).expect("the store");
    let app =
        Application::build_with_clock(config.clone(), app_listener, store, clock.clone()).await.expect("build the app");
    tokio::spawn(app.run_until_stopped());
    TestApp { address: format!("http://127.0.0.1:{port}"), config, idp, upstream, prefix, clock }
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
    // The same clock: a load balancer's instances agree on the time.
    let store = bff::startup::store_for(&config).expect("the store");
    let app = Application::build_with_clock(config, app_listener, store, first.clock.clone())
        .await
        .expect("build another instance");
    tokio::spawn(app.run_until_stopped());
    format!("http://127.0.0.1:{port}")
}

impl TestApp {
    /// Moves the app's clock to when a token expiring at `expires_at` is due for refresh,
    /// `skew_secs` being the skew bff applies to it (the configured one, capped at half the
    /// token's lifetime): no waiting for the wall clock.
    pub fn make_refresh_due(&self, expires_at: u64, skew_secs: u64) {
        self.clock.advance_to(expires_at.saturating_sub(skew_secs));
    }

    /// Moves the app's clock to `unix_secs` (a token's expiry, a session's absolute end).
    pub fn advance_clock_to(&self, unix_secs: u64) {
        self.clock.advance_to(unix_secs);
    }

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
            "client_credentials" => &c.client_credentials,
            "token_exchange" => &c.token_exchange,
            "par" => &c.pushed_authorization_requests,
            "revocation" => &c.revocations,
            "any" => &c.token_endpoint_calls,
            "reuse" => &c.reuse_detected,
            other => panic!("no counter {other}"),
        };
        counter.load(std::sync::atomic::Ordering::SeqCst)
    }
}
