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
/// header, what the client sets for itself (`Host`, `Expect`), and the headers an upstream may
/// trust as set by infrastructure (a browser could otherwise choose its address, the URL or the
/// method the upstream acts on). Every `X-Forwarded-*` goes too (`is_not_forwarded`).
const NOT_FORWARDED: &[&str] = &[
    "cookie",
    "authorization",
    "x-csrf",
    "host",
    "expect",
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    // Identity that authenticating proxies (oauth2-proxy, Apache, IIS) hand to their upstreams.
    "remote-user",
    "x-user",
    "x-email",
    "x-preferred-username",
    // Addresses and schemes other infrastructures write.
    "x-proxyuser-ip",
    "front-end-https",
    "x-url-scheme",
    "via",
    // A DPoP proof is bff's to make, for its own token.
    "dpop",
];

/// Families of headers set by infrastructure that upstreams trust (Envoy, AWS ALB's OIDC
/// integration, Azure App Service authentication, oauth2-proxy, `X-Remote-*` conventions), and
/// every `*-client-ip` (Fastly, Akamai, cluster proxies).
const NOT_FORWARDED_PREFIXES: &[&str] =
    &["x-forwarded-", "x-envoy-", "x-amzn-oidc-", "x-ms-client-principal", "x-auth-request-", "x-remote-"];
const NOT_FORWARDED_SUFFIXES: &[&str] = &["-client-ip"];

/// W3C baggage travels with the trace context: only when that is believed.
const BAGGAGE: &str = "baggage";

/// The browser's W3C trace context: passed on only when believed and bff adds none of its own
/// (see `telemetry::context::keep_browser_context`).
const TRACE_CONTEXT: &[&str] = &[crate::telemetry::context::TRACEPARENT, crate::telemetry::context::TRACESTATE];

/// Whether a request header (lower-case) stays behind: by the fixed lists, the route's
/// `request_headers_drop`, or, when the route has a `request_headers_allow`, not being on it.
fn is_not_forwarded(name: &str, policy: &HeaderPolicy<'_>, keep_trace_context: bool) -> bool {
    NOT_FORWARDED.contains(&name)
        || NOT_FORWARDED_PREFIXES.iter().any(|p| name.starts_with(p))
        || NOT_FORWARDED_SUFFIXES.iter().any(|s| name.ends_with(s))
        || policy.drop.iter().any(|d| d == name)
        || policy.allow.is_some_and(|allow| !allow.iter().any(|a| a == name))
        || (!keep_trace_context && (TRACE_CONTEXT.contains(&name) || name == BAGGAGE))
}

/// A route's own rules for request headers, lower-case.
#[derive(Clone, Copy)]
pub struct HeaderPolicy<'a> {
    /// `request_headers_drop`.
    pub drop: &'a [String],
    /// `request_headers_allow`: when set, only these (and what bff writes itself) cross.
    pub allow: Option<&'a [String]>,
}

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
    /// `server.trusted_proxy_hops`: how many of the last `X-Forwarded-For` entries our own
    /// proxies added (the rest were written by the client and are not passed on).
    pub trusted_hops: usize,
    pub proto: &'a HeaderValue,
    pub host: &'a HeaderValue,
    /// The browser's `traceparent`/`tracestate` go on as they are.
    pub keep_trace_context: bool,
}

/// The headers to send upstream. `Content-Length` is kept (a streamed body keeps its length),
/// and so are `Content-Type` and `Content-Encoding` under an allow list (the body is unreadable
/// without them).
pub fn upstream_request_headers(
    inbound: &InboundHeaders,
    forwarded: &ForwardedFor<'_>,
    policy: &HeaderPolicy<'_>,
) -> OutboundHeaders {
    let named = connection_named(inbound.get_all(actix_web::http::header::CONNECTION).map(|v| v.as_bytes().to_vec()));
    let mut out = OutboundHeaders::with_capacity(inbound.len() + 4);
    for (name, value) in inbound {
        let lower = name.as_str();
        let body_framing = matches!(lower, "content-length" | "content-type" | "content-encoding");
        if is_hop_by_hop(lower, &named)
            || (!body_framing && is_not_forwarded(lower, policy, forwarded.keep_trace_context))
            || (body_framing && policy.drop.iter().any(|d| d == lower))
        {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(lower.as_bytes()), HeaderValue::from_bytes(value.as_bytes())) {
            out.append(n, v);
        }
    }
    if let Some(v) = forwarded_for(inbound, forwarded) {
        out.insert(X_FORWARDED_FOR, v);
    }
    out.insert(X_FORWARDED_PROTO, forwarded.proto.clone());
    out.insert(X_FORWARDED_HOST, forwarded.host.clone());
    out
}

/// The entries our trusted proxies added, then the peer: what reached us, and nothing a client
/// wrote about itself (read as the limits read it: `forwarded`).
fn forwarded_for(inbound: &InboundHeaders, forwarded: &ForwardedFor<'_>) -> Option<HeaderValue> {
    let value = crate::forwarded::forwarded_for(forwarded.peer, inbound, forwarded.trusted_hops)?;
    HeaderValue::try_from(value).ok()
}

/// The upstream's response headers that go back to the browser: no hop-by-hop headers, none of
/// the route's `response_headers_drop` (by default `Set-Cookie`, the browser's cookies being
/// bff's, and `Clear-Site-Data`, which would let an API wipe the SPA's origin), no
/// `Content-Length` (the body writer sets it).
pub fn downstream_response_headers<'u>(
    upstream: &'u OutboundHeaders,
    drop: &'u [String],
) -> impl Iterator<Item = (&'u HeaderName, &'u HeaderValue)> {
    let named = connection_named(upstream.get_all(hyper::header::CONNECTION).iter().map(|v| v.as_bytes().to_vec()));
    upstream.iter().filter(move |(name, _)| {
        let n = name.as_str();
        !is_hop_by_hop(n, &named) && n != "content-length" && !drop.iter().any(|d| d == n)
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
            ("x-forwarded-port", "1"),
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-server", "evil"),
            ("x-real-ip", "1.2.3.4"),
            ("true-client-ip", "1.2.3.4"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-method-override", "DELETE"),
            ("x-route-secret", "dropped by the route"),
            ("accept", "application/json"),
            ("content-type", "text/plain"),
            ("content-length", "5"),
            ("x-custom", "kept"),
        ]);
        let (proto, host) = (HeaderValue::from_static("https"), HeaderValue::from_static("app.example.com"));
        let fwd = ForwardedFor {
            peer: Some("10.0.0.9".parse().unwrap()),
            trusted_hops: 0,
            proto: &proto,
            host: &host,
            keep_trace_context: false,
        };
        let drop = ["x-route-secret".to_string()];
        let out = upstream_request_headers(&h, &fwd, &HeaderPolicy { drop: &drop, allow: None });
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
    fn forwarded_for_keeps_only_what_trusted_proxies_added() {
        let h = inbound(&[("x-forwarded-for", "10.9.9.9, 198.51.100.1"), ("x-forwarded-for", "203.0.113.7")]);
        let (proto, host) = (HeaderValue::from_static("http"), HeaderValue::from_static("h"));
        let xff = |trusted_hops| {
            let fwd = ForwardedFor {
                peer: Some("10.0.0.1".parse().unwrap()),
                trusted_hops,
                proto: &proto,
                host: &host,
                keep_trace_context: false,
            };
            upstream_request_headers(&h, &fwd, &HeaderPolicy { drop: &[], allow: None })["x-forwarded-for"]
                .to_str()
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(xff(0), "10.0.0.1", "no trusted proxy: the peer only");
        assert_eq!(xff(1), "203.0.113.7, 10.0.0.1");
        assert_eq!(xff(2), "198.51.100.1, 203.0.113.7, 10.0.0.1");
        assert_eq!(xff(9), "10.0.0.1", "a chain shorter than the trusted hops may be the client's own: the peer");
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
        let drop = ["set-cookie".to_string(), "clear-site-data".to_string()];
        up.append("clear-site-data", HeaderValue::from_static("\"*\""));
        let names: Vec<&str> = downstream_response_headers(&up, &drop).map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "cache-control"]);
    }
}

#[cfg(test)]
mod properties {
    use actix_web::http::header::{HeaderName as AName, HeaderValue as AValue};
    use proptest::prelude::*;

    use super::*;

    /// Every name that must never go upstream, plus some that may.
    fn name() -> impl Strategy<Value = String> {
        let denied: Vec<&str> = HOP_BY_HOP.iter().chain(NOT_FORWARDED).chain(TRACE_CONTEXT).copied().collect();
        prop_oneof![
            prop::sample::select(denied).prop_map(String::from),
            "x-forwarded-[a-z]{1,8}",
            "proxy-[a-z]{1,8}",
            "x-hop-[a-c]",
            "(accept|content-type|x-custom|x-route-secret)",
        ]
    }

    /// `name` with each letter's case chosen by `mask`.
    fn cased(name: &str, mask: u64) -> String {
        name.chars()
            .enumerate()
            .map(|(i, c)| if mask >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c })
            .collect()
    }

    fn connection_value() -> impl Strategy<Value = String> {
        prop::collection::vec(("[ \t]{0,2}", "x-hop-[a-c]", any::<u64>(), "[ \t]{0,2}"), 0..4).prop_map(|tokens| {
            tokens
                .iter()
                .map(|(before, n, mask, after)| format!("{before}{}{after}", cased(n, *mask)))
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    fn inbound() -> impl Strategy<Value = (InboundHeaders, Vec<String>)> {
        (
            prop::collection::vec((name(), any::<u64>(), "[ -~\t]{0,12}"), 0..12),
            prop::collection::vec(connection_value(), 0..3),
        )
            .prop_map(|(pairs, connections)| {
                let mut h = InboundHeaders::new();
                for (name, mask, value) in &pairs {
                    if let (Ok(n), Ok(v)) = (AName::from_bytes(cased(name, *mask).as_bytes()), AValue::from_str(value))
                    {
                        h.append(n, v);
                    }
                }
                let mut named = Vec::new();
                for c in &connections {
                    if let Ok(v) = AValue::from_str(c) {
                        h.append(AName::from_static("connection"), v);
                        named.extend(c.split(',').map(|t| t.trim().to_ascii_lowercase()).filter(|t| !t.is_empty()));
                    }
                }
                (h, named)
            })
    }

    fn forwarded<'a>(proto: &'a HeaderValue, host: &'a HeaderValue, hops: usize, keep: bool) -> ForwardedFor<'a> {
        ForwardedFor {
            peer: Some("10.0.0.9".parse().unwrap()),
            trusted_hops: hops,
            proto,
            host,
            keep_trace_context: keep,
        }
    }

    /// One `X-Forwarded-For` chain written over several headers, with stray spaces and commas.
    fn xff_headers() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(prop::collection::vec(("[ \t]{0,2}", "[0-9a-f.:]{0,8}", "[ \t]{0,2}"), 0..4), 0..4)
            .prop_map(|headers| {
                headers
                    .iter()
                    .map(|entries| entries.iter().map(|(a, e, b)| format!("{a}{e}{b}")).collect::<Vec<_>>().join(","))
                    .collect()
            })
    }

    proptest! {
        #![proptest_config(crate::prop::config())]

        #[test]
        fn no_denied_header_survives_any_casing_or_duplication(
            (h, named) in inbound(),
            keep in any::<bool>(),
            hops in 0usize..3,
        ) {
            let (proto, host) = (HeaderValue::from_static("https"), HeaderValue::from_static("app.example"));
            let drop = ["x-route-secret".to_string()];
            let policy = HeaderPolicy { drop: &drop, allow: None };
            let out = upstream_request_headers(&h, &forwarded(&proto, &host, hops, keep), &policy);
            for name in out.keys().map(HeaderName::as_str) {
                let ours = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"].contains(&name);
                prop_assert!(ours || !is_not_forwarded(name, &policy, keep), "{} went upstream", name);
                prop_assert!(!is_hop_by_hop(name, &named), "hop-by-hop {} went upstream", name);
                prop_assert!(name != "x-route-secret");
            }
            prop_assert_eq!(out.get_all("x-forwarded-proto").iter().collect::<Vec<_>>(), vec![&proto]);
            prop_assert_eq!(out.get_all("x-forwarded-host").iter().collect::<Vec<_>>(), vec![&host]);
            prop_assert_eq!(out.get_all("x-forwarded-for").iter().count(), 1);
        }

        #[test]
        fn no_hop_by_hop_header_or_cookie_comes_back((h, named) in inbound()) {
            let mut up = OutboundHeaders::new();
            for (n, v) in &h {
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.as_str().as_bytes()), HeaderValue::from_bytes(v.as_bytes())) {
                    up.append(n, v);
                }
            }
            up.append("set-cookie", HeaderValue::from_static("s=1"));
            for (name, _) in downstream_response_headers(&up, &["set-cookie".to_string()]) {
                let n = name.as_str();
                prop_assert!(!is_hop_by_hop(n, &named) && n != "set-cookie" && n != "content-length", "{} came back", n);
            }
        }

        /// Only what the trusted proxies appended reaches the upstream (as addresses, from the
        /// one the limits read as the client on), then the peer.
        #[test]
        fn x_forwarded_for_keeps_only_the_trusted_entries(headers in xff_headers(), hops in 0usize..4) {
            let mut h = InboundHeaders::new();
            let mut chain = Vec::new();
            for value in &headers {
                h.append(AName::from_static("x-forwarded-for"), AValue::from_str(value).unwrap());
                chain.extend(value.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from));
            }
            let (proto, host) = (HeaderValue::from_static("https"), HeaderValue::from_static("app.example"));
            let out = upstream_request_headers(&h, &forwarded(&proto, &host, hops, false), &HeaderPolicy { drop: &[], allow: None });
            let sent: Vec<String> = out["x-forwarded-for"].to_str().unwrap().split(", ").map(String::from).collect();
            prop_assert_eq!(sent.last().map(String::as_str), Some("10.0.0.9"));
            let expected: Vec<String> = match chain.len().checked_sub(hops) {
                Some(start) if hops > 0 => {
                    let trusted = &chain[start..];
                    match crate::forwarded::parse_entry(&trusted[0]) {
                        Some(_) => trusted.iter().filter_map(|e| crate::forwarded::parse_entry(e)).map(|ip| ip.to_string()).collect(),
                        None => Vec::new(),
                    }
                }
                _ => Vec::new(),
            };
            prop_assert_eq!(&sent[..sent.len() - 1], &expected[..]);
            // The limits read the same client: the first entry sent (else the peer).
            let req_client = crate::forwarded::client_address(Some("10.0.0.9".parse().unwrap()), &h, hops);
            prop_assert_eq!(req_client.map(|ip| ip.to_string()), sent.first().cloned());
        }
    }
}
