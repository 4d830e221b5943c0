//! TLS on the main listener: the certificate and key files read into a rustls `CertifiedKey`,
//! served through a resolver that a rotation replaces without a restart (connections already
//! open keep the certificate they were made with), and the plain-HTTP listener that only
//! redirects to https.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;

/// How often the files are read again for a rotation: a certificate manager replaces them at
/// any moment, and reading two small files is cheap.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// `server.tls_cert_file` and `server.tls_key_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Why the files cannot be served: the configuration key at fault and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    pub key: &'static str,
    pub message: String,
}

impl std::fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

pub const CERT_KEY: &str = "server.tls_cert_file";
pub const KEY_KEY: &str = "server.tls_key_file";

fn fault(key: &'static str, message: impl Into<String>) -> TlsFileError {
    TlsFileError { key, message: message.into() }
}

/// The two files' contents, as last read.
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Contents {
    fn read(files: &TlsFiles) -> Result<Contents, TlsFileError> {
        let read = |key, path: &Path| {
            std::fs::read(path).map_err(|e| fault(key, format!("cannot read {}: {e}", path.display())))
        };
        Ok(Contents { cert: read(CERT_KEY, &files.cert_file)?, key: read(KEY_KEY, &files.key_file)? })
    }

    /// What tells one version of the pair from another; never logged (it covers the key).
    fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update((self.cert.len() as u64).to_be_bytes());
        hash.update(&self.cert);
        hash.update(&self.key);
        hash.finalize().into()
    }

    fn certified_key(&self, files: &TlsFiles) -> Result<CertifiedKey, TlsFileError> {
        let cert_path = files.cert_file.display();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| fault(CERT_KEY, format!("{cert_path} is not a PEM certificate chain ({e})")))?;
        if chain.is_empty() {
            return Err(fault(CERT_KEY, format!("{cert_path} holds no PEM certificate")));
        }
        let key_path = files.key_file.display();
        // PKCS#8, SEC1 (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`), whichever comes first.
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|e| fault(KEY_KEY, format!("{key_path} holds no PEM private key ({e})")))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
            fault(KEY_KEY, format!("{key_path}: not a usable ECDSA (P-256, P-384), Ed25519 or RSA key ({e})"))
        })?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| {
            fault(KEY_KEY, format!("{key_path} is not the key of the first certificate in {cert_path} ({e})"))
        })?;
        Ok(certified)
    }
}

/// Reads and checks the pair: what the configuration loader refuses at start.
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, TlsFileError> {
    Contents::read(files)?.certified_key(files)
}

/// Hands every handshake the current certificate; replaced as a whole, so a handshake sees the
/// old pair or the new one, never half of each.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// What a rotation check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    Unchanged,
    Applied,
    /// The files changed but cannot be served; the certificate before them still is.
    Refused(String),
}

/// The served certificate and where it comes from.
pub struct Tls {
    files: TlsFiles,
    resolver: Arc<CertResolver>,
    /// The digest of the pair served now, and of the last pair refused (so that a broken file
    /// is reported once, not at every poll, until it changes again).
    seen: Mutex<([u8; 32], Option<[u8; 32]>)>,
    metrics: Arc<Metrics>,
}

impl Tls {
    pub fn new(files: TlsFiles, metrics: Arc<Metrics>) -> Result<Tls, TlsFileError> {
        let contents = Contents::read(&files)?;
        let certified = contents.certified_key(&files)?;
        Ok(Tls {
            resolver: Arc::new(CertResolver { current: ArcSwap::from_pointee(certified) }),
            seen: Mutex::new((contents.digest(), None)),
            files,
            metrics,
        })
    }

    /// The listener's rustls configuration: TLS 1.3 and 1.2 with ring's cipher suites (no
    /// older protocol), no client certificates, the certificate from the resolver. actix-web
    /// adds the ALPN protocols (`h2`, `http/1.1`) itself.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&self.resolver) as Arc<dyn ResolvesServerCert>);
        Ok(config)
    }

    /// The certificate served now (its chain's first entry).
    pub fn current_certificate(&self) -> Option<CertificateDer<'static>> {
        self.resolver.current.load().cert.first().cloned()
    }

    /// Reads the files again; a changed pair that loads replaces the served one for new
    /// handshakes (open connections keep theirs), one that does not is logged, counted and
    /// left aside.
    pub fn check_rotation(&self) -> Rotation {
        let outcome = self.try_rotation();
        match &outcome {
            Rotation::Unchanged => {}
            Rotation::Applied => {
                self.metrics.tls_certificate_reload(true);
                tracing::info!(cert_file = %self.files.cert_file.display(), "TLS certificate reloaded");
            }
            Rotation::Refused(why) => {
                self.metrics.tls_certificate_reload(false);
                tracing::error!("TLS certificate not reloaded, the one before still serves: {why}");
            }
        }
        outcome
    }

    fn try_rotation(&self) -> Rotation {
        let contents = match Contents::read(&self.files) {
            Ok(contents) => contents,
            // Unreadable (a file being replaced, a missing volume): the same text each time, so
            // reported once until it reads again.
            Err(e) => return self.refused(Sha256::digest(e.to_string().as_bytes()).into(), e),
        };
        let digest = contents.digest();
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.0 == digest || seen.1 == Some(digest) {
                return Rotation::Unchanged;
            }
        }
        match contents.certified_key(&self.files) {
            Ok(certified) => {
                self.resolver.current.store(Arc::new(certified));
                *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = (digest, None);
                Rotation::Applied
            }
            Err(e) => self.refused(digest, e),
        }
    }

    fn refused(&self, digest: [u8; 32], e: TlsFileError) -> Rotation {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.1 == Some(digest) {
            return Rotation::Unchanged;
        }
        seen.1 = Some(digest);
        Rotation::Refused(e.to_string())
    }

    /// Checks for a rotation every [`POLL_INTERVAL`] while `self` is alive elsewhere.
    pub fn watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(POLL_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(tls) = weak.upgrade() else { return };
                // File reads block: off the runtime's threads.
                let _ = tokio::task::spawn_blocking(move || tls.check_rotation()).await;
            }
        });
    }
}

/// `Strict-Transport-Security` for `server.hsts_max_age_secs`; none for 0.
pub fn hsts_header(max_age: Duration) -> Option<actix_web::http::header::HeaderValue> {
    let secs = max_age.as_secs();
    if secs == 0 {
        return None;
    }
    actix_web::http::header::HeaderValue::from_str(&format!("max-age={secs}")).ok()
}

/// Where the plain-HTTP listener (`server.redirect_http_listen`) sends each request: the https
/// origin of the frontend whose `public_url` has the request's host, else `server.public_url`'s.
/// Never an origin made from the request itself (that would redirect anywhere a client asks).
pub struct Redirects {
    by_host: Vec<(String, String)>,
    default: String,
    max_header_bytes: usize,
}

impl Redirects {
    pub fn new(config: &crate::config::Config) -> Redirects {
        let origin = |url: &url::Url| url.origin().ascii_serialization();
        Redirects {
            by_host: config
                .views()
                .iter()
                .filter_map(|view| {
                    let url = &view.server.public_url;
                    Some((url.host_str()?.to_ascii_lowercase(), origin(url)))
                })
                .collect(),
            default: origin(&config.server.public_url),
            max_header_bytes: config.server.max_header_bytes,
        }
    }

    fn origin_for(&self, host_header: Option<&str>) -> &str {
        // `host` or `host:port` (a bracketed IPv6 address too): only the host is compared.
        let host = host_header
            .and_then(|h| url::Url::parse(&format!("http://{h}/")).ok())
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        host.and_then(|h| self.by_host.iter().find(|(name, _)| *name == h))
            .map_or(self.default.as_str(), |(_, origin)| origin.as_str())
    }
}

/// Every request on the plain-HTTP listener: 308 (method and body kept) to the same path and
/// query on the https origin. Nothing else is served there, not even health checks.
pub async fn redirect(
    req: actix_web::HttpRequest,
    redirects: actix_web::web::Data<Redirects>,
) -> actix_web::HttpResponse {
    use actix_web::ResponseError;
    use actix_web::http::header;
    let uri = req.uri();
    let head_bytes: usize = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>()
        + uri.path().len()
        + uri.query().map_or(0, str::len);
    if head_bytes > redirects.max_header_bytes {
        return crate::error::AppError::Limited(crate::limits::Limit::HeaderSize).error_response();
    }
    let host =
        req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()));
    let target = match uri.query() {
        Some(query) => format!("{}{}?{query}", redirects.origin_for(host), uri.path()),
        None => format!("{}{}", redirects.origin_for(host), uri.path()),
    };
    actix_web::HttpResponse::PermanentRedirect().insert_header((header::LOCATION, target)).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (TlsFiles, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap().self_signed(&key).unwrap();
        let files = TlsFiles { cert_file: dir.join("cert.pem"), key_file: dir.join("key.pem") };
        std::fs::write(&files.key_file, key.serialize_pem()).unwrap();
        std::fs::write(&files.cert_file, cert.pem()).unwrap();
        (files, cert.der().to_vec())
    }

    #[test]
    fn a_rotation_is_applied_once_and_a_broken_pair_reported_once_and_kept_out() {
        let dir = std::env::temp_dir().join(format!("bff-tls-unit-{}", crate::crypto::random_token()));
        std::fs::create_dir_all(&dir).unwrap();
        let (files, first) = pair(&dir, "first.example");
        let tls = Tls::new(files.clone(), Arc::new(Metrics::new().unwrap())).unwrap();
        assert_eq!(tls.check_rotation(), Rotation::Unchanged);

        let (_, second) = pair(&dir, "second.example");
        assert_ne!(first, second);
        assert_eq!(tls.check_rotation(), Rotation::Applied);
        assert_eq!(tls.current_certificate().unwrap().as_ref(), second.as_slice());
        assert_eq!(tls.check_rotation(), Rotation::Unchanged);

        // Half a rotation: a new key under the old certificate.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&files.key_file, other.serialize_pem()).unwrap();
        assert!(matches!(tls.check_rotation(), Rotation::Refused(why) if why.contains("server.tls_key_file")));
        assert_eq!(tls.check_rotation(), Rotation::Unchanged, "reported once");
        assert_eq!(tls.current_certificate().unwrap().as_ref(), second.as_slice());

        std::fs::remove_file(&files.cert_file).unwrap();
        assert!(matches!(tls.check_rotation(), Rotation::Refused(why) if why.contains("cannot read")));
        assert_eq!(tls.check_rotation(), Rotation::Unchanged, "reported once");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hsts_zero_is_none() {
        assert!(hsts_header(Duration::ZERO).is_none());
        assert_eq!(hsts_header(Duration::from_secs(60)).unwrap(), "max-age=60");
    }
}
