//! Step 2: the byte-forwarding proxy.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::thread;

use common::*;

fn forward_to(backend: std::net::SocketAddr) -> Proc {
    let backend = backend.to_string();
    Proc::start(
        bin!("02-forward"),
        &["--listen", "127.0.0.1:0", "--backend", &backend],
        1,
    )
}

/// Megabytes in both directions arrive byte-exact (the Go version stops at 1024 bytes).
#[test]
fn forwards_megabytes_both_ways_byte_exact() {
    let proxy = forward_to(spawn_echo_server());
    let data = Arc::new(payload(8 << 20, 1));
    let back = echo_through(connect(proxy.addr()), Arc::clone(&data));
    assert_eq!(back.len(), data.len());
    assert!(back == *data, "echoed bytes differ");
    proxy.wait_stderr("up=8388608 down=8388608", 1);
}

/// A client that shuts down its write side still receives the whole answer, and the backend
/// sees that end of stream (it answers only after it).
#[test]
fn half_close_reaches_the_backend_and_the_answer_comes_back() {
    let proxy = forward_to(spawn_answer_after_eof_server(b"answer"));
    let mut s = connect(proxy.addr());
    s.write_all(&payload(5000, 2)).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "answer after 5000 bytes");
}

/// Clients served at once each get exactly their own bytes back: no buffer is shared.
#[test]
fn concurrent_clients_never_see_each_others_bytes() {
    let proxy = forward_to(spawn_echo_server());
    let addr = proxy.addr();
    let clients: Vec<_> = (0..16u64)
        .map(|i| {
            thread::spawn(move || {
                let data = Arc::new(payload(300_000 + i as usize * 1000, 100 + i));
                echo_through(connect(addr), Arc::clone(&data)) == *data
            })
        })
        .collect();
    for c in clients {
        assert!(
            c.join().unwrap(),
            "a client got bytes that were not its own"
        );
    }
}

/// A client that connects and says nothing does not delay another.
#[test]
fn an_idle_client_does_not_block_a_busy_one() {
    let proxy = forward_to(spawn_echo_server());
    let _idle = connect(proxy.addr());
    let data = Arc::new(payload(1 << 20, 3));
    assert!(echo_through(connect(proxy.addr()), Arc::clone(&data)) == *data);
}

/// Two HTTP requests on one client connection reach the same backend connection.
#[test]
fn keep_alive_works_through_the_proxy() {
    let dummy = Proc::start(bin!("dummy-server"), &["--listen", "127.0.0.1:0"], 1);
    let proxy = forward_to(dummy.addr());
    let mut s = connect(proxy.addr());
    let first = get_on(&mut s, "/");
    let second = get_on(&mut s, "/bytes/100000");
    assert_eq!(first.text().lines().nth(1), Some("hits: 1"));
    assert_eq!(second.body, lb::dummy::pattern_bytes(0, 100_000));
}

/// A backend that is down costs the client its connection (closed at once, logged) and
/// nothing else: once the backend is up, the same proxy process serves again.
#[test]
fn backend_down_then_up() {
    let (backend, _reserved) = refusing_port();
    let mut proxy = forward_to(backend);
    let mut s = connect(proxy.addr());
    assert!(closed_without_data(&mut s));
    proxy.wait_stderr("cannot reach backend", 1);
    assert!(proxy.is_running());

    let _dummy = Proc::start(bin!("dummy-server"), &["--listen", &backend.to_string()], 1);
    assert_eq!(get(proxy.addr(), "/").served_by(), "server1");
}

/// Unparsable addresses and a port in use: one-line errors, non-zero exit.
#[test]
fn bad_input_is_a_one_line_error() {
    let b = bin!("02-forward");
    assert_one_line_error(b, &["--listen", "127.0.0.1"], &["--listen"]);
    assert_one_line_error(b, &["--backend", "nowhere"], &["--backend", "HOST:PORT"]);
    assert_one_line_error(b, &["--backend", "127.0.0.1:99999"], &["port"]);
    assert_one_line_error(
        b,
        &["--connect-timeout", "0"],
        &["--connect-timeout", "positive"],
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_one_line_error(b, &["--listen", &addr], &["cannot listen on", &addr]);
}
