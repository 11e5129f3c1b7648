//! Forwarding bytes between a client and a backend: the heart of a layer-4 proxy.
//!
//! The Go tutorial reads once into a 1024-byte buffer, writes that to the backend, reads once
//! more and writes the answer back. Anything longer than 1024 bytes is cut, anything that
//! arrives in two TCP segments is cut, and its buffers are package-level variables shared by
//! every connection, so one client can receive bytes left over from another.
//!
//! A byte proxy must instead *stream*: copy in both directions at once, for as long as either
//! side has something to say, and pass on a half-close. When the client shuts down its write
//! side (`shutdown(SHUT_WR)`, what `nc -N` or an HTTP/1.0 client does after its request) we shut
//! down our write side towards the backend, and keep relaying the backend's answer until the
//! backend closes too. Closing both directions at the first EOF would cut the response short.
//!
//! [`tokio::io::copy_bidirectional_with_sizes`] does exactly this: one buffer per direction, owned
//! by this connection's task, polled from a single task so no locking is involved.
//!
//! [`Conn`] is one side of a connection whichever way it is wrapped (plain TCP, or TLS that we
//! terminate or originate, chapters 5 and 6), so that everything that forwards is written once.
//! Chapters 10 and 11 build a metered, idle-aware and zero-copy relay on these pieces: that is
//! [`crate::relay`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes buffered per direction per connection. 16 KiB holds one full TLS record, so a TLS side
/// is read and written a record at a time.
pub const BUFFER_SIZE: usize = 16 * 1024;

/// Copies `a → b` and `b → a` until both directions reached end of stream, propagating
/// half-closes. Returns the bytes copied `(a → b, b → a)`.
pub async fn forward<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, BUFFER_SIZE, BUFFER_SIZE).await
}

/// One side of a proxied connection: plain TCP, or TLS that we terminate (the client side) or
/// originate (the backend side).
///
/// An enum rather than `Box<dyn AsyncRead + AsyncWrite>`: the forwarding code is written once,
/// the compiler sees every case, and a TLS stream (large, since it holds rustls' buffers) is
/// boxed while a plain one is not.
pub enum Conn {
    Plain(TcpStream),
    /// Plain TCP from a client that `http-lb` accepted, not registered with the runtime until
    /// it must wait (see [`Fresh`]).
    Fresh(Fresh),
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A client's socket that is registered with the runtime's epoll only once a read or a write
/// would block (issue 31). Registering costs an `epoll_ctl` at the start, and tokio
/// deregisters with a second one before closing; `http-lb`'s clients arrive with their
/// request already in the socket (`net::defer_accept`), so a client that sends one request and
/// closes (`Connection: close`) is read, answered and closed without ever waiting: neither
/// call is needed. A kept-alive client waits for its next request, and is registered then.
#[derive(Debug)]
pub struct Fresh(FreshState);

#[derive(Debug)]
enum FreshState {
    /// Non-blocking, read and written with plain system calls.
    Raw(std::net::TcpStream),
    Registered(TcpStream),
    /// Its registration failed, and the socket was closed with it.
    Lost,
}

/// What a raw read zeroes first: tokio's buffers may be uninitialised, and a request's head
/// fits in far less than a whole buffer (a longer one is read on the next call).
pub const FRESH_READ: usize = 4096;

impl Fresh {
    /// `raw` must be in non-blocking mode.
    pub fn new(raw: std::net::TcpStream) -> Fresh {
        Fresh(FreshState::Raw(raw))
    }

    /// The runtime's stream, registering it now if it was not.
    pub fn registered(&mut self) -> io::Result<&mut TcpStream> {
        if matches!(self.0, FreshState::Raw(_)) {
            self.0 = match std::mem::replace(&mut self.0, FreshState::Lost) {
                FreshState::Raw(raw) => FreshState::Registered(TcpStream::from_std(raw)?),
                other => other,
            };
        }
        match &mut self.0 {
            FreshState::Registered(tcp) => Ok(tcp),
            _ => Err(io::Error::other("the socket's registration failed")),
        }
    }

    /// The runtime's stream, for what needs one (a TLS handshake, the PROXY header's peek).
    pub fn into_registered(mut self) -> io::Result<TcpStream> {
        self.registered()?;
        match self.0 {
            FreshState::Registered(tcp) => Ok(tcp),
            _ => Err(io::Error::other("the socket's registration failed")),
        }
    }

    /// Whether it had to wait, and so was registered with the runtime.
    pub fn is_registered(&self) -> bool {
        matches!(self.0, FreshState::Registered(_))
    }

    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        match &self.0 {
            FreshState::Raw(raw) => raw.local_addr(),
            FreshState::Registered(tcp) => tcp.local_addr(),
            FreshState::Lost => Err(io::Error::other("the socket's registration failed")),
        }
    }

    /// Waits until it may be read: at once while it is raw (the read says whether there was
    /// something), else as tokio's `readable`.
    pub async fn readable(&mut self) -> io::Result<()> {
        match &self.0 {
            FreshState::Raw(_) => Ok(()),
            _ => self.registered()?.readable().await,
        }
    }

    /// A read that never waits: `WouldBlock` when nothing is there.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.0 {
            FreshState::Raw(raw) => io::Read::read(raw, buf),
            FreshState::Registered(tcp) => tcp.try_read(buf),
            FreshState::Lost => Err(io::Error::other("the socket's registration failed")),
        }
    }

    /// `f` on the raw socket while it is raw: `None` when it would block (the caller then
    /// registers it and polls the runtime's stream), or when it is registered already.
    fn raw<T>(
        &mut self,
        mut f: impl FnMut(&mut std::net::TcpStream) -> io::Result<T>,
    ) -> Option<io::Result<T>> {
        let FreshState::Raw(raw) = &mut self.0 else {
            return None;
        };
        loop {
            match f(raw) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                done => return Some(done),
            }
        }
    }

    /// One operation: `raw` on the raw socket while it does not block, else `registered` on
    /// the runtime's stream (registering it first if need be).
    fn poll_io<T>(
        &mut self,
        raw: impl FnMut(&mut std::net::TcpStream) -> io::Result<T>,
        registered: impl FnOnce(Pin<&mut TcpStream>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if let Some(done) = self.raw(raw) {
            return Poll::Ready(done);
        }
        match self.registered() {
            Ok(tcp) => registered(Pin::new(tcp)),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncRead for Fresh {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Not `poll_io`: both halves need the buffer.
        let this = self.get_mut();
        let want = buf.remaining().min(FRESH_READ);
        match this.raw(|raw| io::Read::read(raw, buf.initialize_unfilled_to(want))) {
            Some(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Some(Err(e)) => Poll::Ready(Err(e)),
            None => match this.registered() {
                Ok(tcp) => Pin::new(tcp).poll_read(cx, buf),
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl AsyncWrite for Fresh {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_io(
            |raw| io::Write::write(raw, buf),
            |tcp| tcp.poll_write(cx, buf),
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_io(
            |raw| io::Write::write_vectored(raw, bufs),
            |tcp| tcp.poll_write_vectored(cx, bufs),
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Neither a raw socket nor tokio's buffers anything.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_io(
            |raw| raw.shutdown(std::net::Shutdown::Write),
            |tcp| tcp.poll_shutdown(cx),
        )
    }
}

/// A TLS peer that closes its TCP connection without sending `close_notify` makes rustls report
/// `UnexpectedEof`. For a browser that matters (a truncated page could pass as complete); for a
/// byte proxy in front of protocols that frame their own messages, it is simply the end of the
/// stream, and most HTTP clients close this way. We pass it on as an ordinary EOF.
fn lenient_eof(result: Poll<io::Result<()>>) -> Poll<io::Result<()>> {
    match result {
        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            tracing::debug!("TLS peer closed without close_notify: treated as end of stream");
            Poll::Ready(Ok(()))
        }
        other => other,
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Fresh(s) => Pin::new(s).poll_read(cx, buf),
            Conn::TlsServer(s) => lenient_eof(Pin::new(s).poll_read(cx, buf)),
            Conn::TlsClient(s) => lenient_eof(Pin::new(s).poll_read(cx, buf)),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Fresh(s) => Pin::new(s).poll_write(cx, buf),
            Conn::TlsServer(s) => Pin::new(s).poll_write(cx, buf),
            Conn::TlsClient(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Fresh(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::TlsServer(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::TlsClient(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Fresh(s) => s.is_write_vectored(),
            Conn::TlsServer(s) => s.is_write_vectored(),
            Conn::TlsClient(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Fresh(s) => Pin::new(s).poll_flush(cx),
            Conn::TlsServer(s) => Pin::new(s).poll_flush(cx),
            Conn::TlsClient(s) => Pin::new(s).poll_flush(cx),
        }
    }

    /// For TLS this sends `close_notify` before shutting down the TCP write side, so the peer
    /// sees a clean end of stream: the half-close travels through TLS too.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Fresh(s) => Pin::new(s).poll_shutdown(cx),
            Conn::TlsServer(s) => Pin::new(s).poll_shutdown(cx),
            Conn::TlsClient(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
