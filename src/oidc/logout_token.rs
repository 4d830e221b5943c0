//! OIDC Back-Channel Logout 1.0 §2.6: validating a logout token.

use serde::Deserialize;
use serde_json::Value;

use super::jwks::{Expect, JwksVerifier, JwtError};
use super::{Oidc, OidcError};

const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Clock difference tolerated on `iat`/`exp`.
const LEEWAY_SECS: u64 = 30;

/// Who to log out, from a valid logout token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    /// Unix seconds; a replayed `jti` must be refused until then.
    pub exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LogoutTokenError {
    /// The token is not a valid logout token for us: 400, with no detail to the caller.
    #[error("invalid logout token: {0}")]
    Invalid(String),
    /// We cannot check it now (no metadata, keys unreachable): 503.
    #[error(transparent)]
    Unavailable(#[from] OidcError),
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    sid: Option<String>,
    jti: Option<String>,
    iat: Option<u64>,
    exp: Option<u64>,
    events: Option<Value>,
    nonce: Option<Value>,
}

impl Oidc {
    /// The verifier for logout tokens (and signed userinfo answers), made from the discovered
    /// JWKS URI on first use.
    pub(super) fn logout_verifier(&self) -> Result<std::sync::Arc<JwksVerifier>, OidcError> {
        let provider = self.provider()?;
        let mut slot = self.logout_verifier.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some((uri, verifier)) if *uri == provider.jwks_uri => Ok(std::sync::Arc::clone(verifier)),
            _ => {
                let verifier = std::sync::Arc::new(JwksVerifier::new(self.http.clone(), provider.jwks_uri.clone()));
                *slot = Some((provider.jwks_uri.clone(), std::sync::Arc::clone(&verifier)));
                Ok(verifier)
            }
        }
    }

    pub async fn verify_logout_token(&self, jwt: &str) -> Result<LogoutRequest, LogoutTokenError> {
        let verifier = self.logout_verifier()?;
        let expect = Expect {
            issuer: self.issuer.as_str(),
            audience: self.client_id.as_str(),
            leeway_secs: LEEWAY_SECS,
            required: &["iss", "aud", "iat", "exp"],
            // OIDC Back-Channel Logout §2.4 recommends explicit typing; untyped and plain `JWT`
            // tokens are what most providers send, so those pass too. Any other type (an ID or
            // access token) does not.
            types: Some(&["logout+jwt", "application/logout+jwt", "JWT"]),
        };
        let claims: Claims = verifier.verify(jwt, &expect).await.map_err(|e| match e {
            JwtError::KeysUnavailable(e) => LogoutTokenError::Unavailable(OidcError::Keys(e)),
            other => LogoutTokenError::Invalid(crate::telemetry::error_chain(&other)),
        })?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        check_claims(claims, now)
    }
}

/// How old a logout token may be when it arrives: a provider delivers it at once, and retries
/// a failed delivery within minutes.
const MAX_AGE_SECS: u64 = 600;

fn check_claims(claims: Claims, now: u64) -> Result<LogoutRequest, LogoutTokenError> {
    let invalid = |why: &str| Err(LogoutTokenError::Invalid(why.to_string()));
    let is_event = claims.events.as_ref().and_then(|e| e.get(BACKCHANNEL_EVENT)).is_some_and(Value::is_object);
    if !is_event {
        return invalid("no back-channel logout event");
    }
    if claims.nonce.is_some() {
        // A nonce marks an ID token: one must never be accepted as a logout token.
        return invalid("carries a nonce");
    }
    if claims.sub.is_none() && claims.sid.is_none() {
        return invalid("neither sub nor sid");
    }
    let Some(jti) = claims.jti.filter(|j| !j.is_empty()) else { return invalid("no jti") };
    let (Some(iat), Some(exp)) = (claims.iat, claims.exp) else { return invalid("no iat or exp") };
    if iat > now + LEEWAY_SECS {
        return invalid("issued in the future");
    }
    if iat + MAX_AGE_SECS + LEEWAY_SECS < now {
        return invalid("issued too long ago");
    }
    Ok(LogoutRequest { sub: claims.sub, sid: claims.sid, jti, exp })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn claims(v: Value) -> Claims {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> Value {
        json!({"sub": "u", "sid": "s", "jti": "j", "iat": NOW, "exp": NOW + 60, "events": {BACKCHANNEL_EVENT: {}}})
    }

    #[test]
    fn a_well_formed_logout_token_names_who_to_log_out() {
        let r = check_claims(claims(base()), NOW).unwrap();
        assert_eq!((r.sub.as_deref(), r.sid.as_deref(), r.jti.as_str(), r.exp), (Some("u"), Some("s"), "j", NOW + 60));
    }

    #[test]
    fn malformed_logout_tokens_are_refused() {
        type Spoil = Box<dyn Fn(&mut serde_json::Map<String, Value>)>;
        let cases: Vec<(&str, Spoil)> = vec![
            ("missing events", Box::new(|m| drop(m.remove("events")))),
            ("other event", Box::new(|m| drop(m.insert("events".into(), json!({"urn:other": {}}))))),
            ("event not an object", Box::new(|m| drop(m.insert("events".into(), json!({BACKCHANNEL_EVENT: "x"}))))),
            ("nonce", Box::new(|m| drop(m.insert("nonce".into(), json!("n"))))),
            (
                "no sub nor sid",
                Box::new(|m| {
                    m.remove("sub");
                    m.remove("sid");
                }),
            ),
            ("no jti", Box::new(|m| drop(m.remove("jti")))),
            ("no iat", Box::new(|m| drop(m.remove("iat")))),
            ("iat in the future", Box::new(|m| drop(m.insert("iat".into(), json!(NOW + LEEWAY_SECS + 1))))),
            ("iat too old", Box::new(|m| drop(m.insert("iat".into(), json!(NOW - MAX_AGE_SECS - LEEWAY_SECS - 1))))),
        ];
        for (what, spoil) in cases {
            let mut v = base();
            if let Some(m) = v.as_object_mut() {
                spoil(m);
            }
            assert!(check_claims(claims(v), NOW).is_err(), "{what}");
        }
        let mut only_sub = base();
        only_sub.as_object_mut().map(|m| m.remove("sid"));
        assert!(check_claims(claims(only_sub), NOW).is_ok());
        let mut slightly_late = base();
        slightly_late.as_object_mut().map(|m| m.insert("iat".into(), json!(NOW - MAX_AGE_SECS)));
        assert!(check_claims(claims(slightly_late), NOW).is_ok());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn maybe<T: Strategy>(s: T) -> impl Strategy<Value = Option<T::Value>> {
        prop::option::of(s)
    }

    proptest! {
        #![proptest_config(crate::prop::config())]

        /// Any claims, any times: no panic, and accepted only as §2.6 says.
        #[test]
        fn claims_are_checked_without_panic(
            sub in maybe("[a-z]{0,3}"),
            sid in maybe("[a-z]{0,3}"),
            jti in maybe("[a-z]{0,3}"),
            iat in maybe(any::<u64>()),
            exp in maybe(any::<u64>()),
            event in prop_oneof![Just(json!({BACKCHANNEL_EVENT: {}})), Just(json!({BACKCHANNEL_EVENT: 1})), Just(json!({})), Just(json!("x"))],
            nonce in any::<bool>(),
            now in 0u64..4_000_000_000,
        ) {
            let claims = Claims {
                sub: sub.clone(),
                sid: sid.clone(),
                jti: jti.clone(),
                iat,
                exp,
                events: Some(event.clone()),
                nonce: nonce.then(|| json!("n")),
            };
            let accepted = check_claims(claims, now).is_ok();
            let expected = event.get(BACKCHANNEL_EVENT).is_some_and(Value::is_object)
                && !nonce
                && (sub.is_some() || sid.is_some())
                && jti.is_some_and(|j| !j.is_empty())
                && exp.is_some()
                && iat.is_some_and(|iat| iat <= now + LEEWAY_SECS && iat + MAX_AGE_SECS + LEEWAY_SECS >= now);
            prop_assert_eq!(accepted, expected);
        }
    }
}
