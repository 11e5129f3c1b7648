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
//! 5. [`relay::relay_conns`](crate::relay::relay_conns) until both directions are done (or the
//!    pair sits idle longer than `idle-timeout`);
//! 6. one log line: client, backend, bytes each way, duration, and the error if there was one.
//!
//! A failure at any step ends *this* connection, logged; the accept loop never sees it.
//!
//! The balancer counts the open connections of every backend from the moment it is picked until
//! the connection ends, however it ends (an RAII guard, so an error, a panic or a cancelled task
//! all release it): least-connections and power-of-two (chapter 9) read those counts.
//!
//! A `Balancer` is one configuration: backends, strategy, timeouts, limits. The accept loop and
//! what must outlive a configuration (the connection counts under the limits, the counters, the
//! drain on shutdown, the swap on reload) are the [`Server`](crate::server::Server)'s, in `server.rs`; chapter 10 puts
//! a new `Balancer` in place on SIGHUP, and a backend that stays keeps its state (health, live
//! connections, counters) across the swap.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::backend::{Backend, DEFAULT_CONNECT_TIMEOUT, HealthCheck};
use crate::conn::Conn;
use crate::health::{Checks, Clock, Failover, Health};
use crate::limits::Limits;
use crate::metrics::{self, BackendCounters};
use crate::proxy_protocol::Origin;
use crate::strategy::{Candidates, Strategy};
use crate::{net, proxy_protocol, tls};

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
    /// Close a connection pair once neither direction moved a byte for this long (chapter 10).
    pub idle_timeout: Option<Duration>,
    /// Who may connect, and how many (chapter 10).
    pub limits: Limits,
    /// Read a PROXY protocol header from every client first (chapter 10).
    pub accept_proxy: bool,
    /// How long [`Server::drain`](crate::server::Server::drain) lets connections finish (chapter 10).
    pub drain_timeout: Duration,
    /// Serve with no backend at all: servers will register themselves (chapter 14); until
    /// then every client is turned away as when every backend is down.
    pub may_be_empty: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            listener_tls: None,
            handshake_timeout: tls::DEFAULT_HANDSHAKE_TIMEOUT,
            upstream_tls: None,
            failover: None,
            idle_timeout: None,
            limits: Limits::default(),
            accept_proxy: false,
            drain_timeout: Duration::ZERO,
            may_be_empty: false,
        }
    }
}

pub struct Balancer {
    backends: Vec<Backend>,
    /// Live state of `backends[i]`, same index; shared with the next configuration if the
    /// backend stays.
    states: Box<[Arc<BackendState>]>,
    strategy: Box<dyn Strategy>,
    connect_timeout: Duration,
    pub(crate) acceptor: Option<TlsAcceptor>,
    pub(crate) handshake_timeout: Duration,
    connector: Option<TlsConnector>,
    /// The same, offering `h2` in ALPN: for `h2://` backends (chapter 17).
    connector_h2: Option<TlsConnector>,
    failover: Option<Failover>,
    clock: Clock,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) limits: Limits,
    pub(crate) accept_proxy: bool,
    pub(crate) drain_timeout: Duration,
    /// Some backend wants a PROXY header, which names the address the client dialled.
    pub(crate) sends_proxy_header: bool,
}

#[derive(Debug, Default)]
pub(crate) struct BackendState {
    /// Connections picked for this backend and not yet ended.
    active: AtomicUsize,
    pub(crate) health: Health,
    pub(crate) counters: BackendCounters,
}

/// The strategy's view of the backends for one client's pick: live counts, and eligibility
/// (healthy, and not already failed for this client).
struct View<'a> {
    states: &'a [Arc<BackendState>],
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
pub(crate) struct ActiveGuard<'a>(&'a AtomicUsize);

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

/// [`ActiveGuard`] that holds the backend's state itself.
pub(crate) struct OwnedActive(Arc<BackendState>);

impl Drop for OwnedActive {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    /// Checks the set-up once, so that no connection can find it inconsistent later.
    pub fn new(
        backends: Vec<Backend>,
        strategy: Box<dyn Strategy>,
        options: Options,
    ) -> anyhow::Result<Balancer> {
        if backends.is_empty() && !options.may_be_empty {
            anyhow::bail!("no backend to balance over");
        }
        if options.upstream_tls.is_none()
            && let Some(b) = backends.iter().find(|b| b.server_name().is_some())
        {
            anyhow::bail!("backend {b} needs TLS but no TLS client configuration was given");
        }
        Ok(Balancer {
            states: backends.iter().map(|_| Arc::default()).collect(),
            sends_proxy_header: backends.iter().any(|b| b.spec().proxy.is_some()),
            backends,
            strategy,
            connect_timeout: options.connect_timeout,
            acceptor: options.listener_tls.map(TlsAcceptor::from),
            handshake_timeout: options.handshake_timeout,
            connector_h2: options.upstream_tls.as_ref().map(|config| {
                let mut config = (**config).clone();
                config.alpn_protocols = vec![b"h2".to_vec()];
                TlsConnector::from(Arc::new(config))
            }),
            connector: options.upstream_tls.map(TlsConnector::from),
            failover: options.failover,
            clock: Clock::start(),
            idle_timeout: options.idle_timeout,
            limits: options.limits,
            accept_proxy: options.accept_proxy,
            drain_timeout: options.drain_timeout,
        })
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Takes over the state of every backend of `old` that this configuration keeps (same
    /// address and scheme), and `old`'s clock, which that state's deadlines are counted in.
    pub(crate) fn inherit(&mut self, old: &Balancer) {
        self.clock = old.clock;
        for (backend, state) in self.backends.iter().zip(self.states.iter_mut()) {
            if let Some(j) = old
                .backends
                .iter()
                .position(|b| b.spec().same_target(backend.spec()))
            {
                *state = Arc::clone(&old.states[j]);
            }
        }
    }

    /// The state of `backends[i]`, for the metrics.
    pub(crate) fn state(&self, i: usize) -> &BackendState {
        &self.states[i]
    }

    /// Live connections of `backends[i]`.
    pub(crate) fn active(&self, i: usize) -> usize {
        self.states[i].active.load(Ordering::Relaxed)
    }

    /// Whether `backends[i]` may receive clients now.
    pub(crate) fn is_up(&self, i: usize) -> bool {
        self.states[i].health.is_up(|| self.clock.now())
    }

    /// Picks and dials a backend for `client`: with failover, every eligible backend once, in
    /// the strategy's order, until one answers. `None` (logged) when none did.
    ///
    /// `origin` (the client's address, the one it dialled, whether it spoke TLS) is for a
    /// backend that wants a PROXY header. Backends in `tried` are left out, and each one that
    /// fails is added; the index of the one that answered is returned (a second call after it
    /// closed without answering, `retry-unanswered` in chapter 13, adds it to `tried` first).
    pub(crate) async fn connect_upstream(
        &self,
        client: SocketAddr,
        origin: Option<Origin>,
        tried: &mut Vec<usize>,
    ) -> Option<(usize, Conn, ActiveGuard<'_>)> {
        loop {
            let Some(i) = self.pick(client.ip(), tried) else {
                if tried.is_empty() {
                    tracing::warn!(client = %client, "no backend is up: closing the connection");
                } else {
                    tracing::warn!(client = %client, tried = tried.len(), "every backend that is up failed: closing the connection");
                }
                return None;
            };
            // Counted from the pick, not from the connect: concurrent picks must see the
            // connections that are still being dialled, or they would all choose the same
            // "idle" backend.
            let active = self.count_active(i);
            match self.dial_reporting(i, origin).await {
                Ok(upstream) => {
                    metrics::inc(&self.states[i].counters.connections);
                    return Some((i, upstream, active));
                }
                Err(e) => {
                    tracing::warn!(client = %client, backend = %self.backends[i], "cannot reach backend: {e}");
                    if !self.may_try_another(&e) {
                        return None;
                    }
                }
            }
            tried.push(i);
        }
    }

    /// The strategy's choice for a client at `ip` among the backends health allows, leaving
    /// out those in `tried`. The HTTP balancer (chapter 12) calls this once per request.
    pub(crate) fn pick(&self, ip: std::net::IpAddr, tried: &[usize]) -> Option<usize> {
        let view = View {
            states: &self.states,
            tried,
            clock: self.clock,
            now: Cell::new(None),
        };
        self.strategy.pick(ip, &view)
    }

    /// Counts one more connection (or request) on `backends[i]` until the guard is dropped.
    pub(crate) fn count_active(&self, i: usize) -> ActiveGuard<'_> {
        ActiveGuard::new(&self.states[i].active)
    }

    /// [`Balancer::count_active`] for a guard that must outlive a borrow: an HTTP request
    /// counts on its backend until its response body has been sent, in another task.
    pub(crate) fn count_active_owned(self: &Arc<Self>, i: usize) -> OwnedActive {
        self.states[i].active.fetch_add(1, Ordering::Relaxed);
        OwnedActive(Arc::clone(&self.states[i]))
    }

    /// Dials `backends[i]` and tells its health how that went (a backend that answers again
    /// is logged as back). The error is the dial's.
    pub(crate) async fn dial_reporting(
        &self,
        i: usize,
        origin: Option<Origin>,
    ) -> io::Result<Conn> {
        let (backend, state) = (&self.backends[i], &self.states[i]);
        match self.dial(i, origin).await {
            Ok(upstream) => {
                if self.failover.is_some()
                    && let Some(news) = state.health.connected()
                {
                    tracing::info!(%backend, "{news}");
                }
                Ok(upstream)
            }
            Err(error) => {
                if !net::is_local_exhaustion(&error)
                    && let Some(failover) = &self.failover
                    && let Some(news) = state.health.connect_failed(&error, failover, self.clock)
                {
                    tracing::warn!(%backend, "{news}");
                }
                Err(error)
            }
        }
    }

    /// After a failed dial: whether the next backend may be tried. Not without failover
    /// (chapters 3–7), and not when the failure was our own shortage (file descriptors, ports,
    /// memory): blaming the backend would take healthy ones out, and the next would fail the
    /// same way.
    pub(crate) fn may_try_another(&self, error: &io::Error) -> bool {
        self.failover.is_some() && !net::is_local_exhaustion(error)
    }

    /// Starts the active health checks, if configured; they stop when the handle is dropped.
    pub(crate) fn spawn_checker(self: &Arc<Self>) -> Option<AbortOnDrop> {
        let checks = self.failover.as_ref()?.checks.clone()?;
        Some(AbortOnDrop(tokio::spawn(
            Arc::clone(self).check_health(checks),
        )))
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
                // Same as for clients: a probe that could not even get a socket says nothing
                // about the backend.
                if result.as_ref().is_err_and(|e| e.contains(LOCAL_EXHAUSTION)) {
                    continue;
                }
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
    /// answered 2xx (in HTTP/2 to an HTTP/2 backend), for `check=grpc` gRPC's health check
    /// (chapter 17).
    async fn probe(&self, i: usize) -> Result<(), String> {
        let backend = &self.backends[i];
        metrics::inc(&self.states[i].counters.probes);
        let mut conn =
            self.dial(i, None)
                .await
                .map_err(|e| match net::is_local_exhaustion(&e) {
                    true => format!("{LOCAL_EXHAUSTION}: {e}"),
                    false => e.to_string(),
                })?;
        match backend.spec().check {
            HealthCheck::Tcp => return Ok(()),
            HealthCheck::Grpc => {
                let spec = backend.spec();
                return crate::health::grpc_check(conn, &spec.addr.to_string(), spec.tls).await;
            }
            HealthCheck::Http if backend.spec().protocol.is_h2() => {
                let spec = backend.spec();
                return crate::health::http_check_h2(conn, &spec.addr.to_string(), spec.tls).await;
            }
            HealthCheck::Http => {}
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

    /// TCP, the PROXY header if the backend wants one (before TLS: it is for whoever accepts
    /// the TCP connection), then TLS if the backend wants it, each within `connect_timeout`.
    /// A failure counts in the backend's metrics.
    async fn dial(&self, i: usize, origin: Option<Origin>) -> io::Result<Conn> {
        let counters = &self.states[i].counters;
        let backend = &self.backends[i];
        let failed = |e: io::Error| {
            metrics::inc(&counters.connect_failures);
            e
        };
        let mut tcp = backend
            .connect(self.connect_timeout)
            .await
            .map_err(failed)?;
        if let Some(version) = backend.spec().proxy {
            let header = proxy_protocol::encode(version, origin);
            match tokio::time::timeout(self.connect_timeout, tcp.write_all(&header)).await {
                Ok(result) => result.map_err(failed)?,
                Err(_) => {
                    return Err(failed(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "sending the PROXY header timed out",
                    )));
                }
            }
        }
        let h2 = backend.spec().protocol == crate::backend::Protocol::H2;
        let connector = match h2 {
            true => &self.connector_h2,
            false => &self.connector,
        };
        let (Some(name), Some(connector)) = (backend.server_name(), connector) else {
            return Ok(Conn::Plain(tcp));
        };
        let error =
            match tokio::time::timeout(self.connect_timeout, connector.connect(name.clone(), tcp))
                .await
            {
                // An `h2://` backend must have agreed to HTTP/2 (RFC 9113 §3.2): one that did
                // not would read our frames as a garbled HTTP/1 request.
                Ok(Ok(tls)) if h2 && tls.get_ref().1.alpn_protocol() != Some(b"h2") => {
                    io::Error::other("the backend did not agree to h2 in ALPN")
                }
                Ok(Ok(tls)) => return Ok(Conn::TlsClient(Box::new(tls))),
                Ok(Err(e)) => io::Error::new(e.kind(), format!("TLS handshake failed: {e}")),
                Err(_) => io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"),
            };
        metrics::inc(&counters.tls_handshake_failures);
        Err(failed(error))
    }
}

/// Marks a probe that failed for lack of our own resources, not the backend's.
const LOCAL_EXHAUSTION: &str = "out of local resources";

/// Aborts a background task when dropped, so it cannot outlive the balancer that owns it.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
