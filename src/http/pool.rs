//! Keep-alive connections to one backend, reused from request to request (chapter 12).
//!
//! A TCP connect costs a round trip, and a TLS one two more plus the key exchange; paying that
//! per request is most of what a layer-7 balancer would spend. So each backend gets a pool of
//! idle HTTP/1.1 connections: a request takes the most recently used one (the one least
//! likely to have been closed by the backend meanwhile), and gives it back once its response
//! has been read to the end. Two bounds keep the pool honest, as nginx's `keepalive` and
//! HAProxy's `pool-max-conn`/`pool-purge-delay` do:
//!
//! * at most `max_idle` idle connections per backend: a burst opens more, and what is left
//!   idle beyond the bound is closed when given back;
//! * an idle connection older than `idle_timeout` is closed rather than used: backends close
//!   idle connections on their own timer (nginx after 75 s, hyper's default never, Apache after
//!   5 s), and ours must be the shorter one.
//!
//! A backend spoken to in HTTP/2 (chapter 17) needs no pool of idle connections: one
//! connection carries many requests at once, each on a stream. Its requests share its
//! connections, the first one with a stream free under the backend's own limit
//! (`SETTINGS_MAX_CONCURRENT_STREAMS`), and another connection is opened only when all are
//! full, as HAProxy and Envoy do.
//!
//! Even so, a backend may close a pooled connection just as we pick it. hyper tells the two
//! cases apart: a request that was never written is handed back (`try_send_request`), and the
//! balancer sends it again on a fresh connection; one that was written may have been acted on,
//! and only an idempotent request without a body is sent again.

use std::future::Future as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::{TrySendError, http1, http2};
use hyper::{Request, Response};
use tokio::task::AbortHandle;

use super::body::Upload;
use crate::conn::Conn;

/// The sending half of one backend connection: HTTP/1.1, one request at a time, with the task
/// that runs the connection (a response abandoned halfway, by a backend that stalled or a
/// client that left, aborts it, so the socket closes at once instead of waiting for bytes that
/// may never come); or HTTP/2 (chapter 17), a handle to a connection shared by every request
/// to the backend, where an abandoned response resets its own stream only.
pub enum Sender {
    H1(http1::SendRequest<Upload>, AbortHandle),
    H2(http2::SendRequest<Upload>, Stream),
}

/// One HTTP/2 connection to a backend, shared.
struct Shared {
    send: http2::SendRequest<Upload>,
    state: Arc<H2State>,
}

/// What the balancer knows of one HTTP/2 connection to a backend.
pub struct H2State {
    /// Streams in use: requests whose answers are not done with.
    streams: AtomicUsize,
    /// The backend's `SETTINGS_MAX_CONCURRENT_STREAMS`, once known (`settled`); until then a
    /// guess on the safe side (see [`H2State::new`]).
    limit: AtomicUsize,
    /// The backend's SETTINGS have been applied: it has answered on this connection, or
    /// hyper reports a limit other than its own assumption.
    settled: AtomicBool,
}

/// hyper's assumption of a backend's stream limit until its SETTINGS arrive (RFC 9113 §6.5.2
/// suggests no fewer than 100).
const HYPER_INITIAL_STREAMS: usize = 100;

impl H2State {
    /// A new connection's state: its limit is what the backend told its other connections
    /// (`known`), or 1 until this one is told. Hyper's guess of 100 would let a burst pile onto
    /// one connection of a backend that allows two, and queue there, instead of opening more.
    pub fn new(known: Option<usize>) -> Arc<H2State> {
        Arc::new(H2State {
            streams: AtomicUsize::new(0),
            limit: AtomicUsize::new(known.unwrap_or(1)),
            settled: AtomicBool::new(false),
        })
    }
}

/// Runs an HTTP/2 client connection, keeping `state`'s limit at the backend's own. hyper tells
/// the limit to whoever polls the connection, not to the handles that send on it.
pub fn watched<T, E>(
    mut conn: http2::Connection<T, Upload, E>,
    state: Arc<H2State>,
) -> impl std::future::Future<Output = hyper::Result<()>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: hyper::rt::bounds::Http2ClientConnExec<Upload, T> + Unpin,
{
    std::future::poll_fn(move |cx| {
        let polled = std::pin::Pin::new(&mut conn).poll(cx);
        let now = conn.current_max_send_streams();
        if now != HYPER_INITIAL_STREAMS {
            state.settled.store(true, Ordering::Relaxed);
        }
        if state.settled.load(Ordering::Relaxed) {
            state.limit.store(now, Ordering::Relaxed);
        }
        polled
    })
}

/// A stream in use on a shared HTTP/2 connection, until the request's answer is done with.
pub struct Stream(Arc<H2State>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// A stream on it, while it is open and the backend allows another.
    fn stream(&self) -> Option<Sender> {
        if self.send.is_closed() {
            return None;
        }
        let limit = self.state.limit.load(Ordering::Relaxed).max(1);
        let taken = self.state.streams.fetch_add(1, Ordering::Relaxed);
        let stream = Stream(Arc::clone(&self.state));
        (taken < limit).then(|| Sender::H2(self.send.clone(), stream))
    }
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(send, _) => send.is_closed(),
            Sender::H2(send, _) => send.is_closed(),
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Sender::H1(send, _) => send.is_ready(),
            Sender::H2(send, _) => send.is_ready(),
        }
    }

    /// Sends `req`; a request that was never written comes back in the error (hyper's
    /// `try_send_request`), to go again on another connection.
    pub async fn send(
        &mut self,
        req: Request<Upload>,
    ) -> Result<Response<hyper::body::Incoming>, TrySendError<Request<Upload>>> {
        match self {
            Sender::H1(send, _) => send.try_send_request(req).await,
            Sender::H2(send, _) => send.try_send_request(req).await,
        }
    }

    /// The backend answered on this connection: an HTTP/2 one has had its SETTINGS applied
    /// by now (they come first), so its limit can be believed from the next poll on.
    pub fn answered(&self) {
        if let Sender::H2(_, stream) = self {
            stream.0.settled.store(true, Ordering::Relaxed);
        }
    }

    /// Closes an HTTP/1 connection now, whatever it was doing. An HTTP/2 connection carries
    /// other requests: it stays, and closes when its last handle goes.
    pub fn abort(self) {
        if let Sender::H1(_, task) = self {
            task.abort();
        }
    }
}

/// Whether nothing has arrived on an idle connection: one non-blocking read of its socket
/// (over TLS, of the socket under it: any record at all, even a `close_notify`, is out of
/// turn). A byte it does read is lost, but so is the connection then.
fn quiet(conn: &Conn) -> bool {
    let tcp = match conn {
        Conn::Plain(tcp) => tcp,
        // Never a backend's: only clients come fresh. Not quiet: not reused.
        Conn::Fresh(_) => return false,
        Conn::TlsClient(tls) => tls.get_ref().0,
        Conn::TlsServer(tls) => tls.get_ref().0,
    };
    // First what the reactor already knows, for free: tokio clears a socket's readiness when
    // a read comes back short (as the read that ended the last answer almost always did), and
    // sets it again when the kernel reports bytes or a FIN. Not ready: nothing came, and no
    // system call was needed to know it. Ready: a read tells (it may be stale readiness).
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match tcp.poll_read_ready(&mut cx) {
        std::task::Poll::Pending => true,
        std::task::Poll::Ready(Err(_)) => false,
        std::task::Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

/// Idle connections kept per backend unless configured: a bound, not a target. A pool
/// smaller than the requests a backend has in flight at once closes connections as their
/// answers end, only to dial new ones for the next requests a moment later: 500 HTTP/2
/// streams in flight over two backends cost 35 µs of CPU a request with 64, and 24 with
/// this (README chapter 17). HAProxy keeps every idle connection by default (`pool-max-conn
/// -1`); `pool-idle-timeout` lets what a burst opened go.
pub const DEFAULT_MAX_IDLE: usize = 1024;
/// How long an idle connection is kept unless configured.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// An idle connection (hyper's sending half, or a socket) and when it was given back.
struct Idle<T> {
    conn: T,
    since: Instant,
}

/// The idle connections of one backend.
pub struct Pool {
    idle: Mutex<Vec<Idle<Sender>>>,
    /// The HTTP/2 connections requests to this backend share (chapter 17), while they are
    /// open: one, and more while every stream the backend allows on them is in use.
    h2: Mutex<Vec<Shared>>,
    /// Held while an HTTP/2 connection is dialled: requests that find every connection full
    /// at once wait for that one instead of each dialling its own.
    h2_dial: tokio::sync::Mutex<()>,
    /// The same, for the balancer's own HTTP/1 path (`http::h1`), which speaks on the
    /// connection itself rather than through hyper: a connection goes back with nothing
    /// unread on it, so the socket is all there is to keep.
    raw: Mutex<Vec<Idle<Conn>>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Connections dialled for this backend, ever: the pooling's effect is requests divided by
    /// this.
    pub opened: AtomicU64,
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(Vec::new()),
            h2_dial: tokio::sync::Mutex::new(()),
            raw: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
            opened: AtomicU64::new(0),
        }
    }

    /// The most recently returned idle connection that is ready for a request; closed and
    /// expired ones met on the way are dropped, and one not ready yet (hyper still finishing
    /// the previous response's end) stays for the next request.
    pub fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let conn = &idle[i];
            if conn.conn.is_closed() || conn.since.elapsed() >= self.idle_timeout {
                idle.remove(i);
            } else if conn.conn.is_ready() {
                return Some(idle.remove(i).conn);
            }
        }
        None
    }

    /// A stream on one of the backend's shared HTTP/2 connections (chapter 17): the first
    /// with a stream free under the backend's `SETTINGS_MAX_CONCURRENT_STREAMS`; `None` when
    /// every one is full (or closed), and a new connection is dialled.
    pub fn take_h2(&self) -> Option<Sender> {
        let mut h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        h2.retain(|shared| !shared.send.is_closed());
        h2.iter().find_map(Shared::stream)
    }

    /// The stream limit the backend told its HTTP/2 connections, if one was told: where a
    /// new connection starts (see [`H2State::new`]).
    pub fn known_h2_limit(&self) -> Option<usize> {
        let h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        h2.iter()
            .rev()
            .find(|s| s.state.settled.load(Ordering::Relaxed))
            .map(|s| s.state.limit.load(Ordering::Relaxed))
    }

    /// One dial of an HTTP/2 connection at a time: once the guard is held, [`Pool::take_h2`]
    /// again before dialling (the connection another request just dialled may have room).
    pub async fn dialling_h2(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.h2_dial.lock().await
    }

    /// Shares a new HTTP/2 connection; its first stream, for the request that dialled it.
    pub fn put_h2(&self, send: http2::SendRequest<Upload>, state: Arc<H2State>) -> Sender {
        state.streams.fetch_add(1, Ordering::Relaxed);
        let first = Sender::H2(send.clone(), Stream(Arc::clone(&state)));
        self.h2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Shared { send, state });
        first
    }

    /// Puts back a connection whose last response was read to the end, for the next request,
    /// unless the pool is full. Giving it back as the body ends, rather than from a task that
    /// waits for hyper to say it is ready, saves a task per request.
    pub fn put(&self, sender: Sender) {
        // An HTTP/2 handle is shared already (`take_h2`).
        if matches!(sender, Sender::H1(..)) && !sender.is_closed() {
            self.give_back(&self.idle, sender, Instant::now());
        }
    }

    /// Keeps `conn` in `list` unless the pool is full, dropping the expired ones while the
    /// lock is held (they are at the front: oldest first).
    fn give_back<T>(&self, list: &Mutex<Vec<Idle<T>>>, conn: T, now: Instant) {
        if self.max_idle == 0 {
            return;
        }
        let mut list = list.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = list
            .iter()
            .position(|c| now.saturating_duration_since(c.since) < self.idle_timeout)
            .unwrap_or(list.len());
        list.drain(..fresh);
        if list.len() < self.max_idle {
            list.push(Idle { conn, since: now });
        }
    }

    /// [`Pool::take`] for the balancer's own HTTP/1 path: the most recently returned idle
    /// connection that has not expired and is quiet. `now` is the caller's (a clock read
    /// costs as much as the rest of this).
    ///
    /// Quiet: the backend sent nothing since its last answer ended. hyper's connection task
    /// reads every idle connection and closes one that speaks out of turn; this path does not
    /// watch its idle sockets, so it asks each one as it takes it. A backend that closed it
    /// (EOF) costs a dial, not a retry, so even a POST can go on the next connection; one that
    /// sent bytes nobody asked for (a late second answer, a body after a HEAD answer) would
    /// have them read as the *next* client's answer (response desync), so it is closed.
    pub fn take_raw(&self, now: Instant) -> Option<Conn> {
        let mut raw = self.raw.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(idle) = raw.pop() {
            if now.saturating_duration_since(idle.since) < self.idle_timeout && quiet(&idle.conn) {
                return Some(idle.conn);
            }
        }
        None
    }

    /// [`Pool::put`] for the balancer's own HTTP/1 path.
    pub fn put_raw(&self, conn: Conn, now: Instant) {
        self.give_back(&self.raw, conn, now);
    }

    /// Idle connections now.
    pub fn idle(&self) -> usize {
        let hyper = self.idle.lock().map(|i| i.len()).unwrap_or(0);
        hyper + self.raw.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Counts one more connection dialled.
    pub fn opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }
}
