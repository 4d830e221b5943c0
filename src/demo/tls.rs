//! `bff demo --tls`: a self-signed certificate for `localhost` and `127.0.0.1`, made at every
//! start, and what a browser needs to trust it for this run only.

use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use sha2::{Digest, Sha256};

/// The certificate's files (in a directory of this run's own, removed when it ends) and the
/// hash Chromium's `--ignore-certificate-errors-spki-list` takes.
pub struct DemoCertificate {
    pub dir: PathBuf,
    pub files: crate::tls::TlsFiles,
    /// base64 of SHA-256 over the certificate's SubjectPublicKeyInfo (DER).
    pub spki_sha256: String,
}

impl Drop for DemoCertificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn make() -> Result<DemoCertificate, anyhow::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "bff demo (self-signed, this run only)");
    params.distinguished_name = name;
    let cert = params.self_signed(&key)?;
    let spki_sha256 = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(key.subject_public_key_info()));
    let dir =
        std::env::temp_dir().join(format!("bff-demo-tls-{}-{}", std::process::id(), crate::crypto::random_token()));
    create_private_dir(&dir)?;
    let files = crate::tls::TlsFiles { cert_file: dir.join("cert.pem"), key_file: dir.join("key.pem") };
    std::fs::write(&files.cert_file, cert.pem())?;
    std::fs::write(&files.key_file, key.serialize_pem())?;
    Ok(DemoCertificate { dir, files, spki_sha256 })
}

/// Readable by this user only: it will hold a private key.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}
