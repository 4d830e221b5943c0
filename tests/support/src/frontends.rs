//! One bff serving two frontends, each with a demo provider and an upstream of its own: chosen
//! by host (`one.localhost`, `two.localhost`) or by path on one host (`/one`, `/two`). The
//! configuration text and the [`Reloader`] are kept, so a test can reload an edited file.

use std::net::SocketAddr;
use std::time::Duration;

use bff::Application;
use bff::clock::Clock;
use bff::config::{AuthMethod, Config, ConfigErrors};
use bff::demo::idp::{self, Client, IdpConfig, RunningIdp};
use bff::runtime::{ReloadSummary, Reloader};
use reqwest::Method;

use crate::app::{REDIS_URL, init_tracing, local_cache_default, test_secret};
use crate::browser::{Browser, location, urlencode};
use crate::upstream::{self, Upstream};
use crate::{listener, random_id};

/// How the frontends are told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `hosts = ["<name>.localhost"]`, each at `/`.
    Hosts,
    /// `path = "/<name>"` on the one host bff listens on.
    Paths,
}

/// The names the test client resolves to bff's loopback address (nothing else does: the
/// system resolver here knows only `localhost`). `three` is for a frontend added by a reload,
/// `nobody` for a host no frontend serves.
pub const RESOLVED: [&str; 4] = ["one", "two", "three", "nobody"];

/// One frontend: its provider (a client registration of its own), its upstream, and where the
/// browser finds it.
pub struct Side {
    pub name: String,
    pub layout: Layout,
    pub idp: RunningIdp,
    pub upstream: Upstream,
    pub client_id: String,
    pub client_secret: String,
    /// The `aud` of the access tokens its provider issues.
    pub audience: String,
    /// The origin the browser sees (`http://one.localhost:<port>`, or bff's own address).
    pub origin: String,
    /// `""` by host, `/<name>` by path.
    pub path: String,
    /// A host name its provider can reach it by for back-channel logout (by host: `localhost`
    /// or `127.0.0.1`, listed in its `hosts` too, since the provider's client resolves only
    /// what the system does); `None`: the provider cannot deliver logout tokens to it.
    pub delivery_host: Option<String>,
}

impl Side {
    /// Starts the provider and the upstream of frontend `name` of a bff on `port`.
    pub async fn spawn(name: &str, layout: Layout, port: u16, delivery_host: Option<&str>) -> Side {
        let (origin, path) = match layout {
            Layout::Hosts => (format!("http://{name}.localhost:{port}"), String::new()),
            Layout::Paths => (format!("http://127.0.0.1:{port}"), format!("/{name}")),
        };
        let delivery_host = match layout {
            Layout::Hosts => delivery_host.map(String::from),
            Layout::Paths => Some("127.0.0.1".to_string()),
        };
        let client_id = format!("client-{name}");
        let client_secret = format!("secret-of-{name}-{}", random_id());
        let audience = format!("api-{name}");
        let config = IdpConfig {
            clients: vec![Client {
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
                auth_method: AuthMethod::ClientSecretBasic,
                redirect_uris: vec![format!("{origin}{path}/auth/callback")],
                post_logout_redirect_uris: vec![format!("{origin}{path}/")],
                backchannel_logout_uri: delivery_host
                    .as_ref()
                    .map(|h| format!("http://{h}:{port}{path}/auth/backchannel-logout")),
                frontchannel_logout_uri: Some(format!("{origin}{path}/auth/frontchannel-logout")),
            }],
            access_token_ttl: Duration::from_secs(300),
            api_audience: audience.clone(),
            templates_dir: "templates".into(),
        };
        let (idp, server) = idp::start(config, listener()).expect("start a demo provider");
        tokio::spawn(server);
        let upstream = upstream::spawn(Some(std::sync::Arc::clone(&idp.provider))).await;
        Side {
            name: name.to_string(),
            layout,
            idp,
            upstream,
            client_id,
            client_secret,
            audience,
            origin,
            path,
            delivery_host,
        }
    }

    /// Its `[[frontend]]` table, its API at `<path>/api` going to `upstream`.
    pub fn table_with_upstream(&self, upstream: &str) -> String {
        let selector = match self.layout {
            Layout::Hosts => {
                let mut hosts = vec![format!("\"{}.localhost\"", self.name)];
                hosts.extend(self.delivery_host.iter().map(|h| format!("\"{h}\"")));
                format!("hosts = [{}]\npublic_url = \"{}\"", hosts.join(", "), self.origin)
            }
            Layout::Paths => format!("path = \"{}\"", self.path),
        };
        format!(
            r#"
[[frontend]]
name = "{name}"
{selector}
[frontend.oidc]
issuer = "{issuer}"
client_id = "{client_id}"
client_secret = "{client_secret}"
auth_method = "client_secret_basic"
timeout_secs = 2
[[frontend.api]]
prefix = "{path}/api"
upstream = "{upstream}"
timeout_secs = 10
"#,
            name = self.name,
            issuer = self.idp.issuer,
            client_id = self.client_id,
            client_secret = self.client_secret,
            path = self.path,
        )
    }

    /// Its `[[frontend]]` table with its own upstream.
    pub fn table(&self) -> String {
        self.table_with_upstream(&self.upstream.url)
    }

    /// Its session cookie's name (the default over http).
    pub fn cookie_name(&self) -> String {
        format!("bff-{}", self.name)
    }
}

/// The sections every frontend shares; `[[frontend]]` tables follow.
pub fn shared_toml(port: u16, prefix: &str, workers: usize) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:{port}"
templates_dir = "templates"
workers = {workers}
metrics_public = true

[session]
redis_url = "{REDIS_URL}"
secret = "{secret}"
key_prefix = "{prefix}"
redis_timeout_ms = 1000

[tokens]
refresh_lock_ms = 3000
local_cache = {local_cache}
"#,
        secret = test_secret(),
        local_cache = local_cache_default(),
    )
}

/// bff with frontends `one` and `two`.
pub struct TwoFrontends {
    pub layout: Layout,
    /// bff's own address (`http://127.0.0.1:<port>`): `/readyz`, `/metrics`, and the path layout.
    pub address: String,
    pub port: u16,
    pub prefix: String,
    pub one: Side,
    pub two: Side,
    /// The file bff started with.
    pub toml: String,
    pub reloader: Reloader,
}

impl TwoFrontends {
    pub async fn spawn(layout: Layout) -> TwoFrontends {
        TwoFrontends::spawn_with(layout, |_| {}).await
    }

    /// The same, the configuration adjusted by `tweak` (process-wide keys: the admin listener).
    pub async fn spawn_with(layout: Layout, tweak: impl FnOnce(&mut Config)) -> TwoFrontends {
        init_tracing();
        let app_listener = listener();
        let port = app_listener.local_addr().expect("addr").port();
        // By host, each frontend also answers to a name the providers' clients resolve (the
        // system's), so that back-channel logout reaches it.
        let one = Side::spawn("one", layout, port, Some("localhost")).await;
        let two = Side::spawn("two", layout, port, Some("127.0.0.1")).await;
        let prefix = format!("bfftest:{}:", random_id());
        let toml = format!("{}{}{}", shared_toml(port, &prefix, 2), one.table(), two.table());
        let mut config = Config::from_toml(&toml).expect("the two-frontend configuration is valid");
        tweak(&mut config);
        let store = bff::startup::store_for(&config).expect("the store");
        let app =
            Application::build_with_clock(config, app_listener, store, Clock::system()).await.expect("build the app");
        let reloader = app.reloader();
        tokio::spawn(app.run_until_stopped());
        TwoFrontends { layout, address: format!("http://127.0.0.1:{port}"), port, prefix, one, two, toml, reloader }
    }

    /// The shared sections as bff started with them.
    pub fn shared(&self) -> String {
        shared_toml(self.port, &self.prefix, 2)
    }

    /// Reloads `text` as the configuration file.
    pub async fn reload(&self, text: &str) -> Result<ReloadSummary, ConfigErrors> {
        self.reloader.reload(Config::from_toml(text)).await
    }

    /// Every store key bff wrote for this app, sorted.
    pub async fn keys(&self) -> Vec<String> {
        use redis::AsyncCommands;
        let client = redis::Client::open(REDIS_URL).expect("redis url");
        let mut conn = client.get_multiplexed_async_connection().await.expect("connect to the test Redis");
        let mut keys: Vec<String> = conn.keys(format!("{}*", self.prefix)).await.expect("KEYS");
        keys.sort();
        keys
    }

    /// An HTTP client that reaches bff by the frontends' host names (and follows no redirect).
    pub fn http(&self) -> reqwest::Client {
        resolving_client(self.port)
    }

    /// A browser of its own (its own cookies) at frontend `side`.
    pub fn browser(&self, side: &Side) -> FrontendBrowser {
        FrontendBrowser::new(Browser::with_client(&side.origin, self.http()), side)
    }

    /// The origin of a host no frontend serves (by host), or bff's address (by path).
    pub fn nobody(&self) -> String {
        format!("http://nobody.localhost:{}", self.port)
    }
}

/// A client that resolves `<name>.localhost` ([`RESOLVED`]) to bff's loopback port.
pub fn resolving_client(port: u16) -> reqwest::Client {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut builder =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(30));
    for name in RESOLVED {
        builder = builder.resolve(&format!("{name}.localhost"), addr);
    }
    builder.build().expect("client")
}

/// A browser at one frontend: its routes under the frontend's path.
#[derive(Clone)]
pub struct FrontendBrowser {
    pub browser: Browser,
    pub path: String,
    pub cookie_name: String,
}

impl FrontendBrowser {
    pub fn new(browser: Browser, side: &Side) -> FrontendBrowser {
        FrontendBrowser { browser, path: side.path.clone(), cookie_name: side.cookie_name() }
    }

    /// The same cookies (one browser), at another frontend.
    pub fn at(&self, side: &Side) -> FrontendBrowser {
        FrontendBrowser::new(self.browser.at(&side.origin), side)
    }

    /// `rest` under the frontend's path.
    pub fn path(&self, rest: &str) -> String {
        format!("{}{rest}", self.path)
    }

    pub fn session_cookie(&self) -> Option<String> {
        self.browser.cookie(&self.cookie_name)
    }

    pub async fn get(&self, rest: &str) -> reqwest::Response {
        self.browser.get(&self.path(rest)).await
    }

    /// A `fetch` from the frontend's SPA.
    pub async fn api(&self, method: Method, rest: &str) -> reqwest::Response {
        self.browser.api(method, &self.path(rest)).await
    }

    pub async fn user(&self) -> reqwest::Response {
        self.api(Method::GET, "/auth/user").await
    }

    pub async fn logout(&self) -> reqwest::Response {
        self.api(Method::POST, "/auth/logout").await
    }

    /// The whole login through the frontend's provider; returns the callback's answer.
    pub async fn login_as(&self, username: &str) -> reqwest::Response {
        self.login_to(username, None).await
    }

    pub async fn login_to(&self, username: &str, return_to: Option<&str>) -> reqwest::Response {
        let start = match return_to {
            Some(r) => self.get(&format!("/auth/login?return_to={}", urlencode(r))).await,
            None => self.get("/auth/login").await,
        };
        assert_eq!(start.status(), 302, "login at {} redirects to the provider", self.path("/auth/login"));
        let callback = self.browser.sign_in_at_provider(&location(&start), username).await;
        self.browser.get(&callback).await
    }
}
