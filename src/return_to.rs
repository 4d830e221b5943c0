//! Where a login sends the browser back to: a same-origin relative path, or `/`.

use url::Url;

const MAX_LEN: usize = 2048;

/// A path on our own origin, safe to put in a `Location` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnTo(String);

impl ReturnTo {
    pub fn root() -> ReturnTo {
        ReturnTo("/".into())
    }

    /// Accepts only a path that starts with exactly one `/` and stays on `origin`; everything
    /// else (`//host`, `/\host`, schemes, control characters, white space) is refused.
    pub fn parse(raw: &str, origin: &Url) -> Option<ReturnTo> {
        let plain = raw.len() <= MAX_LEN
            && raw.starts_with('/')
            && !raw.starts_with("//")
            // Browsers read `\` as `/` in http(s) URLs: `/\evil.example` is `//evil.example`.
            && !raw.contains('\\')
            && !raw.chars().any(|c| c.is_control() || c.is_whitespace());
        if !plain {
            return None;
        }
        let resolved = origin.join(raw).ok()?;
        (resolved.origin() == origin.origin()).then(|| ReturnTo(raw.to_string()))
    }

    /// Parses, falling back to `/` for anything unsafe.
    pub fn parse_or_root(raw: Option<&str>, origin: &Url) -> ReturnTo {
        raw.and_then(|r| ReturnTo::parse(r, origin)).unwrap_or_else(ReturnTo::root)
    }

    /// The same for a frontend under `base` (`/admin`): a path outside it is another
    /// frontend's, and falls back to the frontend's root (`/admin/`).
    pub fn parse_under(raw: Option<&str>, origin: &Url, base: &str) -> ReturnTo {
        if base.is_empty() {
            return ReturnTo::parse_or_root(raw, origin);
        }
        raw.and_then(|r| ReturnTo::parse(r, origin))
            .filter(|r| r.0.strip_prefix(base).is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#'])))
            .unwrap_or_else(|| ReturnTo(format!("{base}/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frontend_under_a_path_returns_under_it() {
        let origin = Url::parse("https://app.example").unwrap();
        let under = |raw: &str| ReturnTo::parse_under(Some(raw), &origin, "/admin").into_string();
        assert_eq!(under("/admin/orders?x=1"), "/admin/orders?x=1");
        assert_eq!(under("/admin"), "/admin");
        assert_eq!(under("/admin?tab=2"), "/admin?tab=2");
        for outside in ["/", "/administrator", "/shop/cart", "//evil.example/admin", "https://evil.example/admin"] {
            assert_eq!(under(outside), "/admin/", "{outside}");
        }
        assert_eq!(ReturnTo::parse_under(None, &origin, "/admin").into_string(), "/admin/");
        assert_eq!(ReturnTo::parse_under(Some("/x"), &origin, "").into_string(), "/x");
    }

    fn origin() -> Url {
        Url::parse("https://app.example.com").unwrap()
    }

    #[test]
    fn local_paths_are_kept() {
        for ok in ["/", "/orders/7", "/a?b=c&d=%2F", "/a#frag", "/%2F%2Fnot-a-host", "/a/../b"] {
            assert_eq!(ReturnTo::parse(ok, &origin()).map(ReturnTo::into_string).as_deref(), Some(ok), "{ok}");
        }
    }

    #[test]
    fn open_redirect_attempts_fall_back_to_root() {
        for bad in [
            "//evil.example",
            "//evil.example/path",
            "/\\evil.example",
            "\\\\evil.example",
            "/\\/evil.example",
            "https://evil.example/",
            "http:evil.example",
            "javascript:alert(1)",
            "evil.example",
            "",
            "/\t/evil.example",
            "/\n/evil.example",
            "/ /evil",
            "/\u{0000}",
            "///evil.example",
        ] {
            assert_eq!(ReturnTo::parse_or_root(Some(bad), &origin()), ReturnTo::root(), "{bad:?}");
        }
        assert_eq!(ReturnTo::parse_or_root(None, &origin()), ReturnTo::root());
        assert!(ReturnTo::parse(&format!("/{}", "a".repeat(3000)), &origin()).is_none());
    }
}
