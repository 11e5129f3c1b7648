//! Chapter 17: HTTP/2 from clients. Over TLS a client that offers `h2` in ALPN gets it (then
//! `http/1.1`); in clear text a client that starts with HTTP/2's connection preface (prior
//! knowledge, `curl --http2-prior-knowledge`) gets it when `--h2c` allows.
//!
//! HTTP/2 is another codec over the same decisions: each stream is a request that goes through
//! `HttpServer::request`, as an HTTP/1 request on hyper's path does, so cookie affinity,
//! forwarding fields, limits, routes, the cache, compression and the access log hold per
//! stream. What HTTP/2 changes is what one connection can do:
//!
//! * **many requests at once.** One client connection carries up to
//!   `--max-concurrent-streams` (100) requests, each balanced on its own: one browser tab may
//!   reach every backend. Affinity is per request, as it always was;
//! * **attacks of its own**, each bounded by both codecs below. On hyper's path they are
//!   bounded here or in the `h2` crate, which has had the fixes the HTTP/2 attacks of 2019-2024
//!   called for:
//!   - *rapid reset* (CVE-2023-44487): a stream opened and reset at once costs the client one
//!     frame and the server a request to a backend. Streams reset by the client before they are
//!     answered count against `--h2-reset-budget` per second (and those reset before hyper even
//!     took them, against `h2`'s own bound, which answers `GOAWAY ENHANCE_YOUR_CALM`); past it
//!     the connection is closed;
//!   - *CONTINUATION floods* (2024) and *HPACK bombs*: a header block, across any number of
//!     CONTINUATION frames, is bounded by the same `max-head` as an HTTP/1 head (431's bound),
//!     and the HPACK table by its default 4 KiB;
//!   - *SETTINGS, PING and empty-frame floods*: `h2` answers them in bounded queues and closes
//!     a peer that does not read its answers;
//!   - *memory pinned through flow control*: a stream may hold at most its window
//!     ([`STREAM_WINDOW`]) of a body the backend has not taken yet, and a connection at most
//!     [`CONNECTION_WINDOW`] over all its streams; what we send waits in at most
//!     [`SEND_BUFFER`] per stream for a client that does not read;
//!   - *idle connections*: one with no stream open closes after `header-timeout`, as an idle
//!     HTTP/1 keep-alive connection does.
//!
//! Two codecs read the frames, as two read HTTP/1 (chapter 12): the own one under this
//! module ([`frame`]: RFC 9113's frames and their checks; [`hpack`]: RFC 7541; [`message`]: a
//! head into a request, §8; [`conn`]: a connection's streams in one task, no buffer held
//! while it is idle), and hyper's server (the `h2` crate) with `LB_H2_OWN=off`, to compare
//! them. hyper's costs 1.2-1.4× the own codec's CPU per request and 33 KiB per idle
//! connection against 5.7 (the README's chapter 17 measures both). [`conn`]'s header says how
//! the own codec holds the bounds above.

pub mod conn;
pub mod frame;
pub mod held;
pub mod hpack;
pub mod message;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;

use super::balancer::{ConnInfo, HttpServer, Returning};
use crate::conn::Conn;

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams one connection may have open at once unless configured (RFC 9113 §5.1.2 suggests
/// no fewer than 100).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams a client may reset before their answer, per connection and second, unless
/// configured: a browser cancels a few when a page changes; an attacker thousands.
pub const DEFAULT_RESET_BUDGET: u32 = 100;
/// Bytes of a request body a client may send ahead on one stream, and over the whole
/// connection: what a backend that reads slowly can make us hold.
pub const STREAM_WINDOW: u32 = 256 * 1024;
pub const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Bytes of an answer queued per stream for a client that does not read.
pub const SEND_BUFFER: usize = 256 * 1024;

/// Chapter 17's settings (`[http]` and their flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2Settings {
    /// Accept HTTP/2 in clear text from clients that start with its preface (`--h2c`).
    pub h2c: bool,
    pub max_concurrent_streams: u32,
    pub reset_budget: u32,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            h2c: false,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            reset_budget: DEFAULT_RESET_BUDGET,
        }
    }
}

/// Whether a clear-text client starts with the HTTP/2 preface: reads into `read` (what was
/// read of the connection so far) until it either holds the whole preface or departs from it,
/// within `timeout`. What is read stays in `read`, for whichever codec serves it.
pub(crate) async fn starts_with_preface(
    conn: &mut Conn,
    read: &mut Vec<u8>,
    timeout: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while read.len() < PREFACE.len() && PREFACE.starts_with(read) {
        let mut more = [0u8; 64];
        let n = match tokio::time::timeout_at(deadline, conn.read(&mut more)).await {
            Ok(Ok(n)) if n > 0 => n,
            // Closed, failed or slow: not HTTP/2; the HTTP/1 codec answers as it would.
            _ => return false,
        };
        read.extend_from_slice(&more[..n]);
    }
    read.starts_with(PREFACE)
}

/// Whether the own codec serves HTTP/2 ([`conn`]): `LB_H2_OWN=off` leaves it to hyper's server,
/// to compare the two (CI runs chapter 17's tests both ways).
fn own() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("LB_H2_OWN").map_or(true, |v| v != "off"))
}

/// One connection's count of streams reset by the client before their answer, per second.
struct Resets {
    budget: usize,
    second: std::sync::Mutex<(Instant, usize)>,
    /// Streams being answered now: a connection with none is idle.
    open: AtomicUsize,
    over: tokio::sync::Notify,
    idle: tokio::sync::Notify,
}

/// A stream open on the connection, until its answer's body is done: a connection with none
/// is idle.
struct Busy(Arc<Resets>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_one();
        }
    }
}

/// A stream being answered; dropped before [`Stream::answered`], it was reset by the client.
struct Stream {
    resets: Arc<Resets>,
    busy: Option<Busy>,
}

impl Resets {
    fn stream(self: &Arc<Self>) -> Stream {
        self.open.fetch_add(1, Ordering::Relaxed);
        Stream {
            resets: Arc::clone(self),
            busy: Some(Busy(Arc::clone(self))),
        }
    }
}

impl Stream {
    /// Its answer is ready: whatever happens to the stream now, the client did not cancel it
    /// before we had done the work. The stream stays busy while its body goes out.
    fn answered(mut self) -> Option<Busy> {
        self.busy.take()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.busy.is_none() {
            return;
        }
        let mut second = self.resets.second.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(second.0) >= Duration::from_secs(1) {
            *second = (now, 0);
        }
        second.1 += 1;
        if second.1 > self.resets.budget {
            self.resets.over.notify_one();
        }
    }
}

/// The own codec's task: the connection, then its lingering close. Its timer and its wait for
/// a drain are pinned here, in the task, rather than boxed each on its own: two allocations
/// fewer per connection. `held` is dropped last, once the socket is closed.
///
/// An `async` block, not an `async fn`: an `async fn` keeps each argument twice in its state
/// (as the argument, and as the local it is moved to), and the codec's state is most of what
/// an idle connection costs.
#[allow(clippy::manual_async_fn)]
fn serve_own(
    mut connection: conn::Connection,
    held: crate::server::Held,
) -> impl Future<Output = ()> + Send {
    async move {
        // In a block of their own, so that the close below does not keep room for them too.
        let clean = {
            let server = connection.server();
            let stop = std::pin::pin!(server.stopping());
            let timer = std::pin::pin!(tokio::time::sleep_until(connection.first_deadline()));
            match connection.run(timer, stop).await {
                conn::Ended::Clean => true,
                conn::Ended::Broken(why) => {
                    tracing::debug!(client = %connection.client(), "HTTP/2 connection ended: {why}");
                    false
                }
            }
        };
        super::balancer::close_client(connection.finish(), clean).await;
        drop(held);
    }
}

impl HttpServer {
    /// Serves an HTTP/2 connection (chapter 17) in a task of its own, sized for it alone
    /// (the task that admitted it is sized for every codec's start, and ends here): each
    /// stream a request through [`HttpServer::request`]'s rules; see the module's header for
    /// the bounds. `held`, the connection's slots, lives as long as the task.
    pub(super) fn serve_h2(
        self: Arc<Self>,
        conn: Conn,
        prefix: Vec<u8>,
        info: Arc<ConnInfo>,
        held: crate::server::Held,
    ) {
        if !own() {
            tokio::spawn(async move {
                let _held = held;
                // Boxed: hyper's connection state is large, and its own tasks' futures
                // carry it anyway.
                Box::pin(self.serve_hyper_h2(conn, prefix, info)).await;
            });
            return;
        }
        // Built here, not in the task: what the task's future holds from its start is then
        // the codec's state, once, rather than the parts it is built from as well.
        let connection = conn::Connection::new(self, conn, prefix, info);
        tokio::spawn(serve_own(connection, held));
    }

    /// [`HttpServer::serve_h2`] on hyper's server (`LB_H2_OWN=off`).
    async fn serve_hyper_h2(self: Arc<Self>, conn: Conn, prefix: Vec<u8>, info: Arc<ConnInfo>) {
        let settings = self.upstreams().settings.clone();
        let h2 = settings.h2.clone();
        let io = TokioIo::new(Returning::new(conn, prefix, None));
        let resets = Arc::new(Resets {
            budget: h2.reset_budget as usize,
            second: std::sync::Mutex::new((Instant::now(), 0)),
            open: AtomicUsize::new(0),
            over: tokio::sync::Notify::new(),
            idle: tokio::sync::Notify::new(),
        });
        let client = info.client;
        let (this, counting) = (Arc::clone(&self), Arc::clone(&resets));
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let (this, info) = (Arc::clone(&this), Arc::clone(&info));
            let stream = counting.stream();
            // Boxed: hyper moves the service's future into a task of its own for each stream,
            // and the request's future is large; unboxed, copying it showed in the profile.
            Box::pin(async move {
                let head = req.method() == hyper::Method::HEAD;
                let mut response = this
                    .request(req.map(super::body::Inbound::from), &info)
                    .await;
                // RFC 9110 §9.3.2: no content in an answer to HEAD. hyper's HTTP/2 server sends
                // whatever body it is given (our error pages have one), which the client reads
                // as a protocol error.
                if head {
                    response.body_mut().empty();
                }
                if let Some(busy) = stream.answered() {
                    response.body_mut().hold(Box::new(busy));
                }
                Ok::<_, std::convert::Infallible>(response)
            })
        });
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(h2.max_concurrent_streams)
            .max_pending_accept_reset_streams(h2.reset_budget as usize)
            // A header block, CONTINUATIONs included, within the HTTP/1 head's bound.
            .max_header_list_size(u32::try_from(settings.max_head).unwrap_or(u32::MAX))
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buf_size(SEND_BUFFER);
        let mut connection = std::pin::pin!(builder.serve_connection(io, service));
        let mut stop = self.stop.subscribe();
        let idle_for = settings.header_timeout;
        // Idle: no stream open for `header-timeout` (the first from the start).
        let idle = async {
            loop {
                let emptied = resets.idle.notified();
                if resets.open.load(Ordering::Relaxed) != 0 {
                    emptied.await;
                } else if tokio::time::timeout(idle_for, emptied).await.is_err()
                    && resets.open.load(Ordering::Relaxed) == 0
                {
                    return;
                }
            }
        };
        let closing = tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%client, "HTTP/2 connection ended: {e}");
                }
                return;
            }
            _ = stop.wait_for(|stop| *stop) => "draining",
            () = idle => "idle",
            () = resets.over.notified() => {
                // An abuser gets no more of our time: closed at once.
                tracing::warn!(%client, budget = h2.reset_budget,
                    "HTTP/2: more streams reset by the client in a second than the budget; closing");
                return;
            }
        };
        tracing::debug!(%client, "closing an HTTP/2 connection: {closing}");
        // GOAWAY: no new stream starts, the streams open go on to their end (each bounded by
        // the body timeouts). h2 then waits for the client to acknowledge the GOAWAY (a PING),
        // which a client that does not read never does: it gets `header-timeout` for that,
        // then the connection is dropped.
        connection.as_mut().graceful_shutdown();
        let finished = async {
            while resets.open.load(Ordering::Relaxed) != 0 {
                resets.idle.notified().await;
            }
            tokio::time::sleep(idle_for).await;
        };
        tokio::select! {
            _ = connection.as_mut() => {}
            () = finished => tracing::debug!(%client, "HTTP/2: GOAWAY not acknowledged; closed"),
        }
    }
}
