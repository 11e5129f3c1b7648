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
//! 2. the strategy picks a backend among those health allows;
//! 3. we dial it, bounded by a timeout, and for a TLS backend run the client handshake with the
//!    one shared client config (which verifies the backend and resumes sessions);
//! 4. with failover (chapter 8), a failed dial is reported to that backend's [`Health`] and we
//!    go back to 2 with the backend excluded, so each backend is tried at most once per client;
//!    without it (chapters 3–7), the client's connection ends there;
//! 5. [`proxy::forward`] until both directions are done;
//! 6. one log line: client, backend, bytes each way, duration, and the error if there was one.
//!
//! A failure at any step ends *this* connection, logged; the accept loop never sees it.
//!
//! The balancer counts the open connections of every backend from the moment it is picked until
//! the connection ends, however it ends (an RAII guard, so an error, a panic or a cancelled task
//! all release it): least-connections and power-of-two (chapter 9) read those counts.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::backend::{Backend, DEFAULT_CONNECT_TIMEOUT, HealthCheck};
use crate::health::{Checks, Clock, Failover, Health};
use crate::proxy::{self, Conn};
use crate::strategy::{Candidates, Strategy};
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
    /// Retry on the next backend and track health (chapter 8).
    pub failover: Option<Failover>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            listener_tls: None,
            handshake_timeout: tls::DEFAULT_HANDSHAKE_TIMEOUT,
            upstream_tls: None,
            failover: None,
        }
    }
}

pub struct Balancer {
    backends: Vec<Backend>,
    /// Live state of `backends[i]`, same index.
    states: Box<[BackendState]>,
    strategy: Box<dyn Strategy>,
    connect_timeout: Duration,
    acceptor: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    connector: Option<TlsConnector>,
    failover: Option<Failover>,
    clock: Clock,
}

#[derive(Debug, Default)]
struct BackendState {
    /// Connections picked for this backend and not yet ended.
    active: AtomicUsize,
    health: Health,
}

/// The strategy's view of the backends for one client's pick: live counts, and eligibility
/// (healthy, and not already failed for this client).
struct View<'a> {
    states: &'a [BackendState],
    tried: &'a [usize],
    clock: Clock,
    /// Read at most once per pick, and only if some backend has a passive skip pending.
    now: Cell<Option<u64>>,
}

impl Candidates for View<'_> {
    fn eligible(&self, i: usize) -> bool {
        !self.tried.contains(&i)
            && self.states[i].health.is_up(|| match self.now.get() {
                Some(now) => now,
                None => {
                    let now = self.clock.now();
                    self.now.set(Some(now));
                    now
                }
            })
    }

    fn active(&self, i: usize) -> usize {
        self.states[i].active.load(Ordering::Relaxed)
    }
}

/// Counts one connection on a backend for as long as it lives.
struct ActiveGuard<'a>(&'a AtomicUsize);

impl<'a> ActiveGuard<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(counter)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
            states: backends.iter().map(|_| BackendState::default()).collect(),
            backends,
            strategy,
            connect_timeout: options.connect_timeout,
            acceptor: options.listener_tls.map(TlsAcceptor::from),
            handshake_timeout: options.handshake_timeout,
            connector: options.upstream_tls.map(TlsConnector::from),
            failover: options.failover,
            clock: Clock::start(),
        })
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Serves `listener` until `shutdown` resolves. Connections in flight at that moment are
    /// not waited for (graceful draining is chapter 10's job).
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let this = Arc::new(self);
        // Aborted when `run` returns, however it returns.
        let _checker = this
            .failover
            .as_ref()
            .and_then(|f| f.checks.clone())
            .map(|checks| AbortOnDrop(tokio::spawn(Arc::clone(&this).check_health(checks))));
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

        let (backend, mut upstream, _active) = match self.connect_upstream(peer).await {
            Some(connected) => connected,
            // Dropping `client` closes it at once: the client sees the connection end rather
            // than waiting on a backend that will never answer.
            None => return,
        };
        let result = proxy::forward(&mut client, &mut upstream).await;
        let duration = started.elapsed();
        match result {
            Ok((up, down)) => {
                tracing::info!(client = %peer, %backend, up, down, ?duration, "connection closed");
            }
            Err(e) => {
                tracing::info!(client = %peer, %backend, ?duration, "connection closed by error: {e}");
            }
        }
    }

    /// Picks and dials a backend for `peer`: with failover, every eligible backend once, in
    /// the strategy's order, until one answers. `None` (logged) when none did.
    async fn connect_upstream(
        &self,
        peer: SocketAddr,
    ) -> Option<(&Backend, Conn, ActiveGuard<'_>)> {
        let mut tried = Vec::new();
        loop {
            let view = View {
                states: &self.states,
                tried: &tried,
                clock: self.clock,
                now: Cell::new(None),
            };
            let Some(i) = self.strategy.pick(peer.ip(), &view) else {
                if tried.is_empty() {
                    tracing::warn!(client = %peer, "no backend is up: closing the connection");
                } else {
                    tracing::warn!(client = %peer, tried = tried.len(), "every backend that is up failed: closing the connection");
                }
                return None;
            };
            let (backend, state) = (&self.backends[i], &self.states[i]);
            // Counted from the pick, not from the connect: concurrent picks must see the
            // connections that are still being dialled, or they would all choose the same
            // "idle" backend.
            let active = ActiveGuard::new(&state.active);
            let error = match self.dial(backend).await {
                Ok(upstream) => {
                    if self.failover.is_some()
                        && let Some(news) = state.health.connected()
                    {
                        tracing::info!(%backend, "{news}");
                    }
                    return Some((backend, upstream, active));
                }
                Err(e) => e,
            };
            tracing::warn!(client = %peer, %backend, "cannot reach backend: {error}");
            let failover = self.failover.as_ref()?;
            if let Some(news) = state.health.connect_failed(&error, failover, self.clock) {
                tracing::warn!(%backend, "{news}");
            }
            tried.push(i);
        }
    }

    /// Probes every backend each `checks.interval`, all at once, and reports to their health.
    async fn check_health(self: Arc<Self>, checks: Checks) {
        let mut ticks = tokio::time::interval(checks.interval);
        // A balancer that was starved of CPU catches up by probing once, not in a burst.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let mut probes = tokio::task::JoinSet::new();
            for i in 0..self.backends.len() {
                let this = Arc::clone(&self);
                let timeout = checks.interval;
                probes.spawn(async move {
                    let result = match tokio::time::timeout(timeout, this.probe(i)).await {
                        Ok(result) => result,
                        Err(_) => Err(format!("no answer within {timeout:?}")),
                    };
                    (i, result)
                });
            }
            while let Some(done) = probes.join_next().await {
                let Ok((i, result)) = done else { continue };
                if let Some(news) = self.states[i].health.probed(result, &checks) {
                    let backend = &self.backends[i];
                    match news.starts_with("backend up") {
                        true => tracing::info!(%backend, "{news}"),
                        false => tracing::warn!(%backend, "{news}"),
                    }
                }
            }
        }
    }

    /// One active probe: connect (and TLS), and for `check=http` a `GET /health` that must be
    /// answered 2xx.
    async fn probe(&self, i: usize) -> Result<(), String> {
        let backend = &self.backends[i];
        let mut conn = self.dial(backend).await.map_err(|e| e.to_string())?;
        if backend.spec().check == HealthCheck::Tcp {
            return Ok(());
        }
        let request = format!(
            "GET /health HTTP/1.1\r\nHost: {}\r\nUser-Agent: tcp-lb-health-check\r\n\
             Connection: close\r\n\r\n",
            backend.spec().addr
        );
        conn.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send GET /health: {e}"))?;
        // The status line is all we need: `HTTP/1.1 200 OK`.
        let mut head = Vec::with_capacity(64);
        while !head.contains(&b'\n') && head.len() < 1024 {
            let mut chunk = [0u8; 256];
            match conn.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("cannot read the answer to GET /health: {e}")),
            }
        }
        let line = String::from_utf8_lossy(head.split(|&b| b == b'\n').next().unwrap_or(&[]))
            .trim_end()
            .to_owned();
        let status = line.split(' ').nth(1).unwrap_or("");
        if line.starts_with("HTTP/1.") && status.len() == 3 && status.starts_with('2') {
            Ok(())
        } else if line.is_empty() {
            Err("GET /health: connection closed without an answer".to_owned())
        } else {
            Err(format!("GET /health answered `{line}`"))
        }
    }

    /// TCP, then TLS if the backend wants it, all within `connect_timeout`.
    async fn dial(&self, backend: &Backend) -> io::Result<Conn> {
        let tcp = backend.connect(self.connect_timeout).await?;
        let (Some(name), Some(connector)) = (backend.server_name(), &self.connector) else {
            return Ok(Conn::Plain(tcp));
        };
        match tokio::time::timeout(self.connect_timeout, connector.connect(name.clone(), tcp)).await
        {
            Ok(Ok(tls)) => Ok(Conn::TlsClient(Box::new(tls))),
            Ok(Err(e)) => Err(io::Error::new(
                e.kind(),
                format!("TLS handshake failed: {e}"),
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

/// Aborts a background task when dropped, so it cannot outlive the balancer that owns it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
