//! The single-page app from `static_dir`; unknown paths that a browser navigates to get its
//! `index.html`, so client-side routes survive a reload.

use std::path::{Path, PathBuf};

use actix_files::{Files, NamedFile};
use actix_web::dev::{ServiceRequest, ServiceResponse, fn_service};
use actix_web::{HttpResponse, web};

use crate::error::is_navigation;

pub fn configure(cfg: &mut web::ServiceConfig, static_dir: Option<&Path>) {
    let Some(dir) = static_dir else {
        cfg.default_service(web::to(not_found));
        return;
    };
    if !dir.is_dir() {
        tracing::warn!(static_dir = %dir.display(), "static_dir does not exist; serving no SPA");
        cfg.default_service(web::to(not_found));
        return;
    }
    let index: PathBuf = dir.join("index.html");
    cfg.service(Files::new("/", dir).index_file("index.html").default_handler(fn_service(
        move |req: ServiceRequest| {
            let index = index.clone();
            async move {
                let (req, _) = req.into_parts();
                let res = if is_navigation(&req) {
                    match NamedFile::open_async(&index).await {
                        Ok(file) => file.into_response(&req),
                        Err(_) => not_found_response(),
                    }
                } else {
                    not_found_response()
                };
                Ok(ServiceResponse::new(req, res))
            }
        },
    )));
}

fn not_found_response() -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({ "error": "not_found" }))
}

async fn not_found() -> HttpResponse {
    not_found_response()
}
