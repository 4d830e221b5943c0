//! What the proxy needs of a token set, kept decoded between calls.
//!
//! For the path without the local cache (`tokens.local_cache = false`, the in-memory store,
//! Redis Cluster): every proxied call still reads the token set from the store, so a logout, a
//! refresh or an expiry on any instance is seen at once; what is saved is opening it again. A stored value is
//! recognised by its fingerprint: its clear version prefix, its nonce and its GCM tag. Every seal
//! draws a fresh random nonce, so a value written since (refresh, re-seal, new login) never
//! matches. A value that matches is answered with the view decoded from the value that was
//! authenticated under that fingerprint: bytes altered in the store while keeping the nonce and
//! tag can at worst make bff use the token set it had already verified, never one it has not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[cfg(test)]
use super::bearer_header;
use super::{Expiry, TokenSet, UsableToken};

/// Sessions whose views are kept; past it, one is dropped per insertion.
const CAPACITY: usize = 4096;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// The fields of a token set the steady-state proxy path uses (not the refresh or ID token).
/// The access token is kept as the ready `Authorization` header: a call clones it (a reference
/// count), instead of formatting and checking ~1 KB of header per call.
#[derive(Clone)]
pub struct HotToken {
    /// The default audience's token as a call sends it, and its expiry (which also carries the
    /// session's end).
    pub access: UsableToken,
    pub expiry: Expiry,
    pub has_refresh_token: bool,
    /// The tokens for other audiences (RFC 8707), by resource; usually none.
    pub audiences: Arc<[(String, UsableToken, Expiry)]>,
    /// The sign-in's `acr` and `auth_time` (see `TokenSet`), for a route's step-up check.
    pub acr: Option<Arc<str>>,
    pub auth_time: Option<u64>,
    /// The session's device binding (DBSC): its calls need the bound cookie.
    pub device: Option<Arc<crate::dbsc::DeviceBinding>>,
}

impl From<&TokenSet> for HotToken {
    fn from(set: &TokenSet) -> Self {
        HotToken {
            access: UsableToken::from(set.access()),
            expiry: set.expiry,
            has_refresh_token: set.refresh_token.is_some(),
            audiences: set
                .audiences
                .keys()
                .filter_map(|resource| {
                    let token = set.token_for(Some(resource))?;
                    let expiry = token.expiry;
                    Some((resource.clone(), UsableToken::from(token), expiry))
                })
                .collect(),
            acr: set.acr.as_deref().map(Arc::from),
            auth_time: set.auth_time,
            device: set.device.clone().map(Arc::new),
        }
    }
}

impl HotToken {
    /// A view of a session signed in at 0 with no `acr`, for other modules' unit tests.
    #[cfg(test)]
    pub fn for_tests() -> HotToken {
        view(1)
    }

    /// The token for `resource` (the default audience when `None`) and its expiry, if the set
    /// has one.
    pub fn usable(&self, resource: Option<&str>) -> Option<(UsableToken, Expiry)> {
        match resource {
            None => Some((self.access.clone(), self.expiry)),
            Some(r) => self.audiences.iter().find(|(name, ..)| name == r).map(|(_, t, e)| (t.clone(), *e)),
        }
    }
}

/// `v{version}.` + nonce + tag of a stored value, or `None` if it is too short to be one.
pub fn fingerprint(raw: &[u8]) -> Option<Vec<u8>> {
    let dot = raw.iter().position(|b| *b == b'.')?;
    let head_end = dot + 1 + NONCE_LEN;
    if raw.len() < head_end + TAG_LEN {
        return None;
    }
    Some([&raw[..head_end], &raw[raw.len() - TAG_LEN..]].concat())
}

/// Decoded views by store key, each with the fingerprint of the value it came from.
#[derive(Default)]
pub struct HotViews {
    views: Mutex<HashMap<String, (Vec<u8>, HotToken)>>,
}

impl HotViews {
    pub fn get(&self, key: &str, fingerprint: &[u8]) -> Option<HotToken> {
        let views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views.get(key).filter(|(seen, _)| seen == fingerprint).map(|(_, view)| view.clone())
    }

    pub fn put(&self, key: &str, fingerprint: Vec<u8>, view: HotToken) {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        if views.len() >= CAPACITY
            && !views.contains_key(key)
            && let Some(evicted) = views.keys().next().cloned()
        {
            views.remove(&evicted);
        }
        views.insert(key.to_string(), (fingerprint, view));
    }

    pub fn forget(&self, key: &str) {
        self.views.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.views.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
fn view(version: u64) -> HotToken {
    let authorization = bearer_header(&openidconnect::AccessToken::new("at".into()));
    HotToken {
        access: UsableToken { authorization, dpop: None, version, expires_at: 10, after_rejection: false },
        expiry: crate::tokens::Expiry { expires_at: 10, lifetime_secs: 10, session_expires_at: 100 },
        has_refresh_token: true,
        audiences: Arc::default(),
        acr: None,
        auth_time: None,
        device: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_prefix_nonce_and_tag() {
        let raw = [b"v7.".as_slice(), &[1; NONCE_LEN], b"body", &[2; TAG_LEN]].concat();
        let fp = fingerprint(&raw).unwrap_or_default();
        assert_eq!(fp, [b"v7.".as_slice(), &[1; NONCE_LEN], &[2; TAG_LEN]].concat());
        assert!(fingerprint(b"v7.short").is_none());
        assert!(fingerprint(&[0; 64]).is_none(), "no version prefix");
    }

    #[test]
    fn a_view_is_returned_only_for_the_same_fingerprint() {
        let views = HotViews::default();
        views.put("k", b"fp1".to_vec(), view(1));
        assert_eq!(views.get("k", b"fp1").map(|v| v.access.version), Some(1));
        assert!(views.get("k", b"fp2").is_none());
        assert!(views.get("other", b"fp1").is_none());
        views.put("k", b"fp2".to_vec(), view(2));
        assert_eq!(views.get("k", b"fp2").map(|v| v.access.version), Some(2));
        assert!(views.get("k", b"fp1").is_none());
        views.forget("k");
        assert!(views.get("k", b"fp2").is_none());
    }

    #[test]
    fn the_number_of_views_is_bounded() {
        let views = HotViews::default();
        for i in 0..CAPACITY + 10 {
            views.put(&format!("k{i}"), vec![1], view(1));
        }
        assert_eq!(views.len(), CAPACITY);
        assert!(views.get(&format!("k{}", CAPACITY + 9), &[1]).is_some(), "the newest is kept");
    }
}
