//! Chapter 12's experiment: how cheap could `http-lb`'s keep-alive path be without hyper?
//!
//! `http-lb` spends about twice nginx's user-space CPU per kept-alive request (hyper, tokio's
//! task hops between the client's connection and the backend's, header maps; the README's
//! chapter 12 has the profile), while its kernel time per request is the same as nginx's. The
//! obvious cure is a hand-written HTTP/1.1 path: `httparse` for the heads, one task owning the
//! client connection *and* its backend connection, heads rewritten as bytes. Before building
//! that into the balancer (every feature of chapters 12 and 16 would have to be done twice),
//! this program measures its *upper bound*: that path and nothing else.
//!
//! What it does per request, the least `http-lb` does: parse the head; drop the hop-by-hop
//! fields; append `X-Forwarded-For` and set `X-Forwarded-Proto`; send it on a kept-alive
//! backend connection (round robin when a client connection starts); parse the answer's head,
//! drop its hop-by-hop fields, add the affinity cookie (`Set-Cookie` from `lb::http::affinity`,
//! as `http-lb` sends it to every new user) and `Cache-Control: no-cache="set-cookie"`; pass
//! the body on. What it leaves out: chunked bodies (refused with 501), upgrades, limits,
//! timeouts, health checks, metrics, logs. So whatever it saves against `http-lb` is the most
//! such a rewrite could save; the result is in the README's chapter 12.
//!
//! Try it (two terminals):
//!
//! ```text
//! cargo run --release --bin dummy-server -- --listen 127.0.0.1:5001
//! cargo run --release --example h1-relay -- --listen 127.0.0.1:8080 --backend 127.0.0.1:5001
//! curl -i http://127.0.0.1:8080/
//! ```
//!
//! and measure it where `http-lb` would be: `python3 benches/compare/http.py --mode pinned
//! --workloads keepalive --http-lb target/release/examples/h1-relay`. It accepts the flags
//! that script passes (`--health-interval` and `--workers` are ignored: one thread, always).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Parser as _;
use lb::http::affinity::{Affinity, CookieSettings};
use lb::http::forward;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[derive(clap::Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// HOST:PORT, repeatable; round robin per client connection.
    #[arg(long, required = true)]
    backend: Vec<SocketAddr>,
    #[arg(long, hide = true)]
    health_interval: Option<String>,
    #[arg(long, hide = true)]
    workers: Option<u16>,
}

/// As `http-lb`'s default bound on a request or response head.
const MAX_HEAD: usize = 64 * 1024;
const MAX_FIELDS: usize = 100;

struct Shared {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
    affinity: Affinity,
}

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> io::Result<()> {
    let listener = lb::net::listen(args.listen).map_err(io::Error::other)?;
    let names: Vec<String> = args.backend.iter().map(|a| a.to_string()).collect();
    let secret: [u8; 32] = rand::random();
    let shared = Arc::new(Shared {
        affinity: Affinity::new(&secret, CookieSettings::default(), &names),
        backends: args.backend,
        next: AtomicUsize::new(0),
    });
    lb::net::announce(&listener)?;
    loop {
        let (client, peer) = lb::net::accept(&listener).await;
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Err(e) = serve(client, peer, &shared).await {
                eprintln!("{peer}: {e}");
            }
        });
    }
}

/// Bytes read from one side, parsed from the front.
struct Side {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Side {
    fn new(stream: TcpStream) -> Side {
        Side {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// Reads more; `Ok(false)` at the end of the stream.
    async fn fill(&mut self) -> io::Result<bool> {
        if self.buf.len() >= MAX_HEAD {
            return Err(io::Error::other("head too large"));
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// Moves the body bytes already read behind a head of `head` bytes (of a body of `len`)
    /// to `out`, behind the rewritten head; returns how many are still to come. What follows
    /// the body (a pipelined request) stays in the buffer.
    fn pass_body(&mut self, head: usize, len: usize, out: &mut Vec<u8>) -> usize {
        let here = len.min(self.buf.len() - head);
        out.extend_from_slice(&self.buf[head..head + here]);
        self.buf.drain(..head + here);
        len - here
    }
}

async fn serve(client: TcpStream, peer: SocketAddr, shared: &Shared) -> io::Result<()> {
    let mut client = Side::new(client);
    let mut backend: Option<(Side, usize)> = None;
    let mut out = Vec::with_capacity(16 * 1024);
    let forwarded_for = peer.ip().to_string();
    loop {
        // The request head.
        let (head, body, method_head) = loop {
            let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
            let mut req = httparse::Request::new(&mut fields);
            match req.parse(&client.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    out.clear();
                    let body = request_head(&req, &forwarded_for, &mut out)?;
                    break (n, body, req.method == Some("HEAD"));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    let _ = client
                        .stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return Err(io::Error::other(e));
                }
            }
            if !client.fill().await? {
                return Ok(());
            }
        };
        let Some(body) = body else {
            let _ = client
                .stream
                .write_all(b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            return Ok(());
        };
        let left = client.pass_body(head, body, &mut out);
        // The backend connection, dialled once per client connection and kept.
        if backend.is_none() {
            let i = shared.next.fetch_add(1, Ordering::Relaxed) % shared.backends.len();
            let stream = TcpStream::connect(shared.backends[i]).await?;
            stream.set_nodelay(true)?;
            backend = Some((Side::new(stream), i));
        }
        let Some((up, i)) = backend.as_mut() else {
            unreachable!()
        };
        up.stream.write_all(&out).await?;
        copy_rest(&mut client, &mut up.stream, left).await?;

        // The response head.
        let (head, body) = loop {
            let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
            let mut res = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(n) = res.parse(&up.buf).map_err(io::Error::other)? {
                out.clear();
                let cookie = shared.affinity.set_cookie(*i, false).map(|v| v.as_bytes());
                let body = response_head(&res, cookie, &mut out)?;
                break (n, if method_head { Some(0) } else { body });
            }
            if !up.fill().await? {
                return Err(io::Error::other("backend closed before answering"));
            }
        };
        let Some(body) = body else {
            return Err(io::Error::other(
                "chunked answers are left out of this experiment",
            ));
        };
        let left = up.pass_body(head, body, &mut out);
        client.stream.write_all(&out).await?;
        copy_rest(up, &mut client.stream, left).await?;
    }
}

/// Copies the `left` body bytes still to come from `from` to `to`.
async fn copy_rest(from: &mut Side, to: &mut TcpStream, mut left: usize) -> io::Result<()> {
    while left > 0 {
        from.buf.clear();
        if !from.fill().await? {
            return Err(io::Error::other("body cut short"));
        }
        let n = from.buf.len().min(left);
        to.write_all(&from.buf[..n]).await?;
        from.buf.drain(..n);
        left -= n;
    }
    Ok(())
}

/// The body's length from `Content-Length`, else `otherwise`; `None` for a chunked body.
fn body_length(fields: &[httparse::Header], otherwise: Option<usize>) -> io::Result<Option<usize>> {
    let mut length = otherwise;
    for f in fields {
        if f.name.eq_ignore_ascii_case("transfer-encoding") {
            return Ok(None);
        }
        if f.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(f.value).map_err(io::Error::other)?;
            length = Some(text.trim().parse().map_err(io::Error::other)?);
        }
    }
    Ok(length)
}

fn request_head(
    req: &httparse::Request,
    client: &str,
    out: &mut Vec<u8>,
) -> io::Result<Option<usize>> {
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Err(io::Error::other("incomplete request line"));
    };
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for f in req.headers.iter() {
        // Trusted from no one here: the chain starts at the address we saw.
        if forward::is_hop_by_hop(f.name, &[])
            || f.name.eq_ignore_ascii_case("x-forwarded-for")
            || f.name.eq_ignore_ascii_case("x-forwarded-proto")
        {
            continue;
        }
        field(out, f.name.as_bytes(), f.value);
    }
    field(out, b"x-forwarded-for", client.as_bytes());
    field(out, b"x-forwarded-proto", b"http");
    out.extend_from_slice(b"\r\n");
    // A request without a length has no body (RFC 9112 §6.3).
    body_length(req.headers, Some(0))
}

fn response_head(
    res: &httparse::Response,
    cookie: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> io::Result<Option<usize>> {
    let code = res.code.unwrap_or(502);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(res.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for f in res.headers.iter() {
        if !forward::is_hop_by_hop(f.name, &[]) {
            field(out, f.name.as_bytes(), f.value);
        }
    }
    if let Some(cookie) = cookie {
        field(out, b"set-cookie", cookie);
        field(out, b"cache-control", b"no-cache=\"set-cookie\"");
    }
    out.extend_from_slice(b"\r\n");
    // 1xx, 204 and 304 answers have no body.
    if code < 200 || code == 204 || code == 304 {
        return Ok(Some(0));
    }
    // An answer without a length runs to the close: left out here, like chunked ones.
    body_length(res.headers, None)
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
