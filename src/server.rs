//! The front of the balancer: the accept loop, and what must outlive one configuration.
//!
//! Up to chapter 9 a balancer is built once and serves until the process ends. An operator's
//! balancer (chapter 10) changes configuration while it runs (SIGHUP) and stops without cutting
//! anyone off (SIGTERM). So the [`Balancer`] (backends, strategy, timeouts, limits) becomes a
//! value the server swaps, and the server keeps what must survive a swap:
//!
//! * the counts the limits are checked against ([`Gate`]): a reload that lowers
//!   `max-connections` applies to the connections already open;
//! * the counters behind `/metrics`;
//! * the health checker, restarted for the new backends.
//!
//! Each connection takes the configuration current at its accept and keeps it to the end, so a
//! reload never touches an established connection: its backend stays dialled, its bytes keep
//! flowing, and a removed backend is dropped once its last connection ends.
//!
//! Per connection, in order, each step able to end it with one access-log line:
//!
//! 1. a slot under `max-connections`, decided in the accept loop itself (so a refused client
//!    is closed before the next accept), maybe after a short wait in the queue;
//! 2. with `accept-proxy`, the PROXY header that names the real client;
//! 3. the allow/deny lists and `max-per-client`, against that real client;
//! 4. the TLS handshake, if the listener terminates TLS;
//! 5. pick and dial a backend (with failover from chapter 8), sending it a PROXY header if
//!    it wants one;
//! 6. [`relay::relay_conns`], until both directions end or the pair is idle too long.

use std::fmt::Display;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};

use crate::backend::Backend;
use crate::balancer::{AbortOnDrop, ActiveGuard, Balancer};
use crate::conn::{Conn, Fresh};
use crate::limits::{ClientSlot, Entry, Gate, Refusal, Slot};
use crate::metrics::{self, Counters, Exposition, get};
use crate::proxy_protocol::Origin;
use crate::relay::{self, End, FirstAnswer};
use crate::{net, proxy_protocol, tls};

impl Balancer {
    /// Serves `listener` until `shutdown` resolves. Connections in flight at that moment are
    /// not waited for: chapter 10 drains them, see [`Server::drain`].
    ///
    /// (Written here rather than in `balancer.rs`, so that the balancer, which the server
    /// builds on, does not depend on the server in turn.)
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        Server::new(self).run(listener, shutdown).await;
    }
}

pub struct Server {
    current: RwLock<Arc<Balancer>>,
    gate: Arc<Gate>,
    counters: Counters,
    /// The active health checks of the current configuration, while serving.
    checker: Mutex<Option<AbortOnDrop>>,
    serving: AtomicBool,
}

impl Server {
    pub fn new(balancer: Balancer) -> Arc<Server> {
        Arc::new(Server {
            current: RwLock::new(Arc::new(balancer)),
            gate: Arc::default(),
            counters: Counters::default(),
            checker: Mutex::new(None),
            serving: AtomicBool::new(false),
        })
    }

    /// The configuration new connections get.
    pub fn balancer(&self) -> Arc<Balancer> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts `new` in place for the connections accepted from now on. Backends it keeps carry
    /// their health, live counts and counters over; established connections are not touched.
    pub fn reload(&self, new: Balancer) {
        self.replace(new);
        self.count_reload();
    }

    /// Counts a reload that took effect.
    pub fn count_reload(&self) {
        metrics::inc(&self.counters.reloads_ok);
    }

    /// [`Server::reload`] without counting a reload: the registry's changes (chapter 14).
    pub fn replace(&self, mut new: Balancer) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        new.inherit(&current);
        *current = Arc::new(new);
        let checker = self
            .serving
            .load(Ordering::Acquire)
            .then(|| current.spawn_checker())
            .flatten();
        drop(current);
        // Replacing the handle aborts the old configuration's checks.
        *self.checker.lock().unwrap_or_else(|e| e.into_inner()) = checker;
    }

    /// Counts a reload that was refused (the old configuration stays).
    pub fn reload_failed(&self) {
        metrics::inc(&self.counters.reloads_failed);
    }

    /// Serves `listener` until `shutdown` resolves, then stops accepting (the listener is
    /// closed when this returns) and stops the health checks. Connections in flight go on;
    /// see [`Server::drain`].
    pub async fn run(self: &Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        self.accept_loop(listener, shutdown, |stream, peer, balancer, entry| {
            tokio::spawn(Arc::clone(self).serve(stream, peer, balancer, entry));
        })
        .await;
    }

    /// The accept loop both balancers share: accepts until `shutdown` resolves, decides each
    /// client's slot at once ([`Server::enter`]) and hands the admitted ones to `serve`, which
    /// spawns their task (`tcp-lb` relays bytes, `http-lb` reads requests). Health checks and
    /// the memory trimmer run for as long as it does.
    pub(crate) async fn accept_loop<L: net::Accept>(
        self: &Arc<Self>,
        listener: L,
        shutdown: impl Future<Output = ()>,
        mut serve: impl FnMut(L::Stream, SocketAddr, Arc<Balancer>, Entry),
    ) {
        let _serving = self.begin_serving();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                // `biased`: once asked to stop, stop, even if clients keep arriving.
                biased;
                () = &mut shutdown => break,
                (stream, peer) = net::accept(&listener) => {
                    match self.enter(peer) {
                        Ok((balancer, entry)) => serve(stream, peer, balancer, entry),
                        // Closed here, before the next accept (see `Gate::enter`).
                        Err(refused) => {
                            drop(stream);
                            refused.log(Instant::now());
                        }
                    }
                }
            }
        }
    }

    /// What serving needs running beside the accept loop, for as long as the returned guard
    /// lives: the current configuration's health checks, and the memory trimmer.
    fn begin_serving(self: &Arc<Self>) -> Serving<'_> {
        self.serving.store(true, Ordering::Release);
        *self.checker.lock().unwrap_or_else(|e| e.into_inner()) = self.balancer().spawn_checker();
        Serving {
            server: self,
            _trimmer: AbortOnDrop(tokio::spawn(crate::memory::trim_after_bursts(Arc::clone(
                &self.gate,
            )))),
        }
    }

    /// The accept loop's decision for a client that just connected from `peer`: a slot (or a
    /// place in the queue) under the current configuration, or a refusal (counted), to log
    /// once the caller has closed the stream.
    pub(crate) fn enter(
        &self,
        peer: SocketAddr,
    ) -> Result<(Arc<Balancer>, Entry), Outcome<'static>> {
        metrics::inc(&self.counters.accepted);
        let balancer = self.balancer();
        match self.gate.enter(&balancer.limits) {
            Ok(entry) => Ok((balancer, entry)),
            Err(why) => Err(self.refuse(peer, why)),
        }
    }

    /// After [`Server::run`]: refuses new clients (and closes queued ones), then waits until
    /// every connection has ended, the configured `drain-timeout` has passed, or `interrupt`
    /// resolves (a second Ctrl-C). Returns how many connections were still open; they close
    /// when the runtime stops.
    pub async fn drain(&self, interrupt: impl Future<Output = ()>) -> usize {
        let deadline = self.balancer().drain_timeout;
        self.gate.start_draining();
        let open = self.gate.active();
        if open == 0 {
            return 0;
        }
        tracing::info!("draining: waiting up to {deadline:?} for {open} connection(s) to finish");
        tokio::select! {
            () = self.gate.drained() => {
                tracing::info!("drained: every connection finished");
            }
            () = tokio::time::sleep(deadline) => {
                tracing::warn!(
                    "drain deadline reached: closing {} connection(s)",
                    self.gate.active()
                );
            }
            () = interrupt => {
                tracing::warn!("asked again to stop: closing {} connection(s) now", self.gate.active());
            }
        }
        self.gate.active()
    }

    /// One client: [`Server::handle`], then its access-log line, written once everything the
    /// connection held (sockets, slots, counts) is released, so that a line in the log means
    /// the connection is gone.
    async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        balancer: Arc<Balancer>,
        entry: Entry,
    ) {
        let started = Instant::now();
        self.handle(stream, peer, &balancer, entry)
            .await
            .log(started);
    }

    /// From the client's slot (or its place in the queue) to the end of its connection.
    async fn handle<'a>(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        balancer: &'a Balancer,
        entry: Entry,
    ) -> Outcome<'a> {
        // The admission and the dial are boxed: each lasts a moment, but unboxed their state
        // would size this task's future for its whole life, idle hours included (chapter 11:
        // 2.8 KiB per connection before, against HAProxy's 3.3 KiB for the whole pair).
        let admitted = match Box::pin(self.admit(stream, peer, balancer, entry)).await {
            Ok(admitted) => admitted,
            Err(refused) => return refused,
        };
        // Declared first, so dropped last: the slots are freed only once the sockets are
        // closed, and the descriptor budget behind `max-connections` stays exact.
        let _held = admitted.held;
        let (mut conn, client, origin) = (admitted.conn, admitted.client, admitted.origin);
        // Boxed, like the admission: it lasts a moment, and its state (the backends tried,
        // the bytes kept) must not size the task for the connection's whole life.
        let connected = Box::pin(self.connect(&mut conn, client, origin, balancer)).await;
        let (i, mut upstream, _active, up, down) = match connected {
            Ok(connected) => connected,
            Err(outcome) => return outcome,
        };
        let (backend, counters) = (&balancer.backends()[i], &balancer.state(i).counters);
        metrics::add(&counters.bytes_up, up);
        metrics::add(&counters.bytes_down, down);
        let relayed = relay::relay_conns(
            &mut conn,
            &mut upstream,
            balancer.idle_timeout,
            &counters.bytes_up,
            &counters.bytes_down,
        )
        .await;
        let mut outcome = self.ended(client, backend, relayed.up, relayed.down, relayed.end);
        outcome.up += up;
        outcome.down += down;
        outcome
    }

    /// Picks and dials a backend for `client`; with `retry-unanswered` (chapter 13), relays
    /// until that backend's first byte, and gives the connection to the next backend, with
    /// the client's bytes, if it closes or resets without a word. The backend's index, its
    /// connection and slot, and the bytes moved so far each way; or how the connection ended.
    async fn connect<'a>(
        &self,
        conn: &mut Conn,
        client: SocketAddr,
        origin: Option<Origin>,
        balancer: &'a Balancer,
    ) -> Result<(usize, Conn, ActiveGuard<'a>, u64, u64), Outcome<'a>> {
        let mut tried = Vec::new();
        let Some((mut i, mut upstream, mut active)) =
            balancer.connect_upstream(client, origin, &mut tried).await
        else {
            // The caller returns at once, dropping `conn`, which closes it: the client sees
            // the connection end rather than waiting on a backend that will never answer.
            metrics::inc(&self.counters.no_backend);
            return Err(Outcome::early(client, "no-backend"));
        };
        let (mut up, mut down) = (0, 0);
        if !balancer.backends()[i].spec().retry_unanswered {
            return Ok((i, upstream, active, up, down));
        }
        let mut kept = relay::Kept::default();
        loop {
            let answered = relay::until_answered(
                conn,
                &mut upstream,
                &mut kept,
                balancer.idle_timeout,
                &mut up,
                &mut down,
            );
            let why = match answered.await {
                FirstAnswer::Relay => return Ok((i, upstream, active, up, down)),
                FirstAnswer::Unanswered(why) => why,
                FirstAnswer::Ended(end) => {
                    return Err(self.ended(client, &balancer.backends()[i], up, down, end));
                }
            };
            metrics::inc(&self.counters.unanswered_retries);
            tracing::warn!(
                client = %client,
                backend = %balancer.backends()[i],
                "backend closed before answering ({why}): its {} bytes go to another",
                kept.len()
            );
            tried.push(i);
            let Some(next) = balancer.connect_upstream(client, origin, &mut tried).await else {
                metrics::inc(&self.counters.no_backend);
                return Err(Outcome::early(client, "no-backend"));
            };
            (i, upstream, active) = next;
            if let Err(e) = kept.replay(&mut upstream).await {
                // Dead too: the next turn sees it and moves on.
                tracing::debug!("replaying to {}: {e}", balancer.backends()[i]);
            }
        }
    }

    /// The outcome of a connection that reached `backend`, once it ended.
    fn ended<'a>(
        &self,
        client: SocketAddr,
        backend: &'a Backend,
        up: u64,
        down: u64,
        end: End,
    ) -> Outcome<'a> {
        let name = end.as_str();
        let error = match end {
            End::Client(e) | End::Backend(e) => Some(e),
            End::IdleTimeout => {
                metrics::inc(&self.counters.idle_timeouts);
                None
            }
            End::Done => None,
        };
        Outcome {
            client,
            backend: Some(backend),
            up,
            down,
            end: name,
            error,
        }
    }

    /// Steps 1 to 4 for one client: its slot (after the queue), its PROXY header, the
    /// allow/deny lists and per-client limit, the TLS handshake. What both balancers do before
    /// their own work: relay bytes (here) or read requests (`http-lb`, chapter 12).
    pub(crate) async fn admit(
        &self,
        mut stream: impl Admissible,
        peer: SocketAddr,
        balancer: &Balancer,
        entry: Entry,
    ) -> Result<Admitted, Outcome<'static>> {
        let _slot = match entry {
            Entry::Admitted(slot) => slot,
            Entry::Queued(queued) => match queued.wait(&balancer.limits).await {
                Ok(slot) => slot,
                Err(why) => return Err(self.refuse(peer, why)),
            },
        };

        let (client, proxied) = if balancer.accept_proxy {
            let Ok(tcp) = stream.registered() else {
                return Err(Outcome::early(peer, UNREGISTERED));
            };
            let header = proxy_protocol::read_header(tcp);
            let read = match tokio::time::timeout(balancer.handshake_timeout, header).await {
                Ok(Ok(Some(origin))) => Ok((origin.client, Some(origin))),
                Ok(Ok(None)) => Ok((peer, None)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no header in time")),
            };
            match read {
                Ok(addrs) => addrs,
                Err(e) => {
                    metrics::inc(&self.counters.proxy_header_errors);
                    tracing::warn!(client = %peer, "bad PROXY header: {e}");
                    return Err(Outcome::early(peer, "bad-proxy-header"));
                }
            }
        } else {
            (peer, None)
        };
        if !balancer.limits.permits(client.ip()) {
            return Err(self.refuse(client, Refusal::Denied));
        }
        let _per_client = match self
            .gate
            .admit_client(client.ip(), balancer.limits.max_per_client)
        {
            Ok(slot) => slot,
            Err(why) => return Err(self.refuse(client, why)),
        };
        // What the backend's PROXY header says the client dialled: read before TLS takes the
        // socket, and only when some backend wants it (it costs a system call).
        let dialled = match (balancer.sends_proxy_header, proxied) {
            (false, _) => None,
            (true, Some(origin)) => Some(origin.dialled),
            (true, None) => stream.local_addr().ok(),
        };

        let conn = match &balancer.acceptor {
            None => stream.plain(),
            Some(acceptor) => {
                let Ok(tcp) = stream.into_registered() else {
                    return Err(Outcome::early(peer, UNREGISTERED));
                };
                match tls::accept(acceptor, tcp, balancer.handshake_timeout).await {
                    Ok(tls) => {
                        self.counters.tls_handshake(&tls);
                        Conn::TlsServer(Box::new(tls))
                    }
                    // The proxy in front said LOCAL ("my own connection") and closed before a
                    // TLS byte: its health probe, every second or so. Not a client, not a
                    // failure.
                    Err(e)
                        if balancer.accept_proxy
                            && proxied.is_none()
                            && e.kind() == io::ErrorKind::UnexpectedEof =>
                    {
                        return Err(Outcome::early(client, PROBE));
                    }
                    Err(e) => {
                        metrics::inc(&self.counters.tls_handshake_failures);
                        tracing::warn!(%client, "TLS handshake with client failed: {e}");
                        return Err(Outcome::early(client, "tls-handshake-failed"));
                    }
                }
            }
        };
        // TLS to us, or to a proxy in front that said so (chapter 13's offloaders): either way
        // the user's browser spoke HTTPS.
        let tls = matches!(conn, Conn::TlsServer(_)) || proxied.is_some_and(|o| o.tls);
        // HTTP/2 agreed in ALPN with us, or with the proxy in front (chapter 17): passed on to
        // a backend that reads PROXY v2, so that it speaks HTTP/2 on the bytes that follow.
        let h2 = matches!(&conn, Conn::TlsServer(t) if t.get_ref().1.alpn_protocol() == Some(b"h2"))
            || proxied.is_some_and(|o| o.h2);

        Ok(Admitted {
            tls,
            h2,
            conn,
            client,
            origin: dialled.map(|dialled| Origin {
                client,
                dialled,
                tls,
                h2,
            }),
            held: (_slot, _per_client),
        })
    }

    /// Counts a refusal; the outcome to log.
    fn refuse(&self, client: SocketAddr, why: Refusal) -> Outcome<'static> {
        self.counters.refused(why);
        Outcome::early(client, why.as_str())
    }

    /// `/health` of the admin listener: `Ok` while serving with a backend up; `Err(why)`
    /// while draining or with every backend down, so whatever routes traffic here stops.
    pub fn health(&self) -> Result<&'static str, &'static str> {
        if self.gate.is_draining() {
            return Err("draining");
        }
        let balancer = self.balancer();
        match (0..balancer.backends().len()).any(|i| balancer.is_up(i)) {
            true => Ok("ok"),
            false => Err("no backend is up"),
        }
    }

    /// `/metrics` of the admin listener, in Prometheus' text format.
    pub fn metrics(&self) -> String {
        let c = &self.counters;
        let mut e = Exposition::default();
        let counter = |e: &mut Exposition, name: &str, help: &str, value: u64| {
            e.metric(name, "counter", help).sample(name, &[], value);
        };
        counter(
            &mut e,
            "tcplb_connections_total",
            "Client connections accepted, refused ones included.",
            get(&c.accepted),
        );
        let name = "tcplb_connections_active";
        e.metric(name, "gauge", "Client connections being served.")
            .sample(name, &[], self.gate.active());
        let name = "tcplb_connections_queued";
        e.metric(
            name,
            "gauge",
            "Clients waiting for a slot under max-connections.",
        )
        .sample(name, &[], self.gate.waiting());
        let name = "tcplb_connections_refused_total";
        e.metric(name, "counter", "Clients turned away, by reason.");
        for (why, n) in Refusal::ALL.iter().zip(&c.refused) {
            e.sample(name, &[("reason", why.as_str())], get(n));
        }
        let name = "tcplb_client_tls_handshakes_total";
        e.metric(
            name,
            "counter",
            "Client TLS handshakes completed: full, or resumed from a session ticket.",
        );
        e.sample(name, &[("kind", "full")], get(&c.tls_full));
        e.sample(name, &[("kind", "resumed")], get(&c.tls_resumed));
        counter(
            &mut e,
            "tcplb_client_tls_handshake_failures_total",
            "Client TLS handshakes that failed or timed out.",
            get(&c.tls_handshake_failures),
        );
        counter(
            &mut e,
            "tcplb_proxy_header_errors_total",
            "accept-proxy clients whose PROXY header was missing or malformed.",
            get(&c.proxy_header_errors),
        );
        counter(
            &mut e,
            "tcplb_no_backend_total",
            "Clients closed because no backend could be reached.",
            get(&c.no_backend),
        );
        counter(
            &mut e,
            "tcplb_unanswered_retries_total",
            "Connections a retry-unanswered backend closed before its first byte, given to \
             another backend with the client's bytes.",
            get(&c.unanswered_retries),
        );
        counter(
            &mut e,
            "tcplb_idle_timeouts_total",
            "Connections closed after idle-timeout with no byte either way.",
            get(&c.idle_timeouts),
        );
        let name = "tcplb_config_reloads_total";
        e.metric(
            name,
            "counter",
            "Configuration reloads (SIGHUP), by result.",
        )
        .sample(name, &[("result", "ok")], get(&c.reloads_ok));
        e.sample(name, &[("result", "error")], get(&c.reloads_failed));

        let balancer = self.balancer();
        let names: Vec<String> = balancer.backends().iter().map(|b| b.to_string()).collect();
        let per_backend = |e: &mut Exposition,
                           name: &str,
                           kind: &str,
                           help: &str,
                           value: &dyn Fn(usize) -> u64| {
            e.metric(name, kind, help);
            for (i, backend) in names.iter().enumerate() {
                e.sample(name, &[("backend", backend)], value(i));
            }
        };
        per_backend(
            &mut e,
            "tcplb_backend_up",
            "gauge",
            "1 if the backend may receive clients, 0 if health checks took it out.",
            &|i| u64::from(balancer.is_up(i)),
        );
        // When each backend last changed state, and why (the status page's "down since").
        let changes: Vec<_> = (0..names.len())
            .map(|i| balancer.state(i).health.last_change())
            .collect();
        per_backend(
            &mut e,
            "tcplb_backend_state_changed_seconds",
            "gauge",
            "When the backend last changed state, in seconds since 1970; 0 if it has not.",
            &|i| {
                changes[i].map_or(0, |(at, _)| {
                    at.duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                })
            },
        );
        let name = "tcplb_backend_state_cause";
        e.metric(
            name,
            "gauge",
            "Why the backend last changed state: 1 for the cause.",
        );
        for (i, backend) in names.iter().enumerate() {
            if let Some((_, cause)) = changes[i] {
                e.sample(name, &[("backend", backend), ("cause", cause.as_str())], 1);
            }
        }
        per_backend(
            &mut e,
            "tcplb_backend_connections_active",
            "gauge",
            "Connections open to the backend (dialling included).",
            &|i| balancer.active(i) as u64,
        );
        let state = |i| &balancer.state(i).counters;
        per_backend(
            &mut e,
            "tcplb_backend_connections_total",
            "counter",
            "Client connections proxied to the backend.",
            &|i| get(&state(i).connections),
        );
        per_backend(
            &mut e,
            "tcplb_backend_bytes_sent_total",
            "counter",
            "Bytes sent to the backend (from clients).",
            &|i| get(&state(i).bytes_up),
        );
        per_backend(
            &mut e,
            "tcplb_backend_bytes_received_total",
            "counter",
            "Bytes received from the backend (to clients).",
            &|i| get(&state(i).bytes_down),
        );
        per_backend(
            &mut e,
            "tcplb_backend_connect_failures_total",
            "counter",
            "Dials to the backend that failed or timed out (TCP, PROXY header or TLS).",
            &|i| get(&state(i).connect_failures),
        );
        per_backend(
            &mut e,
            "tcplb_backend_tls_handshake_failures_total",
            "counter",
            "TLS handshakes with the backend that failed or timed out.",
            &|i| get(&state(i).tls_handshake_failures),
        );
        per_backend(
            &mut e,
            "tcplb_backend_probes_total",
            "counter",
            "Active health probes of the backend, whatever their outcome.",
            &|i| get(&state(i).probes),
        );
        e.finish()
    }
}

/// While it lives, the server counts as serving: see [`Server::begin_serving`].
pub(crate) struct Serving<'a> {
    server: &'a Server,
    _trimmer: AbortOnDrop,
}

/// What a client's socket is before admission: the runtime's stream (`tcp-lb`), or a socket
/// not yet registered with it (`http-lb`, [`Fresh`]) that the PROXY header's peek and a TLS
/// handshake register, and plain HTTP keeps as it is.
pub(crate) trait Admissible: Send {
    fn registered(&mut self) -> io::Result<&mut TcpStream>;
    fn into_registered(self) -> io::Result<TcpStream>;
    fn local_addr(&self) -> io::Result<SocketAddr>;
    fn plain(self) -> Conn;
}

impl Admissible for TcpStream {
    fn registered(&mut self) -> io::Result<&mut TcpStream> {
        Ok(self)
    }

    fn into_registered(self) -> io::Result<TcpStream> {
        Ok(self)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::local_addr(self)
    }

    fn plain(self) -> Conn {
        Conn::Plain(self)
    }
}

impl Admissible for Fresh {
    fn registered(&mut self) -> io::Result<&mut TcpStream> {
        Fresh::registered(self)
    }

    fn into_registered(self) -> io::Result<TcpStream> {
        Fresh::into_registered(self)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Fresh::local_addr(self)
    }

    fn plain(self) -> Conn {
        Conn::Fresh(self)
    }
}

/// The outcome of a client whose socket the runtime could not take (out of memory, or of
/// epoll's limit): closed before anything was read.
const UNREGISTERED: &str = "cannot-register";

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        let server = self.server;
        server.serving.store(false, Ordering::Release);
        server
            .checker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

/// How a connection that was the health probe of the proxy in front ends.
const PROBE: &str = "health-probe";

/// What a connection holds while it is served: its slot under `max-connections` and its count
/// against its IP. Dropped after the socket is closed, so that the descriptor budget behind
/// `max-connections` stays exact.
pub(crate) type Held = (Slot, ClientSlot);

/// A client past every check of the listener, with what it holds while it is served.
pub(crate) struct Admitted {
    pub(crate) conn: Conn,
    /// The real client: the peer, or what its PROXY header said.
    pub(crate) client: SocketAddr,
    /// The client, the address it dialled and whether it spoke TLS, for a backend that wants a
    /// PROXY header.
    pub(crate) origin: Option<Origin>,
    /// Whether the client spoke TLS: to us, or to the proxy in front (its PROXY v2 header's
    /// SSL TLV).
    pub(crate) tls: bool,
    /// Whether the client chose HTTP/2 in ALPN: with us, or with the proxy in front (its PROXY
    /// v2 header's ALPN TLV, chapter 17).
    pub(crate) h2: bool,
    /// Its slot under `max-connections` and its count against its IP, freed when dropped.
    pub(crate) held: Held,
}

/// How one client's connection went: the access log's line.
pub(crate) struct Outcome<'a> {
    client: SocketAddr,
    backend: Option<&'a Backend>,
    up: u64,
    down: u64,
    /// How it ended: `done`, `idle-timeout`, `client-error`, or why it never started.
    end: &'static str,
    error: Option<io::Error>,
}

impl Outcome<'_> {
    /// A connection that ended before any byte was forwarded.
    pub(crate) fn early(client: SocketAddr, end: &'static str) -> Outcome<'static> {
        Outcome {
            client,
            backend: None,
            up: 0,
            down: 0,
            end,
            error: None,
        }
    }

    /// The access log: one line per client connection, however it ended. Under the `access`
    /// target, so `RUST_LOG=info,access=off` silences it without hiding errors.
    pub(crate) fn log(self, started: Instant) {
        let Outcome {
            client,
            up,
            down,
            end,
            ..
        } = self;
        let backend: &dyn Display = match self.backend {
            Some(b) => b,
            None => &"-",
        };
        let duration = started.elapsed();
        if end == PROBE {
            tracing::debug!(target: "access", %client, "health probe from the proxy in front");
            return;
        }
        match self.error {
            None => tracing::info!(
                target: "access",
                %client, %backend, up, down, ?duration, %end, "connection closed"
            ),
            Some(error) => tracing::info!(
                target: "access",
                %client, %backend, up, down, ?duration, %end, %error, "connection closed"
            ),
        }
    }
}
