//! Certificates: the organisation's files, replacement while connections are open, refusal of
//! a bad replacement, key formats, and the expiry warning.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{TestServer, eventually, keepalive_get, tls_connect};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A certificate for 127.0.0.1 and localhost with `name` as its CN, valid for `days`.
fn make_cert(name: &str, days: u64) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let now = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs);
    params.not_before = now - Duration::from_secs(86_400);
    params.not_after = now + Duration::from_secs(days * 86_400);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn install(root: &Path, cert: &str, key: &str) {
    // Key first, then certificate, as an operator copying files would.
    std::fs::write(root.join("certificate.key"), key).unwrap();
    std::fs::write(root.join("certificate.cer"), cert).unwrap();
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

async fn presented(server: &TestServer, trust: &str) -> Option<Vec<u8>> {
    let stream = tls_connect(server.addr, trust.as_bytes()).await.ok()?;
    let (_, connection) = stream.get_ref();
    connection
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
}

#[tokio::test]
async fn a_replaced_certificate_is_used_by_new_connections_without_dropping_old_ones() {
    let (first_cert, first_key) = make_cert("first", 365);
    let server = TestServer::start(r#"{"http": {"certificate_check_secs": 1}}"#, |root| {
        install(root, &first_cert, &first_key)
    })
    .await;
    assert_eq!(
        presented(&server, &first_cert).await.unwrap(),
        der(&first_cert)
    );

    let mut held = tls_connect(server.addr, first_cert.as_bytes())
        .await
        .unwrap();
    assert_eq!(
        keepalive_get(&mut held, "/resourcecheck/local.json")
            .await
            .0,
        200
    );

    let (second_cert, second_key) = make_cert("second", 365);
    install(&server.root, &second_cert, &second_key);
    eventually("new connections see the new certificate", || {
        let (server, trust) = (&server, second_cert.clone());
        async move {
            presented(server, &trust)
                .await
                .is_some_and(|d| d == der(&trust))
        }
    })
    .await;
    // The connection made before the switch still works.
    assert_eq!(
        keepalive_get(&mut held, "/resourcecheck/local.json")
            .await
            .0,
        200
    );

    // A broken replacement is refused: the last good certificate keeps serving.
    std::fs::write(
        server.root.join("certificate.cer"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        presented(&server, &second_cert).await.unwrap(),
        der(&second_cert)
    );
    // And a key that does not match its certificate is refused too.
    let (third_cert, _) = make_cert("third", 365);
    let (_, other_key) = make_cert("other", 365);
    install(&server.root, &third_cert, &other_key);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        presented(&server, &second_cert).await.unwrap(),
        der(&second_cert)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_chain_and_sec1_or_pkcs8_keys_are_accepted() {
    let (cert, key) = make_cert("sec1", 365);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k.pem"), &key).unwrap();
    let out = Command::new("openssl")
        .args(["pkey", "-in"])
        .arg(dir.path().join("k.pem"))
        .arg("-traditional")
        .output()
        .unwrap();
    let sec1 = String::from_utf8(out.stdout).unwrap();
    assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
    // A chain: the leaf followed by an (unrelated) intermediate.
    let (extra, _) = make_cert("intermediate", 365);
    let chain = format!("{cert}{extra}");
    let server = TestServer::start("{}", |root| install(root, &chain, &sec1)).await;
    assert_eq!(presented(&server, &cert).await.unwrap(), der(&cert));
    let (_, health) = server.get_json("/health").await;
    assert_eq!(
        health["checks"]["certificate:expiry"][0]["selfSigned"],
        false
    );
    server.stop().await;
}

#[tokio::test]
async fn a_certificate_expiring_within_30_days_warns_in_health() {
    let (cert, key) = make_cert("expiring", 10);
    let server = TestServer::start("{}", |root| install(root, &cert, &key)).await;
    let (status, doc) = server.get_json("/health").await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(doc["status"], "warn");
    let check = &doc["checks"]["certificate:expiry"][0];
    assert_eq!(check["status"], "warn");
    assert!(check["observedValue"].as_u64().unwrap() <= 10);
    assert_eq!(check["output"], "certificate expires within 30 days");
    server.stop().await;
}

#[tokio::test]
async fn an_rsa_certificate_with_a_pkcs1_key_is_accepted() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rsa");
    let cert = params.self_signed(&key).unwrap().pem();
    // rcgen writes PKCS#8; openssl turns it into the traditional PKCS#1 form.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
    let out = Command::new("openssl")
        .args(["pkey", "-traditional", "-in"])
        .arg(dir.path().join("k.pem"))
        .output()
        .unwrap();
    let pkcs1 = String::from_utf8(out.stdout).unwrap();
    assert!(
        pkcs1.contains("BEGIN RSA PRIVATE KEY"),
        "not PKCS#1: {pkcs1}"
    );
    let server = TestServer::start("{}", |root| install(root, &cert, &pkcs1)).await;
    assert_eq!(presented(&server, &cert).await.unwrap(), der(&cert));
    server.stop().await;
}
