//! WebSocket pass-through on `[[api]]` routes: the handshake goes upstream like a proxied GET
//! (same path, token and header rules, the upstream's non-101 answer going back as it is), then
//! the two connections are joined by a byte tunnel, as oauth2-proxy and YARP do: bytes are
//! copied each way, read from one side only as fast as the other takes them (backpressure), so
//! pings, pongs, fragments and extensions pass untouched. Each direction's frame boundaries are
//! tracked (`frames`), so that bff can close the socket itself, cleanly, when the session ends
//! or nothing has moved for the route's `timeout_secs`:
//!
//! - to the browser an unmasked Close with **4401** (`session ended`: sign in again) or
//!   **4408** (`idle timeout`: reconnect when needed), the 4xxx codes RFC 6455 leaves to
//!   applications, chosen after the HTTP statuses they stand for;
//! - to the upstream a masked Close with 1001 (going away) and the same reason;
//!
//! each put between two frames of its direction (after the frame under way, if any), then each
//! side's answering Close is awaited for at most `CLOSE_GRACE` and both connections dropped.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HOST, HeaderValue, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tower_service::Service;
use tracing::Instrument;

use super::admission::Permit;
use super::frames::{FrameTracker, close_frame};
use super::respond::{copy_response_headers, respond};
use super::{Caller, Destination, Proxy};
use crate::error::AppError;
use crate::metrics::{Metrics, OpenSocket, SocketEnd};
use crate::session::SessionHandle;
use crate::telemetry;
use crate::tokens::{TokenError, TokenManager, UsableToken};

/// How often an open socket looks at its session and its idleness. With the coherent local
/// cache a look is a memory read (Redis pushes every change of the token set, from any
/// instance, as an invalidation), so polling costs nothing in steady state; without it, one
/// Redis read per socket per interval. A per-socket poll keeps this independent of how the
/// session ended (logout, back-channel logout, expiry, on any instance).
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// From bff's own Close to dropping both connections, whether or not they answered.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Chunks on their way to the browser: with actix's write buffer, what backpressure allows.
const TO_BROWSER_CHUNKS: usize = 4;
const READ_CHUNK: usize = 16 * 1024;

/// A WebSocket handshake: `GET` with `Upgrade: websocket` and `Connection: upgrade`.
pub fn is_upgrade(req: &HttpRequest) -> bool {
    let has = |name: actix_web::http::header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    req.method() == actix_web::http::Method::GET
        && has(actix_web::http::header::UPGRADE, "websocket")
        && has(actix_web::http::header::CONNECTION, "upgrade")
}

#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("connecting")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the handshake failed")]
    Http(#[from] hyper::Error),
}

impl Proxy {
    /// The handshake upstream, then the tunnel. The socket holds a concurrency permit as long
    /// as it is open.
    pub(super) async fn websocket(
        &self,
        req: &HttpRequest,
        destination: Destination<'_>,
        tokens: &Arc<TokenManager>,
        caller: &Caller<'_>,
        (payload, permit): (web::Payload, Permit),
    ) -> Result<HttpResponse, AppError> {
        let route = destination.route;
        let handle = caller.session();
        let target = &route.target;
        // A handshake has no body: the view read when the caller was identified is current.
        let mut token = caller.token(tokens, target, true).await?;
        let mut answer = self.handshake(req, &destination, token.as_ref()).await?;
        // As for HTTP, a step-up goes back to the SPA unrenewed.
        if let Some(step_up) = self.upstream_step_up(caller, route, &answer) {
            return Err(step_up);
        }
        // As for HTTP, under the same policy: only a call that carried a token is retried
        // after a 401 (a handshake has no body, so it always can be).
        if answer.status() == hyper::StatusCode::UNAUTHORIZED
            && let Some(used) = &token
            && let Some(fresh) = caller.after_401(tokens, target, used).await?
        {
            drop(answer);
            answer = self.handshake(req, &destination, Some(&fresh)).await?;
            token = Some(fresh);
        }
        if answer.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            let answer = answer.map(super::pool::UpstreamIncoming::detached);
            return Ok(respond(answer, route, false, token.as_ref(), permit).await);
        }
        let mut res = HttpResponse::build(StatusCode::SWITCHING_PROTOCOLS);
        copy_response_headers(&mut res, answer.headers(), &route.response_headers_drop);
        res.upgrade("websocket");
        // Handed over as soon as the 101 is read; bounded all the same.
        let upgraded = match tokio::time::timeout(route.timeout, hyper::upgrade::on(&mut answer)).await {
            Ok(Ok(upgraded)) => upgraded,
            _ => {
                tracing::warn!(api = route.prefix, "the upstream's WebSocket connection was not handed over");
                return Err(AppError::UpstreamUnavailable);
            }
        };

        let (to_browser, from_tunnel) = mpsc::channel::<Bytes>(TO_BROWSER_CHUNKS);
        let tunnel = Tunnel {
            // The session is watched when its user's token went upstream.
            session: token.and(handle.cloned()).map(|h| (Arc::clone(tokens), h)),
            idle: route.timeout,
            metrics: Arc::clone(&self.metrics),
            _open: self.metrics.websocket_opened(),
            _permit: permit,
        };
        tracing::debug!(api = route.prefix, "WebSocket open");
        // From the 101 to the close: outlives the request's span, its parent.
        let lifetime = tracing::debug_span!(
            "websocket",
            otel.name = "websocket",
            "bff.route" = route.prefix.as_str(),
            "bff.websocket.end" = tracing::field::Empty,
        );
        // The browser's bytes come through `web::Payload`, which is !Send: the tunnel runs on
        // this worker's thread.
        actix_web::rt::spawn(tunnel.run(payload, TokioIo::new(upgraded), to_browser).instrument(lifetime));
        let body = futures_util::stream::unfold(from_tunnel, |mut rx| async move {
            rx.recv().await.map(|bytes| (Ok::<_, std::io::Error>(bytes), rx))
        });
        Ok(res.streaming(body))
    }

    /// One handshake on a connection of its own (an upgraded connection never goes back to a
    /// pool), bounded by the route's timeout.
    async fn handshake(
        &self,
        req: &HttpRequest,
        destination: &Destination<'_>,
        token: Option<&UsableToken>,
    ) -> Result<hyper::Response<Incoming>, AppError> {
        let uri = destination.uri.clone();
        let mut request = hyper::Request::new(Empty::<Bytes>::new());
        // A connection of our own speaks to the origin: the request line has the path only.
        if let Some(target) = uri.path_and_query()
            && let Ok(target) = hyper::Uri::builder().path_and_query(target.clone()).build()
        {
            *request.uri_mut() = target;
        }
        let headers = request.headers_mut();
        // Sec-WebSocket-Key, -Version, -Protocol and -Extensions pass as any other header;
        // Upgrade and Connection are hop-by-hop, so they are set again.
        *headers = self.request_headers(req, destination.route);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        if let Some(host) = uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            headers.insert(HOST, host);
        }
        if let Some(token) = token {
            destination.route.authorize(headers, &hyper::Method::GET, &uri, token);
        }
        let span = destination.route.client_span(&hyper::Method::GET, &uri);
        telemetry::context::inject(&span, headers);
        let mut connector = self.connector.clone();
        let exchange = async move {
            std::future::poll_fn(|cx| connector.poll_ready(cx)).await.map_err(HandshakeError::Connect)?;
            let io = connector.call(uri).await.map_err(HandshakeError::Connect)?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!("upstream WebSocket connection: {e}");
                }
            });
            Ok::<_, HandshakeError>(sender.send_request(request).await?)
        };
        let answer = self.timed(destination.route, exchange).instrument(span.clone()).await;
        telemetry::record_outcome(&span, &answer, |r| r.status().as_u16());
        Ok(answer?)
    }
}

/// One open socket: what it watches, and what it holds until it closes.
struct Tunnel {
    session: Option<(Arc<TokenManager>, SessionHandle)>,
    idle: Duration,
    metrics: Arc<Metrics>,
    _open: OpenSocket,
    _permit: Permit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// bff closes it (the cause is in `Control::cause`).
    Closing,
    /// A side went away: nothing more can be passed.
    Ended,
}

/// What the two directions and the watcher of one socket share (all on one task).
struct Control {
    phase: watch::Sender<Phase>,
    cause: Cell<Option<SocketEnd>>,
    active: Cell<Instant>,
}

impl Control {
    fn touch(&self) {
        self.active.set(Instant::now());
    }

    fn end(&self) {
        self.phase.send_replace(Phase::Ended);
    }

    fn close(&self, cause: SocketEnd) {
        if *self.phase.borrow() == Phase::Open {
            self.cause.set(Some(cause));
            self.phase.send_replace(Phase::Closing);
        }
    }
}

/// Which way a direction goes, for the Close bff puts in it.
#[derive(Clone, Copy)]
enum Towards {
    Browser,
    Upstream,
}

impl Towards {
    fn close(self, cause: SocketEnd) -> Bytes {
        let (code, reason) = match cause {
            SocketEnd::SessionEnded => (4401, "session ended"),
            // (bff never closes a socket for `Peer`.)
            SocketEnd::Idle | SocketEnd::Peer => (4408, "idle timeout"),
        };
        Bytes::from(match self {
            Towards::Browser => close_frame(code, reason, None),
            // What a client sends: masked, with a standard code (the 4xxx ones are the SPA's).
            Towards::Upstream => close_frame(1001, reason, Some(rand::random())),
        })
    }
}

impl Tunnel {
    async fn run(self, from_browser: web::Payload, upstream: TokioIo<Upgraded>, to_browser: mpsc::Sender<Bytes>) {
        let (phase, _) = watch::channel(Phase::Open);
        let control = Control { phase, cause: Cell::new(None), active: Cell::new(Instant::now()) };
        let (from_upstream, to_upstream) = tokio::io::split(upstream);
        let downstream = pump(from_upstream, to_browser, Towards::Browser, &control);
        let upstream = pump(from_browser, to_upstream, Towards::Upstream, &control);
        let mut ended = control.phase.subscribe();
        tokio::select! {
            _ = futures_util::future::join(downstream, upstream) => {}
            _ = ended.wait_for(|p| *p == Phase::Ended) => {}
            () = self.watch(&control) => {}
        }
        let end = control.cause.get().unwrap_or(SocketEnd::Peer);
        self.metrics.websocket_closed(end);
        tracing::Span::current().record("bff.websocket.end", end.label());
        tracing::debug!(?end, "WebSocket closed");
    }

    /// Asks for the close when the session is over or the socket idle, then gives the close
    /// `CLOSE_GRACE` before the tunnel is dropped.
    async fn watch(&self, control: &Control) {
        let mut ticks = tokio::time::interval(WATCH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cause = loop {
            ticks.tick().await;
            if control.active.get().elapsed() >= self.idle {
                break SocketEnd::Idle;
            }
            if let Some((tokens, handle)) = &self.session
                && !session_lives(tokens, handle).await
            {
                break SocketEnd::SessionEnded;
            }
        };
        control.close(cause);
        tokio::time::sleep(CLOSE_GRACE).await;
    }
}

/// A store that does not answer is no proof the session ended: the socket stays (the next
/// look may answer), as an HTTP call would be answered 503 and the session kept.
async fn session_lives(tokens: &TokenManager, handle: &SessionHandle) -> bool {
    match tokens.live_session(handle).await {
        Ok(_) => true,
        Err(TokenError::Store(e)) => {
            tracing::debug!(session = handle.short(), "WebSocket session check failed: {e}");
            true
        }
        Err(_) => false,
    }
}

/// One direction: passes bytes until a side goes away, or until bff closes the socket; then
/// finishes the frame under way, puts bff's Close, and reads (passing nothing) until this
/// side's answering Close.
async fn pump(mut source: impl Source, mut sink: impl Sink, towards: Towards, control: &Control) {
    let mut frames = FrameTracker::new();
    let mut phase = control.phase.subscribe();
    loop {
        let chunk = tokio::select! {
            biased;
            _ = phase.wait_for(|p| *p != Phase::Open) => break,
            chunk = source.next_chunk() => chunk,
        };
        let Some(chunk) = chunk else { return control.end() };
        control.touch();
        frames.feed(&chunk);
        if !sink.put(chunk).await {
            return control.end();
        }
    }
    let Some(cause) = control.cause.get() else { return };
    let Some(after) = finish_frame(&mut source, &mut sink, &mut frames).await else { return };
    if !sink.put(towards.close(cause)).await || frames.feed(&after).close {
        return;
    }
    while let Some(chunk) = source.next_chunk().await {
        if frames.feed(&chunk).close {
            return;
        }
    }
}

/// Passes the rest of the frame under way; returns what came after it (not passed), or `None`
/// when the side went away or its framing is unknown.
async fn finish_frame(source: &mut impl Source, sink: &mut impl Sink, frames: &mut FrameTracker) -> Option<Bytes> {
    while !frames.at_boundary() {
        if frames.is_lost() {
            return None;
        }
        let chunk = source.next_chunk().await?;
        let end = frames.boundary_within(&chunk).unwrap_or(chunk.len());
        frames.feed(&chunk[..end]);
        if !sink.put(chunk.slice(..end)).await {
            return None;
        }
        if end < chunk.len() {
            return Some(chunk.slice(end..));
        }
    }
    Some(Bytes::new())
}

/// Where a direction's bytes come from; `None`: that side is gone.
trait Source {
    async fn next_chunk(&mut self) -> Option<Bytes>;
}

impl Source for web::Payload {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        self.next().await?.ok()
    }
}

impl Source for ReadHalf<TokioIo<Upgraded>> {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        match self.read_buf(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(buf.freeze()),
        }
    }
}

/// Where a direction's bytes go; `false`: that side is gone. Returns once they are taken.
trait Sink {
    async fn put(&mut self, bytes: Bytes) -> bool;
}

impl Sink for mpsc::Sender<Bytes> {
    async fn put(&mut self, bytes: Bytes) -> bool {
        self.send(bytes).await.is_ok()
    }
}

impl Sink for WriteHalf<TokioIo<Upgraded>> {
    async fn put(&mut self, bytes: Bytes) -> bool {
        self.write_all(&bytes).await.is_ok() && self.flush().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// Chunks given one by one; before the one at `close_at`, bff decides to close (as the
    /// watcher would, while the direction waits for bytes).
    struct Scripted<'c> {
        chunks: VecDeque<Vec<u8>>,
        given: usize,
        close_at: Option<(usize, SocketEnd)>,
        control: &'c Control,
    }

    impl Source for Scripted<'_> {
        async fn next_chunk(&mut self) -> Option<Bytes> {
            if let Some((at, cause)) = self.close_at
                && at == self.given
            {
                self.close_at = None;
                self.control.close(cause);
                tokio::task::yield_now().await;
            }
            self.given += 1;
            self.chunks.pop_front().map(Bytes::from)
        }
    }

    #[derive(Default)]
    struct Collected(Vec<u8>);

    impl Sink for &mut Collected {
        async fn put(&mut self, bytes: Bytes) -> bool {
            self.0.extend_from_slice(&bytes);
            true
        }
    }

    fn control() -> Control {
        Control { phase: watch::channel(Phase::Open).0, cause: Cell::new(None), active: Cell::new(Instant::now()) }
    }

    /// A server's unmasked binary frame of `len` bytes.
    fn frame(len: u8) -> Vec<u8> {
        [vec![0x82, len], vec![7; usize::from(len)]].concat()
    }

    #[tokio::test]
    async fn a_close_asked_for_mid_frame_goes_after_that_frame_and_nothing_more_passes() {
        let (first, second) = (frame(100), frame(20));
        let rest = [&first[10..], &second[..5]].concat();
        let control = control();
        let source = Scripted {
            // Half a frame, then bff closes; then the rest of it with the start of the next.
            chunks: VecDeque::from([first[..10].to_vec(), rest, second[5..].to_vec(), close_frame(1000, "", None)]),
            given: 0,
            close_at: Some((1, SocketEnd::SessionEnded)),
            control: &control,
        };
        let mut out = Collected::default();
        pump(source, &mut out, Towards::Browser, &control).await;
        assert_eq!(out.0, [first, close_frame(4401, "session ended", None)].concat());
    }

    #[tokio::test]
    async fn between_frames_the_close_goes_at_once_and_the_answer_ends_the_direction() {
        let control = control();
        let source = Scripted {
            chunks: VecDeque::from([frame(3), frame(4), close_frame(1001, "", Some([1, 2, 3, 4]))]),
            given: 0,
            close_at: Some((1, SocketEnd::Idle)),
            control: &control,
        };
        let mut out = Collected::default();
        pump(source, &mut out, Towards::Upstream, &control).await;
        // The frame that came after the decision is not passed; the upstream's Close is masked.
        let mut frames = FrameTracker::new();
        assert_eq!(out.0[..5], frame(3)[..]);
        let close = &out.0[5..];
        assert_eq!(frames.feed(close), crate::proxy::frames::Fed { frames: 1, close: true });
        assert_eq!(close[1] & 0x80, 0x80, "masked");
        assert_eq!(control.cause.get(), Some(SocketEnd::Idle));
    }

    #[tokio::test]
    async fn a_side_that_goes_away_ends_the_tunnel() {
        let control = control();
        let source = Scripted { chunks: VecDeque::from([frame(2)]), given: 0, close_at: None, control: &control };
        let mut out = Collected::default();
        pump(source, &mut out, Towards::Browser, &control).await;
        assert_eq!(out.0, frame(2));
        assert_eq!(*control.phase.borrow(), Phase::Ended);
        assert_eq!(control.cause.get(), None);
    }
}
