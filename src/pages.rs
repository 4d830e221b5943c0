//! HTML pages rendered with tera: error pages and, in the demo, the provider's login page.
//!
//! The templates are compiled into the binary and a `templates_dir` may override any of them,
//! so `bff` works from any directory and operators can restyle the pages.

use std::path::Path;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use tera::{Context, Tera};

/// The built-in templates, by name.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("error.html", include_str!("../templates/error.html")),
    ("signed_out.html", include_str!("../templates/signed_out.html")),
    ("idp_login.html", include_str!("../templates/idp_login.html")),
];

/// The pages' stylesheet, served at [`STYLESHEET_PATH`].
pub const STYLESHEET: &str = include_str!("../templates/style.css");
pub const STYLESHEET_PATH: &str = crate::paths::OwnRoute::Stylesheet.path();

pub struct Pages {
    tera: Tera,
    stylesheet: String,
    /// The frontend's path (`""` or `/admin`): the pages' links to its sign-in and its SPA.
    base: String,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pages")
    }
}

impl Pages {
    /// The built-in templates, each replaced by `dir/<name>` when that file exists.
    pub fn load(dir: &Path, stylesheet: &str) -> Result<Pages, anyhow::Error> {
        let mut tera = Tera::new();
        let mut templates = Vec::new();
        for (name, built_in) in BUILT_IN {
            let path = dir.join(name);
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (*built_in).to_string(),
                Err(e) => anyhow::bail!("cannot read template {}: {e}", path.display()),
            };
            templates.push((*name, text));
        }
        tera.add_raw_templates(templates).map_err(|e| anyhow::anyhow!("templates: {e}"))?;
        Ok(Pages { tera, stylesheet: stylesheet.to_string(), base: String::new() })
    }

    /// The same pages for a frontend served under `base` (`/admin`): links and stylesheet there.
    pub fn under(mut self, base: &str) -> Pages {
        self.stylesheet = format!("{base}{}", self.stylesheet);
        self.base = base.to_string();
        self
    }

    pub fn render(&self, name: &str, mut context: Context) -> Result<String, tera::Error> {
        context.insert("stylesheet", &self.stylesheet);
        context.insert("base", &self.base);
        self.tera.render(name, &context)
    }

    /// An HTML answer; a rendering failure still answers, in plain text.
    pub fn html(&self, status: StatusCode, name: &str, context: Context) -> HttpResponse {
        let mut res = HttpResponse::build(status);
        res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        match self.render(name, context) {
            Ok(body) => res.content_type("text/html; charset=utf-8").body(body),
            Err(e) => {
                tracing::error!("rendering {name}: {e}");
                res.content_type("text/plain; charset=utf-8").body(status.canonical_reason().unwrap_or("Error"))
            }
        }
    }

    /// The error page: a title from the status, a sentence, and optionally a way to sign in again.
    pub fn error(&self, status: StatusCode, message: &str, login_link: bool) -> HttpResponse {
        let mut context = Context::new();
        context.insert("status", &status.as_u16());
        context.insert("title", title_for(status));
        context.insert("message", message);
        context.insert("login_link", &login_link);
        self.html(status, "error.html", context)
    }
}

fn title_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "Sign-in could not be completed",
        401 => "Not signed in",
        403 => "Request refused",
        404 => "Not found",
        405 => "Method not allowed",
        413 => "Request too large",
        502..=504 => "Service temporarily unavailable",
        _ => "Something went wrong",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    #[actix_web::test]
    async fn error_pages_escape_what_they_show() {
        let pages = Pages::load(Path::new("/nonexistent"), STYLESHEET_PATH).unwrap();
        let res = pages.error(StatusCode::BAD_REQUEST, "<script>alert(1)</script>", true);
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let body = String::from_utf8(to_bytes(res.into_body()).await.unwrap_or_default().to_vec()).unwrap_or_default();
        assert!(body.contains("&lt;script&gt;"), "{body}");
        assert!(!body.contains("<script>"));
        assert!(body.contains("href=\"/auth/login\""));
        assert!(body.contains("/auth/style.css"));
    }
}
