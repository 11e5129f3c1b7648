//! Step 6: TLS to the backends.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;

fn tls_dummy(certs: &Path) -> Proc {
    let (cert, key) = (certs.join("localhost.pem"), certs.join("localhost-key.pem"));
    Proc::start(
        bin!("dummy-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls",
            "--cert",
            path_str(&cert),
            "--key",
            path_str(&key),
        ],
        1,
    )
}

fn originate(backend: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["--listen", "127.0.0.1:0", "--backend", backend];
    args.extend(extra);
    Proc::start(bin!("06-tls-upstream"), &args, 1)
}

/// With the right CA, plain clients reach an HTTPS backend, megabytes byte-exact each way.
#[test]
fn verified_tls_to_the_backend_byte_exact() {
    let certs = make_certs("t06-ok");
    let dummy = tls_dummy(&certs);
    let ca = certs.join("ca.pem");
    // By name (checked against the DNS SAN) and by IP (checked against the IP SAN).
    let by_name = format!("localhost:{}", dummy.addr().port());
    for backend in [by_name, dummy.addr().to_string()] {
        let lb = originate(&backend, &["--ca", path_str(&ca)]);
        assert_eq!(get(lb.addr(), "/").served_by(), "server1");
        assert_eq!(
            get(lb.addr(), "/bytes/3000000").body,
            lb::dummy::pattern_bytes(0, 3_000_000)
        );
        let data = payload(2 << 20, 11);
        let mut request = format!(
            "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            data.len()
        )
        .into_bytes();
        request.extend_from_slice(&data);
        let back = echo_through(connect(lb.addr()), Arc::new(request));
        assert!(
            back.ends_with(&data),
            "echo through TLS origination differs"
        );
    }
}

/// A backend whose certificate does not chain to --ca is refused: the client's connection is
/// closed, the reason logged, the process keeps serving.
#[test]
fn the_wrong_ca_is_refused() {
    let certs = make_certs("t06-right");
    let other = make_certs("t06-other");
    let dummy = tls_dummy(&certs);
    let mut lb = originate(
        &dummy.addr().to_string(),
        &["--ca", path_str(&other.join("ca.pem"))],
    );
    for _ in 0..2 {
        assert!(closed_without_data(&mut connect(lb.addr())));
    }
    lb.wait_stderr("UnknownIssuer", 2);
    assert!(lb.is_running());
}

/// `--sni` changes the name checked: one the certificate lacks is refused, one it has works.
#[test]
fn sni_overrides_the_checked_name() {
    let certs = make_certs("t06-sni");
    let dummy = tls_dummy(&certs);
    let ca = certs.join("ca.pem");
    let lb = originate(
        &dummy.addr().to_string(),
        &["--ca", path_str(&ca), "--sni", "example.com"],
    );
    assert!(closed_without_data(&mut connect(lb.addr())));
    lb.wait_stderr("not valid for name \"example.com\"", 1);
    let lb = originate(
        &dummy.addr().to_string(),
        &["--ca", path_str(&ca), "--sni", "localhost"],
    );
    assert_eq!(get(lb.addr(), "/").served_by(), "server1");
}

/// `--insecure` accepts a certificate from an unknown CA, and warns at start.
#[test]
fn insecure_works_and_warns() {
    let certs = make_certs("t06-insecure");
    let dummy = tls_dummy(&certs);
    let lb = originate(
        &dummy.addr().to_string(),
        &["--insecure", "--ca", "/does/not/matter.pem"],
    );
    lb.wait_stderr("NOT verified", 1);
    assert_eq!(get(lb.addr(), "/").served_by(), "server1");
}

/// A missing CA file is a one-line error naming it.
#[test]
fn a_missing_ca_is_named() {
    assert_one_line_error(
        bin!("06-tls-upstream"),
        &["--ca", "/nope/ca.pem"],
        &["/nope/ca.pem"],
    );
    assert_one_line_error(
        bin!("06-tls-upstream"),
        &["--insecure", "--sni", "bad name!"],
        &["bad name!"],
    );
}
