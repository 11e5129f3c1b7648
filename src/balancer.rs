//! The load balancer: accept a client, pick a backend, dial it, forward, log.
//!
//! Chapter 3 moves the accept loop of chapter 2 here and adds the pick; chapters 5 and 6 add
//! the optional TLS on either side. Every step from 03 on, the benchmarks and the tests run
//! this same [`Balancer::run`].
//!
//! What happens per connection, each in its own task so that a slow or idle client never
//! delays another:
//!
//! 1. with a TLS listener, the handshake, bounded by a timeout;
//! 2. the strategy picks a backend;
//! 3. we dial it, bounded by a timeout, and for a TLS backend run the client handshake with the
//!    one shared client config (which verifies the backend and resumes sessions);
//! 4. [`proxy::forward`] until both directions are done;
//! 5. one log line: client, backend, bytes each way, duration, and the error if there was one.
//!
//! A failure at any step ends *this* connection, logged; the accept loop never sees it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::backend::{Backend, DEFAULT_CONNECT_TIMEOUT};
use crate::proxy::{self, Conn};
use crate::strategy::Strategy;
use crate::{net, tls};

/// What a balancer needs besides its backends and strategy. `Options::default()` is a plain
/// TCP balancer with the default timeouts.
#[derive(Clone)]
pub struct Options {
    /// Bound on dialling a backend, TCP and (for TLS backends) the TLS handshake.
    pub connect_timeout: Duration,
    /// Terminate TLS on the listener with this config (chapter 5).
    pub listener_tls: Option<Arc<ServerConfig>>,
    /// Bound on a client's TLS handshake.
    pub handshake_timeout: Duration,
    /// Speak TLS to the backends marked TLS, with this config (chapter 6).
    pub upstream_tls: Option<Arc<ClientConfig>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            listener_tls: None,
            handshake_timeout: tls::DEFAULT_HANDSHAKE_TIMEOUT,
            upstream_tls: None,
        }
    }
}

pub struct Balancer {
    backends: Vec<Backend>,
    strategy: Box<dyn Strategy>,
    connect_timeout: Duration,
    acceptor: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    connector: Option<TlsConnector>,
}

impl Balancer {
    /// Checks the set-up once, so that no connection can find it inconsistent later.
    pub fn new(
        backends: Vec<Backend>,
        strategy: Box<dyn Strategy>,
        options: Options,
    ) -> anyhow::Result<Balancer> {
        if backends.is_empty() {
            anyhow::bail!("no backend to balance over");
        }
        if options.upstream_tls.is_none()
            && let Some(b) = backends.iter().find(|b| b.server_name().is_some())
        {
            anyhow::bail!("backend {b} needs TLS but no TLS client configuration was given");
        }
        Ok(Balancer {
            backends,
            strategy,
            connect_timeout: options.connect_timeout,
            acceptor: options.listener_tls.map(TlsAcceptor::from),
            handshake_timeout: options.handshake_timeout,
            connector: options.upstream_tls.map(TlsConnector::from),
        })
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Serves `listener` until `shutdown` resolves. Connections in flight at that moment are
    /// not waited for (graceful draining is chapter 10's job).
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let this = Arc::new(self);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                // `biased`: once asked to stop, stop, even if clients keep arriving.
                biased;
                () = &mut shutdown => return,
                (stream, peer) = net::accept(&listener) => {
                    tokio::spawn(Arc::clone(&this).serve(stream, peer));
                }
            }
        }
    }

    async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let started = Instant::now();
        let mut client = match &self.acceptor {
            None => Conn::Plain(stream),
            Some(acceptor) => match tls::accept(acceptor, stream, self.handshake_timeout).await {
                Ok(tls) => Conn::TlsServer(Box::new(tls)),
                Err(e) => {
                    tracing::warn!(client = %peer, "TLS handshake with client failed: {e}");
                    return;
                }
            },
        };

        let backend = &self.backends[self.strategy.pick(peer)];
        let mut upstream = match self.dial(backend).await {
            Ok(upstream) => upstream,
            Err(e) => {
                // Dropping `client` closes it at once: the client sees the connection end
                // rather than waiting on a backend that will never answer.
                tracing::warn!(client = %peer, %backend, "cannot reach backend: {e}");
                return;
            }
        };

        let result = proxy::forward(&mut client, &mut upstream).await;
        let duration = started.elapsed();
        match result {
            Ok((up, down)) => {
                tracing::info!(client = %peer, %backend, up, down, ?duration, "connection closed");
            }
            Err(e) => {
                tracing::info!(client = %peer, %backend, ?duration, "connection ended by error: {e}");
            }
        }
    }

    /// TCP, then TLS if the backend wants it, all within `connect_timeout`.
    async fn dial(&self, backend: &Backend) -> std::io::Result<Conn> {
        let tcp = backend.connect(self.connect_timeout).await?;
        let (Some(name), Some(connector)) = (backend.server_name(), &self.connector) else {
            return Ok(Conn::Plain(tcp));
        };
        match tokio::time::timeout(self.connect_timeout, connector.connect(name.clone(), tcp)).await
        {
            Ok(Ok(tls)) => Ok(Conn::TlsClient(Box::new(tls))),
            Ok(Err(e)) => Err(std::io::Error::new(
                e.kind(),
                format!("TLS handshake failed: {e}"),
            )),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}
