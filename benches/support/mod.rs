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

/// A bench that cannot set itself up, or whose traffic fails, stops with one line saying
/// what failed (as every binary does), not with a panic and a backtrace.
pub trait OrExit<T> {
    fn or_exit(self, what: &str) -> T;
}

impl<T, E: std::fmt::Display> OrExit<T> for Result<T, E> {
    fn or_exit(self, what: &str) -> T {
        self.unwrap_or_else(|e| {
            eprintln!("error: {what}: {e}");
            std::process::exit(1)
        })
    }
}

/// The address every bench server binds: an ephemeral port on the IPv4 loopback.
pub const LOOPBACK_ANY: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .or_exit("cannot start the runtime")
}

/// Copies everything back until EOF, then closes: the simplest backend for a byte proxy.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S) {
    let (mut r, mut w) = tokio::io::split(stream);
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// A plain (or, with `tls`, TLS) echo server on an ephemeral loopback port.
pub async fn spawn_echo(tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let listener = lb::net::bind(LOOPBACK_ANY).or_exit("cannot listen on 127.0.0.1");
    let addr = listener
        .local_addr()
        .or_exit("cannot read the bound address");
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
    let balancer = Balancer::new(backends, strategy, options).or_exit("cannot build the balancer");
    let listener = lb::net::bind(LOOPBACK_ANY).or_exit("cannot listen on 127.0.0.1");
    let addr = listener
        .local_addr()
        .or_exit("cannot read the bound address");
    tokio::spawn(balancer.run(listener, std::future::pending()));
    addr
}

/// Writes `data` while reading the same amount back, then closes.
pub async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin>(stream: S, data: &[u8]) {
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async {
        w.write_all(data).await.or_exit("cannot send");
        w.shutdown().await.or_exit("cannot half-close");
    };
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < data.len() {
            let n = r.read(&mut buf).await.or_exit("cannot receive");
            assert!(n > 0, "connection closed after {got} bytes");
            got += n;
        }
    };
    tokio::join!(write, read);
}

pub async fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.or_exit("cannot connect");
    s.set_nodelay(true).or_exit("cannot set TCP_NODELAY");
    s
}

pub async fn tls(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let name = ServerName::try_from("localhost").or_exit("bad server name");
    connector
        .connect(name, tcp(addr).await)
        .await
        .or_exit("TLS handshake failed")
}
