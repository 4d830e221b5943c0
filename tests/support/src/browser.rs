//! A browser for the tests: an HTTP client that keeps the app's cookies and walks the login at
//! the demo provider; and a raw HTTP/1.1 request for what a well-behaved client would not send.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{COOKIE, SET_COOKIE};

/// A browser: follows nothing by itself, keeps the app's cookies like a browser would.
#[derive(Clone)]
pub struct Browser {
    pub http: reqwest::Client,
    pub base: String,
    pub jar: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Browser {
    pub fn new(base: &str) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            base: base.to_string(),
            jar: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// A browser whose requests go through `http` (one that resolves names of its own, say);
    /// `http` should follow no redirect, as [`Browser::new`]'s does not.
    pub fn with_client(base: &str, http: reqwest::Client) -> Browser {
        Browser { http, base: base.to_string(), jar: Arc::new(Mutex::new(BTreeMap::new())) }
    }

    /// The same cookies, another base URL (a second instance behind the same site).
    pub fn at(&self, base: &str) -> Browser {
        Browser { http: self.http.clone(), base: base.to_string(), jar: Arc::clone(&self.jar) }
    }

    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http") { path_or_url.to_string() } else { format!("{}{path_or_url}", self.base) }
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.jar.lock().expect("jar").get(name).cloned()
    }

    pub fn set_cookie(&self, name: &str, value: &str) {
        self.jar.lock().expect("jar").insert(name.into(), value.into());
    }

    pub(crate) fn cookie_header(&self) -> Option<String> {
        let jar = self.jar.lock().expect("jar");
        (!jar.is_empty()).then(|| jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "))
    }

    pub fn absorb(&self, res: &reqwest::Response) {
        if !res.url().as_str().starts_with(&self.base) {
            return;
        }
        let mut jar = self.jar.lock().expect("jar");
        for raw in res.headers().get_all(SET_COOKIE) {
            let Ok(text) = raw.to_str() else { continue };
            let Ok(c) = actix_web::cookie::Cookie::parse(text.to_string()) else { continue };
            let removed = c.max_age().is_some_and(|a| a.is_zero() || a.is_negative()) || c.value().is_empty();
            if removed {
                jar.remove(c.name());
            } else {
                jar.insert(c.name().to_string(), c.value().to_string());
            }
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = self.url(path);
        let mut rb = self.http.request(method, &url);
        if url.starts_with(&self.base)
            && let Some(cookies) = self.cookie_header()
        {
            rb = rb.header(COOKIE, cookies);
        }
        rb
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> reqwest::Response {
        let res = rb.send().await.expect("request");
        self.absorb(&res);
        res
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// A `fetch` from the SPA: with the anti-forgery header.
    pub async fn api(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.send(self.request(method, path).header("x-csrf", "1")).await
    }

    pub async fn user(&self) -> reqwest::Response {
        self.api(reqwest::Method::GET, "/auth/user").await
    }

    pub async fn logout(&self) -> reqwest::Response {
        self.api(reqwest::Method::POST, "/auth/logout").await
    }

    /// `/auth/login` → the provider's authorize URL (not followed).
    pub async fn start_login(&self, return_to: Option<&str>) -> reqwest::Response {
        let path = match return_to {
            Some(r) => format!("/auth/login?return_to={}", urlencode(r)),
            None => "/auth/login".to_string(),
        };
        self.get(&path).await
    }

    /// Signs in at the provider's login form; returns the callback URL it redirects to.
    pub async fn sign_in_at_provider(&self, authorize_url: &str, username: &str) -> String {
        self.sign_in_at_provider_with(authorize_url, username, false).await.0
    }

    /// The same, with the demo provider's second factor ticked or not; also the provider's own
    /// session cookie (`name=value`) it set, which `prompt=none` is answered from.
    pub async fn sign_in_at_provider_with(
        &self,
        authorize_url: &str,
        username: &str,
        second_factor: bool,
    ) -> (String, Option<String>) {
        let page = self.get(authorize_url).await;
        assert_eq!(page.status(), 200, "the provider shows its login page");
        let html = page.text().await.expect("login page");
        let interaction = html
            .split("name=\"interaction\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("an interaction id on the login page")
            .to_string();
        let login_url = authorize_url.split("/authorize").next().expect("issuer").to_string() + "/login";
        let mut form = vec![("interaction", interaction.as_str()), ("username", username)];
        if second_factor {
            form.push(("second_factor", "on"));
        }
        let res = self.send(self.http.post(login_url).form(&form)).await;
        assert_eq!(res.status(), 302, "the provider redirects back");
        let provider_session = res
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.starts_with("demo_idp_session="))
            .and_then(|c| c.split(';').next())
            .map(String::from);
        (location(&res), provider_session)
    }

    /// The whole browser login; returns the callback's answer.
    pub async fn login_as(&self, username: &str) -> reqwest::Response {
        self.login_to(username, None).await
    }

    pub async fn login_to(&self, username: &str, return_to: Option<&str>) -> reqwest::Response {
        let start = self.start_login(return_to).await;
        assert_eq!(start.status(), 302, "login redirects to the provider");
        let callback = self.sign_in_at_provider(&location(&start), username).await;
        self.get(&callback).await
    }
}

pub fn location(res: &reqwest::Response) -> String {
    res.headers().get("location").and_then(|v| v.to_str().ok()).expect("a Location header").to_string()
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url).ok()?.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Sends a request line exactly as given (no client-side path normalisation) and returns the
/// status code: how an attacker probes for path escapes.
pub async fn raw_status(base: &str, method: &str, raw_path: &str, headers: &[(&str, String)]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(authority).await.expect("connect");
    let mut request = format!("{method} {raw_path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}
