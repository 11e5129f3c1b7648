//! Step 12, the exchange's rules (`src/http/exchange.rs`): request smuggling, response desync,
//! a request sent twice, stalls, and what is the client's error and what the backend's. Each
//! test sends the same bytes through both of `http-lb`'s HTTP/1 paths (its own, then hyper's
//! with `LB_HTTP_FAST=off`) to a backend that records every request it parses, the way a
//! simple backend would parse them: by `Content-Length` alone. A request smuggled past the
//! balancer shows up there as one request too many.
//!
//! The items are those of the attack table in README chapter 12 ("Smuggling and desync"),
//! each with the RFC section whose rule closes it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;

const LB: &str = bin!("http-lb");
/// Both HTTP/1 paths: `LB_HTTP_FAST` on, then off.
const PATHS: [&str; 2] = ["on", "off"];
/// Longest any wait in these tests may last: a hang fails the test instead of blocking it.
const BOUND: Duration = Duration::from_secs(10);

fn start(fast: &str, backend: SocketAddr, extra: &[&str]) -> Proc {
    let backend = backend.to_string();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--backend",
        &backend,
        "--health-interval",
        "0",
        "--affinity",
        "none",
    ];
    args.extend_from_slice(extra);
    Proc::start_env(LB, &args, 1, &[("LB_HTTP_FAST", fast)])
}

/// What the scripted backend saw and did.
struct Backend {
    addr: SocketAddr,
    /// Every request head it parsed, in order.
    requests: Arc<Mutex<Vec<String>>>,
    /// What the scripts report: `closed` when the balancer closed a connection.
    events: Receiver<String>,
}

impl Backend {
    /// The request line of every request it parsed, in order.
    fn requests(&self) -> Vec<String> {
        let heads = self.requests.lock().unwrap();
        heads
            .iter()
            .map(|h| h.lines().next().unwrap_or("").to_owned())
            .collect()
    }

    fn heads(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn wait_event(&self, what: &str) {
        loop {
            match self.events.recv_timeout(BOUND) {
                Ok(e) if e == what => return,
                Ok(_) => {}
                Err(_) => panic!("the backend never reported {what:?}"),
            }
        }
    }
}

/// A backend that runs `script(path, connection, events)` for each request it reads; the
/// script writes the answer and returns whether to go on reading that connection.
fn backend<F>(script: F) -> Backend
where
    F: Fn(&str, &mut TcpStream, &Sender<String>) -> bool + Clone + Send + Sync + 'static,
{
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (tx, events) = mpsc::channel();
    let seen = Arc::clone(&requests);
    let addr = spawn_per_connection(move |mut conn| {
        while let Some((head, _)) = read_request(&mut conn) {
            let line = head.lines().next().unwrap_or("").to_owned();
            let path = line.split(' ').nth(1).unwrap_or("/").to_owned();
            seen.lock().unwrap().push(head);
            if !script(&path, &mut conn, &tx) {
                return;
            }
        }
        let _ = tx.send("closed".to_owned());
    });
    Backend {
        addr,
        requests,
        events,
    }
}

/// Answers every request with its own path's last segment as the body.
fn plain(path: &str, conn: &mut TcpStream, _: &Sender<String>) -> bool {
    let body = path.trim_start_matches('/');
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(answer.as_bytes()).is_ok()
}

fn client(lb: &Proc) -> TcpStream {
    let s = connect(lb.addr());
    s.set_read_timeout(Some(BOUND)).unwrap();
    s
}

fn send(s: &mut TcpStream, raw: &[u8]) -> Reply {
    s.write_all(raw).unwrap();
    read_reply(s)
}

/// Everything until the balancer closes the connection; panics if it does not within
/// [`BOUND`] (the client would hang).
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!(
                "the connection did not close ({e}); got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// Item 1, RFC 9112 §6.1 and RFC 9110 §7.6.1: `Connection: Content-Length` cannot remove the
/// length of the message it is on, so its body stays a body and never becomes a second request
/// that skips the balancer's `X-Forwarded-For` and access log.
#[test]
fn connection_cannot_unframe_a_request_to_smuggle_another() {
    let smuggled = "GET /admin HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
    assert_eq!(smuggled.len(), 58);
    for fast in PATHS {
        let b = backend(plain);
        let lb = start(fast, b.addr, &[]);
        let mut s = client(&lb);
        let raw = format!(
            "GET /d1 HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\nContent-Length: 58\r\n\r\n{smuggled}"
        );
        let r = send(&mut s, raw.as_bytes());
        assert_eq!((r.status, r.text().as_str()), (200, "d1"), "{fast}");
        let r = send(&mut s, b"GET /end HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!((r.status, r.text().as_str()), (200, "end"), "{fast}");
        let paths: Vec<String> = b.requests();
        assert_eq!(paths.len(), 2, "LB_HTTP_FAST={fast}: {paths:?}");
        assert!(paths[0].starts_with("GET /d1 ") && paths[1].starts_with("GET /end "));
    }
}

/// Item 2, RFC 9112 §9.3: a backend connection carries another request only when its last
/// answer ended exactly where its framing said. Bytes after it (a late second answer, more
/// than its `Content-Length`, a body after an answer to `HEAD`) would be read as the *next*
/// client's answer: the connection is closed instead, and the next client gets its own.
#[test]
fn bytes_a_backend_sends_out_of_turn_never_reach_the_next_client() {
    const POISON: &str = "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON";
    for fast in PATHS {
        let b = backend(|path, conn, events| {
            let answer = match path {
                "/late" => {
                    let ok = conn
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nA")
                        .is_ok();
                    thread::sleep(Duration::from_millis(300));
                    let _ = conn.write_all(POISON.as_bytes());
                    let _ = events.send("poisoned".to_owned());
                    return ok;
                }
                "/long" => format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nA{POISON}"),
                "/head" => format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{POISON}",
                    POISON.len()
                ),
                _ => return plain(path, conn, events),
            };
            conn.write_all(answer.as_bytes()).is_ok()
        });
        let lb = start(fast, b.addr, &[]);
        for (first, method) in [("/late", "GET"), ("/long", "GET"), ("/head", "HEAD")] {
            let mut a = client(&lb);
            a.write_all(format!("{method} {first} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(a.read(&mut byte).unwrap(), 1);
                head.push(byte[0]);
            }
            if method == "GET" {
                let mut body = [0u8; 1];
                a.read_exact(&mut body).unwrap();
                assert_eq!(&body, b"A", "LB_HTTP_FAST={fast} {first}");
            }
            if first == "/late" {
                b.wait_event("poisoned");
            }
            // Another client, on whichever backend connection the pool gives it.
            let r = get(lb.addr(), "/b");
            assert_eq!(
                (r.status, r.text().as_str()),
                (200, "b"),
                "LB_HTTP_FAST={fast}: after {method} {first}"
            );
        }
    }
}

/// Item 3, RFC 9110 §8.6: `Content-Length` is digits. `+35` (which Rust's `u64::from_str`
/// accepts), a number beside a no-break space or a list would frame the message one way here
/// and another way at a backend: 400, and nothing reaches the backend.
#[test]
fn a_length_that_is_not_digits_is_the_clients_error() {
    let smuggled = "GET /admin HTTP/1.1\r\nHost: x\r\n\r\n";
    for fast in PATHS {
        let b = backend(plain);
        let lb = start(fast, b.addr, &[]);
        for length in [
            "+32".as_bytes(),
            "32\u{a0}".as_bytes(),
            "\u{a0}32".as_bytes(),
            b"32, 33",
            // A list of one length in one line: RFC 9110 §8.6 lets a recipient refuse it,
            // hyper's server does, and so does the own path (it took it as 32 before).
            b"32, 32",
            b"32,32",
            b"0x20",
        ] {
            let mut raw = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: ".to_vec();
            raw.extend_from_slice(length);
            raw.extend_from_slice(b"\r\n\r\n");
            raw.extend_from_slice(smuggled.as_bytes());
            let mut s = client(&lb);
            let r = send(&mut s, &raw);
            assert_eq!(r.status, 400, "LB_HTTP_FAST={fast} {length:?}");
            assert_eq!(r.header("connection"), Some("close"));
        }
        // Two fields that disagree (RFC 9112 §6.3). A length beside chunked is refused by the
        // own path too, but hyper drops the length before the balancer sees the head: see
        // `both_paths_give_the_same_outcome_for_the_same_bytes` for that listed difference.
        let fields = "Content-Length: 32\r\nContent-Length: 33";
        let raw = format!("POST /p HTTP/1.1\r\nHost: x\r\n{fields}\r\n\r\n{smuggled}");
        let r = send(&mut client(&lb), raw.as_bytes());
        assert_eq!(r.status, 400, "LB_HTTP_FAST={fast} {fields:?}");
        assert_eq!(get(lb.addr(), "/ok").status, 200);
        assert_eq!(b.requests(), ["GET /ok HTTP/1.1"], "LB_HTTP_FAST={fast}");
        // One length, in a form a backend could read another way (`010`, which C's `strtol`
        // in base 0 reads as octal 8; two lines of it): the backend is sent the length
        // plainly, once. hyper's path passed `010` on as it came.
        for fields in [
            "Content-Length: 010",
            "Content-Length: 10\r\nContent-Length: 10",
        ] {
            let raw = format!("POST /len HTTP/1.1\r\nHost: x\r\n{fields}\r\n\r\n0123456789");
            assert_eq!(send(&mut client(&lb), raw.as_bytes()).status, 200);
            let head = b.heads().pop().unwrap().to_ascii_lowercase();
            let lengths: Vec<&str> = head
                .lines()
                .filter(|l| l.starts_with("content-length"))
                .collect();
            assert_eq!(
                lengths,
                ["content-length: 10"],
                "LB_HTTP_FAST={fast} {fields:?}"
            );
        }
    }
}

/// Item 4, RFC 9112 §9.3.1: a proxy MUST NOT automatically retry a request that is not
/// idempotent. A backend that reads `POST /pay` on a kept-alive connection and closes without
/// answering may have charged the card: the client gets 502, and the backend sees it once.
#[test]
fn a_post_is_never_sent_twice() {
    for fast in PATHS {
        let b = backend(|path, conn, events| match path {
            "/pay" => false,
            _ => plain(path, conn, events),
        });
        let lb = start(fast, b.addr, &[]);
        let mut s = client(&lb);
        assert_eq!(
            send(&mut s, b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n").status,
            200
        );
        let r = send(
            &mut s,
            b"POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\namount=1",
        );
        assert_eq!(r.status, 502, "LB_HTTP_FAST={fast}");
        let pays = b
            .requests()
            .iter()
            .filter(|l| l.starts_with("POST /pay"))
            .count();
        assert_eq!(pays, 1, "LB_HTTP_FAST={fast}: {:?}", b.requests());
    }
}

/// Item 5: a backend that sends a head and part of its body, then nothing, is cut off at
/// `--idle-timeout`: the client's connection closes (it cannot be given a complete answer)
/// and so does the backend's, instead of both being held for as long as the backend likes.
#[test]
fn a_backend_that_stalls_mid_body_is_cut_off() {
    for fast in PATHS {
        let b = backend(|path, conn, events| match path {
            "/stall" => {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello");
                true
            }
            _ => plain(path, conn, events),
        });
        let lb = start(
            fast,
            b.addr,
            &["--idle-timeout", "0.5", "--response-timeout", "5"],
        );
        let mut s = client(&lb);
        s.write_all(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let got = read_to_close(&mut s);
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("hello"),
            "LB_HTTP_FAST={fast}: {text:?}"
        );
        b.wait_event("closed");
        lb.wait_stderr("/stall", 1);
    }
}

/// Item 6: `--response-timeout` is the backend's time to answer once it has the request, not
/// the client's time to upload it: a slow upload to a healthy backend gets 200, and a backend
/// slower than the limit after the upload still gets 504.
#[test]
fn the_response_timeout_starts_when_the_request_has_been_sent() {
    for fast in PATHS {
        let b = backend(|path, conn, events| {
            let wait = if path == "/slow" { 1500 } else { 300 };
            thread::sleep(Duration::from_millis(wait));
            plain(path, conn, events)
        });
        let lb = start(fast, b.addr, &["--response-timeout", "1"]);
        for (path, status) in [("/upload", 200), ("/slow", 504)] {
            let mut s = client(&lb);
            write!(
                s,
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nab"
            )
            .unwrap();
            for piece in ["cd", "ef"] {
                thread::sleep(Duration::from_millis(500));
                s.write_all(piece.as_bytes()).unwrap();
            }
            let r = read_reply(&mut s);
            assert_eq!(r.status, status, "LB_HTTP_FAST={fast} {path}");
        }
    }
}

/// Items 7, 8 and 14, RFC 9112 §6.3 and §7.1: an answer framed two ways, or chunked wrongly,
/// is the backend's error. Before its head is sent: 502. After (a bad chunk mid-body): the
/// client's connection closes, since it cannot be told where the answer ends, and the next
/// client is served as usual. `Connection: Content-Length` from a backend changes nothing: the
/// client gets the length, and its connection stays usable; a length written `010` (twice)
/// reaches it as `10`, once. A transfer coding other than
/// chunked is 502 too (RFC 9112 §6.1): hyper's path frames the content anew and would pass it
/// on still coded, with nothing to say so, so neither path passes it (nginx refuses it too).
#[test]
fn an_answer_framed_ambiguously_never_reaches_the_client_as_framed() {
    for fast in PATHS {
        let b = backend(|path, conn, events| {
            let answer: &[u8] = match path {
                "/both" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                "/bad-length" => b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello",
                "/gzip" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                "/unframed" => b"HTTP/1.1 200 OK\r\nconnection: content-length\r\ncontent-length: 5\r\n\r\nhello",
                "/zeros" => b"HTTP/1.1 200 OK\r\ncontent-length: 010\r\ncontent-length: 10\r\n\r\n0123456789",
                "/lf-in-extension" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x\nhello\r\n0\r\n\r\n",
                "/empty-size" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n\r\n0\r\n\r\n",
                "/two-sizes" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5 5\r\nhello\r\n0\r\n\r\n",
                _ => return plain(path, conn, events),
            };
            // Closed after each: what follows such an answer is not to be trusted.
            let _ = conn.write_all(answer);
            false
        });
        let lb = start(fast, b.addr, &[]);
        for path in ["/both", "/bad-length", "/gzip"] {
            let r = get(lb.addr(), path);
            assert_eq!(r.status, 502, "LB_HTTP_FAST={fast} {path}");
        }
        let mut s = client(&lb);
        let r = get_on(&mut s, "/unframed");
        assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{fast}");
        assert_eq!(r.header("content-length"), Some("5"));
        assert_eq!(get_on(&mut s, "/next").text(), "next", "{fast}");
        // RFC 9110 §8.6: `010` is ten, but not to a client that parses it as C's `strtol` does
        // in base 0; both paths write the length they read as one plain number.
        let r = get(lb.addr(), "/zeros");
        assert_eq!(r.text(), "0123456789", "{fast}");
        let lengths: Vec<_> = r
            .headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .collect();
        assert_eq!(lengths.len(), 1, "LB_HTTP_FAST={fast}: {:?}", r.headers);
        assert_eq!(lengths[0].1, "10", "LB_HTTP_FAST={fast}");
        for path in ["/lf-in-extension", "/empty-size", "/two-sizes"] {
            let mut s = client(&lb);
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let got = read_to_close(&mut s);
            let text = String::from_utf8_lossy(&got);
            // Either refused whole (502) or cut off: never a complete chunked body.
            assert!(
                text.starts_with("HTTP/1.1 502") || !text.ends_with("0\r\n\r\n"),
                "LB_HTTP_FAST={fast} {path}: {text:?}"
            );
            assert_eq!(get(lb.addr(), "/after").text(), "after");
        }
    }
}

/// Item 9, RFC 9112 §7.1: a client whose chunked body breaks its framing made the error, and
/// is told so with 400 (not a 502 that blames the backend).
#[test]
fn a_clients_broken_chunked_body_is_its_own_error() {
    for fast in PATHS {
        let b = backend(|path, conn, events| match path {
            // The body is chunked: this backend reads it to the end and answers nothing.
            "/up" => {
                let mut sink = Vec::new();
                let _ = conn.read_to_end(&mut sink);
                false
            }
            _ => plain(path, conn, events),
        });
        let lb = start(fast, b.addr, &[]);
        let mut s = client(&lb);
        let r = send(
            &mut s,
            b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        );
        assert_eq!(r.status, 400, "LB_HTTP_FAST={fast}");
        lb.wait_stderr("request body refused (400 Bad Request)", 1);
    }
}

/// Items 10 and 11, RFC 9112 §3.2 and RFC 9110 §9.3.6: exactly one valid `Host`, a target in
/// a form its method allows, no userinfo; `CONNECT` is not a balancer's to serve (501).
/// Nothing refused reaches the backend, and with `--cache` two `Host` fields cannot make the
/// cache and the backend read different hosts.
#[test]
fn one_valid_host_and_a_target_of_the_right_form() {
    let refused: [(&str, u16); 8] = [
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: evil.example/x@good\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        ("GET f515 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("GET http://user@good/ HTTP/1.1\r\nHost: good\r\n\r\n", 400),
        ("GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("CONNECT good:443 HTTP/1.1\r\nHost: good:443\r\n\r\n", 501),
    ];
    for (fast, extra) in [
        ("on", &[][..]),
        ("off", &[][..]),
        ("on", &["--cache", "100000"][..]),
    ] {
        let b = backend(plain);
        let lb = start(fast, b.addr, extra);
        for (raw, status) in refused {
            let r = send(&mut client(&lb), raw.as_bytes());
            assert_eq!(r.status, status, "LB_HTTP_FAST={fast} {extra:?} {raw:?}");
        }
        // Absolute form: its authority is the host the backend is told.
        let r = send(
            &mut client(&lb),
            b"GET http://good/abs HTTP/1.1\r\nHost: other\r\n\r\n",
        );
        assert_eq!((r.status, r.text().as_str()), (200, "abs"), "{fast}");
        assert_eq!(b.requests(), ["GET /abs HTTP/1.1"], "LB_HTTP_FAST={fast}");
    }
}

/// Item 12: a `Content-Length` of 2^64 - 1 is a body too large (413), not a head too large
/// (431, which README chapter 12 keeps for heads over `--max-head`).
///
/// Listed difference: hyper refuses such a length itself while parsing the head, with 431,
/// before the balancer sees the request. So hyper's path (`LB_HTTP_FAST=off`, or a connection
/// hyper took over) still answers 431: a 4xx either way, and nothing reaches the backend.
#[test]
fn the_largest_length_is_a_body_too_large() {
    for (fast, status) in [("on", 413), ("off", 431)] {
        let b = backend(plain);
        let lb = start(fast, b.addr, &[]);
        let r = send(
            &mut client(&lb),
            b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n",
        );
        assert_eq!(r.status, status, "LB_HTTP_FAST={fast}");
        assert!(b.requests().is_empty());
    }
}

/// Item 13, RFC 6265 §5.4: another cookie's value may hold bytes that are not UTF-8. The
/// affinity cookie on the same `Cookie` line is still recognised (no new `Set-Cookie`, the
/// user stays pinned) and still taken out before the backend sees the line.
#[test]
fn the_affinity_cookie_is_found_beside_bytes_that_are_not_utf8() {
    for fast in PATHS {
        let b = backend(plain);
        let backend = b.addr.to_string();
        let lb = Proc::start_env(
            LB,
            &[
                "--listen",
                "127.0.0.1:0",
                "--backend",
                &backend,
                "--health-interval",
                "0",
            ],
            1,
            &[("LB_HTTP_FAST", fast)],
        );
        let first = get(lb.addr(), "/first");
        let cookie = first
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .expect("a Set-Cookie")
            .to_owned();
        let mut raw = b"GET /again HTTP/1.1\r\nHost: x\r\nCookie: a=\xff\xfe; ".to_vec();
        raw.extend_from_slice(cookie.as_bytes());
        raw.extend_from_slice(b"\r\n\r\n");
        let r = send(&mut client(&lb), &raw);
        assert_eq!(r.status, 200, "LB_HTTP_FAST={fast}");
        assert_eq!(
            r.header("set-cookie"),
            None,
            "LB_HTTP_FAST={fast}: re-pinned"
        );
        let heads = b.heads();
        let last = heads.last().unwrap();
        assert!(!last.contains("lb="), "LB_HTTP_FAST={fast}: {last:?}");
    }
}

/// Issue 27, item 16: `X-Real-IP` and the other fields that name the client are a client's
/// claim like `X-Forwarded-For`: from a client that is not a trusted proxy, `X-Real-IP`
/// becomes the address the balancer saw and the others are removed, on both paths.
#[test]
fn a_client_cannot_name_itself_in_x_real_ip() {
    for fast in PATHS {
        let b = backend(plain);
        let lb = start(fast, b.addr, &[]);
        let r = send(
            &mut client(&lb),
            b"GET /who HTTP/1.1\r\nHost: x\r\nX-Real-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        let head = b.heads().pop().unwrap().to_ascii_lowercase();
        assert!(head.contains("x-real-ip: 127.0.0.1\r\n"), "{fast}: {head}");
        assert!(!head.contains("6.6.6.6"), "{fast}: {head}");
    }
}

/// Issue 27, item 9: `--hide-header` removes what a backend says of itself from its trailers
/// too (a chunked answer's fields after its body), on both paths, and keeps the others. A
/// `Content-Length` there, which a client could take for the framing of what follows, goes too
/// (RFC 9110 §6.5.1).
#[test]
fn hidden_fields_are_hidden_in_trailers_too() {
    for fast in PATHS {
        let b = backend(|path, conn, events| match path {
            "/trailers" => {
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
                      5\r\nhello\r\n0\r\nServer: Apache/2.4.1\r\nX-Powered-By: PHP/5.3\r\nx-sum: 5\r\n\
                      Content-Length: 99\r\n\r\n",
                );
                true
            }
            _ => plain(path, conn, events),
        });
        let lb = start(fast, b.addr, &["--hide-header", "x-backend"]);
        let mut s = client(&lb);
        s.write_all(
            b"GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let got = String::from_utf8_lossy(&read_to_close(&mut s)).into_owned();
        assert!(got.starts_with("HTTP/1.1 200"), "{fast}: {got}");
        assert!(got.contains("hello"), "{fast}: {got}");
        assert!(
            !got.contains("Apache") && !got.contains("PHP"),
            "{fast}: {got}"
        );
        assert!(
            got.to_ascii_lowercase().contains("x-sum: 5"),
            "{fast}: {got}"
        );
        assert!(
            !got.to_ascii_lowercase().contains("content-length"),
            "{fast}: {got}"
        );
        assert!(got.ends_with("\r\n\r\n"), "{fast}: {got:?}");
    }
}

// Chapter 17: the same answers to an HTTP/2 client. A stream without a body goes to an
// HTTP/1.1 backend through the own hop (`src/http/h1/hop.rs`) with `LB_HTTP_FAST` on, and
// through hyper's client with it off; the rules, and so what the client gets, are the same.

/// What an HTTP/2 client got for one stream: status, fields, content, trailers.
struct H2Reply {
    status: u16,
    fields: hyper::HeaderMap,
    content: Vec<u8>,
    trailers: Option<hyper::HeaderMap>,
}

/// `METHOD path` on a new h2c connection, with `END_STREAM` on its HEADERS (no body, as a
/// browser's `GET`); `None` when the stream or the connection broke before its end.
fn h2_request(lb: &Proc, method: &str, path: &str) -> Option<H2Reply> {
    let addr = lb.addr();
    h2::runtime().block_on(async {
        let run = async {
            let mut send = h2::h2c(addr).await;
            let request = hyper::Request::builder()
                .method(method)
                .uri(format!("http://x{path}"))
                .body(h2::empty())
                .unwrap();
            let response = send.send_request(request).await.ok()?;
            let (head, mut body) = response.into_parts();
            let (mut content, mut trailers) = (Vec::new(), None);
            while let Some(frame) =
                std::future::poll_fn(|cx| hyper::body::Body::poll_frame(Pin::new(&mut body), cx))
                    .await
            {
                match frame.ok()?.into_data() {
                    Ok(data) => content.extend_from_slice(&data),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                }
            }
            Some(H2Reply {
                status: head.status.as_u16(),
                fields: head.headers,
                content,
                trailers,
            })
        };
        tokio::time::timeout(BOUND, run)
            .await
            .expect("the stream neither ended nor broke")
    })
}

fn h2_lb(fast: &str, backend: &Backend, extra: &[&str]) -> Proc {
    let mut args = vec!["--h2c"];
    args.extend_from_slice(extra);
    start(fast, backend.addr, &args)
}

/// RFC 9112 §7.1 and RFC 9113 §8.1: HTTP/2 has no chunked framing, so a chunked answer reaches
/// an HTTP/2 client as its content alone (extensions and sizes gone), and its trailer section
/// as the stream's trailers, less what frames or routes a message (RFC 9110 §6.5.1) and what
/// `--hide-header` hides. The backend's connection then carries the next request.
#[test]
fn a_chunked_answer_reaches_an_h2_stream_decoded_with_its_trailers() {
    for fast in PATHS {
        let b = backend(|path, conn, events| match path {
            "/chunked" => conn
                .write_all(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-backend: b1\r\n\r\n\
                      5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\nx-backend: b1\r\n\
                      content-length: 99\r\n\r\n",
                )
                .is_ok(),
            _ => plain(path, conn, events),
        });
        let lb = h2_lb(fast, &b, &["--hide-header", "x-backend"]);
        let r = h2_request(&lb, "GET", "/chunked").expect("an answer");
        assert_eq!(r.status, 200, "{fast}");
        assert_eq!(r.content, b"hello world", "{fast}");
        assert!(
            r.fields.get("x-backend").is_none(),
            "{fast}: {:?}",
            r.fields
        );
        assert!(r.fields.get("transfer-encoding").is_none(), "{fast}");
        let trailers = r.trailers.expect("trailers");
        assert_eq!(trailers.get("x-sum").unwrap(), "42", "{fast}");
        assert!(trailers.get("x-backend").is_none(), "{fast}: {trailers:?}");
        assert!(
            trailers.get("content-length").is_none(),
            "{fast}: {trailers:?}"
        );
        let r = h2_request(&lb, "GET", "/next").expect("an answer");
        assert_eq!(
            (r.status, r.content.as_slice()),
            (200, &b"next"[..]),
            "{fast}"
        );
        assert_eq!(b.requests().len(), 2, "{fast}");
    }
}

/// RFC 9113 §8.2.1 and §8.2.2: an HTTP/1.1 backend's fields reach an HTTP/2 client with their
/// names in lower case (`Content-Type` from most servers), repeated ones kept apart, and
/// without what only meant something to the backend's connection (`Connection`, what it
/// names, `Keep-Alive`) or what `--hide-header` hides. A backend's `Date` passes as it is; an
/// answer without one gets ours (RFC 9110 §6.6.1). The own hop writes these fields straight
/// into the stream's header block (`h1::hop::AnswerFields`), hyper's client into a map.
#[test]
fn an_answers_fields_reach_an_h2_stream_as_http2_spells_them() {
    let long = "X-A-Field-Name-Longer-Than-Thirty-Two-Bytes";
    for fast in PATHS {
        let b = backend(move |path, conn, _| {
            let date = match path {
                "/dated" => "Date: Mon, 07 Dec 2026 00:00:00 GMT\r\n",
                _ => "",
            };
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{long}: v\r\n\
                 Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nConnection: X-Drop\r\nX-Drop: gone\r\n\
                 Keep-Alive: timeout=5\r\nX-Backend: b1\r\n{date}Content-Length: 2\r\n\r\nok"
            );
            conn.write_all(answer.as_bytes()).is_ok()
        });
        let lb = h2_lb(fast, &b, &["--hide-header", "x-backend"]);
        let r = h2_request(&lb, "GET", "/dated").expect("an answer");
        assert_eq!(
            (r.status, r.content.as_slice()),
            (200, &b"ok"[..]),
            "{fast}"
        );
        let f = &r.fields;
        assert_eq!(f.get("content-type").unwrap(), "text/plain", "{fast}");
        assert_eq!(f.get(long.to_lowercase()).unwrap(), "v", "{fast}");
        let cookies: Vec<_> = f.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"], "{fast}");
        for gone in ["connection", "x-drop", "keep-alive", "x-backend"] {
            assert!(f.get(gone).is_none(), "{fast}: {gone} in {f:?}");
        }
        assert_eq!(f.get("content-length").unwrap(), "2", "{fast}");
        assert_eq!(f.get_all("date").iter().count(), 1, "{fast}");
        assert_eq!(
            f.get("date").unwrap(),
            "Mon, 07 Dec 2026 00:00:00 GMT",
            "{fast}"
        );
        let r = h2_request(&lb, "GET", "/undated").expect("an answer");
        let date = r.fields.get("date");
        let date = date.unwrap_or_else(|| panic!("{fast}: no date in {:?}", r.fields));
        assert!(date.to_str().unwrap().ends_with(" GMT"), "{fast}: {date:?}");
    }
}

/// RFC 9112 §6.3 and §6.1: an answer whose framing two readers could read two ways is the
/// backend's error, 502, for an HTTP/2 client as for an HTTP/1.1 one. So is a transfer coding
/// other than chunked: HTTP/2 cannot say it (RFC 9113 §8.2.2), and its bytes would reach the
/// client as if they were the content (`exchange::response_framing`).
#[test]
fn an_answer_framed_ambiguously_never_reaches_an_h2_stream() {
    for fast in PATHS {
        let b = backend(|path, conn, _| {
            let framing = match path {
                "/both" => "content-length: 5\r\ntransfer-encoding: chunked",
                "/two" => "content-length: 5\r\ncontent-length: 6",
                "/list" => "content-length: 5, 6",
                "/gzip" => "transfer-encoding: gzip, chunked",
                _ => "content-length: 5",
            };
            let answer = format!("HTTP/1.1 200 OK\r\n{framing}\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
            conn.write_all(answer.as_bytes()).is_ok()
        });
        let lb = h2_lb(fast, &b, &[]);
        for path in ["/both", "/two", "/list", "/gzip"] {
            let r = h2_request(&lb, "GET", path).expect("an answer");
            assert_eq!(r.status, 502, "LB_HTTP_FAST={fast} {path}");
            assert!(!r.content.starts_with(b"5\r\n"), "{fast} {path}");
        }
    }
}

/// RFC 9112 §9.3: bytes a backend sends after its answer's end (more than its length, a body
/// after a `HEAD`) are never read as the next stream's answer: the connection closes.
#[test]
fn bytes_a_backend_sends_out_of_turn_never_reach_the_next_h2_stream() {
    const POISON: &str = "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON";
    for fast in PATHS {
        let b = backend(|path, conn, events| {
            let answer = match path {
                "/long" => format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nA{POISON}"),
                "/head" => format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{POISON}",
                    POISON.len()
                ),
                "/chunks" => format!(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nA\r\n0\r\n\r\n{POISON}"
                ),
                _ => return plain(path, conn, events),
            };
            conn.write_all(answer.as_bytes()).is_ok()
        });
        let lb = h2_lb(fast, &b, &[]);
        for (method, path) in [("GET", "/long"), ("HEAD", "/head"), ("GET", "/chunks")] {
            let r = h2_request(&lb, method, path).expect("an answer");
            assert_eq!(r.status, 200, "{fast} {method} {path}");
            let expected: &[u8] = if method == "HEAD" { b"" } else { b"A" };
            assert_eq!(r.content, expected, "{fast} {method} {path}");
            let r = h2_request(&lb, "GET", "/b").expect("an answer");
            assert_eq!(
                (r.status, r.content.as_slice()),
                (200, &b"b"[..]),
                "LB_HTTP_FAST={fast}: after {method} {path}"
            );
        }
    }
}

/// RFC 9110 §6.4.1: an answer without content (204, 304, an answer to `HEAD`) ends with its
/// head, and so does its stream (`END_STREAM` on its HEADERS): nothing waits for a body the
/// backend will never send, and its connection carries the next request.
#[test]
fn answers_without_content_end_their_h2_stream_at_once() {
    for fast in PATHS {
        let b = backend(|path, conn, events| {
            let answer: &[u8] = match path {
                "/204" => b"HTTP/1.1 204 No Content\r\n\r\n",
                "/304" => b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
                "/head" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                _ => return plain(path, conn, events),
            };
            conn.write_all(answer).is_ok()
        });
        let lb = h2_lb(fast, &b, &["--response-timeout", "60"]);
        for (method, path, status) in [
            ("GET", "/204", 204),
            ("GET", "/304", 304),
            ("HEAD", "/head", 200),
        ] {
            let r = h2_request(&lb, method, path).expect("an answer");
            assert_eq!(
                (r.status, r.content.len()),
                (status, 0),
                "{fast} {method} {path}"
            );
        }
        let r = h2_request(&lb, "GET", "/next").expect("an answer");
        assert_eq!(r.content, b"next", "{fast}");
    }
}

/// A backend that answers too late is 504 for an HTTP/2 stream too (`--response-timeout`);
/// one that stops in the middle of its body has its stream reset at `--idle-timeout` (the
/// client cannot be given a complete answer) and its connection closed, and the balancer
/// serves the next stream as usual.
#[test]
fn a_backend_that_stalls_is_cut_off_from_an_h2_stream() {
    for fast in PATHS {
        let b = backend(|path, conn, events| match path {
            "/late" => {
                thread::sleep(Duration::from_millis(1500));
                plain(path, conn, events)
            }
            "/stall" => {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello");
                true
            }
            _ => plain(path, conn, events),
        });
        let lb = h2_lb(
            fast,
            &b,
            &["--idle-timeout", "0.5", "--response-timeout", "1"],
        );
        let r = h2_request(&lb, "GET", "/late").expect("an answer");
        assert_eq!(r.status, 504, "LB_HTTP_FAST={fast}");
        assert!(
            h2_request(&lb, "GET", "/stall").is_none(),
            "LB_HTTP_FAST={fast}: a stalled body must not end as if complete"
        );
        // Both backend connections closed: the late one's and the stalled one's.
        b.wait_event("closed");
        b.wait_event("closed");
        let r = h2_request(&lb, "GET", "/after").expect("an answer");
        assert_eq!(
            (r.status, r.content.as_slice()),
            (200, &b"after"[..]),
            "{fast}"
        );
    }
}

/// RFC 9110 §9.2.2 and RFC 9112 §9.3.1: a `POST` without a body is still not idempotent. A
/// backend that reads it on a kept-alive connection and closes without answering gets it once,
/// and the client 502; a `GET` in the same case goes again, on a new connection, and is
/// answered.
#[test]
fn a_bodyless_post_over_h2_is_never_sent_twice() {
    for fast in PATHS {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let b = backend(move |path, conn, events| match path {
            "/pay" => false,
            "/drop" if !dropped.swap(true, std::sync::atomic::Ordering::SeqCst) => false,
            _ => plain(path, conn, events),
        });
        let lb = h2_lb(fast, &b, &[]);
        assert_eq!(h2_request(&lb, "GET", "/warm").unwrap().status, 200);
        assert_eq!(
            h2_request(&lb, "POST", "/pay").unwrap().status,
            502,
            "{fast}"
        );
        let pays = b
            .requests()
            .iter()
            .filter(|l| l.starts_with("POST /pay"))
            .count();
        assert_eq!(pays, 1, "LB_HTTP_FAST={fast}: {:?}", b.requests());
        assert_eq!(h2_request(&lb, "GET", "/warm").unwrap().status, 200);
        let r = h2_request(&lb, "GET", "/drop").unwrap();
        assert_eq!(
            (r.status, r.content.as_slice()),
            (200, &b"drop"[..]),
            "{fast}"
        );
        let drops = b
            .requests()
            .iter()
            .filter(|l| l.starts_with("GET /drop"))
            .count();
        assert_eq!(drops, 2, "LB_HTTP_FAST={fast}: {:?}", b.requests());
    }
}

/// Answers of every framing, larger than any buffer and window on the way, reach an HTTP/2
/// client byte for byte: by length, in chunks of odd sizes, and until the backend closes.
#[test]
fn large_answers_of_every_framing_cross_an_h2_stream_byte_exact() {
    const SIZE: usize = 1 << 20;
    let content: Arc<Vec<u8>> = Arc::new((0..SIZE).map(|i| (i * 31 % 251) as u8).collect());
    for fast in PATHS {
        let body = Arc::clone(&content);
        let b = backend(move |path, conn, _| match path {
            "/length" => {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {SIZE}\r\n\r\n");
                conn.write_all(head.as_bytes()).is_ok() && conn.write_all(&body).is_ok()
            }
            "/chunked" => {
                let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                let mut at = 0;
                for size in [1, 7000, 16384, 3, 65536].iter().cycle() {
                    let end = (at + size).min(SIZE);
                    out.extend_from_slice(format!("{:x}\r\n", end - at).as_bytes());
                    out.extend_from_slice(&body[at..end]);
                    out.extend_from_slice(b"\r\n");
                    at = end;
                    if at == SIZE {
                        break;
                    }
                }
                out.extend_from_slice(b"0\r\n\r\n");
                conn.write_all(&out).is_ok()
            }
            _ => {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
                let _ = conn.write_all(&body);
                false
            }
        });
        let lb = h2_lb(fast, &b, &[]);
        for path in ["/length", "/chunked", "/close"] {
            let r = h2_request(&lb, "GET", path).expect("an answer");
            assert_eq!(r.status, 200, "{fast} {path}");
            assert_eq!(r.content.len(), SIZE, "{fast} {path}");
            assert!(
                r.content == *content,
                "LB_HTTP_FAST={fast} {path}: bytes differ"
            );
        }
    }
}
