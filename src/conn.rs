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
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
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
            Conn::TlsServer(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::TlsClient(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::TlsServer(s) => s.is_write_vectored(),
            Conn::TlsClient(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::TlsServer(s) => Pin::new(s).poll_flush(cx),
            Conn::TlsClient(s) => Pin::new(s).poll_flush(cx),
        }
    }

    /// For TLS this sends `close_notify` before shutting down the TCP write side, so the peer
    /// sees a clean end of stream: the half-close travels through TLS too.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::TlsServer(s) => Pin::new(s).poll_shutdown(cx),
            Conn::TlsClient(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
