//! Step 8: retry on the next backend, passive and active health checks.

mod common;

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};

use common::*;

fn failover(backends: &[String], extra: &[&str]) -> Proc {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend(backends.iter().flat_map(|b| ["--backend", b.as_str()]));
    args.extend(extra);
    Proc::start(bin!("08-failover"), &args, 1)
}

fn dummy(name: &str, listen: &str) -> Proc {
    Proc::start(
        bin!("dummy-server"),
        &["--listen", listen, "--name", name],
        1,
    )
}

/// A backend that accepts connections but answers every request, `/health` included, with 503:
/// up for a TCP check, down for an HTTP one.
fn spawn_unhealthy_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    addr
}

/// A backend that accepts connections and then says nothing: its TLS handshake never ends.
fn spawn_silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    addr
}

/// A dial that times out (here a TLS handshake that never completes) is retried on the next
/// backend like a refused one: the client is answered, late but answered.
#[test]
fn a_backend_that_times_out_is_retried_elsewhere() {
    let silent = spawn_silent_server();
    let live = dummy("live", "127.0.0.1:0");
    let lb = failover(
        &[format!("tls://{silent}"), live.addr().to_string()],
        &[
            "--connect-timeout",
            "0.3",
            "--insecure",
            "--health-interval",
            "0",
        ],
    );
    for name in served_by(lb.addr(), 3) {
        assert_eq!(name, "live");
    }
    let log = lb.wait_stderr("TLS handshake timed out", 1);
    assert!(log.contains(&format!("backend=tls://{silent}")), "{log}");
}

/// The client never sees a backend that is down from the start: 300 requests, 300 answers,
/// shared by the two live backends.
#[test]
fn one_backend_down_from_the_start_costs_no_request() {
    let (_dummies, mut backends) = dummies(2);
    let (dead, _held) = refusing_port();
    let dead = dead.to_string();
    backends.extend(["--backend".to_owned(), dead.clone()]);
    let backends: Vec<String> = backends.chunks(2).map(|c| c[1].clone()).collect();
    let lb = failover(&backends, &[]);
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..300 {
        let reply = get(lb.addr(), "/");
        assert_eq!(reply.status, 200);
        *seen.entry(reply.served_by()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // The dead backend's turns are shared, not all handed to one neighbour (which would make
    // it 200 against 100).
    assert!(seen.values().all(|&n| (120..=180).contains(&n)), "{seen:?}");
    let log = lb.wait_stderr("backend down", 1);
    assert!(log.contains(&dead), "{log}");
}

/// A backend killed mid-run is skipped; restarted on the same port, it is probed back up and
/// takes its turn again, with no restart of the balancer.
#[test]
fn a_killed_backend_is_skipped_and_comes_back_by_itself() {
    let alpha = dummy("alpha", "127.0.0.1:0");
    let beta = dummy("beta", "127.0.0.1:0");
    let beta_addr = beta.addr().to_string();
    let backends = [alpha.addr().to_string(), beta_addr.clone()];
    let lb = failover(
        &backends,
        &["--health-interval", "0.2", "--rise", "2", "--fall", "2"],
    );
    assert_eq!(served_by(lb.addr(), 2), ["alpha", "beta"]);

    drop(beta);
    for name in served_by(lb.addr(), 20) {
        assert_eq!(name, "alpha");
    }
    lb.wait_stderr("backend down", 1);

    let _beta = dummy("beta", &beta_addr);
    lb.wait_stderr("backend up", 1);
    let names = served_by(lb.addr(), 4);
    assert!(names.iter().any(|n| n == "beta"), "{names:?}");
}

/// With every backend down the client is closed at once, the balancer keeps running, and the
/// first backend to come back is used.
#[test]
fn with_every_backend_down_clients_are_closed_and_service_resumes() {
    let ((a, _held), (b, _reserved)) = (refusing_port(), refusing_port());
    let lb = failover(
        &[a.to_string(), b.to_string()],
        &["--health-interval", "0.2", "--fall", "1", "--rise", "1"],
    );
    assert!(closed_without_data(&mut connect(lb.addr())));
    lb.wait_stderr("backend down", 2);
    assert!(closed_without_data(&mut connect(lb.addr())));
    lb.wait_stderr("no backend is up", 1);

    let _back = dummy("back", &b.to_string());
    lb.wait_stderr("backend up", 1);
    assert_eq!(served_by(lb.addr(), 3), ["back", "back", "back"]);
}

/// `check=http`: a backend that listens but fails `GET /health` is taken out, which a TCP check
/// could not see.
#[test]
fn an_http_check_takes_out_a_backend_that_listens_but_is_unhealthy() {
    let sick = spawn_unhealthy_server();
    let healthy = dummy("healthy", "127.0.0.1:0");
    let lb = failover(
        &[format!("{sick},check=http"), healthy.addr().to_string()],
        &["--health-interval", "0.2", "--fall", "2"],
    );
    let log = lb.wait_stderr("backend down", 1);
    assert!(
        log.contains("2 health checks failed in a row (last: GET /health answered `HTTP/1.1 503"),
        "{log}"
    );
    for name in served_by(lb.addr(), 10) {
        assert_eq!(name, "healthy");
    }
}

/// Passive health alone (`interval = 0` in the config's `[health]`): after `fail-after` failed
/// connects the dead backend is no longer dialled during its cooldown.
#[test]
fn passive_health_stops_dialling_a_dead_backend() {
    let (dead, _held) = refusing_port();
    let live = dummy("live", "127.0.0.1:0");
    let dir = temp_dir("t08-passive");
    let file = dir.join("lb.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\n[health]\ninterval = 0\nfail-after = 2\ncooldown = 60\n\
             [[backend]]\naddress = \"{dead}\"\n[[backend]]\naddress = \"{}\"\n",
            live.addr()
        ),
    )
    .unwrap();
    let lb = Proc::start(bin!("08-failover"), &["--config", path_str(&file)], 1);
    for name in served_by(lb.addr(), 20) {
        assert_eq!(name, "live");
    }
    let log = lb.wait_stderr("skipping it for 60s", 1);
    assert!(log.contains("2 connects failed in a row"), "{log}");
    assert_eq!(log.matches("cannot reach backend").count(), 2, "{log}");
    assert!(log.contains("no active health checks"), "{log}");
}

#[test]
fn bad_health_settings_are_one_line_errors() {
    let b = bin!("08-failover");
    assert_one_line_error(b, &["--rise", "0"], &["--rise", "0"]);
    assert_one_line_error(b, &["--health-interval", "soon"], &["soon"]);
    assert_one_line_error(b, &["--backend", "127.0.0.1:1,check=icmp"], &["icmp"]);
    // The tutorial's finale does not know [health]; it says which step does.
    let dir = temp_dir("t08-config");
    let file = dir.join("lb.toml");
    std::fs::write(&file, "[health]\nrise = 2\n").unwrap();
    assert_one_line_error(
        bin!("07-final"),
        &["--config", path_str(&file)],
        &["[health]", "08-failover"],
    );
}
