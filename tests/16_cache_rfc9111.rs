//! Chapter 16's cache against RFC 9111 (and RFC 9110, RFC 9213 where they meet it): each test
//! names the section it proves, and each failed on the cache before issue 26's work. The
//! backend is scripted per path and counts what reaches it, so a hit is a request the backend
//! never saw.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;

/// Requests the backend saw, by path.
type Seen = Arc<Mutex<HashMap<String, usize>>>;

/// A backend answering `answer(method, path)` (a whole response head and body) to each request.
fn backend(answer: fn(&str, &str) -> String) -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let addr = spawn_per_connection(move |mut conn: TcpStream| {
        while let Some((head, _body)) = read_request(&mut conn) {
            let mut words = head.split(' ');
            let method = words.next().unwrap_or("").to_owned();
            let path = words.next().unwrap_or("/").to_owned();
            *record.lock().unwrap().entry(path.clone()).or_default() += 1;
            if conn.write_all(answer(&method, &path).as_bytes()).is_err() {
                return;
            }
        }
    });
    (addr, seen)
}

fn start(backend: SocketAddr) -> Proc {
    let backend = backend.to_string();
    Proc::start(
        bin!("http-lb"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--backend",
            &backend,
            "--health-interval",
            "0",
            "--affinity",
            "none",
            "--cache",
            "1000000",
        ],
        2,
    )
}

/// One request with extra fields; the reply (every answer here carries a length).
fn request(lb: &Proc, method: &str, path: &str, fields: &[&str]) -> Reply {
    let mut s = connect(lb.addr());
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: t\r\n");
    for f in fields {
        head += f;
        head += "\r\n";
    }
    if method == "POST" {
        head += "content-length: 0\r\n";
    }
    s.write_all(format!("{head}\r\n").as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        got.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = text
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    // No body after a HEAD, a 204 or a 304, whatever a length says (RFC 9112 §6.3).
    let length = match method == "HEAD" || status == 204 || status == 304 {
        true => 0,
        false => headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap()),
    };
    let mut body = vec![0; length];
    s.read_exact(&mut body).unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

fn get(lb: &Proc, path: &str) -> Reply {
    request(lb, "GET", path, &[])
}

fn seen(seen: &Seen, path: &str) -> usize {
    seen.lock().unwrap().get(path).copied().unwrap_or(0)
}

fn ok(fields: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\n{fields}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn now_plus(secs: u64) -> String {
    httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(secs))
}

/// RFC 9110 §5.6.7's obsolete formats of the same moment: RFC 850 and asctime.
fn obsolete(imf: &str) -> (String, String) {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let parts: Vec<&str> = imf.split([' ', ',']).filter(|p| !p.is_empty()).collect();
    let (wd, day, mon, year, time) = (parts[0], parts[1], parts[2], parts[3], parts[4]);
    let long = match wd {
        "Mon" => "Monday",
        "Tue" => "Tuesday",
        "Wed" => "Wednesday",
        "Thu" => "Thursday",
        "Fri" => "Friday",
        "Sat" => "Saturday",
        _ => "Sunday",
    };
    let rfc850 = format!("{long}, {day}-{mon}-{} {time} GMT", &year[2..]);
    let asctime = format!(
        "{wd} {mon} {:>2} {time} {year}",
        day.trim_start_matches('0')
    );
    (rfc850, asctime)
}

fn answers(method: &str, path: &str) -> String {
    let day = 3600;
    match path {
        "/fresh" | "/inv" | "/inv2" => ok("cache-control: max-age=60\r\n", path),
        "/post" if method == "POST" => {
            "HTTP/1.1 201 Created\r\nlocation: /inv2\r\ncontent-length: 0\r\n\r\n".to_owned()
        }
        "/dated" => ok(
            &format!(
                "cache-control: max-age=60\r\ndate: {}\r\n",
                httpdate::fmt_http_date(SystemTime::now())
            ),
            "dated",
        ),
        "/case" => ok("Cache-Control: Public, Max-Age=60\r\n", "case"),
        "/bad-age" => ok("cache-control: max-age=3600\r\nage: 7200, 0\r\n", "bad-age"),
        "/bad-expires" => ok(
            &format!("expires: {}\r\n", now_plus(day).replacen(' ', "  ", 1)),
            "bad-expires",
        ),
        "/rfc850" => ok(
            &format!("expires: {}\r\n", obsolete(&now_plus(day)).0),
            "rfc850",
        ),
        "/asctime" => ok(
            &format!("expires: {}\r\n", obsolete(&now_plus(day)).1),
            "asctime",
        ),
        "/cdn-no-store" => ok(
            "cache-control: max-age=600\r\ncdn-cache-control: no-store\r\n",
            "cdn",
        ),
        "/cdn-max-age" => ok(
            "cache-control: no-store\r\ncdn-cache-control: Max-Age=60\r\n",
            "cdn",
        ),
        "/gone" => "HTTP/1.1 404 Not Found\r\ncache-control: max-age=60\r\ncontent-length: 4\r\n\r\ngone"
            .to_owned(),
        "/moved" => "HTTP/1.1 301 Moved Permanently\r\nlocation: /fresh\r\ncache-control: max-age=60\r\ncontent-length: 0\r\n\r\n".to_owned(),
        "/must-understand" => ok(
            "cache-control: max-age=60, must-understand, no-store\r\n",
            "understood",
        ),
        "/no-store" => ok("cache-control: max-age=60, no-store\r\n", "not stored"),
        "/tagged" => ok("cache-control: max-age=60\r\netag: \"v1\"\r\n", "tagged"),
        "/vary" => ok("cache-control: max-age=60\r\nvary: x-pick\r\n", "vary"),
        "/swr" => swr_answer(),
        "/stale-if-error" => stale_if_error_answer(),
        "/hinted" => format!(
            "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n{}",
            ok("cache-control: max-age=60\r\n", "hinted")
        ),
        "/ranged" => ok(
            "cache-control: max-age=60\r\netag: \"r1\"\r\nlast-modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
            "0123456789",
        ),
        _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_owned(),
    }
}

/// RFC 9111 §4.4: a successful unsafe request invalidates the stored answer for its URL, and
/// for the URL its answer's `Location` names on the same host.
#[test]
fn an_unsafe_request_invalidates_what_is_stored() {
    let (b, seen_by) = backend(answers);
    let lb = start(b);
    for path in ["/inv", "/inv2"] {
        assert_eq!(get(&lb, path).header("x-cache"), Some("MISS"));
        assert_eq!(get(&lb, path).header("x-cache"), Some("HIT"));
    }
    // A POST to the URL itself, and one whose 201 names the other in `Location`.
    assert_eq!(request(&lb, "POST", "/inv", &[]).status, 200);
    assert_eq!(get(&lb, "/inv").header("x-cache"), Some("MISS"));
    assert_eq!(request(&lb, "POST", "/post", &[]).status, 201);
    assert_eq!(get(&lb, "/inv2").header("x-cache"), Some("MISS"));
    assert_eq!(seen(&seen_by, "/inv"), 3, "GET, POST, GET");
    assert_eq!(seen(&seen_by, "/inv2"), 2);
    // An unsafe request that failed changes nothing (a 404 here).
    assert_eq!(request(&lb, "DELETE", "/nothing", &[]).status, 404);
    assert_eq!(get(&lb, "/inv").header("x-cache"), Some("HIT"));
}

/// RFC 9111 §4 and §5.1: a hit carries the `Date` the backend sent, as an HTTP-date, and an
/// `Age` saying how old it is (not a new `Date` of its own).
#[test]
fn a_hit_keeps_its_date_and_tells_its_age() {
    let (b, _) = backend(answers);
    let lb = start(b);
    let first = get(&lb, "/dated");
    let date = first.header("date").unwrap().to_owned();
    let hit = get(&lb, "/dated");
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(hit.header("date"), Some(date.as_str()));
    assert!(date.ends_with(" GMT"), "{date}");
    assert!(
        hit.header("age").is_some_and(|a| a.parse::<u64>().is_ok()),
        "{hit:?}"
    );
}

/// RFC 9111 §5.2 (directive names are case-insensitive), §5.1 (an `Age` that is not one number
/// is invalid and must not make an answer fresh), §5.3 with RFC 9110 §5.6.7 (an `Expires` in
/// either obsolete format counts; one with invalid spacing means already expired).
#[test]
fn freshness_fields_are_read_as_the_rfcs_write_them() {
    let (b, _) = backend(answers);
    let lb = start(b);
    for (path, cached) in [
        ("/case", true),
        ("/rfc850", true),
        ("/asctime", true),
        ("/bad-age", false),
        ("/bad-expires", false),
    ] {
        get(&lb, path);
        let second = get(&lb, path);
        assert_eq!(
            second.header("x-cache") == Some("HIT"),
            cached,
            "{path}: {second:?}"
        );
    }
}

/// RFC 9213: a CDN-like shared cache takes `CDN-Cache-Control` over `Cache-Control`, both
/// ways (and its directive names are case-insensitive too).
#[test]
fn cdn_cache_control_wins_over_cache_control() {
    let (b, _) = backend(answers);
    let lb = start(b);
    get(&lb, "/cdn-no-store");
    assert_eq!(get(&lb, "/cdn-no-store").header("x-cache"), Some("MISS"));
    get(&lb, "/cdn-max-age");
    assert_eq!(get(&lb, "/cdn-max-age").header("x-cache"), Some("HIT"));
}

/// RFC 9111 §3 and RFC 9110 §15.1: not only 200 is stored: a 404 or 301 with freshness (or one
/// cacheable by default) is too.
#[test]
fn answers_other_than_200_are_stored() {
    let (b, seen_by) = backend(answers);
    let lb = start(b);
    for (path, status) in [("/gone", 404), ("/moved", 301)] {
        assert_eq!(get(&lb, path).status, status);
        let second = get(&lb, path);
        assert_eq!(
            (second.status, second.header("x-cache")),
            (status, Some("HIT"))
        );
        assert_eq!(seen(&seen_by, path), 1);
    }
}

/// RFC 9111 §4.3.2: a client's conditional request that a fresh stored answer satisfies is
/// answered 304 by the cache, without a body and without asking the backend.
#[test]
fn a_conditional_request_on_a_hit_gets_304() {
    let (b, seen_by) = backend(answers);
    let lb = start(b);
    get(&lb, "/tagged");
    let r = request(&lb, "GET", "/tagged", &["if-none-match: \"v1\""]);
    assert_eq!(r.status, 304, "{r:?}");
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some("\"v1\""));
    let other = request(&lb, "GET", "/tagged", &["if-none-match: \"v2\""]);
    assert_eq!((other.status, other.text().as_str()), (200, "tagged"));
    assert_eq!(seen(&seen_by, "/tagged"), 1);
}

/// RFC 9111 §4.1: variants are told apart by the fields `Vary` names, and one URL whose
/// `Vary` names a field the client chooses cannot hold more than the cache allows one key
/// (32 variants): a flood of variants leaves the rest of the cache alone.
#[test]
fn a_flood_of_variants_is_bounded_per_url() {
    let (b, _) = backend(answers);
    let lb = start(b);
    get(&lb, "/fresh");
    for i in 0..200 {
        let pick = format!("x-pick: {i}");
        request(&lb, "GET", "/vary", &[&pick]);
    }
    let r = request(&lb, "GET", "/vary", &["x-pick: 199"]);
    assert_eq!(r.header("x-cache"), Some("HIT"));
    let metrics = common::get(lb.addrs[1], "/metrics").text();
    let entries = metric(&metrics, "httplb_cache_entries");
    assert!(entries <= 33, "{entries} entries");
    assert_eq!(get(&lb, "/fresh").header("x-cache"), Some("HIT"));
}

/// RFC 9111 §5.2.2.3: `must-understand` beside `no-store` tells a cache that understands the
/// status's caching rules (here, 200) that it may store the answer after all; `no-store`
/// alone still means no.
#[test]
fn must_understand_overrides_no_store_for_a_status_we_understand() {
    let (b, seen_by) = backend(answers);
    let lb = start(b);
    get(&lb, "/must-understand");
    assert_eq!(get(&lb, "/must-understand").header("x-cache"), Some("HIT"));
    get(&lb, "/no-store");
    assert_eq!(get(&lb, "/no-store").header("x-cache"), Some("MISS"));
    assert_eq!(seen(&seen_by, "/no-store"), 2);
}

/// Versions of `/swr` handed out, and how many of its requests the backend has in hand now
/// and at most: it takes its time over each, as a slow application does.
static SWR_VERSION: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static SWR_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static SWR_MOST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `/swr`: stale on arrival (`Age` past `max-age`) and usable stale for a minute while it is
/// revalidated; each answer a new version.
fn swr_answer() -> String {
    use std::sync::atomic::Ordering::SeqCst;
    let now = SWR_IN_FLIGHT.fetch_add(1, SeqCst) + 1;
    SWR_MOST.fetch_max(now, SeqCst);
    std::thread::sleep(Duration::from_millis(200));
    let version = SWR_VERSION.fetch_add(1, SeqCst) + 1;
    SWR_IN_FLIGHT.fetch_sub(1, SeqCst);
    ok(
        "cache-control: max-age=5, stale-while-revalidate=60\r\nage: 10\r\n",
        &format!("v{version}"),
    )
}

/// RFC 5861 §3: an entry expired for less than its `stale-while-revalidate` is served at once
/// (`X-Cache: UPDATING`, its `Age` told) while one request, in the background, fetches it again;
/// however many clients arrive meanwhile, the backend has one revalidation in hand at a time;
/// the new version then answers. A client's own `Cache-Control` (here `no-cache`) asks for a
/// validated answer and gets one, never the stale entry (RFC 9111 §5.2.1.4).
#[test]
fn stale_while_revalidate_serves_at_once_and_refreshes_once() {
    use std::sync::atomic::Ordering::SeqCst;
    let (addr, saw) = backend(answers);
    let lb = start(addr);
    let first = get(&lb, "/swr");
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(first.body, b"v1");
    for _ in 0..10 {
        let stale = get(&lb, "/swr");
        assert_eq!(stale.header("x-cache"), Some("UPDATING"));
        assert!(stale.body.starts_with(b"v"), "{:?}", stale.body);
        let age: u64 = stale.header("age").unwrap().parse().unwrap();
        assert!(age >= 10, "age {age}");
    }
    eventually("a newer version is served", PATIENCE, || {
        get(&lb, "/swr").body != b"v1"
    });
    assert_eq!(SWR_MOST.load(SeqCst), 1, "revalidations at once");
    assert!(seen(&saw, "/swr") >= 2);

    let before = seen(&saw, "/swr");
    let validated = request(&lb, "GET", "/swr", &["cache-control: no-cache"]);
    assert_ne!(validated.header("x-cache"), Some("UPDATING"));
    assert!(seen(&saw, "/swr") > before, "no-cache reached the backend");
}

/// Answers to `/stale-if-error` so far: the first is stored, every later one is a 503.
static SIE_ANSWERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `/stale-if-error`: an answer expired on arrival (`max-age=0`), with no `Age` of its own,
/// usable stale on error; then the backend fails.
fn stale_if_error_answer() -> String {
    match SIE_ANSWERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
        0 => ok("cache-control: max-age=0, stale-if-error=600\r\n", "kept"),
        _ => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown".to_owned(),
    }
}

/// RFC 9111 §4 ("a cache MUST generate an Age header field ... equal to the stored response's
/// current_age") and §5.1, with RFC 5861 §4: a stale answer served because the backend failed
/// (`X-Cache: STALE`) says how old it is now, as a hit and an `UPDATING` answer do; before, it
/// went out with its fields as stored, here with no `Age` at all.
#[test]
fn a_stale_answer_on_error_tells_its_age_now() {
    let (addr, saw) = backend(answers);
    let lb = start(addr);
    assert_eq!(get(&lb, "/stale-if-error").body, b"kept");
    let stale = get(&lb, "/stale-if-error");
    assert_eq!(
        (stale.status, stale.header("x-cache")),
        (200, Some("STALE"))
    );
    assert_eq!(stale.body, b"kept");
    let age: u64 = stale
        .header("age")
        .expect("a stale answer carries Age")
        .parse()
        .unwrap();
    assert!(age < 600, "age {age}");
    assert_eq!(seen(&saw, "/stale-if-error"), 2);
}

/// RFC 9110 §14 and §13.1.5: a range of a stored whole answer is served from the cache, as the
/// backend would: one range is a 206 with its `Content-Range`, past the end a 416, several
/// ranges or an `If-Range` naming another version the whole answer; the backend is asked once.
#[test]
fn ranges_are_served_from_a_stored_whole_answer() {
    let (b, saw) = backend(answers);
    let lb = start(b);
    assert_eq!(get(&lb, "/ranged").header("x-cache"), Some("MISS"));
    let part = request(&lb, "GET", "/ranged", &["range: bytes=2-5"]);
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 2-5/10"));
    assert_eq!(part.header("content-length"), Some("4"));
    assert_eq!(part.body, b"2345");
    assert_eq!(part.header("x-cache"), Some("HIT"));
    let tail = request(&lb, "GET", "/ranged", &["range: bytes=-3"]);
    assert_eq!((tail.status, tail.body.as_slice()), (206, &b"789"[..]));
    let past = request(&lb, "GET", "/ranged", &["range: bytes=10-"]);
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), Some("bytes */10"));
    for whole in [
        &["range: bytes=0-1,4-5"][..],
        &["range: bytes=2-5", "if-range: \"r0\""],
        &["range: bytes=2-5", "if-range: W/\"r1\""],
        &[
            "range: bytes=2-5",
            "if-range: Sun, 06 Nov 1994 08:49:38 GMT",
        ],
    ] {
        let reply = request(&lb, "GET", "/ranged", whole);
        assert_eq!(
            (reply.status, reply.body.as_slice()),
            (200, &b"0123456789"[..]),
            "{whole:?}"
        );
    }
    for still in [
        &["range: bytes=2-5", "if-range: \"r1\""][..],
        &[
            "range: bytes=2-5",
            "if-range: Sun, 06 Nov 1994 08:49:37 GMT",
        ],
    ] {
        assert_eq!(
            request(&lb, "GET", "/ranged", still).status,
            206,
            "{still:?}"
        );
    }
    assert_eq!(seen(&saw, "/ranged"), 1);
}

/// RFC 9110 §15.2 (a proxy forwards the 1xx it did not ask for) and RFC 8297, with the cache
/// on, which puts every request on hyper's path: the backend's `103 Early Hints` reaches the
/// client before the answer, and is never stored: the hit that follows is the answer alone.
/// Before, hyper's path dropped every hint.
#[test]
fn early_hints_pass_with_the_cache_on_and_are_not_stored() {
    let (b, saw) = backend(answers);
    let lb = start(b);
    let mut s = connect(lb.addr());
    s.write_all(b"GET /hinted HTTP/1.1\r\nhost: t\r\n\r\n")
        .unwrap();
    let hint = read_reply(&mut s);
    assert_eq!(hint.status, 103);
    assert_eq!(hint.header("link"), Some("</a.css>; rel=preload"));
    let answer = read_reply(&mut s);
    assert_eq!((answer.status, answer.text().as_str()), (200, "hinted"));
    assert_eq!(answer.header("x-cache"), Some("MISS"));
    // On the same connection: the hit comes first, no hint before it.
    s.write_all(b"GET /hinted HTTP/1.1\r\nhost: t\r\n\r\n")
        .unwrap();
    let hit = read_reply(&mut s);
    assert_eq!((hit.status, hit.header("x-cache")), (200, Some("HIT")));
    assert_eq!(seen(&saw, "/hinted"), 1);
}

/// Answers to `/changing` so far: each carries a new strong `ETag`.
static CHANGING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A backend that serves ranges itself, as an origin does: `/parts` (one representation,
/// `ETag "p1"`), `/changing` (a new `ETag` every answer), `/lying` (a `206` whose
/// `Content-Range` names 4 bytes while it sends 5); each body is `0123456789`, fresh for a
/// minute.
fn ranged_backend() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let addr = spawn_per_connection(move |mut conn: TcpStream| {
        while let Some((head, _body)) = read_request(&mut conn) {
            let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
            *record.lock().unwrap().entry(path.clone()).or_default() += 1;
            let range = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("range: bytes=")
                        .map(str::to_owned)
                })
                .and_then(|r| {
                    let (a, b) = r.trim().split_once('-')?;
                    Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?.min(9)))
                });
            let etag = match path.as_str() {
                "/changing" => format!(
                    "\"c{}\"",
                    CHANGING.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                ),
                _ => "\"p1\"".to_owned(),
            };
            let fields = format!("cache-control: max-age=60\r\netag: {etag}\r\n");
            let body = "0123456789";
            let answer = match (range, path.as_str()) {
                (Some(_), "/lying") => format!(
                    "HTTP/1.1 206 Partial Content\r\n{fields}content-range: bytes 0-3/10\r\ncontent-length: 5\r\n\r\n01234"
                ),
                (Some((a, b)), _) => format!(
                    "HTTP/1.1 206 Partial Content\r\n{fields}content-range: bytes {a}-{b}/10\r\ncontent-length: {}\r\n\r\n{}",
                    b - a + 1,
                    &body[a..=b]
                ),
                (None, _) => ok(&fields, body),
            };
            if conn.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    });
    (addr, seen)
}

/// RFC 9111 §3.3 and §3.4: a `206` is stored as a part that answers the ranges inside it (and
/// nothing else: not the whole, not a `HEAD`, not a range that reaches past it); a newer part of
/// the same representation that overlaps or touches it is combined with it, and parts that add
/// up to the whole become the whole answer. Parts of different representations (another strong
/// `ETag`) are never combined, and a `206` whose `Content-Range` does not describe its body is
/// not stored. Before, no `206` was stored.
#[test]
fn parts_are_stored_combined_and_completed() {
    let (b, saw) = ranged_backend();
    let lb = start(b);
    let range = |path: &str, r: &str| request(&lb, "GET", path, &[&format!("range: bytes={r}")]);
    let first = range("/parts", "0-3");
    assert_eq!((first.status, first.body.as_slice()), (206, &b"0123"[..]));
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let inside = range("/parts", "1-2");
    assert_eq!((inside.status, inside.body.as_slice()), (206, &b"12"[..]));
    assert_eq!(inside.header("x-cache"), Some("HIT"));
    assert_eq!(inside.header("content-range"), Some("bytes 1-2/10"));
    assert_eq!(seen(&saw, "/parts"), 1);
    // Past the part: to the backend, and what comes back is combined with it.
    assert_eq!(range("/parts", "3-6").header("x-cache"), Some("MISS"));
    let combined = range("/parts", "0-6");
    assert_eq!(
        (combined.status, combined.body.as_slice()),
        (206, &b"0123456"[..])
    );
    assert_eq!(combined.header("x-cache"), Some("HIT"));
    // Neither a HEAD nor the whole answer comes from a part; the HEAD's answer, bodiless, is
    // not stored either, so the part stays.
    assert_eq!(
        request(&lb, "HEAD", "/parts", &[]).header("x-cache"),
        Some("MISS")
    );
    assert_eq!(range("/parts", "4-6").header("x-cache"), Some("HIT"));
    assert_eq!(seen(&saw, "/parts"), 3);
    // The part that touches the end completes it: a whole answer, which answers anything.
    assert_eq!(range("/parts", "7-9").header("x-cache"), Some("MISS"));
    let whole = get(&lb, "/parts");
    assert_eq!(
        (whole.status, whole.body.as_slice()),
        (200, &b"0123456789"[..])
    );
    assert_eq!(whole.header("x-cache"), Some("HIT"));
    assert_eq!(whole.header("content-range"), None);
    assert_eq!(whole.header("content-length"), Some("10"));
    assert_eq!(range("/parts", "8-9").body, b"89");
    assert_eq!(seen(&saw, "/parts"), 4);
    // A mismatched If-Range is not answered from a part.
    assert_eq!(range("/changing", "0-3").header("x-cache"), Some("MISS"));
    let other = request(
        &lb,
        "GET",
        "/changing",
        &["range: bytes=0-1", "if-range: \"other\""],
    );
    assert_eq!(other.header("x-cache"), Some("MISS"));

    // Another representation: the newer part replaces the older, never joins it.
    assert_eq!(range("/changing", "0-4").header("x-cache"), Some("MISS"));
    assert_eq!(range("/changing", "5-9").header("x-cache"), Some("MISS"));
    assert_eq!(range("/changing", "0-1").header("x-cache"), Some("MISS"));
    assert_eq!(get(&lb, "/changing").header("x-cache"), Some("MISS"));

    // A backend that says 4 bytes and sends 5: passed on as sent, never stored.
    for _ in 0..2 {
        let lying = range("/lying", "0-3");
        assert_eq!(lying.header("x-cache"), Some("MISS"));
    }
    assert_eq!(seen(&saw, "/lying"), 2);
}
