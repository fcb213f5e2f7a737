//! Headless Chromium (Debian package `chromium`, installed by `scripts/test`), trusting one
//! server certificate by its public key.

use std::process::{Command, Output};

use base64::Engine;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Where Debian installs it.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// base64(SHA-256(SubjectPublicKeyInfo)) of the certificate in `pem`, for Chromium to trust.
pub fn spki_hash(pem: &[u8]) -> String {
    let der = CertificateDer::pem_slice_iter(pem).next().unwrap().unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        cert.tbs_certificate.subject_pki.raw,
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Runs headless Chromium on `url` with a fresh profile, trusting `spki`, with `extra` flags
/// (`--dump-dom`, `--screenshot=…`); waits up to 20 s of the page's virtual time.
pub fn run(url: &str, spki: &str, extra: &[&str]) -> Output {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/test, which installs it"
    );
    let profile = tempfile::tempdir().unwrap();
    Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--ignore-certificate-errors-spki-list={spki}"),
            "--virtual-time-budget=20000",
        ])
        .args(extra)
        .arg(url)
        .output()
        .unwrap()
}
