//! TLS on the main listener: HTTP/2 and HTTP/1.1 by ALPN, a signed-in proxy call and an event
//! stream over HTTP/2, a certificate rotated on disk without dropping open connections, broken
//! files refused, HSTS, the plain-HTTP redirect listener, and `bff demo --tls`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bff::config::Config;
use bff::tls::TlsFiles;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use reqwest::{Method, Version};
use sha2::{Digest, Sha256};
use support::{AppOptions, Browser, TestApp, eventually, spawn_app_with, temp_dir};

/// A self-signed certificate for `127.0.0.1` and `localhost`, with its key.
pub(crate) struct Pair {
    cert_pem: String,
    key_pem: String,
    pub(crate) der: Vec<u8>,
    spki: Vec<u8>,
}

pub(crate) fn self_signed(name: &str) -> Pair {
    self_signed_with(name, KeyPair::generate().unwrap())
}

fn self_signed_with(name: &str, key: KeyPair) -> Pair {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let cert = params.self_signed(&key).unwrap();
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
        spki: key.subject_public_key_info(),
    }
}

/// Replaces a file as certificate managers do: a new file renamed over the old one.
fn replace(path: &Path, contents: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).unwrap();
    std::fs::rename(&next, path).unwrap();
}

fn write_pair(dir: &Path, pair: &Pair) -> TlsFiles {
    let files = TlsFiles { cert_file: dir.join("cert.pem"), key_file: dir.join("key.pem") };
    replace(&files.key_file, &pair.key_pem);
    replace(&files.cert_file, &pair.cert_pem);
    files
}

/// A client that trusts `roots` only (no system roots), reports the peer's certificate, and
/// offers h2 and http/1.1 by ALPN (`http1` only http/1.1).
pub(crate) fn client(roots: &[&Pair], http1: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .tls_info(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10));
    for pair in roots {
        builder = builder.add_root_certificate(reqwest::Certificate::from_der(&pair.der).unwrap());
    }
    if http1 {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

fn peer_certificate(res: &reqwest::Response) -> Vec<u8> {
    let info = res.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info");
    info.peer_certificate().expect("a peer certificate").to_vec()
}

pub(crate) struct TlsApp {
    pub(crate) app: TestApp,
    pub(crate) https: String,
    dir: PathBuf,
    files: TlsFiles,
}

impl Drop for TlsApp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// bff over TLS with `pair`, the in-memory store; `tweak` adjusts the configuration further.
pub(crate) async fn spawn_tls(pair: &Pair, tweak: impl Fn(&mut Config) + Send + Sync + 'static) -> TlsApp {
    let dir = temp_dir("tls");
    let files = write_pair(&dir, pair);
    let served = files.clone();
    let app = spawn_app_with(AppOptions {
        https: true,
        redis_url: None,
        tweak: Arc::new(move |config: &mut Config| {
            config.server.tls = Some(served.clone());
            tweak(config);
        }),
        ..Default::default()
    })
    .await;
    let https = app.address.replace("http://", "https://");
    TlsApp { app, https, dir, files }
}

async fn metric(client: &reqwest::Client, base: &str, name: &str, labels: &str) -> f64 {
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_get_http2_by_alpn_and_http1_clients_http1() {
    let pair = self_signed("bff test");
    let tls = spawn_tls(&pair, |_| {}).await;

    let h2 = client(&[&pair], false).get(format!("{}/healthz", tls.https)).send().await.unwrap();
    assert_eq!(h2.status(), 200);
    assert_eq!(h2.version(), Version::HTTP_2, "h2 negotiated by ALPN, not prior knowledge");
    assert_eq!(peer_certificate(&h2), pair.der);
    assert_eq!(h2.headers()["strict-transport-security"], "max-age=31536000");

    let h1 = client(&[&pair], true).get(format!("{}/", tls.https)).send().await.unwrap();
    assert_eq!(h1.status(), 200);
    assert_eq!(h1.version(), Version::HTTP_11);
    assert_eq!(h1.headers()["strict-transport-security"], "max-age=31536000");

    // Errors are answers of bff's too.
    let anonymous =
        client(&[&pair], false).get(format!("{}/auth/user", tls.https)).header("x-csrf", "1").send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("strict-transport-security"));

    // The main listener speaks TLS only.
    let plain = reqwest::Client::new().get(format!("{}/healthz", tls.app.address)).send().await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200), "no plain HTTP on a TLS listener");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_is_never_sent_over_plain_http_and_zero_turns_it_off() {
    let plain = spawn_app_with(AppOptions { https: true, redis_url: None, ..Default::default() }).await;
    let res = reqwest::get(format!("{}/healthz", plain.address)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(!res.headers().contains_key("strict-transport-security"), "https public_url, but bff serves plain HTTP");

    let pair = self_signed("bff test");
    let off = spawn_tls(&pair, |c| c.server.hsts_max_age = Duration::ZERO).await;
    let res = client(&[&pair], false).get(format!("{}/healthz", off.https)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(!res.headers().contains_key("strict-transport-security"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_api_call_and_an_event_stream_over_http2() {
    let pair = self_signed("bff test");
    let tls = spawn_tls(&pair, |_| {}).await;
    let browser = Browser::with_client(&tls.https, client(&[&pair], false));
    browser.login_as("alice").await;
    assert!(browser.cookie("__Host-Http-bff").is_some(), "an https public_url: the prefixed cookie");

    let res = browser.api(Method::GET, "/api/echo/items?x=1").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_2);
    let echo: serde_json::Value = res.json().await.unwrap();
    assert_eq!(echo["path"], "/echo/items");
    assert!(echo["headers"]["authorization"].as_str().is_some_and(|a| a.starts_with("Bearer ")));
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");

    let posted = browser
        .send(
            browser
                .request(Method::POST, "/api/things")
                .header("x-csrf", "1")
                .header("content-type", "application/json")
                .body(r#"{"name":"seven"}"#),
        )
        .await;
    assert_eq!(posted.status(), 200);
    assert_eq!(posted.version(), Version::HTTP_2);
    assert_eq!(posted.json::<serde_json::Value>().await.unwrap()["body"], r#"{"name":"seven"}"#);

    let events = browser.api(Method::GET, "/api/sse?count=3").await;
    assert_eq!(events.status(), 200);
    assert_eq!(events.version(), Version::HTTP_2);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let text = events.text().await.unwrap();
    assert!(text.contains("data: tick 0") && text.contains("data: tick 2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_connections_and_open_ones_stay() {
    let first = self_signed("first");
    let tls = spawn_tls(&first, |_| {}).await;
    // Trusts the first certificate only: a request of it after the rotation that succeeds went
    // over the connection opened before it.
    let before = client(&[&first], false);
    let res = before.get(format!("{}/healthz", tls.https)).send().await.unwrap();
    assert_eq!((res.status(), res.version()), (reqwest::StatusCode::OK, Version::HTTP_2));
    assert_eq!(peer_certificate(&res), first.der);

    let second = self_signed("second");
    write_pair(&tls.dir, &second);
    eventually("a new connection gets the new certificate", Duration::from_secs(15), || {
        let url = format!("{}/healthz", tls.https);
        let der = second.der.clone();
        // A new client each time: a new connection.
        let fresh = client(&[&second], false);
        async move { fresh.get(url).send().await.is_ok_and(|res| res.status() == 200 && peer_certificate(&res) == der) }
    })
    .await;

    let again = before.get(format!("{}/healthz", tls.https)).send().await.expect("the open connection still serves");
    assert_eq!(again.status(), 200);
    assert_eq!(peer_certificate(&again), first.der, "the same connection, its certificate");

    let after = client(&[&second], false);
    assert!(metric(&after, &tls.https, "bff_tls_certificate_reloads_total", "applied").await >= 1.0);

    // A broken file is refused: the certificate before it still serves, and the refusal counts.
    replace(&tls.files.key_file, "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n");
    eventually("the broken key is refused", Duration::from_secs(15), || {
        let after = after.clone();
        let base = tls.https.clone();
        async move { metric(&after, &base, "bff_tls_certificate_reloads_total", "refused").await >= 1.0 }
    })
    .await;
    let fresh = client(&[&second], false).get(format!("{}/healthz", tls.https)).send().await.unwrap();
    assert_eq!(peer_certificate(&fresh), second.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redirect_listener_answers_308_to_the_https_origin_only() {
    let pair = self_signed("bff test");
    let port = support::port_for_later();
    let tls = spawn_tls(&pair, move |c| c.server.redirect_http_listen = Some(([127, 0, 0, 1], port).into())).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let plain = format!("http://127.0.0.1:{port}");

    let res = http.get(format!("{plain}/shop/items?x=1&y=%2F")).send().await.unwrap();
    assert_eq!(res.status(), 308);
    assert_eq!(res.headers()["location"], format!("{}/shop/items?x=1&y=%2F", tls.https).as_str());
    assert!(!res.headers().contains_key("strict-transport-security"), "never over plain HTTP");

    let post = http.post(format!("{plain}/auth/logout")).body("x").send().await.unwrap();
    assert_eq!(post.status(), 308, "every method, kept by a 308");
    assert_eq!(post.headers()["location"], format!("{}/auth/logout", tls.https).as_str());

    // Another host is not where it sends anyone; nor is anything served there.
    let other = http.get(format!("{plain}/healthz")).header("host", "evil.example").send().await.unwrap();
    assert_eq!(other.status(), 308);
    assert_eq!(other.headers()["location"], format!("{}/healthz", tls.https).as_str());

    let huge = http.get(format!("{plain}/")).header("x-big", "a".repeat(20_000)).send().await.unwrap();
    assert_eq!(huge.status(), 431);
}

fn toml_with(cert: &Path, key: &Path, public_url: &str) -> String {
    format!(
        "[server]\npublic_url = \"{public_url}\"\ntls_cert_file = {cert:?}\ntls_key_file = {key:?}\n\
         [oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"bff\"\nclient_secret = \"x\"\n\
         [session]\nsecret = \"{}\"\n",
        "tls-test-secret-".repeat(4)
    )
}

fn problems(toml: &str) -> Vec<(String, String)> {
    match Config::from_toml(toml) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.into_iter().map(|e| (e.key, e.message)).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_cannot_be_served_are_refused_at_start_naming_their_key() {
    let dir = temp_dir("tls-refused");
    let (a, b) = (self_signed("a"), self_signed("b"));
    let files = write_pair(&dir, &a);
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, &b.key_pem).unwrap();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all").unwrap();
    let missing = dir.join("missing.pem");

    assert!(problems(&toml_with(&files.cert_file, &files.key_file, "https://app.example")).is_empty());

    let mismatch = problems(&toml_with(&files.cert_file, &other_key, "https://app.example"));
    assert_eq!(mismatch.len(), 1, "{mismatch:?}");
    assert_eq!(mismatch[0].0, "server.tls_key_file");
    assert!(mismatch[0].1.contains("is not the key of the first certificate"), "{mismatch:?}");

    let bad_key = problems(&toml_with(&files.cert_file, &garbage, "https://app.example"));
    assert_eq!(bad_key[0].0, "server.tls_key_file", "{bad_key:?}");
    let unreadable = problems(&toml_with(&files.cert_file, &missing, "https://app.example"));
    assert_eq!(unreadable[0].0, "server.tls_key_file", "{unreadable:?}");
    assert!(unreadable[0].1.contains("cannot read"), "{unreadable:?}");
    let bad_cert = problems(&toml_with(&garbage, &files.key_file, "https://app.example"));
    assert_eq!(bad_cert[0].0, "server.tls_cert_file", "{bad_cert:?}");

    let http = problems(&toml_with(&files.cert_file, &files.key_file, "http://app.example"));
    assert_eq!(http[0].0, "server.public_url", "{http:?}");

    let alone = toml_with(&files.cert_file, &files.key_file, "https://app.example").replace("tls_key_file", "#");
    assert_eq!(problems(&alone)[0].0, "server.tls_key_file");

    // Files that broke after the configuration was read: the start fails the same way.
    let mut config = Config::from_toml(&toml_with(&files.cert_file, &files.key_file, "https://app.example")).unwrap();
    config.server.tls = Some(TlsFiles { cert_file: files.cert_file.clone(), key_file: other_key });
    let store = bff::store::Store::memory(bff::store::MemoryStore::new());
    let Err(e) = bff::Application::build_with_store(config, support::listener(), store).await else {
        panic!("bff started with a key that is not its certificate's")
    };
    assert!(e.to_string().contains("server.tls_key_file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_pkcs1_and_ec_sec1_keys_are_served() {
    use rsa::pkcs1::DecodeRsaPrivateKey as _;
    use rsa::pkcs8::EncodePrivateKey as _;
    let fixture =
        |name: &str| std::fs::read_to_string(support::repository().join("tests/fixtures").join(name)).unwrap();
    let rsa_pem = fixture("client-rsa.pem");
    let rsa = rsa::RsaPrivateKey::from_pkcs1_pem(&rsa_pem).unwrap();
    let rsa_pkcs8 = rsa.to_pkcs8_der().unwrap();
    let sec1_pem = fixture("client-ec-sec1.pem");
    let ec = p256::SecretKey::from_sec1_pem(&sec1_pem).unwrap();
    let ec_pkcs8 = p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&ec).unwrap();
    for (what, pkcs8, original) in
        [("RSA PKCS#1", rsa_pkcs8.as_bytes(), rsa_pem), ("EC SEC1", ec_pkcs8.as_bytes(), sec1_pem)]
    {
        let key = KeyPair::try_from(pkcs8).unwrap();
        let mut pair = self_signed_with(what, key);
        // bff is given the key in its original form.
        pair.key_pem = original;
        let tls = spawn_tls(&pair, |_| {}).await;
        let res = client(&[&pair], false).get(format!("{}/healthz", tls.https)).send().await.unwrap();
        assert_eq!((res.status(), res.version()), (reqwest::StatusCode::OK, Version::HTTP_2), "{what}");
        assert_eq!(peer_certificate(&res), pair.der, "{what}");
    }
}

/// The DER element at the start of `der`: its whole encoding and its contents.
fn der_element(der: &[u8]) -> (&[u8], &[u8]) {
    let first = der[1];
    let (len, head) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        (der[2..2 + n].iter().fold(0usize, |len, b| (len << 8) | usize::from(*b)), 2 + n)
    };
    (&der[..head + len], &der[head..head + len])
}

/// A certificate's SubjectPublicKeyInfo: after version, serial, signature algorithm, issuer,
/// validity and subject in its `tbsCertificate`.
fn spki_of(certificate: &[u8]) -> Vec<u8> {
    let (_, body) = der_element(certificate);
    let (_, mut tbs) = der_element(body);
    if tbs[0] == 0xa0 {
        tbs = &tbs[der_element(tbs).0.len()..];
    }
    for _ in 0..5 {
        tbs = &tbs[der_element(tbs).0.len()..];
    }
    der_element(tbs).0.to_vec()
}

struct Demo {
    child: Child,
    url: String,
    spki: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_demo() -> Demo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bff"))
        .args(["demo", "--tls", "--port", "0", "--idp-port", "0", "--api-port", "0"])
        .env_remove("BFF_SESSION__REDIS_URL")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bff demo --tls");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep reading after the banner: a closed pipe would end the demo at its next line.
    std::thread::spawn(move || {
        let mut url = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("bff demo is running — open ") {
                url = Some(rest.trim_end_matches('/').to_string());
            }
            if let (Some(url), Some(spki)) = (&url, line.strip_prefix("TLS certificate SPKI sha256 (base64): ")) {
                let _ = tx.send((url.clone(), spki.to_string()));
            }
        }
    });
    let (url, spki) = rx.recv_timeout(Duration::from_secs(30)).expect("the banner names the URL and the SPKI hash");
    Demo { child, url, spki }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_over_https_signs_in() {
    // The helper reads what rcgen says a certificate's SPKI is.
    let pair = self_signed("check");
    assert_eq!(spki_of(&pair.der), pair.spki);

    let demo = start_tls_demo();
    assert!(demo.url.starts_with("https://localhost:"), "{}", demo.url);
    let port: u16 = demo.url.rsplit(':').next().unwrap().parse().unwrap();
    // As Chromium with --ignore-certificate-errors-spki-list: any certificate, then its key
    // compared with the banner's hash.
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let browser = Browser::with_client(&demo.url, http);
    let spa = browser.get("/").await;
    assert_eq!((spa.status(), spa.version()), (reqwest::StatusCode::OK, Version::HTTP_2));
    use base64::Engine;
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki_of(&peer_certificate(&spa))));
    assert_eq!(hash, demo.spki, "the banner's hash is the served certificate's key");
    assert!(!spa.headers().contains_key("strict-transport-security"), "no HSTS pinned on localhost by a demo");

    let callback = browser.login_as("alice").await;
    assert_eq!(callback.status(), 302, "the provider sent the browser back to https bff");
    assert!(browser.cookie("__Host-Http-bff").is_some(), "the session cookie of an https origin");
    let user: serde_json::Value = browser.user().await.json().await.unwrap();
    assert_eq!(user["name"], "Alice");
    let hello = browser.api(Method::GET, "/api/hello").await;
    assert_eq!((hello.status(), hello.version()), (reqwest::StatusCode::OK, Version::HTTP_2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_reload_takes_a_rotated_certificate_at_once() {
    const TOKEN: &str = "admin-token-for-the-tls-tests-0123456789";
    let first = self_signed("first");
    let port = support::dead_port();
    let tls = spawn_tls(&first, move |c| {
        c.server.admin_listen = Some(([127, 0, 0, 1], port).into());
        c.server.admin_token = Some(secrecy::SecretString::from(TOKEN.to_string()));
    })
    .await;
    let second = self_signed("second");
    write_pair(&tls.dir, &second);
    // No configuration file in a test: the configuration reload is refused, the certificate is
    // taken all the same (before the next poll, 2 s away at most; usually long before).
    let reload = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/admin/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 422, "{:?}", reload.text().await);
    let res = client(&[&second], false).get(format!("{}/healthz", tls.https)).send().await.unwrap();
    assert_eq!(peer_certificate(&res), second.der);
}
