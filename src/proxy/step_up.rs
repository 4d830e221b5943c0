//! Step-up authentication (RFC 9470): an upstream's 401 saying the user's authentication is
//! not strong or recent enough, and a route's own requirement checked before the upstream is
//! called. Either way the SPA is told what to sign in with (`acr_values`, `max_age`), and no
//! refresh is tried: a refreshed token carries the same authentication, so it would be refused
//! the same way and only cost the provider a token request.

use crate::tokens::HotToken;

/// The `error` of an RFC 9470 challenge.
const INSUFFICIENT: &str = "insufficient_user_authentication";
/// A `WWW-Authenticate` value longer than this is not read (a challenge is a few hundred bytes;
/// this bounds the work an upstream can make bff do per answer).
const MAX_HEADER_LEN: usize = 4096;
/// At most this many `WWW-Authenticate` fields are read per answer.
const MAX_HEADERS: usize = 8;
/// What `/auth/login` takes back (see `LoginOptions::read`), so the SPA can pass the values on
/// as they are: at most 8 words of at most 128 bytes, 512 bytes in all.
const MAX_ACR_VALUES_LEN: usize = 512;
const MAX_ACR_WORDS: usize = 8;
const MAX_ACR_WORD_LEN: usize = 128;
/// Ten years, as `/auth/login` takes it; beyond that it is a mistake, not a policy.
const MAX_AGE_LIMIT: u64 = 10 * 365 * 24 * 3600;

/// What the SPA must sign in with again: `acr_values` (space-separated, as the upstream or the
/// route gave them) and `max_age` (seconds). Either may be absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepUp {
    pub acr_values: Option<String>,
    pub max_age: Option<u64>,
}

/// A route's up-front requirement (`api[].acr_values`, `api[].max_age`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirement {
    /// The session's `acr` must be one of these (none: any).
    pub acr_values: Vec<String>,
    /// The session's `auth_time` must be at most this many seconds old.
    pub max_age: Option<u64>,
}

impl Requirement {
    pub fn is_empty(&self) -> bool {
        self.acr_values.is_empty() && self.max_age.is_none()
    }

    /// `Some` with what to sign in with when the session's authentication (`view`'s `acr` and
    /// `auth_time`) does not satisfy the route at `now` (unix seconds). A session without
    /// `auth_time` (a provider that does not report it, or a set written before bff kept it)
    /// does not satisfy a `max_age`, as OpenID Connect Core §3.1.2.1 makes the claim required
    /// when `max_age` is asked.
    pub fn unmet_by(&self, view: &HotToken, now: u64) -> Option<StepUp> {
        let acr_ok = self.acr_values.is_empty()
            || view.acr.as_deref().is_some_and(|acr| self.acr_values.iter().any(|wanted| wanted == acr));
        let age_ok = match self.max_age {
            None => true,
            Some(max_age) => view.auth_time.is_some_and(|t| now <= t.saturating_add(max_age)),
        };
        (!(acr_ok && age_ok)).then(|| StepUp {
            acr_values: (!self.acr_values.is_empty()).then(|| self.acr_values.join(" ")),
            max_age: self.max_age,
        })
    }
}

/// A step-up asked for by an upstream's 401: the first `Bearer` (or `DPoP`, RFC 9449 §7.1)
/// challenge among `headers`' `WWW-Authenticate` fields whose `error` is
/// `insufficient_user_authentication`, with its `acr_values` and `max_age` where they are
/// valid (a value that is not is dropped, never reflected to the SPA).
pub fn asked_by(headers: &hyper::HeaderMap) -> Option<StepUp> {
    headers
        .get_all(hyper::header::WWW_AUTHENTICATE)
        .iter()
        .take(MAX_HEADERS)
        .filter(|v| v.len() <= MAX_HEADER_LEN)
        .find_map(|v| step_up_in(v.as_bytes()))
}

/// The step-up in one `WWW-Authenticate` field value, if one of its challenges asks for it.
fn step_up_in(value: &[u8]) -> Option<StepUp> {
    challenges(value).into_iter().find_map(|c| {
        let ours = c.scheme.eq_ignore_ascii_case("bearer") || c.scheme.eq_ignore_ascii_case("dpop");
        if !ours || c.param("error") != Some(INSUFFICIENT) {
            return None;
        }
        Some(StepUp {
            acr_values: c.param("acr_values").filter(|v| valid_acr_values(v)).map(String::from),
            max_age: c.param("max_age").and_then(valid_max_age),
        })
    })
}

/// `acr_values` as `/auth/login` would take them back.
fn valid_acr_values(v: &str) -> bool {
    let words: Vec<&str> = v.split(' ').filter(|w| !w.is_empty()).collect();
    v.len() <= MAX_ACR_VALUES_LEN
        && !words.is_empty()
        && words.len() <= MAX_ACR_WORDS
        && v.bytes().all(|b| b == b' ' || (b.is_ascii_graphic() && b != b'"' && b != b'\\'))
        && words.iter().all(|w| w.len() <= MAX_ACR_WORD_LEN)
}

/// `max_age`: digits only (no sign, no space), within what `/auth/login` takes.
fn valid_max_age(v: &str) -> Option<u64> {
    if v.is_empty() || v.len() > 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().filter(|n| *n <= MAX_AGE_LIMIT)
}

/// One challenge: its scheme and its `name=value` parameters (names lower-case, values with
/// quoted-string escapes removed).
#[derive(Debug, Default)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    /// The first value of `name` (a repeated parameter is an error of the sender; the first
    /// one counts).
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// RFC 9110 §7.1 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The challenges of a `WWW-Authenticate` value (RFC 9110 §11.6.1:
/// `#( auth-scheme [ 1*SP ( token68 / #auth-param ) ] )`). A field may hold several challenges,
/// separated by commas like their parameters: a bare token starts a new challenge, a
/// `name=value` belongs to the one before. What does not parse (a `token68`, stray bytes) is
/// skipped up to the next comma, so one malformed challenge cannot hide a later one; a
/// parameter before any scheme is dropped. Linear in the length, no recursion.
fn challenges(value: &[u8]) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let mut i = 0;
    let n = value.len();
    let skip_ws = |i: &mut usize| {
        while *i < n && (value[*i] == b' ' || value[*i] == b'\t') {
            *i += 1;
        }
    };
    // Up to the next comma outside a quoted string (or the end).
    let skip_item = |i: &mut usize| {
        let mut quoted = false;
        while *i < n {
            match value[*i] {
                b'\\' if quoted => *i += 1,
                b'"' => quoted = !quoted,
                b',' if !quoted => break,
                _ => {}
            }
            *i += 1;
        }
    };
    while i < n {
        skip_ws(&mut i);
        if i < n && value[i] == b',' {
            i += 1;
            continue;
        }
        let start = i;
        while i < n && is_tchar(value[i]) {
            i += 1;
        }
        if i == start {
            skip_item(&mut i);
            continue;
        }
        let token = String::from_utf8_lossy(&value[start..i]).into_owned();
        let after_token = i;
        skip_ws(&mut i);
        if i < n && value[i] == b'=' {
            // `name = value`, unless it is the padding of a token68 (`abc==`).
            i += 1;
            skip_ws(&mut i);
            let param_value = if i < n && value[i] == b'"' {
                quoted_string(value, &mut i)
            } else {
                let v = i;
                while i < n && is_tchar(value[i]) {
                    i += 1;
                }
                (i > v).then(|| String::from_utf8_lossy(&value[v..i]).into_owned())
            };
            skip_ws(&mut i);
            let ends_well = i >= n || value[i] == b',';
            match (param_value, out.last_mut()) {
                (Some(v), Some(challenge)) if ends_well => challenge.params.push((token.to_ascii_lowercase(), v)),
                _ => skip_item(&mut i),
            }
        } else {
            // A new challenge; a token68 may follow its scheme (`Basic abc==`), skipped here.
            out.push(Challenge { scheme: token, params: Vec::new() });
            i = after_token;
            skip_ws(&mut i);
            let next = i;
            while i < n && (is_tchar(value[i]) || value[i] == b'/') {
                i += 1;
            }
            let mut j = i;
            skip_ws(&mut j);
            let is_param = (j < n && value[j] == b'=' && !value[i..j].is_empty())
                || (i < n && value[i] == b'=' && !next_is_padding(value, i));
            if is_param || i == next {
                // A parameter (or nothing) follows: read it on the next turn.
                i = next;
            } else {
                skip_item(&mut i);
            }
        }
    }
    out
}

/// At `i` (an `=`): whether it is a token68's padding (`=` signs up to a comma or the end)
/// rather than the `=` of a parameter.
fn next_is_padding(value: &[u8], mut i: usize) -> bool {
    while i < value.len() && value[i] == b'=' {
        i += 1;
    }
    while i < value.len() && (value[i] == b' ' || value[i] == b'\t') {
        i += 1;
    }
    i >= value.len() || value[i] == b','
}

/// A quoted-string at `*i` (its opening quote), unescaped, read up to its closing quote
/// whatever it holds (so that what follows is read as it should be); `None` when it is not
/// closed, holds a byte a quoted-string may not (control characters), or is not UTF-8.
fn quoted_string(value: &[u8], i: &mut usize) -> Option<String> {
    let mut out = Vec::new();
    let mut valid = true;
    *i += 1;
    while *i < value.len() {
        let b = value[*i];
        *i += 1;
        match b {
            b'"' => return String::from_utf8(out).ok().filter(|_| valid),
            b'\\' => {
                let escaped = *value.get(*i)?;
                *i += 1;
                out.push(escaped);
            }
            b'\t' | b' '..=b'~' | 0x80..=0xff => out.push(b),
            _ => valid = false,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(values: &[&str]) -> hyper::HeaderMap {
        let mut map = hyper::HeaderMap::new();
        for v in values {
            if let Ok(v) = hyper::header::HeaderValue::from_bytes(v.as_bytes()) {
                map.append(hyper::header::WWW_AUTHENTICATE, v);
            }
        }
        map
    }

    fn asked(values: &[&str]) -> Option<StepUp> {
        asked_by(&header(values))
    }

    fn step_up(acr: Option<&str>, max_age: Option<u64>) -> Option<StepUp> {
        Some(StepUp { acr_values: acr.map(String::from), max_age })
    }

    #[test]
    fn the_rfc_9470_examples_are_read() {
        assert_eq!(
            asked(&[
                r#"Bearer error="insufficient_user_authentication", error_description="A different authentication level is required", acr_values="myACR""#
            ]),
            step_up(Some("myACR"), None)
        );
        assert_eq!(
            asked(&[
                r#"Bearer error="insufficient_user_authentication", error_description="More recent authentication is required", max_age="5""#
            ]),
            step_up(None, Some(5))
        );
        assert_eq!(
            asked(&[r#"bearer ERROR=insufficient_user_authentication, acr_values="a b", max_age=300"#]),
            step_up(Some("a b"), Some(300)),
            "scheme and names are case-insensitive; token values need no quotes"
        );
        assert_eq!(
            asked(&[r#"DPoP algs="ES256", error="insufficient_user_authentication", acr_values="x""#]),
            step_up(Some("x"), None)
        );
    }

    #[test]
    fn it_is_found_among_several_challenges_and_fields() {
        assert_eq!(
            asked(&[r#"Basic realm="x", Bearer realm="api", error="insufficient_user_authentication", max_age=10"#]),
            step_up(None, Some(10))
        );
        assert_eq!(
            asked(&["Basic dXNlcjpwYXNz==, Bearer error=\"insufficient_user_authentication\", acr_values=\"m\""]),
            step_up(Some("m"), None),
            "a token68 before it"
        );
        assert_eq!(
            asked(&["Newauth realm=\"apps\", type=1", r#"Bearer error="insufficient_user_authentication""#]),
            step_up(None, None)
        );
        assert_eq!(
            asked(&[r#"Bearer realm="a,b\"c", error="insufficient_user_authentication", acr_values="q""#]),
            step_up(Some("q"), None),
            "commas and escaped quotes inside a quoted value"
        );
    }

    #[test]
    fn other_errors_and_schemes_are_no_step_up() {
        for value in [
            r#"Bearer error="invalid_token""#,
            r#"Basic error="insufficient_user_authentication""#,
            r#"Bearer error_description="insufficient_user_authentication""#,
            r#"error="insufficient_user_authentication""#,
            r#"Bearer realm="insufficient_user_authentication""#,
            r#"Bearer error="insufficient_user_authentication"#,
            "",
            ",,,,",
            "Bearer",
        ] {
            assert_eq!(asked(&[value]), None, "{value}");
        }
    }

    #[test]
    fn invalid_values_are_dropped_not_reflected() {
        let with = |acr: &str, age: &str| {
            asked(&[&format!(r#"Bearer error="insufficient_user_authentication", acr_values={acr}, max_age={age}"#)])
        };
        assert_eq!(with(r#""<script>\"x""#, "-1"), step_up(None, None));
        assert_eq!(with(&format!("\"{}\"", "a".repeat(129)), "1e3"), step_up(None, None));
        assert_eq!(with(&format!("\"{}\"", ["a"; 9].join(" ")), "99999999999999999999"), step_up(None, None));
        assert_eq!(with("\"\"", "\"\""), step_up(None, None));
        assert_eq!(with("\"   \"", "\" 5\""), step_up(None, None));
        assert_eq!(
            step_up_in(b"Bearer error=insufficient_user_authentication, acr_values=\"a\x7f\", max_age=\"5\""),
            step_up(None, Some(5)),
            "a control character drops its value only"
        );
        assert_eq!(with("\"ok\"", &(MAX_AGE_LIMIT + 1).to_string()), step_up(Some("ok"), None));
    }

    #[test]
    fn hostile_inputs_never_panic_and_are_bounded() {
        let long = format!(r#"Bearer error="insufficient_user_authentication", acr_values="{}""#, "a".repeat(5000));
        assert_eq!(asked(&[&long]), None, "a field past the bound is not read");
        for value in [
            "\"",
            "\\",
            "Bearer \"",
            "Bearer error=\"\\",
            "Bearer error=",
            "Bearer error==",
            "Bearer =x",
            "= = = ,",
            "Bearer error=\"a\" junk, x",
            "Bearer \t\t error \t = \t \"insufficient_user_authentication\"",
            "Bearer a==b==c, ===, \"\"\"",
            "\u{1}\u{2}Bearer",
        ] {
            let _ = step_up_in(value.as_bytes());
        }
        let many = "x=1, ".repeat(800);
        assert_eq!(step_up_in(many.as_bytes()), None);
        assert_eq!(
            step_up_in(b"Bearer error=\"insufficient_user_authentication\", acr_values=\"\xff\xfe\""),
            Some(StepUp::default()),
            "bytes that are not ASCII are no acr_values"
        );
        // Whitespace around `=` (BWS) is allowed.
        assert_eq!(step_up_in(b"Bearer error = insufficient_user_authentication"), Some(StepUp::default()));
        let fields: Vec<String> = (0..20).map(|_| "Basic realm=\"x\"".to_string()).collect();
        let mut refs: Vec<&str> = fields.iter().map(String::as_str).collect();
        refs.push(r#"Bearer error="insufficient_user_authentication""#);
        assert_eq!(asked(&refs), None, "only the first fields are read");
    }

    #[test]
    fn a_requirement_is_met_by_the_sessions_acr_and_auth_time() {
        let view = |acr: Option<&str>, auth_time: Option<u64>| {
            let mut v = crate::tokens::HotToken::for_tests();
            v.acr = acr.map(std::sync::Arc::from);
            v.auth_time = auth_time;
            v
        };
        let req = Requirement { acr_values: vec!["mfa".into(), "hwk".into()], max_age: None };
        assert_eq!(req.unmet_by(&view(Some("mfa"), None), 100), None);
        assert_eq!(req.unmet_by(&view(Some("pwd"), None), 100), step_up(Some("mfa hwk"), None));
        assert_eq!(req.unmet_by(&view(None, None), 100), step_up(Some("mfa hwk"), None));
        let req = Requirement { acr_values: vec![], max_age: Some(60) };
        assert_eq!(req.unmet_by(&view(None, Some(100)), 160), None);
        assert_eq!(req.unmet_by(&view(None, Some(100)), 161), step_up(None, Some(60)));
        assert_eq!(req.unmet_by(&view(None, None), 100), step_up(None, Some(60)), "no auth_time: not recent");
        assert!(Requirement::default().is_empty());
        assert_eq!(Requirement::default().unmet_by(&view(None, None), 0), None);
    }
}
