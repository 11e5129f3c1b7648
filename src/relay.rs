//! The relay of chapters 10 and 11: chapter 2's forwarding ([`crate::conn::forward`]), made
//! into what an operator's balancer needs.
//!
//! * **Counted as it moves** ([`relay`]): bytes each way go into the backend's counters while a
//!   transfer runs, so `/metrics` sees a long download before it ends, and the access log
//!   knows which side failed.
//! * **Closed when idle** (chapter 10): a pair where neither side moved a byte for
//!   `idle-timeout` is closed, by a deadline that moves rather than a timer reset per read.
//! * **No buffer while idle** ([`relay_conns`], chapter 11): on plain TCP both ways, wait until
//!   a socket is readable and only then borrow a buffer from a per-thread pool; an idle pair
//!   holds none.
//! * **Bulk bytes never enter the process** (chapter 11): once a read fills a whole buffer, the
//!   direction switches to `splice(2)` through a pooled pipe (`crate::splice`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::conn::{BUFFER_SIZE, Conn};

/// How a proxied connection ended: the access log's `end=`.
#[derive(Debug)]
pub enum End {
    /// Both directions reached end of stream.
    Done,
    /// Nothing moved either way for the idle timeout (chapter 10).
    IdleTimeout,
    /// Reading from or writing to the client failed (typically a reset).
    Client(io::Error),
    /// Reading from or writing to the backend failed.
    Backend(io::Error),
}

impl End {
    /// The short form for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            End::Done => "done",
            End::IdleTimeout => "idle-timeout",
            End::Client(_) => "client-error",
            End::Backend(_) => "backend-error",
        }
    }
}

/// What [`relay`] moved, and how it ended.
#[derive(Debug)]
pub struct Relayed {
    /// Bytes from the client to the backend.
    pub up: u64,
    /// Bytes from the backend to the client.
    pub down: u64,
    pub end: End,
}

/// [`forward`](crate::conn::forward), for the balancer: adds the bytes to `up_total` and `down_total` as they move
/// (so `/metrics` sees a long transfer while it runs), tells which side failed, and with `idle`
/// closes the pair once neither direction has moved a byte for that long.
///
/// The idle timer is a deadline that moves, not a timer reset on every read: each read stores
/// the time in one atomic, and a watchdog sleeps until the last activity plus `idle`, checks,
/// and sleeps again if something moved meanwhile. A busy connection costs one clock read per
/// chunk; an idle one, one timer wake-up per `idle`.
pub async fn relay<A, B>(
    client: &mut A,
    backend: &mut B,
    idle: Option<Duration>,
    up_total: &AtomicU64,
    down_total: &AtomicU64,
) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let tally = Tally::new();
    let mut a = Metered::new(client, tally.meter(&tally.up, up_total));
    let mut b = Metered::new(backend, tally.meter(&tally.down, down_total));
    let copied = async {
        let result =
            tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUFFER_SIZE, BUFFER_SIZE)
                .await;
        result.err().map(|e| match a.failed {
            true => End::Client(e),
            false => End::Backend(e),
        })
    };
    // Pinned here and lent to `settle`: moved into it, the copying future would be laid out
    // twice in this task's state (once as this function's local, once inside `settle`),
    // and an idle pair's task would be that much bigger (chapter 11's idle memory).
    let end = tally.settle(std::pin::pin!(copied), idle).await;
    tally.relayed(end)
}

/// The most client bytes kept while waiting for a backend's first answer (see
/// [`until_answered`]): a TLS ClientHello is one record, at most 16 KiB, and rarely over 2.
/// A client that sends more before any answer is past what a retry can be for.
pub const MAX_KEPT: usize = 64 * 1024;

/// How the wait for a backend's first byte ended.
#[derive(Debug)]
pub enum FirstAnswer {
    /// The backend answered (its first bytes are already at the client), or the client sent
    /// more than [`MAX_KEPT`]: relay as usual from here, no retry.
    Relay,
    /// The backend closed or reset the connection before sending a single byte: what the
    /// client sent, kept, may go to another backend.
    Unanswered(io::Error),
    /// The connection is over (the client failed, or nothing moved for the idle timeout).
    Ended(End),
}

/// What the client sent before any backend answered: its bytes, and whether it has ended its
/// side (a half-close is part of what it said, and goes to the next backend too).
#[derive(Debug, Default)]
pub struct Kept {
    bytes: Vec<u8>,
    ended: bool,
}

impl Kept {
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && !self.ended
    }

    /// Says it all again to `backend`, the next one tried.
    pub async fn replay(&self, backend: &mut Conn) -> io::Result<()> {
        use tokio::io::AsyncWriteExt as _;
        backend.write_all(&self.bytes).await?;
        backend.flush().await?;
        if self.ended {
            backend.shutdown().await?;
        }
        Ok(())
    }
}

/// Relays until `backend` sends its first byte, keeping a copy of everything the client sent
/// in `kept`, so that a backend that dies with the client's first bytes in hand (chapter 13:
/// an offloader killed with a ClientHello in its socket) can be replaced by another, and the
/// client never knows. `up` and `down` count what moved.
///
/// Safe only where a backend that closes without answering has done nothing with what it
/// received: a TLS handshake (a ClientHello changes nothing), HTTP's idempotent requests. Not
/// for a protocol whose server acts on a message and closes without a word, so it is a
/// per-backend option (`retry-unanswered`), off by default.
pub async fn until_answered(
    client: &mut Conn,
    backend: &mut Conn,
    kept: &mut Kept,
    idle: Option<Duration>,
    up: &mut u64,
    down: &mut u64,
) -> FirstAnswer {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut from_client = vec![0u8; BUFFER_SIZE];
    let mut from_backend = vec![0u8; BUFFER_SIZE];
    loop {
        let quiet = async {
            match idle {
                Some(idle) => tokio::time::sleep(idle).await,
                None => std::future::pending().await,
            }
        };
        let more = async {
            if kept.ended {
                // Said all it will say: only the backend is left to wait for.
                std::future::pending().await
            } else {
                client.read(&mut from_client).await
            }
        };
        tokio::select! {
            read = more => {
                let n = match read {
                    Ok(n) => n,
                    Err(e) => return FirstAnswer::Ended(End::Client(e)),
                };
                let sent = async {
                    if n == 0 {
                        // A client that half-closes may be waiting for the backend to see its
                        // end before it answers (HTTP/1.0, `nc -N`): pass it on now.
                        return backend.shutdown().await;
                    }
                    backend.write_all(&from_client[..n]).await?;
                    backend.flush().await
                };
                let sent = sent.await;
                kept.bytes.extend_from_slice(&from_client[..n]);
                kept.ended |= n == 0;
                if let Err(e) = sent {
                    return FirstAnswer::Unanswered(e);
                }
                *up += n as u64;
                if kept.bytes.len() > MAX_KEPT {
                    return FirstAnswer::Relay;
                }
            }
            read = backend.read(&mut from_backend) => {
                let n = match read {
                    Ok(0) => {
                        return FirstAnswer::Unanswered(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "closed before answering",
                        ));
                    }
                    Ok(n) => n,
                    Err(e) => return FirstAnswer::Unanswered(e),
                };
                let sent = async {
                    client.write_all(&from_backend[..n]).await?;
                    client.flush().await
                };
                return match sent.await {
                    Ok(()) => {
                        *down += n as u64;
                        FirstAnswer::Relay
                    }
                    Err(e) => FirstAnswer::Ended(End::Client(e)),
                };
            }
            () = quiet => return FirstAnswer::Ended(End::IdleTimeout),
        }
    }
}

/// A shutdown that finds the socket already closed (`ENOTCONN`) has nothing left to pass on,
/// and must not end the other direction, which may still be delivering. It happens after
/// [`until_answered`] passed on a client's half-close itself, and the relay, reading that
/// end again, passes it on a second time to a backend that has closed since.
fn already_closed(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

/// One connection's counts: bytes each way, and when the last byte moved either way.
struct Tally {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            start: Instant::now(),
            last: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        }
    }

    /// Counts one direction in `bytes` (`up` or `down`) and in the backend's `total`.
    fn meter<'a>(&'a self, bytes: &'a AtomicU64, total: &'a AtomicU64) -> Meter<'a> {
        Meter {
            tally: self,
            bytes,
            total,
        }
    }

    /// Waits for `copied` (both directions; `Some` on an error) or, with `idle`, for the
    /// connection to have been quiet that long, whichever comes first.
    async fn settle(
        &self,
        copied: impl Future<Output = Option<End>>,
        idle: Option<Duration>,
    ) -> End {
        let end = match idle {
            None => copied.await,
            Some(idle) => tokio::select! {
                end = copied => end,
                () = self.quiet_for(idle) => Some(End::IdleTimeout),
            },
        };
        end.unwrap_or(End::Done)
    }

    /// Resolves once the last byte is `idle` in the past.
    async fn quiet_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = self.start + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    fn relayed(self, end: End) -> Relayed {
        Relayed {
            up: self.up.into_inner(),
            down: self.down.into_inner(),
            end,
        }
    }
}

/// Where one direction counts what it moves.
struct Meter<'a> {
    tally: &'a Tally,
    /// This connection's bytes in this direction.
    bytes: &'a AtomicU64,
    /// The backend's total in this direction, for `/metrics`.
    total: &'a AtomicU64,
}

impl Meter<'_> {
    fn record(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.total.fetch_add(n, Ordering::Relaxed);
        let now = self.tally.start.elapsed().as_millis() as u64;
        self.tally.last.store(now, Ordering::Relaxed);
    }
}

/// [`relay`] for a client and a backend, taking the fast path when both are plain TCP.
///
/// `copy_bidirectional` owns a buffer per direction for the whole life of the connection:
/// 32 KiB for a pair that may sit idle for minutes. On plain TCP we can do better: wait until
/// the socket is *readable*, and only then borrow a buffer from a small per-thread pool, read,
/// write it on, and give it back. A connection holds a buffer only while its bytes are in
/// flight (while the destination is too slow to take them at once), and an idle one holds
/// none. TLS streams keep the generic path: rustls buffers records inside the stream anyway.
pub async fn relay_conns(
    client: &mut Conn,
    backend: &mut Conn,
    idle: Option<Duration>,
    up_total: &AtomicU64,
    down_total: &AtomicU64,
) -> Relayed {
    match (client, backend) {
        (Conn::Plain(c), Conn::Plain(b)) => relay_plain(c, b, idle, up_total, down_total).await,
        (c, b) => relay(c, b, idle, up_total, down_total).await,
    }
}

/// Which end of a [`pipe`] failed.
enum FailedEnd {
    Read(io::Error),
    Write(io::Error),
}

async fn relay_plain(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    idle: Option<Duration>,
    up_total: &AtomicU64,
    down_total: &AtomicU64,
) -> Relayed {
    let tally = Tally::new();
    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = backend.split();
    let up_meter = tally.meter(&tally.up, up_total);
    let down_meter = tally.meter(&tally.down, down_total);
    let ended = Ended::default();
    // Both directions in this one task, as `copy_bidirectional` does; the first error ends both.
    let copied = async {
        let up = async {
            pipe(&mut client_read, &mut backend_write, &up_meter, &ended)
                .await
                .map_err(|f| match f {
                    FailedEnd::Read(e) => End::Client(e),
                    FailedEnd::Write(e) => End::Backend(e),
                })
        };
        let down = async {
            pipe(&mut backend_read, &mut client_write, &down_meter, &ended)
                .await
                .map_err(|f| match f {
                    FailedEnd::Read(e) => End::Backend(e),
                    FailedEnd::Write(e) => End::Client(e),
                })
        };
        tokio::try_join!(up, down).err()
    };
    // Pinned here and lent to `settle`: moved into it, the copying future would be laid out
    // twice in this task's state (once as this function's local, once inside `settle`),
    // and an idle pair's task would be that much bigger (chapter 11's idle memory).
    let end = tally.settle(std::pin::pin!(copied), idle).await;
    tally.relayed(end)
}

/// How many directions of a pair have reached their end: see [`Ended::pass_on`].
#[derive(Default)]
struct Ended(std::sync::atomic::AtomicU8);

impl Ended {
    /// Passes `src`'s end on to `dst`, where it carries information. The first direction to
    /// end is a half-close the other peer must hear of (`shutdown(SHUT_WR)`: it may still be
    /// sending, and waits for our FIN to know the answer is complete). The second direction's
    /// shutdown would be followed at once by the `close` of the same socket, which sends the
    /// same FIN (its receive queue is empty: we read up to the peer's own FIN), so it is left
    /// to `close`: one system call fewer per connection (chapter 11, issue 19; nginx never
    /// shuts down, HAProxy 0.8 times per connection).
    async fn pass_on(&self, dst: &mut tokio::net::tcp::WriteHalf<'_>) -> Result<(), FailedEnd> {
        use tokio::io::AsyncWriteExt as _;
        if self.0.fetch_add(1, Ordering::AcqRel) == 0 {
            already_closed(dst.shutdown().await).map_err(FailedEnd::Write)?;
        }
        Ok(())
    }
}

/// Copies `src` to `dst` until `src` ends, then passes the end on (see [`Ended::pass_on`]).
/// Holds a pooled buffer only between a read and the end of its write.
async fn pipe(
    src: &mut tokio::net::tcp::ReadHalf<'_>,
    dst: &mut tokio::net::tcp::WriteHalf<'_>,
    meter: &Meter<'_>,
    ended: &Ended,
) -> Result<(), FailedEnd> {
    use std::pin::Pin;
    use std::task::Poll;
    use tokio::io::{AsyncRead as _, AsyncWriteExt as _, ReadBuf};
    // Set once a read fills a whole buffer: this direction carries a bulk stream, and from
    // then on its bytes go socket to socket through a pipe, never through our memory.
    #[cfg(target_os = "linux")]
    let mut splicing = false;
    loop {
        #[cfg(target_os = "linux")]
        if splicing {
            match splice_once(src.as_ref(), dst.as_ref(), meter).await? {
                Spliced::Moved => continue,
                Spliced::End => return ended.pass_on(dst).await,
                Spliced::Unavailable => splicing = false,
            }
        }
        src.readable().await.map_err(FailedEnd::Read)?;
        let mut buf = pool::take();
        let mut filled = ReadBuf::new(&mut buf);
        // One read attempt, through `poll_read` rather than `try_read`: on a short read (fewer
        // bytes than the buffer holds) tokio knows the socket is drained and clears its
        // readiness, so the next `readable()` sleeps at once instead of costing a `recv` that
        // answers EAGAIN. With request/response traffic that is one syscall in three.
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *src).poll_read(cx, &mut filled)))
                .await;
        let n = filled.filled().len();
        match polled {
            Poll::Ready(Ok(())) => {}
            // Either the wake-up was spurious (tokio cleared the readiness and will wake us),
            // or this task used up its cooperative budget (tokio asked to be polled again
            // later). Give the buffer back and really yield: looping straight back to
            // `readable()`, which may still say "ready", would spin without ever returning
            // to the scheduler, and on a one-thread runtime nothing else would run again.
            Poll::Pending => {
                pool::give(buf);
                tokio::task::yield_now().await;
                continue;
            }
            Poll::Ready(Err(e)) => {
                pool::give(buf);
                return Err(FailedEnd::Read(e));
            }
        }
        if n == 0 {
            pool::give(buf);
            return ended.pass_on(dst).await;
        }
        #[cfg(target_os = "linux")]
        if n == buf.len() && crate::splice::enabled() {
            splicing = true;
        }
        meter.record(n as u64);
        let written = dst.write_all(&buf[..n]).await;
        pool::give(buf);
        written.map_err(FailedEnd::Write)?;
    }
}

/// What one [`splice_once`] did.
#[cfg(target_os = "linux")]
enum Spliced {
    /// Bytes went from `src` to `dst` (or a wake-up was spurious).
    Moved,
    /// `src` reached its end.
    End,
    /// No pipe could be had, or the kernel cannot splice these sockets: copy instead.
    Unavailable,
}

/// Waits until `src` is readable, then moves what it has to `dst` through a pooled pipe,
/// waiting for `dst` to take all of it (back-pressure, as `write_all` does).
#[cfg(target_os = "linux")]
async fn splice_once(
    src: &TcpStream,
    dst: &TcpStream,
    meter: &Meter<'_>,
) -> Result<Spliced, FailedEnd> {
    use crate::splice::{Pipe, splice_in, splice_out};
    use tokio::io::Interest;
    src.readable().await.map_err(FailedEnd::Read)?;
    let Ok(pipe) = Pipe::take() else {
        return Ok(Spliced::Unavailable);
    };
    let n = match src.try_io(Interest::READABLE, || splice_in(src, &pipe)) {
        Ok(Ok(n)) => n,
        Ok(Err(_unavailable)) => {
            pipe.give();
            return Ok(Spliced::Unavailable);
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            pipe.give();
            return Ok(Spliced::Moved);
        }
        Err(e) => {
            pipe.give();
            return Err(FailedEnd::Read(e));
        }
    };
    if n == 0 {
        pipe.give();
        return Ok(Spliced::End);
    }
    meter.record(n as u64);
    let mut left = n;
    while left > 0 {
        // On an error the pipe is dropped, not pooled: it may still hold bytes.
        dst.writable().await.map_err(FailedEnd::Write)?;
        match dst.try_io(Interest::WRITABLE, || splice_out(&pipe, dst, left)) {
            Ok(0) => return Err(FailedEnd::Write(io::ErrorKind::WriteZero.into())),
            Ok(m) => left -= m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(FailedEnd::Write(e)),
        }
    }
    pipe.give();
    Ok(Spliced::Moved)
}

/// Forwarding buffers, kept per worker thread so that taking one is a few instructions and no
/// lock. A buffer taken on one thread may come back on another (a task can move between
/// awaits); each pool keeps at most [`pool::KEEP`] and frees the rest.
mod pool {
    use std::cell::RefCell;

    use super::BUFFER_SIZE;

    /// Buffers a thread keeps for reuse: enough for the connections that have bytes in
    /// flight at once on one thread, in practice.
    pub const KEEP: usize = 64;

    thread_local! {
        static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take() -> Box<[u8]> {
        FREE.with(|f| f.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice())
    }

    pub fn give(buf: Box<[u8]>) {
        FREE.with(|f| {
            let mut free = f.borrow_mut();
            if free.len() < KEEP {
                free.push(buf);
            }
        });
    }
}

/// One side of [`relay`]: counts what is read from it and notes whether it failed.
struct Metered<'a, S: ?Sized> {
    inner: &'a mut S,
    meter: Meter<'a>,
    failed: bool,
}

impl<'a, S: ?Sized> Metered<'a, S> {
    fn new(inner: &'a mut S, meter: Meter<'a>) -> Self {
        Metered {
            inner,
            meter,
            failed: false,
        }
    }

    fn note<T>(&mut self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(_)) = &poll {
            self.failed = true;
        }
        poll
    }
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Metered<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut *this.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            this.meter.record(n);
        }
        this.note(poll)
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut *this.inner).poll_write(cx, buf);
        this.note(poll)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut *this.inner).poll_flush(cx);
        this.note(poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut *this.inner)
            .poll_shutdown(cx)
            .map(already_closed);
        this.note(poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, duplex};

    /// Relays between two in-memory pipes; the test holds their far ends.
    fn pair() -> (
        (tokio::io::DuplexStream, tokio::io::DuplexStream),
        (tokio::io::DuplexStream, tokio::io::DuplexStream),
    ) {
        let (client, client_far) = duplex(64 * 1024);
        let (backend, backend_far) = duplex(64 * 1024);
        ((client, client_far), (backend, backend_far))
    }

    #[tokio::test(start_paused = true)]
    async fn idle_closes_only_after_a_full_quiet_period_and_counts_each_side() {
        let ((mut client, mut client_far), (mut backend, mut backend_far)) = pair();
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let idle = Duration::from_secs(10);
        let started = Instant::now();
        let relay = relay(&mut client, &mut backend, Some(idle), &up, &down);
        let traffic = async {
            // A byte every 6 s for 30 s: never 10 s of quiet, so never closed.
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                client_far.write_all(b"u").await.unwrap();
                let mut b = [0u8; 1];
                backend_far.read_exact(&mut b).await.unwrap();
                backend_far.write_all(b"dd").await.unwrap();
                let mut d = [0u8; 2];
                client_far.read_exact(&mut d).await.unwrap();
            }
            // Then quiet, with both pipes still open: only the idle timeout ends it.
            std::future::pending::<()>().await;
        };
        let relayed = tokio::select! {
            r = relay => r,
            () = traffic => unreachable!(),
        };
        assert!(matches!(relayed.end, End::IdleTimeout), "{:?}", relayed.end);
        assert_eq!((relayed.up, relayed.down), (5, 10));
        assert_eq!((up.into_inner(), down.into_inner()), (5, 10));
        // Closed 10 s after the last byte, at 30 s.
        assert_eq!(started.elapsed().as_secs(), 40);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clean_end_is_done_and_without_idle_nothing_times_out() {
        let ((mut client, mut client_far), (mut backend, mut backend_far)) = pair();
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let relay = relay(&mut client, &mut backend, None, &up, &down);
        let peers = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            client_far.write_all(b"bye").await.unwrap();
            client_far.shutdown().await.unwrap();
            let mut got = Vec::new();
            backend_far.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"bye");
            backend_far.shutdown().await.unwrap();
            // Keep the far ends open until the relay is done with them.
            std::future::pending::<()>().await;
        };
        let relayed = tokio::select! {
            r = relay => r,
            () = peers => unreachable!(),
        };
        assert!(matches!(relayed.end, End::Done), "{:?}", relayed.end);
        assert_eq!((relayed.up, relayed.down), (3, 0));
    }
}
