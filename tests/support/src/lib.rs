//! The harness of bff's integration tests (`tests/api`, `tests/streaming.rs`, `tests/cluster.rs`,
//! `tests/interop.rs`): the system under test and its fixtures, each on port 0 over loopback.
//!
//! - [`app`]: bff itself, in the test's process, with the demo provider and a key prefix of its own
//!   in the shared Redis;
//! - [`frontends`]: one bff with two frontends (by host or by path), each with its own provider
//!   and upstream, and the reloader to change them;
//! - [`browser`]: an HTTP client that keeps cookies like a browser and walks the login;
//! - [`dbsc`]: a browser's device key for DBSC, and the requests it signs;
//! - [`upstream`]: the API behind the proxy, which checks tokens at the demo provider;
//! - [`redis`]: Redis servers of a test's own, each in a temporary directory;
//! - [`websocket`]: WebSockets opened as a page would;
//! - [`otlp`]: an OpenTelemetry collector that keeps the spans it is sent.
//!
//! A harness that cannot set up its fixture stops right there, loudly: it panics.

pub mod app;
pub mod browser;
pub mod dbsc;
pub mod frontends;
pub mod otlp;
pub mod redis;
pub mod upstream;
pub mod websocket;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::redis::{RedisProcess, redis_answers};
pub use app::{
    AppOptions, CLIENT_ID, CLIENT_SECRET, IdpOptions, REDIS_URL, SHORT_SKEW_SECS, TestApp, client_key_fixtures,
    config_toml, local_cache_default, metric, spawn_app, spawn_app_with, spawn_idp, spawn_instance_with,
    spawn_second_instance, test_secret, token_expiry, until_refresh_due,
};
pub use browser::{Browser, location, query_param, raw_status, urlencode};

pub fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a loopback port")
}

/// A port where nothing listens (bound, then released).
pub fn dead_port() -> u16 {
    listener().local_addr().expect("local addr").port()
}

/// A free port for a server in another process to bind later (`bff serve`, with `listen` in its
/// configuration). Not one of the kernel's ephemeral ports, which `dead_port` gives: released,
/// such a port can be handed to the next server that binds port 0 (a provider or an upstream
/// started meanwhile) before the process that was meant to have it starts.
pub fn port_for_later() -> u16 {
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next().and_then(|lo| lo.parse::<u16>().ok()))
        .unwrap_or(32768);
    // 10000–19999: below the ephemeral range, and so is a Redis Cluster node's bus port (its port
    // + 10000), which Redis also refuses above 65535.
    let (low, high) = (10_000u16, ephemeral_start.clamp(12_000, 20_000));
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let start = u64::from(nanos) ^ u64::from(std::process::id());
    for attempt in 0..2_000u64 {
        // Strided through the range from a start of this moment's: tests in parallel, and test
        // binaries one after another, begin at different places.
        let port = low + ((start + attempt * 7919) % u64::from(high - low)) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port between {low} and {high}");
}

pub fn random_id() -> String {
    bff::crypto::random_token()[..12].to_string()
}

/// A new, empty directory under the system's temporary directory; the caller removes it.
pub fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bff-{what}-{}", random_id()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

/// The repository: `cargo test` runs there, and the summary goes to its `target/`.
pub fn repository() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// A line of a suite's summary: printed, and kept in target/test-summary.txt for `scripts/test` to
/// show (the test harness hides a passing test's output).
pub fn report(line: &str) {
    println!("{line}");
    let path = repository().join("target/test-summary.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes());
    }
}

/// Waits (bounded) until a condition holds; for background effects such as readiness.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
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

/// [`eventually`] for a condition checked without waiting (a clock, a child process, a
/// command-line tool's answer), from synchronous code.
pub fn blocking_eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The claims of a JWT, unverified (the test reads what a token says, the API verified it).
pub fn jwt_claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}
