//! The single-page app from `static_dir`; unknown paths that a browser navigates to get its
//! `index.html`, so client-side routes survive a reload.

use std::path::{Path, PathBuf};

use actix_files::{Files, NamedFile};
use actix_web::dev::{ServiceRequest, ServiceResponse, fn_service};
use actix_web::{HttpRequest, HttpResponse, guard, web};

use super::{not_found, respond};
use crate::error::{AppError, is_navigation};
use crate::paths::Methods;

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
    // The SPA is read with GET and HEAD only; any other method on its paths reaches the default
    // service below (without the guard, the file service would answer 405 in plain text).
    let files = Files::new("/", dir)
        .guard(guard::fn_guard(|ctx| Methods::Read.takes(&ctx.head().method)))
        .index_file("index.html")
        .default_handler(fn_service(move |req: ServiceRequest| {
            let index = index.clone();
            async move {
                let (req, _) = req.into_parts();
                let res = if is_navigation(&req) {
                    match NamedFile::open_async(&index).await {
                        Ok(file) => file.into_response(&req),
                        Err(_) => respond(&req, &AppError::NotFound),
                    }
                } else {
                    respond(&req, &AppError::NotFound)
                };
                Ok(ServiceResponse::new(req, res))
            }
        }));
    cfg.service(files).default_service(web::to(other_method));
}

/// What no route took: a method other than GET and HEAD on a path the SPA serves.
async fn other_method(req: HttpRequest) -> HttpResponse {
    let methods = Methods::Read;
    if methods.takes(req.method()) {
        return respond(&req, &AppError::NotFound);
    }
    respond(&req, &AppError::MethodNotAllowed(methods.allow().into()))
}
