//! The project's own HTTP calls, as a client: a server registering with a balancer (chapter
//! 14), `assign-client` following its assignment (chapter 14), `ssl-farm` reading a tier's
//! `/metrics` to see a reload land (chapter 13), the etcd gateway (chapter 15).
//!
//! Each is one request on a fresh connection, through hyper's client: `Content-Length`,
//! chunked answers, early closes and malformed heads are handled by the parser the proxy
//! itself relies on, instead of a hand-written one per caller that reads "the second word of
//! the first line" and trusts the rest.

use std::io;
use std::pin::Pin;

use bytes::{Buf as _, Bytes, BytesMut};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::dummy::DummyBody;

/// What a request carries: a whole, small body (empty for none).
pub type Body = DummyBody;

/// A request body of `text`.
pub fn body(text: impl Into<String>) -> Body {
    DummyBody::text(text.into())
}

/// A whole answer, body included.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The value of header `name`, if it is there and readable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `request` on `io` (a fresh connection, plain or TLS) and returns the response as
/// soon as its head is in; the body streams on (see [`next_chunk`]). The connection closes
/// once the body is read or dropped.
pub async fn send<IO>(io: IO, request: Request<Body>) -> io::Result<Response<Incoming>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await.map_err(io::Error::other)
}

/// [`send`], then the whole body, refused past `limit` bytes (a misbehaving peer must not
/// make us hold an unbounded answer).
pub async fn fetch<IO>(io: IO, request: Request<Body>, limit: usize) -> io::Result<Answer>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (head, mut incoming) = send(io, request).await?.into_parts();
    let mut body = BytesMut::new();
    while let Some(chunk) = next_chunk(&mut incoming).await? {
        if body.len() + chunk.len() > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("answer larger than {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status: head.status,
        headers: head.headers,
        body: body.freeze(),
    })
}

/// The next data chunk of a body; `None` at its end.
pub async fn next_chunk(body: &mut Incoming) -> io::Result<Option<Bytes>> {
    loop {
        let frame =
            std::future::poll_fn(|cx| hyper::body::Body::poll_frame(Pin::new(&mut *body), cx))
                .await;
        match frame {
            None => return Ok(None),
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(frame)) => {
                if let Ok(mut data) = frame.into_data()
                    && data.has_remaining()
                {
                    return Ok(Some(data.copy_to_bytes(data.remaining())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A peer that answers `reply` to whatever it is sent.
    async fn peer(reply: &'static [u8]) -> tokio::net::TcpStream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(reply).await;
        });
        tokio::net::TcpStream::connect(addr).await.unwrap()
    }

    fn get() -> Request<Body> {
        Request::get("/metrics")
            .header("host", "test")
            .body(body(""))
            .unwrap()
    }

    #[tokio::test]
    async fn chunked_answers_are_read_whole_and_oversized_ones_refused() {
        let reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-served-by: s1\r\n\r\n\
                      3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let answer = fetch(peer(reply).await, get(), 100).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("x-served-by"), Some("s1"));
        assert_eq!(&answer.body[..], b"abcde");
        let e = fetch(peer(reply).await, get(), 4).await.unwrap_err();
        assert!(e.to_string().contains("larger than 4 bytes"), "{e}");
    }

    #[tokio::test]
    async fn garbage_and_a_truncated_body_are_errors() {
        assert!(
            fetch(peer(b"SSH-2.0-OpenSSH\r\n\r\n").await, get(), 100)
                .await
                .is_err()
        );
        let short = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc";
        assert!(fetch(peer(short).await, get(), 100).await.is_err());
    }
}
