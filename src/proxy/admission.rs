//! How many upstream exchanges may be in flight in this instance: in all
//! (`server.max_upstream_concurrency`, one semaphore for the process: every frontend and every
//! configuration a reload brings draws on it), per frontend
//! (`frontend[].max_upstream_concurrency`, so one SPA's traffic cannot take what the
//! others need), per live session
//! (`server.max_upstream_concurrency_per_session`), and for calls without a session
//! (`server.max_upstream_concurrency_anonymous` in all, `…_per_address` per client address, both
//! for the process as a whole, whichever frontends the calls go to). A
//! call past any of them is refused at once, so no session, and no anonymous client, can take
//! the capacity the others need. Anonymous calls never hold more than their own share of the
//! global permits: signed-in users keep the rest whatever the public routes get.
//!
//! Callers are identified before they are admitted: a share is only ever taken for a session
//! known to be live, or for the client address of a call that uses no session.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits::Limit;
use crate::session::SessionHandle;

/// Whose share an exchange counts against.
#[derive(Debug, Clone, Copy)]
pub enum Share<'a> {
    /// A live session's.
    Session(&'a SessionHandle),
    /// No session: the anonymous share, and this client address's part of it (`None` when the
    /// address is unknown: the anonymous share alone).
    Anonymous(Option<IpAddr>),
}

/// What every frontend of the process shares, kept across reloads: the global permits, and the
/// anonymous share and its per-address parts (a crowd without sessions at several frontends
/// still leaves signed-in users three quarters of the process, and one address gets its part
/// once, not once per frontend).
#[derive(Clone)]
pub struct ProcessPermits {
    all: Arc<Semaphore>,
    /// The size of `all`.
    size: usize,
    anonymous: Arc<Semaphore>,
    addresses: Counted<IpAddr>,
}

impl ProcessPermits {
    pub fn new(all: usize, anonymous: usize, per_address: usize) -> ProcessPermits {
        ProcessPermits {
            all: Arc::new(Semaphore::new(all)),
            size: all,
            anonymous: Arc::new(Semaphore::new(anonymous)),
            addresses: Counted::new(per_address),
        }
    }
}

/// One frontend's admission: its own shares, and the process's.
pub struct Admission {
    /// The process's, shared with the other frontends' admissions.
    all: Arc<Semaphore>,
    /// This frontend's cap; `None` when it is no narrower than the global one.
    frontend: Option<Arc<Semaphore>>,
    anonymous: Arc<Semaphore>,
    sessions: Counted<SessionHandle>,
    addresses: Counted<IpAddr>,
}

/// Held as long as the exchange lasts (its response body included); dropping it frees every
/// share it took.
pub struct Permit {
    _all: OwnedSemaphorePermit,
    _frontend: Option<OwnedSemaphorePermit>,
    _anonymous: Option<OwnedSemaphorePermit>,
    _session: Option<Release<SessionHandle>>,
    _address: Option<Release<IpAddr>>,
}

/// In-flight counts per key, each up to `limit`; a key is removed at zero, so the map holds only
/// keys with exchanges in flight (bounded by the global cap).
struct Counted<K: Hash + Eq> {
    limit: usize,
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Hash + Eq> Clone for Counted<K> {
    fn clone(&self) -> Self {
        Counted { limit: self.limit, counts: Arc::clone(&self.counts) }
    }
}

impl<K: Hash + Eq + Clone> Counted<K> {
    fn new(limit: usize) -> Self {
        Counted { limit, counts: Arc::default() }
    }

    fn take(&self, key: &K) -> Option<Release<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up before inserting: `entry` would want an owned key on every call.
        match counts.get_mut(key) {
            Some(count) if *count >= self.limit => return None,
            Some(count) => *count += 1,
            None if self.limit == 0 => return None,
            None => {
                counts.insert(key.clone(), 1);
            }
        }
        Some(Release { counts: Arc::clone(&self.counts), key: key.clone() })
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One exchange's part of a key's count, given back when dropped.
struct Release<K: Hash + Eq> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq> Drop for Release<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// One frontend's own limits.
#[derive(Debug, Clone, Copy)]
pub struct Shares {
    /// The most exchanges this frontend may have in flight; at or above the process's global cap
    /// it adds nothing.
    pub frontend: usize,
    pub per_session: usize,
}

impl Admission {
    /// `process`: what every frontend shares (`server.max_upstream_concurrency`, the anonymous
    /// share and its per-address parts), kept across reloads, so that neither more frontends nor
    /// a reload raise what the process sends upstream at once.
    pub fn new(shares: Shares, process: ProcessPermits) -> Admission {
        Admission {
            frontend: (shares.frontend < process.size).then(|| Arc::new(Semaphore::new(shares.frontend))),
            all: process.all,
            anonymous: process.anonymous,
            sessions: Counted::new(shares.per_session),
            addresses: process.addresses,
        }
    }

    /// A permit for one more exchange of `share`, or the limit it would pass. The narrowest
    /// share is taken first (the caller's own, then the frontend's, then the global one): a
    /// caller at its limit holds no frontend or global permit meanwhile, and a frontend at its
    /// cap holds no global permit.
    pub fn admit(&self, share: Share<'_>) -> Result<Permit, Limit> {
        match share {
            Share::Session(handle) => {
                let session = self.sessions.take(handle).ok_or(Limit::SessionConcurrency)?;
                let (frontend, all) = self.frontend_and_global()?;
                Ok(Permit { _all: all, _frontend: frontend, _anonymous: None, _session: Some(session), _address: None })
            }
            Share::Anonymous(address) => {
                let address = match address {
                    Some(ip) => {
                        Some(self.addresses.take(&crate::limits::address_key(ip)).ok_or(Limit::AddressConcurrency)?)
                    }
                    None => None,
                };
                let anonymous =
                    Arc::clone(&self.anonymous).try_acquire_owned().map_err(|_| Limit::AnonymousConcurrency)?;
                let (frontend, all) = self.frontend_and_global()?;
                Ok(Permit {
                    _all: all,
                    _frontend: frontend,
                    _anonymous: Some(anonymous),
                    _session: None,
                    _address: address,
                })
            }
        }
    }

    /// The frontend's permit (when it has a cap of its own), then a global one. A refusal of
    /// the global permit drops the frontend's at once.
    fn frontend_and_global(&self) -> Result<(Option<OwnedSemaphorePermit>, OwnedSemaphorePermit), Limit> {
        let frontend = match &self.frontend {
            Some(cap) => Some(Arc::clone(cap).try_acquire_owned().map_err(|_| Limit::FrontendConcurrency)?),
            None => None,
        };
        let all = Arc::clone(&self.all).try_acquire_owned().map_err(|_| Limit::UpstreamConcurrency)?;
        Ok((frontend, all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionId;

    fn shares(all: usize, per_session: usize, anonymous: usize, per_address: usize) -> Admission {
        Admission::new(Shares { frontend: all, per_session }, ProcessPermits::new(all, anonymous, per_address))
    }

    fn global(all: usize) -> ProcessPermits {
        ProcessPermits::new(all, all, 8)
    }

    /// One frontend's admission on the process's permits, with its cap.
    fn frontend(process: &ProcessPermits, frontend: usize) -> Admission {
        Admission::new(Shares { frontend, per_session: 8 }, process.clone())
    }

    #[test]
    fn frontends_on_one_process_exhaust_the_global_permits_together() {
        let permits = global(3);
        let (shop, admin) = (frontend(&permits, 3), frontend(&permits, 3));
        let session = || SessionId::generate().handle();
        let (a, b, c, d) = (session(), session(), session(), session());
        let held = [shop.admit(Share::Session(&a)).ok(), shop.admit(Share::Session(&b)).ok()];
        let other = admin.admit(Share::Session(&c)).ok();
        assert!(held.iter().all(Option::is_some) && other.is_some());
        assert_eq!(admin.admit(Share::Session(&d)).err(), Some(Limit::UpstreamConcurrency));
        assert_eq!(shop.admit(Share::Session(&d)).err(), Some(Limit::UpstreamConcurrency));
        drop(other);
        assert!(shop.admit(Share::Session(&d)).is_ok(), "a finished exchange frees its global permit for all");
        assert_eq!(admin.sessions.in_flight() + shop.sessions.in_flight(), 2, "a refusal keeps no share");
    }

    #[test]
    fn a_frontend_at_its_cap_is_refused_while_another_is_served() {
        let permits = global(4);
        let (shop, admin) = (frontend(&permits, 2), frontend(&permits, 2));
        let session = SessionId::generate().handle();
        let ip = |n: u8| Share::Anonymous(Some(IpAddr::from([198, 51, 100, n])));
        let first = shop.admit(Share::Session(&session)).ok();
        let second = shop.admit(ip(1)).ok();
        assert!(first.is_some() && second.is_some());
        assert_eq!(shop.admit(Share::Session(&session)).err(), Some(Limit::FrontendConcurrency));
        assert_eq!(shop.admit(ip(2)).err(), Some(Limit::FrontendConcurrency));
        assert_eq!(permits.all.available_permits(), 2, "a frontend refusal holds no global permit");
        assert_eq!(shop.addresses.in_flight(), 1, "nor the address share it took first");
        let admin_held: Vec<Permit> = (3..5).filter_map(|n| admin.admit(ip(n)).ok()).collect();
        assert_eq!(admin_held.len(), 2, "the other frontend gets its own share");
        assert_eq!(admin.admit(ip(9)).err(), Some(Limit::FrontendConcurrency));
        drop(first);
        assert!(shop.admit(Share::Session(&session)).is_ok(), "a finished exchange frees the frontend's share");
    }

    #[test]
    fn the_anonymous_share_and_an_addresss_part_are_the_processs_whatever_the_frontend() {
        let process = ProcessPermits::new(8, 2, 1);
        let (shop, admin) = (frontend(&process, 8), frontend(&process, 8));
        let ip = |n: u8| Share::Anonymous(Some(IpAddr::from([198, 51, 100, n])));
        let held = shop.admit(ip(1)).ok();
        assert!(held.is_some());
        assert_eq!(admin.admit(ip(1)).err(), Some(Limit::AddressConcurrency), "one address, one part");
        let other = admin.admit(ip(2)).ok();
        assert!(other.is_some());
        assert_eq!(shop.admit(ip(3)).err(), Some(Limit::AnonymousConcurrency), "one anonymous share in all");
        let session = SessionId::generate().handle();
        assert!(admin.admit(Share::Session(&session)).is_ok(), "sessions keep the rest");
    }

    #[test]
    fn a_frontend_share_as_wide_as_the_global_one_adds_no_cap() {
        let permits = global(2);
        let wide = frontend(&permits, 5);
        assert!(wide.frontend.is_none());
        let session = SessionId::generate().handle();
        let held: Vec<Permit> = (0..2).filter_map(|_| wide.admit(Share::Session(&session)).ok()).collect();
        assert_eq!(held.len(), 2);
        assert_eq!(wide.admit(Share::Session(&session)).err(), Some(Limit::UpstreamConcurrency));
    }

    #[test]
    fn a_session_at_its_share_is_refused_while_others_are_admitted() {
        let admission = shares(4, 2, 4, 4);
        let (a, b) = (SessionId::generate().handle(), SessionId::generate().handle());
        let first = admission.admit(Share::Session(&a)).ok();
        let second = admission.admit(Share::Session(&a)).ok();
        assert!(first.is_some() && second.is_some());
        assert_eq!(admission.admit(Share::Session(&a)).err(), Some(Limit::SessionConcurrency));
        let other = admission.admit(Share::Session(&b)).ok();
        assert!(other.is_some(), "another session is served");
        drop(first);
        assert!(admission.admit(Share::Session(&a)).is_ok(), "a finished exchange frees its share");
    }

    #[test]
    fn the_global_cap_still_holds_and_a_refusal_keeps_no_share() {
        let admission = shares(1, 5, 1, 1);
        let (a, b) = (SessionId::generate().handle(), SessionId::generate().handle());
        let held = admission.admit(Share::Session(&a)).ok();
        assert!(held.is_some());
        assert_eq!(admission.admit(Share::Session(&b)).err(), Some(Limit::UpstreamConcurrency));
        let ip: IpAddr = [203, 0, 113, 7].into();
        assert_eq!(admission.admit(Share::Anonymous(Some(ip))).err(), Some(Limit::UpstreamConcurrency));
        drop(held);
        assert_eq!(admission.sessions.in_flight(), 0, "no share is left behind");
        assert_eq!(admission.addresses.in_flight(), 0, "no share is left behind");
    }

    #[test]
    fn anonymous_calls_never_take_what_sessions_need() {
        let admission = shares(4, 4, 2, 8);
        let ip = |n: u8| Some(IpAddr::from([198, 51, 100, n]));
        let held: Vec<Permit> = (0..2).filter_map(|n| admission.admit(Share::Anonymous(ip(n))).ok()).collect();
        assert_eq!(held.len(), 2);
        assert_eq!(admission.admit(Share::Anonymous(ip(9))).err(), Some(Limit::AnonymousConcurrency));
        let session = SessionId::generate().handle();
        assert!(admission.admit(Share::Session(&session)).is_ok(), "the rest is the sessions'");
    }

    #[test]
    fn one_address_gets_its_part_of_the_anonymous_share() {
        let admission = shares(16, 4, 8, 2);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let _a = admission.admit(Share::Anonymous(Some(one)));
        let _b = admission.admit(Share::Anonymous(Some(same_64)));
        assert_eq!(
            admission.admit(Share::Anonymous(Some(one))).err(),
            Some(Limit::AddressConcurrency),
            "an IPv6 /64 is one address"
        );
        assert!(admission.admit(Share::Anonymous(Some(other))).is_ok());
        assert!(admission.admit(Share::Anonymous(None)).is_ok(), "an unknown address has the anonymous share only");
    }
}
