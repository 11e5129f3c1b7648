//! The `certs` generator, and why the Go tutorial's openssl certificate is refused.

mod common;

use std::sync::Arc;

use assert_cmd::Command;
use common::*;
use predicates::prelude::*;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::{ServerName, UnixTime};

fn verifier(ca: &std::path::Path) -> Arc<rustls::client::WebPkiServerVerifier> {
    let roots = Arc::new(lb::tls::load_roots(ca).unwrap());
    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, lb::tls::provider())
        .build()
        .unwrap()
}

/// Four PEM files; keys readable by the owner only; the leaf verifies against the CA for
/// localhost, 127.0.0.1 and ::1; existing files are kept unless --force.
#[test]
fn writes_a_ca_and_a_leaf_that_verifies() {
    let dir = make_certs("gen");
    let leaf = lb::tls::load_certs(&dir.join("localhost.pem")).unwrap();
    let v = verifier(&dir.join("ca.pem"));
    for name in ["localhost", "127.0.0.1", "::1"] {
        let name = ServerName::try_from(name).unwrap();
        v.verify_server_cert(&leaf[0], &[], &name, &[], UnixTime::now())
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
    }
    #[cfg(unix)]
    for key in ["ca-key.pem", "localhost-key.pem"] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // A second run, as chapters 5, 6 and 7 each ask for, keeps the valid set and succeeds.
    let before = std::fs::read(dir.join("ca.pem")).unwrap();
    Command::new(bin!("certs"))
        .args(["--out", path_str(&dir)])
        .assert()
        .success()
        .stdout(predicate::str::contains("kept the certificates already in"));
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), before);
    // Asked for a name the kept leaf lacks, it refuses to touch them without --force.
    Command::new(bin!("certs"))
        .args(["--out", path_str(&dir), "--name", "example.com"])
        .assert()
        .failure()
        .stderr(
            predicate::str::starts_with("error: ")
                .and(predicate::str::contains("--force"))
                .and(predicate::str::contains("example.com")),
        );
    Command::new(bin!("certs"))
        .args(["--out", path_str(&dir), "--force"])
        .assert()
        .success();
    assert_ne!(std::fs::read(dir.join("ca.pem")).unwrap(), before);
}

/// A set with a file missing is not silently completed (the CA would no longer match).
#[test]
fn an_incomplete_set_is_refused_without_force() {
    let dir = make_certs("incomplete");
    std::fs::remove_file(dir.join("localhost-key.pem")).unwrap();
    Command::new(bin!("certs"))
        .args(["--out", path_str(&dir)])
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("already exists").and(predicate::str::contains("--force")),
        );
}

/// The Go tutorial's recipe (`openssl req -x509`, CN only) makes a certificate rustls refuses,
/// even when it is trusted as its own CA: the chapter's claim, checked with the real openssl.
#[test]
fn the_go_tutorials_openssl_certificate_is_refused() {
    let dir = temp_dir("openssl");
    let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-keyout",
            path_str(&key),
            "-out",
            path_str(&crt),
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is needed for this test");
    assert!(status.success());
    let cert = lb::tls::load_certs(&crt).unwrap();
    let err = verifier(&crt)
        .verify_server_cert(
            &cert[0],
            &[],
            &ServerName::try_from("localhost").unwrap(),
            &[],
            UnixTime::now(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("CaUsedAsEndEntity") || err.contains("NotValidForName"),
        "{err}"
    );
}
