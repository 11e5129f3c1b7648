//! The dummy backend of the tutorial: a small HTTP/1.1 server that says who it is.
//!
//! The Go tutorial's dummy server prints which server it is, how many times it was called and
//! the headers it received. This one does the same on every path, plus two endpoints for
//! checking a proxy: `GET /bytes/N` answers N bytes of a fixed pseudo-random pattern (so a
//! test can check every byte that came through), `/echo` streams the request body back, and
//! `/sink` reads it to the end and answers how many bytes arrived. Chapter 16 adds `GET
//! /text/N` (N bytes of text, to compress), `/powered`, which answers with the `Server` and
//! `X-Powered-By` fields real backends give away, and `GET /cacheable/SECS` (an answer a cache
//! may keep, with an ETag; query flags `private`, `no-store`, `nopublic`, `cookie`, `vary=FIELD`,
//! `sie=SECS`).
//!
//! Chapter 8 and 9 add what a learner needs to watch a balancer react to a *slow* backend:
//! a per-server delay before every answer ([`DummyServer::with_delay`], `--delay MS`) and
//! `GET /delay/MS` for one slow request; and `GET /health`, answered at once without counting
//! as a hit, for active health checks.
//!
//! Chapter 17 adds HTTP/2: a client (or a balancer's `h2c://` backend) that starts with
//! HTTP/2's preface is served in HTTP/2, and a gRPC call (`content-type: application/grpc`, any
//! method) is echoed message by message as it arrives, ending with `grpc-status: 0` in the
//! trailers: a gRPC server for testing a proxy, with no protobuf compiler.
//!
//! It is built on hyper rather than by hand: keep-alive, pipelining, chunked bodies and
//! slow-client timeouts are exactly what a hand-written test server gets subtly wrong, and a
//! dummy server that is itself buggy makes every proxy test lie.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::conn::Conn;
use crate::net;
use crate::tls::{self, DEFAULT_HANDSHAKE_TIMEOUT};

/// The header every response carries, naming the server that produced it.
pub const SERVED_BY: &str = "x-served-by";

/// One dummy server: a name, a hit counter, and optionally TLS.
pub struct DummyServer {
    name: String,
    header: HeaderValue,
    hits: AtomicU64,
    tls: Option<TlsAcceptor>,
    delay: Duration,
}

/// The longest `GET /text/N`: the text is built in memory.
pub const MAX_TEXT: usize = 16 * 1024 * 1024;

/// What `GET /text/N` answers: `N` bytes of numbered lines, for compression.
pub fn text_bytes(len: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        let _ = writeln!(out, "line {i}: the quick brown fox jumps over the lazy dog");
        i += 1;
    }
    out.truncate(len);
    out
}

/// The longest `GET /delay/MS` honoured: enough to outlast any timeout under test, short
/// enough that a typo cannot park a connection for a day.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// How long a stopping server waits for its open connections to finish.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);

impl DummyServer {
    /// Fails if `name` cannot be sent as a header value (control characters, non-ASCII).
    pub fn new(name: &str) -> anyhow::Result<DummyServer> {
        let header = HeaderValue::from_str(name)
            .map_err(|_| anyhow::anyhow!("server name `{name}` cannot be sent in a header"))?;
        Ok(DummyServer {
            name: name.to_owned(),
            header,
            hits: AtomicU64::new(0),
            tls: None,
            delay: Duration::ZERO,
        })
    }

    /// Wait `delay` before answering each request (except `/health`): a slow backend.
    pub fn with_delay(mut self, delay: Duration) -> DummyServer {
        self.delay = delay;
        self
    }

    /// Serve HTTPS with `config` instead of plain HTTP.
    pub fn with_tls(mut self, config: Arc<ServerConfig>) -> DummyServer {
        // Chapter 17: `h2` for a client that offers it (an `h2://` backend of http-lb's), else
        // HTTP/1.1, as before, for every client that offers nothing.
        let mut config = Arc::unwrap_or_clone(config);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        self.tls = Some(TlsAcceptor::from(Arc::new(config)));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Serves `listener` until `shutdown` resolves, each connection in its own task; then
    /// drains: no new connection, each open one finishes the request it is on (a long download
    /// included) and closes, idle ones close at once, for at most [`DRAIN_LIMIT`]. A farm that
    /// removes an application server (chapter 13) cuts no request.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let this = Arc::new(self);
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                // Reap finished connections, so the set holds only live ones.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                (stream, peer) = net::accept(&listener) => {
                    let this = Arc::clone(&this);
                    let stopping = stopping.clone();
                    connections.spawn(async move {
                        let io = match &this.tls {
                            None => Conn::Plain(stream),
                            Some(acceptor) => match tls::accept(acceptor, stream, DEFAULT_HANDSHAKE_TIMEOUT).await {
                                Ok(tls) => Conn::TlsServer(Box::new(tls)),
                                Err(e) => {
                                    tracing::warn!(server = %this.name, client = %peer, "TLS handshake failed: {e}");
                                    return;
                                }
                            },
                        };
                        this.serve_connection(io, peer, stopping).await;
                    });
                }
            }
        }
        drop(listener);
        if connections.is_empty() {
            return;
        }
        let _ = stop.send(true);
        tracing::info!(server = %this.name, open = connections.len(), "draining");
        let drained = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN_LIMIT, drained).await.is_err() {
            tracing::warn!(server = %this.name, open = connections.len(), "drain limit reached: closing");
        }
    }

    async fn serve_connection(
        self: Arc<Self>,
        mut io: Conn,
        peer: SocketAddr,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) {
        let this = Arc::clone(&self);
        let service = hyper::service::service_fn(move |req| {
            let this = Arc::clone(&this);
            // Boxed: `poll_without_shutdown` below needs an `Unpin` connection.
            Box::pin(
                async move { Ok::<_, std::convert::Infallible>(this.respond(req, peer).await) },
            )
        });
        // Chapter 17: HTTP/2 agreed in ALPN, or by prior knowledge, told from HTTP/1 by its
        // first bytes.
        let mut first = Vec::new();
        let h2 = match &io {
            Conn::TlsServer(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
            _ => {
                crate::http::h2::starts_with_preface(&mut io, &mut first, Duration::from_secs(30))
                    .await
            }
        };
        if h2 {
            let io = Prefixed { first, at: 0, io };
            let conn =
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let stop = async {
                let _ = stopping.wait_for(|&stop| stop).await;
            };
            tokio::select! {
                result = conn.as_mut() => if let Err(e) = result {
                    tracing::debug!(server = %self.name, client = %peer, "HTTP/2 connection ended: {e}");
                },
                () = stop => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN_LIMIT, conn).await;
                }
            }
            return;
        }
        let io = Prefixed { first, at: 0, io };
        let mut conn = hyper::server::conn::http1::Builder::new()
            // A client that opens a connection and sends half a request head is dropped
            // after this long instead of holding the connection forever.
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            // A client that half-closes after its request (as proxies' tests do) still gets the
            // whole answer; hyper's default would close as soon as it reads the EOF.
            .half_close(true)
            .serve_connection(TokioIo::new(io), service);
        // We close the connection ourselves, lingering (see `net::lingering_close`): hence
        // `poll_without_shutdown`, which leaves the socket to us when HTTP is done with it.
        let mut draining = false;
        let result = loop {
            tokio::select! {
                result = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break result,
                // Finish the request in flight, then close: hyper's graceful shutdown.
                changed = stopping.wait_for(|&stop| stop), if !draining => {
                    draining = true;
                    if changed.is_ok() {
                        Pin::new(&mut conn).graceful_shutdown();
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                let io = conn.into_parts().io.into_inner().io;
                net::lingering_close(io, net::LINGER).await
            }
            Err(e) => {
                tracing::debug!(server = %self.name, client = %peer, "connection ended: {e}")
            }
        }
    }

    async fn respond(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<DummyBody> {
        if crate::http::grpc::is_grpc(req.headers()) {
            return self.grpc_echo(req, peer);
        }
        let path = req.uri().path();
        let powered = path == "/powered";
        if path == "/health" {
            // Health checks every few seconds would drown the log and the hit count.
            tracing::debug!(server = %self.name, client = %peer, "GET /health");
            return self.response(StatusCode::OK, DummyBody::text("ok\n".to_owned()));
        }
        let hits = self.hits.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(server = %self.name, client = %peer, hits, "{} {}", req.method(), req.uri());
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let (status, body) = if let Some(ms) = path.strip_prefix("/delay/") {
            match ms.parse::<u64>().map(Duration::from_millis) {
                Ok(delay) if delay <= MAX_DELAY => {
                    tokio::time::sleep(delay).await;
                    (StatusCode::OK, DummyBody::text(self.describe(&req, hits)))
                }
                _ => (
                    StatusCode::BAD_REQUEST,
                    DummyBody::text(format!(
                        "`{ms}` is not a delay in milliseconds up to {}\n",
                        MAX_DELAY.as_millis()
                    )),
                ),
            }
        } else if let Some(n) = path.strip_prefix("/bytes/") {
            match n.parse::<u64>() {
                Ok(len) => (StatusCode::OK, DummyBody::Pattern { sent: 0, len }),
                Err(_) => (
                    StatusCode::BAD_REQUEST,
                    DummyBody::text(format!("`{n}` is not a byte count\n")),
                ),
            }
        } else if let Some(n) = path.strip_prefix("/cacheable/") {
            // Chapter 16: an answer a cache may keep for N seconds, with an ETag ("v1") that a
            // conditional request gets a 304 for. Query flags: private, no-store, nopublic,
            // cookie, vary=FIELD, sie=SECS (stale-if-error), size=N (a body of N pattern
            // bytes, up to the text limit, instead of the description).
            match n.parse::<u64>() {
                Ok(secs) => {
                    let query = req.uri().query().unwrap_or("").to_owned();
                    let flag = |f: &str| query.split('&').any(|q| q == f);
                    let value = |k: &str| {
                        query
                            .split('&')
                            .find_map(|q| q.strip_prefix(k)?.strip_prefix('='))
                            .map(str::to_owned)
                    };
                    let mut cc = match (flag("no-store"), flag("private"), flag("nopublic")) {
                        (true, ..) => "no-store".to_owned(),
                        (false, true, _) => format!("private, max-age={secs}"),
                        (false, false, true) => format!("max-age={secs}"),
                        _ => format!("public, max-age={secs}"),
                    };
                    if let Some(sie) = value("sie") {
                        cc += &format!(", stale-if-error={sie}");
                    }
                    let not_modified = req
                        .headers()
                        .get("if-none-match")
                        .is_some_and(|v| v.as_bytes() == b"\"v1\"");
                    let (status, body) = match not_modified {
                        true => (StatusCode::NOT_MODIFIED, DummyBody::text(String::new())),
                        false => match value("size").and_then(|n| n.parse::<usize>().ok()) {
                            Some(len) if len <= MAX_TEXT => (
                                StatusCode::OK,
                                DummyBody::Pattern {
                                    sent: 0,
                                    len: len as u64,
                                },
                            ),
                            _ => (StatusCode::OK, DummyBody::text(self.describe(&req, hits))),
                        },
                    };
                    let mut response = self.response(status, body);
                    let headers = response.headers_mut();
                    headers.insert(
                        "cache-control",
                        HeaderValue::from_str(&cc).unwrap_or(HeaderValue::from_static("no-store")),
                    );
                    headers.insert("etag", HeaderValue::from_static("\"v1\""));
                    if flag("cookie") {
                        headers.insert("set-cookie", HeaderValue::from_static("session=abc"));
                    }
                    if let Some(vary) = value("vary").and_then(|v| HeaderValue::from_str(&v).ok()) {
                        headers.insert("vary", vary);
                    }
                    return response;
                }
                Err(_) => (
                    StatusCode::BAD_REQUEST,
                    DummyBody::text(format!("`{n}` is not a number of seconds\n")),
                ),
            }
        } else if let Some(n) = path.strip_prefix("/text/") {
            // Text that compresses (chapter 16): N bytes of numbered lines.
            match n.parse::<usize>() {
                Ok(len) if len <= MAX_TEXT => (StatusCode::OK, DummyBody::text(text_bytes(len))),
                _ => (
                    StatusCode::BAD_REQUEST,
                    DummyBody::text(format!("`{n}` is not a length up to {MAX_TEXT}\n")),
                ),
            }
        } else if path == "/sink" {
            // The far end of an upload: the body is read to the end and thrown away, and the
            // answer says how much arrived (for measuring a proxy on uploads alone).
            let mut body = req.into_body();
            let mut received = 0u64;
            let mut failed = None;
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                match frame {
                    Ok(frame) => received += frame.data_ref().map_or(0, |d| d.len() as u64),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => (
                    StatusCode::OK,
                    DummyBody::text(format!("received: {received}\n")),
                ),
                Some(e) => (
                    StatusCode::BAD_REQUEST,
                    DummyBody::text(format!("cannot read the request body: {e}\n")),
                ),
            }
        } else if path == "/echo" {
            // Wait for the first piece of the body before answering: reading it is what makes
            // hyper send `100 Continue` to a client that asked for it (curl does, for bodies
            // over 1 MiB), instead of the client waiting a second for permission to send.
            let mut body = req.into_body();
            let first = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
            match first {
                Some(Err(e)) => (
                    StatusCode::BAD_REQUEST,
                    DummyBody::text(format!("cannot read the request body: {e}\n")),
                ),
                first => (
                    StatusCode::OK,
                    DummyBody::Echo {
                        first: first.and_then(Result::ok),
                        rest: body,
                    },
                ),
            }
        } else {
            (StatusCode::OK, DummyBody::text(self.describe(&req, hits)))
        };
        let mut response = self.response(status, body);
        if powered {
            // What many real backends say about themselves (chapter 16 hides it).
            let headers = response.headers_mut();
            headers.insert(
                "server",
                HeaderValue::from_static("dummy-server/0.1 (tutorial)"),
            );
            headers.insert("x-powered-by", HeaderValue::from_static("lb::dummy"));
        }
        response
    }

    /// Chapter 17: a gRPC call, any method, echoed message by message as it arrives (each
    /// request frame's bytes back as they come), then `grpc-status: 0` in the trailers. Over
    /// HTTP/1 there are no trailers to end it with: the call is refused as gRPC does,
    /// `UNIMPLEMENTED` in the head.
    fn grpc_echo(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<DummyBody> {
        let hits = self.hits.fetch_add(1, Ordering::Relaxed) + 1;
        if req.uri().path() != "/grpc.health.v1.Health/Check" {
            tracing::info!(server = %self.name, client = %peer, hits, "gRPC {}", req.uri().path());
        }
        let http2 = req.version() == hyper::Version::HTTP_2;
        // gRPC's health protocol (`check=grpc`): always SERVING.
        let health = req.uri().path() == "/grpc.health.v1.Health/Check";
        let mut response = match (http2, health) {
            (true, true) => self.response(StatusCode::OK, DummyBody::Serving(2)),
            (true, false) => self.response(StatusCode::OK, DummyBody::Grpc(Some(req.into_body()))),
            (false, _) => self.response(StatusCode::OK, DummyBody::Text(None)),
        };
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        if !http2 {
            headers.insert("grpc-status", HeaderValue::from_static("12"));
            headers.insert(
                "grpc-message",
                HeaderValue::from_static("gRPC needs HTTP/2"),
            );
        }
        response
    }

    fn response(&self, status: StatusCode, body: DummyBody) -> Response<DummyBody> {
        let content_type = match body {
            DummyBody::Text(_) => "text/plain; charset=utf-8",
            _ => "application/octet-stream",
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(SERVED_BY, self.header.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }

    /// `server: NAME`, `hits: N`, then the request line and headers as received.
    fn describe(&self, req: &Request<Incoming>, hits: u64) -> String {
        use std::fmt::Write as _;
        let mut out = format!(
            "server: {}\nhits: {hits}\n{} {} {:?}\n",
            self.name,
            req.method(),
            req.uri(),
            req.version()
        );
        for (name, value) in req.headers() {
            let _ = writeln!(out, "{name}: {}", String::from_utf8_lossy(value.as_bytes()));
        }
        out
    }
}

/// Starts `server` on an ephemeral port of 127.0.0.1 in a background task, for as long as the
/// runtime lives; returns the address. Tests, benchmarks and the built-in backends of
/// `cargo run` use this.
pub fn spawn_on_loopback(server: DummyServer) -> io::Result<SocketAddr> {
    let listener = net::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = listener.local_addr()?;
    tokio::spawn(server.run(listener, std::future::pending()));
    Ok(addr)
}

/// Starts one in-process dummy server per entry (name, and a TLS config for HTTPS) on loopback
/// ports the kernel picks, and returns them as backends: what `cargo run` balances over when no
/// backend was configured.
pub fn start_builtin(
    servers: &[(&str, Option<Arc<ServerConfig>>)],
) -> anyhow::Result<Vec<crate::backend::Backend>> {
    let mut backends = Vec::new();
    for (name, tls) in servers {
        let mut server = DummyServer::new(name)?;
        if let Some(config) = tls {
            server = server.with_tls(config.clone());
        }
        let addr = spawn_on_loopback(server)
            .map_err(|e| anyhow::anyhow!("cannot start built-in backend {name}: {e}"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!("started built-in dummy backend {name} at {scheme}://{addr}");
        backends.push(crate::backend::Backend::from_addr(addr, tls.is_some()));
    }
    Ok(backends)
}

/// The period of the `/bytes/N` pattern. Not a power of two, so that a proxy that dropped or
/// repeated a power-of-two-sized buffer cannot line up with it by accident.
pub const PATTERN_PERIOD: usize = 65_521;

fn pattern() -> &'static Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN.get_or_init(|| {
        // xorshift32: cheap, deterministic, and no byte value repeats in any obvious rhythm.
        let mut x: u32 = 0x9E37_79B9;
        let bytes: Vec<u8> = (0..PATTERN_PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        Bytes::from(bytes)
    })
}

/// The bytes `GET /bytes/N` sends at positions `offset..offset + len`, to compare against.
pub fn pattern_bytes(offset: u64, len: usize) -> Vec<u8> {
    let p = pattern();
    (0..len as u64)
        .map(|i| p[((offset + i) % PATTERN_PERIOD as u64) as usize])
        .collect()
}

/// The three kinds of response body, streamed without holding more than one chunk.
pub enum DummyBody {
    Text(Option<Bytes>),
    Pattern {
        sent: u64,
        len: u64,
    },
    Echo {
        first: Option<Frame<Bytes>>,
        rest: Incoming,
    },
    /// A gRPC call's request, echoed; `None` once the trailers are sent.
    Grpc(Option<Incoming>),
    /// gRPC's health answer, `SERVING`: what is left to send (2: the message and the
    /// trailers; 1: the trailers; 0: nothing).
    Serving(u8),
}

impl DummyBody {
    pub(crate) fn text(s: String) -> DummyBody {
        DummyBody::Text(Some(Bytes::from(s)))
    }
}

impl Body for DummyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            DummyBody::Text(text) => Poll::Ready(text.take().map(|b| Ok(Frame::data(b)))),
            DummyBody::Pattern { sent, len } => {
                if *sent == *len {
                    return Poll::Ready(None);
                }
                // Slices of one shared buffer: no copy, no allocation per chunk.
                let start = (*sent % PATTERN_PERIOD as u64) as usize;
                let n = ((*len - *sent) as usize).min(PATTERN_PERIOD - start);
                *sent += n as u64;
                Poll::Ready(Some(Ok(Frame::data(pattern().slice(start..start + n)))))
            }
            DummyBody::Echo { first, rest } => match first.take() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Pin::new(rest).poll_frame(cx),
            },
            DummyBody::Serving(left) => {
                let was = *left;
                *left = left.saturating_sub(1);
                match was {
                    // A HealthCheckResponse: field 1 (status) = 1 (SERVING).
                    2 => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&[
                        0, 0, 0, 0, 2, 0x08, 0x01,
                    ]))))),
                    1 => {
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    _ => Poll::Ready(None),
                }
            }
            DummyBody::Grpc(request) => {
                let Some(incoming) = request else {
                    return Poll::Ready(None);
                };
                loop {
                    match std::task::ready!(Pin::new(&mut *incoming).poll_frame(cx)) {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                            // The request's own trailers: nothing to echo.
                            Err(_) => continue,
                        },
                        Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                        None => {
                            *request = None;
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert("grpc-status", HeaderValue::from_static("0"));
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            DummyBody::Text(text) => text.is_none(),
            DummyBody::Pattern { sent, len } => sent == len,
            DummyBody::Echo { first, rest } => first.is_none() && rest.is_end_stream(),
            DummyBody::Grpc(request) => request.is_none(),
            DummyBody::Serving(left) => *left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DummyBody::Text(text) => {
                SizeHint::with_exact(text.as_ref().map_or(0, |b| b.len() as u64))
            }
            DummyBody::Pattern { sent, len } => SizeHint::with_exact(len - sent),
            DummyBody::Echo { first, rest } => {
                let buffered = first
                    .as_ref()
                    .and_then(Frame::data_ref)
                    .map_or(0, |d| d.len() as u64);
                let rest = rest.size_hint();
                // Built from scratch: `set_lower` on `rest` would panic when lower passes upper.
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + buffered);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint
            }
            DummyBody::Grpc(_) | DummyBody::Serving(_) => SizeHint::new(),
        }
    }
}

/// A connection whose first bytes were read already: they are read again first.
struct Prefixed {
    first: Vec<u8>,
    at: usize,
    io: Conn,
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.first.len() {
            let n = (self.first.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.first[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
