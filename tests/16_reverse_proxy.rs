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
    let lb = Proc::start(bin!("http-lb"), &all, 1);
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
    std::os::unix::fs::symlink(dir.join("sub/style.css"), dir.join("inside")).unwrap();
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
/// byte; a link that stays inside is fine.
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
    assert_eq!(get(lb.addr(), "/assets/missing.txt", &[]).status, 404);
}
