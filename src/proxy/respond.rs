//! The upstream's answer on its way back to the browser: status, the headers that may go back,
//! and the body streamed with the exchange's permit (a small chunked body that arrived whole is
//! answered whole).

use actix_web::HttpResponse;
use actix_web::body::SizedStream;
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use futures_util::TryStreamExt;
use http_body_util::BodyExt;
use hyper::body::Body as _;

use super::admission::Permit;
use super::pool::UpstreamIncoming;
use super::{Route, headers};
use crate::tokens::UsableToken;

/// Tells the SPA when the access token used expires (never the token), so it can show refreshes.
pub const TOKEN_EXPIRY_HEADER: &str = "x-bff-access-token-expires-at";

/// Streams the upstream's answer back; the concurrency permit lives as long as the body does.
pub(super) async fn respond(
    upstream: hyper::Response<UpstreamIncoming>,
    route: &Route,
    head_request: bool,
    token: Option<&UsableToken>,
    permit: Permit,
) -> HttpResponse {
    let status = StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut res = HttpResponse::build(status);
    copy_response_headers(&mut res, upstream.headers(), &route.response_headers_drop);
    if let Some(token) = token {
        res.insert_header((
            actix_web::http::header::HeaderName::from_static(TOKEN_EXPIRY_HEADER),
            actix_web::http::header::HeaderValue::from(token.expires_at),
        ));
    }
    let no_body = head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    if no_body {
        return res.finish();
    }
    let length = upstream.body().size_hint().exact();
    let mut stream = upstream.into_body().into_data_stream().map_err(|e| {
        tracing::warn!("upstream body interrupted: {e}");
        std::io::Error::other("upstream body interrupted")
    });
    let mut arrived = Vec::new();
    if length.is_none() {
        match take_arrived(&mut stream).await {
            // Whole already: one write with a length instead of chunks and a last chunk.
            Arrived::Whole(body) => return res.body(body),
            Arrived::Start(start) => arrived = start,
        }
    }
    let stream = futures_util::StreamExt::chain(futures_util::stream::iter(arrived), stream);
    // The permit travels with the body and is dropped when it ends.
    let stream = futures_util::stream::unfold((stream, permit), |(mut stream, permit)| async move {
        futures_util::StreamExt::next(&mut stream).await.map(|item| (item, (stream, permit)))
    });
    match length {
        Some(len) => res.body(SizedStream::new(len, stream)),
        None => res.streaming::<_, std::io::Error>(stream.map_ok(Bytes::from)),
    }
}

/// The upstream's response headers that go back (see `headers`).
pub(super) fn copy_response_headers(
    res: &mut actix_web::HttpResponseBuilder,
    upstream: &hyper::HeaderMap,
    drop: &[String],
) {
    // http 1 (hyper) to http 0.2 (actix): a standard name maps to its constant, a value is one copy.
    for (name, value) in headers::downstream_response_headers(upstream, drop) {
        if let (Ok(name), Ok(value)) = (
            actix_web::http::header::HeaderName::from_bytes(name.as_str().as_bytes()),
            actix_web::http::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            res.append_header((name, value));
        }
    }
}

/// A body without a length that was read whole already is answered whole up to this size.
const WHOLE_BODY_LIMIT: usize = 64 * 1024;

enum Arrived {
    Whole(Bytes),
    /// What arrived so far; the rest follows as it comes.
    Start(Vec<Result<Bytes, std::io::Error>>),
}

/// Scheduler turns given to what is still on its way before the answer is streamed instead.
const ARRIVAL_TURNS: u32 = 3;

/// What of a chunked answer has already arrived, without waiting for any more: most APIs
/// answer small JSON bodies chunked (streaming frameworks do), all in one go. Over HTTP/2 the
/// connection's task hands the body over only once asked; over HTTP/1.1 the call reads the
/// connection itself, and a body and its last chunk may come in two writes: either way a few
/// scheduler turns (no timer, no waiting on the network) usually bring the rest. An event stream
/// or a slow download is never held back: whatever is not there by then is streamed when it
/// comes.
async fn take_arrived<S>(stream: &mut S) -> Arrived
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut size = 0;
    let mut turns = ARRIVAL_TURNS;
    let error = loop {
        if size > WHOLE_BODY_LIMIT {
            break None;
        }
        match futures_util::FutureExt::now_or_never(futures_util::StreamExt::next(stream)) {
            Some(Some(Ok(chunk))) => {
                size += chunk.len();
                chunks.push(chunk);
            }
            Some(None) => return Arrived::Whole(concat(chunks, size)),
            Some(Some(Err(e))) => break Some(e),
            None if turns > 0 => {
                turns -= 1;
                tokio::task::yield_now().await;
            }
            None => break None,
        }
    };
    Arrived::Start(chunks.into_iter().map(Ok).chain(error.map(Err)).collect())
}

fn concat(mut chunks: Vec<Bytes>, size: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut whole = bytes::BytesMut::with_capacity(size);
    for chunk in &chunks {
        whole.extend_from_slice(chunk);
    }
    whole.freeze()
}
