//! HTTP/2 over TLS as browsers speak it (the API suite's core over one h2 connection) and as
//! hostile clients abuse it: rapid reset (CVE-2023-44487), SETTINGS and PING floods, and a
//! CONTINUATION flood (CVE-2024-27316 family), written frame by frame on the TLS stream because
//! a well-behaved client cannot send them. Each flood is bounded in frames and time, targets
//! loopback, and is judged by what another client sees meanwhile and by how the flooding
//! connection ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::{Method, StatusCode, Version};
use rustls::pki_types::{CertificateDer, ServerName};
use support::{Browser, eventually, token_expiry};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::tls::{Pair, TlsApp, client, self_signed, spawn_tls};

/// The cookie bff names its session with under an https `public_url`.
const SESSION_COOKIE: &str = "__Host-Http-bff";

async fn signed_in(tls: &TlsApp, pair: &Pair, user: &str) -> Browser {
    let browser = Browser::with_client(&tls.https, client(&[pair], false));
    browser.login_as(user).await;
    assert!(browser.cookie(SESSION_COOKIE).is_some(), "{user} signed in over https");
    browser
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_core_over_http2() {
    let pair = self_signed("bff h2");
    let tls = spawn_tls(&pair, |c| {
        c.api[0].max_body_bytes = 1024;
        c.api[0].max_retry_body_bytes = 512;
    })
    .await;
    // The sign-in crosses from https bff to the http provider and back with one client.
    let browser = signed_in(&tls, &pair, "alice").await;

    let user = browser.user().await;
    assert_eq!((user.status(), user.version()), (StatusCode::OK, Version::HTTP_2));
    assert_eq!(user.json::<serde_json::Value>().await.unwrap()["sub"], "demo|alice");

    let got = browser.api(Method::GET, "/api/echo/items?x=1").await;
    assert_eq!((got.status(), got.version()), (StatusCode::OK, Version::HTTP_2));
    let first_expiry = token_expiry(&got);
    let echo: serde_json::Value = got.json().await.unwrap();
    assert_eq!(echo["path"], "/echo/items");
    assert_eq!(echo["query"], "x=1");

    let posted = browser
        .send(
            browser
                .request(Method::POST, "/api/things")
                .header("x-csrf", "1")
                .header("content-type", "application/json")
                .body(r#"{"n":1}"#),
        )
        .await;
    assert_eq!((posted.status(), posted.version()), (StatusCode::OK, Version::HTTP_2));
    let echo: serde_json::Value = posted.json().await.unwrap();
    assert_eq!((echo["method"].as_str(), echo["body"].as_str()), (Some("POST"), Some(r#"{"n":1}"#)));

    // A refresh, decided on the app's clock: the next call goes out with a new token.
    assert_eq!(tls.app.token_requests("refresh_token"), 0);
    tls.app.make_refresh_due(first_expiry, 30);
    let refreshed = browser.api(Method::GET, "/api/echo").await;
    assert_eq!((refreshed.status(), refreshed.version()), (StatusCode::OK, Version::HTTP_2));
    assert_eq!(tls.app.token_requests("refresh_token"), 1);
    let bearers: Vec<_> = tls.app.upstream.seen().into_iter().filter_map(|s| s.bearer).collect();
    assert_ne!(bearers.first(), bearers.last(), "the upstream saw the refreshed token");

    // No anti-forgery header: refused before anything goes upstream.
    let before = tls.app.upstream.seen().len();
    let forged = browser.send(browser.request(Method::POST, "/api/things").body("x")).await;
    assert_eq!((forged.status(), forged.version()), (StatusCode::FORBIDDEN, Version::HTTP_2));
    assert_eq!(forged.json::<serde_json::Value>().await.unwrap(), serde_json::json!({"error": "csrf"}));
    assert_eq!(tls.app.upstream.seen().len(), before);

    // A body over the route's max_body_bytes, declared and undeclared (an h2 DATA stream with
    // no content-length is h2's equivalent of chunked).
    let declared =
        browser.send(browser.request(Method::POST, "/api/echo").header("x-csrf", "1").body(vec![b'a'; 2000])).await;
    assert_eq!((declared.status(), declared.version()), (StatusCode::PAYLOAD_TOO_LARGE, Version::HTTP_2));
    assert_eq!(declared.json::<serde_json::Value>().await.unwrap(), serde_json::json!({"error": "payload_too_large"}));
    let chunks = futures_util::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![b'b'; 100])));
    let streamed = browser
        .send(browser.request(Method::POST, "/api/echo").header("x-csrf", "1").body(reqwest::Body::wrap_stream(chunks)))
        .await;
    assert_eq!((streamed.status(), streamed.version()), (StatusCode::PAYLOAD_TOO_LARGE, Version::HTTP_2));

    // A header block over server.max_header_bytes (16 KiB): h2 decodes it, bff refuses it.
    let huge = browser
        .send(browser.request(Method::GET, "/api/echo").header("x-csrf", "1").header("x-big", "a".repeat(20_000)))
        .await;
    assert_eq!((huge.status(), huge.version()), (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, Version::HTTP_2));
    assert_eq!(huge.json::<serde_json::Value>().await.unwrap(), serde_json::json!({"error": "headers_too_large"}));

    // The same connection still serves after every refusal.
    let after = browser.api(Method::GET, "/api/echo").await;
    assert_eq!((after.status(), after.version()), (StatusCode::OK, Version::HTTP_2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_over_http2_arrives_event_by_event() {
    let pair = self_signed("bff h2");
    let tls = spawn_tls(&pair, |_| {}).await;
    let browser = signed_in(&tls, &pair, "alice").await;
    let res = browser.api(Method::GET, "/api/sse?count=5").await;
    assert_eq!((res.status(), res.version()), (StatusCode::OK, Version::HTTP_2));
    // The upstream writes an event every 300 ms: buffered until the end, all of them would come
    // at once.
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let mut first_at = None;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), body.next()).await.expect("an event in time")
    {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        if first_at.is_none() && text.contains("data: tick 0") {
            assert!(!text.contains("data: tick 4"), "the first event came alone, before the stream ended: {text}");
            first_at = Some(Instant::now());
        }
    }
    let first_at = first_at.expect("the first event");
    assert!(text.contains("data: tick 4"), "{text}");
    let spread = first_at.elapsed();
    assert!(spread >= Duration::from_millis(900), "the events were held back and sent together ({spread:?} apart)");
}

/// A TLS connection to bff that offers only `h2` by ALPN, trusting `pair` only.
async fn connect_h2(tls: &TlsApp, pair: &Pair) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pair.der.clone())).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let authority = tls.https.trim_start_matches("https://");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small send buffer: what the floods count as written is then close to what bff read.
    socket.set_send_buffer_size(64 * 1024).unwrap();
    let tcp = socket.connect(authority.parse().unwrap()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "h2 negotiated");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_one_connection_count_against_the_session_limit_like_requests() {
    let pair = self_signed("bff h2");
    let tls = spawn_tls(&pair, |c| {
        c.server.max_upstream_concurrency_per_session = 3;
        // The slow calls must outlast the whole burst, even on a loaded machine.
        c.api[0].timeout = Duration::from_secs(10);
    })
    .await;
    let alice = signed_in(&tls, &pair, "alice").await;
    let bob = signed_in(&tls, &pair, "bob").await;
    let cookie = format!("{SESSION_COOKIE}={}", alice.cookie(SESSION_COOKIE).unwrap());

    // One connection, many streams: the h2 client multiplexes them all on it.
    let (send, connection) = h2::client::handshake(connect_h2(&tls, &pair).await).await.unwrap();
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let mut calls = Vec::new();
    for _ in 0..8 {
        let request = hyper::Request::get(format!("{}/api/slow?ms=3000", tls.https))
            .header("cookie", cookie.as_str())
            .header("x-csrf", "1")
            .body(())
            .unwrap();
        let (response, _) = send.send_request(request, true).unwrap();
        send = send.ready().await.unwrap();
        calls.push(tokio::spawn(async move {
            let response = response.await.unwrap();
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }));
    }

    // Alice's permitted streams hold the upstream; Bob, on a connection of his own, is not held.
    let upstream = &tls.app.upstream;
    eventually("three of alice's streams reach the upstream", Duration::from_secs(10), || async move {
        upstream.seen().iter().filter(|s| s.path == "/slow").count() >= 3
    })
    .await;
    let started = Instant::now();
    let other = bob.api(Method::GET, "/api/echo").await;
    assert_eq!((other.status(), other.version()), (StatusCode::OK, Version::HTTP_2));
    assert!(started.elapsed() < Duration::from_secs(2), "bob waited for alice: {:?}", started.elapsed());

    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    answers.sort();
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429, 429, 429], "{answers:?}");
    for (_, body) in answers.iter().filter(|(s, _)| *s == 429) {
        assert_eq!(body, r#"{"error":"upstream_busy"}"#);
    }
    assert_eq!(tls.app.upstream.seen().iter().filter(|s| s.path == "/slow").count(), 3, "the refused never went out");
}

// --- Raw frames -----------------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// SETTINGS_MAX_FRAME_SIZE's initial value: the largest frame bff accepts unasked.
const MAX_FRAME: usize = 16_384;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK string literal (not Huffman-coded) of any length.
fn hpack_string(out: &mut Vec<u8>, bytes: &[u8]) {
    hpack_int(out, 0x00, 7, bytes.len());
    out.extend_from_slice(bytes);
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | u8::try_from(value).unwrap());
        return;
    }
    out.push(first | u8::try_from(max).unwrap());
    value -= max;
    while value >= 128 {
        out.push(u8::try_from(value % 128).unwrap() | 0x80);
        value /= 128;
    }
    out.push(u8::try_from(value).unwrap());
}

/// `GET /healthz` as a header block, every field a literal "without indexing" so that every
/// block is the same whatever the server's HPACK table holds.
fn get_healthz(authority: &str) -> Vec<u8> {
    // :method GET, :scheme https (static table entries 2 and 7).
    let mut block = vec![0x82, 0x87];
    // :path (static name 4) and :authority (static name 1).
    hpack_int(&mut block, 0x00, 4, 4);
    hpack_string(&mut block, b"/healthz");
    hpack_int(&mut block, 0x00, 4, 1);
    hpack_string(&mut block, authority.as_bytes());
    block
}

/// What the flooded connection sent back, counted as it arrives.
#[derive(Default)]
struct Seen {
    bytes: AtomicU64,
    ping_acks: AtomicU64,
    settings_acks: AtomicU64,
    responses: AtomicU64,
    resets: AtomicU64,
    /// The GOAWAY's error code, + 1 (0: none yet).
    goaway: AtomicU32,
    /// The client's bytes written when the GOAWAY arrived.
    written_at_goaway: AtomicU64,
    ended: AtomicBool,
}

impl Seen {
    fn goaway(&self) -> Option<u32> {
        self.goaway.load(Ordering::SeqCst).checked_sub(1)
    }

    fn summary(&self) -> String {
        format!(
            "read {} bytes: {} PING ACKs, {} SETTINGS ACKs, {} responses, {} RST_STREAMs, GOAWAY {:?}, ended {}",
            self.bytes.load(Ordering::SeqCst),
            self.ping_acks.load(Ordering::SeqCst),
            self.settings_acks.load(Ordering::SeqCst),
            self.responses.load(Ordering::SeqCst),
            self.resets.load(Ordering::SeqCst),
            self.goaway().map(reason),
            self.ended.load(Ordering::SeqCst),
        )
    }
}

fn reason(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x6 => "FRAME_SIZE_ERROR",
        0x9 => "COMPRESSION_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        _ => "other",
    }
}

/// Reads frames until the connection ends (end of stream, an error), counting what came.
async fn read_frames(mut reader: impl AsyncRead + Unpin, seen: Arc<Seen>, written: Arc<AtomicU64>) {
    let mut head = [0u8; 9];
    loop {
        if reader.read_exact(&mut head).await.is_err() {
            break;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if reader.read_exact(&mut payload).await.is_err() {
            break;
        }
        seen.bytes.fetch_add(9 + len as u64, Ordering::SeqCst);
        match (head[3], head[4] & ACK) {
            (PING, ACK) => seen.ping_acks.fetch_add(1, Ordering::SeqCst),
            (SETTINGS, ACK) => seen.settings_acks.fetch_add(1, Ordering::SeqCst),
            (HEADERS, _) => seen.responses.fetch_add(1, Ordering::SeqCst),
            (RST_STREAM, _) => seen.resets.fetch_add(1, Ordering::SeqCst),
            (GOAWAY, _) if len >= 8 => {
                let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                seen.written_at_goaway.store(written.load(Ordering::SeqCst), Ordering::SeqCst);
                seen.goaway.store(code + 1, Ordering::SeqCst);
                0
            }
            _ => 0,
        };
    }
    seen.ended.store(true, Ordering::SeqCst);
}

/// A raw HTTP/2 connection: the preface and an empty SETTINGS written; its answers are read and
/// counted by a task of its own only from `start_reading` on (before it, a client that does not
/// read what bff sends).
struct Raw {
    writer: Box<dyn AsyncWrite + Unpin + Send>,
    reader: Option<Box<dyn AsyncRead + Unpin + Send>>,
    seen: Arc<Seen>,
    written: Arc<AtomicU64>,
}

impl Raw {
    async fn open(tls: &TlsApp, pair: &Pair) -> Raw {
        let (reader, mut writer) = tokio::io::split(connect_h2(tls, pair).await);
        writer.write_all(PREFACE).await.unwrap();
        writer.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        writer.flush().await.unwrap();
        Raw { writer: Box::new(writer), reader: Some(Box::new(reader)), seen: Arc::default(), written: Arc::default() }
    }

    fn start_reading(&mut self) {
        if let Some(reader) = self.reader.take() {
            tokio::spawn(read_frames(reader, Arc::clone(&self.seen), Arc::clone(&self.written)));
        }
    }

    /// Writes `batches` (whole frames each) until one fails or `limit` passes; the bytes written.
    async fn flood(&mut self, batches: impl Iterator<Item = Vec<u8>>, limit: Duration) -> Flooded {
        let started = Instant::now();
        let mut outcome = Flooded { written: 0, stopped_by: "done", took: Duration::ZERO };
        for batch in batches {
            let left = limit.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, async {
                self.writer.write_all(&batch).await?;
                self.writer.flush().await
            })
            .await
            {
                Ok(Ok(())) => {
                    outcome.written += batch.len() as u64;
                    self.written.store(outcome.written, Ordering::SeqCst);
                }
                Ok(Err(_)) => {
                    outcome.stopped_by = "the connection refused more";
                    break;
                }
                Err(_) => {
                    outcome.stopped_by = "the time bound (writes stalled)";
                    break;
                }
            }
        }
        outcome.took = started.elapsed();
        outcome
    }
}

#[derive(Debug)]
struct Flooded {
    written: u64,
    stopped_by: &'static str,
    took: Duration,
}

/// Another client's `GET /healthz`, on a connection of its own and a task of its own (so that
/// it runs beside the flood, not between its writes), over and over until `busy` ends: how many
/// and the slowest. Each must come within `limit`.
fn probe_while(
    tls: &TlsApp,
    pair: &Pair,
    busy: Arc<AtomicBool>,
    limit: Duration,
) -> tokio::task::JoinHandle<(u32, Duration)> {
    let other = client(&[pair], false);
    let url = format!("{}/healthz", tls.https);
    tokio::spawn(async move {
        let (mut count, mut slowest) = (0u32, Duration::ZERO);
        loop {
            let started = Instant::now();
            let res = tokio::time::timeout(limit, other.get(&url).send())
                .await
                .unwrap_or_else(|_| panic!("another client waited over {limit:?} during the flood"))
                .expect("another client's request");
            assert_eq!((res.status(), res.version()), (StatusCode::OK, Version::HTTP_2));
            slowest = slowest.max(started.elapsed());
            count += 1;
            if !busy.load(Ordering::SeqCst) {
                return (count, slowest);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// Runs `flood` while another client probes; the other client's record.
async fn flood_with_probe<F: Future<Output = Flooded>>(
    tls: &TlsApp,
    pair: &Pair,
    flood: F,
) -> (Flooded, u32, Duration) {
    let busy = Arc::new(AtomicBool::new(true));
    let probe = probe_while(tls, pair, Arc::clone(&busy), Duration::from_secs(5));
    let outcome = flood.await;
    busy.store(false, Ordering::SeqCst);
    let (probes, slowest) = probe.await.expect("the other client was served throughout");
    (outcome, probes, slowest)
}

/// The test process's resident memory, bff's included (it runs in the process): printed beside
/// each flood for the record only, since the other tests of the binary run alongside.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_and_others_are_served() {
    let pair = self_signed("bff h2");
    let tls = spawn_tls(&pair, |_| {}).await;
    let mut raw = Raw::open(&tls, &pair).await;
    raw.start_reading();
    let authority = tls.https.trim_start_matches("https://").to_string();
    let block = get_healthz(&authority);
    // The request itself is well-formed: answered when it is not reset (the GOAWAY below is
    // then for the resets, not for malformed requests).
    raw.writer.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block)).await.unwrap();
    raw.writer.flush().await.unwrap();
    let seen = Arc::clone(&raw.seen);
    eventually("the request is answered", Duration::from_secs(10), || {
        let seen = Arc::clone(&seen);
        async move { seen.responses.load(Ordering::SeqCst) == 1 }
    })
    .await;
    const STREAMS: u32 = 20_000;
    // HEADERS then RST_STREAM(CANCEL) for each stream, 100 streams to a write.
    let batches = (0..STREAMS / 100).map(|b| {
        let mut batch = Vec::new();
        for i in 0..100 {
            let id = 3 + 2 * (b * 100 + i);
            batch.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
            batch.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        batch
    });
    let rss_before = rss_kib();
    let (flooded, probes, slowest) = flood_with_probe(&tls, &pair, raw.flood(batches, Duration::from_secs(10))).await;
    eventually("the flooding connection is told to go away or ends", Duration::from_secs(10), || {
        let seen = Arc::clone(&raw.seen);
        async move { seen.goaway().is_some() || seen.ended.load(Ordering::SeqCst) }
    })
    .await;
    println!(
        "rapid reset: {STREAMS} streams offered, {flooded:?}; {}; {} bytes written when GOAWAY came; \
         other client: {probes} requests, slowest {slowest:?}; test process RSS {rss_before} -> {} KiB",
        raw.seen.summary(),
        raw.seen.written_at_goaway.load(Ordering::SeqCst),
        rss_kib(),
    );
    assert_eq!(raw.seen.goaway().map(reason), Some("ENHANCE_YOUR_CALM"), "{}", raw.seen.summary());
    // h2 counts streams reset before bff accepted them: at most 20 are tolerated.
    assert!(raw.seen.responses.load(Ordering::SeqCst) < 1 + u64::from(STREAMS) / 10, "{}", raw.seen.summary());
    let after = client(&[&pair], false).get(format!("{}/healthz", tls.https)).send().await.unwrap();
    assert_eq!(after.status(), 200);
}

/// A flood of frames that each ask for an answer (`frame`), written without reading any:
/// bff answers each (h2 holds one unanswered at a time and stops reading until it is written)
/// or closes the connection; others are served meanwhile.
async fn answer_flood(kind: u8, make: fn(u64) -> Vec<u8>, acks: fn(&Seen) -> u64) {
    let pair = self_signed("bff h2");
    let tls = spawn_tls(&pair, |_| {}).await;
    let mut raw = Raw::open(&tls, &pair).await;
    const FRAMES: u64 = 100_000;
    let batches = (0..FRAMES / 1000).map(|b| (0..1000).flat_map(|i| make(b * 1000 + i)).collect::<Vec<u8>>());
    let rss_before = rss_kib();
    let (flooded, probes, slowest) = flood_with_probe(&tls, &pair, raw.flood(batches, Duration::from_secs(15))).await;
    let frame_len = make(0).len() as u64;
    let sent = flooded.written / frame_len;
    // Only now are the answers read.
    raw.start_reading();
    let seen = Arc::clone(&raw.seen);
    eventually("every frame answered, or the connection closed", Duration::from_secs(30), || {
        let seen = Arc::clone(&seen);
        async move { acks(&seen) >= sent || seen.goaway().is_some() || seen.ended.load(Ordering::SeqCst) }
    })
    .await;
    println!(
        "{} flood: {FRAMES} offered, {sent} written ({flooded:?}); {}; other client: {probes} requests, slowest {slowest:?}; \
         test process RSS {rss_before} -> {} KiB",
        if kind == PING { "PING" } else { "SETTINGS" },
        seen.summary(),
        rss_kib(),
    );
    assert!(acks(&seen) == sent || seen.goaway().is_some(), "neither answered nor refused: {}", seen.summary());
    let after = client(&[&pair], false).get(format!("{}/healthz", tls.https)).send().await.unwrap();
    assert_eq!(after.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_answered_or_cut_off_and_others_are_served() {
    answer_flood(PING, |i| frame(PING, 0, 0, &i.to_be_bytes()), |s| s.ping_acks.load(Ordering::SeqCst)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_flood_is_answered_or_cut_off_and_others_are_served() {
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4) changed each time: work for the server, not a no-op.
    answer_flood(
        SETTINGS,
        |i| {
            let mut payload = vec![0x00, 0x04];
            payload.extend_from_slice(&(65_535 + u32::try_from(i % 1000).unwrap()).to_be_bytes());
            frame(SETTINGS, 0, 0, &payload)
        },
        |s| s.settings_acks.load(Ordering::SeqCst).saturating_sub(1),
    )
    .await;
}

/// One header block that never ends: `first` in a HEADERS frame without END_HEADERS, then
/// `frames` CONTINUATION frames of `payload(i)`, up to 20 s. What bff did, and the bytes the
/// client had written when the GOAWAY came.
async fn continuation_flood(
    tls: &TlsApp,
    pair: &Pair,
    what: &str,
    first: &[u8],
    frames: u64,
    payload: impl Fn(u64) -> Vec<u8>,
) -> (Flooded, Arc<Seen>, u64) {
    let mut raw = Raw::open(tls, pair).await;
    raw.start_reading();
    let batches = std::iter::once(frame(HEADERS, END_STREAM, 1, first))
        .chain((0..frames).map(|i| frame(CONTINUATION, 0, 1, &payload(i))));
    let rss_before = rss_kib();
    let (flooded, probes, slowest) = flood_with_probe(tls, pair, raw.flood(batches, Duration::from_secs(20))).await;
    let seen = Arc::clone(&raw.seen);
    eventually("the flooding connection ends", Duration::from_secs(10), || {
        let seen = Arc::clone(&seen);
        async move { seen.goaway().is_some() || seen.ended.load(Ordering::SeqCst) }
    })
    .await;
    let at_goaway = seen.written_at_goaway.load(Ordering::SeqCst);
    println!(
        "CONTINUATION flood ({what}): {flooded:?}; {}; {at_goaway} bytes written when GOAWAY came; \
         other client: {probes} requests, slowest {slowest:?}; test process RSS {rss_before} -> {} KiB",
        seen.summary(),
        rss_kib()
    );
    (flooded, seen, at_goaway)
}

/// h2 takes a header block of at most 16 MiB (its SETTINGS_MAX_HEADER_LIST_SIZE) in at most
/// 1,280 CONTINUATION frames (20 MiB of full ones); past that it sends GOAWAY. What the client
/// had written by then also counts what the sockets held on the way, hence the margin.
const CONTINUATION_BOUND: u64 = 32 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_before_it_is_buffered() {
    let pair = self_signed("bff h2");
    let tls = spawn_tls(&pair, |_| {}).await;
    // Up to 64 MiB in full frames.
    const FULL: u64 = (64 << 20) / MAX_FRAME as u64;

    // 1. Every frame one whole header field (`x-flood-<i>: aaa…`), each decodable: what h2
    // keeps is the decoded list, until it passes 16 MiB.
    let field = |i: u64| {
        let name = format!("x-flood-{i}");
        let mut block = vec![0x00];
        hpack_string(&mut block, name.as_bytes());
        let value = vec![b'a'; MAX_FRAME - block.len() - 3];
        hpack_string(&mut block, &value);
        block
    };
    let (flooded, seen, at_goaway) =
        continuation_flood(&tls, &pair, "decodable fields", &[0x82, 0x87], FULL, field).await;
    assert_ne!(flooded.stopped_by, "done", "bff took all 64 MiB of one header block");
    assert!(seen.goaway().is_some(), "closed with a GOAWAY: {}", seen.summary());
    assert!(at_goaway <= CONTINUATION_BOUND, "{at_goaway} bytes taken before the GOAWAY");

    // 2. One value declared 128 MiB long, its bytes spread over the frames: nothing decodes, the
    // undecoded block is what grows.
    let mut block = vec![0x82, 0x87, 0x00];
    hpack_string(&mut block, b"x-flood");
    hpack_int(&mut block, 0x00, 7, 128 << 20);
    let (flooded, seen, at_goaway) =
        continuation_flood(&tls, &pair, "one endless value", &block, FULL, |_| vec![b'a'; MAX_FRAME]).await;
    assert_ne!(flooded.stopped_by, "done", "bff took all 64 MiB of one header block");
    assert!(seen.goaway().is_some(), "closed with a GOAWAY: {}", seen.summary());
    assert!(at_goaway <= CONTINUATION_BOUND, "{at_goaway} bytes taken before the GOAWAY");

    // 3. Empty frames: no bytes to limit, the count alone ends it.
    let (_, seen, _) = continuation_flood(&tls, &pair, "empty frames", &[0x82, 0x87], 100_000, |_| Vec::new()).await;
    assert_eq!(seen.goaway().map(reason), Some("ENHANCE_YOUR_CALM"), "{}", seen.summary());

    let after = client(&[&pair], false).get(format!("{}/healthz", tls.https)).send().await.unwrap();
    assert_eq!(after.status(), 200);
}
