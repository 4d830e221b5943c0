//! `api[].http2`: HTTP/2 with prior knowledge (h2c) to an `http://` upstream, HTTP/1.1 without
//! it. The upstream here takes both on one port (actix-web's `listen_auto_h2c`: HTTP/1.1, or
//! HTTP/2 when a connection opens with the HTTP/2 preface), so the version it records is the one
//! bff chose, not the only one it could get through with.
//!
//! An `https://` upstream over ALPN is not tested: bff trusts the webpki roots only, and the
//! tests have no way to make it trust a certificate of their own.

use std::sync::Mutex;

use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Notify;

use support::websocket::{Message, next_message};
use support::{AppOptions, spawn_app_with};

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    method: String,
    version: String,
    authorization: Option<String>,
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    /// `/events` sends its second event when this is notified.
    next_event: Notify,
}

const CHUNK: usize = 16 * 1024;
const CHUNKS: usize = 8;

async fn handle(req: HttpRequest, body: Bytes, state: web::Data<State>) -> HttpResponse {
    let version = format!("{:?}", req.version());
    state.seen.lock().unwrap().push(Seen {
        path: req.path().to_string(),
        method: req.method().to_string(),
        version: version.clone(),
        authorization: req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(String::from),
    });
    match req.path() {
        // A body of known length.
        "/len" => HttpResponse::Ok().json(json!({"version": version, "received": body.len()})),
        // A body of unknown length, in pieces.
        "/chunks" => HttpResponse::Ok().content_type("application/octet-stream").streaming(
            futures_util::stream::iter(0..CHUNKS)
                .map(|i| Ok::<_, actix_web::Error>(Bytes::from(vec![b'a' + i as u8; CHUNK]))),
        ),
        // An event stream whose second event waits for the test: the first must reach the
        // browser on its own.
        "/events" => {
            let stream = futures_util::stream::unfold(0, move |step| {
                let state = state.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, actix_web::Error>(Bytes::from_static(b"data: one\n\n")), 1)),
                        1 => {
                            state.next_event.notified().await;
                            Some((Ok(Bytes::from_static(b"data: two\n\n")), 2))
                        }
                        _ => None,
                    }
                }
            });
            HttpResponse::Ok().content_type("text/event-stream").streaming(stream)
        }
        _ => HttpResponse::NotFound().finish(),
    }
}

struct H2Upstream {
    url: String,
    state: web::Data<State>,
}

impl H2Upstream {
    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn spawn_upstream() -> H2Upstream {
    let listener = support::listener();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = web::Data::new(State::default());
    let shared = state.clone();
    let server = HttpServer::new(move || App::new().app_data(shared.clone()).default_service(web::to(handle)))
        .workers(1)
        .disable_signals()
        .listen_auto_h2c(listener)
        .unwrap()
        .run();
    tokio::spawn(server);
    H2Upstream { url, state }
}

fn routes(upstream: &H2Upstream) -> String {
    format!(
        "[[api]]\nprefix = \"/h2\"\nupstream = \"{url}\"\nhttp2 = true\n\n\
         [[api]]\nprefix = \"/h1\"\nupstream = \"{url}\"\nhttp2 = false\n",
        url = upstream.url
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_routes_reach_the_upstream_over_h2c_with_the_users_token() {
    let upstream = spawn_upstream().await;
    let app = spawn_app_with(AppOptions { extra_toml: routes(&upstream), ..AppOptions::default() }).await;
    let browser = app.browser();
    browser.login_as("alice").await;

    let res = browser.api(Method::GET, "/h2/len").await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer, json!({"version": "HTTP/2.0", "received": 0}));

    // Connection-specific headers from the browser would make hyper's h2 client refuse the
    // request: they stay behind, as on every route.
    let res = browser
        .send(
            browser
                .request(Method::GET, "/h2/len")
                .header("x-csrf", "1")
                .header("connection", "keep-alive, x-hop")
                .header("keep-alive", "timeout=5")
                .header("x-hop", "1")
                .header("te", "gzip"),
        )
        .await;
    assert_eq!(res.status(), 200);

    let payload = vec![b'x'; 100_000];
    let res = browser.send(browser.request(Method::POST, "/h2/len").header("x-csrf", "1").body(payload.clone())).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer, json!({"version": "HTTP/2.0", "received": payload.len()}));

    let seen = upstream.seen();
    let calls: Vec<_> = seen.iter().map(|s| (s.method.as_str(), s.path.as_str(), s.version.as_str())).collect();
    assert_eq!(calls, [("GET", "/len", "HTTP/2.0"), ("GET", "/len", "HTTP/2.0"), ("POST", "/len", "HTTP/2.0")]);
    for call in &seen {
        let bearer = call.authorization.as_deref().and_then(|v| v.strip_prefix("Bearer ")).expect("a bearer token");
        assert!(app.idp.provider.active_access_token(bearer).is_some(), "alice's access token: {call:?}");
    }

    // A body of unknown length comes back whole.
    let res = browser.api(Method::GET, "/h2/chunks").await;
    assert_eq!(res.status(), 200);
    let body = res.bytes().await.unwrap();
    assert_eq!(body.len(), CHUNK * CHUNKS);
    assert!(body.chunks(CHUNK).enumerate().all(|(i, c)| c.iter().all(|&b| b == b'a' + i as u8)));

    // An event stream is passed on event by event: the first arrives while the upstream holds
    // the second back.
    let res = browser.api(Method::GET, "/h2/events").await;
    assert_eq!(res.status(), 200);
    let mut events = res.bytes_stream();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
        .await
        .expect("the first event arrives on its own")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: one\n\n");
    upstream.state.next_event.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
        .await
        .expect("the rest of the stream arrives")
    {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"data: two\n\n");
    assert!(upstream.seen().iter().all(|s| s.version == "HTTP/2.0"), "{:?}", upstream.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_http2_a_route_speaks_http1_even_to_an_upstream_that_takes_h2c() {
    let upstream = spawn_upstream().await;
    let app = spawn_app_with(AppOptions { extra_toml: routes(&upstream), ..AppOptions::default() }).await;
    let browser = app.browser();
    browser.login_as("alice").await;

    let res = browser.api(Method::GET, "/h1/len").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["version"], "HTTP/1.1");
    let res = browser.api(Method::GET, "/h1/events").await;
    upstream.state.next_event.notify_one();
    assert_eq!(&res.bytes().await.unwrap()[..], b"data: one\n\ndata: two\n\n");
    assert!(upstream.seen().iter().all(|s| s.version == "HTTP/1.1"), "{:?}", upstream.seen());

    // The default route (no `http2`) to the suite's HTTP/1.1-only upstream works as before.
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
    // And both kinds of route keep working side by side on one worker's clients.
    let answer: Value = browser.api(Method::GET, "/h2/len").await.json().await.unwrap();
    assert_eq!(answer["version"], "HTTP/2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_on_an_http2_route_still_opens_over_http1() {
    // The suite's upstream speaks HTTP/1.1 only: an h2c handshake to it would fail.
    let tweak = std::sync::Arc::new(|c: &mut bff::config::Config| {
        c.api[0].http2 = true;
        c.api[0].timeout = std::time::Duration::from_secs(30);
    });
    let app = spawn_app_with(AppOptions { tweak, ..AppOptions::default() }).await;
    let browser = app.browser();
    browser.login_as("alice").await;
    let mut socket = browser.websocket("/api/ws", Some(&app.address)).await.expect("the socket opens");
    futures_util::SinkExt::send(&mut socket, Message::text("over http/1.1")).await.unwrap();
    assert_eq!(next_message(&mut socket).await, Message::text("over http/1.1"));
}

#[test]
fn http2_must_be_a_boolean_and_the_error_names_the_key() {
    let routes = "[[api]]\nprefix = \"/h2\"\nupstream = \"http://127.0.0.1:1\"\nhttp2 = \"yes\"\n";
    let text = format!(
        "[oidc]\nissuer = \"https://idp.example\"\nclient_id = \"bff\"\nclient_secret = \"s\"\n\
         [session]\nsecret = \"{}\"\n{routes}",
        "0123456789abcdef".repeat(4)
    );
    let Err(err) = bff::config::Config::from_toml(&text) else { panic!("http2 = \"yes\" is refused") };
    let err = err.to_string();
    assert!(err.contains("api[0].http2: expected true or false"), "{err}");
}
