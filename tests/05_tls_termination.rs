//! Step 5: TLS termination in front of plain backends.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::thread;

use common::tls as tlsc;
use common::*;

fn terminate(certs: &Path, backend: std::net::SocketAddr, extra: &[&str]) -> Proc {
    let (cert, key, backend) = (
        certs.join("localhost.pem"),
        certs.join("localhost-key.pem"),
        backend.to_string(),
    );
    let mut args = vec!["--listen", "127.0.0.1:0", "--backend", &backend];
    args.extend(["--cert", path_str(&cert), "--key", path_str(&key)]);
    args.extend(extra);
    Proc::start(bin!("05-tls-termination"), &args, 1)
}

/// curl verifying against our CA gets the dummy server's answer through the TLS listener.
#[test]
fn curl_with_the_right_ca() {
    let certs = make_certs("t05-curl");
    let dummy = Proc::start(bin!("dummy-server"), &["--listen", "127.0.0.1:0"], 1);
    let lb = terminate(&certs, dummy.addr(), &[]);
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            path_str(&certs.join("ca.pem")),
        ])
        .arg(format!("https://localhost:{}/", lb.addr().port()))
        .output()
        .expect("curl is needed for this test");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.starts_with("server: server1\nhits: 1\n"),
        "{body}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Megabytes each way through termination arrive byte-exact, and a client's half-close
/// (close_notify, then TCP shutdown) reaches the backend while the answer still comes back.
#[test]
fn byte_exact_and_half_close_through_termination() {
    let certs = make_certs("t05-bytes");
    let config = tlsc::config_trusting(&certs.join("ca.pem"));
    let lb = terminate(&certs, spawn_echo_server(), &[]);
    let mut tls = tlsc::connect(lb.addr(), Arc::clone(&config), "localhost").unwrap();
    // rustls' blocking stream is one object, so alternate chunks: write 64 KiB, read it back.
    let data = payload(4 << 20, 5);
    for chunk in data.chunks(64 * 1024) {
        tls.write_all(chunk).unwrap();
        let mut back = vec![0; chunk.len()];
        tls.read_exact(&mut back).unwrap();
        assert!(back == chunk, "echo differs");
    }

    let lb = terminate(&certs, spawn_answer_after_eof_server(b"answer"), &[]);
    let mut tls = tlsc::connect(lb.addr(), config, "localhost").unwrap();
    tls.write_all(&payload(100_000, 6)).unwrap();
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    tls.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "answer after 100000 bytes");
}

/// A client trusting another CA refuses the balancer's certificate.
#[test]
fn a_client_with_the_wrong_ca_refuses() {
    let certs = make_certs("t05-right");
    let other = make_certs("t05-other");
    let lb = terminate(&certs, spawn_echo_server(), &[]);
    let err = tlsc::connect(
        lb.addr(),
        tlsc::config_trusting(&other.join("ca.pem")),
        "localhost",
    )
    .expect_err("handshake must fail");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

/// Plaintext, garbage and a silent client are each dropped and logged; the process lives on
/// and the next client is served. The silent one is cut off by the handshake timeout.
#[test]
fn plaintext_garbage_and_silence_are_dropped() {
    let certs = make_certs("t05-bad");
    let config = tlsc::config_trusting(&certs.join("ca.pem"));
    let mut lb = terminate(&certs, spawn_echo_server(), &["--handshake-timeout", "1"]);
    let mut silent = connect(lb.addr());

    let mut plain = connect(lb.addr());
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut sink = Vec::new();
    let _ = plain.read_to_end(&mut sink); // an alert, then EOF
    let mut garbage = connect(lb.addr());
    let _ = garbage.write_all(&payload(3000, 9));
    let _ = garbage.read_to_end(&mut sink);
    lb.wait_stderr("TLS handshake with client failed", 2);

    let mut tls = tlsc::connect(lb.addr(), config, "localhost").unwrap();
    tls.write_all(b"still alive").unwrap();
    let mut back = [0u8; 11];
    tls.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still alive");

    // The silent client is closed by the balancer (its read ends), not by us.
    let waiter = thread::spawn(move || closed_without_data(&mut silent));
    assert!(waiter.join().unwrap());
    lb.wait_stderr("failed: timed out after", 1);
    assert!(lb.is_running());
}

/// Missing certificate or key files are one-line errors naming the file.
#[test]
fn missing_files_are_named() {
    let b = bin!("05-tls-termination");
    assert_one_line_error(
        b,
        &["--listen", "127.0.0.1:0", "--cert", "/nope/cert.pem"],
        &["/nope/cert.pem"],
    );
    let certs = make_certs("t05-missing");
    let cert = certs.join("localhost.pem");
    assert_one_line_error(
        b,
        &["--cert", path_str(&cert), "--key", "/nope/key.pem"],
        &["/nope/key.pem"],
    );
    assert_one_line_error(
        b,
        &["--cert", path_str(&cert), "--key", path_str(&cert)],
        &["private key"],
    );
}
