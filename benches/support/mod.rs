//! In-process servers and clients shared by the benchmarks: everything on 127.0.0.1.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use lb::backend::Backend;
use lb::balancer::{Balancer, Options};
use lb::strategy::StrategyKind;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Copies everything back until EOF, then closes: the simplest backend for a byte proxy.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S) {
    let (mut r, mut w) = tokio::io::split(stream);
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// A plain (or, with `tls`, TLS) echo server on an ephemeral loopback port.
pub async fn spawn_echo(tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let listener = lb::net::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.map(TlsAcceptor::from);
    tokio::spawn(async move {
        loop {
            let (stream, _) = lb::net::accept(&listener).await;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    None => echo(stream).await,
                    Some(a) => {
                        if let Ok(s) = a.accept(stream).await {
                            echo(s).await
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Starts a balancer over `backends` with `strategy`; returns its address.
pub async fn spawn_balancer(
    backends: Vec<Backend>,
    strategy: StrategyKind,
    options: Options,
) -> SocketAddr {
    let strategy = strategy.build(&lb::backend::members(&backends));
    let balancer = Balancer::new(backends, strategy, options).unwrap();
    let listener = lb::net::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(balancer.run(listener, std::future::pending()));
    addr
}

/// Writes `data` while reading the same amount back, then closes.
pub async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin>(stream: S, data: &[u8]) {
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < data.len() {
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed after {got} bytes");
            got += n;
        }
    };
    tokio::join!(write, read);
}

pub async fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

pub async fn tls(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp(addr).await).await.unwrap()
}
