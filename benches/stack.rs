//! The system under load, for `benches/load.sh`: the demo provider, a minimal upstream, two bff
//! instances sharing one Redis (release build; the first with the coherent local cache, the
//! second with `local_cache = false`), a signed-in session, all on loopback. Prints `KEY=value`
//! lines the script reads, then runs until its standard input closes.
//!
//! The upstream answers like real APIs do: `/length` a small JSON body with a Content-Length,
//! `/chunked` the same body with `Transfer-Encoding: chunked` (a streamed answer, as Express or
//! WebFlux send), `/json4k` a 4 KiB JSON body, `/sse?n=N` N server-sent events 5 ms apart, each
//! carrying the wall-clock time it was written (µs since the epoch).
//!
//! Two more modes, run by the script as separate processes:
//! - `stack sse URL [COOKIE]`: reads an event stream and prints the delay of each event
//!   (client read − upstream write) as `SSE_US=…` lines.
//! - `stack invalidation`: starts its own pair of cached instances and measures, N times, how
//!   long after a logout on one the other refuses the session (`INVALIDATION_US=…`).
//! - `stack tracking-modes`: what Redis' tracking modes cost: invalidation messages for one
//!   login and one refresh in the default mode (what bff uses) and in `BCAST PREFIX`, and the
//!   server memory a tracked key takes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::web::Bytes;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bff::config::{AuthMethod, Config};
use bff::demo::idp::{self, Client, IdpConfig};
use futures_util::StreamExt;

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind")
}

const SMALL: &str = r#"{"items":[1,2,3],"ok":true}"#;

fn now_us() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0)
}

fn json_4k() -> String {
    let item = r#"{"id":1234,"name":"An item with a name of some length","tags":["a","b","c"],"price":12.5}"#;
    let mut body = String::from("[");
    while body.len() + item.len() + 2 < 4096 {
        if body.len() > 1 {
            body.push(',');
        }
        body.push_str(item);
    }
    body.push(']');
    body
}

async fn upstream(req: HttpRequest, big: web::Data<String>) -> HttpResponse {
    let json = |body: String| HttpResponse::Ok().content_type("application/json").body(body);
    match req.path() {
        "/chunked" => {
            HttpResponse::Ok().content_type("application/json").streaming(futures_util::stream::once(async {
                Ok::<_, std::io::Error>(Bytes::from_static(SMALL.as_bytes()))
            }))
        }
        "/json4k" => json(big.get_ref().clone()),
        "/sse" => {
            let n: u64 = req.query_string().strip_prefix("n=").and_then(|n| n.parse().ok()).unwrap_or(100);
            let events = futures_util::stream::unfold(0u64, move |i| async move {
                if i >= n {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                Some((Ok::<_, std::io::Error>(Bytes::from(format!("data: {}\n\n", now_us()))), i + 1))
            });
            HttpResponse::Ok().content_type("text/event-stream").streaming(events)
        }
        _ => json(SMALL.to_string()),
    }
}

fn bff_config(public_url: &str, issuer: &str, redis_url: &str, upstream: &str, workers: usize, cache: bool) -> Config {
    Config::from_toml(&format!(
        r#"
[server]
public_url = "{public_url}"
static_dir = ""
workers = {workers}
# The invalidation run signs in hundreds of times from one address.
login_starts_per_minute = 100000
[oidc]
issuer = "{issuer}"
client_id = "bench"
client_secret = "bench-secret"
[session]
redis_url = "{redis_url}"
secret = "{secret}"
key_prefix = "bench:"
[tokens]
local_cache = {cache}
[[api]]
prefix = "/api"
upstream = "{upstream}"
"#,
        secret = "bench-secret-".repeat(6),
    ))
    .unwrap()
}

/// Sign in: /auth/login → provider (signs in at once) → callback → session cookie.
async fn sign_in(http: &reqwest::Client, public_url: &str) -> String {
    let login = http.get(format!("{public_url}/auth/login")).send().await.unwrap();
    let login_cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let authorize = login.headers()["location"].to_str().unwrap().to_string();
    let back = http.get(authorize).send().await.unwrap();
    let callback = back.headers()["location"].to_str().unwrap().to_string();
    let done = http.get(callback).header("cookie", &login_cookie).send().await.unwrap();
    done.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("bff="))
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_string()
}

async fn api_status(http: &reqwest::Client, base: &str, cookie: &str) -> u16 {
    let res = http.get(format!("{base}/api/length")).header("cookie", cookie).header("x-csrf", "1").send().await;
    res.map(|r| r.status().as_u16()).unwrap_or(0)
}

struct Stack {
    idp: std::sync::Arc<bff::demo::idp::Controls>,
    issuer: String,
    upstream: String,
    cached: String,
    uncached: String,
    http: reqwest::Client,
}

/// The upstream, the provider, a cached bff and (unless `cached_twin`) an uncached one, or
/// two cached ones.
async fn start_stack(redis_url: &str, workers: usize, cached_twin: bool) -> Stack {
    let upstream_listener = listener();
    let upstream_url = format!("http://{}", upstream_listener.local_addr().unwrap());
    let big = web::Data::new(json_4k());
    let server = HttpServer::new(move || App::new().app_data(big.clone()).default_service(web::to(upstream)))
        .workers(1)
        .tcp_nodelay(true)
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
                frontchannel_logout_uri: None,
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

    let config = bff_config(&public_url, &idp.issuer, redis_url, &upstream_url, workers, true);
    let mut twin = config.clone();
    twin.tokens.local_cache = cached_twin;
    let app = bff::Application::build(config, app_listener).await.unwrap();
    actix_web::rt::spawn(app.run_until_stopped());
    // Same public origin, same secret and prefix: the same cookie works on both.
    let twin_listener = listener();
    let twin_url = format!("http://{}", twin_listener.local_addr().unwrap());
    let second = bff::Application::build(twin, twin_listener).await.unwrap();
    actix_web::rt::spawn(second.run_until_stopped());
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    Stack {
        idp: std::sync::Arc::clone(&idp.controls),
        issuer: idp.issuer.clone(),
        upstream: upstream_url,
        cached: public_url,
        uncached: twin_url,
        http,
    }
}

/// Reads an event stream; one delay per event.
async fn sse(url: &str, cookie: Option<&str>) {
    let http = reqwest::Client::new();
    let mut req = http.get(url).header("x-csrf", "1");
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    let mut body = req.send().await.unwrap().bytes_stream();
    let mut pending = String::new();
    while let Some(chunk) = body.next().await {
        let read_at = now_us();
        pending.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            if let Some(written) = event.trim().strip_prefix("data: ").and_then(|t| t.parse::<u128>().ok()) {
                println!("SSE_US={}", read_at.saturating_sub(written));
            }
        }
    }
}

/// Logout on one cached instance, then the other's calls until it refuses: N times.
async fn invalidation(redis_url: &str, rounds: usize) {
    let stack = start_stack(redis_url, 1, true).await;
    let (a, b, http) = (&stack.cached, &stack.uncached, &stack.http);
    // Both invalidation channels up before the first fill.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..rounds {
        let cookie = sign_in(http, a).await;
        assert_eq!(api_status(http, b, &cookie).await, 200);
        assert_eq!(api_status(http, b, &cookie).await, 200);
        let logout =
            http.post(format!("{a}/auth/logout")).header("cookie", &cookie).header("x-csrf", "1").send().await.unwrap();
        assert_eq!(logout.status(), 303);
        let started = Instant::now();
        let mut calls = 0;
        while api_status(http, b, &cookie).await != 401 {
            calls += 1;
            assert!(started.elapsed() < Duration::from_secs(5), "never refused");
        }
        println!("INVALIDATION_US={} STALE_CALLS={calls}", started.elapsed().as_micros());
    }
}

/// A RESP3 connection with tracking on (`mode`: extra `CLIENT TRACKING ON` arguments) that
/// counts the keys its invalidation messages name.
async fn counting_connection(
    redis_url: &str,
    mode: &[&str],
) -> (redis::aio::MultiplexedConnection, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let count = std::sync::Arc::new(AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&count);
    let mut info: redis::ConnectionInfo = redis_url.parse().unwrap();
    info.redis.protocol = redis::ProtocolVersion::RESP3;
    let config = redis::AsyncConnectionConfig::new().set_push_sender(move |push: redis::PushInfo| {
        if push.kind == redis::PushKind::Invalidate {
            let keys = match push.data.first() {
                Some(redis::Value::Array(keys)) => keys.len() as u64,
                _ => 1,
            };
            counter.fetch_add(keys, Ordering::SeqCst);
        }
        Ok::<(), std::convert::Infallible>(())
    });
    let mut conn =
        redis::Client::open(info).unwrap().get_multiplexed_async_connection_with_config(&config).await.unwrap();
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("TRACKING").arg("ON").arg(mode);
    cmd.query_async::<()>(&mut conn).await.unwrap();
    (conn, count)
}

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await.unwrap();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

async fn tracking_modes(redis_url: &str) {
    use std::sync::atomic::Ordering;
    let stack = start_stack(redis_url, 1, true).await;
    let (mut default, default_count) = counting_connection(redis_url, &[]).await;
    let (_bcast, bcast_count) = counting_connection(redis_url, &["BCAST", "PREFIX", "bench:"]).await;
    let settle = || tokio::time::sleep(Duration::from_millis(200));

    stack.idp.set_access_token_ttl(Duration::from_secs(2));
    let cookie = sign_in(&stack.http, &stack.cached).await;
    settle().await;
    println!("BCAST_MSGS_LOGIN={}", bcast_count.swap(0, Ordering::SeqCst));
    let keys: Vec<String> = redis::cmd("KEYS").arg("bench:*:tokens").query_async(&mut default).await.unwrap();
    for key in &keys {
        let _: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut default).await.unwrap();
    }
    settle().await;
    default_count.store(0, Ordering::SeqCst);
    bcast_count.store(0, Ordering::SeqCst);
    // Due for refresh after half its 2 s lifetime: this call refreshes, with rotation.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(api_status(&stack.http, &stack.cached, &cookie).await, 200);
    settle().await;
    println!("DEFAULT_MSGS_REFRESH={}", default_count.load(Ordering::SeqCst));
    println!("BCAST_MSGS_REFRESH={}", bcast_count.load(Ordering::SeqCst));

    // Server memory of tracked keys: 20,000 token-set-sized values, read on a tracked connection.
    let (mut plain, _) = counting_connection(redis_url, &["OPTIN"]).await;
    let n = 20_000;
    let value = vec![b'x'; 700];
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("SET").arg(format!("trk:{{h{i:021}}}:tokens")).arg(&value).ignore();
        }
        pipe.query_async::<()>(&mut plain).await.unwrap();
    }
    let before = used_memory(&mut plain).await;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("GET").arg(format!("trk:{{h{i:021}}}:tokens")).ignore();
        }
        pipe.query_async::<()>(&mut default).await.unwrap();
    }
    let after = used_memory(&mut plain).await;
    println!("TRACKED_KEY_BYTES={}", (after - before) / n);
    let _: () = redis::cmd("FLUSHDB").query_async(&mut plain).await.unwrap();
}

#[actix_web::main]
async fn main() {
    let redis_url = std::env::var("BENCH_REDIS_URL").expect("BENCH_REDIS_URL");
    let workers: usize = std::env::var("BENCH_BFF_WORKERS").ok().and_then(|w| w.parse().ok()).unwrap_or(1);
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    match args.first().map(String::as_str) {
        Some("sse") => return sse(&args[1], args.get(2).map(String::as_str)).await,
        Some("tracking-modes") => return tracking_modes(&redis_url).await,
        Some("invalidation") => {
            let rounds = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(200);
            return invalidation(&redis_url, rounds).await;
        }
        _ => {}
    }

    // BENCH_TRACES=off|on (benches/traces.sh): logs set up as `bff serve` does, and with `on`
    // spans exported to a counting collector of our own (BENCH_SAMPLING: the sampling ratio).
    // Unset: no subscriber at all.
    // BENCH_OTLP_SINK=1 (benches/callgrind.sh): the counting collector alone, for a bff of its own.
    let traces = std::env::var("BENCH_TRACES").ok();
    let sink = if traces.as_deref() == Some("on") || std::env::var("BENCH_OTLP_SINK").is_ok() {
        Some(support::otlp::spawn_counting_collector().await.0)
    } else {
        None
    };
    let _telemetry = traces.is_some().then(|| {
        let config = bff::config::TelemetryConfig {
            otlp_endpoint: sink.as_ref().filter(|_| traces.as_deref() == Some("on")).map(|url| url.parse().unwrap()),
            sampling_ratio: std::env::var("BENCH_SAMPLING").ok().map(|r| r.parse().unwrap()),
            ..Default::default()
        };
        bff::telemetry::init_with_traces(bff::config::LogFormat::Text, "warn", &config).unwrap()
    });
    if let Some(sink) = &sink {
        println!("OTLP_SINK={sink}");
    }
    let stack = start_stack(&redis_url, workers, false).await;
    let session = sign_in(&stack.http, &stack.cached).await;
    assert_eq!(api_status(&stack.http, &stack.cached, &session).await, 200);
    assert_eq!(api_status(&stack.http, &stack.uncached, &session).await, 200);

    println!("ISSUER={}", stack.issuer);
    println!("UPSTREAM={}", stack.upstream);
    println!("BFF={}", stack.cached);
    println!("BFF_NOCACHE={}", stack.uncached);
    println!("COOKIE={session}");
    println!("READY=1");
    // Run until the script closes our stdin.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await;
}
