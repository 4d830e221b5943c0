//! How many upstream exchanges may be in flight: in all (`server.max_upstream_concurrency`) and
//! per session (`server.max_upstream_concurrency_per_session`), in this instance. A call past
//! either is refused at once, so one session can never take the capacity the others need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits::Limit;
use crate::session::SessionHandle;

pub struct Admission {
    all: Arc<Semaphore>,
    per_session: usize,
    sessions: Arc<Mutex<HashMap<SessionHandle, usize>>>,
}

/// Held as long as the exchange lasts (its response body included); dropping it frees both shares.
pub struct Permit {
    _all: OwnedSemaphorePermit,
    /// `None` for a call made without a session (a `token = "none"` route).
    _session: Option<SessionShare>,
}

struct SessionShare {
    sessions: Arc<Mutex<HashMap<SessionHandle, usize>>>,
    handle: SessionHandle,
}

impl Drop for SessionShare {
    fn drop(&mut self) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = sessions.get_mut(&self.handle) {
            *count -= 1;
            if *count == 0 {
                sessions.remove(&self.handle);
            }
        }
    }
}

impl Admission {
    pub fn new(all: usize, per_session: usize) -> Admission {
        Admission { all: Arc::new(Semaphore::new(all)), per_session, sessions: Arc::default() }
    }

    /// A permit for one more exchange of `handle`, or the limit it would pass. The session's
    /// share is taken first: a session at its limit does not hold a global permit meanwhile.
    pub fn admit(&self, handle: Option<&SessionHandle>) -> Result<Permit, Limit> {
        let Some(handle) = handle else {
            let all = Arc::clone(&self.all).try_acquire_owned().map_err(|_| Limit::UpstreamConcurrency)?;
            return Ok(Permit { _all: all, _session: None });
        };
        let session = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let count = sessions.entry(handle.clone()).or_insert(0);
            if *count >= self.per_session {
                return Err(Limit::SessionConcurrency);
            }
            *count += 1;
            SessionShare { sessions: Arc::clone(&self.sessions), handle: handle.clone() }
        };
        let all = Arc::clone(&self.all).try_acquire_owned().map_err(|_| Limit::UpstreamConcurrency)?;
        Ok(Permit { _all: all, _session: Some(session) })
    }

    #[cfg(test)]
    fn sessions_in_flight(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionId;

    #[test]
    fn a_session_at_its_share_is_refused_while_others_are_admitted() {
        let admission = Admission::new(4, 2);
        let (a, b) = (SessionId::generate().handle(), SessionId::generate().handle());
        let first = admission.admit(Some(&a)).ok();
        let second = admission.admit(Some(&a)).ok();
        assert!(first.is_some() && second.is_some());
        assert_eq!(admission.admit(Some(&a)).err(), Some(Limit::SessionConcurrency));
        let other = admission.admit(Some(&b)).ok();
        assert!(other.is_some(), "another session is served");
        drop(first);
        assert!(admission.admit(Some(&a)).is_ok(), "a finished exchange frees its share");
    }

    #[test]
    fn the_global_cap_still_holds_and_a_refusal_keeps_no_share() {
        let admission = Admission::new(1, 5);
        let (a, b) = (SessionId::generate().handle(), SessionId::generate().handle());
        let held = admission.admit(Some(&a)).ok();
        assert!(held.is_some());
        assert_eq!(admission.admit(Some(&b)).err(), Some(Limit::UpstreamConcurrency));
        drop(held);
        assert_eq!(admission.sessions_in_flight(), 0, "no share is left behind");
    }
}
