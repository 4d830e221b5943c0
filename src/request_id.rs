//! The request id: made or taken at the edge (`http::observe`), logged on every line of the
//! request, returned to the caller and forwarded upstream (`proxy`). Its own module so the
//! proxy and the middleware both use it without depending on each other.

use actix_web::dev::ServiceRequest;

#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The caller's `X-Request-Id` when it is well-formed (it may come from a gateway in front),
/// else a new one.
pub fn request_id(req: &ServiceRequest) -> RequestId {
    // A constant, not a `&str`: actix parses a string key on every lookup.
    const X_REQUEST_ID: actix_web::http::header::HeaderName =
        actix_web::http::header::HeaderName::from_static("x-request-id");
    let incoming = req.headers().get(X_REQUEST_ID).and_then(|v| v.to_str().ok()).filter(|v| {
        (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    });
    RequestId(incoming.map(String::from).unwrap_or_else(crate::crypto::random_id))
}
