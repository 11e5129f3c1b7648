//! The dummy backend servers.

mod common;

use std::sync::Arc;

use common::*;

/// Each --listen gets the --name at its position (or serverN), its own hit counter, and says
/// so in a header and in the body, followed by the request line and headers.
#[test]
fn servers_say_who_they_are_and_count_their_own_hits() {
    let dummy = Proc::start(
        bin!("dummy-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--name",
            "alpha",
            "--listen",
            "127.0.0.1:0",
        ],
        2,
    );
    let (a, b) = (dummy.addrs[0], dummy.addrs[1]);
    let r = get(a, "/x?y=1");
    assert_eq!(r.served_by(), "alpha");
    assert!(
        r.text()
            .starts_with("server: alpha\nhits: 1\nGET /x?y=1 HTTP/1.1\nhost: test\n"),
        "{}",
        r.text()
    );
    assert_eq!(get(a, "/").text().lines().nth(1), Some("hits: 2"));
    let r = get(b, "/");
    assert_eq!(r.served_by(), "server2");
    assert_eq!(r.text().lines().nth(1), Some("hits: 1"));
}

/// `GET /bytes/N` sends exactly N bytes of the documented pattern; `/echo` returns the body.
#[test]
fn bytes_and_echo_endpoints_are_exact() {
    let dummy = Proc::start(bin!("dummy-server"), &["--listen", "127.0.0.1:0"], 1);
    let r = get(dummy.addr(), "/bytes/200000");
    assert_eq!(r.body, lb::dummy::pattern_bytes(0, 200_000));
    assert_eq!(get(dummy.addr(), "/bytes/0").body.len(), 0);
    assert_eq!(get(dummy.addr(), "/bytes/lots").status, 400);

    let data = Arc::new(payload(300_000, 7));
    let mut request = format!(
        "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        data.len()
    )
    .into_bytes();
    request.extend_from_slice(&data);
    let back = echo_through(connect(dummy.addr()), Arc::new(request));
    assert!(back.ends_with(&data[..]), "echo body differs");
}

/// Two requests on one connection are both answered (HTTP/1.1 keep-alive).
#[test]
fn keeps_connections_alive() {
    let dummy = Proc::start(bin!("dummy-server"), &["--listen", "127.0.0.1:0"], 1);
    let mut s = connect(dummy.addr());
    assert_eq!(get_on(&mut s, "/").text().lines().nth(1), Some("hits: 1"));
    assert_eq!(get_on(&mut s, "/").text().lines().nth(1), Some("hits: 2"));
}

/// `--delay` slows one server down (not its `/health`), `GET /delay/MS` one request; neither
/// counts `/health` as a hit.
#[test]
fn delays_make_a_slow_backend() {
    let d = Proc::start(
        bin!("dummy-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--delay",
            "0",
            "--delay",
            "300",
        ],
        2,
    );
    d.wait_stderr("answering after 300ms", 1);
    let started = std::time::Instant::now();
    let reply = get(d.addrs[1], "/");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(
        (reply.status, reply.served_by()),
        (200, "server2".to_owned())
    );

    let started = std::time::Instant::now();
    let reply = get(d.addrs[0], "/delay/200");
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    assert!(reply.text().contains("GET /delay/200"), "{}", reply.text());
    assert_eq!(get(d.addrs[0], "/delay/soon").status, 400);
    assert_eq!(get(d.addrs[0], "/delay/3600000").status, 400);

    let health = get(d.addrs[0], "/health");
    assert_eq!((health.status, health.text()), (200, "ok\n".to_owned()));
    // Hits so far on server1: /delay/200 and the two refused delays; /health not counted.
    assert!(get(d.addrs[0], "/").text().contains("hits: 4"));
    assert_one_line_error(
        bin!("dummy-server"),
        &["--listen", "127.0.0.1:0", "--delay", "1", "--delay", "2"],
        &["--delay"],
    );
}

/// More names than listeners, a missing certificate, a port in use: one-line errors.
#[test]
fn bad_input_is_a_one_line_error() {
    assert_one_line_error(
        bin!("dummy-server"),
        &["--listen", "127.0.0.1:0", "--name", "a", "--name", "b"],
        &["--name"],
    );
    assert_one_line_error(
        bin!("dummy-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls",
            "--cert",
            "/nonexistent/c.pem",
        ],
        &["/nonexistent/c.pem"],
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_one_line_error(
        bin!("dummy-server"),
        &["--listen", &addr],
        &["cannot listen on", &addr],
    );
}
