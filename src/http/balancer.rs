//! The HTTP balancer itself (chapter 12): every request balanced on its own.
//!
//! Per client connection, the listener's work is chapter 10's, shared with `tcp-lb`
//! (`Server::admit`: the slot under `max-connections`, the PROXY header, allow/deny, the
//! TLS handshake). Then, instead of relaying bytes, the balancer reads HTTP/1.1 requests from
//! the connection: the common ones on its own path (`src/http/h1/`), the rest through hyper,
//! which takes the connection over when one comes. For each request, on either path:
//!
//! 1. the affinity cookie, if any, is read and taken out ([`super::affinity`]);
//! 2. a backend is chosen: the cookie's while health allows, otherwise the strategy's
//!    (chapter 9), and a cookie that named a backend now down is *redispatched*;
//! 3. hop-by-hop fields go, `X-Forwarded-*` come ([`super::forward`]);
//! 4. the request is sent on a pooled keep-alive connection to that backend
//!    ([`super::pool`]), its body streaming ([`super::body`]). What follows a failure is
//!    [`super::exchange::after`]'s rule, kept by `Attempts` for both codecs: a connect failure
//!    moves on to another backend (nothing was sent); a reset before any answer does so only
//!    for a request that can safely be sent twice (RFC 9112 §9.3.1);
//! 5. the response head comes back with `Set-Cookie` if the user was (re)assigned; the body
//!    streams to the client, and its end writes the access-log line;
//! 6. a `101 Switching Protocols` (a WebSocket) turns both connections into one byte tunnel.
//!
//! Before any of it, the head as received goes through the exchange's rules
//! ([`super::exchange`]: framing, target and `Host`), the same the own HTTP/1 codec
//! (`super::h1`) runs. Everything that goes wrong is a status and an access-log line: 503 with
//! no backend up, 502 when none could be reached or one failed mid-request, 504 past
//! `response-timeout` (counted from the request's end), 413 past `max-body`, 400 for an
//! ambiguous or malformed request or body, 501 for `CONNECT`, 431 from hyper for an oversized
//! head, 408 for a head or a body that stops coming.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper::header::{self, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use super::affinity::{Affinity, CookieSettings, Found};
use super::assign::{self, Mode};
use super::body::{self, Download, Inbound, Payload, Upload};
use super::cache::Cache;
use super::compress;
use super::early_hints::{EarlyHints, StreamHints};
use super::exchange::{self, Failure, Next};
use super::fields::Fields;
use super::forward::{self, ClientAddr, Forwarding};
use super::grpc;
use super::h2::{self, H2Settings};
use super::metrics::{AffinityOutcome, BackendHttpCounters, HttpCounters};
use super::pool::{self, Pool, Sender};
use super::route::{Routed, RoutedTarget, Taken};
use crate::balancer::Balancer;
use crate::conn::{Conn, Fresh};
use crate::limits::Entry;
use crate::net;
use crate::relay;
use crate::server::Server;

use super::h1;

/// Attempts one request gets beyond two per backend (a pooled connection, then a fresh one):
/// pooled connections found closed on the way. A backend that restarted leaves every pooled
/// connection to it stale, and each costs an attempt before a fresh dial.
const STALE_POOLED: usize = 8;

/// How long a client may take to send a request head unless configured.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a backend may take to start answering unless configured.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest request head accepted unless configured; larger ones are answered 431. nginx
/// allows 4 × 8 KiB of large headers, HAProxy 16 KiB in all: 64 KiB leaves room for fat
/// cookies while bounding what one client can make us hold.
pub const DEFAULT_MAX_HEAD: usize = 64 * 1024;

/// The HTTP settings of one configuration (what `[http]` and the chapter's flags hold).
#[derive(Clone)]
pub struct Settings {
    /// Proxy each request, or assign a backend (chapter 14).
    pub mode: Mode,
    /// Compress answers the client accepts compressed, above this many bytes (chapter 16).
    pub compress: Option<u64>,
    /// Response fields removed before the client sees them (chapter 16).
    pub hide: Vec<hyper::header::HeaderName>,
    /// Routes, first match wins (chapter 16); `--static` folders are routes too.
    pub routes: Vec<Routed>,
    /// The response cache: its byte bound and its default `stale-if-error` (chapter 16).
    pub cache: Option<(usize, Duration)>,
    /// Cookie affinity: the shared secret and how the cookie is written; `None` balances every
    /// request afresh.
    pub affinity: Option<(Vec<u8>, CookieSettings)>,
    pub forwarding: Forwarding,
    pub header_timeout: Duration,
    pub response_timeout: Duration,
    pub max_head: usize,
    pub max_body: Option<u64>,
    pub pool_max_idle: usize,
    pub pool_idle_timeout: Duration,
    /// HTTP/2 from clients (chapter 17).
    pub h2: H2Settings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Proxy,
            compress: None,
            hide: Vec::new(),
            routes: Vec::new(),
            cache: None,
            affinity: None,
            forwarding: Forwarding::default(),
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            max_head: DEFAULT_MAX_HEAD,
            max_body: None,
            pool_max_idle: pool::DEFAULT_MAX_IDLE,
            pool_idle_timeout: pool::DEFAULT_IDLE_TIMEOUT,
            h2: H2Settings::default(),
        }
    }
}

impl Settings {
    /// Whether requests under these settings need hyper's path: the balancer's own HTTP/1
    /// path (`http::h1`) does only the proxying of chapter 12. Every field is named here,
    /// without `..`, so that a setting added to `Settings` does not compile until it says
    /// whether the own path serves it: a setting cannot be silently skipped by one path.
    pub fn needs_hyper(&self) -> bool {
        let Settings {
            mode,
            compress,
            routes,
            cache,
            // The own path applies these itself, on the same rules as hyper's.
            hide: _,
            affinity: _,
            forwarding: _,
            header_timeout: _,
            response_timeout: _,
            max_head: _,
            max_body: _,
            pool_max_idle: _,
            pool_idle_timeout: _,
            // An HTTP/2 connection is hyper's whatever the settings; HTTP/1 ones are not
            // concerned.
            h2: _,
        } = self;
        *mode != Mode::Proxy || compress.is_some() || !routes.is_empty() || cache.is_some()
    }
}

/// What one backend keeps across reloads: its pool and its HTTP counters.
pub(super) struct BackendHttp {
    pub(super) pool: Arc<Pool>,
    pub(super) counters: BackendHttpCounters,
}

/// One configuration, as requests see it: the balancer and, index for index, each backend's
/// pool, counters and name.
pub(super) struct Upstreams {
    pub(super) balancer: Arc<Balancer>,
    pub(super) backends: Vec<Arc<BackendHttp>>,
    pub(super) names: Vec<Arc<str>>,
    /// Each backend's public URL, for assignment mode.
    pub(super) urls: Vec<String>,
    /// The response cache (chapter 16), kept across reloads while its size stays.
    pub(super) cache: Option<Arc<Cache>>,
    /// For each route of `settings.routes` that is a pool: the backends *outside* it, which its
    /// requests treat as already tried.
    pub(super) pools: Vec<Vec<usize>>,
    pub(super) affinity: Option<Affinity>,
    pub(super) settings: Settings,
    /// `settings.hide`, shared with each answer's body (its trailers).
    pub(super) hidden: Arc<[hyper::header::HeaderName]>,
    /// Some backend is spoken to in HTTP/2 (chapter 17), which only hyper's path does.
    pub(super) any_h2: bool,
}

impl Upstreams {
    fn new(balancer: Arc<Balancer>, settings: Settings, old: Option<&Upstreams>) -> Upstreams {
        let specs: Vec<_> = balancer.backends().iter().map(|b| b.spec()).collect();
        let backends = specs
            .iter()
            .map(|spec| {
                let kept = old.and_then(|old| {
                    let j = old
                        .balancer
                        .backends()
                        .iter()
                        .position(|b| b.spec().same_target(spec))?;
                    Some(Arc::clone(&old.backends[j]))
                });
                kept.unwrap_or_else(|| {
                    Arc::new(BackendHttp {
                        pool: Arc::new(Pool::new(
                            settings.pool_max_idle,
                            settings.pool_idle_timeout,
                        )),
                        counters: BackendHttpCounters::default(),
                    })
                })
            })
            .collect();
        // How logs and metrics name a backend: its registered name (chapter 14), or its address.
        let names: Vec<Arc<str>> = balancer
            .backends()
            .iter()
            .map(|b| Arc::from(b.spec().name.clone().unwrap_or_else(|| b.to_string())))
            .collect();
        let affinity = settings.affinity.as_ref().map(|(secret, cookie)| {
            // The identity is the backend's name, or its address as configured
            // (`tls://host:port` or `host:port`): what every instance's config (or registry)
            // says, whatever the order or the resolved address.
            let ids: Vec<String> = specs.iter().map(|s| s.identity()).collect();
            Affinity::new(secret, cookie.clone(), &ids)
        });
        let urls = specs.iter().map(|s| s.public_url()).collect();
        let cache = settings.cache.map(|(max, stale)| {
            old.and_then(|o| o.cache.clone())
                .filter(|c| c.max_bytes() == max)
                .unwrap_or_else(|| Arc::new(Cache::new(max, stale)))
        });
        let pools = settings
            .routes
            .iter()
            .map(|r| match &r.route.target {
                super::route::Target::Backends(members) => {
                    let inside = |spec: &crate::backend::BackendSpec| {
                        members.iter().any(|m| {
                            spec.name.as_deref() == Some(m.as_str())
                                || spec.to_string() == *m
                                || spec.addr.to_string() == *m
                        })
                    };
                    let outside: Vec<usize> = (0..specs.len()).filter(|&i| !inside(specs[i])).collect();
                    if outside.len() == specs.len() {
                        tracing::error!(route = %r.route.prefix, "no backend of this route's pool is configured: its requests get 503");
                    }
                    outside
                }
                _ => Vec::new(),
            })
            .collect();
        let any_h2 = specs.iter().any(|spec| spec.protocol.is_h2());
        Upstreams {
            balancer,
            backends,
            names,
            urls,
            cache,
            pools,
            affinity,
            hidden: Arc::from(settings.hide.as_slice()),
            any_h2,
            settings,
        }
    }
}

/// What steps 1 and 2 of a request chose.
pub(super) struct Chosen {
    /// The backend, if any is up.
    pub(super) pick: Option<usize>,
    pub(super) outcome: AffinityOutcome,
    /// The backend the request's cookie named, valid or not now.
    pub(super) cookie: Option<usize>,
}

impl Upstreams {
    /// Steps 1 and 2, shared by hyper's path and the balancer's own: the affinity cookie is
    /// taken out of `headers`, and the backend it names is chosen while health allows (and it
    /// is not in `tried`), else the strategy's among those not in `tried`.
    pub(super) fn choose(
        &self,
        headers: &mut impl Fields,
        client: IpAddr,
        tried: &[usize],
    ) -> Chosen {
        let found = match &self.affinity {
            Some(affinity) => affinity.take(headers),
            None => Found::None,
        };
        let cookie = match found {
            Found::Backend(i) => Some(i),
            _ => None,
        };
        let (pick, outcome) = match (found, &self.affinity) {
            (_, None) => (None, AffinityOutcome::Off),
            (Found::Backend(i), Some(_)) if self.balancer.is_up(i) && !tried.contains(&i) => {
                (Some(i), AffinityOutcome::Hit)
            }
            (Found::Backend(_), Some(_)) => (None, AffinityOutcome::Redispatch),
            (Found::None | Found::Unknown, Some(_)) => (None, AffinityOutcome::Miss),
        };
        Chosen {
            pick: pick.or_else(|| self.balancer.pick(client, tried)),
            outcome,
            cookie,
        }
    }

    /// The first route (chapter 16) that takes `req`, if any.
    fn route_of(&self, headers: &hyper::HeaderMap, uri: &Uri) -> Option<usize> {
        if self.settings.routes.is_empty() {
            return None;
        }
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let path = uri.path();
        self.settings
            .routes
            .iter()
            .position(|r| r.route.matches(host, path))
    }

    /// Removes the fields `--hide-header` names from an answer (chapter 16).
    pub(super) fn hide(&self, fields: &mut impl Fields) {
        for name in &self.settings.hide {
            fields.remove(name.as_str());
        }
    }

    /// Logs a pick that the affinity cookie could not make (chapter 12), on every path.
    pub(super) fn log_redispatch(&self, outcome: AffinityOutcome, i: usize, client: SocketAddr) {
        if outcome == AffinityOutcome::Redispatch {
            tracing::info!(%client, backend = %self.names[i],
                "affinity cookie named a backend that is down or gone: redispatched");
        }
    }

    /// Chapter 12's rules on a head the own codecs pass on as it was read: the hop-by-hop
    /// fields go (RFC 9110 §7.6.1), `X-Forwarded-*` are set (§7.6).
    pub(super) fn forward_read(
        &self,
        headers: &mut super::fields::ReadFields<'_>,
        info: &ConnInfo,
    ) {
        forward::strip_hop_by_hop(headers, false);
        self.settings
            .forwarding
            .apply(headers, &info.forwarded_for, info.tls);
    }

    /// Whether `--hide-header` names `name`.
    pub(super) fn hides(&self, name: &[u8]) -> bool {
        self.settings
            .hide
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
    }

    /// The fields this balancer adds to an answer from backend `i`, on both paths: the
    /// affinity cookie when the user was (re)assigned, with `Cache-Control: no-cache=
    /// "set-cookie"` so that a shared cache does not hand this user's cookie to the next one
    /// (RFC 9111 §5.2.2.4), and `Via` (RFC 9110 §7.6.3) when configured.
    pub(super) fn answer_fields(
        &self,
        outcome: AffinityOutcome,
        i: usize,
        tls: bool,
    ) -> impl Iterator<Item = (HeaderName, &HeaderValue)> {
        static NO_CACHE_COOKIE: HeaderValue = HeaderValue::from_static("no-cache=\"set-cookie\"");
        static VIA: HeaderValue = HeaderValue::from_static(forward::VIA_VALUE);
        let cookie = match (outcome, &self.affinity) {
            (AffinityOutcome::Hit, _) | (_, None) => None,
            (_, Some(affinity)) => affinity.set_cookie(i, tls),
        };
        let cookie = cookie.into_iter().flat_map(|c| {
            [
                (header::SET_COOKIE, c),
                (header::CACHE_CONTROL, &NO_CACHE_COOKIE),
            ]
        });
        let via = self.settings.forwarding.via.then_some((header::VIA, &VIA));
        cookie.chain(via)
    }
}

/// One request's attempts at an answer, for both codecs: which backend now, whether a pooled
/// connection may be used, and after each failure what [`exchange::after`] allows. The loop
/// around it is each codec's own (hyper's `SendRequest`, or the own path's socket); the
/// decisions are these, once.
pub(super) struct Attempts<'a> {
    pub(super) up: &'a Upstreams,
    pub(super) client: SocketAddr,
    /// The backend of the next attempt.
    pub(super) i: usize,
    /// Backends that failed this request (and those outside its route's pool).
    pub(super) tried: Vec<usize>,
    /// After a pooled connection failed under the request: dial rather than reuse.
    pub(super) fresh_only: bool,
    pub(super) left: usize,
    /// Idempotent and without a body: may be sent again once written (RFC 9110 §9.2.2).
    pub(super) replayable: bool,
    /// What the client gets if no attempt succeeds.
    pub(super) status: StatusCode,
}

impl<'a> Attempts<'a> {
    pub(super) fn new(
        up: &'a Upstreams,
        client: SocketAddr,
        i: usize,
        tried: Vec<usize>,
        replayable: bool,
    ) -> Attempts<'a> {
        Attempts {
            up,
            client,
            i,
            tried,
            fresh_only: false,
            // Two per backend (a pooled connection, then a fresh one), and pooled connections
            // found closed on the way.
            left: 2 * up.backends.len() + STALE_POOLED,
            replayable,
            status: StatusCode::BAD_GATEWAY,
        }
    }

    /// Counts one attempt; `false` when none is left.
    pub(super) fn another(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }

    /// Whether this attempt may use a pooled connection.
    pub(super) fn may_reuse(&self) -> bool {
        !self.fresh_only
    }

    /// The backend could not be dialled: nothing was sent, so any request may go to another
    /// backend, if failover allows one. `false`: no attempt is left.
    pub(super) fn dial_failed(&mut self, error: &io::Error) -> bool {
        let name = &self.up.names[self.i];
        tracing::warn!(client = %self.client, backend = %name, "cannot reach backend: {error}");
        if !self.up.balancer.may_try_another(error) {
            return false;
        }
        self.tried.push(self.i);
        self.next_backend()
    }

    /// An attempt failed (`reused`: on a pooled connection); `true` if the request goes
    /// again, as [`exchange::after`] rules.
    pub(super) fn failed(
        &mut self,
        failure: Failure,
        reused: bool,
        error: Option<&dyn std::fmt::Display>,
    ) -> bool {
        let name = &self.up.names[self.i];
        let error = error.map_or_else(String::new, |e| e.to_string());
        match exchange::after(failure, reused, self.replayable) {
            Next::Fresh => {
                // The keep-alive race (RFC 9112 §9.3.1): the backend closed the pooled
                // connection as the request went. The same backend, a new connection.
                tracing::debug!(backend = %name,
                    "pooled connection closed under the request: sending it again ({error})");
                self.fresh_only = true;
                true
            }
            Next::Another => {
                tracing::warn!(client = %self.client, backend = %name,
                    "backend failed before answering: {error}");
                self.tried.push(self.i);
                self.next_backend()
            }
            Next::Answer(status) => {
                match failure {
                    Failure::Timeout => tracing::warn!(client = %self.client, backend = %name,
                        "no response within {:?} of the request's end: {status}",
                        self.up.settings.response_timeout),
                    Failure::ClientBody | Failure::ClientStalled | Failure::TooLarge => {
                        tracing::info!(client = %self.client,
                            "request body refused ({status}): {error}")
                    }
                    _ => tracing::warn!(client = %self.client, backend = %name,
                        "backend failed before answering ({status}): {error}"),
                }
                self.status = status;
                false
            }
        }
    }

    fn next_backend(&mut self) -> bool {
        match self.up.balancer.pick(self.client.ip(), &self.tried) {
            Some(next) => {
                self.i = next;
                self.fresh_only = false;
                true
            }
            None => false,
        }
    }
}

/// The HTTP balancer: chapter 10's [`Server`] for the listener's work, and per request what
/// this module adds.
pub struct HttpServer {
    server: Arc<Server>,
    current: RwLock<Arc<Upstreams>>,
    pub(super) counters: HttpCounters,
    /// Set when draining starts: every connection finishes its request in flight and closes.
    pub(super) stop: watch::Sender<bool>,
    /// Told when draining starts, as `stop` is: for [`HttpServer::stopping`], whose wait is
    /// a third the size of a `watch` receiver's (HTTP/2's idle connections each hold one).
    stopping: tokio::sync::Notify,
}

/// What a request needs to know about its connection.
pub(super) struct ConnInfo {
    pub(super) client: SocketAddr,
    /// The client's address as the forwarding fields carry it.
    pub(super) forwarded_for: ClientAddr,
    pub(super) tls: bool,
    /// A request body was left (partly) unread: the connection must close lingering.
    pub(super) body_left: Arc<AtomicBool>,
    /// On hyper's path, where a backend's `103 Early Hints` go to reach the client.
    pub(super) hints: Option<Arc<EarlyHints>>,
}

impl HttpServer {
    pub fn new(balancer: Balancer, settings: Settings) -> Arc<HttpServer> {
        let server = Server::new(balancer);
        let upstreams = Upstreams::new(server.balancer(), settings, None);
        Arc::new(HttpServer {
            server,
            current: RwLock::new(Arc::new(upstreams)),
            counters: HttpCounters::default(),
            stop: watch::Sender::new(false),
            stopping: tokio::sync::Notify::new(),
        })
    }

    pub(super) fn upstreams(&self) -> Arc<Upstreams> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts a new configuration in place for the requests that start from now on. Backends
    /// it keeps keep their health, pool and counters.
    pub fn reload(&self, balancer: Balancer, settings: Settings) {
        self.replace(balancer, settings);
        // Counted once in place: whoever waits for the count (ssl-farm) may rely on it.
        self.server.count_reload();
    }

    /// [`HttpServer::reload`] without counting a reload: the registry's changes (chapter 14).
    pub fn replace(&self, balancer: Balancer, settings: Settings) {
        self.server.replace(balancer);
        let old = self.upstreams();
        let new = Upstreams::new(self.server.balancer(), settings, Some(&old));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
    }

    /// Counts a reload that was refused.
    pub fn reload_failed(&self) {
        self.server.reload_failed();
    }

    /// Serves `listener` until `shutdown` resolves; see [`HttpServer::drain`] for what follows.
    pub async fn run(self: &Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        // Clients come unregistered (`conn::Fresh`): with `net::defer_accept`, most are read,
        // answered and closed without waiting, and need no epoll registration at all.
        let listener = match net::Unregistered::new(listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!("cannot take over the listener: {e}");
                return;
            }
        };
        self.server
            .accept_loop(listener, shutdown, |stream, peer, balancer, entry| {
                tokio::spawn(Arc::clone(self).connection(stream, peer, balancer, entry));
            })
            .await;
    }

    /// After [`HttpServer::run`]: idle keep-alive connections close at once, a request in
    /// flight finishes and its response says `Connection: close`; waits as
    /// [`Server::drain`] does. Returns the connections still open at the end.
    pub async fn drain(&self, interrupt: impl Future<Output = ()>) -> usize {
        self.stop.send_replace(true);
        self.stopping.notify_waiters();
        self.server.drain(interrupt).await
    }

    /// Resolves once draining has started (at once if it has).
    pub(super) async fn stopping(&self) {
        let mut notified = std::pin::pin!(self.stopping.notified());
        // Registered before the flag is read: a drain that starts in between still wakes it.
        notified.as_mut().enable();
        if *self.stop.borrow() {
            return;
        }
        notified.await;
    }

    /// `/health` of the admin listener.
    pub fn health(&self) -> Result<&'static str, &'static str> {
        self.server.health()
    }

    /// `/metrics` of the admin listener: the listener's counters (as `tcp-lb`'s, named
    /// `httplb_`), then the per-request ones.
    pub fn metrics(&self) -> String {
        let listener = self.server.metrics().replace("tcplb_", "httplb_");
        let up = self.upstreams();
        let per_backend: Vec<(&str, &BackendHttpCounters, &Pool)> = up
            .names
            .iter()
            .zip(&up.backends)
            .map(|(n, b)| (&**n, &b.counters, &*b.pool))
            .collect();
        let cache = up.cache.as_ref().map(|c| c.metrics()).unwrap_or_default();
        listener + &self.counters.render(&per_backend, &up.settings.routes) + &cache
    }

    /// One client connection: admission, then hyper serving its requests, then a lingering
    /// close.
    async fn connection(
        self: Arc<Self>,
        stream: Fresh,
        peer: SocketAddr,
        balancer: Arc<Balancer>,
        entry: Entry,
    ) {
        let started = Instant::now();
        // A connection accepted is work on this thread (chapter 17's held frames).
        crate::http::h2::held::busy();
        // Boxed, as in `Server::run` (chapter 11, step 9): admission is over before the first
        // request, but inline it would size the task for the connection's whole life. Taken
        // apart inside the block, so that the whole of it (the PROXY header's origin too)
        // takes no room in the task once the connection is served.
        // `held` first, so dropped last: the slots are freed only once the socket is closed.
        let (held, mut conn, info, chose_h2) = {
            let admitted = match Box::pin(self.server.admit(stream, peer, &balancer, entry)).await {
                Ok(admitted) => admitted,
                Err(refused) => return refused.log(started),
            };
            let client = admitted.client;
            let info = Arc::new(ConnInfo {
                client,
                forwarded_for: ClientAddr::new(client.ip()),
                tls: admitted.tls,
                body_left: Arc::new(AtomicBool::new(false)),
                hints: None,
            });
            (admitted.held, admitted.conn, info, admitted.h2)
        };
        // Chapter 17: a client that chose h2 in ALPN, with us or with the TLS offloader in
        // front (its PROXY v2 header said so). It moves to a task of its own: sized for the
        // HTTP/2 connection alone, where this one is sized for every codec's start.
        if chose_h2 {
            return Arc::clone(&self).serve_h2(conn, Vec::new(), info, held);
        }
        // The balancer's own HTTP/1 path first, while the requests are simple; hyper takes
        // the connection (with what was read of it) as soon as one is not. HTTP/2's preface
        // is not HTTP/1 (its version is 2.0), so it comes back at once.
        let mut prefix = Vec::new();
        if h1::enabled() && h1::takes(&self.upstreams()) {
            // Boxed, as the other codecs are: the task's own future is then the size of the
            // little this function keeps, whichever codec serves the connection (an HTTP/2
            // connection found after this moves to a task of its own, and this one ends).
            match Box::pin(self.serve_h1(&mut conn, &info)).await {
                h1::Left::Closed { clean } => return close_client(conn, clean).await,
                h1::Left::ToHyper(read) => prefix = read,
            }
        }
        // Chapter 17: HTTP/2 in clear text, by prior knowledge, where `--h2c` allows.
        let settings = &self.upstreams().settings;
        if settings.h2.h2c
            && matches!(conn, Conn::Plain(_) | Conn::Fresh(_))
            && Box::pin(h2::starts_with_preface(
                &mut conn,
                &mut prefix,
                settings.header_timeout,
            ))
            .await
        {
            return Arc::clone(&self).serve_h2(conn, prefix, info, held);
        }
        // Boxed: the hyper half is big (its connection state, the service) and most
        // connections never need it; left inline it would size every connection's task.
        Box::pin(Arc::clone(&self).serve_hyper(conn, prefix, info, started)).await;
    }

    /// hyper serves the connection from here on, starting with `prefix` (bytes the own path
    /// had read), then closes it.
    async fn serve_hyper(
        self: Arc<Self>,
        conn: Conn,
        prefix: Vec<u8>,
        info: Arc<ConnInfo>,
        started: Instant,
    ) {
        let settings = self.upstreams().settings.clone();
        let (back, returned) = oneshot::channel();
        let hints = Arc::new(EarlyHints::default());
        let info = Arc::new(ConnInfo {
            client: info.client,
            forwarded_for: info.forwarded_for.clone(),
            tls: info.tls,
            body_left: Arc::clone(&info.body_left),
            hints: Some(Arc::clone(&hints)),
        });
        let mut returning = Returning::new(conn, prefix, Some(hints));
        returning.back = Some(back);
        let io = TokioIo::new(returning);
        let this = Arc::clone(&self);
        let service_info = Arc::clone(&info);
        let service = hyper::service::service_fn(move |req| {
            let this = Arc::clone(&this);
            let info = Arc::clone(&service_info);
            async move { Ok::<_, Infallible>(this.request(req.map(Inbound::from), &info).await) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_timeout)
            // Checked on every head, complete or not (`max_buf_size` alone lets a head that
            // arrives in one read through).
            .max_header_size(settings.max_head)
            .max_buf_size(settings.max_head.max(8192))
            // A client that half-closes after its request still gets the whole answer.
            .half_close(true)
            .keep_alive(true)
            // One contiguous `send` per response rather than a `writev` of head and body: for
            // the small answers most traffic is made of, copying the body behind the head
            // costs less than the kernel's and hyper's per-slice bookkeeping (chapter 12:
            // 5-8 % less CPU per keep-alive request, measured; bulk downloads unchanged).
            .writev(false);
        let mut conn = Box::pin(builder.serve_connection(io, service).with_upgrades());
        let mut stop = self.stop.subscribe();
        let stopping = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        let result = tokio::select! {
            result = conn.as_mut() => result,
            () = stopping => {
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
            }
        };
        drop(conn);
        let client = info.client;
        let error = result.err();
        // A head that did not arrive in time, or that hyper refused (it has answered 400 or
        // 431 itself): a line in the access log as for any other request.
        if let Some(e) = &error {
            let status = if e.is_timeout() {
                Some(StatusCode::REQUEST_TIMEOUT)
            } else if e.is_parse_too_large() {
                Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            } else if e.is_parse() {
                Some(StatusCode::BAD_REQUEST)
            } else {
                tracing::debug!(%client, "connection ended: {e}");
                None
            };
            if let Some(status) = status {
                self.refused_head(client, status, started, e);
            }
        }
        // hyper hands the socket back when it is done with it (for an upgrade, when the
        // tunnel ends). A head that timed out half-sent gets its 408 here: hyper only closes.
        let Ok((mut stream, partial)) = returned.await else {
            return;
        };
        if partial && error.as_ref().is_some_and(|e| e.is_timeout()) {
            let _ = tokio::time::timeout(net::LINGER, stream.write_all(TIMEOUT_408)).await;
        }
        let clean = error.is_none() && !info.body_left.load(Ordering::Relaxed);
        close_client(stream, clean).await;
    }

    /// A request head refused before it became a request (400, 408, 431): counted, and a
    /// line in the access log as for any other request.
    pub(super) fn refused_head(
        &self,
        client: SocketAddr,
        status: StatusCode,
        started: Instant,
        error: &dyn std::fmt::Display,
    ) {
        self.counters.local(status);
        tracing::info!(target: "access", %client, method = "-", path = "-",
            status = status.as_u16(), bytes = 0u64, duration = ?started.elapsed(),
            backend = "-", affinity = "-", error = %error, "request");
    }

    /// One request, from its head to the head of its response (the body streams on after).
    pub(super) async fn request(
        self: &Arc<Self>,
        req: Request<Inbound>,
        info: &ConnInfo,
    ) -> Response<Download> {
        let own = matches!(req.body(), Inbound::Own(_));
        self.counters.path(own, req.version() == Version::HTTP_2);
        // Chapter 17: a gRPC call learns of our failures in gRPC's terms.
        if grpc::is_grpc(req.headers()) {
            let deadline = grpc::deadline(req.headers()).is_some();
            let mut response = Box::pin(self.answer(req, info)).await;
            if response.extensions().get::<Local>().is_some() {
                grpc::answer_in_grpc(&mut response, deadline);
            }
            return response;
        }
        self.answer(req, info).await
    }

    /// [`HttpServer::request`] past the counting.
    async fn answer(
        self: &Arc<Self>,
        mut req: Request<Inbound>,
        info: &ConnInfo,
    ) -> Response<Download> {
        // The exchange's rules on the head as received, before the cache keys on it or a field
        // is edited: the same rules the own path runs (`h1::parse`).
        if let Err(refused) = check_request(&req) {
            tracing::info!(client = %info.client, "request refused: {}", refused.why);
            // Where this request's body ends cannot be trusted (RFC 9112 §6.1): the
            // connection closes after the answer, lingering.
            info.body_left.store(true, Ordering::Relaxed);
            let line = Line {
                client: info.client,
                method: req.method().clone(),
                path: req.uri().to_string(),
                backend: None,
                affinity: AffinityOutcome::Off,
                started: Instant::now(),
            };
            let mut response = self.local(refused.status, line);
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        one_length(req.headers_mut());
        // One configuration for the whole request, cache, routes and backends alike: a reload
        // that lands meanwhile applies from the next request on.
        let up = self.upstreams();
        // A static folder or a redirect (chapter 16's routes) answers itself: the cache has
        // nothing to do with it, and its answer says nothing of a cache.
        let route = up.route_of(req.headers(), req.uri());
        if let Some(k) = route {
            crate::metrics::inc(&up.settings.routes[k].hits);
        }
        let answers_itself =
            route.is_some_and(|k| !matches!(up.settings.routes[k].target, RoutedTarget::Pool));
        match up.cache.clone() {
            // Boxed: the cache's state is the largest of a request's, and inline it would size
            // every request's future for it (7 KiB a stream over HTTP/2, where each is boxed),
            // cache or not.
            Some(cache) if !answers_itself => Box::pin(self.cached(&up, &cache, req, info)).await,
            _ => self.proxied(&up, req.map(Some), info, None).await,
        }
    }

    /// One request carried to a backend. With `origin`, the backend's response head as it
    /// came (before this balancer adds or removes anything) is copied there, for the cache.
    /// A body of `None` is no body: a request the balancer makes itself (the cache's
    /// revalidation in the background, chapter 16).
    pub(in crate::http) async fn proxied(
        &self,
        up: &Arc<Upstreams>,
        mut req: Request<Option<Inbound>>,
        info: &ConnInfo,
        origin: Option<&mut Option<hyper::http::response::Parts>>,
    ) -> Response<Download> {
        let started = Instant::now();
        let upgrade = forward::wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // RFC 9110 §15.2: no 1xx to an HTTP/1.0 client. An own HTTP/2 stream's go to its
        // connection (`early_hints::StreamHints`).
        let hinting = info
            .hints
            .as_ref()
            .filter(|_| parts.version == Version::HTTP_11);
        let stream_hints = parts.extensions.remove::<StreamHints>();
        let mut line = Line {
            client: info.client,
            method: parts.method.clone(),
            // Copied only when the access log is on: a string per request otherwise wasted.
            path: match tracing::enabled!(target: "access", tracing::Level::INFO) {
                true => parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
                false => String::new(),
            },
            backend: None,
            affinity: AffinityOutcome::Off,
            started,
        };

        let has_body = body
            .as_ref()
            .is_some_and(|body| !hyper::body::Body::is_end_stream(body));
        // Chapter 16: the first route that takes the request.
        let routed = up.route_of(&parts.headers, &parts.uri);
        let excluded: &[usize] = match routed {
            None => &[],
            Some(k) => match up.settings.routes[k].take(&parts).await {
                Taken::Pool => &up.pools[k],
                Taken::Answer(mut response, by) => {
                    // Answered without reading a body the client may be sending.
                    if has_body {
                        info.body_left.store(true, Ordering::Relaxed);
                    }
                    up.hide(response.headers_mut());
                    line.backend = Some(Arc::from(by));
                    let status = response.status();
                    response
                        .body_mut()
                        .set_on_end(Box::new(move |bytes, complete| {
                            line.log(status, bytes, complete)
                        }));
                    return response;
                }
            },
        };
        // Chapter 16: what the answer may be compressed with, decided from the request before
        // it is passed on.
        let compressing = up
            .settings
            .compress
            .map(|min| compress::Wanted::of(&parts, min));
        // An answer given before the body is passed on leaves it unread (later, `Upload` says
        // so itself if it is dropped before its end).
        let unread = |info: &ConnInfo| {
            if has_body {
                info.body_left.store(true, Ordering::Relaxed);
            }
        };
        if let Some(max) = up.settings.max_body
            && content_length(&parts.headers).is_some_and(|len| len > max)
        {
            unread(info);
            return self.local(StatusCode::PAYLOAD_TOO_LARGE, line);
        }

        // 1 and 2: the cookie's backend while health allows, else the strategy's. A route's
        // pool: the backends outside it count as tried.
        let balancer = &up.balancer;
        let mut tried: Vec<usize> = excluded.to_vec();
        let Chosen {
            pick,
            mut outcome,
            cookie: cookie_backend,
        } = up.choose(&mut parts.headers, info.client.ip(), &tried);
        line.affinity = outcome;
        let Some(mut i) = pick else {
            tracing::warn!(client = %info.client, "no backend is up: 503");
            unread(info);
            return self.local(StatusCode::SERVICE_UNAVAILABLE, line);
        };
        up.log_redispatch(outcome, i, info.client);
        if up.settings.mode == Mode::Assign {
            unread(info);
            // A client whose server stopped answering says which (`?exclude=NAME`): it gets
            // another for this request, and a new cookie. Only for itself: one client cannot
            // take a server out for everyone; health checks and leases do that.
            if let Some(bad) = assign::excluded(&parts.uri)
                && *up.names[i] == *bad
            {
                tried.push(i);
                match balancer.pick(info.client.ip(), &tried) {
                    Some(other) => {
                        i = other;
                        outcome = AffinityOutcome::Redispatch;
                        line.affinity = outcome;
                    }
                    None => {
                        tracing::warn!(client = %info.client, "no backend but the excluded one: 503");
                        return self.local(StatusCode::SERVICE_UNAVAILABLE, line);
                    }
                }
            }
            return self.assign(up, i, outcome, &parts.uri, info.tls, line);
        }

        // 3: what the backend is sent. `TE: trailers` (gRPC's) is hop-by-hop, but an HTTP/2
        // backend may be sent it again (RFC 9113 §8.2.2): the client can read trailers.
        // A gRPC call's deadline bounds the wait for its answer too (chapter 17).
        let grpc_deadline = grpc::is_grpc(&parts.headers)
            .then(|| grpc::deadline(&parts.headers))
            .flatten();
        let trailers = parts
            .headers
            .get_all(header::TE)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        forward::strip_hop_by_hop(&mut parts.headers, upgrade);
        // The target's authority becomes `Host` (RFC 9112 §3.2.2 for an absolute form; an
        // HTTP/2 request's `:authority`, RFC 9113 §8.3.1) before `X-Forwarded-Host` copies it.
        origin_form(&mut parts.uri, &mut parts.headers);
        up.settings
            .forwarding
            .apply(&mut parts.headers, &info.forwarded_for, info.tls);
        // Between two pieces of a body, either way: `--idle-timeout`, else as long as a backend
        // has to start its answer.
        let stall = balancer
            .idle_timeout
            .unwrap_or(up.settings.response_timeout);
        let timeout = match grpc_deadline {
            Some(grpc) => grpc.min(up.settings.response_timeout),
            None => up.settings.response_timeout,
        };
        // An HTTP/2 stream without a body, to an HTTP/1.1 backend: the own hop, which the
        // stream's own task runs (`h1::hop`).
        if h1::hop::takes(up, &parts, has_body) {
            let replayable = exchange::is_idempotent(&parts.method);
            let attempts = Attempts::new(up, info.client, i, tried, replayable);
            let (out, method) = h1::hop::written(parts);
            return self
                .proxied_own(
                    up,
                    out,
                    method,
                    info,
                    line,
                    attempts,
                    (outcome, cookie_backend),
                    timeout,
                    stall,
                    // The own HTTP/2 codec takes the answer's fields as its header block.
                    matches!(body, Some(Inbound::Own(_))),
                    stream_hints,
                )
                .await;
        }
        parts.version = Version::HTTP_11;
        let method = parts.method.clone();
        // A copy to send again should a backend reset before answering: only for requests
        // that may be repeated (RFC 9110 §9.2.2) and have no body we would have to keep.
        let replayable = exchange::is_idempotent(&parts.method) && !has_body && !upgrade;
        let replay = replayable.then(|| {
            (
                parts.method.clone(),
                parts.uri.clone(),
                parts.headers.clone(),
            )
        });
        let upload = match body {
            Some(body) => Upload::new(
                body,
                up.settings.max_body,
                Arc::clone(&info.body_left),
                stall,
            ),
            None => Upload::empty(),
        };
        let mut request = Some(Request::from_parts(parts, upload));
        // The backend's Early Hints reach the client while this request waits (hyper's path).
        let hints = hinting.map(|hints| Arc::new(hints.open()));

        // 4: send it, on a pooled connection when there is one; after a failure, what the
        // exchange's rule allows (`Attempts`).
        let mut attempts = Attempts::new(up, info.client, i, tried, replayable);
        let mut answered = None;
        while attempts.another() {
            let i = attempts.i;
            let backend = &up.backends[i];
            let spec = up.balancer.backends()[i].spec();
            let pooled = match (attempts.may_reuse(), spec.protocol.is_h2()) {
                (true, false) => backend.pool.take(),
                (true, true) => backend.pool.take_h2(),
                (false, _) => None,
            };
            let (mut sender, fresh) = match pooled {
                Some(sender) => (sender, false),
                None => match self.dial(up, i).await {
                    Ok(sender) => (sender, true),
                    Err(e) if attempts.dial_failed(&e) => continue,
                    Err(_) => break,
                },
            };
            let Some(mut req) = request.take() else { break };
            fit(&mut req, spec.protocol, spec.tls, trailers);
            if let Some(open) = &hints {
                let (open, up) = (Arc::clone(open), Arc::clone(up));
                hyper::ext::on_informational(&mut req, move |hint| {
                    EarlyHints::hint(&open, hint.status(), hint.headers(), &up.settings.hide);
                });
            } else if let Some(stream) = &stream_hints {
                let (stream, up) = (stream.clone(), Arc::clone(up));
                hyper::ext::on_informational(&mut req, move |hint| {
                    stream.hint_map(hint.status(), hint.headers(), &up.settings.hide);
                });
            }
            let active = balancer.count_active_owned(i);
            // `response-timeout` counts from the request's end (a slow upload is the client's
            // time, bounded by the body's idle limit), as HAProxy's `timeout server` does.
            let uploaded = req.body_mut().when_sent();
            let deadline = async move {
                let _ = uploaded.await;
                tokio::time::sleep(timeout).await;
            };
            let sent = tokio::select! {
                sent = sender.send(req) => Some(sent),
                () = deadline => None,
            };
            let (failed, error) = match sent {
                Some(Ok(response)) => {
                    sender.answered();
                    answered = Some((response, sender, active, i));
                    break;
                }
                None => (Failure::Timeout, None),
                Some(Err(mut e)) => match e.take_message() {
                    // Never written: a pooled connection the backend had closed. The same
                    // request goes again, on another connection.
                    Some(unsent) => {
                        request = Some(unsent);
                        (Failure::Unsent, Some(e.into_error()))
                    }
                    None => {
                        let error = e.into_error();
                        let failed = if body::is_too_large(&error) {
                            Failure::TooLarge
                        } else if body::caused_by::<body::Stalled>(&error) {
                            Failure::ClientStalled
                        } else if error.is_user() {
                            // Our `Upload` failed: the client's body broke its framing or
                            // ended early (RFC 9112 §7.1, §8): the client's error, not the
                            // backend's.
                            Failure::ClientBody
                        } else if error.is_parse() || error.is_parse_status() {
                            // Something came back, and it was not an answer: as on the own
                            // path, the backend's error, and not a reason to send it again.
                            Failure::BadAnswer
                        } else {
                            Failure::NoAnswer
                        };
                        (failed, Some(error))
                    }
                },
            };
            drop(active);
            sender.abort();
            if !attempts.failed(failed, !fresh, error.as_ref().map(|e| e as _)) {
                break;
            }
            if request.is_none()
                && let Some((method, uri, headers)) = &replay
            {
                let mut again = Request::new(Upload::empty());
                *again.method_mut() = method.clone();
                *again.uri_mut() = uri.clone();
                *again.headers_mut() = headers.clone();
                request = Some(again);
            }
        }
        // Hints this request queued leave before its answer, whatever it is (`early_hints`).
        if let Some(open) = &hints {
            open.written().await;
        }
        let Some((mut response, sender, active, i)) = answered else {
            return self.local(attempts.status, line);
        };
        // The answer's framing, by the same rule as the own path's (RFC 9112 §6.3): hyper's
        // client lets Transfer-Encoding win over a Content-Length beside it, but the field
        // would still reach the client, which may believe it instead.
        if let Err(why) = exchange::response_framing(
            response.status(),
            &method,
            response
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        ) {
            tracing::warn!(client = %info.client, backend = %up.names[i],
                "answer refused (502): {why}");
            drop(response);
            sender.abort();
            drop(active);
            return self.local(StatusCode::BAD_GATEWAY, line);
        }
        // The length the client reads is the one decided here, written as one plain number,
        // as the own hop writes it: hyper's server passed `Content-Length: 010` on as it came,
        // which RFC 9110 §8.6 allows (10) and a client parsing with C's `strtol` in base 0
        // reads as 8, then takes the rest of the body for the next answer.
        if let Some(n) = content_length(response.headers()) {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        line.answered_by(&mut outcome, cookie_backend, &up.names[i], i);
        let backend = Arc::clone(&up.backends[i]);
        backend
            .counters
            .observe(response.status(), started.elapsed());

        // 5 and 6: the response head, and what becomes of the connection.
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let mut reusable = Some(sender);
        let mut active = Some(active);
        if switching && let Some(client_side) = client_upgrade {
            // The backend connection becomes the tunnel: it never goes back to the pool.
            reusable = None;
            let active = active.take();
            let backend_side = hyper::upgrade::on(&mut response);
            let idle = balancer.idle_timeout;
            let state = Arc::clone(&up.balancer);
            tokio::spawn(async move {
                let (Ok(client_io), Ok(backend_io)) = tokio::join!(client_side, backend_side)
                else {
                    return;
                };
                let (mut a, mut b) = (TokioIo::new(client_io), TokioIo::new(backend_io));
                let counters = &state.state(i).counters;
                let _active = active;
                relay::relay(
                    &mut a,
                    &mut b,
                    idle,
                    &counters.bytes_up,
                    &counters.bytes_down,
                )
                .await;
            });
        }
        let (mut head, body) = response.into_parts();
        forward::strip_hop_by_hop(&mut head.headers, switching && upgrade);
        if let Some(origin) = origin {
            *origin = Some(head.clone());
        }
        // Chapter 16: what the backend runs is nobody's business.
        up.hide(&mut head.headers);
        let payload = match compressing {
            Some(wanted) => wanted.payload(&mut head, body, &self.counters.compression),
            None => Payload::Upstream(body),
        };
        for (name, value) in up.answer_fields(outcome, i, info.tls) {
            head.headers.append(name, value.clone());
        }
        self.counters.affinity(outcome);
        let status = head.status;
        let on_end: body::OnEnd = Box::new(move |bytes, complete| {
            // The request counts on its backend (least-connections) until its body is sent.
            drop(active);
            backend.counters.bytes(bytes);
            // A connection whose response was read to the end can carry the next request; one
            // abandoned halfway cannot (hyper would have to read the rest first) and closes.
            match (complete, reusable) {
                (true, Some(sender)) => backend.pool.put(sender),
                // Abandoned halfway: nothing more of it is wanted, and the socket closes now
                // rather than when the backend next sends something.
                (false, Some(sender)) => sender.abort(),
                (_, None) => {}
            }
            line.log(status, bytes, complete);
        });
        let mut download = Download::new(payload, Some(on_end));
        download.set_stall(stall);
        download.set_hide(Arc::clone(&up.hidden));
        Response::from_parts(head, download)
    }

    /// Dials backend `i` and starts an HTTP/1.1 connection on it, or an HTTP/2 one that the
    /// requests after this one share (chapter 17).
    async fn dial(&self, up: &Upstreams, i: usize) -> io::Result<Sender> {
        let h2 = up.balancer.backends()[i].spec().protocol.is_h2();
        let _one = match h2 {
            true => {
                let one = up.backends[i].pool.dialling_h2().await;
                if let Some(sender) = up.backends[i].pool.take_h2() {
                    return Ok(sender);
                }
                Some(one)
            }
            false => None,
        };
        let conn = up.balancer.dial_reporting(i, None).await?;
        if h2 {
            let (sender, connection) =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .initial_stream_window_size(h2::STREAM_WINDOW)
                    .initial_connection_window_size(h2::CONNECTION_WINDOW)
                    .max_send_buf_size(h2::SEND_BUFFER)
                    .handshake(TokioIo::new(conn))
                    .await
                    .map_err(io::Error::other)?;
            let state = pool::H2State::new(up.backends[i].pool.known_h2_limit());
            run_backend_connection(up, i, pool::watched(connection, Arc::clone(&state)));
            return Ok(up.backends[i].pool.put_h2(sender, state));
        }
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            // As for the answers to clients (see `connection`): one buffer per request.
            .writev(false)
            .handshake(TokioIo::new(conn))
            .await
            .map_err(io::Error::other)?;
        let task = run_backend_connection(up, i, connection.with_upgrades());
        Ok(Sender::H1(sender, task.abort_handle()))
    }

    /// An answer of our own: counted, logged, with a one-line body.
    pub(super) fn local(&self, status: StatusCode, line: Line) -> Response<Download> {
        self.counters.local(status);
        let text = local_text(status);
        let mut body = Download::text(text);
        let len = text.len() as u64;
        body.set_on_end(Box::new(move |_, complete| line.log(status, len, complete)));
        let mut response = Response::new(body);
        *response.status_mut() = status;
        response.extensions_mut().insert(Local);
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is not read: the connection cannot carry another request.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Marks an answer the balancer gave itself (`HttpServer::local`): one a gRPC call gets in
/// gRPC's form instead (chapter 17).
#[derive(Clone, Copy)]
struct Local;

/// The body of an answer the balancer gives itself.
pub(super) fn local_text(status: StatusCode) -> &'static str {
    match status {
        StatusCode::SERVICE_UNAVAILABLE => "no backend is available\n",
        StatusCode::BAD_GATEWAY => "the backend could not be reached or failed\n",
        StatusCode::GATEWAY_TIMEOUT => "the backend did not answer in time\n",
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large\n",
        StatusCode::BAD_REQUEST => "the request is malformed or ambiguous\n",
        StatusCode::REQUEST_TIMEOUT => "the request stopped coming\n",
        StatusCode::NOT_IMPLEMENTED => "this method is not supported here\n",
        _ => "error\n",
    }
}

/// What a client whose request head stopped coming is told before the connection closes.
pub(super) const TIMEOUT_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// One request's access-log line, written when its response body is done.
pub(super) struct Line {
    pub(super) client: SocketAddr,
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) backend: Option<Arc<str>>,
    pub(super) affinity: AffinityOutcome,
    pub(super) started: Instant,
}

impl Line {
    /// Backend `i`, known as `name`, answered. When the cookie named another backend that was
    /// up but could not be reached, the user now has this one: a redispatch.
    pub(super) fn answered_by(
        &mut self,
        outcome: &mut AffinityOutcome,
        cookie: Option<usize>,
        name: &Arc<str>,
        i: usize,
    ) {
        if *outcome == AffinityOutcome::Hit && Some(i) != cookie {
            *outcome = AffinityOutcome::Redispatch;
            self.affinity = *outcome;
            tracing::info!(client = %self.client, backend = %name,
                "affinity cookie named a backend that could not be reached: redispatched");
        }
        self.backend = Some(Arc::clone(name));
    }

    /// Under the `access` target, as `tcp-lb`'s lines: `RUST_LOG=info,access=off` hides them.
    pub(super) fn log(self, status: StatusCode, bytes: u64, complete: bool) {
        let Line {
            client,
            method,
            path,
            backend,
            affinity,
            started,
        } = self;
        let backend = backend.as_deref().unwrap_or("-");
        let end = if complete { "done" } else { "client-gone" };
        tracing::info!(target: "access", %client, %method, %path, status = status.as_u16(),
            bytes, duration = ?started.elapsed(), %backend, affinity = affinity.as_str(), %end,
            "request");
    }
}

/// A message's `Content-Length`, when it has a valid one (in one field line or several).
fn content_length(headers: &hyper::HeaderMap) -> Option<u64> {
    exchange::declared_length(
        headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .map(|v| (&b"content-length"[..], v.as_bytes())),
    )
}

/// RFC 9110 §8.6 lets a recipient take field lines that repeat one length, or a length with
/// leading zeros (`005`), as the one length they name; the exchange does. The next hop is sent
/// that length alone, in its plain form, as the own paths write it: a backend that read the
/// lines its own way (the first, the last, or an error) is what a desync needs.
fn one_length(headers: &mut hyper::HeaderMap) {
    let Some(n) = content_length(headers) else {
        return;
    };
    // One value of digits alone, without a leading zero, is `n` as written.
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let plain = values.next().is_some_and(|v| {
        let v = v.as_bytes();
        v.iter().all(u8::is_ascii_digit) && (v == b"0" || v.first() != Some(&b'0'))
    }) && values.next().is_none();
    if !plain {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
}

/// [`exchange::check_target`] and [`exchange::request_framing`] on a head hyper parsed.
fn check_request<B>(req: &Request<B>) -> Result<(), exchange::Refused> {
    let uri = req.uri();
    let form = match (uri.scheme(), uri.authority()) {
        // RFC 9113 §8.3.1: an `http(s)` request's `:path` is `*` for OPTIONS alone. hyper's
        // HTTP/2 server lets `PUT *` through, and it would reach a backend as `PUT * HTTP/1.1`.
        (Some(_), _) if uri.path() == "*" && req.method() != Method::OPTIONS => {
            exchange::Target::Invalid
        }
        (Some(_), authority) => {
            exchange::Target::Absolute(authority.map_or(&b""[..], |a| a.as_str().as_bytes()))
        }
        (None, Some(_)) => exchange::Target::Authority,
        (None, None) if uri.path() == "*" => exchange::Target::Asterisk,
        (None, None) if uri.path().starts_with('/') => exchange::Target::Origin,
        // RFC 9112 §3.2.1: an origin form is an absolute path. hyper's HTTP/2 server lets a
        // request with an empty `:scheme` and no `:path` through (RFC 9113 §8.3.1 makes it
        // malformed), and it would reach a backend as `GET  HTTP/1.1`.
        (None, None) => exchange::Target::Invalid,
    };
    let hosts = req
        .headers()
        .get_all(header::HOST)
        .iter()
        .map(HeaderValue::as_bytes);
    exchange::check_target(req.method(), form, hosts, req.version() == Version::HTTP_11)?;
    // RFC 9113 §8.3.1: an HTTP/2 request whose Host names another server than its
    // `:authority` is malformed: one of the two would route it, the other reach the backend.
    if req.version() == Version::HTTP_2
        && let (Some(authority), Some(host)) = (uri.authority(), req.headers().get(header::HOST))
        && !authority
            .as_str()
            .as_bytes()
            .eq_ignore_ascii_case(host.as_bytes())
    {
        return Err(exchange::Refused {
            status: StatusCode::BAD_REQUEST,
            why: "Host differs from :authority",
        });
    }
    // RFC 9113 §8.2.1: an HTTP/2 field value that starts or ends with whitespace makes the
    // request malformed. The `h2` crate lets it through; an HTTP/1 backend would read the value
    // trimmed, so what we judged (a route, a cache key) and what it acts on would differ. The
    // own codec refuses the same (`h2::message`).
    if req.version() == Version::HTTP_2
        && req.headers().values().any(|v| {
            let v = v.as_bytes();
            v.first().is_some_and(|b| matches!(b, b' ' | b'\t'))
                || v.last().is_some_and(|b| matches!(b, b' ' | b'\t'))
        })
    {
        return Err(exchange::Refused {
            status: StatusCode::BAD_REQUEST,
            why: "a field value with whitespace at an end",
        });
    }
    exchange::request_framing(
        req.headers()
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
    )?;
    Ok(())
}

/// A request in absolute form (`GET http://host/path`, as clients of a forward proxy send)
/// goes on in origin form (`GET /path` with `Host: host`), as an origin server expects.
fn origin_form(uri: &mut Uri, headers: &mut hyper::HeaderMap) {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return;
    }
    // Taken apart rather than copied: every HTTP/2 request comes this way (its target is
    // `:scheme://:authority:path`).
    let parts = std::mem::take(uri).into_parts();
    if let Some(authority) = parts.authority
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, host);
    }
    let path = parts
        .path_and_query
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *uri = Uri::from(path);
}

/// Runs a new connection to backend `i` (hyper's half that reads and writes it) in a task of
/// its own, counted as opened.
fn run_backend_connection(
    up: &Upstreams,
    i: usize,
    connection: impl Future<Output = hyper::Result<()>> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    up.backends[i].pool.opened();
    crate::metrics::inc(&up.balancer.state(i).counters.connections);
    let name = Arc::clone(&up.names[i]);
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(backend = %name, "backend connection ended: {e}");
        }
    })
}

/// Shapes a request for what its backend speaks, for each attempt (a retry may go to another
/// kind of backend): HTTP/1.1 in origin form with `Host`; or HTTP/2 (chapter 17) with the
/// target's scheme and authority as its pseudo-fields, where `Host` gives way to `:authority`
/// (RFC 9113 §8.3.1), and `TE: trailers` when the client sent it (`trailers`).
fn fit(req: &mut Request<Upload>, protocol: crate::backend::Protocol, tls: bool, trailers: bool) {
    let (parts, headers) = (req.uri().clone(), req.headers_mut());
    if protocol.is_h2() {
        let authority = parts
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| Some(headers.get(header::HOST)?.to_str().ok()?.to_owned()));
        headers.remove(header::HOST);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let path = parts.path_and_query().map_or("/", |p| p.as_str());
        let scheme = if tls { "https" } else { "http" };
        if let Some(authority) = authority
            && let Ok(uri) = Uri::try_from(format!("{scheme}://{authority}{path}"))
        {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = Version::HTTP_2;
    } else {
        headers.remove(header::TE);
        join_cookies(headers);
        let mut uri = parts;
        origin_form(&mut uri, headers);
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
    }
}

/// RFC 9113 §8.2.3: an HTTP/2 client may send its cookies as many `Cookie` fields, one per
/// cookie, which compress better. HTTP/1.1 allows one `Cookie` line (RFC 6265 §5.4), and a
/// backend that reads only the first would lose the session kept in another: before an
/// HTTP/1.1 hop they are joined with "; " (the affinity cookie has been taken out by then).
pub(super) fn join_cookies(headers: &mut hyper::HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    if crumbs.nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for crumb in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Closes a client's connection. Lingering costs a wait for the client's FIN; like nginx, pay
/// it only when unread bytes may be left: after an error, over TLS (the client's
/// close_notify), when a request body was not read to its end (a 413: the rest may still be on
/// its way), or when the socket still holds something. A clean plain-TCP end closes at once.
pub(super) async fn close_client(mut stream: Conn, clean: bool) {
    if clean {
        let mut probe = [0u8; 512];
        let probed = match &mut stream {
            Conn::Plain(tcp) => tcp.try_read(&mut probe),
            Conn::Fresh(fresh) => fresh.try_read(&mut probe),
            _ => Ok(1),
        };
        match probed {
            Ok(0) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            _ => {}
        }
    }
    // Boxed: its drain buffer would otherwise be part of every connection's task for the
    // connection's whole life, idle or not.
    Box::pin(net::lingering_close(stream, net::LINGER)).await;
}

/// The client's connection as hyper holds it, handed back when hyper is done with it (so that
/// we can close it lingering, and answer 408 first when a head was cut short). `partial` says
/// whether bytes of a request arrived since the last response started: a header timeout then
/// is a slow client, not an idle keep-alive connection.
pub(super) struct Returning {
    io: Option<Conn>,
    /// Written when hyper flushes (see `early_hints`): HTTP/1 only.
    hints: Option<Arc<EarlyHints>>,
    /// Bytes the balancer's own path had read before it handed the connection over: hyper
    /// reads them first.
    prefix: Vec<u8>,
    at: usize,
    partial: bool,
    back: Option<oneshot::Sender<(Conn, bool)>>,
}

impl Returning {
    /// `conn`, read from `prefix` first.
    pub(super) fn new(conn: Conn, prefix: Vec<u8>, hints: Option<Arc<EarlyHints>>) -> Returning {
        Returning {
            io: Some(conn),
            hints,
            // Bytes of a request already read: a head is on its way.
            partial: !prefix.is_empty(),
            prefix,
            at: 0,
            back: None,
        }
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let (Some(io), Some(back)) = (self.io.take(), self.back.take()) {
            let _ = back.send((io, self.partial));
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection handed back")
}

impl AsyncRead for Returning {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            self.partial = true;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let polled = Pin::new(io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.partial = true;
        }
        polled
    }
}

impl AsyncWrite for Returning {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.partial = false;
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, data),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.partial = false;
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes on every turn of its loop, while a request waits for its backend too,
        // and only with its own buffer empty: where a hint that arrived leaves, between two
        // answers (`early_hints`).
        let this = &mut *self;
        match this.io.as_mut() {
            Some(io) => {
                if let Some(hints) = &this.hints {
                    ready!(hints.poll_write_queued(io, cx))?;
                }
                Pin::new(io).poll_flush(cx)
            }
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl crate::admin::Status for HttpServer {
    fn metrics(&self) -> String {
        HttpServer::metrics(self)
    }
    fn health(&self) -> Result<&'static str, &'static str> {
        HttpServer::health(self)
    }
    fn balancer(&self) -> Arc<Balancer> {
        self.server.balancer()
    }
    fn prefix(&self) -> &'static str {
        "httplb"
    }
}
