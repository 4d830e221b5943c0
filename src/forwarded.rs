//! `X-Forwarded-For` as bff reads it, one way for the limits (who the client is) and for what is
//! forwarded upstream: entries by position (the last `trusted_proxy_hops` were added by bff's own
//! proxies; anything further left was written by the client and proves nothing), each with a
//! port stripped (`203.0.113.10:40000`, `[2001:db8::1]:443`, as some load balancers write them).
//! A trusted entry that is not an address means the peer: a proxy bff trusts wrote something
//! bff cannot read, and what it could have meant is not guessed.

use std::net::{IpAddr, SocketAddr};

use actix_web::http::header::HeaderMap;

/// One entry, read as an address (`None`: not one).
pub fn parse_entry(raw: &str) -> Option<IpAddr> {
    let entry = raw.trim().trim_matches('"');
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = entry.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    // `[2001:db8::1]` without a port.
    entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')).and_then(|e| e.parse().ok())
}

/// A constant, not a `&str`: actix parses a string key on every lookup.
const X_FORWARDED_FOR: actix_web::http::header::HeaderName =
    actix_web::http::header::HeaderName::from_static("x-forwarded-for");

/// Every entry of every `X-Forwarded-For` header, in order.
fn chain(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(X_FORWARDED_FOR)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect()
}

/// The entries bff's trusted proxies added: the last `hops`, or none when the chain is shorter
/// (the request did not come through them all, so its entries may be the client's own).
fn trusted<'c, 'h>(chain: &'c [&'h str], hops: usize) -> &'c [&'h str] {
    match chain.len().checked_sub(hops) {
        Some(start) if hops > 0 => &chain[start..],
        _ => &[],
    }
}

/// The client's address: the peer, or, behind `hops` trusted proxies, the entry the outermost of
/// them added. An entry there that is not an address, or a chain shorter than `hops`, means
/// the peer.
pub fn client_address(peer: Option<IpAddr>, headers: &HeaderMap, hops: usize) -> Option<IpAddr> {
    let chain = chain(headers);
    trusted(&chain, hops).first().and_then(|outermost| parse_entry(outermost)).or(peer)
}

/// What the upstream is told in `X-Forwarded-For`: the entries bff's trusted proxies added, as
/// addresses without ports (from the one [`client_address`] names on), then the peer. `None`
/// when there is nothing to say.
pub fn forwarded_for(peer: Option<IpAddr>, headers: &HeaderMap, hops: usize) -> Option<String> {
    let chain = chain(headers);
    let trusted = trusted(&chain, hops);
    // The client's own entry unreadable: the limits read the peer, and so is the upstream told.
    let client_readable = trusted.first().is_some_and(|e| parse_entry(e).is_some());
    let mut entries: Vec<String> = Vec::with_capacity(trusted.len() + 1);
    if client_readable {
        entries.extend(trusted.iter().filter_map(|e| parse_entry(e)).map(|ip| ip.to_string()));
    }
    entries.extend(peer.map(|p| p.to_string()));
    (!entries.is_empty()).then(|| entries.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn entries_are_read_with_or_without_ports() {
        assert_eq!(parse_entry("203.0.113.10"), Some(ip("203.0.113.10")));
        assert_eq!(parse_entry(" 203.0.113.10:40000 "), Some(ip("203.0.113.10")));
        assert_eq!(parse_entry("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_entry("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_entry("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_entry("\"[2001:db8::1]:443\""), Some(ip("2001:db8::1")));
        assert_eq!(parse_entry("unknown"), None);
        assert_eq!(parse_entry("_hidden"), None);
        assert_eq!(parse_entry(""), None);
    }

    #[test]
    fn entries_with_ports_count_by_position_so_the_client_cannot_choose_its_address() {
        let peer = Some(ip("10.0.0.1"));
        // The client wrote two entries; the trusted proxy appended its peer with a port.
        let h = headers(&["198.51.100.7, 198.51.100.8", "203.0.113.10:40000"]);
        assert_eq!(client_address(peer, &h, 1), Some(ip("203.0.113.10")));
        assert_eq!(forwarded_for(peer, &h, 1).as_deref(), Some("203.0.113.10, 10.0.0.1"));
        assert_eq!(client_address(peer, &h, 0), peer, "no trusted proxy: the peer");
        assert_eq!(forwarded_for(peer, &h, 0).as_deref(), Some("10.0.0.1"));
        let v6 = headers(&["[2001:db8::1]:443"]);
        assert_eq!(client_address(peer, &v6, 1), Some(ip("2001:db8::1")));
    }

    #[test]
    fn an_unreadable_trusted_entry_means_the_peer_for_limits_and_forwarding_alike() {
        let peer = Some(ip("10.0.0.1"));
        let h = headers(&["unknown"]);
        assert_eq!(client_address(peer, &h, 1), peer);
        assert_eq!(forwarded_for(peer, &h, 1).as_deref(), Some("10.0.0.1"));
        let h = headers(&["., 0::, a"]);
        assert_eq!(client_address(peer, &h, 3), peer, "found by the header properties");
        assert_eq!(forwarded_for(peer, &h, 3).as_deref(), Some("10.0.0.1"));
        let h = headers(&["203.0.113.10, garbage"]);
        assert_eq!(client_address(peer, &h, 2), Some(ip("203.0.113.10")));
        assert_eq!(forwarded_for(peer, &h, 2).as_deref(), Some("203.0.113.10, 10.0.0.1"));
    }

    #[test]
    fn a_chain_shorter_than_the_trusted_hops_means_the_peer() {
        // It did not come through every trusted proxy: its entries may be the client's own.
        let peer = Some(ip("10.0.0.1"));
        let h = headers(&["203.0.113.7"]);
        assert_eq!(client_address(peer, &h, 3), peer);
        assert_eq!(forwarded_for(peer, &h, 3).as_deref(), Some("10.0.0.1"));
        assert_eq!(client_address(peer, &headers(&[]), 3), peer, "no chain at all: the peer");
    }
}
