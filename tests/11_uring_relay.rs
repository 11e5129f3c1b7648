//! Chapter 11's io_uring experiment (`examples/uring-relay.rs`) relays correctly: its figures
//! in the README's comparison mean something only if it does the same work as `tcp-lb`
//! (every byte, both directions, half-closes passed on, failures contained to one client).
#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::thread;

use common::*;

const MIB: usize = 1024 * 1024;

/// The example's binary, beside this test's (`target/<profile>/examples/`). `cargo test`
/// builds examples before it runs tests; `cargo test --test 11_uring_relay` alone does not,
/// so then it is built here.
fn relay_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile.join("examples").join("uring-relay");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", "uring-relay"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cannot build the uring-relay example");
    }
    path
}

/// Whether this kernel lets the process use io_uring (some sandboxes forbid it); the example
/// refuses to start without it, with one line saying so.
fn io_uring_allowed() -> bool {
    match io_uring::IoUring::new(8) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("io_uring is not available here ({e}): nothing to test");
            false
        }
    }
}

fn start_relay(backends: &[String]) -> Proc {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    for b in backends {
        args.extend(["--backend", b.as_str()]);
    }
    Proc::start(relay_binary().to_str().unwrap(), &args, 1)
}

#[test]
fn it_relays_every_byte_both_ways_for_concurrent_clients() {
    if !io_uring_allowed() {
        return;
    }
    let backends = [
        spawn_echo_server().to_string(),
        spawn_echo_server().to_string(),
    ];
    let relay = start_relay(&backends);
    let addr = relay.addr();
    let clients: Vec<_> = (0..16u64)
        .map(|i| {
            thread::spawn(move || {
                // Sizes from a few bytes to 4 MiB: one read, many, and partial sends.
                let data = Arc::new(payload(1 + (i as usize * 997 * 263) % (4 * MIB), i));
                let back = echo_through(connect(addr), Arc::clone(&data));
                back == *data
            })
        })
        .collect();
    for c in clients {
        assert!(c.join().unwrap(), "an echo came back different");
    }
}

#[test]
fn a_half_close_is_passed_on_and_the_answer_still_comes_back() {
    if !io_uring_allowed() {
        return;
    }
    let backend = spawn_answer_after_eof_server(b"done").to_string();
    let relay = start_relay(&[backend]);
    let mut s = connect(relay.addr());
    s.write_all(&payload(MIB, 7)).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, format!("done after {MIB} bytes"));
}

#[test]
fn a_refusing_backend_costs_only_its_own_client() {
    if !io_uring_allowed() {
        return;
    }
    let (refusing, _held) = refusing_port();
    let echo = spawn_echo_server().to_string();
    // Round robin: the first client meets the refusing backend, the second the echo server.
    let relay = start_relay(&[refusing.to_string(), echo]);
    let mut first = connect(relay.addr());
    assert!(closed_without_data(&mut first));
    let data = Arc::new(payload(64 * 1024, 3));
    assert!(echo_through(connect(relay.addr()), Arc::clone(&data)) == *data);
}
