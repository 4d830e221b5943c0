//! `bff demo`: the whole system in one process on loopback — the demo OpenID Provider, the demo
//! API and bff serving the demo SPA — and `bff demo-api`, the demo API alone in front of another
//! provider (the docker-compose set-up). Also the integration tests' fixtures.
//!
//! Demo only: the provider signs anyone in, and the session secret is made up at every start.

pub mod api;
pub mod idp;
mod tls;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use secrecy::SecretString;

use crate::config::{AuthMethod, Config};
use crate::crypto::random_token;
use crate::store::{MemoryStore, RedisStore, Store};

/// `bff demo` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// bff's port (the URL to open); 0 picks a free one.
    #[arg(long, default_value_t = 7480)]
    pub port: u16,
    /// The demo identity provider's port.
    #[arg(long, default_value_t = 7481)]
    pub idp_port: u16,
    /// The demo API's port.
    #[arg(long, default_value_t = 7482)]
    pub api_port: u16,
    /// Access-token lifetime in seconds: short, so refreshes are visible.
    #[arg(long, default_value_t = 30)]
    pub access_token_ttl: u64,
    /// The high-security setup (FAPI 2.0-grade): pushed authorization requests required,
    /// private_key_jwt with a key made for this run, DPoP-bound tokens with server nonces,
    /// RFC 9207 `iss` required.
    #[arg(long)]
    pub fapi: bool,
    /// Serve the demo SPA twice on bff's one origin, as two path frontends `/shop` and `/admin`,
    /// each with its own client at the demo provider, its own cookie and its own API routes.
    #[arg(long)]
    pub frontends: bool,
    /// `session.cookie_prefix` (`__Host-Http-`, `__Host-` or ""); with one, bff's URL is
    /// `http://localhost:<port>`, an origin browsers keep prefixed cookies for.
    #[arg(long)]
    pub cookie_prefix: Option<String>,
    /// Serve bff over https (HTTP/2 and HTTP/1.1) at `https://localhost:<port>`, with a
    /// self-signed certificate made at start; the banner prints its SPKI hash for Chromium's
    /// `--ignore-certificate-errors-spki-list`. The provider and the API stay on http.
    #[arg(long)]
    pub tls: bool,
    /// `session.dbsc`: `off`, `optional` or `required` (device-bound cookies; browsers use
    /// them over https only, so with `--tls`).
    #[arg(long, default_value = "optional", value_parser = ["off", "optional", "required"])]
    pub dbsc: String,
    /// `session.dbsc_cookie_ttl_secs`: how long a bound cookie lives (short, to see renewals).
    #[arg(long, default_value_t = 600)]
    pub dbsc_cookie_ttl: u64,
}

/// The path frontends of `bff demo --frontends`.
const DEMO_FRONTENDS: [&str; 2] = ["shop", "admin"];

/// `bff demo-api` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoApiArgs {
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: SocketAddr,
    /// The provider whose access tokens the API accepts; its JWKS is found by discovery.
    #[arg(long)]
    pub issuer: String,
    /// The `aud` access tokens must carry.
    #[arg(long, default_value = "demo-api")]
    pub audience: String,
}

/// A directory shipped with bff (`static`, `templates`): the working directory's, else the
/// source tree's, so `bff demo` works from anywhere in a checkout.
fn asset_dir(name: &str) -> PathBuf {
    let local = PathBuf::from(name);
    if local.is_dir() {
        return local;
    }
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name);
    if source.is_dir() { source } else { local }
}

fn bind(port: u16) -> Result<TcpListener, anyhow::Error> {
    TcpListener::bind(("127.0.0.1", port)).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on 127.0.0.1:{port}: {e} (choose another port with --port/--idp-port/--api-port)"
        )
    })
}

/// Redis when `BFF_SESSION__REDIS_URL` is set and answers, else memory.
async fn demo_store() -> (Store, String) {
    let Ok(url) = std::env::var("BFF_SESSION__REDIS_URL") else {
        return (Store::memory(MemoryStore::new()), "in-memory store (set BFF_SESSION__REDIS_URL to use Redis)".into());
    };
    match RedisStore::new(&SecretString::from(url), Duration::from_secs(2)) {
        Ok(redis) => {
            let store = Store::redis(redis);
            match store.ping().await {
                Ok(()) => (store, "Redis (BFF_SESSION__REDIS_URL)".into()),
                Err(e) => (Store::memory(MemoryStore::new()), format!("in-memory store (Redis did not answer: {e})")),
            }
        }
        Err(e) => (Store::memory(MemoryStore::new()), format!("in-memory store ({e})")),
    }
}

pub async fn run(args: DemoArgs) -> Result<(), anyhow::Error> {
    let started = Instant::now();
    let bff_listener = bind(args.port)?;
    let idp_listener = bind(args.idp_port)?;
    let api_listener = bind(args.api_port)?;
    let public_url = match (&args.cookie_prefix, args.tls) {
        // A certificate for `localhost` (and the address), and an origin where browsers keep
        // `__Host-` cookies.
        (_, true) => format!("https://localhost:{}", bff_listener.local_addr()?.port()),
        (Some(_), false) => format!("http://localhost:{}", bff_listener.local_addr()?.port()),
        (None, false) => format!("http://{}", bff_listener.local_addr()?),
    };
    let certificate = if args.tls { Some(tls::make()?) } else { None };
    let client_secret = random_token();
    let session_secret = [random_token(), random_token()].concat();

    let (provider, idp_server) = idp::start(
        idp::IdpConfig {
            clients: demo_clients(&args, &public_url, &client_secret),
            access_token_ttl: Duration::from_secs(args.access_token_ttl.max(1)),
            api_audience: "demo-api".into(),
            templates_dir: asset_dir("templates"),
        },
        idp_listener,
    )?;
    let api_url = format!("http://{}", api_listener.local_addr()?);
    let api_server = api::start(
        api::ApiConfig {
            issuer: provider.issuer.clone(),
            jwks_uri: url::Url::parse(&format!("{}/jwks", provider.issuer))?,
            audience: "demo-api".into(),
        },
        api_listener,
    )?;
    let idp_handle = idp_server.handle();
    let api_handle = api_server.handle();
    tokio::spawn(idp_server);
    tokio::spawn(api_server);

    let mut config = Config::from_toml(&demo_config(&DemoConfig {
        frontends: args.frontends,
        cookie_prefix: args.cookie_prefix.as_deref(),
        public_url: &public_url,
        issuer: &provider.issuer,
        client_secret: &client_secret,
        session_secret: &session_secret,
        api_url: &api_url,
    }))
    .map_err(|e| anyhow::anyhow!("demo configuration: {e}"))?;
    if args.fapi {
        fapi(&mut config, &provider)?;
    }
    let dbsc = match args.dbsc.as_str() {
        "required" => crate::config::DbscMode::Required,
        "optional" => crate::config::DbscMode::Optional,
        _ => crate::config::DbscMode::Off,
    };
    // On loopback only: the demo's counters (sign-ins, refreshes, DBSC) are worth a look.
    config.server.metrics_public = true;
    let dbsc_cookie_ttl = Duration::from_secs(args.dbsc_cookie_ttl.max(5));
    (config.session.dbsc, config.session.dbsc_cookie_ttl) = (dbsc, dbsc_cookie_ttl);
    for frontend in &mut config.frontends {
        (frontend.session.dbsc, frontend.session.dbsc_cookie_ttl) = (dbsc, dbsc_cookie_ttl);
    }
    if let Some(certificate) = &certificate {
        config.server.tls = Some(certificate.files.clone());
        // HSTS is per host, whatever the port: a year of it would send every http://localhost
        // page of the developer's to https.
        config.server.hsts_max_age = Duration::ZERO;
    }
    let (store, store_note) = demo_store().await;
    let app = crate::Application::build_with_store(config, bff_listener, store).await?;

    println!();
    if args.frontends {
        // The first line as without --frontends (scripts read the URL after "open").
        let [first, rest @ ..] = DEMO_FRONTENDS;
        println!("  bff demo is running — open {public_url}/{first}/");
        for name in rest {
            println!("                   and also open {public_url}/{name}/");
        }
        println!();
        println!("  two frontends on one origin: each its own client, cookie (Path=/<name>) and sign-in");
    } else {
        println!("  bff demo is running — open {public_url}/");
    }
    println!();
    println!("  sign in as any user name (try \"alice\"); there are no passwords");
    println!("  identity provider  {}   (demo only)", provider.issuer);
    println!("  demo API           {api_url}   (checks every bearer token)");
    println!("  sessions           {store_note}");
    println!("  access tokens      live {} s; bff refreshes them 5 s before they expire", args.access_token_ttl);
    if args.fapi {
        println!(
            "  high-security mode PAR required, private_key_jwt (see {}/.well-known/jwks.json), DPoP with nonces, RFC 9207",
            if args.frontends { format!("/{}", DEMO_FRONTENDS[0]) } else { String::new() }
        );
    }
    if let Some(certificate) = &certificate {
        println!("  TLS certificate SPKI sha256 (base64): {}", certificate.spki_sha256);
        println!(
            "                     self-signed for localhost and 127.0.0.1, this run only; Chromium trusts it with"
        );
        println!("                     --ignore-certificate-errors-spki-list={}", certificate.spki_sha256);
    }
    println!("  ready in {} ms; Ctrl-C stops everything", started.elapsed().as_millis());
    println!();
    tracing::info!(ready_ms = started.elapsed().as_millis() as u64, url = public_url, "demo ready");

    let result = app.run_until_stopped().await;
    idp_handle.stop(true).await;
    api_handle.stop(true).await;
    drop(certificate);
    Ok(result?)
}

/// The demo provider's clients: bff's one, or with `--frontends` one per frontend, each with
/// its URIs under its path.
fn demo_clients(args: &DemoArgs, public_url: &str, client_secret: &str) -> Vec<idp::Client> {
    let client = |client_id: String, base: String| idp::Client {
        client_id,
        client_secret: client_secret.to_string(),
        auth_method: if args.fapi { AuthMethod::PrivateKeyJwt } else { AuthMethod::ClientSecretBasic },
        redirect_uris: vec![format!("{base}/auth/callback")],
        post_logout_redirect_uris: vec![format!("{base}/")],
        backchannel_logout_uri: Some(format!("{base}/auth/backchannel-logout")),
        frontchannel_logout_uri: Some(format!("{base}/auth/frontchannel-logout")),
    };
    if !args.frontends {
        return vec![client("bff-demo".into(), public_url.to_string())];
    }
    DEMO_FRONTENDS.iter().map(|name| client(format!("bff-demo-{name}"), format!("{public_url}/{name}"))).collect()
}

struct DemoConfig<'a> {
    frontends: bool,
    cookie_prefix: Option<&'a str>,
    public_url: &'a str,
    issuer: &'a str,
    client_secret: &'a str,
    session_secret: &'a str,
    api_url: &'a str,
}

/// bff's configuration for the demo: one implicit frontend, or with `--frontends` the demo SPA
/// twice, as path frontends on the one origin.
fn demo_config(c: &DemoConfig<'_>) -> String {
    let static_dir = asset_dir("static");
    let templates_dir = asset_dir("templates");
    let (static_dir, templates_dir) = (static_dir.display(), templates_dir.display());
    let DemoConfig { public_url, issuer, client_secret, session_secret: secret, api_url, .. } = c;
    // With frontends, each has its own SPA directory.
    let server_static = if c.frontends { String::new() } else { format!("static_dir = \"{static_dir}\"") };
    let prefix = c.cookie_prefix.map(|p| format!("cookie_prefix = {p:?}")).unwrap_or_default();
    let shared = format!(
        r#"
[server]
public_url = "{public_url}"
{server_static}
templates_dir = "{templates_dir}"
[session]
secret = "{secret}"
key_prefix = "bff-demo:"
{prefix}
[tokens]
refresh_skew_secs = 5
"#
    );
    if !c.frontends {
        return format!(
            r#"{shared}
[oidc]
issuer = "{issuer}"
client_id = "bff-demo"
client_secret = "{client_secret}"
[[api]]
prefix = "/api"
upstream = "{api_url}"
"#
        );
    }
    let frontends: String = DEMO_FRONTENDS
        .iter()
        .map(|name| {
            format!(
                r#"
[[frontend]]
name = "{name}"
path = "/{name}"
static_dir = "{static_dir}"
[frontend.oidc]
issuer = "{issuer}"
client_id = "bff-demo-{name}"
client_secret = "{client_secret}"
[[frontend.api]]
prefix = "/{name}/api"
upstream = "{api_url}"
"#
            )
        })
        .collect();
    format!("{shared}{frontends}")
}

/// `bff demo-api`: the demo API in front of any provider.
/// `--fapi`: the provider requires pushed authorization requests, DPoP nonces and `iss`, and
/// knows bff by a key made for this run; bff authenticates with it and binds tokens with DPoP.
fn fapi(config: &mut Config, provider: &idp::RunningIdp) -> Result<(), anyhow::Error> {
    use base64::Engine;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &ring::rand::SystemRandom::new(),
    )
    .map_err(|_| anyhow::anyhow!("cannot make the demo's client key"))?;
    let body = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    let lines: Vec<&str> = body.as_bytes().chunks(64).filter_map(|c| std::str::from_utf8(c).ok()).collect();
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
    let keys = crate::client_keys::ClientKeys::parse(&[&pem]).map_err(|e| anyhow::anyhow!("demo client key: {e}"))?;
    provider.controls.set_client_jwks(&keys.jwks());
    provider.controls.set_quirks(idp::Quirks {
        par_required: true,
        iss_in_authorization_response: true,
        ..Default::default()
    });
    provider.controls.require_dpop_nonce(true);
    // The top level and, with `--frontends`, every frontend: all know bff by the one key.
    for oidc in std::iter::once(&mut config.oidc).chain(config.frontends.iter_mut().map(|f| &mut f.oidc)) {
        oidc.auth_method = AuthMethod::PrivateKeyJwt;
        oidc.client_secret = None;
        oidc.client_keys = Some(keys.clone());
        oidc.par = crate::config::ParMode::Required;
        oidc.dpop = true;
    }
    Ok(())
}

pub async fn run_api(args: DemoApiArgs) -> Result<(), anyhow::Error> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let discovery = format!("{}/.well-known/openid-configuration", args.issuer.trim_end_matches('/'));
    #[derive(serde::Deserialize)]
    struct Discovery {
        issuer: String,
        jwks_uri: url::Url,
    }
    let mut delay = Duration::from_millis(500);
    let found: Discovery = loop {
        match http.get(&discovery).send().await.and_then(reqwest::Response::error_for_status) {
            Ok(res) => break res.json().await?,
            Err(e) => {
                tracing::warn!("waiting for {discovery}: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    };
    let listener = TcpListener::bind(args.listen)?;
    tracing::info!(listen = %args.listen, issuer = found.issuer, "demo API listening");
    api::start(api::ApiConfig { issuer: found.issuer, jwks_uri: found.jwks_uri, audience: args.audience }, listener)?
        .await?;
    Ok(())
}
