//! The system under load, for `benches/load.sh`: the demo provider, a minimal upstream and bff
//! (release build), a signed-in session, all on loopback. Prints `KEY=value` lines the script
//! reads, then runs until its standard input closes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use bff::config::{AuthMethod, Config};
use bff::demo::idp::{self, Client, IdpConfig};

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind")
}

#[actix_web::main]
async fn main() {
    let redis_url = std::env::var("BENCH_REDIS_URL").expect("BENCH_REDIS_URL");
    let workers: usize = std::env::var("BENCH_BFF_WORKERS").ok().and_then(|w| w.parse().ok()).unwrap_or(1);

    // The upstream: a small JSON answer, as cheap as it gets.
    let upstream_listener = listener();
    let upstream = format!("http://{}", upstream_listener.local_addr().unwrap());
    let server = HttpServer::new(|| {
        App::new().default_service(web::to(|| async {
            HttpResponse::Ok().content_type("application/json").body(r#"{"items":[1,2,3],"ok":true}"#)
        }))
    })
    .workers(1)
    .disable_signals()
    .listen(upstream_listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(server);

    let app_listener = listener();
    let public_url = format!("http://{}", app_listener.local_addr().unwrap());
    let (idp, idp_server) = idp::start(
        IdpConfig {
            clients: vec![Client {
                client_id: "bench".into(),
                client_secret: "bench-secret".into(),
                auth_method: AuthMethod::ClientSecretBasic,
                redirect_uris: vec![format!("{public_url}/auth/callback")],
                post_logout_redirect_uris: vec![],
                backchannel_logout_uri: None,
            }],
            access_token_ttl: Duration::from_secs(3600),
            api_audience: "bench".into(),
            templates_dir: "templates".into(),
        },
        listener(),
    )
    .unwrap();
    actix_web::rt::spawn(idp_server);
    idp.controls.set_auto_login(Some("bench"));

    let config = Config::from_toml(&format!(
        r#"
[server]
public_url = "{public_url}"
static_dir = ""
workers = {workers}
[oidc]
issuer = "{issuer}"
client_id = "bench"
client_secret = "bench-secret"
[session]
redis_url = "{redis_url}"
secret = "{secret}"
key_prefix = "bench:"
[[api]]
prefix = "/api"
upstream = "{upstream}"
"#,
        issuer = idp.issuer,
        secret = "bench-secret-".repeat(6),
    ))
    .unwrap();
    let app = bff::Application::build(config, app_listener).await.unwrap();
    actix_web::rt::spawn(app.run_until_stopped());

    // Sign in: /auth/login → provider (signs in at once) → callback → session cookie.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let login = http.get(format!("{public_url}/auth/login")).send().await.unwrap();
    let login_cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let authorize = login.headers()["location"].to_str().unwrap().to_string();
    let back = http.get(authorize).send().await.unwrap();
    let callback = back.headers()["location"].to_str().unwrap().to_string();
    let done = http.get(callback).header("cookie", &login_cookie).send().await.unwrap();
    let session = done
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("bff="))
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_string();
    let check = http
        .get(format!("{public_url}/api/items"))
        .header("cookie", &session)
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(check.status(), 200);

    println!("UPSTREAM={upstream}");
    println!("BFF={public_url}");
    println!("COOKIE={session}");
    println!("READY=1");
    // Run until the script closes our stdin.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await;
}
