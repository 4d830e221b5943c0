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
    /// `frontend[].max_upstream_concurrency` calls of this frontend in flight: 429
    /// `upstream_busy`.
    FrontendConcurrency,
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
            Limit::FrontendConcurrency => "frontend_concurrency",
            Limit::SessionConcurrency => "session_concurrency",
            Limit::AnonymousConcurrency => "anonymous_concurrency",
            Limit::AddressConcurrency => "address_concurrency",
            Limit::LoginRate => "login_rate",
        }
    }
}

const WINDOW: Duration = Duration::from_secs(60);
/// Each address's window: when it started, how many events it holds.
type Windows = HashMap<IpAddr, (Instant, u32)>;

/// Forget idle clients when the table grows past this …
const SWEEP_ABOVE: usize = 10_000;
/// … at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The client's address (see `forwarded::client_address`): the peer, or behind `hops` trusted
/// proxies the entry the outermost of them added.
pub fn client_ip(req: &HttpRequest, hops: usize) -> Option<IpAddr> {
    crate::forwarded::client_address(req.peer_addr().map(|a| a.ip()), req.headers(), hops)
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

/// A fixed-window counter per client address (an IPv6 /64 counts as one), in this instance,
/// under a cap on all clients together over a longer window: many addresses (IPv6 gives anyone
/// plenty) cannot fill the store with pending logins either, and the table of addresses cannot
/// grow past what the cap lets in.
pub struct RateLimiter {
    per_window: u32,
    /// Per address: its window's start and count; and when expired windows were last dropped.
    clients: Mutex<(Windows, Instant)>,
    total: Mutex<(Instant, u32)>,
    total_per_window: u32,
    total_window: Duration,
}

impl RateLimiter {
    /// `per_window` a minute per address; at most `total` in `total_window` from all of them.
    pub fn new(per_minute: u32, total: u32, total_window: Duration) -> RateLimiter {
        RateLimiter {
            per_window: per_minute,
            clients: Mutex::new((HashMap::new(), Instant::now())),
            total: Mutex::new((Instant::now(), 0)),
            total_per_window: total,
            total_window,
        }
    }

    /// Counts one more event for `client`; over a limit, how long until its window ends.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        // The total first (an event it refuses leaves no address behind), counted only for
        // events the address's own limit lets through.
        let mut total = self.total.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(total.0) >= self.total_window {
            *total = (now, 0);
        }
        if total.1 >= self.total_per_window {
            return Err(self.total_window.saturating_sub(now.duration_since(total.0)));
        }
        let client = address_key(client);
        let mut guard = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let (clients, swept) = &mut *guard;
        // Dropping expired windows walks the table: at most every few seconds, not per event
        // (between sweeps the total cap bounds what can be added).
        if clients.len() > SWEEP_ABOVE && now.duration_since(*swept) >= SWEEP_EVERY {
            clients.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            *swept = now;
        }
        let entry = clients.entry(client).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 > self.per_window {
            return Err(WINDOW.saturating_sub(now.duration_since(entry.0)));
        }
        total.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn a_client_over_its_budget_is_refused_and_others_are_not() {
        let limiter = RateLimiter::new(3, u32::MAX, Duration::from_secs(600));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| limiter.check(a).is_ok()));
        let Err(retry_after) = limiter.check(a) else { panic!("a fourth event within the minute passed") };
        assert!(retry_after > Duration::from_secs(59) && retry_after <= WINDOW, "{retry_after:?}");
        assert!(limiter.check(b).is_ok());
    }

    #[test]
    fn an_ipv6_64_is_one_client_and_all_clients_together_have_a_cap() {
        let limiter = RateLimiter::new(2, 5, Duration::from_secs(600));
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        assert!(limiter.check(one).is_ok() && limiter.check(same).is_ok());
        assert!(limiter.check(same).is_err(), "the same /64");
        let others: Vec<IpAddr> = (1..=3).map(|n| IpAddr::from([192, 0, 2, n])).collect();
        assert!(others.iter().all(|ip| limiter.check(*ip).is_ok()));
        let Err(retry_after) = limiter.check(IpAddr::from([192, 0, 2, 99])) else { panic!("over the total") };
        assert!(retry_after > Duration::from_secs(590), "{retry_after:?}");
        assert!(limiter.clients.lock().unwrap().0.len() <= 4, "refused events add no address");
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
