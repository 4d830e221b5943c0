//! Which headers cross the proxy, each way.
//!
//! actix-web speaks http 0.2 and hyper http 1; headers are converted by bytes here.

use std::net::IpAddr;

use actix_web::http::header::HeaderMap as InboundHeaders;
use hyper::header::{HeaderMap as OutboundHeaders, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy `Proxy-Connection`.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request headers that never go upstream: the browser's credentials and our own anti-forgery
/// header, what the client sets for itself (`Host`, `Expect`), and forwarding headers we set.
const NOT_FORWARDED: &[&str] = &[
    "cookie",
    "authorization",
    "x-csrf",
    "host",
    "expect",
    "forwarded",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-for",
];

/// Headers the `Connection` header names are hop-by-hop too.
fn connection_named(headers: impl Iterator<Item = Vec<u8>>) -> Vec<String> {
    headers
        .filter_map(|v| String::from_utf8(v).ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .collect()
}

fn is_hop_by_hop(name: &str, named: &[String]) -> bool {
    HOP_BY_HOP.contains(&name) || name.starts_with("proxy-") || named.iter().any(|n| n == name)
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// How the original request reached us, for the `X-Forwarded-*` headers. Proto and host are
/// the public URL's, made once (a clone is a reference count).
pub struct ForwardedFor<'a> {
    pub peer: Option<IpAddr>,
    pub proto: &'a HeaderValue,
    pub host: &'a HeaderValue,
}

/// The headers to send upstream. `Content-Length` is kept (a streamed body keeps its length).
pub fn upstream_request_headers(inbound: &InboundHeaders, forwarded: &ForwardedFor<'_>) -> OutboundHeaders {
    let named = connection_named(inbound.get_all("connection").map(|v| v.as_bytes().to_vec()));
    let mut out = OutboundHeaders::with_capacity(inbound.len() + 4);
    for (name, value) in inbound {
        let lower = name.as_str();
        if is_hop_by_hop(lower, &named) || NOT_FORWARDED.contains(&lower) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(lower.as_bytes()), HeaderValue::from_bytes(value.as_bytes())) {
            out.append(n, v);
        }
    }
    // Append to an existing chain (we may sit behind a load balancer); the upstream should trust
    // only the entries its own proxies added.
    let mut chain = String::new();
    for previous in inbound.get_all("x-forwarded-for").filter_map(|v| v.to_str().ok()).map(str::trim) {
        if !previous.is_empty() {
            if !chain.is_empty() {
                chain.push_str(", ");
            }
            chain.push_str(previous);
        }
    }
    if let Some(peer) = forwarded.peer {
        use std::fmt::Write as _;
        if !chain.is_empty() {
            chain.push_str(", ");
        }
        let _ = write!(chain, "{peer}");
    }
    if !chain.is_empty()
        && let Ok(v) = HeaderValue::try_from(chain)
    {
        out.insert(X_FORWARDED_FOR, v);
    }
    out.insert(X_FORWARDED_PROTO, forwarded.proto.clone());
    out.insert(X_FORWARDED_HOST, forwarded.host.clone());
    out
}

/// The upstream's response headers that go back to the browser: no hop-by-hop headers, no
/// `Set-Cookie` (the browser's cookies belong to bff), no `Content-Length` (the body writer sets it).
pub fn downstream_response_headers(upstream: &OutboundHeaders) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    let named = connection_named(upstream.get_all("connection").iter().map(|v| v.as_bytes().to_vec()));
    upstream.iter().filter(move |(name, _)| {
        let n = name.as_str();
        !is_hop_by_hop(n, &named) && n != "set-cookie" && n != "content-length"
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName as AName, HeaderValue as AValue};

    fn inbound(pairs: &[(&str, &str)]) -> InboundHeaders {
        let mut h = InboundHeaders::new();
        for (n, v) in pairs {
            h.append(AName::from_bytes(n.as_bytes()).unwrap(), AValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn credentials_hop_by_hop_and_connection_named_headers_are_dropped() {
        let h = inbound(&[
            ("cookie", "bff=secret"),
            ("authorization", "Basic x"),
            ("x-csrf", "1"),
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic y"),
            ("proxy-foo", "1"),
            ("host", "evil"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-host", "evil"),
            ("accept", "application/json"),
            ("content-type", "text/plain"),
            ("content-length", "5"),
            ("x-custom", "kept"),
        ]);
        let (proto, host) = (HeaderValue::from_static("https"), HeaderValue::from_static("app.example.com"));
        let fwd = ForwardedFor { peer: Some("10.0.0.9".parse().unwrap()), proto: &proto, host: &host };
        let out = upstream_request_headers(&h, &fwd);
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "accept",
                "content-length",
                "content-type",
                "x-custom",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(out["x-forwarded-for"], "10.0.0.9");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-host"], "app.example.com");
    }

    #[test]
    fn forwarded_for_chains_are_appended_to() {
        let h = inbound(&[("x-forwarded-for", "203.0.113.7")]);
        let (proto, host) = (HeaderValue::from_static("http"), HeaderValue::from_static("h"));
        let fwd = ForwardedFor { peer: Some("10.0.0.1".parse().unwrap()), proto: &proto, host: &host };
        assert_eq!(upstream_request_headers(&h, &fwd)["x-forwarded-for"], "203.0.113.7, 10.0.0.1");
    }

    #[test]
    fn set_cookie_and_hop_by_hop_never_come_back() {
        let mut up = OutboundHeaders::new();
        up.append("set-cookie", HeaderValue::from_static("session=upstream"));
        up.append("connection", HeaderValue::from_static("close, x-hop"));
        up.append("x-hop", HeaderValue::from_static("1"));
        up.append("transfer-encoding", HeaderValue::from_static("chunked"));
        up.append("content-length", HeaderValue::from_static("10"));
        up.append("content-type", HeaderValue::from_static("application/json"));
        up.append("cache-control", HeaderValue::from_static("max-age=5"));
        let names: Vec<&str> = downstream_response_headers(&up).map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "cache-control"]);
    }
}
