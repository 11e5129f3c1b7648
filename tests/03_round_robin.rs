//! Step 3: round robin.

mod common;

use common::*;

/// Connections go to the backends strictly in turn, in the order given.
#[test]
fn rotates_in_exact_order() {
    let (_dummy, backends) = dummies(3);
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend(backends.iter().map(String::as_str));
    let lb = Proc::start(bin!("03-round-robin"), &args, 1);
    let expected: Vec<String> = ["server1", "server2", "server3"]
        .iter()
        .cycle()
        .take(9)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(served_by(lb.addr(), 9), expected);
}

/// A backend that is down fails only the connections sent to it; the rotation goes on.
#[test]
fn a_backend_down_costs_only_its_turn() {
    let dummy = Proc::start(
        bin!("dummy-server"),
        &["--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"],
        2,
    );
    let (down, _held) = refusing_port();
    let down = down.to_string();
    let (a, b) = (dummy.addrs[0].to_string(), dummy.addrs[1].to_string());
    let mut lb = Proc::start(
        bin!("03-round-robin"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            &a,
            "--backend",
            &down,
            "--backend",
            &b,
        ],
        1,
    );
    for _ in 0..2 {
        assert_eq!(get(lb.addr(), "/").served_by(), "server1");
        assert!(closed_without_data(&mut connect(lb.addr())));
        assert_eq!(get(lb.addr(), "/").served_by(), "server2");
    }
    lb.wait_stderr("cannot reach backend", 2);
    assert!(lb.is_running());
}

/// Bad backends and a port in use: one-line errors.
#[test]
fn bad_input_is_a_one_line_error() {
    let b = bin!("03-round-robin");
    assert_one_line_error(b, &["--backend", "127.0.0.1:1", "--backend", "x"], &["`x`"]);
    assert_one_line_error(
        b,
        &["--backend", "no-such-host.invalid:80"],
        &["cannot resolve backend"],
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_one_line_error(b, &["--listen", &addr], &["cannot listen on", &addr]);
}
