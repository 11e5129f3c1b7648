//! The own HTTP/2 codec's connection layer: one client connection, all its streams, in one
//! task (RFC 9113 §5 and §6).
//!
//! hyper's server runs a connection as a task that owns the frames and a task per stream that
//! owns its request, with the `h2` crate's shared state between them behind a lock. Here one
//! task does all of it: it reads frames, turns each request's head into a request for
//! `HttpServer::request` (the decisions every codec shares), polls the requests being
//! answered side by side in one `FuturesUnordered` (only those woken are polled), and writes
//! each answer's frames as its body and the client's windows allow; with one worker, when the
//! thread has nothing else to run, beside the other connections' writes ([`held`]). What it
//! keeps per connection is a map of the open streams and an HPACK table; its read buffer comes
//! from the per-thread spare list of chapter 12's codec and goes back whenever nothing is left
//! in it, and its write buffer is dropped whenever it is empty, so an idle connection holds
//! neither. Nor does it hold the answers' queue, and its timer and drain wait live in its
//! task (`h2::serve_own`): an idle connection is its task (896 bytes), its socket's
//! registration and its addresses, 1.6 KiB in all (the README's chapter 17 says where each
//! byte went).
//!
//! The bounds, each with the attack it answers (the README's chapter 17 table):
//!
//! * `--max-concurrent-streams`: announced in SETTINGS; a stream past it is refused
//!   (`RST_STREAM REFUSED_STREAM`, §5.1.2);
//! * `--h2-reset-budget`: streams the client resets before their answer, per second; past it,
//!   `GOAWAY ENHANCE_YOUR_CALM` and the connection closes (rapid reset, CVE-2023-44487);
//! * streams refused for the client's own errors: at most [`MAX_REFUSED_STREAMS`] in a
//!   connection's life, then `GOAWAY ENHANCE_YOUR_CALM` (floods of malformed requests, each
//!   otherwise a decoded head, a log line and a frame for one frame of the client's);
//! * a header block, CONTINUATIONs included, within `--max-head`; past it, `GOAWAY
//!   ENHANCE_YOUR_CALM` (CONTINUATION floods); the list it decodes to, within the same bound
//!   (431);
//! * the answers we owe a client (PING and SETTINGS acknowledgements, frames of answers) wait
//!   in at most [`HIGH_WATER`] bytes: past that, nothing more is read from the client nor taken
//!   from a backend until it reads (PING, SETTINGS floods; a reader that never reads);
//! * a request body's bytes wait for their backend within the windows we announce:
//!   [`STREAM_WINDOW`] per stream, [`CONNECTION_WINDOW`] in all; the client is given more only
//!   as the backend takes them;
//! * no stream open for `--header-timeout`: `GOAWAY NO_ERROR`, then the close; a write that
//!   makes no progress for as long ends the connection;
//! * a backend's `103 Early Hints`, passed on as HEADERS before its stream's answer (RFC 9110
//!   §15.2, RFC 9113 §8.1): 64 KiB of them queued at most, and none written past
//!   [`HIGH_WATER`] (a backend that sends hints without end; a hint is advice).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use std::time::Instant;

use bytes::{Buf, Bytes};
use futures_util::stream::{FuturesUnordered, Stream as _};
use hyper::body::{Body, Frame, SizeHint};
use hyper::{HeaderMap, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::frame::{self, ErrorCode, Fault, Head, Window, flag, kind, setting};
use super::held::{self, Hold};
use super::message::{self, Malformed};
use super::{CONNECTION_WINDOW, PREFACE, STREAM_WINDOW, hpack};
use crate::conn::Conn;
use crate::http::balancer::{ConnInfo, HttpServer, Upstreams};
use crate::http::body::{BoxError, Download, Inbound};
use crate::http::early_hints::{StreamHints, StreamQueue};
use crate::http::exchange;
use crate::http::h1::spare;

/// Frames past this many bytes go out at once: holding them for more ([`held`]) saves no write
/// worth the wait.
const HOLD_BYTES: usize = 16 * 1024;

/// Bytes of frames we may owe the client before we stop reading it and stop taking answers'
/// bodies: what a client that does not read can make us hold, beyond one frame in progress.
pub const HIGH_WATER: usize = 64 * 1024;

/// How much of a window is given back at once: smaller grants would cost a frame for every
/// few bytes a backend takes.
const STREAM_GRANT: usize = STREAM_WINDOW as usize / 4;
const CONNECTION_GRANT: usize = CONNECTION_WINDOW as usize / 4;

/// Streams one connection may have refused for the client's own errors (malformed heads,
/// stream errors, streams past the limit) before it is closed: each costs us a decoded head, a
/// log line and a frame, and costs the client one frame. The `h2` crate's bound for the same
/// (`max_local_error_reset_streams`), after the 2024 reports of floods of such streams.
pub const MAX_REFUSED_STREAMS: usize = 1024;

/// Beyond any timeout: where the timer waits when there is nothing to time.
const FAR: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// A request body the own codec receives: what the client sent on a stream, handed on to the
/// backend as it goes. The connection puts DATA in; `HttpServer::request`'s upload takes it
/// out, and what it takes is what the client is allowed to send again. `None` for a request
/// that has none (END_STREAM on its HEADERS, most `GET`s): nothing to share, nothing allocated.
pub struct RecvBody(Option<Arc<Mutex<Recv>>>);

#[derive(Default)]
struct Recv {
    chunks: VecDeque<Bytes>,
    buffered: usize,
    trailers: Option<HeaderMap>,
    /// The client ended the stream (after the chunks and trailers held here).
    ended: bool,
    /// The stream broke (reset, or more or fewer bytes than its `Content-Length`).
    failed: Option<&'static str>,
    /// Bytes taken since the connection last looked, to be granted again.
    consumed: usize,
    /// The `Content-Length` the request gave, checked against its DATA (§8.1.1).
    length: Option<u64>,
    reader: Option<Waker>,
    connection: Option<Waker>,
}

fn lock(recv: &Mutex<Recv>) -> MutexGuard<'_, Recv> {
    recv.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct BrokenStream(&'static str);

impl std::fmt::Display for BrokenStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP/2 request body: {}", self.0)
    }
}

impl std::error::Error for BrokenStream {}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(recv) = &self.0 else {
            return Poll::Ready(None);
        };
        let mut recv = lock(recv);
        if let Some(why) = recv.failed {
            return Poll::Ready(Some(Err(Box::new(BrokenStream(why)))));
        }
        if let Some(chunk) = recv.chunks.pop_front() {
            recv.buffered -= chunk.len();
            recv.consumed += chunk.len();
            if let Some(connection) = recv.connection.take() {
                connection.wake();
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(trailers) = recv.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if recv.ended {
            return Poll::Ready(None);
        }
        recv.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let Some(recv) = &self.0 else {
            return true;
        };
        let recv = lock(recv);
        recv.ended && recv.chunks.is_empty() && recv.trailers.is_none() && recv.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.0.as_ref().map(|recv| lock(recv).length) {
            None => SizeHint::with_exact(0),
            Some(Some(n)) => SizeHint::with_exact(n),
            Some(None) => SizeHint::default(),
        }
    }
}

/// A stream's answer being made, with the stream's id: the answers' queue holds these.
///
/// One box per stream for the request's own future (about 5 KiB, written into its box where it
/// is made, [`boxed_in_place`]), and no second box around it for the queue, whose futures are
/// all of this one type. A reset stream's future is dropped at once by [`Connection::abort`]
/// (with what it held: a backend's connection, its place in a count of requests in flight);
/// the entry left, now empty, is woken through the waker it kept, so the queue lets it go at
/// its next poll. This is what `futures`' `Abortable` does, without its shared state: one
/// allocation and its atomics a stream, for the walk over at most `max_streams` entries a
/// reset costs here.
struct Tagged {
    id: u32,
    answer: Option<Pin<Box<dyn Future<Output = Response<Download>> + Send>>>,
    waker: Option<Waker>,
}

impl Future for Tagged {
    /// `None`: the stream was reset.
    type Output = (u32, Option<Response<Download>>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(answer) = this.answer.as_mut() else {
            return Poll::Ready((this.id, None));
        };
        match answer.as_mut().poll(cx) {
            Poll::Ready(response) => Poll::Ready((this.id, Some(response))),
            Poll::Pending => {
                if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    this.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// One stream, from its request's head until both sides have ended it.
struct Stream {
    /// The request body's shared state; `None` for a request without one.
    recv: Option<Arc<Mutex<Recv>>>,
    /// The client ended its side (END_STREAM, §5.1 "half-closed (remote)").
    remote_done: bool,
    /// Bytes the client may still send on it, and those taken but not yet granted again.
    recv_window: usize,
    ungranted: usize,
    received: u64,
    /// What we may still send on it (the client's window).
    send: Window,
    /// While the answer is being made (its future is in the answers' queue).
    making: bool,
    /// While the answer's body goes out, and a piece of it the windows held back.
    body: Option<Download>,
    pending: Option<Bytes>,
    /// The answer's head was sent: a reset no longer counts against the budget.
    answered: bool,
    /// The request was `HEAD`: its answer has no content (RFC 9110 §9.3.2), whatever body
    /// came with it.
    head: bool,
    local_done: bool,
}

/// A header block being received across CONTINUATION frames (§6.10).
struct Continuing {
    stream: u32,
    block: Vec<u8>,
    end_stream: bool,
}

thread_local! {
    /// Streams looked at by one pass over the answers' bodies: one list per thread rather
    /// than per connection, since a pass never waits.
    static IDS: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Why the connection is ending at our side: a few bytes, not a message, since every
/// connection has room for one.
#[derive(Clone, Copy)]
enum Failing {
    /// A write made no progress for the timeout.
    Stalled,
    /// We sent GOAWAY with this code.
    Error(ErrorCode),
}

impl std::fmt::Display for Failing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failing::Stalled => f.write_str("a client that does not read"),
            Failing::Error(code) => write!(f, "HTTP/2 connection error {code}"),
        }
    }
}

/// How a connection ended, for the caller's close.
pub(in crate::http) enum Ended {
    /// GOAWAY sent (or received) and every stream done: nothing left unread that matters.
    Clean,
    /// An error, ours or the client's, or a client gone: close lingering.
    Broken(String),
}

/// A future made where its box is, not moved there.
///
/// `Box::pin(future)` builds the future on the stack and then copies all of it into the box:
/// every byte of its largest state (about 5 KiB for a stream's), to memory just allocated and
/// so not in the cache, though a future that has not started holds only its captures. Called
/// after the allocation, `make` writes the future into the box itself (the compiler passes
/// the box as the place for the result): about 500 instructions a stream less in callgrind,
/// and the largest `memcpy` left in a `perf` profile of `h2load` gone.
fn boxed_in_place<F: Future + Send + 'static>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// How the streams' table hashes their ids: a multiply folded back on itself (foldhash's
/// step), keyed by a secret per connection. The standard SipHash cost about 700 instructions
/// a request across the table's lookups, for 4-byte keys; the key keeps a client from
/// choosing ids that all land in one place (and at most `max_streams` are in the table).
#[derive(Clone)]
struct StreamIds(u64);

impl StreamIds {
    fn new() -> StreamIds {
        StreamIds(rand::random())
    }
}

impl std::hash::BuildHasher for StreamIds {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.0)
    }
}

struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        let product = u128::from(self.0 ^ n) * 0x9e37_79b9_7f4a_7c15;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(in crate::http) struct Connection {
    server: Arc<HttpServer>,
    info: Arc<ConnInfo>,
    io: Conn,
    /// Bytes read and not yet taken as frames; no capacity while there are none.
    read: Vec<u8>,
    /// The client's preface is not all read yet (§3.4).
    awaiting_preface: bool,
    /// Frames to write, from `written` on; no capacity while empty.
    out: Vec<u8>,
    written: usize,
    decoder: hpack::Decoder,
    streams: HashMap<u32, Stream, StreamIds>,
    /// None while no stream is open ([`Connection::shrink_when_idle`]; the streams' table is
    /// let go in `close_stream`): an idle connection holds neither.
    answers: Option<FuturesUnordered<Tagged>>,
    /// A body stopped taking because of [`HIGH_WATER`].
    full: bool,
    /// Boxed: CONTINUATION is rare, and the room would be paid by every connection.
    continuing: Option<Box<Continuing>>,
    last_stream: u32,
    got_settings: bool,
    /// What the client may still send on the connection, and what it took to be granted.
    recv_window: usize,
    ungranted: usize,
    send: Window,
    peer_initial_window: u32,
    peer_max_frame: usize,
    max_streams: u32,
    max_head: usize,
    budget: u32,
    /// Streams the client reset before their answer since `resets_since` (within a second).
    resets: u32,
    resets_since: Instant,
    /// Streams refused for the client's errors, in the connection's life.
    refused: u32,
    /// GOAWAY sent: no stream after `last_stream` is taken.
    going_away: bool,
    peer_going_away: bool,
    /// A connection error was sent: write what can be written, then close.
    failing: Option<Failing>,
    read_closed: bool,
    idle_since: tokio::time::Instant,
    progress_at: tokio::time::Instant,
    timeout: std::time::Duration,
    /// The server began to drain, and this connection was told (GOAWAY).
    stopped: bool,
    /// Whether the frames in `out` wait for the runtime to park ([`Connection::holding`]).
    hold: Hold,
    /// Where the streams' backends' `103 Early Hints` wait to be written (made with the first
    /// stream; `early_hints`).
    hints: Option<Arc<StreamQueue>>,
}

impl Connection {
    /// A connection whose client has sent `prefix` so far (the preface, when `--h2c` saw it).
    pub(in crate::http) fn new(
        server: Arc<HttpServer>,
        io: Conn,
        prefix: Vec<u8>,
        info: Arc<ConnInfo>,
    ) -> Connection {
        let settings = &server.upstreams().settings;
        let (h2, max_head, timeout) = (
            settings.h2.clone(),
            settings.max_head,
            settings.header_timeout,
        );
        let now = tokio::time::Instant::now();
        let mut out = Vec::with_capacity(64);
        // §3.4: our SETTINGS first; the connection's window raised to ours (§6.9.2: SETTINGS
        // cannot change it).
        frame::write_settings(
            &mut out,
            &[
                (setting::MAX_CONCURRENT_STREAMS, h2.max_concurrent_streams),
                (setting::INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (
                    setting::MAX_HEADER_LIST_SIZE,
                    u32::try_from(max_head).unwrap_or(u32::MAX),
                ),
            ],
        );
        frame::write_window_update(&mut out, 0, CONNECTION_WINDOW - frame::DEFAULT_WINDOW);
        Connection {
            server,
            info,
            io,
            read: prefix,
            awaiting_preface: true,
            out,
            written: 0,
            decoder: hpack::Decoder::new(hpack::DEFAULT_TABLE_SIZE),
            streams: HashMap::with_hasher(StreamIds::new()),
            answers: None,
            full: false,
            continuing: None,
            last_stream: 0,
            got_settings: false,
            recv_window: CONNECTION_WINDOW as usize,
            ungranted: 0,
            send: Window::new(frame::DEFAULT_WINDOW),
            peer_initial_window: frame::DEFAULT_WINDOW,
            peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE as usize,
            max_streams: h2.max_concurrent_streams,
            max_head,
            budget: h2.reset_budget,
            resets: 0,
            resets_since: Instant::now(),
            refused: 0,
            going_away: false,
            peer_going_away: false,
            failing: None,
            read_closed: false,
            idle_since: now,
            progress_at: now,
            timeout,
            stopped: false,
            hold: Hold::default(),
            hints: None,
        }
    }

    /// The server this connection is served by.
    pub(in crate::http) fn server(&self) -> Arc<HttpServer> {
        Arc::clone(&self.server)
    }

    /// Who the client is, for the log.
    pub(in crate::http) fn client(&self) -> std::net::SocketAddr {
        self.info.client
    }

    /// Serves the connection to its end; [`Connection::finish`] then hands the socket back
    /// for the caller's close. By reference: an `async fn` taking the connection by value
    /// would hold it twice in its state (the argument and the local it is moved to), and
    /// that state lives as long as the connection. `timer` is the connection's one timer,
    /// `stop` resolves when the server drains.
    pub(in crate::http) fn run<'a>(
        &'a mut self,
        mut timer: Pin<&'a mut Sleep>,
        mut stop: Pin<&'a mut (dyn Future<Output = ()> + Send)>,
    ) -> impl Future<Output = Ended> + 'a {
        // A `poll_fn`, not an `async fn`: the references are held once, not once as the
        // arguments and again as the closure's.
        std::future::poll_fn(move |cx| self.poll_run(cx, timer.as_mut(), stop.as_mut()))
    }

    /// Where the timer given to [`Connection::run`] starts: the idle timeout.
    pub(in crate::http) fn first_deadline(&self) -> tokio::time::Instant {
        self.idle_since + self.timeout
    }

    /// The socket, once [`Connection::run`] is over; whatever is still being answered is
    /// dropped with the connection.
    pub(in crate::http) fn finish(mut self) -> Conn {
        // Whatever is still being answered stops now, not when the connection's task ends.
        self.answers = None;
        self.streams.clear();
        if self.read.capacity() > 0 {
            spare::give_buffer(std::mem::take(&mut self.read));
        }
        self.io
    }

    fn poll_run(
        &mut self,
        cx: &mut Context<'_>,
        mut timer: Pin<&mut Sleep>,
        mut stop: Pin<&mut (dyn Future<Output = ()> + Send)>,
    ) -> Poll<Ended> {
        // What was read before this codec took the connection (the h2c preface check may
        // have read frames past the preface).
        if !self.read.is_empty()
            && self.awaiting_preface
            && let Err(fault) = self.take_frames()
        {
            self.fault(fault);
        }
        held::busy();
        loop {
            if !self.stopped && stop.as_mut().poll(cx).is_ready() {
                self.stopped = true;
                tracing::debug!(client = %self.info.client, "closing an HTTP/2 connection: draining");
                self.go_away(ErrorCode::NoError);
            }
            self.poll_answers(cx);
            self.grant_windows(cx);
            self.pump_bodies(cx);
            let holding = self.holding();
            if !holding {
                match self.poll_flush(cx) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Ended::Broken(e.to_string())),
                    Poll::Ready(Ok(())) | Poll::Pending => {}
                }
            }
            if let Some(why) = &self.failing {
                // A connection error: what could be written of the GOAWAY is; a client that
                // does not read gets no more of our time.
                return Poll::Ready(Ended::Broken(why.to_string()));
            }
            let flushed = self.written == self.out.len();
            if flushed && std::mem::take(&mut self.full) {
                // A body stopped at HIGH_WATER, and it is all written now.
                continue;
            }
            if (self.going_away || self.peer_going_away || self.read_closed)
                && self.streams.is_empty()
                && flushed
            {
                return Poll::Ready(match self.read_closed && !self.going_away {
                    true => Ended::Broken("the client closed the connection".into()),
                    false => Ended::Clean,
                });
            }
            if self.poll_timer(cx, timer.as_mut(), holding) {
                continue;
            }
            if self.failing.is_some() {
                continue;
            }
            // Read only while what we owe the client is within bounds.
            if self.read_closed || self.out.len() - self.written > HIGH_WATER {
                return self.wait(cx, holding);
            }
            match self.poll_read(cx) {
                Poll::Ready(Ok(0)) => {
                    self.read_closed = true;
                    // The client is gone: nothing it asked for can reach it.
                    self.answers = None;
                    self.streams.clear();
                }
                Poll::Ready(Ok(_)) => {
                    if let Err(fault) = self.take_frames() {
                        self.fault(fault);
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Ended::Broken(e.to_string())),
                Poll::Pending => return self.wait(cx, holding),
            }
        }
    }

    /// Whether the frames ready in `out` wait for the runtime to park ([`held`]): read what
    /// the client sent meanwhile, and let other connections' answers come, then write when
    /// the thread has nothing else to do, with the other connections' writes. Not once a write
    /// is under way (it finishes first), past [`HOLD_BYTES`], or for a GOAWAY that ends the
    /// connection.
    fn holding(&mut self) -> bool {
        if self.written != 0
            || self.out.is_empty()
            || self.out.len() >= HOLD_BYTES
            || self.failing.is_some()
        {
            self.hold.clear();
            return false;
        }
        self.hold.may_wait()
    }

    /// The loop's only ways back to the runtime with nothing ended: frames `holding` must have
    /// the connection's waker on the thread's list ([`Hold::wait`]), or nothing would write
    /// them.
    fn wait(&mut self, cx: &mut Context<'_>, holding: bool) -> Poll<Ended> {
        self.shrink_when_idle();
        if holding {
            self.hold.wait(cx.waker());
        }
        Poll::Pending
    }

    /// A connection with no stream open keeps no answers' queue: idle connections are most of
    /// a server's connections, and each byte here is paid by each. (Aborted answers leave the
    /// queue when it is next polled, as the loop does before every wait, so an empty table
    /// means an empty queue.)
    fn shrink_when_idle(&mut self) {
        if self.streams.is_empty() && self.answers.as_ref().is_some_and(|a| a.is_empty()) {
            self.answers = None;
        }
    }

    /// The one timer: a write that makes no progress, or no stream open, for `timeout`.
    /// True when it fired and changed something.
    fn poll_timer(
        &mut self,
        cx: &mut Context<'_>,
        mut timer: Pin<&mut Sleep>,
        holding: bool,
    ) -> bool {
        // Frames held are not a client that does not read: their write has not begun.
        let stalled = !holding && self.written < self.out.len();
        let at = if stalled {
            self.progress_at + self.timeout
        } else if self.streams.is_empty() && !self.going_away {
            self.idle_since + self.timeout
        } else {
            // Nothing to time: streams are bounded by the request's own timeouts. The timer
            // is moved only when it has come within half of FAR, not at every poll (a reset
            // is a removal and an insertion in the runtime's timer wheel).
            let now = tokio::time::Instant::now();
            match timer.deadline() > now + FAR / 2 {
                true => timer.deadline(),
                false => now + FAR,
            }
        };
        if at != timer.deadline() {
            timer.as_mut().reset(at);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if stalled {
            self.failing = Some(Failing::Stalled);
        } else {
            tracing::debug!(client = %self.info.client, "closing an HTTP/2 connection: idle");
            self.go_away(ErrorCode::NoError);
            // Once flushed, the loop ends the connection.
            self.idle_since = tokio::time::Instant::now();
        }
        true
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() == 0 {
            self.read = spare::buffer();
        }
        // Room for a whole frame of the largest size we allow.
        let want = frame::HEADER_LEN + frame::DEFAULT_MAX_FRAME_SIZE as usize;
        if self.read.capacity() - self.read.len() < want.min(4096) {
            self.read.reserve(want);
        }
        let len = self.read.len();
        let spare_room = self.read.spare_capacity_mut();
        let mut buf = ReadBuf::uninit(spare_room);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
                unsafe { self.read.set_len(len + n) };
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.read.is_empty() {
                    // Nothing held: the buffer goes back, so an idle connection keeps none.
                    spare::give_buffer(std::mem::take(&mut self.read));
                }
                Poll::Pending
            }
        }
    }

    /// Takes every whole frame read so far.
    fn take_frames(&mut self) -> Result<(), Fault> {
        let mut at = 0;
        if self.awaiting_preface {
            let have = self.read.len().min(PREFACE.len());
            if self.read[..have] != PREFACE[..have] {
                return Err(Fault::Connection(ErrorCode::Protocol));
            }
            if have < PREFACE.len() {
                return Ok(());
            }
            self.awaiting_preface = false;
            at = PREFACE.len();
        }
        while self.read.len() - at >= frame::HEADER_LEN && self.failing.is_none() {
            let mut bytes = [0u8; frame::HEADER_LEN];
            bytes.copy_from_slice(&self.read[at..at + frame::HEADER_LEN]);
            let head = Head::parse(&bytes);
            // Judged from its header, before its payload is waited for or held (§4.2).
            let checked = head.check(frame::DEFAULT_MAX_FRAME_SIZE);
            if let Err(Fault::Connection(code)) = checked {
                return Err(Fault::Connection(code));
            }
            if self.read.len() - at - frame::HEADER_LEN < head.len {
                break;
            }
            let start = at + frame::HEADER_LEN;
            at = start + head.len;
            let outcome = match checked {
                // A stream error from the header alone (a PRIORITY of the wrong size).
                Err(fault) => Err(fault),
                Ok(()) => {
                    let payload = std::mem::take(&mut self.read);
                    let outcome = self.on_frame(head, &payload[start..at]);
                    self.read = payload;
                    outcome
                }
            };
            if let Err(fault) = outcome {
                self.fault(fault);
            }
        }
        self.read.drain(..at);
        Ok(())
    }

    /// Answers a fault: a stream's ends the stream, the connection's ends it all.
    fn fault(&mut self, fault: Fault) {
        match fault {
            Fault::Stream(id, code) => {
                frame::write_rst_stream(&mut self.out, id, code);
                self.close_stream(id);
                self.count_refused();
            }
            Fault::Connection(code) => {
                if self.failing.is_none() {
                    frame::write_goaway(&mut self.out, self.last_stream, code);
                    self.failing = Some(Failing::Error(code));
                    tracing::info!(client = %self.info.client, "HTTP/2: connection error {code}; closing");
                }
            }
        }
    }

    /// One more stream refused for the client's error; past [`MAX_REFUSED_STREAMS`], the
    /// connection goes.
    fn count_refused(&mut self) {
        self.refused += 1;
        if self.refused as usize > MAX_REFUSED_STREAMS && self.failing.is_none() {
            tracing::warn!(client = %self.info.client, "HTTP/2: more streams refused for the client's errors than {MAX_REFUSED_STREAMS}; closing");
            self.fault(Fault::Connection(ErrorCode::EnhanceYourCalm));
        }
    }

    fn go_away(&mut self, code: ErrorCode) {
        if !self.going_away {
            self.going_away = true;
            frame::write_goaway(&mut self.out, self.last_stream, code);
        }
    }

    fn on_frame(&mut self, head: Head, payload: &[u8]) -> Result<(), Fault> {
        // §3.4: the client's preface ends with a SETTINGS frame.
        if !self.got_settings {
            if head.kind != kind::SETTINGS || head.flags & flag::ACK != 0 {
                return Err(Fault::Connection(ErrorCode::Protocol));
            }
            self.got_settings = true;
        }
        // §6.10: nothing may come between a HEADERS and its last CONTINUATION.
        if let Some(c) = &self.continuing
            && (head.kind != kind::CONTINUATION || head.stream != c.stream)
        {
            return Err(Fault::Connection(ErrorCode::Protocol));
        }
        match head.kind {
            kind::DATA => self.on_data(head, payload),
            kind::HEADERS => {
                let fragment = frame::headers_fragment(&head, payload).map_err(|fault| {
                    // The block still had to be decoded to keep HPACK in step; without it the
                    // connection cannot go on.
                    match fault {
                        Fault::Stream(..) => Fault::Connection(ErrorCode::Protocol),
                        other => other,
                    }
                })?;
                let end_stream = head.flags & flag::END_STREAM != 0;
                if head.flags & flag::END_HEADERS != 0 {
                    return self.on_block(head.stream, fragment, end_stream);
                }
                self.bounded_block(fragment.len())?;
                self.continuing = Some(Box::new(Continuing {
                    stream: head.stream,
                    block: fragment.to_vec(),
                    end_stream,
                }));
                Ok(())
            }
            kind::CONTINUATION => {
                let Some(mut c) = self.continuing.take() else {
                    return Err(Fault::Connection(ErrorCode::Protocol));
                };
                self.bounded_block(c.block.len() + payload.len())?;
                c.block.extend_from_slice(payload);
                if head.flags & flag::END_HEADERS != 0 {
                    return self.on_block(c.stream, &c.block, c.end_stream);
                }
                self.continuing = Some(c);
                Ok(())
            }
            kind::PRIORITY => frame::check_priority(&head, payload),
            kind::RST_STREAM => {
                self.idle_stream(head.stream)?;
                self.on_reset(head.stream);
                Ok(())
            }
            kind::SETTINGS => {
                if head.flags & flag::ACK == 0 {
                    self.on_settings(payload)?;
                    frame::write_settings_ack(&mut self.out);
                }
                Ok(())
            }
            kind::PING => {
                if head.flags & flag::ACK == 0 {
                    let bytes: &[u8; 8] = payload
                        .try_into()
                        .map_err(|_| Fault::Connection(ErrorCode::FrameSize))?;
                    frame::write_ping_ack(&mut self.out, bytes);
                }
                Ok(())
            }
            kind::GOAWAY => {
                // No new stream from the client; those open are answered.
                self.peer_going_away = true;
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                let increment = frame::window_increment(&head, payload)?;
                if head.stream == 0 {
                    return self.send.grow(increment).map_err(Fault::Connection);
                }
                self.idle_stream(head.stream)?;
                if let Some(stream) = self.streams.get_mut(&head.stream) {
                    stream
                        .send
                        .grow(increment)
                        .map_err(|code| Fault::Stream(head.stream, code))?;
                }
                Ok(())
            }
            // §5.5: unknown kinds are ignored.
            _ => Ok(()),
        }
    }

    /// §5.1: a frame that needs an opened stream, on one the client has not opened yet.
    fn idle_stream(&self, id: u32) -> Result<(), Fault> {
        match id > self.last_stream {
            true => Err(Fault::Connection(ErrorCode::Protocol)),
            false => Ok(()),
        }
    }

    /// A header block within `max-head` (and a little for HPACK's own bytes); a longer one is
    /// a CONTINUATION flood or a head no backend would take.
    fn bounded_block(&self, len: usize) -> Result<(), Fault> {
        match len > self.max_head + 1024 {
            true => Err(Fault::Connection(ErrorCode::EnhanceYourCalm)),
            false => Ok(()),
        }
    }

    fn on_settings(&mut self, payload: &[u8]) -> Result<(), Fault> {
        for (id, value) in frame::settings(payload)? {
            match id {
                setting::INITIAL_WINDOW_SIZE => {
                    // §6.9.2: every stream's window moves by the difference.
                    let delta = value as i64 - self.peer_initial_window as i64;
                    self.peer_initial_window = value;
                    for stream in self.streams.values_mut() {
                        stream.send.shift(delta).map_err(Fault::Connection)?;
                    }
                }
                setting::MAX_FRAME_SIZE => self.peer_max_frame = value as usize,
                // The table size the client's decoder allows: our encoder keeps no table.
                // Push: we never push. The client's stream limit: we open none.
                _ => {}
            }
        }
        Ok(())
    }

    /// A complete header block on `id`: a new request, or a request's trailers.
    fn on_block(&mut self, id: u32, block: &[u8], end_stream: bool) -> Result<(), Fault> {
        let trailers = self.streams.get(&id).map(|s| s.remote_done);
        let mut head = match trailers {
            Some(_) => message::Head::trailers(self.max_head),
            None => message::Head::request(self.max_head),
        };
        // Decoded whatever becomes of the stream: the table must stay in step (RFC 7541 §2.2).
        self.decoder
            .decode(block, |name, value| head.field(name, value))
            .map_err(|_| Fault::Connection(ErrorCode::Compression))?;
        match trailers {
            // §8.1: trailers end the stream; more on a stream the client ended is an error.
            Some(true) => return Err(Fault::Stream(id, ErrorCode::StreamClosed)),
            Some(false) if !end_stream => return Err(Fault::Stream(id, ErrorCode::Protocol)),
            Some(false) => {
                let Ok(fields) = head.into_trailers() else {
                    return Err(Fault::Stream(id, ErrorCode::Protocol));
                };
                return self.end_remote(id, Some(fields));
            }
            None => {}
        }
        // §5.1.1: a client opens odd streams, each above the last.
        if id.is_multiple_of(2) {
            return Err(Fault::Connection(ErrorCode::Protocol));
        }
        if id <= self.last_stream {
            // A stream already closed (ours reset it, say): its block was decoded, that is all.
            return Ok(());
        }
        self.last_stream = id;
        if self.going_away || self.peer_going_away {
            // §6.8: after GOAWAY, a stream above the last one we named is ignored.
            return Ok(());
        }
        if self.streams.len() >= self.max_streams as usize {
            return Err(Fault::Stream(id, ErrorCode::RefusedStream));
        }
        // The common request (a `GET`, say) goes to the own HTTP/1.1 hop with its head as it
        // decoded: no map (`Head::plain`). Any other, to `HttpServer::request` as a request.
        if let Some(up) = self.plain_hop()
            && let Some(plain) = head.plain(end_stream)
        {
            let head_only = plain.method == hyper::Method::HEAD;
            let (server, info) = (Arc::clone(&self.server), Arc::clone(&self.info));
            let hints = self.hints(id);
            let answer = boxed_in_place(move || async move {
                server.proxied_plain(up, plain, &info, hints).await
            });
            self.open(id, answer, None, end_stream, head_only);
            return Ok(());
        }
        let started = Instant::now();
        let request = match head.into_request() {
            Ok(request) => request,
            Err(malformed) => {
                self.refuse(id, malformed, end_stream, started);
                return Ok(());
            }
        };
        // The length the exchange will read from the fields (two lines of 5 are 5, RFC 9110
        // §8.6), which the DATA must match (§8.1.1): a backend is sent that length.
        let length = exchange::declared_length(
            request
                .headers()
                .get_all(hyper::header::CONTENT_LENGTH)
                .iter()
                .map(|v| (&b"content-length"[..], v.as_bytes())),
        );
        if end_stream && length.is_some_and(|n| n > 0) {
            // §8.1.1: a length its DATA (none) cannot match.
            let malformed = Malformed {
                status: StatusCode::BAD_REQUEST,
                why: "Content-Length without a body",
            };
            self.refuse(id, malformed, end_stream, started);
            return Ok(());
        }
        let recv = (!end_stream).then(|| {
            Arc::new(Mutex::new(Recv {
                length,
                ..Recv::default()
            }))
        });
        let body = RecvBody(recv.clone());
        let head_only = request.method() == hyper::Method::HEAD;
        let mut request = request.map(|()| Inbound::Own(body));
        request.extensions_mut().insert(self.hints(id));
        let (server, info) = (Arc::clone(&self.server), Arc::clone(&self.info));
        let answer = boxed_in_place(move || async move { server.request(request, &info).await });
        self.open(id, answer, recv, end_stream, head_only);
        Ok(())
    }

    /// Where stream `id`'s hints go.
    fn hints(&mut self, id: u32) -> StreamHints {
        self.hints.get_or_insert_with(Arc::default).stream(id)
    }

    /// The hints the streams' backends sent since the last look, each as a HEADERS frame
    /// before its stream's answer (RFC 9113 §8.1), so called before any answer is taken. A
    /// hint for a stream that is gone or answered already, or one more than a client that
    /// does not read can hold ([`HIGH_WATER`]), is dropped: a hint is advice.
    fn write_hints(&mut self, cx: &Context<'_>) {
        let Some(queue) = &self.hints else { return };
        let mut hints = Vec::new();
        queue.take(&mut hints, cx);
        for (id, block) in hints {
            let Some(stream) = self.streams.get(&id) else {
                continue;
            };
            if stream.answered || self.failing.is_some() || self.out.len() >= HIGH_WATER {
                continue;
            }
            if self.out.capacity() == 0 {
                self.out = spare::buffer();
            }
            let max_frame = self.peer_max_frame as u32;
            frame::encode_headers(&mut self.out, id, false, max_frame, |out| {
                out.extend_from_slice(&block)
            });
        }
    }

    /// The configuration, when the own hop takes requests under it (`h1::hop::takes`).
    fn plain_hop(&self) -> Option<Arc<Upstreams>> {
        if !crate::http::h1::enabled() {
            return None;
        }
        let up = self.server.upstreams();
        crate::http::h1::takes(&up).then_some(up)
    }

    /// A stream, with the future making its answer.
    fn open(
        &mut self,
        id: u32,
        answer: Pin<Box<dyn Future<Output = Response<Download>> + Send>>,
        recv: Option<Arc<Mutex<Recv>>>,
        end_stream: bool,
        head_only: bool,
    ) {
        self.answers
            .get_or_insert_with(FuturesUnordered::new)
            .push(Tagged {
                id,
                answer: Some(answer),
                waker: None,
            });
        self.streams.insert(
            id,
            Stream {
                recv,
                remote_done: end_stream,
                recv_window: STREAM_WINDOW as usize,
                ungranted: 0,
                received: 0,
                send: Window::new(self.peer_initial_window),
                making: true,
                body: None,
                pending: None,
                answered: false,
                head: head_only,
                local_done: false,
            },
        );
    }

    /// A malformed request (§8.1.1): never forwarded; answered with its status, and the
    /// stream reset if the client had not ended it (§8.1).
    fn refuse(&mut self, id: u32, malformed: Malformed, end_stream: bool, started: Instant) {
        self.count_refused();
        if self.failing.is_some() {
            return;
        }
        self.server
            .refused_head(self.info.client, malformed.status, started, &malformed.why);
        let mut block = Vec::new();
        hpack::encode_status(&mut block, malformed.status.as_u16());
        hpack::encode_field(&mut block, b"content-length", b"0");
        frame::write_headers(&mut self.out, id, &block, true, self.peer_max_frame as u32);
        if !end_stream {
            frame::write_rst_stream(&mut self.out, id, ErrorCode::NoError);
        }
    }

    fn on_data(&mut self, head: Head, payload: &[u8]) -> Result<(), Fault> {
        // §6.9.1: the whole payload, padding included, counts against both windows.
        let len = head.len;
        if len > self.recv_window {
            return Err(Fault::Connection(ErrorCode::FlowControl));
        }
        self.recv_window -= len;
        let data = frame::unpad(&head, payload)?;
        // Padding is never delivered: granted again at once.
        self.ungranted += len - data.len();
        let end_stream = head.flags & flag::END_STREAM != 0;
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            self.idle_stream(head.stream)?;
            // A stream already closed: its bytes are dropped and the window given back.
            self.ungranted += data.len();
            return Ok(());
        };
        if stream.remote_done {
            self.ungranted += data.len();
            return Err(Fault::Stream(head.stream, ErrorCode::StreamClosed));
        }
        if len > stream.recv_window {
            self.ungranted += data.len();
            return Err(Fault::Stream(head.stream, ErrorCode::FlowControl));
        }
        stream.recv_window -= len;
        stream.ungranted += len - data.len();
        stream.received += data.len() as u64;
        let Some(recv) = &stream.recv else {
            return Err(Fault::Stream(head.stream, ErrorCode::StreamClosed));
        };
        let mut shared = lock(recv);
        // §8.1.1: more bytes than the request's Content-Length, or fewer at its end.
        let length = shared.length;
        if length.is_some_and(|n| stream.received > n || end_stream && stream.received != n) {
            shared.failed = Some("DATA does not match Content-Length");
            if let Some(reader) = shared.reader.take() {
                reader.wake();
            }
            drop(shared);
            self.ungranted += data.len();
            return Err(Fault::Stream(head.stream, ErrorCode::Protocol));
        }
        if !data.is_empty() {
            shared.buffered += data.len();
            shared.chunks.push_back(Bytes::copy_from_slice(data));
        }
        if end_stream {
            shared.ended = true;
        }
        if let Some(reader) = shared.reader.take() {
            reader.wake();
        }
        drop(shared);
        if end_stream {
            stream.remote_done = true;
            self.maybe_close(head.stream);
        }
        Ok(())
    }

    /// The client ended its side, with `trailers` or not.
    fn end_remote(&mut self, id: u32, trailers: Option<HeaderMap>) -> Result<(), Fault> {
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        stream.remote_done = true;
        if let Some(recv) = &stream.recv {
            let mut shared = lock(recv);
            if shared.length.is_some_and(|n| stream.received != n) {
                shared.failed = Some("DATA does not match Content-Length");
                drop(shared);
                return Err(Fault::Stream(id, ErrorCode::Protocol));
            }
            shared.trailers = trailers;
            shared.ended = true;
            if let Some(reader) = shared.reader.take() {
                reader.wake();
            }
        }
        self.maybe_close(id);
        Ok(())
    }

    /// RST_STREAM from the client: the stream ends at once; one reset before its answer counts
    /// against the budget.
    fn on_reset(&mut self, id: u32) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        let early = !stream.answered;
        self.close_stream(id);
        if early {
            let now = Instant::now();
            if now.duration_since(self.resets_since) >= std::time::Duration::from_secs(1) {
                (self.resets, self.resets_since) = (0, now);
            }
            self.resets += 1;
            if self.resets > self.budget {
                tracing::warn!(client = %self.info.client, budget = self.budget,
                    "HTTP/2: more streams reset by the client in a second than the budget; closing");
                self.fault(Fault::Connection(ErrorCode::EnhanceYourCalm));
            }
        }
    }

    /// Removes a stream: its answer stops being made, its body's unread bytes are given back
    /// to the connection's window.
    fn close_stream(&mut self, id: u32) {
        let Some(stream) = self.streams.remove(&id) else {
            return;
        };
        if stream.making {
            self.abort(id);
        }
        if let Some(recv) = stream.recv {
            let mut shared = lock(&recv);
            if !shared.ended && shared.failed.is_none() {
                shared.failed = Some("the stream was reset");
            }
            self.ungranted += shared.buffered + shared.consumed + stream.ungranted;
            shared.chunks.clear();
            shared.buffered = 0;
            shared.consumed = 0;
            if let Some(reader) = shared.reader.take() {
                reader.wake();
            }
        }
        if self.streams.is_empty() {
            self.idle_since = tokio::time::Instant::now();
            // An idle connection keeps no table of streams (each entry is large).
            self.streams = HashMap::with_hasher(self.streams.hasher().clone());
        }
    }

    /// A stream both sides ended goes; one we answered whose request is still coming is
    /// reset, as §8.1 allows, so the client stops sending what nobody will read.
    fn maybe_close(&mut self, id: u32) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        if !stream.local_done {
            return;
        }
        if !stream.remote_done {
            frame::write_rst_stream(&mut self.out, id, ErrorCode::NoError);
        }
        self.close_stream(id);
    }

    /// Stream `id`'s answer stops being made: its future is dropped now, and its entry leaves
    /// the queue at the queue's next poll (see [`Tagged`]).
    fn abort(&mut self, id: u32) {
        let Some(answers) = self.answers.as_mut() else {
            return;
        };
        if let Some(entry) = answers.iter_mut().find(|entry| entry.id == id) {
            entry.answer = None;
            if let Some(waker) = entry.waker.take() {
                waker.wake();
            }
        }
    }

    /// Answers made since the last look: their heads go out.
    fn poll_answers(&mut self, cx: &mut Context<'_>) {
        // Taken out while polled: closing a stream below needs the whole connection.
        let Some(mut answers) = self.answers.take() else {
            return;
        };
        while let Poll::Ready(Some(made)) = Pin::new(&mut answers).poll_next(cx) {
            // Hints that came while the streams were polled, this one's among them, go first.
            self.write_hints(cx);
            let (id, Some(response)) = made else {
                continue;
            };
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            stream.making = false;
            stream.answered = true;
            let (parts, mut body) = response.into_parts();
            let end = stream.head || body.is_end_stream();
            let block = body.take_block();
            if self.out.capacity() == 0 {
                // Frames to write: a whole buffer now, not one grown from nothing (a
                // reallocation at each doubling) as they are written. Taken only here, so that a
                // stream that waits long (a gRPC stream, say) costs no buffer meanwhile.
                self.out = spare::buffer();
            }
            frame::encode_headers(&mut self.out, id, end, self.peer_max_frame as u32, |out| {
                match block {
                    Some(block) => {
                        hpack::encode_status(out, parts.status.as_u16());
                        out.extend_from_slice(&block);
                    }
                    None => message::answer_block(out, parts.status, &parts.headers),
                }
            });
            if end {
                stream.local_done = true;
                self.maybe_close(id);
            } else {
                stream.body = Some(body);
            }
        }
        self.write_hints(cx);
        self.answers = Some(answers);
    }

    /// What request bodies' readers took since the last look is granted to the client again,
    /// a quarter of a window at a time; each reader wakes the connection when it takes more.
    fn grant_windows(&mut self, cx: &mut Context<'_>) {
        for (&id, stream) in self.streams.iter_mut() {
            let Some(recv) = &stream.recv else { continue };
            let mut shared = lock(recv);
            let taken = std::mem::take(&mut shared.consumed);
            if !shared
                .connection
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                shared.connection = Some(cx.waker().clone());
            }
            drop(shared);
            stream.ungranted += taken;
            self.ungranted += taken;
            if !stream.remote_done && stream.ungranted >= STREAM_GRANT {
                frame::write_window_update(&mut self.out, id, stream.ungranted as u32);
                stream.recv_window += stream.ungranted;
                stream.ungranted = 0;
            }
        }
        if self.ungranted >= CONNECTION_GRANT || (self.ungranted > 0 && self.streams.is_empty()) {
            frame::write_window_update(&mut self.out, 0, self.ungranted as u32);
            self.recv_window += self.ungranted;
            self.ungranted = 0;
        }
    }

    /// Takes answers' bodies as far as the client's windows and [`HIGH_WATER`] allow.
    fn pump_bodies(&mut self, cx: &mut Context<'_>) {
        let mut ids = IDS.take();
        ids.clear();
        ids.extend(
            self.streams
                .iter()
                .filter(|(_, s)| s.body.is_some())
                .map(|(&id, _)| id),
        );
        for &id in &ids {
            self.pump(id, cx);
        }
        IDS.set(ids);
    }

    fn pump(&mut self, id: u32, cx: &mut Context<'_>) {
        let max_frame = self.peer_max_frame;
        loop {
            if self.out.len() - self.written > HIGH_WATER {
                // Taken up again once this is written: nothing else would wake the task.
                self.full = true;
                return;
            }
            let Some(stream) = self.streams.get_mut(&id) else {
                return;
            };
            if let Some(chunk) = &mut stream.pending {
                let n = chunk
                    .len()
                    .min(stream.send.available())
                    .min(self.send.available())
                    .min(max_frame);
                if n == 0 {
                    // Waits for a WINDOW_UPDATE, which comes with a read.
                    return;
                }
                let last =
                    n == chunk.len() && stream.body.as_ref().is_some_and(Body::is_end_stream);
                frame::write_data(&mut self.out, id, &chunk[..n], last);
                let _ = stream.send.take(n);
                let _ = self.send.take(n);
                chunk.advance(n);
                if chunk.is_empty() {
                    stream.pending = None;
                }
                if last {
                    stream.body = None;
                    stream.local_done = true;
                    self.maybe_close(id);
                    return;
                }
                continue;
            }
            let Some(body) = stream.body.as_mut() else {
                return;
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Pending => return,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if !data.is_empty() {
                            stream.pending = Some(data);
                        } else if stream.body.as_ref().is_some_and(Body::is_end_stream) {
                            stream.pending = None;
                            frame::write_data(&mut self.out, id, &[], true);
                            stream.body = None;
                            stream.local_done = true;
                            self.maybe_close(id);
                            return;
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let mut block = Vec::new();
                            message::trailers_block(&mut block, &trailers);
                            frame::write_headers(&mut self.out, id, &block, true, max_frame as u32);
                            stream.body = None;
                            stream.local_done = true;
                            self.maybe_close(id);
                            return;
                        }
                    }
                },
                Poll::Ready(None) => {
                    frame::write_data(&mut self.out, id, &[], true);
                    stream.body = None;
                    stream.local_done = true;
                    self.maybe_close(id);
                    return;
                }
                Poll::Ready(Some(Err(e))) => {
                    // The answer broke off (its backend failed mid-body): the client learns
                    // it from a reset, never from a body that merely stops.
                    tracing::debug!(client = %self.info.client, "HTTP/2 answer cut short: {e}");
                    frame::write_rst_stream(&mut self.out, id, ErrorCode::Internal);
                    stream.body = None;
                    self.close_stream(id);
                    return;
                }
            }
        }
    }

    /// Writes what is owed; the buffer goes when it is empty.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.written == 0 && !self.out.is_empty() {
            // A new batch: the client's time to take it starts now.
            self.progress_at = tokio::time::Instant::now();
        }
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            self.progress_at = tokio::time::Instant::now();
        }
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        self.written = 0;
        self.out.clear();
        if self.streams.is_empty() && self.out.capacity() > 0 {
            // Idle: the buffer goes back to the thread's spares.
            spare::give_buffer(std::mem::take(&mut self.out));
        }
        Poll::Ready(Ok(()))
    }
}
