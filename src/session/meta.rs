//! What a user is shown of each of their sessions (`GET /auth/sessions`): when it started, on
//! what kind of browser, from roughly where. Taken at sign-in and kept as it was then; only
//! summaries are kept (a browser family and system, a /24 or /48), never the raw `User-Agent`
//! or address, so the store holds no more about the user than the list shows.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The longest user agent summary kept (the known names are far shorter; this bounds the rest).
const MAX_SUMMARY_CHARS: usize = 64;

/// The device a session was started from, as kept with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMeta {
    /// Unix seconds.
    pub created_at: u64,
    /// `"Firefox on Linux"`; `"unknown"` without a `User-Agent`.
    pub user_agent: String,
    /// `"203.0.113.0/24"`, `"2001:db8:1::/48"`; `None` when the address was not known.
    pub address: Option<String>,
}

/// What a sign-in request says of the device it comes from, before it is summarized.
#[derive(Debug, Clone, Default)]
pub struct Device {
    pub user_agent: Option<String>,
    pub address: Option<IpAddr>,
}

impl Device {
    /// The request's `User-Agent` (bounded before it is kept: see [`summarize_user_agent`]) and
    /// client address (past `hops` trusted proxies).
    pub fn of(req: &actix_web::HttpRequest, hops: usize) -> Device {
        Device {
            user_agent: req
                .headers()
                .get(actix_web::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            address: crate::limits::client_ip(req, hops),
        }
    }

    pub fn meta(&self, created_at: u64) -> SessionMeta {
        SessionMeta::new(created_at, self.user_agent.as_deref(), self.address)
    }
}

impl SessionMeta {
    /// `user_agent` and `address` as a sign-in request gave them.
    pub fn new(created_at: u64, user_agent: Option<&str>, address: Option<IpAddr>) -> SessionMeta {
        SessionMeta {
            created_at,
            user_agent: user_agent.map_or_else(|| "unknown".to_string(), summarize_user_agent),
            address: address.map(network_of),
        }
    }
}

/// A browser family and an operating system (`"Chrome on Windows"`), from the usual tokens of a
/// `User-Agent`; an unknown agent is named by its first product token, bounded.
pub fn summarize_user_agent(raw: &str) -> String {
    // Order matters: Edge and Opera also say Chrome, Chrome also says Safari.
    const BROWSERS: &[(&str, &str)] = &[
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("CriOS/", "Chrome"),
        ("Safari/", "Safari"),
    ];
    const SYSTEMS: &[(&str, &str)] = &[
        ("Android", "Android"),
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("CrOS", "ChromeOS"),
        ("Linux", "Linux"),
    ];
    let browser = BROWSERS.iter().find(|(token, _)| raw.contains(token)).map(|(_, name)| *name);
    let system = SYSTEMS.iter().find(|(token, _)| raw.contains(token)).map(|(_, name)| *name);
    let summary = match (browser, system) {
        (Some(b), Some(s)) => format!("{b} on {s}"),
        (Some(b), None) => b.to_string(),
        (None, _) => {
            // `curl/8.5.0`, `MyApp/2 (…)`: the product name only, printable ASCII.
            let product = raw.split(['/', ' ', '(']).next().unwrap_or_default();
            let product: String = product.chars().filter(|c| c.is_ascii_graphic()).collect();
            match (product.is_empty(), system) {
                (true, _) => "unknown".to_string(),
                (false, Some(s)) => format!("{product} on {s}"),
                (false, None) => product,
            }
        }
    };
    summary.chars().take(MAX_SUMMARY_CHARS).collect()
}

/// The network an address lies in, as shown: an IPv4 /24, an IPv6 /48 (an IPv4-mapped IPv6
/// address counts as IPv4).
pub fn network_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => network_of(IpAddr::V4(v4)),
            None => {
                let masked = std::net::Ipv6Addr::from(v6.to_bits() & !((1u128 << 80) - 1));
                format!("{masked}/48")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_are_summarized_and_bounded() {
        let cases = [
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
                "Chrome on Linux",
            ),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0", "Firefox on Windows"),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) \
                 Version/17.1 Safari/605.1.15",
                "Safari on macOS",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Chrome/120.0 Safari/537.36 Edg/120.0",
                "Edge on Windows",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 CriOS/120.0 Mobile",
                "Chrome on iOS",
            ),
            ("curl/8.5.0", "curl"),
            ("", "unknown"),
        ];
        for (raw, summary) in cases {
            assert_eq!(summarize_user_agent(raw), summary, "{raw}");
        }
        assert_eq!(summarize_user_agent(&"x".repeat(10_000)).len(), MAX_SUMMARY_CHARS);
        assert_eq!(SessionMeta::new(1, None, None).user_agent, "unknown");
    }

    #[test]
    fn addresses_are_cut_to_their_network() {
        let cases = [
            ("203.0.113.77", "203.0.113.0/24"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1::/48"),
            ("::ffff:198.51.100.9", "198.51.100.0/24"),
            ("::1", "::/48"),
        ];
        for (raw, network) in cases {
            let ip: IpAddr = raw.parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
            assert_eq!(network_of(ip), network, "{raw}");
        }
    }
}
