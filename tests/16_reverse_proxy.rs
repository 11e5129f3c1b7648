//! Chapter 16: what else a reverse proxy is for. So far: compression of responses, and hiding
//! what the backends run.

mod common;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;

use common::{Proc, Reply, connect};

/// `http-lb` with `args` over one dummy server.
fn start(args: &[&str]) -> (Proc, Proc) {
    let dummy = Proc::start(bin!("dummy-server"), &["--listen", "127.0.0.1:0"], 1);
    let backend = dummy.addr().to_string();
    let mut all = vec!["--listen", "127.0.0.1:0", "--backend", &backend];
    all.extend_from_slice(args);
    // A second `listening on` line for `--admin`.
    let listeners = 1 + args.contains(&"--admin") as usize;
    let lb = Proc::start(bin!("http-lb"), &all, listeners);
    (dummy, lb)
}

/// `GET path` with extra header lines, on a new connection.
fn get(addr: SocketAddr, path: &str, headers: &[&str]) -> Reply {
    let mut s = connect(addr);
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n");
    for h in headers {
        head += &format!("{h}\r\n");
    }
    s.write_all(format!("{head}\r\n").as_bytes()).unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    parse(&bytes)
}

/// A whole `connection: close` response, chunked or not.
fn parse(bytes: &[u8]) -> Reply {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let headers: Vec<(String, String)> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let rest = &bytes[end..];
    let body = if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked")
    {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(
            std::str::from_utf8(&rest[..line_end])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .unwrap(),
        "br" => brotli::Decompressor::new(body, 4096)
            .read_to_end(&mut out)
            .unwrap(),
        "zstd" => zstd::stream::read::Decoder::new(body)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap(),
        other => panic!("unexpected coding {other}"),
    };
    out
}

/// With `--compress`, a text answer comes back in the coding the client prefers (gzip,
/// brotli or zstd by q-value), decodes to the original bytes, carries `Vary:
/// Accept-Encoding`, and is several times smaller; without the flag nothing is compressed.
#[test]
fn text_is_compressed_in_the_coding_the_client_prefers() {
    let (_dummy, lb) = start(&["--compress"]);
    let original = lb::dummy::text_bytes(300_000).into_bytes();
    for (accept, want) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip;q=0.5, br;q=0.9, zstd;q=0.1", "br"),
        ("gzip, deflate, br, zstd", "br"),
    ] {
        let reply = get(
            lb.addr(),
            "/text/300000",
            &[&format!("accept-encoding: {accept}")],
        );
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-encoding"), Some(want), "{accept}");
        assert_eq!(reply.header("vary"), Some("accept-encoding"));
        assert!(
            reply.body.len() < original.len() / 10,
            "{want}: {} bytes",
            reply.body.len()
        );
        assert!(
            decode(want, &reply.body) == original,
            "{want} did not decode to the original"
        );
    }
    // No Accept-Encoding: identity, but still Vary (a cache must not serve it to a gzip client
    // as if it were the only version, nor the reverse).
    let plain = get(lb.addr(), "/text/300000", &[]);
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("vary"), Some("accept-encoding"));
    assert!(plain.body == original);

    let (_dummy2, off) = start(&[]);
    let reply = get(off.addr(), "/text/300000", &["accept-encoding: gzip"]);
    assert_eq!(reply.header("content-encoding"), None);

    // What it saved, for the status page: six answers' bytes in, five of them compressed.
    let (_dummy3, counted) = start(&["--compress", "--admin", "127.0.0.1:0"]);
    for accept in ["gzip", "br"] {
        let header = format!("accept-encoding: {accept}");
        get(counted.addr(), "/text/300000", &[&header]);
    }
    get(counted.addr(), "/text/300000", &[]);
    let metrics = common::get(counted.addrs[1], "/metrics").text();
    let bytes = |d: &str| {
        common::metric(
            &metrics,
            &format!("httplb_compression_bytes_total{{direction=\"{d}\"}}"),
        )
    };
    assert_eq!(bytes("in"), 600_000, "only compressed answers count");
    assert!(
        bytes("out") > 0 && bytes("out") < 60_000,
        "{}",
        bytes("out")
    );
}

/// Never compressed: a range request, a body too small to gain, a type that is compressed
/// already, a HEAD.
#[test]
fn ranges_small_bodies_and_binary_types_are_left_alone() {
    let (_dummy, lb) = start(&["--compress"]);
    let gzip = "accept-encoding: gzip";
    let ranged = get(lb.addr(), "/text/100000", &[gzip, "range: bytes=0-99"]);
    assert_eq!(ranged.header("content-encoding"), None, "a range request");
    let small = get(lb.addr(), "/text/100", &[gzip]);
    assert_eq!(small.header("content-encoding"), None, "100 bytes");
    assert_eq!(small.body.len(), 100);
    let binary = get(lb.addr(), "/bytes/100000", &[gzip]);
    assert_eq!(
        binary.header("content-encoding"),
        None,
        "application/octet-stream"
    );
    assert_eq!(binary.body.len(), 100_000);
    let head = {
        let mut s = connect(lb.addr());
        write!(
            s,
            "HEAD /text/100000 HTTP/1.1\r\nhost: t\r\n{gzip}\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut bytes = Vec::new();
        s.read_to_end(&mut bytes).unwrap();
        String::from_utf8_lossy(&bytes).to_ascii_lowercase()
    };
    assert!(!head.contains("content-encoding"), "{head}");
}

/// With `--hide-header`, the backend's `Server` and `X-Powered-By` never reach the client,
/// nor the fields named; answers of `http-lb`'s own name no backend address.
#[test]
fn what_the_backends_run_is_hidden() {
    let (_dummy, open) = start(&[]);
    let told = get(open.addr(), "/powered", &[]);
    assert!(told.header("server").is_some() && told.header("x-powered-by").is_some());

    let (dummy, lb) = start(&["--hide-header", "x-served-by"]);
    let hidden = get(lb.addr(), "/powered", &[]);
    assert_eq!(hidden.status, 200);
    for name in ["server", "x-powered-by", "x-served-by"] {
        assert_eq!(hidden.header(name), None, "{name} reached the client");
    }
    let backend = dummy.addr().to_string();
    drop(dummy);
    let error = get(lb.addr(), "/", &[]);
    assert!(error.status >= 500, "{}", error.status);
    assert!(!error.text().contains(&backend), "{}", error.text());
    assert!(!format!("{:?}", error.headers).contains(&backend));
}

/// A folder for `--static`: an index, a binary file, a stylesheet, a link pointing out.
fn site() -> std::path::PathBuf {
    let dir = common::temp_dir("site");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>home</h1>\n").unwrap();
    std::fs::write(dir.join("sub/blob.bin"), common::payload(100_000, 16)).unwrap();
    std::fs::write(dir.join("sub/style.css"), "body { color: red }\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("sub/out")).unwrap();
    std::os::unix::fs::symlink("sub/style.css", dir.join("inside")).unwrap();
    std::os::unix::fs::symlink(dir.join("sub/style.css"), dir.join("absolute")).unwrap();
    dir
}

/// `--static PREFIX=DIR` serves files with their type, `index.html` for a folder, ETag and
/// Last-Modified validators that answer 304, one byte range (206) or 416, HEAD without a body;
/// everything else still goes to the backends.
#[test]
fn a_static_folder_is_served_with_validators_and_ranges() {
    let dir = site();
    let flag = format!("/assets/={}", dir.display());
    let (_dummy, lb) = start(&["--static", &flag]);
    let index = get(lb.addr(), "/assets/", &[]);
    assert_eq!(index.status, 200);
    assert_eq!(index.text(), "<h1>home</h1>\n");
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let folder = get(lb.addr(), "/assets", &[]);
    assert_eq!(folder.status, 301);
    assert_eq!(folder.header("location"), Some("/assets/"));

    let blob = get(lb.addr(), "/assets/sub/blob.bin", &[]);
    assert_eq!(blob.status, 200);
    assert!(blob.body == common::payload(100_000, 16));
    assert_eq!(blob.header("accept-ranges"), Some("bytes"));
    let etag = blob.header("etag").unwrap().to_owned();
    let modified = blob.header("last-modified").unwrap().to_owned();
    let css = get(lb.addr(), "/assets/sub/style.css", &[]);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));

    let again = get(
        lb.addr(),
        "/assets/sub/blob.bin",
        &[&format!("if-none-match: {etag}")],
    );
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    let since = get(
        lb.addr(),
        "/assets/sub/blob.bin",
        &[&format!("if-modified-since: {modified}")],
    );
    assert_eq!(since.status, 304);
    let other = get(
        lb.addr(),
        "/assets/sub/blob.bin",
        &["if-none-match: \"something-else\""],
    );
    assert_eq!(other.status, 200);

    let part = get(
        lb.addr(),
        "/assets/sub/blob.bin",
        &["range: bytes=1000-1999"],
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 1000-1999/100000"));
    assert!(part.body == common::payload(100_000, 16)[1000..2000]);
    let tail = get(lb.addr(), "/assets/sub/blob.bin", &["range: bytes=-10"]);
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body.len(), 10);
    let stale = get(
        lb.addr(),
        "/assets/sub/blob.bin",
        &["range: bytes=0-9", "if-range: \"an-older-version\""],
    );
    assert_eq!(
        stale.status, 200,
        "If-Range names another version: the whole file"
    );
    let beyond = get(lb.addr(), "/assets/sub/blob.bin", &["range: bytes=100000-"]);
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("content-range"), Some("bytes */100000"));

    let mut s = connect(lb.addr());
    write!(
        s,
        "HEAD /assets/sub/blob.bin HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    let head = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    assert!(head.contains("content-length: 100000"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body");

    let backend = get(lb.addr(), "/elsewhere", &[]);
    assert!(
        backend.text().starts_with("server: server1"),
        "{}",
        backend.text()
    );
}

/// No path leaves the folder: `..` (plain or percent-encoded), a link pointing out, a NUL
/// byte; a relative link that stays inside is fine; an absolute one is refused even when it
/// points inside (the kernel's `RESOLVE_BENEATH` cannot follow it without leaving).
#[test]
fn no_path_escapes_the_static_folder() {
    let dir = site();
    let flag = format!("/assets/={}", dir.display());
    let (_dummy, lb) = start(&["--static", &flag]);
    for path in [
        "/assets/../../../../etc/passwd",
        "/assets/sub/../../../etc/passwd",
        "/assets/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/assets/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "/assets/sub/out",
        "/assets/sub/..%5c..%5cetc%5cpasswd",
    ] {
        let reply = get(lb.addr(), path, &[]);
        assert!(
            reply.status == 404 || reply.status == 400,
            "{path}: {}",
            reply.status
        );
        assert!(!reply.text().contains("root:"), "{path} served /etc/passwd");
    }
    assert_eq!(get(lb.addr(), "/assets/a%00.txt", &[]).status, 400);
    assert_eq!(
        get(lb.addr(), "/assets/inside", &[]).text(),
        "body { color: red }\n"
    );
    assert_eq!(get(lb.addr(), "/assets/absolute", &[]).status, 404);
    assert_eq!(get(lb.addr(), "/assets/missing.txt", &[]).status, 404);
    assert_eq!(
        get(lb.addr(), "/assetsX/index.html", &[]).status,
        200,
        "not the folder's: a backend's"
    );
    assert!(
        get(lb.addr(), "/assetsX/index.html", &[])
            .text()
            .starts_with("server: ")
    );
}

/// A folder in the middle of a path swapped for a link pointing out, right after the path
/// was served (so its resolution is remembered): the next request for it is 404, never the
/// file outside (issue 27, item 5: a remembered check, then an open by path, followed the
/// link). Big and tiny files alike: one is read from disk per request, one kept in memory.
#[test]
fn a_folder_swapped_for_a_link_out_is_not_followed() {
    let base = common::temp_dir("swap");
    let (root, outside) = (base.join("root"), base.join("outside"));
    std::fs::create_dir_all(root.join("mid")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    for (name, len) in [("big", 200_000), ("tiny", 100)] {
        std::fs::write(root.join("mid").join(name), vec![b'i'; len]).unwrap();
        std::fs::write(outside.join(name), vec![b'S'; len]).unwrap();
    }
    let flag = format!("/s/={}", root.display());
    let (_dummy, lb) = start(&["--static", &flag]);
    for name in ["big", "tiny"] {
        let inside = get(lb.addr(), &format!("/s/mid/{name}"), &[]);
        assert_eq!(inside.status, 200);
        assert!(inside.body.iter().all(|&b| b == b'i'));
    }
    std::fs::remove_dir_all(root.join("mid")).unwrap();
    std::os::unix::fs::symlink("../outside", root.join("mid")).unwrap();
    for name in ["big", "tiny", "big", "tiny"] {
        let reply = get(lb.addr(), &format!("/s/mid/{name}"), &[]);
        assert!(
            !reply.body.contains(&b'S'),
            "/s/mid/{name} served the file outside ({})",
            reply.status
        );
    }
    // Never remembered before the swap: refused by the walk itself.
    std::fs::write(outside.join("new"), "SECRET").unwrap();
    assert_eq!(get(lb.addr(), "/s/mid/new", &[]).status, 404);
    let _ = std::fs::remove_dir_all(&base);
}

/// `http-lb --cache` over one slow dummy server (`--delay`), with an admin listener.
fn cached(delay: &str) -> (Proc, Proc) {
    let dummy = Proc::start(
        bin!("dummy-server"),
        &["--listen", "127.0.0.1:0", "--delay", delay],
        1,
    );
    let backend = dummy.addr().to_string();
    let lb = Proc::start(
        bin!("http-lb"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--backend",
            &backend,
            "--cache",
            "200000",
        ],
        2,
    );
    (dummy, lb)
}

/// The backend's hit counter as its body reports it.
fn hits(reply: &Reply) -> u64 {
    reply
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("hits: ")?.parse().ok())
        .unwrap_or(0)
}

/// A second GET within max-age is a HIT and the backend is not asked (its hit counter does
/// not move), HEAD included; once expired, the entry is revalidated (ETag, 304: EXPIRED).
#[test]
fn fresh_answers_come_from_the_cache_and_expired_ones_are_revalidated() {
    let (_dummy, lb) = cached("20");
    let first = get(lb.addr(), "/cacheable/1", &[]);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    for _ in 0..5 {
        let again = get(lb.addr(), "/cacheable/1", &[]);
        assert_eq!(again.header("x-cache"), Some("HIT"));
        assert_eq!(hits(&again), hits(&first), "the backend was asked");
    }
    let mut s = connect(lb.addr());
    write!(
        s,
        "HEAD /cacheable/1 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = String::new();
    s.read_to_string(&mut head).unwrap();
    assert!(head.to_ascii_lowercase().contains("x-cache: hit"), "{head}");
    common::eventually("the entry expires", common::PATIENCE, || {
        get(lb.addr(), "/cacheable/1", &[]).header("x-cache") == Some("EXPIRED")
    });
    let revalidated = get(lb.addr(), "/cacheable/1", &[]);
    assert_eq!(
        revalidated.header("x-cache"),
        Some("HIT"),
        "a 304 refreshed it"
    );
    assert_eq!(
        hits(&revalidated),
        hits(&first),
        "the stored body is served"
    );
    let metrics = common::get(lb.addrs[1], "/metrics").text();
    assert!(
        metrics.contains("httplb_cache_total{result=\"HIT\"}"),
        "{metrics}"
    );
}

/// Never stored: `private`, `no-store`, a `Set-Cookie`, an answer to a request with
/// `Authorization`; each second request reaches the backend.
#[test]
fn private_no_store_cookies_and_authorization_are_never_cached() {
    let (_dummy, lb) = cached("0");
    for (path, extra) in [
        ("/cacheable/60?private", None),
        ("/cacheable/60?no-store", None),
        ("/cacheable/60?cookie", None),
        (
            "/cacheable/60?nopublic",
            Some("authorization: Bearer secret"),
        ),
    ] {
        let headers: Vec<&str> = extra.into_iter().collect();
        let a = get(lb.addr(), path, &headers);
        let b = get(lb.addr(), path, &headers);
        assert_eq!(b.header("x-cache"), Some("MISS"), "{path}");
        assert_eq!(hits(&b), hits(&a) + 1, "{path} was served from the cache");
    }
}

/// `Vary: Accept-Encoding` keeps the gzip and the identity entries apart: each is stored,
/// and each client gets its own.
#[test]
fn vary_keeps_variants_apart() {
    let (_dummy, lb) = cached("0");
    let path = "/cacheable/60?vary=accept-encoding";
    let gzip = get(lb.addr(), path, &["accept-encoding: gzip"]);
    let plain = get(lb.addr(), path, &[]);
    assert_eq!(plain.header("x-cache"), Some("MISS"), "another variant");
    let gzip_again = get(lb.addr(), path, &["accept-encoding: gzip"]);
    let plain_again = get(lb.addr(), path, &[]);
    assert_eq!(gzip_again.header("x-cache"), Some("HIT"));
    assert_eq!(plain_again.header("x-cache"), Some("HIT"));
    assert!(gzip_again.text().contains("\naccept-encoding: gzip"));
    assert!(!plain_again.text().contains("\naccept-encoding:"));
    assert_eq!(hits(&gzip_again), hits(&gzip));
    assert_eq!(hits(&plain_again), hits(&plain));
}

/// 50 concurrent misses for one key reach the backend once: the others wait for it.
#[test]
fn concurrent_misses_collapse_into_one_backend_request() {
    let (_dummy, lb) = cached("300");
    let addr = lb.addr();
    let threads: Vec<_> = (0..50)
        .map(|_| std::thread::spawn(move || get(addr, "/cacheable/60?collapse", &[])))
        .collect();
    let replies: Vec<Reply> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(replies.iter().all(|r| r.status == 200));
    let backend_hits: std::collections::HashSet<u64> = replies.iter().map(hits).collect();
    assert_eq!(backend_hits.len(), 1, "{backend_hits:?}");
    let misses = replies
        .iter()
        .filter(|r| r.header("x-cache") == Some("MISS"))
        .count();
    assert_eq!(misses, 1);
}

/// While the backend is down, an expired entry is served (STALE) within the response's
/// `stale-if-error`.
#[test]
fn a_stale_entry_is_served_while_the_backend_is_down() {
    let (dummy, lb) = cached("0");
    let path = "/cacheable/1?sie=60";
    let first = get(lb.addr(), path, &[]);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    drop(dummy);
    common::eventually("served stale", common::PATIENCE, || {
        let r = get(lb.addr(), path, &[]);
        r.status == 200 && r.header("x-cache") == Some("STALE")
    });
    let stale = get(lb.addr(), path, &[]);
    assert_eq!(hits(&stale), hits(&first));
    // Without stale-if-error, an expired entry is not served on an error.
    let no_grace = get(lb.addr(), "/cacheable/60?other", &[]);
    assert!(no_grace.status >= 500);
}

/// The cache never holds more than its bound: old entries are evicted, least recently used
/// first.
#[test]
fn the_cache_stays_within_its_byte_bound() {
    let (_dummy, lb) = cached("0");
    for i in 0..400 {
        let r = get(lb.addr(), &format!("/cacheable/60?k={i}"), &[]);
        assert_eq!(r.status, 200);
    }
    let metrics = common::get(lb.addrs[1], "/metrics").text();
    let bytes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("httplb_cache_bytes ")?.parse().ok())
        .unwrap();
    assert!(bytes <= 200_000, "{bytes} bytes held");
    assert!(bytes > 100_000, "the cache is in use: {bytes}");
    assert_eq!(
        get(lb.addr(), "/cacheable/60?k=0", &[]).header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        get(lb.addr(), "/cacheable/60?k=399", &[]).header("x-cache"),
        Some("HIT")
    );
}

/// Routes, first match first: a path prefix to a pool of its own (and only there), a redirect
/// keeping the rest of the path and the query, a host-only route; unmatched requests go to
/// every backend. A route that makes no sense is refused with its line and column.
#[test]
fn routes_send_each_prefix_where_it_belongs() {
    let api = Proc::start(
        bin!("dummy-server"),
        &["--listen", "127.0.0.1:0", "--name", "api"],
        1,
    );
    let web = Proc::start(
        bin!("dummy-server"),
        &["--listen", "127.0.0.1:0", "--name", "web"],
        1,
    );
    let dir = site();
    let config = common::temp_dir("routes").join("routes.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n\
             [[http.route]]\nprefix = \"/api/\"\nbackends = [\"api1\"]\n\
             [[http.route]]\nprefix = \"/old/\"\nredirect = \"https://new.example\"\nstatus = 301\n\
             [[http.route]]\nprefix = \"/files/\"\nhost = \"files.example\"\nstatic = \"{}\"\n\
             [[backend]]\naddress = \"{}\"\nname = \"api1\"\n\
             [[backend]]\naddress = \"{}\"\nname = \"web1\"\n",
            dir.display(),
            api.addr(),
            web.addr()
        ),
    )
    .unwrap();
    let lb = Proc::start(
        bin!("http-lb"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--admin",
            "127.0.0.1:0",
        ],
        2,
    );
    for _ in 0..6 {
        assert_eq!(get(lb.addr(), "/api/users", &[]).served_by(), "api");
    }
    let others: std::collections::HashSet<String> = (0..6)
        .map(|_| get(lb.addr(), "/", &[]).served_by())
        .collect();
    assert_eq!(others.len(), 2, "{others:?}");
    let moved = get(lb.addr(), "/old/a/b?x=1", &[]);
    assert_eq!(moved.status, 301);
    assert_eq!(
        moved.header("location"),
        Some("https://new.example/a/b?x=1")
    );
    let mut s = connect(lb.addr());
    write!(
        s,
        "GET /files/sub/style.css HTTP/1.1\r\nhost: files.example:8080\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    assert!(String::from_utf8_lossy(&bytes).ends_with("body { color: red }\n"));
    let elsewhere = get(lb.addr(), "/files/sub/style.css", &[]);
    assert!(
        elsewhere.text().starts_with("server: "),
        "another host goes to the backends"
    );
    // Each route's hits, for the status page; a request no route takes counts in none.
    let metrics = common::get(lb.addrs[1], "/metrics").text();
    for (route, hits) in [
        ("route=\"/api/\",kind=\"pool\"", 6),
        ("route=\"/old/\",kind=\"redirect\"", 1),
        ("route=\"files.example/files/\",kind=\"static\"", 1),
    ] {
        let sample = format!("httplb_route_requests_total{{{route}}}");
        assert_eq!(common::metric(&metrics, &sample), hits, "{sample}");
    }

    let bad = common::temp_dir("routes").join("bad.toml");
    std::fs::write(
        &bad,
        "[[http.route]]\nprefix = \"/x/\"\nstatic = \"a\"\nredirect = \"https://b\"\n",
    )
    .unwrap();
    common::assert_one_line_error(
        bin!("http-lb"),
        &["--config", bad.to_str().unwrap()],
        &["bad.toml:", "exactly one of"],
    );
}

/// With `--cache` and `--compress`, an answer stored once is compressed for each client that
/// accepts it, and sent as stored to one that does not.
#[test]
fn cached_answers_are_compressed_per_client() {
    let dummy = Proc::start(bin!("dummy-server"), &["--listen", "127.0.0.1:0"], 1);
    let backend = dummy.addr().to_string();
    let lb = Proc::start(
        bin!("http-lb"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            &backend,
            "--cache",
            "1000000",
            "--compress",
        ],
        1,
    );
    // A long path makes the answer (which echoes it) long enough to compress.
    let path = format!("/cacheable/60?{}", "x".repeat(400));
    let first = get(lb.addr(), &path, &[]);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let gzip = get(lb.addr(), &path, &["accept-encoding: gzip"]);
    assert_eq!(gzip.header("x-cache"), Some("HIT"));
    assert_eq!(gzip.header("content-encoding"), Some("gzip"));
    assert!(decode("gzip", &gzip.body) == first.body);
    let plain = get(lb.addr(), &path, &[]);
    assert_eq!(plain.header("x-cache"), Some("HIT"));
    assert_eq!(plain.header("content-encoding"), None);
    assert!(plain.body == first.body);
}

/// Issue 27, items 4, 6 and 10: a folder's redirect is never protocol-relative (`//host/`,
/// which a browser reads as another site); names starting with a dot (`.env`, `.git/config`)
/// are refused unless `--static-dotfiles` allows them; an `If-Modified-Since` later than now
/// is invalid and ignored (RFC 9110 §13.1.3); and `--hide-header` refuses fields that frame the
/// answer, which a kept-alive client could not read without.
#[test]
fn static_folders_give_no_open_redirect_and_no_dotfile() {
    let dir = site();
    std::fs::create_dir_all(dir.join("evil.example")).unwrap();
    std::fs::create_dir_all(dir.join(".git")).unwrap();
    std::fs::write(dir.join(".env"), "SECRET=1\n").unwrap();
    std::fs::write(dir.join(".git/config"), "[core]\n").unwrap();
    let flag = format!("/={}", dir.display());
    let (_dummy, lb) = start(&["--static", &flag]);
    for path in ["//evil.example", "/\\evil.example", "///evil.example"] {
        let r = get(lb.addr(), path, &[]);
        let location = r.header("location").unwrap_or("");
        assert!(
            !location.starts_with("//") && !location.starts_with("/\\"),
            "{path}: {} {location}",
            r.status
        );
    }
    for path in ["/.env", "/.git/config", "/%2egit/config"] {
        let r = get(lb.addr(), path, &[]);
        assert_eq!(r.status, 404, "{path}");
        assert!(!r.text().contains("SECRET") && !r.text().contains("[core]"));
    }
    let future = "If-Modified-Since: Sun, 06 Nov 2994 08:49:37 GMT";
    let r = get(lb.addr(), "/index.html", &[future]);
    assert_eq!((r.status, r.text().as_str()), (200, "<h1>home</h1>\n"));
    drop(lb);
    let (_dummy, lb) = start(&["--static", &flag, "--static-dotfiles", "--cache", "100000"]);
    assert_eq!(get(lb.addr(), "/.env", &[]).text(), "SECRET=1\n");
    // Issue 28, item 11: a file answers itself; with a cache on, it says nothing of one.
    assert_eq!(get(lb.addr(), "/index.html", &[]).header("x-cache"), None);
    drop(lb);
    for field in ["content-length", "Transfer-Encoding", "connection"] {
        common::assert_one_line_error(
            bin!("http-lb"),
            &["--listen", "127.0.0.1:0", "--hide-header", field],
            &["cannot be hidden"],
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
