//! The HTTP client every call to the provider goes through: never follows redirects (SSRF),
//! bounded, and each call in a client span with the trace context it is sent from. oauth2's
//! calls (discovery, code exchange, refresh, client credentials) get it as their
//! `AsyncHttpClient`; bff's own (revocation, PAR, JWKS, metadata) through `send`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use openidconnect::{AsyncHttpClient, HttpClientError, HttpRequest, HttpResponse};
use tracing::Instrument;

use crate::telemetry;

#[derive(Clone, Debug)]
pub struct IdpHttp {
    client: reqwest::Client,
}

impl IdpHttp {
    pub fn new(timeout: Duration) -> Result<IdpHttp, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("bff/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(IdpHttp { client })
    }

    pub fn get(&self, url: url::Url) -> reqwest::RequestBuilder {
        self.client.get(url)
    }

    pub fn post(&self, url: url::Url) -> reqwest::RequestBuilder {
        self.client.post(url)
    }

    /// Sends a request made with `get` or `post`.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, reqwest::Error> {
        let mut request = request.build()?;
        let uri: hyper::Uri = request.url().as_str().parse().unwrap_or_default();
        let span = telemetry::client_span("idp", request.method().as_str(), uri.path(), &uri);
        telemetry::context::inject(&span, request.headers_mut());
        let result = self.client.execute(request).instrument(span.clone()).await;
        telemetry::record_outcome(&span, &result, |r| r.status().as_u16());
        result
    }
}

/// At most `limit` bytes of a response's body (what arrives of it; a body that breaks off is
/// read as far as it came).
pub async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    body
}

impl<'c> AsyncHttpClient<'c> for IdpHttp {
    type Error = HttpClientError<reqwest::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send + Sync + 'c>>;

    fn call(&'c self, mut request: HttpRequest) -> Self::Future {
        let span = telemetry::client_span("idp", request.method().as_str(), request.uri().path(), request.uri());
        telemetry::context::inject(&span, request.headers_mut());
        let sent = self.client.call(request);
        Box::pin(
            async move {
                let result = sent.await;
                telemetry::record_outcome(&tracing::Span::current(), &result, |r| r.status().as_u16());
                result
            }
            .instrument(span),
        )
    }
}
