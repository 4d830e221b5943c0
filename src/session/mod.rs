//! Sessions: the secret session id in an encrypted HttpOnly cookie, the key layout in the store,
//! the cookie policy, and the actix-session store adapter.
//!
//! The cookie carries only a random 256-bit session id, encrypted and authenticated with a key
//! derived from `session.secret` (actix-session's private cookie). Store keys are built from a
//! hash of that id (the "handle"), so a copy of the store does not hand out cookie values, and
//! every key of one session shares a `{handle}` hash tag (one Redis Cluster slot).

mod cookie;
mod index;
mod meta;
mod pending;
mod store;

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use crate::crypto;

pub use cookie::{CookiePolicy, Resealed, SessionCookie, cookie_pairs};
pub use index::SessionIndex;
pub use meta::{Device, SessionMeta, network_of, summarize_user_agent};
pub use pending::{PENDING_LOGIN_TTL, PendingLogins};
pub use store::{SessionEntries, SessionLifetime, SessionStoreAdapter, SignedIn, now_unix};

/// The secret session id. Its `Debug` is redacted; it is only ever written into the cookie.
#[derive(Clone)]
pub struct SessionId(SecretString);

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId([redacted])")
    }
}

impl SessionId {
    pub fn generate() -> SessionId {
        SessionId(SecretString::from(crypto::random_token()))
    }

    /// Accepts what `generate` produces and nothing else, so a forged or legacy value is ignored.
    pub fn parse(raw: &str) -> Option<SessionId> {
        crypto::is_random_token(raw).then(|| SessionId(SecretString::from(raw.to_string())))
    }

    pub fn handle(&self) -> SessionHandle {
        let digest = crypto::digest(self.0.expose_secret());
        SessionHandle(Arc::from(&digest[..22]))
    }

    /// # Security Warning
    /// The raw id is a bearer credential: only the cookie writer may see it.
    pub(crate) fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// A public name for a session (a hash of its id): store keys, logs, `/auth/user`'s `sid`.
/// Shared rather than owned: every API call clones it (the cookie cache's hit, the admission's
/// per-session count) and a clone should not allocate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionHandle(Arc<str>);

impl SessionHandle {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Enough to correlate log lines, too little to name a store key.
    pub fn short(&self) -> &str {
        &self.0[..8]
    }

    pub fn from_stored(raw: &str) -> Option<SessionHandle> {
        SessionHandle::is_well_formed(raw).then(|| SessionHandle(Arc::from(raw)))
    }

    fn is_well_formed(raw: &str) -> bool {
        raw.len() == 22 && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
}

/// After the base prefix, what starts a named frontend's keys: `bff:fe:shop:{…}:tokens`.
pub const FRONTEND_KEYS: &str = "fe:";

/// Where things live in the store.
#[derive(Clone, Debug)]
pub struct KeyLayout {
    prefix: String,
}

impl KeyLayout {
    pub fn new(prefix: &str) -> KeyLayout {
        KeyLayout { prefix: prefix.to_string() }
    }

    pub fn session(&self, h: &SessionHandle) -> String {
        format!("{}{{{}}}:session", self.prefix, h.0)
    }

    pub fn tokens(&self, h: &SessionHandle) -> String {
        format!("{}{{{}}}:tokens", self.prefix, h.0)
    }

    /// The session handle inside a token-set key (an invalidation names keys, not sessions).
    /// A layout of the base prefix also reads the keys of every frontend (`fe:<name>:` after it).
    pub fn session_of_tokens_key<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        let rest = match rest.strip_prefix(FRONTEND_KEYS) {
            Some(named) => named.split_once(':').map(|(_, after)| after)?,
            None => rest,
        };
        let handle = rest.strip_prefix('{')?.strip_suffix("}:tokens")?;
        SessionHandle::is_well_formed(handle).then_some(handle)
    }

    pub fn refresh_lock(&self, h: &SessionHandle) -> String {
        format!("{}{{{}}}:lock", self.prefix, h.0)
    }

    /// What the user is shown of the session: its device, when it started (sealed).
    pub fn session_meta(&self, h: &SessionHandle) -> String {
        format!("{}{{{}}}:meta", self.prefix, h.0)
    }

    /// When the session was last used, to the minute (sealed): written with each extension of
    /// its idle timeout, which happens at most once a minute.
    pub fn session_seen(&self, h: &SessionHandle) -> String {
        format!("{}{{{}}}:seen", self.prefix, h.0)
    }

    /// A DBSC challenge of the session that was answered, by its nonce: kept until the challenge
    /// would have expired, so it is answered once.
    pub fn dbsc_challenge(&self, h: &SessionHandle, nonce: &str) -> String {
        format!("{}{{{}}}:dbsc:{nonce}", self.prefix, h.0)
    }

    /// Every key that belongs to one session (one hash slot).
    pub fn all_of_session(&self, h: &SessionHandle) -> Vec<String> {
        vec![self.session(h), self.tokens(h), self.refresh_lock(h), self.session_meta(h), self.session_seen(h)]
    }

    /// A pending login, by a hash of its `state`.
    pub fn pending_login(&self, state: &str) -> String {
        self.pending_login_by_hash(&crypto::digest(state))
    }

    pub fn pending_login_by_hash(&self, state_hash: &str) -> String {
        format!("{}login:{state_hash}", self.prefix)
    }

    /// The pending logins started by one browser (by a hash of its login cookie).
    pub fn pending_logins_of_browser(&self, binding_hash: &str) -> String {
        format!("{}login-browser:{binding_hash}", self.prefix)
    }

    pub fn sessions_of_sid(&self, sid: &str) -> String {
        format!("{}by-sid:{}", self.prefix, crypto::digest(sid))
    }

    pub fn sessions_of_sub(&self, sub: &str) -> String {
        format!("{}by-sub:{}", self.prefix, crypto::digest(sub))
    }

    pub fn logout_token_jti(&self, jti: &str) -> String {
        format!("{}logout-jti:{}", self.prefix, crypto::digest(jti))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_stable_hashes_and_keys_share_a_hash_tag() {
        let id = SessionId::generate();
        assert_eq!(id.handle(), id.handle());
        assert_ne!(id.handle(), SessionId::generate().handle());
        let layout = KeyLayout::new("bff:");
        let h = id.handle();
        assert_eq!(layout.session_of_tokens_key(&layout.tokens(&h)), Some(h.as_str()));
        assert_eq!(layout.session_of_tokens_key(&layout.session(&h)), None);
        assert_eq!(layout.session_of_tokens_key("bff:{short}:tokens"), None);
        let shop = KeyLayout::new("bff:fe:shop:");
        assert_eq!(layout.session_of_tokens_key(&shop.tokens(&h)), Some(h.as_str()));
        assert_eq!(shop.session_of_tokens_key(&layout.tokens(&h)), None);
        for key in layout.all_of_session(&h) {
            assert!(key.starts_with(&format!("bff:{{{}}}:", h.as_str())), "{key}");
            assert!(!key.contains(id.expose()));
        }
        assert!(format!("{id:?}").contains("redacted"));
    }

    #[test]
    fn only_well_formed_ids_parse() {
        let id = SessionId::generate();
        assert!(SessionId::parse(id.expose()).is_some());
        assert!(SessionId::parse("short").is_none());
        assert!(SessionId::parse(&"a".repeat(42)).is_none());
        assert!(SessionId::parse(&format!("{}=", &"a".repeat(42))).is_none());
    }
}
