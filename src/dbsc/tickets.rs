//! What bff hands the browser and checks back without keeping anything: the challenges it asks
//! the device to sign, and the short-lived bound cookie. Both are MACs under a key derived from
//! `session.secret` (every instance has it; older secrets still verify after a rotation), over
//! the session they belong to, so a challenge or a cookie of one session is worth nothing in
//! another. Checking a bound cookie is one HMAC and a clock compare: no store command on the
//! proxy's path.
//!
//! A challenge's single use is the one thing that needs the store: its nonce is claimed there
//! once (`SET NX`) when a signed answer comes back — at registration and refresh only.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use secrecy::SecretString;

use crate::config::FrontendIdentity;
use crate::crypto;
use crate::session::SessionHandle;

const NONCE_LEN: usize = 16;
const EXPIRY_LEN: usize = 8;
const MAC_LEN: usize = 32;
const CHALLENGE_LEN: usize = NONCE_LEN + EXPIRY_LEN + MAC_LEN;
const COOKIE_LEN: usize = EXPIRY_LEN + MAC_LEN;

/// What a challenge may be answered for: one kind never stands for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Offered with a sign-in, for the session it started (no device session yet).
    Register,
    /// Asked at refresh, for one device session of one session.
    Refresh,
}

impl Purpose {
    fn tag(self) -> u8 {
        match self {
            Purpose::Register => b'r',
            Purpose::Refresh => b'f',
        }
    }
}

/// A challenge that checked out: its nonce, to claim once in the store until it would expire.
#[derive(Debug, PartialEq, Eq)]
pub struct Challenge {
    pub nonce: String,
    pub expires_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieCheck {
    Valid,
    Expired,
    /// Not one bff made for this session and device session (forged, another session's, or
    /// sealed with a secret no longer configured).
    Invalid,
}

/// The MAC keys, the current first.
#[derive(Clone)]
pub struct TicketKeys {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TicketKeys({} keys)", self.keys.len())
    }
}

impl TicketKeys {
    /// Bound to the frontend as its session cookie key is: another frontend's tickets fail.
    pub fn new(secrets: &[SecretString], frontend: &FrontendIdentity) -> TicketKeys {
        let purpose = format!("bff dbsc tickets of frontend {}", frontend.name);
        let keys =
            secrets.iter().map(|s| hmac::Key::new(hmac::HMAC_SHA256, &crypto::derive_key::<32>(s, &purpose))).collect();
        TicketKeys { keys }
    }

    fn current(&self) -> &hmac::Key {
        let Some(key) = self.keys.first() else { unreachable!("config validation guarantees at least one secret") };
        key
    }

    /// A fresh challenge for `purpose` of `handle` (and `device_session`, at refresh), valid
    /// until `expires_at`.
    pub fn challenge(&self, purpose: Purpose, handle: &SessionHandle, device_session: &str, expires_at: u64) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut nonce);
        let expiry = expires_at.to_be_bytes();
        let mac = hmac::sign(self.current(), &challenge_input(purpose, handle, device_session, &nonce, &expiry));
        let mut out = Vec::with_capacity(CHALLENGE_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&expiry);
        out.extend_from_slice(mac.as_ref());
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The challenge if it is one bff made for this purpose, session and device session and
    /// it has not expired at `now`; its single use is the caller's to claim.
    pub fn check_challenge(
        &self,
        raw: &str,
        purpose: Purpose,
        handle: &SessionHandle,
        device_session: &str,
        now: u64,
    ) -> Option<Challenge> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok().filter(|b| b.len() == CHALLENGE_LEN)?;
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let (expiry, mac) = rest.split_at(EXPIRY_LEN);
        let input = challenge_input(purpose, handle, device_session, nonce, expiry);
        let genuine = self.keys.iter().any(|key| hmac::verify(key, &input, mac).is_ok());
        let expires_at = u64::from_be_bytes(expiry.try_into().ok()?);
        (genuine && now <= expires_at).then(|| Challenge { nonce: URL_SAFE_NO_PAD.encode(nonce), expires_at })
    }

    /// The bound cookie's value for `handle`'s device session, valid until `expires_at`.
    pub fn bound_cookie(&self, handle: &SessionHandle, device_session: &str, expires_at: u64) -> String {
        let expiry = expires_at.to_be_bytes();
        let mac = hmac::sign(self.current(), &cookie_input(handle, device_session, &expiry));
        let mut out = Vec::with_capacity(COOKIE_LEN);
        out.extend_from_slice(&expiry);
        out.extend_from_slice(mac.as_ref());
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Whether `raw` is this device session's bound cookie, and live at `now`. `grace`: seconds
    /// past its expiry still taken (the browser drops it at its `Max-Age`; a call sent just
    /// before arrives just after).
    pub fn check_bound_cookie(
        &self,
        raw: &str,
        handle: &SessionHandle,
        device_session: &str,
        now: u64,
        grace: u64,
    ) -> CookieCheck {
        let Some(bytes) = URL_SAFE_NO_PAD.decode(raw).ok().filter(|b| b.len() == COOKIE_LEN) else {
            return CookieCheck::Invalid;
        };
        let (expiry, mac) = bytes.split_at(EXPIRY_LEN);
        let input = cookie_input(handle, device_session, expiry);
        if !self.keys.iter().any(|key| hmac::verify(key, &input, mac).is_ok()) {
            return CookieCheck::Invalid;
        }
        let Ok(expiry) = <[u8; EXPIRY_LEN]>::try_from(expiry) else { return CookieCheck::Invalid };
        if now > u64::from_be_bytes(expiry).saturating_add(grace) { CookieCheck::Expired } else { CookieCheck::Valid }
    }
}

fn challenge_input(
    purpose: Purpose,
    handle: &SessionHandle,
    device_session: &str,
    nonce: &[u8],
    expiry: &[u8],
) -> Vec<u8> {
    // The handle and device session id have fixed alphabets without `\0`: the separators make
    // the input unambiguous.
    [
        b"bff-dbsc-challenge-v1\0",
        &[purpose.tag(), 0][..],
        handle.as_str().as_bytes(),
        b"\0",
        device_session.as_bytes(),
        b"\0",
        nonce,
        expiry,
    ]
    .concat()
}

fn cookie_input(handle: &SessionHandle, device_session: &str, expiry: &[u8]) -> Vec<u8> {
    [b"bff-dbsc-bound-cookie-v1\0", handle.as_str().as_bytes(), b"\0", device_session.as_bytes(), b"\0", expiry]
        .concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionId;

    fn keys(secret: &str) -> TicketKeys {
        let frontend =
            FrontendIdentity { name: "default".into(), hosts: Vec::new(), path: String::new(), implicit: true };
        TicketKeys::new(&[SecretString::from(secret.repeat(32))], &frontend)
    }

    #[test]
    fn a_challenge_checks_for_its_purpose_session_and_device_session_until_it_expires() {
        let (k, h, other) = (keys("a"), SessionId::generate().handle(), SessionId::generate().handle());
        let c = k.challenge(Purpose::Refresh, &h, "dev1", 100);
        let checked = k.check_challenge(&c, Purpose::Refresh, &h, "dev1", 100).unwrap();
        assert_eq!(checked.expires_at, 100);
        assert_eq!(checked.nonce.len(), 22);
        assert!(k.check_challenge(&c, Purpose::Refresh, &h, "dev1", 101).is_none(), "expired");
        assert!(k.check_challenge(&c, Purpose::Register, &h, "dev1", 100).is_none(), "another purpose");
        assert!(k.check_challenge(&c, Purpose::Refresh, &other, "dev1", 100).is_none(), "another session");
        assert!(k.check_challenge(&c, Purpose::Refresh, &h, "dev2", 100).is_none(), "another device session");
        assert!(keys("b").check_challenge(&c, Purpose::Refresh, &h, "dev1", 100).is_none(), "another secret");
        assert_ne!(c, k.challenge(Purpose::Refresh, &h, "dev1", 100), "each is new");
    }

    #[test]
    fn a_challenge_with_its_expiry_changed_is_refused() {
        let (k, h) = (keys("a"), SessionId::generate().handle());
        let c = k.challenge(Purpose::Register, &h, "", 100);
        let mut bytes = URL_SAFE_NO_PAD.decode(&c).unwrap();
        bytes[NONCE_LEN + EXPIRY_LEN - 1] = 0xff;
        assert!(k.check_challenge(&URL_SAFE_NO_PAD.encode(bytes), Purpose::Register, &h, "", 100).is_none());
        for junk in ["", "not base64!", "AAAA"] {
            assert!(k.check_challenge(junk, Purpose::Register, &h, "", 0).is_none());
        }
    }

    #[test]
    fn a_bound_cookie_is_valid_for_its_session_until_its_expiry_and_grace() {
        let (k, h, other) = (keys("a"), SessionId::generate().handle(), SessionId::generate().handle());
        let cookie = k.bound_cookie(&h, "dev1", 100);
        assert_eq!(k.check_bound_cookie(&cookie, &h, "dev1", 100, 0), CookieCheck::Valid);
        assert_eq!(k.check_bound_cookie(&cookie, &h, "dev1", 105, 5), CookieCheck::Valid);
        assert_eq!(k.check_bound_cookie(&cookie, &h, "dev1", 106, 5), CookieCheck::Expired);
        assert_eq!(k.check_bound_cookie(&cookie, &other, "dev1", 100, 0), CookieCheck::Invalid);
        assert_eq!(k.check_bound_cookie(&cookie, &h, "dev2", 100, 0), CookieCheck::Invalid);
        assert_eq!(keys("b").check_bound_cookie(&cookie, &h, "dev1", 100, 0), CookieCheck::Invalid);
        // A later expiry written in by hand breaks the MAC.
        let mut bytes = URL_SAFE_NO_PAD.decode(&cookie).unwrap();
        bytes[0] = 1;
        assert_eq!(k.check_bound_cookie(&URL_SAFE_NO_PAD.encode(bytes), &h, "dev1", 100, 0), CookieCheck::Invalid);
        assert_eq!(k.check_bound_cookie("", &h, "dev1", 0, 0), CookieCheck::Invalid);
    }

    #[test]
    fn tickets_made_before_a_secret_rotation_still_check() {
        let frontend =
            FrontendIdentity { name: "default".into(), hosts: Vec::new(), path: String::new(), implicit: true };
        let (old, new) = (SecretString::from("o".repeat(32)), SecretString::from("n".repeat(32)));
        let before = TicketKeys::new(std::slice::from_ref(&old), &frontend);
        let after = TicketKeys::new(&[new, old], &frontend);
        let h = SessionId::generate().handle();
        let cookie = before.bound_cookie(&h, "d", 10);
        assert_eq!(after.check_bound_cookie(&cookie, &h, "d", 10, 0), CookieCheck::Valid);
    }
}
