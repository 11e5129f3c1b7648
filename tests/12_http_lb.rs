//! Step 12, `http-lb`: per-request balancing, cookie affinity, forwarding rules, upgrades,
//! errors and limits, driven through the real binary with raw sockets, rustls and curl.

mod common;

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use common::*;

const LB: &str = bin!("http-lb");

/// A secret every instance of a test shares.
fn secret_file(label: &str) -> std::path::PathBuf {
    let dir = temp_dir(label);
    let file = dir.join("secret");
    std::fs::write(&file, "an affinity secret of at least 32 bytes, shared\n").unwrap();
    file
}

/// `http-lb` on ephemeral ports with an admin listener; `addrs[0]` serves, `addrs[1]` is admin.
fn start(args: &[&str]) -> Proc {
    let mut all = vec!["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    all.extend_from_slice(args);
    Proc::start(LB, &all, 2)
}

/// One dummy server named `name`, in its own process (so that a test can kill it alone).
fn dummy(name: &str) -> Proc {
    Proc::start(
        bin!("dummy-server"),
        &["--listen", "127.0.0.1:0", "--name", name],
        1,
    )
}

fn metrics(lb: &Proc) -> String {
    let (status, body) = admin_get(lb.addrs[1], "/metrics");
    assert_eq!(status, 200);
    body
}

/// Sends `head` (a request without body, `\r\n\r\n` added) on a new connection; the reply.
fn send(addr: SocketAddr, head: &str) -> Reply {
    let mut s = connect(addr);
    write!(s, "{head}\r\n\r\n").unwrap();
    read_reply(&mut s)
}

/// `GET /` with `cookie` (if any) on a new connection.
fn get_with(addr: SocketAddr, cookie: Option<&str>) -> Reply {
    match cookie {
        Some(c) => send(addr, &format!("GET / HTTP/1.1\r\nhost: t\r\ncookie: {c}")),
        None => send(addr, "GET / HTTP/1.1\r\nhost: t"),
    }
}

/// The `name=value` of the affinity cookie a reply sets, if it sets one.
fn set_cookie(reply: &Reply) -> Option<String> {
    reply
        .headers
        .iter()
        .find(|(n, v)| n == "set-cookie" && v.starts_with("lb="))
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
}

/// The backends' `--backend` arguments for `procs`, in order.
fn backend_args(procs: &[&Proc]) -> Vec<String> {
    procs
        .iter()
        .flat_map(|p| ["--backend".to_owned(), p.addr().to_string()])
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// With the cookie, 50 requests on fresh connections all reach one backend; without it they
/// rotate; the cookie's value does not contain the backend's address.
#[test]
fn the_cookie_pins_a_user_and_requests_without_it_rotate() {
    let (_dummies, backends) = dummies(3);
    let lb = start(&strs(&backends));
    let first = get_with(lb.addr(), None);
    let cookie = set_cookie(&first).expect("the first answer sets the cookie");
    let header = first.header("set-cookie").unwrap();
    for attribute in ["Path=/", "HttpOnly", "SameSite=Lax"] {
        assert!(header.contains(attribute), "{header}");
    }
    assert!(!header.contains("Secure"), "plain HTTP: {header}");
    assert!(!cookie.contains("127.0.0.1"), "{cookie}");
    assert_eq!(
        first.header("cache-control"),
        Some("no-cache=\"set-cookie\"")
    );
    let pinned = first.served_by();
    for _ in 0..50 {
        let reply = get_with(lb.addr(), Some(&cookie));
        assert_eq!(reply.served_by(), pinned);
        assert_eq!(set_cookie(&reply), None, "a valid cookie is not set again");
    }
    let rotation: Vec<String> = (0..6)
        .map(|_| get_with(lb.addr(), None).served_by())
        .collect();
    let mut distinct = rotation.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{rotation:?}");
    let m = metrics(&lb);
    assert_eq!(metric(&m, "httplb_affinity_total{outcome=\"hit\"}"), 50);
}

/// `--affinity none`: no cookie is set, a cookie sent is ignored and passed on untouched, and
/// every request is balanced afresh.
#[test]
fn without_affinity_every_request_is_balanced_afresh() {
    let (_dummies, backends) = dummies(3);
    let mut args = vec!["--affinity", "none"];
    args.extend(strs(&backends));
    let lb = start(&args);
    let with_cookie = start(&strs(&backends));
    let cookie = set_cookie(&get_with(with_cookie.addr(), None)).unwrap();
    let replies: Vec<Reply> = (0..6).map(|_| get_with(lb.addr(), Some(&cookie))).collect();
    let mut served: Vec<String> = replies.iter().map(Reply::served_by).collect();
    assert!(replies.iter().all(|r| set_cookie(r).is_none()));
    // Not ours to take out: the backend sees the cookie.
    assert!(replies[0].text().contains(&cookie), "{}", replies[0].text());
    served.sort();
    served.dedup();
    assert_eq!(served.len(), 3, "{served:?}");
}

/// Two instances with the same secret, listing the backends in another order, send every
/// cookie to the same backend: the tier scales out with no shared state.
#[test]
fn two_instances_with_one_secret_agree_on_every_cookie() {
    let (_dummies, backends) = dummies(3);
    let secret = secret_file("agree");
    let mut args = strs(&backends);
    args.extend(["--affinity-secret-file", path_str(&secret)]);
    let a = start(&args);
    let mut reversed: Vec<&str> = Vec::new();
    for pair in backends.chunks(2).rev() {
        reversed.extend(strs(pair));
    }
    reversed.extend(["--affinity-secret-file", path_str(&secret)]);
    let b = start(&reversed);
    for _ in 0..6 {
        let from_a = get_with(a.addr(), None);
        let cookie = set_cookie(&from_a).unwrap();
        let from_b = get_with(b.addr(), Some(&cookie));
        assert_eq!(from_b.served_by(), from_a.served_by());
        assert_eq!(set_cookie(&from_b), None);
    }
}

/// The pinned backend killed: the next request succeeds on another with a new cookie, and is
/// counted as a redispatch. A tampered cookie is treated as none.
#[test]
fn a_dead_backend_is_redispatched_and_a_tampered_cookie_ignored() {
    let one = dummy("one");
    let mut two = Some(dummy("two"));
    let args = backend_args(&[&one, two.as_ref().unwrap()]);
    let mut all = strs(&args);
    all.extend(["--health-interval", "0"]);
    let lb = start(&all);
    let (mut cookie, mut reply) = (String::new(), None);
    // Rotation gives server "two" within two tries.
    for _ in 0..2 {
        let r = get_with(lb.addr(), None);
        if r.served_by() == "two" {
            cookie = set_cookie(&r).unwrap();
            reply = Some(r);
            break;
        }
    }
    assert!(reply.is_some());
    drop(two.take());
    let after = get_with(lb.addr(), Some(&cookie));
    assert_eq!(after.status, 200);
    assert_eq!(after.served_by(), "one");
    let new = set_cookie(&after).expect("a redispatched user gets a new cookie");
    assert_ne!(new, cookie);
    assert_eq!(get_with(lb.addr(), Some(&new)).served_by(), "one");
    lb.wait_stderr("redispatched", 1);
    assert_eq!(
        metric(
            &metrics(&lb),
            "httplb_affinity_total{outcome=\"redispatch\"}"
        ),
        1
    );

    let mut tampered = new.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [tampered.as_str(), "lb=", "lb=127.0.0.1:1", "lb=%00%ff"] {
        let reply = get_with(lb.addr(), Some(bad));
        assert_eq!(reply.status, 200, "{bad}");
        assert_eq!(set_cookie(&reply).as_deref(), Some(new.as_str()), "{bad}");
    }
}

/// The backend sees neither the affinity cookie nor any hop-by-hop field; the client's own
/// cookies and end-to-end fields arrive intact, and X-Forwarded-* say who the client is.
#[test]
fn the_backend_sees_no_affinity_cookie_and_no_hop_by_hop_field() {
    let (_dummies, backends) = dummies(1);
    let lb = start(&strs(&backends));
    let cookie = set_cookie(&get_with(lb.addr(), None)).unwrap();
    let mut s = connect_from([127, 0, 0, 7], lb.addr());
    write!(
        s,
        "GET /x?y=1 HTTP/1.1\r\nhost: example.test\r\ncookie: a=1; {cookie}; b=2\r\n\
         connection: keep-alive, x-secret\r\nx-secret: hop\r\nkeep-alive: timeout=5\r\n\
         te: trailers\r\nproxy-connection: keep-alive\r\nupgrade: h2c\r\n\
         x-forwarded-for: 6.6.6.6\r\nx-end-to-end: kept\r\n\r\n"
    )
    .unwrap();
    let reply = read_reply(&mut s);
    let seen = reply.text().to_ascii_lowercase();
    assert!(seen.contains("\ncookie: a=1; b=2\n"), "{seen}");
    assert!(seen.contains("\nx-end-to-end: kept\n"), "{seen}");
    assert!(seen.contains("\nx-forwarded-for: 127.0.0.7\n"), "{seen}");
    assert!(seen.contains("\nx-forwarded-proto: http\n"), "{seen}");
    assert!(
        seen.contains("\nx-forwarded-host: example.test\n"),
        "{seen}"
    );
    assert!(seen.contains("get /x?y=1 http/1.1"), "{seen}");
    for gone in [
        "x-secret",
        "keep-alive:",
        "\nte:",
        "proxy-connection",
        "upgrade",
        "6.6.6.6",
        "lb=",
    ] {
        assert!(
            !seen.contains(gone),
            "{gone:?} reached the backend:\n{seen}"
        );
    }
    // The same connection serves a second request (keep-alive with the client).
    assert_eq!(get_on(&mut s, "/").status, 200);
}

/// X-Forwarded-For is extended only for a trusted proxy, and `--accept-proxy` takes the client
/// from the PROXY header.
#[test]
fn forwarded_for_trusts_only_configured_proxies_and_proxy_headers() {
    let (_dummies, backends) = dummies(1);
    let mut args = strs(&backends);
    args.extend(["--trusted-proxy", "127.0.0.8"]);
    let lb = start(&args);
    let xff = |from: [u8; 4]| {
        let mut s = connect_from(from, lb.addr());
        write!(
            s,
            "GET / HTTP/1.1\r\nhost: t\r\nx-forwarded-for: 198.51.100.1\r\n\r\n"
        )
        .unwrap();
        let text = read_reply(&mut s).text();
        text.lines()
            .find_map(|l| l.strip_prefix("x-forwarded-for: "))
            .unwrap()
            .to_owned()
    };
    assert_eq!(xff([127, 0, 0, 8]), "198.51.100.1, 127.0.0.8");
    assert_eq!(xff([127, 0, 0, 9]), "127.0.0.9");

    let mut args = strs(&backends);
    args.push("--accept-proxy");
    let behind = start(&args);
    let mut s = connect(behind.addr());
    write!(
        s,
        "PROXY TCP4 192.0.2.9 127.0.0.1 5555 8080\r\nGET / HTTP/1.1\r\nhost: t\r\n\r\n"
    )
    .unwrap();
    let text = read_reply(&mut s).text();
    assert!(text.contains("x-forwarded-for: 192.0.2.9\n"), "{text}");
    behind.wait_stderr("client=192.0.2.9:5555", 1);
}

/// A backend that answers every upgrade request with `101` and then echoes bytes: what a
/// WebSocket server does once the handshake is done.
fn spawn_upgrade_echo() -> SocketAddr {
    spawn_per_connection(|conn| {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut head = String::new();
        while reader.read_line(&mut head).unwrap_or(0) > 2 {
            if head.ends_with("\r\n\r\n") {
                break;
            }
        }
        let mut conn = conn;
        if !head.to_ascii_lowercase().contains("upgrade: websocket") {
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
            return;
        }
        let _ = conn.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n",
        );
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// An upgrade becomes a byte tunnel both ways, and the 101 carries the affinity cookie.
#[test]
fn a_websocket_upgrade_tunnels_both_ways() {
    let backend = spawn_upgrade_echo().to_string();
    let lb = start(&["--backend", &backend]);
    let mut s = connect(lb.addr());
    write!(
        s,
        "GET /chat HTTP/1.1\r\nhost: t\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("set-cookie: lb="), "{head}");
    let data = payload(256 * 1024, 5);
    let back = echo_through(s, Arc::new(data.clone()));
    assert!(
        back == data,
        "{} bytes came back of {}",
        back.len(),
        data.len()
    );
}

/// 502 when the backend cannot be reached, 503 once health took every backend out, 504 past
/// --response-timeout; each an access-log line and a counter.
#[test]
fn unreachable_down_and_slow_backends_get_502_503_504() {
    let (nothing, _held) = refusing_port();
    let nothing = nothing.to_string();
    let lb = start(&[
        "--backend",
        &nothing,
        "--fail-after",
        "1",
        "--health-interval",
        "0",
    ]);
    assert_eq!(get_with(lb.addr(), None).status, 502);
    assert_eq!(get_with(lb.addr(), None).status, 503);
    lb.wait_stderr("status=503", 1);
    let m = metrics(&lb);
    assert_eq!(
        metric(&m, "httplb_local_responses_total{status=\"502\"}"),
        1
    );
    assert_eq!(
        metric(&m, "httplb_local_responses_total{status=\"503\"}"),
        1
    );

    // A connect failure moves on to the next backend: the client never sees it.
    let (_dummies, backends) = dummies(1);
    let lb = start(&["--backend", &nothing, "--backend", &backends[1]]);
    for _ in 0..4 {
        assert_eq!(get_with(lb.addr(), None).status, 200);
    }

    let lb = start(&["--backend", &backends[1], "--response-timeout", "0.3"]);
    let reply = send(lb.addr(), "GET /delay/3000 HTTP/1.1\r\nhost: t");
    assert_eq!(reply.status, 504);
    lb.wait_stderr("status=504", 1);
}

/// 413 past --max-body (announced or streamed), 431 for a head past --max-head, 400 for
/// garbage, 408 for a head that stops coming: the process serves on after each.
#[test]
fn oversized_malformed_and_slow_requests_get_413_431_400_408() {
    let (_dummies, backends) = dummies(1);
    let mut args = strs(&backends);
    args.extend(["--max-body", "1000", "--header-timeout", "0.5"]);
    let lb = start(&args);

    let reply = send(
        lb.addr(),
        "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 5000",
    );
    assert_eq!(reply.status, 413);
    let mut s = connect(lb.addr());
    write!(
        s,
        "POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .unwrap();
    for _ in 0..3 {
        write!(s, "400\r\n{}\r\n", "x".repeat(0x400)).unwrap();
    }
    write!(s, "0\r\n\r\n").unwrap();
    assert_eq!(read_reply(&mut s).status, 413);

    let big = format!(
        "GET / HTTP/1.1\r\nhost: t\r\nx-big: {}",
        "a".repeat(70 * 1024)
    );
    let mut s = connect(lb.addr());
    write!(s, "{big}\r\n\r\n").unwrap();
    assert_eq!(read_reply(&mut s).status, 431);

    let mut s = connect(lb.addr());
    s.write_all(b"HELLO THERE\r\n\r\n").unwrap();
    assert_eq!(read_reply(&mut s).status, 400);

    let mut s = connect(lb.addr());
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n").unwrap();
    assert_eq!(read_reply(&mut s).status, 408);

    assert_eq!(get_with(lb.addr(), None).status, 200);
    let m = metrics(&lb);
    for status in ["413", "431", "400", "408"] {
        let sample = format!("httplb_local_responses_total{{status=\"{status}\"}}");
        assert!(metric(&m, &sample) >= 1, "{sample}\n{m}");
    }
}

/// A kept-alive connection's header and response timeouts hold for every request on it, not
/// only its first: the balancer's own path keeps one timer of each kind per connection and
/// pushes it later at each request, so this is what would break if a push were lost (a later
/// request timed out early, or an idle connection never closed).
#[test]
fn timeouts_hold_for_every_request_of_a_kept_alive_connection() {
    let (_dummies, backends) = dummies(1);
    let mut args = strs(&backends);
    args.extend(["--header-timeout", "0.5", "--response-timeout", "0.4"]);
    let lb = start(&args);
    let mut s = connect(lb.addr());
    assert_eq!(get_on(&mut s, "/").status, 200);
    assert_eq!(get_on(&mut s, "/delay/100").status, 200);
    // Past the response timeout: 504, and the connection carries on.
    assert_eq!(get_on(&mut s, "/delay/3000").status, 504);
    assert_eq!(get_on(&mut s, "/").status, 200);
    assert_eq!(get_on(&mut s, "/delay/100").status, 200);
    // Then nothing more: closed after the header timeout, with no 408 to an idle client.
    assert!(closed_without_data(&mut s));
    lb.wait_stderr("status=408", 1);
}

/// A client that connects and says nothing is not held forever: the listener's
/// `TCP_DEFER_ACCEPT` hands it over after about a second, and the header timeout closes it
/// as before, with no answer (an idle client is owed none, RFC 9112 §9.5), while a client
/// that speaks meanwhile is served at once.
#[test]
fn a_silent_client_is_still_closed_by_the_header_timeout() {
    let (_dummies, backends) = dummies(1);
    let mut args = vec!["--listen", "127.0.0.1:0", "--header-timeout", "0.5"];
    let backends = strs(&backends);
    args.extend(backends.iter().copied());
    // Both HTTP/1 paths: the balancer's own, and hyper's.
    for fast in ["on", "off"] {
        let lb = Proc::start_env(LB, &args, 1, &[("LB_HTTP_FAST", fast)]);
        let mut silent = connect(lb.addr());
        assert_eq!(get_with(lb.addr(), None).status, 200, "LB_HTTP_FAST={fast}");
        assert!(closed_without_data(&mut silent), "LB_HTTP_FAST={fast}");
    }
}

/// Bodies stream byte-exact both ways, far above any buffer size.
#[test]
fn large_bodies_stream_byte_exact_both_ways() {
    let (_dummies, backends) = dummies(1);
    let lb = start(&strs(&backends));
    let len = 8 << 20;
    let reply = send(lb.addr(), &format!("GET /bytes/{len} HTTP/1.1\r\nhost: t"));
    assert!(reply.body == lb::dummy::pattern_bytes(0, len));
    let data = payload(16 << 20, 3);
    let mut request = format!(
        "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        data.len()
    )
    .into_bytes();
    request.extend_from_slice(&data);
    let back = echo_through(connect(lb.addr()), Arc::new(request));
    assert!(back.ends_with(&data), "the echo differs");
}

/// Sequential requests on fresh client connections reuse a few pooled backend connections:
/// the backend sees far fewer connections than requests.
#[test]
fn keep_alive_pooling_needs_far_fewer_backend_connections_than_requests() {
    let (_dummies, backends) = dummies(1);
    let lb = start(&strs(&backends));
    for _ in 0..50 {
        assert_eq!(get_with(lb.addr(), None).status, 200);
    }
    let m = metrics(&lb);
    let backend = &backends[1];
    let opened = metric(
        &m,
        &format!("httplb_backend_connections_total{{backend=\"{backend}\"}}"),
    );
    let answered = metric(
        &m,
        &format!("httplb_backend_responses_total{{backend=\"{backend}\",class=\"2xx\"}}"),
    );
    assert_eq!(answered, 50);
    assert!(opened <= 3, "{opened} backend connections for 50 requests");
}

/// A backend that closes every connection after one answer without saying so: the next
/// request meets a dead pooled connection and is sent again on a fresh one.
#[test]
fn a_pooled_connection_the_backend_closed_is_replaced_silently() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            count.fetch_add(1, Ordering::Relaxed);
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && !line.ends_with("\r\n\r\n") {}
            let mut conn = conn;
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            let _ = conn.shutdown(Shutdown::Both);
        }
    });
    let lb = start(&["--backend", &backend, "--health-interval", "0"]);
    for i in 0..20 {
        let reply = get_with(lb.addr(), None);
        assert_eq!(reply.status, 200, "request {i}");
        assert_eq!(reply.body, b"ok");
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 20);
}

/// A backend that resets before answering: a GET goes on to the next backend, a POST (which
/// may have had an effect) gets 502.
#[test]
fn a_reset_before_the_answer_is_retried_only_for_idempotent_requests() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let resetting = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && !line.ends_with("\r\n\r\n") {}
            // SO_LINGER 0: close sends a reset.
            let socket = linger_zero(conn);
            drop(socket);
        }
    });
    let (_dummies, backends) = dummies(1);
    let lb = start(&[
        "--backend",
        &resetting,
        "--backend",
        &backends[1],
        "--strategy",
        "round-robin",
    ]);
    for _ in 0..4 {
        assert_eq!(get_with(lb.addr(), None).status, 200);
    }
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let reply = send(
            lb.addr(),
            "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nhi",
        );
        statuses.push(reply.status);
    }
    assert!(statuses.contains(&502), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
}

/// Sets SO_LINGER to zero, so that closing the socket sends a reset.
fn linger_zero(conn: TcpStream) -> TcpStream {
    conn.set_nonblocking(true).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let s = tokio::net::TcpStream::from_std(conn).unwrap();
    s.set_zero_linger().unwrap();
    s.into_std().unwrap()
}

/// SIGTERM lets a request in flight finish (its answer says Connection: close), then exits 0.
#[test]
fn sigterm_drains_a_request_in_flight() {
    let (dummy, backends) = dummies(1);
    let mut lb = start(&strs(&backends));
    let mut slow = connect(lb.addr());
    write!(slow, "GET /delay/700 HTTP/1.1\r\nhost: t\r\n\r\n").unwrap();
    dummy.wait_stderr("GET /delay/700", 1);
    lb.signal("TERM");
    lb.wait_stderr("draining", 1);
    let reply = read_reply(&mut slow);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection"), Some("close"));
    assert_eq!(lb.wait_exit(), 0);
}

/// TLS on the listener: the cookie is Secure and the backend is told the client used https.
#[test]
fn behind_tls_the_cookie_is_secure_and_the_proto_https() {
    let certs = make_certs("t12-tls");
    let (_dummies, backends) = dummies(1);
    let mut args = strs(&backends);
    let (cert, key) = (certs.join("localhost.pem"), certs.join("localhost-key.pem"));
    args.extend(["--cert", path_str(&cert), "--key", path_str(&key)]);
    let lb = start(&args);
    let config = common::tls::config_trusting(&certs.join("ca.pem"));
    let mut tls = common::tls::connect(lb.addr(), config, "localhost").unwrap();
    let reply = get_on(&mut tls, "/");
    assert!(reply.header("set-cookie").unwrap().ends_with("; Secure"));
    assert!(
        reply.text().contains("x-forwarded-proto: https\n"),
        "{}",
        reply.text()
    );
}

/// The chapter's sample config loads and serves; SIGHUP applies a changed backend list to new
/// requests.
#[test]
fn the_sample_config_serves_and_a_reload_changes_the_backends() {
    let (_dummies, backends) = dummies(2);
    let dir = temp_dir("t12-reload");
    let secret = dir.join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let sample = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/12-http-lb.toml"),
    )
    .unwrap();
    let config = dir.join("lb.toml");
    let write = |first: &str| {
        // Quoted, so that an address put in by one replacement (`127.0.0.1:44459`) is never
        // matched by the next (`127.0.0.1:4445`): a bug that depended on the port drawn.
        let first = format!("\"{first}\"");
        let text = sample
            .replace("examples/affinity-secret.example", path_str(&secret))
            .replace("\"127.0.0.1:4444\"", &first)
            .replace("\"127.0.0.1:4445\"", &first)
            .replace("\"127.0.0.1:4446\"", &first);
        std::fs::write(&config, text).unwrap();
    };
    write(&backends[1]);
    let lb = Proc::start(
        LB,
        &[
            "--config",
            path_str(&config),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
        2,
    );
    assert_eq!(get_with(lb.addr(), None).served_by(), "server1");
    write(&backends[3]);
    lb.signal("HUP");
    lb.wait_stderr("configuration reloaded", 1);
    assert_eq!(get_with(lb.addr(), None).served_by(), "server2");
}

/// Mistakes are one-line errors: a short secret, a bad cookie name, `[http]` given to tcp-lb,
/// PROXY headers asked of pooled connections.
#[test]
fn bad_settings_are_one_line_errors() {
    let dir = temp_dir("t12-bad");
    let short = dir.join("short");
    std::fs::write(&short, "too short\n").unwrap();
    assert_one_line_error(
        LB,
        &["--affinity-secret-file", path_str(&short)],
        &["short", "at least 32"],
    );
    assert_one_line_error(LB, &["--cookie-name", "a b"], &["cookie name"]);
    assert_one_line_error(
        LB,
        &["--backend", "127.0.0.1:1,proxy=v2"],
        &["PROXY", "X-Forwarded-For"],
    );
    assert_one_line_error(LB, &["--max-head", "10"], &["--max-head"]);
    let file = dir.join("http.toml");
    std::fs::write(&file, "[http]\nmax-body = 10\n").unwrap();
    assert_one_line_error(
        bin!("tcp-lb"),
        &["--config", path_str(&file)],
        &["[http]", "http-lb"],
    );
    std::fs::write(&file, "[http]\nresponse-timeout = 1e-300\n").unwrap();
    assert_one_line_error(
        LB,
        &["--config", path_str(&file)],
        &["http.response-timeout", "nanosecond"],
    );
    std::fs::write(&file, "[http]\naffinity = \"sticky\"\n").unwrap();
    assert_one_line_error(LB, &["--config", path_str(&file)], &["2:", "sticky"]);
}

/// `--help` lists the chapter's flags.
#[test]
fn help_lists_the_http_flags() {
    use predicates::prelude::*;
    assert_cmd::Command::new(LB)
        .arg("--help")
        .assert()
        .success()
        .stdout(
            predicate::str::contains("--affinity-secret-file")
                .and(predicate::str::contains("--trusted-proxy"))
                .and(predicate::str::contains("--max-body")),
        );
}

/// With no backend configured it serves the built-in ones, as `cargo run` does for tcp-lb.
#[test]
fn with_no_backend_it_serves_the_built_in_ones() {
    let lb = start(&[]);
    lb.wait_stderr("no backend configured", 1);
    let served: Vec<String> = (0..3)
        .map(|_| get_with(lb.addr(), None).served_by())
        .collect();
    let mut sorted = served.clone();
    sorted.sort();
    assert_eq!(sorted, ["server1", "server2", "server3"], "{served:?}");
}
