//! HTTP/1.1 connections to the upstreams of one actix worker, driven by the call that uses them.
//!
//! hyper-util's pooled client gives each connection a task of its own: a call hands its request
//! to that task and is woken with the answer's head, every chunk of the body crosses over the
//! same way, and a second task per call waits for the connection to be free again before it
//! goes back to a pool keyed by a SipHash of scheme and authority (three hashes, a lock). Here
//! the call polls the connection itself: while it waits for the head, and then as the body is
//! read (the body below drives it), so the bytes the upstream sends are read by the task that
//! wants them. When the body ends the connection goes back to its route's idle list, found by
//! the route's address, not a hash. An idle connection has no task: the next call that takes it
//! polls it once first, which reads the close of a connection the upstream ended while it sat
//! idle, and a sweep per worker does the same twice per keep-alive (`api[].keep_alive_secs`),
//! closing those past it and those the upstream closed.
//!
//! Only HTTP/1.1: an HTTP/2 connection carries many calls at once and needs a task that serves
//! them all (`api[].http2` routes keep hyper-util's client).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::header::{HOST, HeaderValue};

use super::body::UpstreamBody;
use super::{Connector, Route};

type Io = hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>;
/// Boxed: 1.7 KB that would otherwise be copied each time a call, its answer or the idle list
/// moves it (allocated once per connection, not per call).
type Connection = Box<http1::Connection<Io, UpstreamBody>>;
type Sender = http1::SendRequest<UpstreamBody>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections kept per route and worker: a burst's connections beyond it are closed when
/// they come back, so a burst cannot leave thousands of sockets open.
const MAX_IDLE: usize = 128;
/// The sweep of idle connections runs at most this often, and at least twice per keep-alive.
const MIN_SWEEP: Duration = Duration::from_millis(250);

/// One worker's HTTP/1.1 connections, one idle list per route.
pub struct Http1Pool {
    connector: Connector,
    slots: Vec<Rc<Slot>>,
}

struct Slot {
    /// Its `keep_alive` (`api[].keep_alive_secs`): an idle connection older is closed, not used.
    route: Arc<Route>,
    /// `Host` for this upstream, as hyper-util wrote it: the authority without a default port.
    host: Option<HeaderValue>,
    idle: RefCell<Vec<Idle>>,
}

struct Idle {
    sender: Sender,
    connection: Connection,
    since: Instant,
}

impl Http1Pool {
    /// Made on the worker's own thread: it starts the worker's sweep of idle connections, which
    /// ends with the pool.
    pub fn new(connector: Connector, routes: &[Arc<Route>]) -> Http1Pool {
        let slots: Vec<Rc<Slot>> = routes
            .iter()
            .map(|route| {
                let host = route.base.origin_uri().as_ref().and_then(host_header);
                Rc::new(Slot { host, route: Arc::clone(route), idle: RefCell::default() })
            })
            .collect();
        if let Some(shortest) = slots.iter().map(|s| s.route.keep_alive).min() {
            let every = (shortest / 2).max(MIN_SWEEP);
            let slots = slots.iter().map(Rc::downgrade).collect();
            actix_web::rt::spawn(sweep(slots, every));
        }
        Http1Pool { connector, slots }
    }

    /// Sends `request` (its URI absolute) on an idle connection of the route's, or a new one,
    /// and drives the connection until the answer's head is in; the answer's body drives it from
    /// then on and gives it back when it ends.
    pub async fn send(
        &self,
        route: &Route,
        mut request: hyper::Request<UpstreamBody>,
    ) -> Result<hyper::Response<UpstreamIncoming>, BoxError> {
        let slot = self.slots.iter().find(|s| std::ptr::eq(Arc::as_ptr(&s.route), route));
        let host = match slot {
            Some(slot) => slot.host.clone(),
            None => host_header(request.uri()),
        };
        if let Some(host) = host {
            request.headers_mut().entry(HOST).or_insert(host);
        }
        let uri = request.uri().clone();
        *request.uri_mut() = origin_form(&uri);
        loop {
            let (reused, mut sender, connection) = match slot.and_then(|s| s.take_ready()) {
                Some((sender, connection)) => (true, sender, connection),
                None => {
                    let (sender, connection) = self.connect(&uri).await?;
                    (false, sender, connection)
                }
            };
            let mut connection = Some(connection);
            let answer = drive_until(sender.try_send_request(request), &mut connection).await;
            match answer {
                Ok(response) => {
                    let lease = connection.map(|connection| Lease { slot: slot.cloned(), sender, connection });
                    return Ok(response.map(|body| UpstreamIncoming { body, lease }));
                }
                // A kept connection that turned out closed before the request went out: the
                // request was not sent, so it goes on a new connection whatever its method.
                Err(mut e) if reused && e.message().is_some() => {
                    let Some(unsent) = e.take_message() else { return Err(e.into_error().into()) };
                    request = unsent;
                }
                Err(e) => return Err(e.into_error().into()),
            }
        }
    }

    async fn connect(&self, uri: &hyper::Uri) -> Result<(Sender, Connection), BoxError> {
        let mut connector = self.connector.clone();
        let io = tower_service::Service::call(&mut connector, uri.clone()).await?;
        let (sender, connection) = http1::Builder::new().handshake(io).await?;
        Ok((sender, Box::new(connection)))
    }
}

/// Closes, every `every`, the idle connections past their keep-alive and those the upstream
/// closed meanwhile (else their sockets would wait for the next call of the route). Ends when
/// the pool is dropped (a reload's new workers have pools of their own).
async fn sweep(slots: Vec<std::rc::Weak<Slot>>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut any = false;
        for slot in slots.iter().filter_map(std::rc::Weak::upgrade) {
            any = true;
            let now = Instant::now();
            let waker = std::task::Waker::noop();
            let cx = &mut Context::from_waker(waker);
            slot.idle.borrow_mut().retain_mut(|idle| {
                now.duration_since(idle.since) <= slot.route.keep_alive
                    && usable(&idle.sender, &mut idle.connection, cx)
            });
        }
        if !any {
            return;
        }
    }
}

/// Whether a connection can take the next request: one poll reads a close (or anything else)
/// the upstream sent since it was last polled, and lets a connection whose answer just ended
/// ask for the next request.
fn usable(sender: &Sender, connection: &mut Connection, cx: &mut Context<'_>) -> bool {
    Pin::new(connection).poll(cx).is_pending() && sender.is_ready()
}

impl Slot {
    /// The most recently used idle connection that is still open and free.
    fn take_ready(&self) -> Option<(Sender, Connection)> {
        let mut idle = self.idle.borrow_mut();
        let now = Instant::now();
        while let Some(mut candidate) = idle.pop() {
            if now.duration_since(candidate.since) > self.route.keep_alive {
                // The older ones below it are older still.
                idle.clear();
                return None;
            }
            if usable(&candidate.sender, &mut candidate.connection, &mut Context::from_waker(std::task::Waker::noop()))
            {
                return Some((candidate.sender, candidate.connection));
            }
        }
        None
    }

    fn put_back(&self, sender: Sender, connection: Connection) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, connection, since: Instant::now() });
        }
    }
}

/// Polls `connection` along with `call` until the call is answered; a connection that ends
/// first is dropped (the call then ends with its error).
async fn drive_until<F: Future>(call: F, connection: &mut Option<Connection>) -> F::Output {
    let mut call = std::pin::pin!(call);
    std::future::poll_fn(|cx| {
        if let Some(c) = connection
            && Pin::new(c).poll(cx).is_ready()
        {
            *connection = None;
        }
        call.as_mut().poll(cx)
    })
    .await
}

/// The connection an answer came on, until its body ends.
struct Lease {
    /// `None` for a route this pool was not made with (it closes when done).
    slot: Option<Rc<Slot>>,
    sender: Sender,
    connection: Connection,
}

/// An upstream answer's body. On a pooled HTTP/1.1 connection, reading it drives the
/// connection, which goes back to its route's idle list once the body has ended (and closes if
/// the body is dropped before: HTTP/1.1 cannot skip the rest of an answer).
pub struct UpstreamIncoming {
    body: Incoming,
    lease: Option<Lease>,
}

impl UpstreamIncoming {
    /// A body on a connection that has a task of its own (HTTP/2).
    pub fn detached(body: Incoming) -> UpstreamIncoming {
        UpstreamIncoming { body, lease: None }
    }
}

impl Drop for UpstreamIncoming {
    /// An answer with nothing to read (`204`, `304`, a `HEAD`, an empty body) is never read to
    /// its end: its connection is free all the same.
    fn drop(&mut self) {
        if self.body.is_end_stream()
            && let Some(lease) = self.lease.take()
        {
            lease.give_back(&mut Context::from_waker(std::task::Waker::noop()));
        }
    }
}

impl Lease {
    /// Back to the idle list once the answer has ended, if the connection stays usable.
    fn give_back(mut self, cx: &mut Context<'_>) {
        if usable(&self.sender, &mut self.connection, cx)
            && let Some(slot) = self.slot
        {
            slot.put_back(self.sender, self.connection);
        }
    }
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(lease) = &mut this.lease
            && Pin::new(&mut lease.connection).poll(cx).is_ready()
        {
            // Closed or failed: what it read is in the body already; nothing to give back.
            this.lease = None;
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame
            && let Some(lease) = this.lease.take()
        {
            lease.give_back(cx);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// `Host` for `uri`'s authority, its port left out where it is the scheme's default.
fn host_header(uri: &hyper::Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let secure = uri.scheme_str() == Some("https");
    let value = match uri.port_u16() {
        Some(443) if secure => HeaderValue::from_str(host),
        Some(80) if !secure => HeaderValue::from_str(host),
        Some(port) => HeaderValue::from_str(&format!("{host}:{port}")),
        None => HeaderValue::from_str(host),
    };
    value.ok()
}

/// `/path?query` of an absolute URI: what an HTTP/1.1 request line carries to an origin server.
fn origin_form(uri: &hyper::Uri) -> hyper::Uri {
    match uri.path_and_query() {
        Some(path) if path.as_str() != "/" => hyper::Uri::from(path.clone()),
        _ => hyper::Uri::from_static("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_leaves_out_the_default_port_only() {
        let host = |uri: &str| host_header(&uri.parse().unwrap()).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(host("http://api.internal/x").as_deref(), Some("api.internal"));
        assert_eq!(host("http://api.internal:80/x").as_deref(), Some("api.internal"));
        assert_eq!(host("http://api.internal:443/x").as_deref(), Some("api.internal:443"));
        assert_eq!(host("https://api.internal:443/x").as_deref(), Some("api.internal"));
        assert_eq!(host("https://api.internal:8443/x").as_deref(), Some("api.internal:8443"));
        assert_eq!(host("http://[::1]:8080/x").as_deref(), Some("[::1]:8080"));
    }

    #[test]
    fn the_request_line_carries_path_and_query_only() {
        let origin = |uri: &str| origin_form(&uri.parse().unwrap()).to_string();
        assert_eq!(origin("http://api.internal:8080/v1/items?page=2"), "/v1/items?page=2");
        assert_eq!(origin("http://api.internal"), "/");
        assert_eq!(origin("http://api.internal/"), "/");
        assert_eq!(origin("http://api.internal/?q"), "/?q");
    }
}
