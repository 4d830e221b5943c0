//! The DBSC headers (RFC 9651 structured fields) and the JSON session instructions, as the
//! specification writes them and Chromium reads them (docs/DBSC-NOTES.md §1–2).

use actix_web::http::header::HeaderValue;
use serde_json::json;

use super::unquote;

/// The browser's name for the device session at refresh.
pub const SESSION_ID_HEADER: &str = "sec-secure-session-id";
/// Sent with a request the browser could not refresh for (`unreachable`, `server_error`,
/// `quota_exceeded`): why the bound cookie is missing.
pub const SKIPPED_HEADER: &str = "secure-session-skipped";

/// `(ES256 RS256);path="…";challenge="…"`: an inner list of the algorithms bff verifies, the
/// registration endpoint and the challenge. No `authorization`: the session cookie, which the
/// registration request carries, already says whose it is.
pub fn registration(path: &str, challenge: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("(ES256 RS256);path={};challenge={}", sf_string(path)?, sf_string(challenge)?)).ok()
}

/// `"<challenge>";id="<session id>"`.
pub fn challenge(challenge: &str, id: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{};id={}", sf_string(challenge)?, sf_string(id)?)).ok()
}

/// An RFC 9651 string of printable ASCII, `"` and `\` escaped; `None` for anything else (only
/// bff's own paths and identifiers are written, so this never happens for a valid config).
fn sf_string(value: &str) -> Option<String> {
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    Some(format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")))
}

/// `Sec-Secure-Session-Id` as Chromium sends it (bare) or as the specification writes it (an
/// RFC 9651 string): the identifier if it is one bff could have made.
pub fn parse_session_id(raw: &str) -> Option<&str> {
    let id = unquote(raw.trim());
    crate::crypto::is_random_id(id).then_some(id)
}

pub struct Instructions<'a> {
    pub id: &'a str,
    pub refresh_url: &'a str,
    pub origin: &'a str,
    pub host: &'a str,
    /// The frontend's root (`/`, or its path): everything under it is out of scope first.
    pub scope_root: &'a str,
    pub bound_paths: &'a [String],
    pub cookie_name: &'a str,
    pub cookie_attributes: &'a str,
}

/// The session instructions. The scope's rules are read last to first, the first that
/// matches deciding: everything of the frontend is excluded, then the bound paths included,
/// so the browser holds back (and refreshes for) only the calls that need the bound cookie —
/// the SPA's files and bff's sign-in pages are never delayed by a refresh.
pub fn instructions(i: Instructions<'_>) -> serde_json::Value {
    let mut rules = vec![json!({"type": "exclude", "domain": i.host, "path": i.scope_root})];
    rules.extend(i.bound_paths.iter().map(|path| json!({"type": "include", "domain": i.host, "path": path})));
    json!({
        "session_identifier": i.id,
        "refresh_url": i.refresh_url,
        "scope": {
            "origin": i.origin,
            "include_site": false,
            "scope_specification": rules,
        },
        "credentials": [{"type": "cookie", "name": i.cookie_name, "attributes": i.cookie_attributes}],
        "allowed_refresh_initiators": [],
    })
}

/// The answer that ends the browser's device session (`continue: false`).
pub fn ended(id: Option<&str>) -> serde_json::Value {
    match id {
        Some(id) => json!({"session_identifier": id, "continue": false}),
        None => json!({"continue": false}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_structured_field_strings() {
        let reg = registration("/auth/dbsc/register", "abc-_").unwrap();
        assert_eq!(reg, "(ES256 RS256);path=\"/auth/dbsc/register\";challenge=\"abc-_\"");
        assert_eq!(challenge("c1", "s1").unwrap(), "\"c1\";id=\"s1\"");
        assert_eq!(sf_string("a\"b\\c").as_deref(), Some("\"a\\\"b\\\\c\""));
        assert!(sf_string("naïve").is_none());
    }

    #[test]
    fn a_session_id_is_read_quoted_or_bare_and_must_be_one_bff_makes() {
        let id = crate::crypto::random_id();
        assert_eq!(parse_session_id(&id), Some(id.as_str()));
        assert_eq!(parse_session_id(&format!("\"{id}\"")), Some(id.as_str()));
        assert_eq!(parse_session_id("s1"), None);
        assert_eq!(parse_session_id(""), None);
    }

    #[test]
    fn ending_names_the_session_when_known() {
        assert_eq!(ended(Some("s1")), json!({"session_identifier": "s1", "continue": false}));
        assert_eq!(ended(None), json!({"continue": false}));
    }
}
