//! The request body on its way upstream: small bodies are buffered so a 401 can be retried,
//! larger ones stream through with backpressure and a size cap, never held whole in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

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

/// Why a streamed request body stopped before its end.
#[derive(Default)]
pub struct BodyFault(AtomicU8);

const TOO_LARGE: u8 = 1;
const STALLED: u8 = 2;

impl BodyFault {
    fn set(&self, fault: u8) {
        self.0.store(fault, Ordering::SeqCst);
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

/// Reads enough of the body to decide: all of it if it fits `max_retry`, else the start of it,
/// and the rest is streamed by a local task (the payload is not `Send`). A body that sends
/// nothing for `stall` is given up on (408), so it does not hold its permit for ever.
pub async fn read(
    mut payload: web::Payload,
    content_length: Option<u64>,
    limits: BodyLimits,
) -> Result<RequestBody, AppError> {
    let BodyLimits { max_retry, max_body, stall } = limits;
    let buffer_all = content_length.is_some_and(|len| len <= max_retry);
    let mut buffered = BytesMut::new();
    // Without a length, read up to the retry limit before choosing.
    if content_length.is_none() || buffer_all {
        while let Some(chunk) =
            tokio::time::timeout(stall, payload.next()).await.map_err(|_| AppError::RequestTimeout)?
        {
            let chunk = chunk.map_err(|_| AppError::BadRequest(BadRequest::BadRequestBody))?;
            buffered.extend_from_slice(&chunk);
            if buffered.len() as u64 > max_body {
                return Err(AppError::Limited(Limit::BodySize));
            }
            if !buffer_all && buffered.len() as u64 > max_retry {
                return Ok(RequestBody::Streaming(stream_rest(buffered.freeze(), payload, limits)));
            }
        }
        return Ok(RequestBody::Buffered(buffered.freeze()));
    }
    Ok(RequestBody::Streaming(stream_rest(Bytes::new(), payload, limits)))
}

/// A route's limits on request bodies.
#[derive(Clone, Copy)]
pub struct BodyLimits {
    pub max_retry: u64,
    pub max_body: u64,
    /// The longest a body may send nothing (`body_timeout_secs`).
    pub stall: Duration,
}

fn stream_rest(head: Bytes, mut payload: web::Payload, limits: BodyLimits) -> StreamedBody {
    let (tx, receiver) = mpsc::channel(STREAM_BUFFER_CHUNKS);
    let fault = Arc::new(BodyFault::default());
    let flag = Arc::clone(&fault);
    actix_web::rt::spawn(async move {
        let mut sent = head.len() as u64;
        if !head.is_empty() && tx.send(Ok(head)).await.is_err() {
            return;
        }
        loop {
            let Ok(next) = tokio::time::timeout(limits.stall, payload.next()).await else {
                flag.set(STALLED);
                let _ = tx.send(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "request body stalled"))).await;
                return;
            };
            let Some(chunk) = next else { return };
            let item = match chunk {
                Ok(bytes) => {
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
