//! Chapter 14: assign a server instead of proxying it; servers that register themselves
//! (seed 001). Balancers are `http-lb --mode assign` with a registration token; servers are
//! `dummy-server --register`; the client is `assign-client`.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{PATIENCE, Proc, connect, eventually, path_str, temp_dir};

/// A folder with a registration token (mode 600), and its value.
fn token() -> (PathBuf, String) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = temp_dir("assign");
    let path = dir.join("token");
    let value = "3a7c0f2e9b1d4c6a8e5f7b9d1c3e5a7f".to_owned();
    std::fs::write(&path, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, value)
}

/// An assigning balancer with a registration token and quick health checks:
/// `addrs[0]` serves clients, `addrs[1]` is the admin listener.
fn balancer(token: &Path, extra: &[&str]) -> Proc {
    balancer_at(token, "127.0.0.1:0", extra)
}

/// [`balancer`] with its admin listener on `admin`.
fn balancer_at(token: &Path, admin: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--admin",
        admin,
        "--admin-token-file",
        path_str(token),
        "--mode",
        "assign",
        "--health-interval",
        "0.5",
    ];
    args.extend_from_slice(extra);
    Proc::start(bin!("http-lb"), &args, 2)
}

/// Servers named `names`, registered with each admin URL in `admins` under a `ttl`.
fn servers(names: &[&str], admins: &[SocketAddr], token: &Path, ttl: &str) -> Proc {
    let mut args: Vec<String> = Vec::new();
    for name in names {
        args.extend([
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--name".into(),
            (*name).into(),
        ]);
    }
    for admin in admins {
        args.extend(["--register".into(), format!("http://{admin}")]);
    }
    args.extend([
        "--register-token-file".into(),
        path_str(token).into(),
        "--register-ttl".into(),
        ttl.into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::start(bin!("dummy-server"), &args, names.len())
}

/// An answer read to the end of a `connection: close` exchange.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// `METHOD path` to `addr` with `headers` and `body`, on a new connection.
fn call(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Answer {
    let mut s = connect(addr);
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    for h in headers {
        head += &format!("{h}\r\n");
    }
    head += &format!("content-length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no answer to {method} {path}: {text:?}"));
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

/// The names `GET /backends` lists.
fn listed(admin: SocketAddr, token: &str) -> Vec<String> {
    let auth = format!("authorization: Bearer {token}");
    let answer = call(admin, "GET", "/backends", &[&auth], b"");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    let mut names: Vec<String> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// The server `GET /assign` names, for a client without a cookie.
fn assigned(lb: SocketAddr) -> String {
    try_assigned(lb).expect("a server assigned")
}

/// [`assigned`], or `None` while no server can be (503).
fn try_assigned(lb: SocketAddr) -> Option<String> {
    let answer = call(lb, "GET", "/assign", &[], b"");
    if answer.status == 503 {
        return None;
    }
    assert_eq!(answer.status, 200, "{}", answer.body);
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    Some(json["name"].as_str().unwrap().to_owned())
}

/// The sum of every sample whose line starts with `prefix`.
fn sum_of(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn kill(proc: &Proc, signal: &str) {
    proc.signal(signal);
}

/// Three servers register with two balancers and both list all three; one killed with
/// SIGKILL is gone after its TTL and never assigned after that; one stopped with SIGTERM is
/// gone at once (it deregisters), long before its TTL.
#[test]
fn servers_register_with_every_balancer_and_leave_by_lease_or_goodbye() {
    let (token, value) = token();
    let (a, b) = (balancer(&token, &[]), balancer(&token, &[]));
    let admins = [a.addrs[1], b.addrs[1]];
    let _steady = servers(&["s1"], &admins, &token, "2");
    let crashing = servers(&["s2"], &admins, &token, "2");
    let leaving = servers(&["s3"], &admins, &token, "60");
    for admin in admins {
        eventually("all three listed", PATIENCE, || {
            listed(admin, &value) == ["s1", "s2", "s3"]
        });
    }

    kill(&crashing, "KILL");
    let gone = eventually("s2's lease runs out", PATIENCE, || {
        !listed(a.addrs[1], &value).contains(&"s2".to_owned())
    });
    eprintln!("s2 gone {gone:?} after SIGKILL (TTL 2 s)");
    for _ in 0..30 {
        assert_ne!(assigned(a.addrs[0]), "s2");
    }

    kill(&leaving, "TERM");
    // A 60 s lease: only the goodbye can explain it leaving now.
    eventually("s3 deregisters", Duration::from_secs(10), || {
        !listed(a.addrs[1], &value).contains(&"s3".to_owned())
            && !listed(b.addrs[1], &value).contains(&"s3".to_owned())
    });
    a.wait_stderr("registered backend s3 deregistered", 1);
    a.wait_stderr("registered backend s2: its lease ran out", 1);
}

/// A server that starts is assigned as soon as it has registered; a balancer restarted on the
/// same admin address (no config, no memory) has every server back within a renewal period.
#[test]
fn new_servers_are_assigned_at_once_and_a_restarted_balancer_gets_them_back() {
    let (token, value) = token();
    let (admin, _reserved) = common::refusing_port();
    let admin_arg = admin.to_string();
    let first = balancer_at(&token, &admin_arg, &[]);
    let _old = servers(&["s1"], &[admin], &token, "3");
    eventually("s1 assigned", PATIENCE, || {
        try_assigned(first.addr()).as_deref() == Some("s1")
    });
    let started = Instant::now();
    let _new = servers(&["s2"], &[admin], &token, "3");
    let took = eventually("s2 assigned", PATIENCE, || {
        (0..4).any(|_| try_assigned(first.addr()).as_deref() == Some("s2"))
    });
    eprintln!(
        "s2 assigned {:?} after its start ({took:?} after `listening on`)",
        started.elapsed()
    );

    drop(first);
    let second = balancer_at(&token, &admin_arg, &[]);
    let back = eventually("both back after the restart", PATIENCE, || {
        listed(admin, &value) == ["s1", "s2"]
    });
    eprintln!("registrations back {back:?} after the restart (renewal every 1 s)");
    eventually("assigned by the new balancer", PATIENCE, || {
        try_assigned(second.addr()).is_some()
    });
}

/// Every way to register badly is refused with its status and changes nothing: no token
/// (401), a wrong one (403), a registrant outside `register-allow` (403), a malformed body
/// (400), a huge one (413), one past `max-registered` (429); without a token file the
/// registry is off (404); reading the list needs the token too.
#[test]
fn bad_registrations_are_refused_and_change_nothing() {
    let (token, value) = token();
    let dir = token.parent().unwrap();
    let config = dir.join("capped.toml");
    std::fs::write(&config, "max-registered = 1\n").unwrap();
    let lb = balancer(&token, &["--config", path_str(&config)]);
    let admin = lb.addrs[1];
    let auth = format!("authorization: Bearer {value}");
    let body = br#"{"address": "127.0.0.1:1", "ttl": 30}"#;
    assert_eq!(
        call(admin, "PUT", "/backends/ok", &[&auth], body).status,
        201
    );
    let refused = [
        (call(admin, "PUT", "/backends/x", &[], body), 401),
        (
            call(
                admin,
                "PUT",
                "/backends/x",
                &["authorization: Bearer nope"],
                body,
            ),
            403,
        ),
        (
            call(admin, "PUT", "/backends/x", &[&auth], b"{\"address\": 5}"),
            400,
        ),
        (
            call(admin, "PUT", "/backends/x", &[&auth], b"not json"),
            400,
        ),
        (call(admin, "PUT", "/backends/a%2Fb", &[&auth], body), 400),
        (
            call(admin, "PUT", "/backends/x", &[&auth], &vec![b' '; 100_000]),
            413,
        ),
        (call(admin, "PUT", "/backends/x", &[&auth], body), 429),
        (call(admin, "GET", "/backends", &[], b""), 401),
        (
            call(
                admin,
                "DELETE",
                "/backends/ok",
                &["authorization: Bearer nope"],
                b"",
            ),
            403,
        ),
    ];
    for (i, (answer, want)) in refused.iter().enumerate() {
        assert_eq!(answer.status, *want, "case {i}: {}", answer.body);
    }
    assert_eq!(listed(admin, &value), ["ok"]);
    assert!(!lb.stderr().contains(&value), "the token was logged");
    // Renewing an existing name is not a new registration: the cap does not refuse it.
    assert_eq!(
        call(admin, "PUT", "/backends/ok", &[&auth], body).status,
        200
    );

    let allowed = balancer(&token, &["--register-allow", "10.0.0.0/8"]);
    let answer = call(allowed.addrs[1], "PUT", "/backends/x", &[&auth], body);
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(listed(allowed.addrs[1], &value).is_empty());

    let open = Proc::start(
        bin!("http-lb"),
        &["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        2,
    );
    assert_eq!(
        call(open.addrs[1], "PUT", "/backends/x", &[&auth], body).status,
        404
    );
    assert_eq!(
        call(open.addrs[1], "GET", "/backends", &[&auth], b"").status,
        404
    );
}

/// With a token and no backend, a balancer starts no built-in demo servers: until a server
/// registers, clients get 503.
#[test]
fn a_balancer_waiting_for_registrations_answers_503_not_a_demo_server() {
    let (token, _) = token();
    let lb = balancer(&token, &[]);
    assert_eq!(call(lb.addr(), "GET", "/", &[], b"").status, 503);
    assert!(
        !lb.stderr()
            .contains("starting the Go finale's three servers")
    );
}

/// A redirect carries the server's public URL (`--advertise-url`) with the original path and
/// query, and the affinity cookie; asking again with the cookie gives the same server.
#[test]
fn a_redirect_carries_the_public_url_the_path_and_the_query() {
    let (token, _) = token();
    let lb = balancer(&token, &[]);
    let (reserved, _guard) = common::refusing_port();
    let port = reserved.port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://s1.apps.localhost:{port}");
    let _server = Proc::start(
        bin!("dummy-server"),
        &[
            "--listen",
            &listen,
            "--name",
            "s1",
            "--advertise-url",
            &url,
            "--register",
            &format!("http://{}", lb.addrs[1]),
            "--register-token-file",
            path_str(&token),
        ],
        1,
    );
    eventually("s1 assigned", PATIENCE, || {
        call(lb.addr(), "GET", "/assign", &[], b"").status == 200
    });
    let answer = call(lb.addr(), "GET", "/a/b?x=1&y=%20", &[], b"");
    assert_eq!(answer.status, 307);
    assert!(
        answer
            .head
            .contains(&format!("location: {url}/a/b?x=1&y=%20")),
        "{}",
        answer.head
    );
    assert!(answer.head.contains("cache-control: no-store"));
    let cookie = answer
        .head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("an affinity cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let again = call(
        lb.addr(),
        "GET",
        "/assign",
        &[&format!("cookie: {cookie}")],
        b"",
    );
    assert!(
        again.body.contains(&format!("\"url\":\"{url}\"")),
        "{}",
        again.body
    );
    assert!(
        !again.head.contains("set-cookie"),
        "a hit is not re-assigned"
    );
}

/// `assign-client` keeps its server for 20 requests; after that server is killed it lands on
/// another, and every one of its 40 requests succeeds. The first balancer in its list is down
/// throughout: the second assigns it.
#[test]
fn assign_client_keeps_its_server_and_survives_its_death_and_a_dead_balancer() {
    let (token, _) = token();
    let lb = balancer(&token, &[]);
    let a = servers(&["s1"], &[lb.addrs[1]], &token, "2");
    let b = servers(&["s2"], &[lb.addrs[1]], &token, "2");
    // Until both have registered (and passed their first health check), an assignment may
    // be refused with 503: not yet, rather than a failure.
    eventually("both registered", PATIENCE, || {
        (0..6)
            .filter_map(|_| try_assigned(lb.addr()))
            .collect::<std::collections::HashSet<_>>()
            .len()
            == 2
    });
    let (dead, _keep) = common::refusing_port();
    let mut client = Command::new(bin!("assign-client"))
        .args(["--requests", "40", "--interval", "30"])
        .arg(format!("http://{dead}"))
        .arg(format!("http://{}", lb.addr()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.push(lines.next().unwrap().unwrap());
    }
    let first = seen[0]
        .split(" from ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        seen.iter()
            .all(|l| l.contains(&format!("200 from {first} "))),
        "{seen:?}"
    );
    match first.as_str() {
        "s1" => a.signal("KILL"),
        _ => b.signal("KILL"),
    }
    for line in lines {
        seen.push(line.unwrap());
    }
    let status = client.wait().unwrap();
    let mut err = String::new();
    client
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status:?}\n{err}");
    assert_eq!(seen.len(), 40, "{seen:?}");
    assert!(seen.iter().all(|l| l.contains(": 200 from ")), "{seen:?}");
    let last = seen[39]
        .split(" from ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert_ne!(last, first, "{seen:?}");
}

/// One wildcard certificate, `*.apps.localhost` from the chapter's CA: a server reached by its
/// own name presents it and curl verifies it (curl resolves `*.localhost` to the loopback
/// itself); `assign-client` gets there over HTTPS too.
#[test]
fn servers_present_one_wildcard_certificate_on_their_own_names() {
    let certs = common::make_certs("wildcard");
    let out = path_str(&certs);
    let (code, stdout, stderr) = common::run(
        bin!("certs"),
        &["--out", out, "--wildcard", "apps.localhost"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("wildcard.pem"));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(certs.join("wildcard.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let (token, value) = token();
    let bearer = format!("authorization: Bearer {value}");
    // The balancer dials the server at 127.0.0.1 but verifies it under its public name, the
    // one in its certificate: the health checker's TLS probes must pass.
    let lb = balancer(&token, &["--ca", path_str(&certs.join("ca.pem"))]);
    let (reserved, _guard) = common::refusing_port();
    let port = reserved.port();
    let url = format!("https://s7.apps.localhost:{port}");
    let _server = Proc::start(
        bin!("dummy-server"),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--name",
            "s7",
            "--tls",
            "--cert",
            path_str(&certs.join("wildcard.pem")),
            "--key",
            path_str(&certs.join("wildcard.key")),
            "--advertise-url",
            &url,
            "--register",
            &format!("http://{}", lb.addrs[1]),
            "--register-token-file",
            path_str(&token),
        ],
        1,
    );
    let curl = Command::new("curl")
        .args([
            "-s",
            "--cacert",
            path_str(&certs.join("ca.pem")),
            &format!("{url}/"),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&curl.stdout).starts_with("server: s7"),
        "{curl:?}"
    );
    eventually("s7 assigned", PATIENCE, || {
        try_assigned(lb.addr()).as_deref() == Some("s7")
    });
    // More probes than `fall`: a server the checker could not verify would be down by now.
    eventually("four health probes of s7", PATIENCE, || {
        let metrics = call(lb.addrs[1], "GET", "/metrics", &[&bearer], b"").body;
        sum_of(&metrics, "httplb_backend_probes_total{") >= 4
    });
    let metrics = call(lb.addrs[1], "GET", "/metrics", &[&bearer], b"").body;
    assert_eq!(
        sum_of(&metrics, "httplb_backend_tls_handshake_failures_total{"),
        0,
        "{metrics}"
    );
    assert_eq!(try_assigned(lb.addr()).as_deref(), Some("s7"));
    let (code, stdout, stderr) = common::run(
        bin!("assign-client"),
        &[
            "--requests",
            "3",
            "--ca",
            path_str(&certs.join("ca.pem")),
            &format!("http://{}", lb.addr()),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.matches(&format!("200 from s7 at {url}")).count(),
        3,
        "{stdout}"
    );
}

/// `tcp-lb` takes registrations too, and proxies to what registered; a SIGHUP reload keeps
/// them.
#[test]
fn tcp_lb_balances_over_registered_servers() {
    let (token, value) = token();
    let lb = Proc::start(
        bin!("tcp-lb"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--admin-token-file",
            path_str(&token),
        ],
        2,
    );
    let server = servers(&["s1"], &[lb.addrs[1]], &token, "5");
    // Listed is not yet serving: tcp-lb follows its registry by rebuilding its backends, and
    // says so with a `backends changed:` line that names their addresses. Until then a
    // connection finds no backend and is closed (seen in CI, when this test polled instead).
    lb.wait_stderr(&format!("{}", server.addr()), 1);
    assert_eq!(listed(lb.addrs[1], &value), ["s1"]);
    assert_eq!(common::get(lb.addr(), "/").served_by(), "s1");
    lb.signal("HUP");
    lb.wait_stderr("configuration reloaded", 1);
    assert_eq!(listed(lb.addrs[1], &value), ["s1"]);
    assert_eq!(common::get(lb.addr(), "/").served_by(), "s1");
}

/// Bad flags are one-line errors.
#[test]
fn bad_registration_flags_are_one_line_errors() {
    let (token, _) = token();
    common::assert_one_line_error(
        bin!("dummy-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--register",
            "http://127.0.0.1:9",
        ],
        &["--register-token-file"],
    );
    common::assert_one_line_error(
        bin!("dummy-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--register",
            "127.0.0.1:9",
            "--register-token-file",
            path_str(&token),
        ],
        &["admin URL"],
    );
    common::assert_one_line_error(
        bin!("dummy-server"),
        &["--listen", "127.0.0.1:0", "--advertise-url", "ftp://x"],
        &["http://"],
    );
    common::assert_one_line_error(bin!("assign-client"), &["localhost:80"], &["URL"]);
    let short = token.parent().unwrap().join("short");
    std::fs::write(&short, "abc").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    common::assert_one_line_error(
        bin!("http-lb"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-token-file",
            path_str(&short),
        ],
        &["at least 16"],
    );
}

/// Issue 27, item 15: while no balancer has a server to assign (every server down or
/// restarting), `assign-client` keeps asking with a growing pause until `--wait` runs out, so a
/// server that comes back in time costs no request; with `--wait 0` it gives up at once.
#[test]
fn assign_client_waits_for_a_server_to_come_back() {
    let (token, _) = token();
    let lb = balancer(&token, &[]);
    let url = format!("http://{}", lb.addr());
    let (code, _, stderr) = common::run(
        bin!("assign-client"),
        &["--requests", "1", "--wait", "0", &url],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("no balancer assigned a server"), "{stderr}");
    let client = Command::new(bin!("assign-client"))
        .args(["--requests", "1", "--wait", "30", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once it has been refused twice (it is waiting), a server registers.
    lb.wait_stderr("status=503", 3);
    let _servers = servers(&["s1"], &[lb.addrs[1]], &token, "5");
    let out = client.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("request 1: 200 from s1"), "{stdout}");
}

/// Issue 27, item 7: with an admin token configured, `/metrics` (which names every backend)
/// needs the token as `GET /backends` does; the scheme's name is case-insensitive.
#[test]
fn metrics_need_the_token_once_there_is_one() {
    let (token, value) = token();
    let lb = balancer(&token, &[]);
    let admin = lb.addrs[1];
    assert_eq!(call(admin, "GET", "/metrics", &[], b"").status, 401);
    let lower = format!("authorization: bearer {value}");
    let answer = call(admin, "GET", "/metrics", &[&lower], b"");
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("httplb_"), "{}", answer.body);
    // Without a token, metrics stay open (a lone balancer scraped on loopback).
    let open = Proc::start(
        bin!("http-lb"),
        &["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        2,
    );
    assert_eq!(common::admin_get(open.addrs[1], "/metrics").0, 200);
}
