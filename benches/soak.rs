//! The soak (issue 22), run by `benches/soak.sh`: a benchmark, not CI. Loopback only, every loop
//! bounded in count and time; it stops by itself.
//!
//! In this process: the demo provider (access tokens of `SOAK_TOKEN_TTL` seconds, so refreshes
//! never stop) and an upstream that checks every bearer token at that provider (`/ok`, `/echo`),
//! answers 401 to anything at `/deny`, and serves `/open/…` without a token (for a public route).
//! Two `bff serve` processes (the release binary, `SOAK_BFF`) share the Redis at
//! `BENCH_REDIS_URL`, both with the local cache on. Then:
//!
//! 1. RSS of each instance, idle;
//! 2. `SOAK_SESSIONS` sign-ins through the provider's login form, alternating instances, and one
//!    call per session on each instance (both caches hold every session); RSS again: bytes per
//!    cached session;
//! 3. for `SOAK_SECS`: legitimate calls at `SOAK_RATE` a second from `SOAK_CLIENTS` tasks (a
//!    random session, a random instance: a load balancer without affinity; 1 in 10 a POST with
//!    a body), `SOAK_CHURN` sign-outs a minute each followed by a sign-in in its place, and
//!    hostile noise at `SOAK_NOISE` a second from two sessions of the attacker's own: padded
//!    cookies (the attacker's valid cookie with unique whitespace, quotes, percent-encodings,
//!    `SOAK_PAD_BYTES` long, 0: none), dead cookies (signed-out sessions' and forged ones), 401 storms
//!    (bursts at the upstream path that always answers 401), trickling bodies (a session route
//!    and a public one; expected 408) and empty path segments (expected 400);
//! 4. every `SOAK_SAMPLE_SECS`: RSS of each instance (`/proc/PID/status`), their `/metrics`
//!    (token cache entries, refreshes by outcome, any cache size gauge), the provider's grants,
//!    Redis' memory, the counts so far; one line on stderr each, the table on stdout at the end
//!    with the verdict.
//!
//! A legitimate call is one of the signed-in sessions' calls, sign-ins and sign-outs: each must
//! succeed (200, 303); the first failures are printed with their answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bff::config::AuthMethod;
use bff::demo::idp::{self, Client, IdpConfig, Provider};
use futures_util::StreamExt;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{RwLock, Semaphore};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Clone)]
struct Settings {
    sessions: usize,
    secs: u64,
    sample_secs: u64,
    warmup_secs: u64,
    rate: f64,
    clients: usize,
    token_ttl: u64,
    churn_per_min: f64,
    noise_per_sec: f64,
    pad_bytes: usize,
    workers: usize,
    signin_concurrency: usize,
    bin: String,
    redis_url: String,
    work: std::path::PathBuf,
}

impl Settings {
    fn from_env() -> Settings {
        let sessions = env_or("SOAK_SESSIONS", 10_000usize);
        let secs = env_or("SOAK_SECS", 1800u64);
        Settings {
            sessions,
            secs,
            sample_secs: env_or("SOAK_SAMPLE_SECS", 60u64).max(1),
            // The first sixth of the run (5 minutes of 30) is warm-up, at least one sample.
            warmup_secs: env_or("SOAK_WARMUP_SECS", secs / 6),
            rate: env_or("SOAK_RATE", 300.0f64),
            clients: env_or("SOAK_CLIENTS", 32usize).max(1),
            token_ttl: env_or("SOAK_TOKEN_TTL", 60u64),
            churn_per_min: env_or("SOAK_CHURN", (sessions as f64 / 100.0).max(1.0)),
            noise_per_sec: env_or("SOAK_NOISE", 10.0f64),
            pad_bytes: env_or("SOAK_PAD_BYTES", 12_000usize),
            workers: env_or("SOAK_BFF_WORKERS", 1usize),
            signin_concurrency: env_or("SOAK_SIGNIN_CONCURRENCY", 8usize).max(1),
            bin: std::env::var("SOAK_BFF").unwrap_or_else(|_| "target/release/bff".into()),
            redis_url: std::env::var("BENCH_REDIS_URL").expect("BENCH_REDIS_URL (benches/soak.sh sets it)"),
            work: std::env::var("SOAK_WORK").map(Into::into).unwrap_or_else(|_| std::env::temp_dir()),
        }
    }
}

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind")
}

fn free_port() -> u16 {
    listener().local_addr().expect("addr").port()
}

// ---------------------------------------------------------------------------------------------
// The upstream

async fn upstream(req: HttpRequest, mut payload: web::Payload, provider: web::Data<Arc<Provider>>) -> HttpResponse {
    let path = req.path();
    if path == "/deny" {
        return HttpResponse::Unauthorized()
            .insert_header(("www-authenticate", "Bearer error=\"invalid_token\""))
            .json(serde_json::json!({ "error": "invalid_token" }));
    }
    if !path.starts_with("/open/") {
        let token =
            req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if token.and_then(|t| provider.active_access_token(t)).is_none() {
            return HttpResponse::Unauthorized()
                .insert_header(("www-authenticate", "Bearer error=\"invalid_token\""))
                .json(serde_json::json!({ "error": "invalid_token" }));
        }
    }
    let mut len = 0usize;
    while let Some(chunk) = payload.next().await {
        match chunk {
            Ok(c) => len += c.len(),
            Err(_) => return HttpResponse::BadRequest().finish(),
        }
    }
    HttpResponse::Ok().json(serde_json::json!({ "ok": true, "len": len }))
}

// ---------------------------------------------------------------------------------------------
// bff processes

struct Instance {
    base: String,
    child: tokio::process::Child,
}

impl Instance {
    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

fn bff_toml(s: &Settings, port: u16, public_url: &str, issuer: &str, upstream: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "{public_url}"
static_dir = ""
workers = {workers}
# Every sign-in comes from 127.0.0.1.
login_starts_per_minute = 100000000
max_pending_logins = 100000000
# The driver samples /metrics on the instance's own address.
metrics_public = true
[oidc]
issuer = "{issuer}"
client_id = "soak"
client_secret = "soak-secret"
[session]
redis_url = "{redis}"
secret = "{secret}"
key_prefix = "soak:"
[tokens]
local_cache = true
[log]
level = "warn"
[[api]]
prefix = "/api"
upstream = "{upstream}"
timeout_secs = 10
body_timeout_secs = 2
min_body_bytes_per_sec = 500
[[api]]
prefix = "/public"
upstream = "{upstream}/open"
token = "none"
timeout_secs = 10
body_timeout_secs = 2
min_body_bytes_per_sec = 500
"#,
        workers = s.workers,
        redis = s.redis_url,
        secret = "soak-session-secret-".repeat(4),
    )
}

async fn start_instance(s: &Settings, name: &str, port: u16, public_url: &str, issuer: &str, up: &str) -> Instance {
    let config = s.work.join(format!("{name}.toml"));
    std::fs::write(&config, bff_toml(s, port, public_url, issuer, up)).expect("write config");
    let log = std::fs::File::create(s.work.join(format!("{name}.log"))).expect("log file");
    let child = tokio::process::Command::new(&s.bin)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", s.bin));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let ready = http.get(format!("{base}/readyz")).send().await.map(|r| r.status().as_u16() == 200);
        if ready.unwrap_or(false) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{name} not ready in 30 s (see {name}.log)");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Instance { base, child }
}

/// Every sample of the metrics worth following, summed over label sets (`name` or
/// `name{label="value"}` as written).
async fn metrics(http: &reqwest::Client, base: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(res) = http.get(format!("{base}/metrics")).send().await else { return out };
    let text = res.text().await.unwrap_or_default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let name = key.split('{').next().unwrap_or(key);
        let keep = name.contains("cache")
            || name == "bff_token_refreshes_total"
            || name == "bff_client_token_requests_total"
            || name == "bff_requests_limited_total";
        if keep {
            *out.entry(name.to_string()).or_insert(0.0) += value;
            if key.contains('{') {
                *out.entry(key.to_string()).or_insert(0.0) += value;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Sign-in and sign-out, as a browser does them

fn set_cookie(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .map(String::from)
}

fn location(res: &reqwest::Response) -> Result<String, String> {
    res.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .ok_or_else(|| format!("{} without Location", res.status()))
}

/// /auth/login → the provider's login form → callback (on the same instance) → `bff=…`.
async fn sign_in(http: &reqwest::Client, base: &str, public_url: &str, username: &str) -> Result<String, String> {
    let start = http.get(format!("{base}/auth/login")).send().await.map_err(|e| format!("login: {}", chain(&e)))?;
    if start.status().as_u16() != 302 {
        return Err(format!("/auth/login answered {}", start.status()));
    }
    let login_cookie = set_cookie(&start, "bff-login").ok_or("no login cookie")?;
    let authorize = location(&start)?;
    let page = http.get(&authorize).send().await.map_err(|e| format!("authorize: {}", chain(&e)))?;
    if page.status().as_u16() != 200 {
        return Err(format!("authorize answered {}", page.status()));
    }
    let html = page.text().await.map_err(|e| format!("authorize page: {e}"))?;
    let interaction = html
        .split("name=\"interaction\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or("no interaction on the login page")?
        .to_string();
    let login_url = authorize.split("/authorize").next().unwrap_or_default().to_string() + "/login";
    let back = http
        .post(login_url)
        .form(&[("interaction", interaction.as_str()), ("username", username)])
        .send()
        .await
        .map_err(|e| format!("provider login: {}", chain(&e)))?;
    if back.status().as_u16() != 302 {
        return Err(format!("provider login answered {}", back.status()));
    }
    // The redirect URI is on the public origin (instance A); the sign-in completes where it began.
    let callback = location(&back)?.replacen(public_url, base, 1);
    let done = http
        .get(callback)
        .header("cookie", &login_cookie)
        .send()
        .await
        .map_err(|e| format!("callback: {}", chain(&e)))?;
    let status = done.status();
    set_cookie(&done, "bff")
        .filter(|c| c.len() > 4)
        .ok_or_else(|| format!("callback answered {status} without a session"))
}

async fn sign_out(http: &reqwest::Client, base: &str, cookie: &str) -> Result<(), String> {
    let res = http
        .post(format!("{base}/auth/logout"))
        .header("cookie", cookie)
        .header("x-csrf", "1")
        .send()
        .await
        .map_err(|e| format!("logout: {}", chain(&e)))?;
    match res.status().as_u16() {
        200 | 303 => Ok(()),
        other => Err(format!("logout answered {other}: {}", res.text().await.unwrap_or_default())),
    }
}

// ---------------------------------------------------------------------------------------------
// Counting

#[derive(Default)]
struct Counts {
    legit_ok: AtomicU64,
    legit_failed: AtomicU64,
    legit_failed_by: Mutex<BTreeMap<String, u64>>,
    failures_shown: AtomicU64,
    sign_ins: AtomicU64,
    sign_outs: AtomicU64,
    /// (kind, status) → count; status 0: no answer.
    hostile: Mutex<BTreeMap<(String, u16), u64>>,
    hostile_skipped: AtomicU64,
}

impl Counts {
    fn fail(&self, what: &str, status: u16, detail: String) {
        self.legit_failed.fetch_add(1, Ordering::Relaxed);
        *self.legit_failed_by.lock().unwrap().entry(format!("{what} {status}")).or_insert(0) += 1;
        if self.failures_shown.fetch_add(1, Ordering::Relaxed) < 30 {
            eprintln!("LEGITIMATE FAILURE: {what} → {status}: {detail}");
        }
    }

    fn hostile(&self, kind: &str, status: u16) {
        *self.hostile.lock().unwrap().entry((kind.to_string(), status)).or_insert(0) += 1;
    }
}

struct Shared {
    s: Settings,
    bases: Vec<String>,
    public_url: String,
    slots: Vec<RwLock<String>>,
    dead: Mutex<VecDeque<String>>,
    /// The attacker's own sessions, one signed in on each instance.
    attacker: Vec<String>,
    legit: reqwest::Client,
    noise: reqwest::Client,
    counts: Counts,
    next_user: AtomicU64,
    deadline: Instant,
}

/// An error and every cause under it (reqwest's own text names none: "error sending request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

async fn legit_call(sh: &Shared, rng_slot: usize, instance: usize, post: bool) {
    let slot = sh.slots[rng_slot].read().await;
    let base = &sh.bases[instance];
    let req = if post {
        sh.legit.post(format!("{base}/api/echo")).header("content-type", "application/json").body(vec![b'7'; 512])
    } else {
        sh.legit.get(format!("{base}/api/ok"))
    };
    let what = if post { "POST /api/echo" } else { "GET /api/ok" };
    match req.header("cookie", slot.as_str()).header("x-csrf", "1").send().await {
        Ok(res) if res.status().as_u16() == 200 => {
            sh.counts.legit_ok.fetch_add(1, Ordering::Relaxed);
            let _ = res.bytes().await;
        }
        Ok(res) => {
            let status = res.status().as_u16();
            let detail = format!(
                "session slot {rng_slot}, instance {}, {}",
                (b'A' + instance as u8) as char,
                res.text().await.unwrap_or_default().chars().take(200).collect::<String>()
            );
            sh.counts.fail(what, status, detail);
        }
        Err(e) => sh.counts.fail(what, 0, format!("session slot {rng_slot}: {}", chain(&e))),
    }
}

async fn legit_client(sh: Arc<Shared>, index: usize) {
    let period = Duration::from_secs_f64(sh.s.clients as f64 / sh.s.rate.max(0.001));
    // Spread the clients' ticks over one period.
    tokio::time::sleep(period.mul_f64(index as f64 / sh.s.clients as f64)).await;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < sh.deadline {
        tick.tick().await;
        if Instant::now() >= sh.deadline {
            break;
        }
        let (slot, instance, post) = {
            let mut rng = rand::thread_rng();
            (rng.gen_range(0..sh.slots.len()), rng.gen_range(0..sh.bases.len()), rng.gen_ratio(1, 10))
        };
        legit_call(&sh, slot, instance, post).await;
    }
}

async fn churn(sh: Arc<Shared>) {
    if sh.s.churn_per_min <= 0.0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(60.0 / sh.s.churn_per_min));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    while Instant::now() < sh.deadline {
        tick.tick().await;
        if Instant::now() >= sh.deadline {
            break;
        }
        let (index, out_at, in_at) = {
            let mut rng = rand::thread_rng();
            (rng.gen_range(0..sh.slots.len()), rng.gen_range(0..sh.bases.len()), rng.gen_range(0..sh.bases.len()))
        };
        // Waits for the slot's calls in flight: a call never races its own session's logout.
        let mut slot = sh.slots[index].write().await;
        match sign_out(&sh.legit, &sh.bases[out_at], &slot).await {
            Ok(()) => {
                sh.counts.sign_outs.fetch_add(1, Ordering::Relaxed);
                let mut dead = sh.dead.lock().unwrap();
                dead.push_back(slot.clone());
                if dead.len() > 1000 {
                    dead.pop_front();
                }
            }
            Err(e) => sh.counts.fail("sign-out", 0, e),
        }
        let user = format!("user{}", sh.next_user.fetch_add(1, Ordering::Relaxed));
        match sign_in(&sh.legit, &sh.bases[in_at], &sh.public_url, &user).await {
            Ok(cookie) => {
                sh.counts.sign_ins.fetch_add(1, Ordering::Relaxed);
                *slot = cookie;
            }
            // The slot keeps its signed-out cookie: its calls will fail too, and say so.
            Err(e) => sh.counts.fail("sign-in", 0, e),
        }
    }
}

/// The attacker's valid cookie, unique every time: whitespace around the value (spaces and
/// tabs, a random pattern), quotes, and some characters percent-encoded. The same session once
/// bff parses it.
fn padded(cookie: &str, pad: usize, variant: u64) -> String {
    let value = cookie.strip_prefix("bff=").unwrap_or(cookie);
    let mut rng = rand::thread_rng();
    let mut ws = |n: usize| -> String { (0..n).map(|_| if rng.gen_bool(0.5) { ' ' } else { '\t' }).collect() };
    match variant % 3 {
        0 => format!("bff={}{value}", ws(pad)),
        1 => format!("bff={}\"{value}\"{}", ws(pad / 2), ws(pad / 2)),
        _ => {
            let lead = ws(pad / 2);
            let mut rng = rand::thread_rng();
            // The value as bff reads it (it may hold escapes, `%2B`, decoded once), encoded
            // again: what must be escaped is, and three letters or digits in ten are too.
            let decoded = percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned();
            let encoded: String = decoded
                .chars()
                .map(|c| {
                    if !c.is_ascii_alphanumeric() || rng.gen_bool(0.3) {
                        format!("%{:02X}", c as u32)
                    } else {
                        c.to_string()
                    }
                })
                .collect();
            format!("bff={lead}{encoded}")
        }
    }
}

/// A request with a body that trickles (5 bytes a second, under any sane minimum rate) on a raw
/// connection; the status bff answers, 0 when none within 30 s.
async fn trickle(base: &str, path: &str, cookie: Option<&str>) -> u16 {
    let authority = base.trim_start_matches("http://");
    let Ok(mut stream) = tokio::net::TcpStream::connect(authority).await else { return 0 };
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\nX-CSRF: 1\r\n"
    );
    if let Some(cookie) = cookie {
        head.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        for _ in 0..150 {
            if write.write_all(b"7").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut buf = vec![0u8; 1024];
    let status = match tokio::time::timeout(Duration::from_secs(30), read.read(&mut buf)).await {
        Ok(Ok(n)) if n > 12 => {
            String::from_utf8_lossy(&buf[..n]).split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
        }
        _ => 0,
    };
    writer.abort();
    status
}

async fn noise_call(sh: &Shared, kind: &'static str, variant: u64) {
    let (instance, attacker) = {
        let mut rng = rand::thread_rng();
        let i = rng.gen_range(0..sh.bases.len());
        (i, sh.attacker[rng.gen_range(0..sh.attacker.len())].clone())
    };
    let base = &sh.bases[instance];
    let get = |path: &str, cookie: String| {
        sh.noise.get(format!("{base}{path}")).header("cookie", cookie).header("x-csrf", "1").send()
    };
    let status = |r: Result<reqwest::Response, reqwest::Error>| r.map(|r| r.status().as_u16()).unwrap_or(0);
    match kind {
        // SOAK_PAD_BYTES=0: no padded cookies at all (a control run).
        "padded cookie" if sh.s.pad_bytes == 0 => {}
        "padded cookie" => {
            let s = status(get("/api/ok", padded(&attacker, sh.s.pad_bytes, variant)).await);
            let label = ["padded cookie (whitespace)", "padded cookie (quotes)", "padded cookie (percent-encoded)"];
            sh.counts.hostile(label[(variant % 3) as usize], s);
        }
        "dead cookie" => {
            let (label, cookie) = {
                let dead = sh.dead.lock().unwrap();
                let mut rng = rand::thread_rng();
                if dead.is_empty() || rng.gen_bool(0.25) {
                    // Forged: the length of a real one, never sealed by bff.
                    let len = attacker.len().saturating_sub(4).max(16);
                    let forged: String = (0..len)
                        .map(|_| {
                            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[rng.gen_range(0..64)]
                                as char
                        })
                        .collect();
                    ("dead cookie (forged)", format!("bff={forged}"))
                } else {
                    ("dead cookie (signed out)", dead[rng.gen_range(0..dead.len())].clone())
                }
            };
            sh.counts.hostile(label, status(get("/api/ok", cookie).await));
        }
        "401 storm" => {
            // A burst of 20 at once at a path that always answers 401.
            let calls = (0..20).map(|_| get("/api/deny", attacker.clone()));
            for r in futures_util::future::join_all(calls).await {
                sh.counts.hostile(kind, status(r));
            }
        }
        "trickle (session)" => sh.counts.hostile(kind, trickle(base, "/api/echo", Some(&attacker)).await),
        "trickle (public)" => sh.counts.hostile(kind, trickle(base, "/public/echo", None).await),
        "empty segment" => sh.counts.hostile(kind, status(get("/api//ok", attacker).await)),
        _ => unreachable!(),
    }
}

async fn noise(sh: Arc<Shared>) {
    if sh.s.noise_per_sec <= 0.0 {
        return;
    }
    const KINDS: [&str; 8] = [
        "padded cookie",
        "dead cookie",
        "padded cookie",
        "trickle (session)",
        "dead cookie",
        "401 storm",
        "trickle (public)",
        "empty segment",
    ];
    let in_flight = Arc::new(Semaphore::new(64));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / sh.s.noise_per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while Instant::now() < sh.deadline {
        tick.tick().await;
        if Instant::now() >= sh.deadline {
            break;
        }
        let kind = KINDS[(n % KINDS.len() as u64) as usize];
        n += 1;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            sh.counts.hostile_skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let sh = Arc::clone(&sh);
        tokio::spawn(async move {
            noise_call(&sh, kind, n / KINDS.len() as u64).await;
            drop(permit);
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Samples

struct Sample {
    secs: u64,
    rss: Vec<u64>,
    entries: Vec<f64>,
    cache_bytes: Vec<Option<f64>>,
    legit_ok: u64,
    legit_failed: u64,
    sign_ins: u64,
    sign_outs: u64,
    hostile: BTreeMap<(String, u16), u64>,
    refresh_grants: u64,
    code_grants: u64,
    client_grants: u64,
    rejected_again: f64,
    redis_mib: f64,
}

async fn redis_used(redis: &mut redis::aio::MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO").arg("memory").query_async(redis).await.unwrap_or_default();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
        / (1024.0 * 1024.0)
}

async fn sample(
    secs: u64,
    instances: &[Instance],
    http: &reqwest::Client,
    provider: &Provider,
    counts: &Counts,
    redis: &mut redis::aio::MultiplexedConnection,
) -> Sample {
    let mut entries = Vec::new();
    let mut cache_bytes = Vec::new();
    let mut rejected_again = 0.0;
    for i in instances {
        let m = metrics(http, &i.base).await;
        entries.push(m.get("bff_token_cache_entries").copied().unwrap_or(0.0));
        let bytes: Vec<f64> = m
            .iter()
            // Every in-memory cache's byte gauge (`bff_cache_bytes{cache=…}`).
            .filter(|(k, _)| k.starts_with("bff_cache_bytes"))
            .map(|(_, v)| *v)
            .collect();
        cache_bytes.push((!bytes.is_empty()).then(|| bytes.iter().sum()));
        rejected_again +=
            m.get("bff_token_refreshes_total{frontend=\"default\",outcome=\"rejected_again\"}").copied().unwrap_or(0.0);
    }
    let redis_mib = redis_used(redis).await;
    let hostile = counts.hostile.lock().unwrap().clone();
    let c = &provider.counters;
    Sample {
        secs,
        rss: instances.iter().map(Instance::rss_kib).collect(),
        entries,
        cache_bytes,
        legit_ok: counts.legit_ok.load(Ordering::Relaxed),
        legit_failed: counts.legit_failed.load(Ordering::Relaxed),
        sign_ins: counts.sign_ins.load(Ordering::Relaxed),
        sign_outs: counts.sign_outs.load(Ordering::Relaxed),
        hostile,
        refresh_grants: c.refresh_token.load(Ordering::Relaxed),
        code_grants: c.authorization_code.load(Ordering::Relaxed),
        client_grants: c.client_credentials.load(Ordering::Relaxed),
        rejected_again,
        redis_mib,
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn hostile_summary(h: &BTreeMap<(String, u16), u64>) -> String {
    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    for ((_, status), n) in h {
        *by_status.entry(*status).or_insert(0) += n;
    }
    by_status.iter().map(|(s, n)| format!("{s}: {n}")).collect::<Vec<_>>().join(", ")
}

fn row(x: &Sample) -> String {
    let rss: Vec<String> = x.rss.iter().map(|r| mib(*r)).collect();
    let entries: Vec<String> = x.entries.iter().map(|e| format!("{e:.0}")).collect();
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.1} |",
        x.secs,
        rss.join(" | "),
        entries.join(" / "),
        x.legit_ok,
        x.legit_failed,
        x.sign_ins,
        x.sign_outs,
        hostile_summary(&x.hostile),
        x.refresh_grants,
        x.client_grants,
        x.code_grants,
        x.rejected_again,
        x.redis_mib,
    )
}

/// `soak keepalive-race BASE`: whether reusing a keep-alive connection just as bff closes it
/// for idleness (after about 5 s) fails a call. 500 connections, each used once, left idle
/// 4.4 to 5.1 s (1.4 ms apart), used again; one line per call that failed, with its error chain.
async fn keepalive_race(base: &str) {
    let trials = (0..500u64).map(|i| async move {
        let idle = Duration::from_micros(4_400_000 + 1_400 * i);
        let http = reqwest::Client::new();
        let first = http.get(format!("{base}/healthz")).send().await.map(|r| r.status().as_u16());
        tokio::time::sleep(idle).await;
        let second = http.get(format!("{base}/healthz")).send().await;
        (idle, first, second.map(|r| r.status().as_u16()).map_err(|e| chain(&e)))
    });
    let mut failed = 0;
    for (idle, first, second) in futures_util::future::join_all(trials).await {
        if let Err(e) = &second {
            failed += 1;
            println!("idle {:.2} s: first {first:?}, second failed: {e}", idle.as_secs_f64());
        }
    }
    println!("KEEPALIVE_RACE_FAILED={failed} of 500");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if args.first().map(String::as_str) == Some("keepalive-race") {
        return keepalive_race(args.get(1).map(String::as_str).unwrap_or("http://127.0.0.1:8080")).await;
    }
    let s = Settings::from_env();
    eprintln!(
        "soak: {} sessions, {} s (samples every {} s, warm-up {} s), {} legitimate calls/s from {} clients, \
         access tokens of {} s, {} sign-outs+sign-ins a minute, {} hostile calls/s, bff workers {}",
        s.sessions,
        s.secs,
        s.sample_secs,
        s.warmup_secs,
        s.rate,
        s.clients,
        s.token_ttl,
        s.churn_per_min,
        s.noise_per_sec,
        s.workers
    );

    // The upstream and the provider.
    let public_port = free_port();
    let public_url = format!("http://127.0.0.1:{public_port}");
    let (idp, idp_server) = idp::start(
        IdpConfig {
            clients: vec![Client {
                client_id: "soak".into(),
                client_secret: "soak-secret".into(),
                auth_method: AuthMethod::ClientSecretBasic,
                redirect_uris: vec![format!("{public_url}/auth/callback")],
                post_logout_redirect_uris: vec![format!("{public_url}/")],
                backchannel_logout_uri: None,
                frontchannel_logout_uri: None,
            }],
            access_token_ttl: Duration::from_secs(s.token_ttl),
            api_audience: "soak-api".into(),
            templates_dir: "templates".into(),
        },
        listener(),
    )
    .expect("the demo provider");
    tokio::spawn(idp_server);
    let provider = Arc::clone(&idp.provider);
    let up_listener = listener();
    let upstream_url = format!("http://{}", up_listener.local_addr().expect("addr"));
    let for_upstream = web::Data::new(Arc::clone(&provider));
    let up_server =
        HttpServer::new(move || App::new().app_data(for_upstream.clone()).default_service(web::to(upstream)))
            .workers(2)
            .tcp_nodelay(true)
            .disable_signals()
            .listen(up_listener)
            .expect("listen")
            .run();
    tokio::spawn(up_server);

    // The two instances: the same public origin (cookies and redirect URI), ports of their own.
    let a = start_instance(&s, "bff-a", public_port, &public_url, &idp.issuer, &upstream_url).await;
    let b = start_instance(&s, "bff-b", free_port(), &public_url, &idp.issuer, &upstream_url).await;
    let instances = vec![a, b];
    let bases: Vec<String> = instances.iter().map(|i| i.base.clone()).collect();
    let mut redis =
        redis::Client::open(s.redis_url.as_str()).unwrap().get_multiplexed_async_connection().await.expect("redis");
    // SOAK_CLIENT_IDLE_SECS: how long an idle keep-alive connection of the legitimate clients
    // may be reused (reqwest's default, 90 s, unless set); bff (actix-web) closes idle ones
    // after 5 s.
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256);
    if let Some(idle) = std::env::var("SOAK_CLIENT_IDLE_SECS").ok().and_then(|v| v.parse::<f64>().ok()) {
        builder = builder.pool_idle_timeout(Duration::from_secs_f64(idle));
    }
    let http = builder.build().unwrap();
    let counts = Counts::default();

    // Idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = sample(0, &instances, &http, &provider, &counts, &mut redis).await;
    eprintln!("idle RSS (KiB): {:?}, Redis {:.1} MiB", idle.rss, idle.redis_mib);

    // Sign-ins, alternating instances, bounded concurrency.
    let signing = Instant::now();
    let gate = Arc::new(Semaphore::new(s.signin_concurrency));
    let mut handles = Vec::with_capacity(s.sessions);
    for i in 0..s.sessions {
        let permit = Arc::clone(&gate).acquire_owned().await.unwrap();
        let (http, base, public_url) = (http.clone(), bases[i % 2].clone(), public_url.clone());
        handles.push(tokio::spawn(async move {
            let mut last = String::new();
            // A sign-in that fails is tried again (at most 3 times) and counted.
            for _ in 0..3 {
                match sign_in(&http, &base, &public_url, &format!("user{i}")).await {
                    Ok(cookie) => {
                        drop(permit);
                        return Ok(cookie);
                    }
                    Err(e) => last = e,
                }
            }
            drop(permit);
            Err(last)
        }));
        if (i + 1) % 1000 == 0 {
            eprintln!("signed in {} ({:.0} s)", i + 1, signing.elapsed().as_secs_f64());
        }
    }
    let mut cookies = Vec::with_capacity(s.sessions);
    for (i, h) in handles.into_iter().enumerate() {
        match h.await.unwrap() {
            Ok(c) => cookies.push(c),
            Err(e) => {
                counts.fail("initial sign-in", 0, format!("user{i}: {e}"));
            }
        }
    }
    let signin_secs = signing.elapsed().as_secs_f64();
    eprintln!("{} sessions signed in in {signin_secs:.0} s", cookies.len());
    assert!(!cookies.is_empty(), "no session signed in");
    let mut attacker = Vec::new();
    for (i, base) in bases.iter().enumerate() {
        attacker.push(sign_in(&http, base, &public_url, &format!("attacker{i}")).await.expect("attacker sign-in"));
    }

    // Every session once on each instance: both caches hold them all.
    let filling = Instant::now();
    let fill_gate = Arc::new(Semaphore::new(32));
    let fill_failures = Arc::new(AtomicU64::new(0));
    let mut fills = Vec::new();
    for cookie in &cookies {
        for base in &bases {
            let permit = Arc::clone(&fill_gate).acquire_owned().await.unwrap();
            let (http, url, cookie, failures) =
                (http.clone(), format!("{base}/api/ok"), cookie.clone(), Arc::clone(&fill_failures));
            fills.push(tokio::spawn(async move {
                let ok = http.get(url).header("cookie", cookie).header("x-csrf", "1").send().await;
                if !ok.is_ok_and(|r| r.status().as_u16() == 200) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                drop(permit);
            }));
        }
    }
    futures_util::future::join_all(fills).await;
    let fill_failed = fill_failures.load(Ordering::Relaxed);
    if fill_failed > 0 {
        counts.fail("first call", 0, format!("{fill_failed} first calls failed"));
    }
    eprintln!("first calls in {:.0} s", filling.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = sample(0, &instances, &http, &provider, &counts, &mut redis).await;
    eprintln!("after sign-ins RSS (KiB): {:?}, cache entries {:?}", loaded.rss, loaded.entries);

    // The steady phase.
    let started = Instant::now();
    let shared = Arc::new(Shared {
        s: s.clone(),
        bases: bases.clone(),
        public_url: public_url.clone(),
        slots: cookies.into_iter().map(RwLock::new).collect(),
        dead: Mutex::new(VecDeque::new()),
        attacker,
        legit: http.clone(),
        noise: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        counts,
        next_user: AtomicU64::new(s.sessions as u64),
        deadline: started + Duration::from_secs(s.secs),
    });
    let mut tasks = Vec::new();
    for i in 0..s.clients {
        tasks.push(tokio::spawn(legit_client(Arc::clone(&shared), i)));
    }
    tasks.push(tokio::spawn(churn(Arc::clone(&shared))));
    tasks.push(tokio::spawn(noise(Arc::clone(&shared))));

    let mut samples = Vec::new();
    let header = "| s | RSS A MiB | RSS B MiB | cache entries A / B | legitimate ok | legitimate failed | \
                  sign-ins | sign-outs | hostile by status | refresh grants | client-credentials grants | code grants | rejected_again | Redis MiB |";
    eprintln!("{header}");
    let mut next = started;
    loop {
        next += Duration::from_secs(s.sample_secs);
        let end = started + Duration::from_secs(s.secs);
        tokio::time::sleep_until(next.min(end).into()).await;
        let x = sample(started.elapsed().as_secs(), &instances, &http, &provider, &shared.counts, &mut redis).await;
        eprintln!("{}", row(&x));
        samples.push(x);
        if Instant::now() >= end {
            break;
        }
    }
    // Calls in flight finish (bounded).
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    if tokio::time::timeout(Duration::from_secs(40), futures_util::future::join_all(tasks)).await.is_err() {
        eprintln!("some tasks still running 40 s after the end: stopped");
        aborts.iter().for_each(|a| a.abort());
    }
    let last = sample(started.elapsed().as_secs(), &instances, &http, &provider, &shared.counts, &mut redis).await;

    // The report.
    let c = &shared.counts;
    println!();
    println!(
        "Soak: {} sessions ({} signed in), {} s, {} legitimate calls/s from {} clients, access tokens of {} s, \
         {} sign-outs+sign-ins a minute, {} hostile calls/s (padded cookies of {} bytes), bff workers {}",
        s.sessions,
        shared.slots.len(),
        s.secs,
        s.rate,
        s.clients,
        s.token_ttl,
        s.churn_per_min,
        s.noise_per_sec,
        s.pad_bytes,
        s.workers
    );
    println!();
    println!("{header}");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    println!("{}", row(&idle).replacen("| 0 |", "| idle |", 1));
    println!("{}", row(&loaded).replacen("| 0 |", "| signed in |", 1));
    for x in &samples {
        println!("{}", row(x));
    }
    println!("{}", row(&last).replacen(&format!("| {} |", last.secs), "| end |", 1));
    println!();
    println!("Hostile calls by kind and status (end):");
    for ((kind, status), n) in &last.hostile {
        println!("  {kind}: {status} × {n}");
    }
    println!("  not sent (64 hostile calls already in flight): {}", c.hostile_skipped.load(Ordering::Relaxed));
    let failed_by = c.legit_failed_by.lock().unwrap().clone();
    if !failed_by.is_empty() {
        println!("Legitimate failures by kind: {failed_by:?}");
    }
    println!();

    // Bytes per cached session: RSS growth over the sign-ins and first calls, per session.
    let n = shared.slots.len() as f64;
    for (i, name) in ["A", "B"].iter().enumerate() {
        let grown = (loaded.rss[i] as f64 - idle.rss[i] as f64) * 1024.0;
        let mut line = format!(
            "instance {name}: RSS idle {} MiB, after sign-ins {} MiB: {:.0} bytes per cached session ({} cache entries)",
            mib(idle.rss[i]),
            mib(loaded.rss[i]),
            grown / n,
            loaded.entries[i]
        );
        if let Some(bytes) = loaded.cache_bytes[i] {
            line.push_str(&format!(
                "; the cache's own count: {bytes:.0} bytes, {:.0} per entry",
                bytes / loaded.entries[i].max(1.0)
            ));
        }
        println!("{line}");
    }
    println!(
        "Redis: {:.1} MiB idle, {:.1} MiB after sign-ins: {:.0} bytes per session",
        idle.redis_mib,
        loaded.redis_mib,
        (loaded.redis_mib - idle.redis_mib) * 1024.0 * 1024.0 / n
    );

    // The verdict: RSS after warm-up within 10 % of the first sample after it, and no
    // legitimate failure.
    let after_warmup: Vec<&Sample> = samples.iter().filter(|x| x.secs >= s.warmup_secs).collect();
    let mut flat = true;
    let mut words = Vec::new();
    if let Some(base) = after_warmup.first() {
        for (i, name) in ["A", "B"].iter().enumerate() {
            let reference = base.rss[i] as f64;
            let max = after_warmup.iter().map(|x| x.rss[i]).max().unwrap_or(0) as f64;
            let min = after_warmup.iter().map(|x| x.rss[i]).min().unwrap_or(0) as f64;
            let end = after_warmup.last().map(|x| x.rss[i]).unwrap_or(0) as f64;
            let ok = max <= reference * 1.10 && min >= reference * 0.90;
            flat &= ok;
            words.push(format!(
                "{name} {} MiB at {} s → {} MiB at the end (max {:+.1} %, min {:+.1} %)",
                mib(base.rss[i]),
                base.secs,
                mib(end as u64),
                (max / reference - 1.0) * 100.0,
                (min / reference - 1.0) * 100.0
            ));
        }
    } else {
        flat = false;
        words.push("no sample after the warm-up".into());
    }
    let failed = c.legit_failed.load(Ordering::Relaxed);
    println!(
        "VERDICT: RSS after warm-up {} ({}); legitimate calls: {} ok, {} failed → {}",
        if flat { "flat within 10 %" } else { "NOT flat within 10 %" },
        words.join("; "),
        c.legit_ok.load(Ordering::Relaxed),
        failed,
        if flat && failed == 0 { "PASS" } else { "FAIL" }
    );
    // Stops both instances (kill on drop) before saying how it went.
    drop(instances);
    if !(flat && failed == 0) {
        std::process::exit(1);
    }
}
