//! Step 9: least-connections, smooth weighted round robin, power of two choices, ip-hash.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};

use common::*;

fn strategies(strategy: &str, backends: &[String], extra: &[&str]) -> Proc {
    let mut args = vec!["--listen", "127.0.0.1:0", "--strategy", strategy];
    args.extend(backends.iter().flat_map(|b| ["--backend", b.as_str()]));
    args.extend(extra);
    Proc::start(bin!("09-strategies"), &args, 1)
}

/// The `--backend` values of `dummies(n)`.
fn backend_addrs(flags: &[String]) -> Vec<String> {
    flags.chunks(2).map(|c| c[1].clone()).collect()
}

/// The balancer logs one "connection closed" line per connection that ended, whether cleanly or
/// by error: waiting for the n-th tells us its count of open connections went down.
const CLOSED: &str = "connection closed";

/// A backend that holds long connections gets no new ones while the others are idle; once they
/// end (and are counted as ended), it takes its turn again.
#[test]
fn least_connections_sends_nothing_new_to_a_backend_holding_connections() {
    let (_dummies, flags) = dummies(3);
    let lb = strategies("least-connections", &backend_addrs(&flags), &[]);

    // Six keep-alive connections, two per backend; keep the two on one backend open.
    let mut open: Vec<(String, TcpStream)> = (0..6)
        .map(|_| {
            let mut s = connect(lb.addr());
            (get_on(&mut s, "/").served_by(), s)
        })
        .collect();
    let held = open[0].0.clone();
    assert_eq!(open.iter().filter(|(n, _)| *n == held).count(), 2);
    open.retain(|(n, _)| *n == held);
    let mut closed = 4;
    lb.wait_stderr(CLOSED, closed);

    for _ in 0..20 {
        assert_ne!(get(lb.addr(), "/").served_by(), held);
        closed += 1;
        lb.wait_stderr(CLOSED, closed);
    }

    drop(open);
    lb.wait_stderr(CLOSED, closed + 2);
    let names: BTreeSet<String> = served_by(lb.addr(), 3).into_iter().collect();
    assert!(names.contains(&held), "{names:?}");
}

/// `weight=3` against `weight=1`: smooth weighted round robin gives exactly 3:1 per window of 4.
#[test]
fn weights_give_the_configured_split() {
    let (_dummies, flags) = dummies(2);
    let addrs = backend_addrs(&flags);
    let lb = strategies(
        "weighted-round-robin",
        &[format!("{},weight=3", addrs[0]), addrs[1].clone()],
        &[],
    );
    let names = served_by(lb.addr(), 40);
    let heavy = names.iter().filter(|n| *n == "server1").count();
    assert!(
        (27..=33).contains(&heavy),
        "{heavy} of 40 on weight 3: {names:?}"
    );
    // Smooth: the light backend is never starved for more than three turns in a row.
    assert!(
        names.windows(4).all(|w| w.iter().any(|n| n == "server2")),
        "{names:?}"
    );
}

/// Which backend each of 120 client IPs (127.0.1.x; all of 127.0.0.0/8 is local on Linux)
/// lands on.
fn ip_hash_map(lb: SocketAddr) -> Vec<String> {
    (1..=120u8)
        .map(|i| get_on(&mut connect_from([127, 0, 1, i], lb), "/").served_by())
        .collect()
}

/// Each client IP keeps its backend; removing one of four backends (and reordering the rest)
/// moves only the clients that were on it.
#[test]
fn ip_hash_is_stable_and_moves_only_the_removed_backends_clients() {
    let (_dummies, flags) = dummies(4);
    let addrs = backend_addrs(&flags);
    let lb = strategies("ip-hash", &addrs, &[]);
    let before = ip_hash_map(lb.addr());
    assert_eq!(ip_hash_map(lb.addr()), before, "same client, same backend");
    let used: BTreeSet<&String> = before.iter().collect();
    assert_eq!(used.len(), 4, "120 clients should reach all 4 backends");
    drop(lb);

    let fewer = [addrs[2].clone(), addrs[1].clone(), addrs[0].clone()];
    let lb = strategies("ip-hash", &fewer, &[]);
    let after = ip_hash_map(lb.addr());
    let mut moved = 0;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if b != a {
            assert_eq!(b, "server4", "client {i} moved from {b} to {a}");
            moved += 1;
        }
    }
    let on_removed = before.iter().filter(|n| *n == "server4").count();
    assert_eq!(moved, on_removed);
    assert!(moved < 60, "{moved} of 120 clients moved");
}

/// Every strategy of every chapter works with a single backend.
#[test]
fn every_strategy_survives_a_single_backend() {
    let (_dummies, flags) = dummies(1);
    for strategy in [
        "round-robin",
        "random",
        "least-called",
        "least-connections",
        "weighted-round-robin",
        "power-of-two",
        "ip-hash",
    ] {
        let lb = strategies(strategy, &backend_addrs(&flags), &[]);
        assert_eq!(served_by(lb.addr(), 3), ["server1"; 3], "{strategy}");
    }
}

/// Power of two choices keeps away from the loaded backend as least-connections does (each
/// new connection compares two backends, and the one holding connections loses every draw it
/// is in).
#[test]
fn power_of_two_avoids_a_loaded_backend() {
    let (_dummies, flags) = dummies(2);
    let lb = strategies("power-of-two", &backend_addrs(&flags), &[]);
    let mut first = connect(lb.addr());
    let held = get_on(&mut first, "/").served_by();
    let mut closed = 0;
    for _ in 0..10 {
        assert_ne!(get(lb.addr(), "/").served_by(), held);
        closed += 1;
        lb.wait_stderr(CLOSED, closed);
    }
}

#[test]
fn strategies_are_introduced_by_their_chapter() {
    // Step 07 lists the tutorial's strategies only, and says where the others are.
    assert_one_line_error(
        bin!("07-final"),
        &["--strategy", "least-connections"],
        &["least-connections"],
    );
    let dir = temp_dir("t09-config");
    let file = dir.join("lb.toml");
    std::fs::write(&file, "strategy = \"ip-hash\"\n").unwrap();
    assert_one_line_error(
        bin!("07-final"),
        &["--config", path_str(&file)],
        &["ip-hash", "09-strategies"],
    );
    assert_one_line_error(
        bin!("09-strategies"),
        &["--backend", "127.0.0.1:1,weight=0"],
        &["weight"],
    );
}
