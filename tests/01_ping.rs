//! Step 1: the ping listener.

mod common;

use std::io::{Read, Write};

use common::*;

const PONG: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\npong\n";

/// An HTTP client gets `pong`, and what it sent is printed on stdout.
#[test]
fn answers_pong_and_prints_the_request() {
    let ping = Proc::start(bin!("01-ping"), &["--listen", "127.0.0.1:0"], 1);
    let reply = get(ping.addr(), "/hello-from-the-test");
    assert_eq!((reply.status, reply.text().as_str()), (200, "pong\n"));
    ping.wait_stdout("GET /hello-from-the-test HTTP/1.1");
}

/// A client that connects and says nothing does not delay the next one.
#[test]
fn an_idle_client_does_not_block_another() {
    let ping = Proc::start(bin!("01-ping"), &["--listen", "127.0.0.1:0"], 1);
    let _idle = connect(ping.addr());
    let _idle_too = connect(ping.addr());
    assert_eq!(get(ping.addr(), "/").text(), "pong\n");
}

/// Two requests on one connection get two answers (keep-alive), even when a request head
/// arrives one byte at a time.
#[test]
fn answers_every_request_on_a_kept_alive_connection() {
    let ping = Proc::start(bin!("01-ping"), &["--listen", "127.0.0.1:0"], 1);
    let mut s = connect(ping.addr());
    assert_eq!(get_on(&mut s, "/one").text(), "pong\n");
    for b in b"GET /two HTTP/1.1\r\nhost: x\r\n\r\n" {
        s.write_all(&[*b]).unwrap();
    }
    let mut buf = vec![0; PONG.len()];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(String::from_utf8(buf).unwrap(), PONG);
}

/// Bad flags and a port in use are one-line errors with a non-zero exit, not panics.
#[test]
fn bad_input_is_a_one_line_error() {
    assert_one_line_error(bin!("01-ping"), &["--listen", "localhost"], &["--listen"]);
    assert_one_line_error(bin!("01-ping"), &["--bogus"], &["--bogus"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_one_line_error(
        bin!("01-ping"),
        &["--listen", &addr],
        &["cannot listen on", &addr],
    );
}
