//! Step 4: random choice and --strategy.

mod common;

use std::collections::HashMap;

use common::*;

/// Over 300 connections each of three backends gets a fair share (expected 100, standard
/// deviation about 8; the bound is five deviations wide so the test does not flake).
#[test]
fn random_spreads_connections_roughly_evenly() {
    let (_dummy, backends) = dummies(3);
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend(backends.iter().map(String::as_str));
    let lb = Proc::start(bin!("04-random"), &args, 1);
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..300 {
        *counts.entry(get(lb.addr(), "/").served_by()).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|&n| (60..=140).contains(&n)),
        "{counts:?}"
    );
}

/// `--strategy round-robin` rotates exactly; with no `--backend` the binary starts its own
/// three dummy servers and says so.
#[test]
fn strategy_flag_and_built_in_backends() {
    let lb = Proc::start(
        bin!("04-random"),
        &["--listen", "127.0.0.1:0", "--strategy", "round-robin"],
        1,
    );
    let seen = served_by(lb.addr(), 6);
    assert_eq!(
        seen,
        [
            "server1", "server2", "server3", "server1", "server2", "server3"
        ]
    );
    lb.wait_stderr("built-in dummy", 1);
}

/// Unknown strategy, unparsable listen address, port in use: one-line errors.
#[test]
fn bad_input_is_a_one_line_error() {
    let b = bin!("04-random");
    assert_one_line_error(b, &["--strategy", "fastest"], &["fastest", "--strategy"]);
    assert_one_line_error(b, &["--listen", "300.0.0.1:80"], &["--listen"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_one_line_error(b, &["--listen", &addr], &["cannot listen on", &addr]);
}
