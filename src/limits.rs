//! Limits that keep one client from exhausting what all share: login starts per client address
//! (each creates a pending login in the store for ten minutes).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;

/// A limit a request ran into. It decides the answer (`AppError::Limited`) and names the
/// `requests_limited_total` label, so the two cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `server.max_header_bytes`: 431.
    HeaderSize,
    /// A route's `max_body_bytes`, or the `/auth` body cap: 413.
    BodySize,
    /// `server.max_upstream_concurrency` calls already in flight: 429 `upstream_busy`.
    UpstreamConcurrency,
    /// `server.max_upstream_concurrency_per_session` calls of this session in flight: 429
    /// `upstream_busy`.
    SessionConcurrency,
    /// `server.max_upstream_concurrency_anonymous` calls without a session in flight: 429
    /// `upstream_busy`.
    AnonymousConcurrency,
    /// `server.max_upstream_concurrency_per_address` calls without a session from this client
    /// address (an IPv6 /64) in flight: 429 `upstream_busy`.
    AddressConcurrency,
    /// `server.login_starts_per_minute`, per client address or per browser: 429 `too_many_logins`.
    LoginRate,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::HeaderSize => "header_size",
            Limit::BodySize => "body_size",
            Limit::UpstreamConcurrency => "upstream_concurrency",
            Limit::SessionConcurrency => "session_concurrency",
            Limit::AnonymousConcurrency => "anonymous_concurrency",
            Limit::AddressConcurrency => "address_concurrency",
            Limit::LoginRate => "login_rate",
        }
    }
}

const WINDOW: Duration = Duration::from_secs(60);
/// Forget idle clients when the table grows past this.
const SWEEP_ABOVE: usize = 10_000;

/// The client's address: the peer, or — behind `hops` trusted proxies that append to
/// `X-Forwarded-For` — the entry the outermost trusted proxy added. Entries further left were
/// written by the client and prove nothing.
pub fn client_ip(req: &HttpRequest, hops: usize) -> Option<IpAddr> {
    let peer = req.peer_addr().map(|a| a.ip());
    if hops == 0 {
        return peer;
    }
    let chain: Vec<IpAddr> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|e| e.trim().parse().ok())
        .collect();
    chain.len().checked_sub(hops).and_then(|i| chain.get(i).copied()).or(peer)
}

/// What counts as one client address for limits: an IPv4 address, or an IPv6 /64 (one
/// subscriber's or host's allocation: limiting per /128 would give one client 2^64 shares).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

/// A fixed-window counter per client address, in this instance.
pub struct RateLimiter {
    per_window: u32,
    clients: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl RateLimiter {
    pub fn per_minute(per_window: u32) -> RateLimiter {
        RateLimiter { per_window, clients: Mutex::new(HashMap::new()) }
    }

    /// Counts one more event for `client`; over the limit, how long until its window ends.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() > SWEEP_ABOVE {
            clients.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let entry = clients.entry(client).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 <= self.per_window { Ok(()) } else { Err(WINDOW.saturating_sub(now.duration_since(entry.0))) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn a_client_over_its_budget_is_refused_and_others_are_not() {
        let limiter = RateLimiter::per_minute(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| limiter.check(a).is_ok()));
        let Err(retry_after) = limiter.check(a) else { panic!("a fourth event within the minute passed") };
        assert!(retry_after > Duration::from_secs(59) && retry_after <= WINDOW, "{retry_after:?}");
        assert!(limiter.check(b).is_ok());
    }

    #[test]
    fn forwarded_for_is_trusted_only_as_far_as_configured() {
        let req = TestRequest::default()
            .peer_addr("10.0.0.9:1234".parse().unwrap())
            .insert_header(("x-forwarded-for", "6.6.6.6, 203.0.113.5"))
            .to_http_request();
        assert_eq!(client_ip(&req, 0), Some("10.0.0.9".parse().unwrap()));
        assert_eq!(client_ip(&req, 1), Some("203.0.113.5".parse().unwrap()));
        assert_eq!(client_ip(&req, 2), Some("6.6.6.6".parse().unwrap()));
        assert_eq!(client_ip(&req, 5), Some("10.0.0.9".parse().unwrap()), "a short chain falls back to the peer");
    }
}
