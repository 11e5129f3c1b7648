//! Step 10, `tcp-lb`: each operator feature, driven through the real binary.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;

use common::*;

const LB: &str = bin!("tcp-lb");

/// `tcp-lb` on ephemeral ports with an admin listener; `addrs[0]` serves, `addrs[1]` is admin.
fn start(args: &[&str]) -> Proc {
    let mut all = vec!["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    all.extend_from_slice(args);
    Proc::start(LB, &all, 2)
}

fn metrics(lb: &Proc) -> String {
    let (status, body) = admin_get(lb.addrs[1], "/metrics");
    assert_eq!(status, 200);
    body
}

/// Sends `msg` and expects it echoed back.
fn echo(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).unwrap();
    let mut back = vec![0; msg.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

fn echoing(lb: &Proc) -> TcpStream {
    let mut s = connect(lb.addr());
    echo(&mut s, b"hello");
    s
}

#[test]
fn the_sample_config_serves_with_metrics_health_and_an_access_log() {
    let (_dummies, backends) = dummies(3);
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/10-production.toml");
    let mut args = vec!["--config", config];
    args.extend(backends.iter().map(String::as_str));
    let lb = start(&args);
    let served = served_by(lb.addr(), 30);
    for name in ["server1", "server2", "server3"] {
        assert!(served.iter().any(|s| s == name), "{served:?}");
    }
    let log = lb.wait_stderr("end=done", 30);
    let ups: u64 = log
        .lines()
        .filter(|l| l.contains("connection closed"))
        .map(|l| {
            assert!(
                l.contains("client=127.0.0.1:") && l.contains("backend=127.0.0.1:"),
                "{l}"
            );
            assert!(l.contains(" down=") && l.contains(" duration="), "{l}");
            let up = l.split(" up=").nth(1).unwrap().split(' ').next().unwrap();
            up.parse::<u64>().unwrap()
        })
        .sum();
    let m = metrics(&lb);
    assert_eq!(metric(&m, "tcplb_connections_total"), 30);
    let (mut total, mut sent) = (0, 0);
    for b in backends.iter().filter(|b| !b.starts_with("--")) {
        total += metric(
            &m,
            &format!("tcplb_backend_connections_total{{backend=\"{b}\"}}"),
        );
        sent += metric(
            &m,
            &format!("tcplb_backend_bytes_sent_total{{backend=\"{b}\"}}"),
        );
        assert_eq!(
            metric(&m, &format!("tcplb_backend_up{{backend=\"{b}\"}}")),
            1
        );
    }
    assert_eq!((total, sent), (30, ups));
    assert!(m.contains("# TYPE tcplb_backend_bytes_received_total counter"));
    assert_eq!(admin_get(lb.addrs[1], "/health"), (200, "ok\n".to_owned()));
    assert_eq!(admin_get(lb.addrs[1], "/nope").0, 404);
}

#[test]
fn metrics_count_connect_failures_and_health_follows_the_backends() {
    let (dummy, backends) = dummies(1);
    let (dead, _held) = refusing_port();
    let (live, dead) = (backends[1].clone(), dead.to_string());
    let lb = start(&[
        "--backend",
        &live,
        "--backend",
        &dead,
        "--health-interval",
        "0.1",
        "--fall",
        "1",
    ]);
    let up = |m: &str, b: &str| metric(m, &format!("tcplb_backend_up{{backend=\"{b}\"}}"));
    lb.wait_stderr("health checks failed in a row", 1);
    assert_eq!(up(&metrics(&lb), &dead), 0);
    assert_eq!(served_by(lb.addr(), 4), ["server1"; 4]);
    let m = metrics(&lb);
    assert_eq!(up(&m, &live), 1);
    let failures = format!("tcplb_backend_connect_failures_total{{backend=\"{dead}\"}}");
    assert!(metric(&m, &failures) >= 1, "{m}");
    assert_eq!(
        metric(
            &m,
            &format!("tcplb_backend_connections_total{{backend=\"{live}\"}}")
        ),
        4
    );
    assert_eq!(admin_get(lb.addrs[1], "/health").0, 200);
    // With every backend down, /health says so. The dummy's port is held dead: an ephemeral
    // port, another test's listener could otherwise take it and pass the health check.
    let live_addr = dummy.addrs[0];
    drop(dummy);
    let _still_dead = hold_dead_port(live_addr);
    lb.wait_stderr("health checks failed in a row", 2);
    assert_eq!(
        admin_get(lb.addrs[1], "/health"),
        (503, "no backend is up\n".to_owned())
    );
}

#[test]
fn with_no_backend_it_serves_the_built_in_ones_as_cargo_run_does() {
    let lb = start(&[]);
    lb.wait_stderr("started built-in dummy backend", 3);
    let mut served = served_by(lb.addr(), 3);
    served.sort();
    assert_eq!(served, ["server1", "server2", "server3"]);
}

#[test]
fn an_idle_pair_is_closed_after_the_idle_timeout() {
    let backend = spawn_echo_server().to_string();
    let lb = start(&["--backend", &backend, "--idle-timeout", "0.3"]);
    let mut s = echoing(&lb);
    // Nothing more is sent either way: the balancer closes both sides.
    assert!(closed_without_data(&mut s));
    lb.wait_stderr("end=idle-timeout", 1);
    assert_eq!(metric(&metrics(&lb), "tcplb_idle_timeouts_total"), 1);
}

#[test]
fn beyond_max_connections_clients_queue_then_are_refused() {
    let backend = spawn_echo_server().to_string();
    let lb = start(&[
        "--backend",
        &backend,
        "--max-connections",
        "2",
        "--queue",
        "1",
    ]);
    let first = echoing(&lb);
    let _second = echoing(&lb);
    // The third waits in the queue: its bytes are not forwarded yet.
    let mut queued = connect(lb.addr());
    queued.write_all(b"queued").unwrap();
    // The queue holds one: the fourth is closed at once. (The listener takes clients in the
    // order they connected, so the third has its place in the queue by then.)
    let mut refused = connect(lb.addr());
    assert!(closed_without_data(&mut refused));
    lb.wait_stderr("end=max-connections", 1);
    assert_eq!(metric(&metrics(&lb), "tcplb_connections_queued"), 1);
    // A slot frees up: the queued client is served.
    drop(first);
    let mut back = [0u8; 6];
    queued.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"queued");
    let m = metrics(&lb);
    assert_eq!(
        metric(
            &m,
            "tcplb_connections_refused_total{reason=\"max-connections\"}"
        ),
        1
    );
    assert_eq!(metric(&m, "tcplb_connections_active"), 2);
}

#[test]
fn a_queued_client_gives_up_after_the_queue_timeout_and_queue_0_refuses_at_once() {
    let backend = spawn_echo_server().to_string();
    let lb = start(&[
        "--backend",
        &backend,
        "--max-connections",
        "1",
        "--queue-timeout",
        "0.2",
    ]);
    let _held = echoing(&lb);
    let mut late = connect(lb.addr());
    assert!(closed_without_data(&mut late));
    lb.wait_stderr("end=queue-timeout", 1);

    let lb = start(&[
        "--backend",
        &backend,
        "--max-connections",
        "1",
        "--queue",
        "0",
    ]);
    let _held = echoing(&lb);
    let mut late = connect(lb.addr());
    assert!(closed_without_data(&mut late));
    lb.wait_stderr("end=max-connections", 1);
}

#[test]
fn per_client_limits_and_allow_deny_lists_use_the_client_ip() {
    let backend = spawn_echo_server().to_string();
    let lb = start(&[
        "--backend",
        &backend,
        "--max-per-client",
        "2",
        "--allow",
        "127.0.0.0/8",
        "--deny",
        "127.0.0.3",
    ]);
    let a = connect_from([127, 0, 0, 1], lb.addr());
    let b = connect_from([127, 0, 0, 1], lb.addr());
    let mut held = [a, b];
    for s in &mut held {
        echo(s, b"x");
    }
    let mut third = connect_from([127, 0, 0, 1], lb.addr());
    assert!(closed_without_data(&mut third));
    lb.wait_stderr("end=max-per-client", 1);
    // Another client IP is not affected.
    let mut other = connect_from([127, 0, 0, 2], lb.addr());
    echo(&mut other, b"y");
    let mut denied = connect_from([127, 0, 0, 3], lb.addr());
    assert!(closed_without_data(&mut denied));
    lb.wait_stderr("end=denied", 1);
    // Once one of the first two ends, 127.0.0.1 may connect again.
    drop(held);
    lb.wait_stderr("end=done", 2);
    let mut again = connect_from([127, 0, 0, 1], lb.addr());
    echo(&mut again, b"z");

    let only_10 = start(&["--backend", &backend, "--allow", "10.0.0.0/8"]);
    let mut s = connect(only_10.addr());
    assert!(closed_without_data(&mut s));
    assert_eq!(
        metric(
            &metrics(&only_10),
            "tcplb_connections_refused_total{reason=\"denied\"}"
        ),
        1
    );
}

#[test]
fn sighup_reloads_without_dropping_connections_and_keeps_the_old_config_on_error() {
    let (_dummies, backends) = dummies(2);
    let (one, two) = (&backends[1], &backends[3]);
    let dir = temp_dir("reload");
    let file = dir.join("lb.toml");
    let write = |text: String| std::fs::write(&file, text).unwrap();
    write(format!("[[backend]]\naddress = \"{one}\"\n"));
    let lb = start(&["--config", path_str(&file)]);
    let mut kept = connect(lb.addr());
    assert_eq!(get_on(&mut kept, "/").served_by(), "server1");

    write(format!(
        "strategy = \"least-connections\"\n[[backend]]\naddress = \"{two}\"\n"
    ));
    lb.signal("HUP");
    lb.wait_stderr("configuration reloaded", 1);
    assert_eq!(served_by(lb.addr(), 3), ["server2"; 3]);
    // The connection made before the reload still goes where it went.
    assert_eq!(get_on(&mut kept, "/").served_by(), "server1");

    write("strategy = \"fastest\"\n".to_owned());
    lb.signal("HUP");
    let log = lb.wait_stderr("reload failed", 1);
    assert!(log.contains("fastest"), "{log}");
    assert_eq!(served_by(lb.addr(), 2), ["server2"; 2]);

    // Limits reload too: new clients from 127.0.0.1 are refused, the old one is served.
    write(format!(
        "[limits]\ndeny = [\"127.0.0.1\"]\n[[backend]]\naddress = \"{two}\"\n"
    ));
    lb.signal("HUP");
    lb.wait_stderr("configuration reloaded", 2);
    let mut refused = connect(lb.addr());
    assert!(closed_without_data(&mut refused));
    assert_eq!(get_on(&mut kept, "/").served_by(), "server1");
    let m = metrics(&lb);
    assert_eq!(metric(&m, "tcplb_config_reloads_total{result=\"ok\"}"), 2);
    assert_eq!(
        metric(&m, "tcplb_config_reloads_total{result=\"error\"}"),
        1
    );
    assert!(!m.contains(&format!("backend=\"{one}\"")), "{m}");
}

#[test]
fn sigterm_drains_then_exits_zero_and_the_deadline_cuts_what_is_left() {
    let backend = spawn_echo_server().to_string();
    let mut lb = start(&["--backend", &backend]);
    let mut inflight = echoing(&lb);
    lb.signal("TERM");
    lb.wait_stderr("draining", 1);
    // No new client is accepted, and the admin listener tells the layer in front.
    assert!(TcpStream::connect(lb.addr()).is_err());
    assert_eq!(admin_get(lb.addrs[1], "/health").0, 503);
    // The connection in flight carries on to its natural end.
    echo(&mut inflight, b"still here");
    inflight.shutdown(Shutdown::Write).unwrap();
    assert!(closed_without_data(&mut inflight));
    assert_eq!(lb.wait_exit(), 0);
    // Waited for, not looked up: the process may exit before this test has read its last
    // lines (seen under load).
    lb.wait_stderr("drained: every connection finished", 1);

    let mut lb = start(&["--backend", &backend, "--drain-timeout", "0.2"]);
    let mut idle = echoing(&lb);
    lb.signal("TERM");
    assert_eq!(lb.wait_exit(), 0);
    lb.wait_stderr("drain deadline reached: closing 1 connection", 1);
    assert!(closed_without_data(&mut idle));
}

/// A backend that records everything each connection sent it, until EOF.
fn spawn_capture_server() -> (String, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel();
    let addr = spawn_per_connection(move |mut conn| {
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got);
        let _ = tx.send(got);
    });
    (addr.to_string(), rx)
}

fn send_and_close(to: SocketAddr, bytes: &[u8]) -> SocketAddr {
    let mut s = connect(to);
    s.write_all(bytes).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let local = s.local_addr().unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    local
}

#[test]
fn proxy_protocol_headers_tell_the_backend_who_the_client_is() {
    use lb::proxy_protocol::{Version, header};
    for version in ["v1", "v2"] {
        let (backend, captured) = spawn_capture_server();
        let spec = format!("{backend},proxy={version}");
        let lb = start(&["--backend", &spec, "--health-interval", "0"]);
        let client = send_and_close(lb.addr(), b"hello");
        let got = captured.recv_timeout(PATIENCE).unwrap();
        let v = if version == "v1" {
            Version::V1
        } else {
            Version::V2
        };
        let mut want = header(v, Some((client, lb.addr())));
        want.extend_from_slice(b"hello");
        assert_eq!(got, want, "{}", String::from_utf8_lossy(&got));
    }
    // v1 written out, as a backend's log would show it.
    let (backend, captured) = spawn_capture_server();
    let spec = format!("{backend},proxy=v1");
    let lb = start(&["--backend", &spec, "--health-interval", "0"]);
    let client = send_and_close(lb.addr(), b"");
    let got = String::from_utf8(captured.recv_timeout(PATIENCE).unwrap()).unwrap();
    assert_eq!(
        got,
        format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
            client.port(),
            lb.addr().port()
        )
    );
}

#[test]
fn accept_proxy_takes_the_client_from_the_header_for_limits_logs_and_backends() {
    let (backend, captured) = spawn_capture_server();
    let spec = format!("{backend},proxy=v1");
    let lb = start(&[
        "--backend",
        &spec,
        "--health-interval",
        "0",
        "--accept-proxy",
        "--deny",
        "192.0.2.0/24",
    ]);
    let header = b"PROXY TCP4 203.0.113.7 198.51.100.1 4000 443\r\n";
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(b"hello");
    send_and_close(lb.addr(), &bytes);
    assert_eq!(captured.recv_timeout(PATIENCE).unwrap(), bytes);
    lb.wait_stderr("client=203.0.113.7:4000", 1);

    // A v2 header for a denied network.
    let v2 = lb::proxy_protocol::header(
        lb::proxy_protocol::Version::V2,
        Some((
            "192.0.2.9:5000".parse().unwrap(),
            "198.51.100.1:443".parse().unwrap(),
        )),
    );
    let mut s = connect(lb.addr());
    s.write_all(&v2).unwrap();
    assert!(closed_without_data(&mut s));
    lb.wait_stderr("client=192.0.2.9:5000", 1);
    assert!(lb.stderr().contains("end=denied"));

    // No header at all: closed, and counted.
    let mut s = connect(lb.addr());
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(closed_without_data(&mut s));
    lb.wait_stderr("bad PROXY header", 1);
    assert_eq!(metric(&metrics(&lb), "tcplb_proxy_header_errors_total"), 1);
}

/// Backends for `retry-unanswered`: one that reads a byte and closes with the rest unread (the
/// kernel answers with a reset), one that reads what came and closes (a FIN), one that echoes,
/// one that greets first and closes.
fn unanswering_backends() -> [String; 4] {
    let reset = spawn_per_connection(|mut conn| {
        let _ = conn.read(&mut [0u8; 1]);
    });
    let fin = spawn_per_connection(|mut conn| {
        let _ = conn.read(&mut [0u8; 64]);
    });
    let echo = spawn_per_connection(|mut conn| {
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 || conn.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let greeter = spawn_per_connection(|mut conn| {
        let _ = conn.write_all(b"hello");
    });
    [reset, fin, echo, greeter].map(|a| a.to_string())
}

/// What the client of one connection gets back for `ping`: everything until the end.
fn ping(lb: &Proc) -> Vec<u8> {
    let mut s = connect(lb.addr());
    s.write_all(b"ping").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    back
}

/// `retry-unanswered` (chapter 13, issue 27 item 13): a connection its backend closes or
/// resets before sending a byte goes to the next backend with the client's bytes, byte-exact;
/// a backend that said anything is never retried; and without the option, the client sees
/// the close.
#[test]
fn a_backend_that_closes_unanswered_is_retried_only_when_allowed() {
    let [reset, fin, echo, greeter] = unanswering_backends();
    let retried = |b: &str| format!("{b},retry-unanswered");
    let (reset_r, fin_r) = (retried(&reset), retried(&fin));
    let lb = start(&[
        "--backend",
        &reset_r,
        "--backend",
        &fin_r,
        "--backend",
        &echo,
    ]);
    for _ in 0..9 {
        assert_eq!(ping(&lb), b"ping");
    }
    let text = metrics(&lb);
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("tcplb_unanswered_retries_total "))
        .unwrap();
    assert!(count.parse::<u32>().unwrap() >= 6, "{count}");
    lb.wait_stderr("backend closed before answering", 6);

    // Said something first: the client gets it, and no retry could be right.
    let greeted = start(&["--backend", &retried(&greeter), "--backend", &echo]);
    let answers: Vec<Vec<u8>> = (0..4).map(|_| ping(&greeted)).collect();
    assert_eq!(answers.iter().filter(|a| a == &b"hello").count(), 2);
    assert!(metrics(&greeted).contains("tcplb_unanswered_retries_total 0"));

    // Past what is kept (64 KiB) before any answer, a client's bytes are not sent twice: a
    // backend that read them all and closed might have acted on them.
    let sink = spawn_per_connection(|mut conn| {
        let _ = conn.read_to_end(&mut Vec::new());
    })
    .to_string();
    let big = start(&["--backend", &retried(&sink), "--backend", &echo]);
    let mut sent_to_sink = 0;
    for _ in 0..2 {
        let mut s = connect(big.addr());
        s.write_all(&vec![b'x'; 100 * 1024]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        let _ = s.read_to_end(&mut back);
        sent_to_sink += usize::from(back.is_empty());
    }
    assert_eq!(
        sent_to_sink, 1,
        "one of two went to the sink, and stayed there"
    );
    assert!(metrics(&big).contains("tcplb_unanswered_retries_total 0"));

    // Off by default: round robin sends half the clients to the one that closes.
    let plain = start(&["--backend", &fin, "--backend", &echo]);
    let answers: Vec<Vec<u8>> = (0..4).map(|_| ping(&plain)).collect();
    assert_eq!(answers.iter().filter(|a| a.is_empty()).count(), 2);
}

#[test]
fn bad_settings_are_one_line_errors_and_earlier_steps_refuse_chapter_10_keys() {
    for (args, words) in [
        (
            &["--allow", "10.0.0.1/8"][..],
            &["10.0.0.1/8", "prefix"][..],
        ),
        (&["--deny", "nope"], &["nope"]),
        (&["--backend", "127.0.0.1:1,proxy=v3"], &["v3"]),
        (
            &["--backend", "127.0.0.1:1,retry"],
            &["retry", "retry-unanswered"],
        ),
        (&["--queue-timeout", "0"], &["queue-timeout"]),
        (&["--max-connections", "many"], &["max-connections"]),
        (&["--workers", "0"], &["--workers"]),
    ] {
        assert_one_line_error(LB, args, words);
    }
    let dir = temp_dir("prod-config");
    for (text, words) in [
        ("idle-timeout = -1\n", &["idle-timeout"][..]),
        (
            "[limits]\nallow = [\"300.0.0.0/8\"]\n",
            &["2:", "300.0.0.0/8"],
        ),
        ("[limits]\nqueue-timeout = 0\n", &["queue-timeout"]),
        ("workers = 0\n", &["workers", "from 1"]),
        (
            "[[backend]]\naddress = \"h:1\"\nproxy-protocol = \"v9\"\n",
            &["3:", "v9"],
        ),
    ] {
        let file = dir.join("bad.toml");
        std::fs::write(&file, text).unwrap();
        assert_one_line_error(LB, &["--config", path_str(&file)], words);
    }
    assert_one_line_error(
        bin!("09-strategies"),
        &["--backend", "127.0.0.1:1,proxy=v2"],
        &["proxy=", "10-production"],
    );
    assert_one_line_error(
        bin!("09-strategies"),
        &["--backend", "127.0.0.1:1,retry-unanswered"],
        &["retry-unanswered", "tcp-lb"],
    );
    assert_one_line_error(
        bin!("http-lb"),
        &["--backend", "127.0.0.1:1,retry-unanswered"],
        &["retry-unanswered", "tcp-lb's"],
    );
    let file = dir.join("limits.toml");
    std::fs::write(&file, "[limits]\nqueue = 0\n").unwrap();
    for step in [bin!("07-final"), bin!("09-strategies")] {
        assert_one_line_error(
            step,
            &["--config", path_str(&file)],
            &["[limits]", "10-production"],
        );
    }
}
