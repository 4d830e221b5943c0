//! The request body on its way upstream: small bodies are buffered so a 401 can be retried,
//! larger ones stream through with backpressure and a size cap, never held whole in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use actix_web::web::{self, Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

use crate::error::{AppError, BadRequest};
use crate::limits::Limit;

/// Chunks in flight between the browser side and the upstream side of a streamed body.
const STREAM_BUFFER_CHUNKS: usize = 16;

pub enum RequestBody {
    /// Fits under the retry limit: can be sent twice.
    Buffered(Bytes),
    /// Too large to buffer: sent once, a 401 goes back as it is.
    Streaming(StreamedBody),
}

pub struct StreamedBody {
    pub receiver: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    /// Why the browser's body stopped early, if it did: the proxy answers that, not a 502.
    pub fault: Arc<BodyFault>,
}

/// Why a streamed request body stopped before its end, and whether it has all arrived.
#[derive(Default)]
pub struct BodyFault(AtomicU8, std::sync::atomic::AtomicBool);

const TOO_LARGE: u8 = 1;
const STALLED: u8 = 2;

impl BodyFault {
    fn set(&self, fault: u8) {
        self.0.store(fault, Ordering::SeqCst);
    }

    fn arrived(&self) {
        self.1.store(true, Ordering::SeqCst);
    }

    /// The browser's body is still on its way: an upstream that has not answered by now may
    /// well be waiting for it.
    pub fn still_arriving(&self) -> bool {
        !self.1.load(Ordering::SeqCst) && self.0.load(Ordering::SeqCst) == 0
    }

    /// The answer to give for it: 413 over the cap, 408 for a body that stopped arriving.
    pub fn error(&self) -> Option<AppError> {
        match self.0.load(Ordering::SeqCst) {
            TOO_LARGE => Some(AppError::Limited(Limit::BodySize)),
            STALLED => Some(AppError::RequestTimeout),
            _ => None,
        }
    }
}

impl RequestBody {
    pub fn retryable(&self) -> Option<Bytes> {
        match self {
            RequestBody::Buffered(bytes) => Some(bytes.clone()),
            RequestBody::Streaming(_) => None,
        }
    }
}

/// A request body as the upstream client sends it.
pub type UpstreamBody = UnsyncBoxBody<Bytes, std::io::Error>;

pub fn buffered(bytes: Bytes) -> UpstreamBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

impl StreamedBody {
    pub fn into_upstream(self) -> UpstreamBody {
        let stream =
            futures_util::stream::unfold(self.receiver, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        StreamBody::new(stream.map(|item| item.map(Frame::data))).boxed_unsync()
    }
}

fn too_large_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "request body exceeds max_body_bytes")
}

/// How long the next chunk of a body may take: a body that sends nothing for `stall` is given
/// up on, and so is one that trickles (Apache's `mod_reqtimeout` `MinRate`): after `stall`'s
/// allowance each byte buys `1 / min_rate` s more, so a body must keep that average. Either way
/// a permit is never held for ever by a client that sends a byte now and then.
struct Pace {
    started: Instant,
    stall: Duration,
    min_rate: u64,
    received: u64,
}

impl Pace {
    fn new(limits: &BodyLimits) -> Pace {
        Pace { started: Instant::now(), stall: limits.stall, min_rate: limits.min_rate, received: 0 }
    }

    /// The longest the next chunk may take from `now` (zero: too slow already).
    fn next_wait(&self, now: Instant) -> Duration {
        if self.min_rate == 0 {
            return self.stall;
        }
        let earned = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        let deadline = self.started + self.stall + earned;
        deadline.saturating_duration_since(now).min(self.stall)
    }

    fn got(&mut self, bytes: usize) {
        self.received += bytes as u64;
    }

    /// The next chunk, or `None` when the body took too long (stalled or trickling).
    async fn next(&self, payload: &mut web::Payload) -> Option<Option<Result<Bytes, actix_web::error::PayloadError>>> {
        tokio::time::timeout(self.next_wait(Instant::now()), payload.next()).await.ok()
    }
}

/// Reads enough of the body to decide: all of it if it fits `max_retry`, else the start of it,
/// and the rest is streamed by a local task (the payload is not `Send`). A body that stalls or
/// trickles (`Pace`) is given up on (408), so it does not hold its permit for ever.
pub async fn read(
    mut payload: web::Payload,
    content_length: Option<u64>,
    limits: BodyLimits,
) -> Result<RequestBody, AppError> {
    let BodyLimits { max_retry, max_body, .. } = limits;
    let buffer_all = content_length.is_some_and(|len| len <= max_retry);
    let mut buffered = BytesMut::new();
    let mut pace = Pace::new(&limits);
    // Without a length, read up to the retry limit before choosing.
    if content_length.is_none() || buffer_all {
        while let Some(chunk) = pace.next(&mut payload).await.ok_or(AppError::RequestTimeout)? {
            let chunk = chunk.map_err(|_| AppError::BadRequest(BadRequest::BadRequestBody))?;
            pace.got(chunk.len());
            buffered.extend_from_slice(&chunk);
            if buffered.len() as u64 > max_body {
                return Err(AppError::Limited(Limit::BodySize));
            }
            if !buffer_all && buffered.len() as u64 > max_retry {
                return Ok(RequestBody::Streaming(stream_rest(buffered.freeze(), payload, limits, pace)));
            }
        }
        return Ok(RequestBody::Buffered(buffered.freeze()));
    }
    Ok(RequestBody::Streaming(stream_rest(Bytes::new(), payload, limits, pace)))
}

/// A route's limits on request bodies.
#[derive(Clone, Copy)]
pub struct BodyLimits {
    pub max_retry: u64,
    pub max_body: u64,
    /// The longest a body may send nothing (`body_timeout_secs`), and the allowance before
    /// `min_rate` counts.
    pub stall: Duration,
    /// The average a body must keep past that allowance, in bytes per second (0: none).
    pub min_rate: u64,
}

fn stream_rest(head: Bytes, mut payload: web::Payload, limits: BodyLimits, mut pace: Pace) -> StreamedBody {
    let (tx, receiver) = mpsc::channel(STREAM_BUFFER_CHUNKS);
    let fault = Arc::new(BodyFault::default());
    let flag = Arc::clone(&fault);
    actix_web::rt::spawn(async move {
        let mut sent = head.len() as u64;
        if !head.is_empty() && tx.send(Ok(head)).await.is_err() {
            return;
        }
        loop {
            let Some(next) = pace.next(&mut payload).await else {
                flag.set(STALLED);
                let _ = tx.send(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "request body stalled"))).await;
                return;
            };
            let Some(chunk) = next else {
                flag.arrived();
                return;
            };
            let item = match chunk {
                Ok(bytes) => {
                    pace.got(bytes.len());
                    sent += bytes.len() as u64;
                    if sent > limits.max_body {
                        flag.set(TOO_LARGE);
                        let _ = tx.send(Err(too_large_error())).await;
                        return;
                    }
                    Ok(bytes)
                }
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            let failed = item.is_err();
            // The upstream side hung up: stop reading.
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    StreamedBody { receiver, fault }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(stall_secs: u64, min_rate: u64) -> Pace {
        Pace { started: Instant::now(), stall: Duration::from_secs(stall_secs), min_rate, received: 0 }
    }

    #[test]
    fn a_body_may_send_nothing_for_the_stall_then_must_keep_the_minimum_average() {
        let mut p = pace(30, 500);
        let start = p.started;
        assert_eq!(p.next_wait(start), Duration::from_secs(30));
        // One byte every 29 s: within the stall limit each time, far below the average.
        p.got(1);
        assert_eq!(p.next_wait(start + Duration::from_secs(29)), Duration::from_millis(1002));
        p.got(1);
        assert_eq!(p.next_wait(start + Duration::from_secs(58)), Duration::ZERO, "trickling ends");
        // A real upload keeps going: 10 KB a second earns far more than it spends.
        let mut upload = pace(30, 500);
        for second in 1..=100 {
            upload.got(10_000);
            assert_eq!(upload.next_wait(upload.started + Duration::from_secs(second)), Duration::from_secs(30));
        }
    }

    #[test]
    fn without_a_minimum_rate_only_the_stall_counts() {
        let mut p = pace(30, 0);
        p.got(1);
        assert_eq!(p.next_wait(p.started + Duration::from_secs(3600)), Duration::from_secs(30));
    }
}
