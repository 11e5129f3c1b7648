//! An HTTP/2 client for the tests of chapter 17 (and chapter 13's farm): hyper's own client,
//! as a program using the balancer would be, with bodies fed frame by frame.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper::header::HeaderMap;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use tokio::sync::mpsc;

/// A body fed from a channel, frame by frame: how a streaming client (or server) sends. With
/// `empty`, there is none: the request's HEADERS frame ends its stream.
pub struct Frames {
    frames: mpsc::Receiver<Frame<Bytes>>,
    empty: bool,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.frames.poll_recv(cx).map(|f| f.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.empty
    }
}

/// A body and the sender that feeds it.
pub fn frames() -> (mpsc::Sender<Frame<Bytes>>, Frames) {
    let (tx, frames) = mpsc::channel(16);
    (
        tx,
        Frames {
            frames,
            empty: false,
        },
    )
}

/// No body at all, as a browser's `GET` has: `END_STREAM` on the HEADERS frame.
pub fn empty() -> Frames {
    let (_, frames) = mpsc::channel(1);
    Frames {
        frames,
        empty: true,
    }
}

/// A body of one piece, then the end.
pub fn whole(bytes: &[u8]) -> Frames {
    let (tx, body) = frames();
    let _ = tx.try_send(Frame::data(Bytes::copy_from_slice(bytes)));
    body
}

/// The next frame of `body`, or `None` at its end.
pub async fn next(body: &mut Incoming) -> Option<Frame<Bytes>> {
    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
        .await
        .map(|f| f.expect("a body frame"))
}

/// Everything `body` carries: its data, and its trailers if any.
pub async fn collect(mut body: Incoming) -> (Vec<u8>, Option<HeaderMap>) {
    let (mut data, mut trailers) = (Vec::new(), None);
    while let Some(frame) = next(&mut body).await {
        match frame.into_data() {
            Ok(bytes) => data.extend_from_slice(&bytes),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    (data, trailers)
}

/// One gRPC message: compressed flag, length, bytes (gRPC over HTTP/2,
/// "Length-Prefixed-Message").
pub fn grpc_message(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// An HTTP/2 connection by prior knowledge in clear text.
pub async fn h2c(addr: SocketAddr) -> SendRequest<Frames> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("an HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

/// An HTTP/2 connection over TLS to `localhost` at `addr`, `h2` agreed in ALPN (asserted).
pub async fn h2_over_tls(addr: SocketAddr, config: &Arc<ClientConfig>) -> SendRequest<Frames> {
    let mut config = (**config).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("an HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

/// A runtime for one test's client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
