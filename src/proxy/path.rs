//! Mapping `{prefix}/rest?query` onto `{upstream}/rest?query` without ever leaving the upstream's
//! base path: the rest is percent-decoded once, dot segments are resolved, and a path that would
//! climb above the prefix, or that hides a slash or backslash in an escape, is refused.
//!
//! Upstreams read paths in their own ways, so what one of them could take for a dot segment is one
//! here too: a `;` path parameter does not hide it (`..;x` and `.;` are `..` and `.` to servlet
//! containers), and a segment that a second decoding would turn into a dot segment or a separator
//! (`%252e%252e`, `%252f`) is refused, for upstreams that decode again.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use url::Url;

/// What may stand unescaped in a path segment (RFC 3986 pchar); the rest is re-encoded.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'%')
    .add(b'\\')
    .add(b'^')
    .add(b'|')
    .add(b'[')
    .add(b']');

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `..` would climb above the prefix.
    Escapes,
    /// `%2F`, `%5C`, a raw backslash, a NUL or an empty segment (`//`): ambiguous to the
    /// upstream, never needed.
    Ambiguous,
    /// Not valid UTF-8 after decoding, or not under the prefix.
    Malformed,
}

/// The part of `raw_path` after `prefix`, or `None` when the path is not under it.
pub fn strip_prefix<'a>(raw_path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = raw_path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// What may stand unescaped in the query: what `url` leaves (its special-query set), so a query
/// goes out as it did when targets were built with `Url::set_query`.
const QUERY: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'<').add(b'>').add(b'\'');

/// An upstream URL split once, for building request targets without a `Url` per call: what
/// comes before its path (`http://h:9`), and its path without a trailing slash.
#[derive(Debug, Clone)]
pub struct UpstreamBase {
    origin: String,
    path: String,
}

impl From<&Url> for UpstreamBase {
    fn from(url: &Url) -> Self {
        UpstreamBase {
            origin: url[..url::Position::BeforePath].to_string(),
            path: url.path().trim_end_matches('/').to_string(),
        }
    }
}

impl UpstreamBase {
    /// `scheme://authority` as a URI (the connection pool's `Host`).
    pub fn origin_uri(&self) -> Option<hyper::Uri> {
        self.origin.parse().ok()
    }
}

/// Resolves `rest` (the raw path after the prefix, empty or starting with `/`) against `base`:
/// the absolute target, written once into one string.
pub fn upstream_target(base: &UpstreamBase, rest: &str, query: Option<&str>) -> Result<String, PathError> {
    let query = query.filter(|q| !q.is_empty());
    let mut out =
        String::with_capacity(base.origin.len() + base.path.len() + rest.len() + query.map_or(0, str::len) + 2);
    out.push_str(&base.origin);
    let root = out.len();
    out.push_str(&base.path);
    // Where each segment written so far starts: `..` cuts the last one off again.
    let mut starts: Vec<usize> = Vec::new();
    let raw_segments = if rest.is_empty() { None } else { Some(rest[1..].split('/')) };
    let count = rest.bytes().filter(|b| *b == b'/').count();
    let mut trailing_slash = false;
    for (i, raw) in raw_segments.into_iter().flatten().enumerate() {
        let last = i + 1 == count;
        // An empty segment (`//`) anywhere but at the end: `/api//evil.example/x` would go out
        // as `//evil.example/x`, which an upstream resolving its request target as a URL reads
        // as a host.
        if raw.is_empty() && !last {
            return Err(PathError::Ambiguous);
        }
        if raw.contains('\\') {
            return Err(PathError::Ambiguous);
        }
        let decoded = percent_decode_str(raw).decode_utf8().map_err(|_| PathError::Malformed)?;
        if decoded.contains(['/', '\\', '\0']) {
            return Err(PathError::Ambiguous);
        }
        if decoded.contains('%') {
            let twice = percent_decode_str(&decoded).decode_utf8_lossy();
            if twice != decoded && (twice.contains(['/', '\\', '\0']) || is_dot_segment(&twice)) {
                return Err(PathError::Ambiguous);
            }
        }
        // A dot segment with path parameters resolves as the dot segment (its parameters go).
        let name = decoded.split(';').next().unwrap_or_default();
        match if is_dot_segment(&decoded) { name } else { decoded.as_ref() } {
            "." => trailing_slash = last,
            ".." => {
                out.truncate(starts.pop().ok_or(PathError::Escapes)?);
                trailing_slash = last;
            }
            _ => {
                starts.push(out.len());
                out.push('/');
                out.extend(utf8_percent_encode(&decoded, SEGMENT));
                trailing_slash = false;
            }
        }
    }
    if trailing_slash || out.len() == root || (starts.is_empty() && !rest.is_empty()) {
        out.push('/');
    }
    if let Some(query) = query {
        out.push('?');
        out.extend(utf8_percent_encode(query, QUERY));
    }
    Ok(out)
}

/// `.` or `..`, with or without `;` parameters.
fn is_dot_segment(decoded: &str) -> bool {
    matches!(decoded.split(';').next(), Some("." | ".."))
}

/// The target as a `Url`, for the tests' checks (and proof that it is one, in canonical form).
#[cfg(test)]
fn upstream_url(base: &Url, rest: &str, query: Option<&str>) -> Result<Url, PathError> {
    upstream_target(&UpstreamBase::from(base), rest, query).map(|target| {
        let url = Url::parse(&target).unwrap_or_else(|e| panic!("{target}: {e}"));
        assert_eq!(url.as_str(), target, "the target is written in canonical form");
        assert!(target.parse::<hyper::Uri>().is_ok(), "{target} is a request target");
        url
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(base: &str, rest: &str, query: Option<&str>) -> Result<String, PathError> {
        upstream_url(&Url::parse(base).unwrap(), rest, query).map(|u| u.to_string())
    }

    #[test]
    fn plain_paths_and_queries_map_onto_the_base() {
        assert_eq!(map("http://h:9/", "/orders/7", Some("x=1&y=%2F")), Ok("http://h:9/orders/7?x=1&y=%2F".into()));
        assert_eq!(map("http://h/v1", "/orders/7", None), Ok("http://h/v1/orders/7".into()));
        assert_eq!(map("http://h/v1/", "/orders/", None), Ok("http://h/v1/orders/".into()));
        assert_eq!(map("http://h/v1", "", None), Ok("http://h/v1".into()));
        assert_eq!(map("http://h/v1", "/", None), Ok("http://h/v1/".into()));
        assert_eq!(map("http://h", "", None), Ok("http://h/".into()));
        assert_eq!(map("http://h", "/a%20b/%C3%A9", None), Ok("http://h/a%20b/%C3%A9".into()));
        assert_eq!(map("http://h", "/a:b@c", None), Ok("http://h/a:b@c".into()));
    }

    #[test]
    fn empty_segments_are_refused_so_no_upstream_reads_a_host() {
        for rest in ["//evil.example/x", "/a/..//evil.example/x", "/a//b", "//", "/a/.//b"] {
            assert_eq!(map("http://h/", rest, None), Err(PathError::Ambiguous), "{rest}");
            assert_eq!(map("http://h/v1", rest, None), Err(PathError::Ambiguous), "{rest}");
        }
        assert_eq!(map("http://h/v1", "/a/", None), Ok("http://h/v1/a/".into()), "a trailing slash stays");
    }

    #[test]
    fn dot_segments_are_resolved_inside_the_prefix() {
        assert_eq!(map("http://h/v1", "/a/../b", None), Ok("http://h/v1/b".into()));
        assert_eq!(map("http://h/v1", "/a/./b", None), Ok("http://h/v1/a/b".into()));
        assert_eq!(map("http://h/v1", "/a/%2e%2e/b", None), Ok("http://h/v1/b".into()));
        assert_eq!(map("http://h/v1", "/a/..", None), Ok("http://h/v1/".into()));
        // Servlet containers read `..;` as `..`: so does bff, inside the prefix.
        assert_eq!(map("http://h/v1", "/a/..;/b", None), Ok("http://h/v1/b".into()));
        assert_eq!(map("http://h/v1", "/a/.;x=1/b", None), Ok("http://h/v1/a/b".into()));
        assert_eq!(map("http://h/v1", "/a;v=1/b", None), Ok("http://h/v1/a;v=1/b".into()), "other parameters stay");
        assert_eq!(map("http://h/v1", "/a..;/b", None), Ok("http://h/v1/a..;/b".into()), "not a dot segment");
    }

    #[test]
    fn dot_segments_with_parameters_or_encoded_twice_never_escape() {
        for rest in [
            "/..;/secret",
            "/..%3B/secret",
            "/..%3b/secret",
            "/x/..;/..;/secret",
            "/.;/..;/secret",
            "/%2e%2e;/secret",
            "/%2e%2e%3b/secret",
            "/..;jsessionid=x/secret",
            "/a/..;/..;/..;/secret",
            "/.%2e;/secret",
        ] {
            assert_eq!(map("http://h/v1", rest, None), Err(PathError::Escapes), "{rest}");
        }
        for rest in ["/%252e%252e/secret", "/%252E%252E;/secret", "/a%252fb", "/%252e/x", "/a%255cb", "/..%253b/x"] {
            assert_eq!(map("http://h/v1", rest, None), Err(PathError::Ambiguous), "{rest}");
        }
        assert_eq!(map("http://h/v1", "/100%2525", None), Ok("http://h/v1/100%2525".into()), "a literal %25 is fine");
    }

    #[test]
    fn escapes_are_refused() {
        for rest in [
            "/..",
            "/../admin",
            "/a/../../admin",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "/.%2e/admin",
            "/%2e./admin",
            "/a/%2e%2e/%2e%2e/admin",
        ] {
            assert_eq!(map("http://h/v1", rest, None), Err(PathError::Escapes), "{rest}");
        }
        for rest in ["/a%2fb", "/a%2F..%2F..%2Fadmin", "/a%5cb", "/a\\b", "/..%5cadmin", "/a%00b"] {
            assert_eq!(map("http://h/v1", rest, None), Err(PathError::Ambiguous), "{rest}");
        }
        assert_eq!(map("http://h/v1", "/%ff", None), Err(PathError::Malformed));
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert_eq!(strip_prefix("/api/x", "/api"), Some("/x"));
        assert_eq!(strip_prefix("/api", "/api"), Some(""));
        assert_eq!(strip_prefix("/apix", "/api"), None);
        assert_eq!(strip_prefix("/other", "/api"), None);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    const BASES: &[&str] = &["http://h/", "http://h/v1", "http://h/v1/", "http://h/a/b"];

    /// Pieces a path is made of, the troublesome ones many times over.
    const PIECES: &[&str] = &[
        "/",
        "/",
        "/",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2e%2e",
        ";",
        ";x=1",
        "%3b",
        "%25",
        "%252e",
        "%252f",
        "%255c",
        "%2f",
        "%5c",
        "\\",
        "%00",
        "%ff",
        "%",
        "a",
        "b",
        "é",
        "%C3%A9",
        " ",
        "%20",
        "?",
        "#",
        ":",
        "@",
        "evil.example",
    ];

    fn rest() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec(prop::sample::select(PIECES), 0..14).prop_map(|p| format!("/{}", p.concat())),
            "(/[a-z.%;]{0,6}){0,6}",
            "/\\PC{0,40}",
        ]
    }

    fn base_path(base: &Url) -> &str {
        base.path().trim_end_matches('/')
    }

    proptest! {
        #![proptest_config(crate::prop::config())]

        #[test]
        fn the_result_never_leaves_the_base_path(base in prop::sample::select(BASES), rest in rest()) {
            let base = Url::parse(base).unwrap();
            if let Ok(url) = upstream_url(&base, &rest, None) {
                prop_assert_eq!((url.scheme(), url.host_str(), url.port()), (base.scheme(), base.host_str(), base.port()));
                let under = url.path().strip_prefix(base_path(&base));
                prop_assert!(under.is_some_and(|u| u.is_empty() || u.starts_with('/')), "{} from {:?}", url, rest);
            }
        }

        #[test]
        fn mapping_is_idempotent(base in prop::sample::select(BASES), rest in rest()) {
            let base = Url::parse(base).unwrap();
            if let Ok(url) = upstream_url(&base, &rest, None) {
                let again_rest = url.path()[base_path(&base).len()..].to_string();
                prop_assert_eq!(upstream_url(&base, &again_rest, None), Ok(url.clone()), "{:?} → {}", rest, url);
            }
        }

        /// An upstream that decodes the path twice finds no dot segment and no separator that
        /// bff did not see: whatever a second decoding would change into one was refused.
        #[test]
        fn a_second_decoding_changes_nothing_that_matters(base in prop::sample::select(BASES), rest in rest()) {
            let base = Url::parse(base).unwrap();
            if let Ok(url) = upstream_url(&base, &rest, None) {
                for segment in url.path()[base_path(&base).len()..].split('/').skip(1) {
                    let once = percent_decode_str(segment).decode_utf8_lossy();
                    let twice = percent_decode_str(&once).decode_utf8_lossy().into_owned();
                    prop_assert!(!is_dot_segment(&once) && !is_dot_segment(&twice), "{:?} → {}", rest, url);
                    prop_assert!(!once.contains(['/', '\\', '\0']), "{:?} → {}", rest, url);
                    prop_assert!(!twice.contains(['/', '\\', '\0']), "{:?} → {}", rest, url);
                }
            }
        }

        #[test]
        fn the_upstream_path_never_starts_with_two_slashes(base in prop::sample::select(BASES), rest in rest()) {
            let base = Url::parse(base).unwrap();
            if let Ok(url) = upstream_url(&base, &rest, None) {
                prop_assert!(!url.path().starts_with("//"), "{:?} → {}", rest, url);
                prop_assert!(!url.path().contains("//"), "an empty segment went out: {:?} → {}", rest, url);
            }
        }

        #[test]
        fn prefixes_match_whole_segments_only(path in "/[a-z/]{0,12}", prefix in "/[a-z]{1,4}") {
            if let Some(rest) = strip_prefix(&path, &prefix) {
                prop_assert_eq!(format!("{prefix}{rest}"), path.clone());
                prop_assert!(rest.is_empty() || rest.starts_with('/'));
            }
        }
    }
}
