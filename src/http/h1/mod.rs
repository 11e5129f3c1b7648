//! The balancer's own HTTP/1.1 codec (chapter 12): the common request without hyper.
//!
//! hyper serves every request correctly, but a kept-alive request through it costs about
//! twice nginx's user-space CPU: the client's connection and the backend's are two tasks with
//! a channel between them, and every head is parsed into a map, then written out of it, on
//! each side. `examples/h1-relay.rs` measured what a path of our own could save: 0.87× nginx's
//! CPU per request, against hyper's 1.17×. This is that path. It does the wire work only; every
//! decision is the one hyper's path makes, from the same code:
//!
//! * the exchange's rules ([`crate::http::exchange`]): framing decided once from the head as
//!   received ([`parse`]: `httparse`, then [`exchange::request_framing`] and
//!   [`exchange::response_framing`]), the target and `Host` checked, the retry rule and the
//!   status of each failure (`Attempts`, shared with hyper's path);
//! * the forwarding rules, written once over [`Fields`](crate::http::fields::Fields): the
//!   affinity cookie taken out, hop-by-hop fields dropped ([`forward::strip_hop_by_hop`]),
//!   `X-Forwarded-*` set, the answer's added and hidden fields (`Upstreams::answer_fields`).
//!   Here they run on [`ReadFields`]: the fields stay in the client's buffer, where they were
//!   read, and no map is built;
//! * what it writes is framed by it: a request's `Content-Length`, an answer's length or
//!   codings, from what [`parse`] decided, never copied from fields a `Connection` header could
//!   have named;
//! * one task per client connection owns its pooled backend connection for the length of a
//!   request: no channel, no second task. A pooled connection is reused only when its answer
//!   ended exactly where its framing said and nothing came after it (`Pool::take_raw`);
//! * one head timer and one answer timer per connection, pushed later at each request;
//!   inside a body, either way, the pause between two pieces is bounded by `--idle-timeout`;
//! * buffers come from a per-thread spare list ([`spare`]), so an idle client holds none.
//!
//! It takes a request only when that is simple, and hands the connection to hyper, bytes
//! already read included, for the rest of its life otherwise: a configuration that needs hyper
//! (`Settings::needs_hyper`); HTTP/1.0; an absolute-form target; an `Upgrade`, an `Expect`, a
//! chunked request body or one that has not fully arrived with its head; a head `httparse`
//! cannot parse (hyper answers 400 or 431). `LB_HTTP_FAST=off` sends every connection to hyper,
//! to compare the two (CI runs chapter 12's tests both ways).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Instant;

use hyper::header::HeaderName;
use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Sleep;

use super::balancer::{Attempts, Chosen, ConnInfo, HttpServer, Line, Upstreams, local_text};
use crate::conn::Conn;
use crate::http::early_hints::StreamHints;
use crate::http::exchange::{self, Failure};
use crate::http::fields::{ReadFields, Span, Value};
use crate::http::forward;
use crate::http::metrics::AffinityOutcome;
use parse::{Framing, Head, Parsed, ParsedAnswer, parse, parse_answer};

pub(in crate::http) mod hop;
mod parse;
pub(in crate::http) mod spare;

/// Beyond any timeout: where the connection's timers start.
const FAR: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);
/// What one read asks for at least.
const READ: usize = 16 * 1024;
/// The HTTP/2 hop's buffers (`hop`): under glibc's per-thread cache limit (1,032 bytes).
const SMALL: usize = 1000;
/// What one read of a big answer's body may grow to.
const MAX_READ: usize = 256 * 1024;

/// How a client connection left this path.
pub(in crate::http) enum Left {
    /// It is over. `clean`: nothing can be left unread on it (a lingering close is not needed
    /// unless the socket says otherwise).
    Closed { clean: bool },
    /// hyper serves the rest of it, starting with these bytes already read.
    ToHyper(Vec<u8>),
}

/// Whether this path may serve: `LB_HTTP_FAST=off` says no, for comparisons and for CI's
/// second run of the HTTP tests.
pub(in crate::http) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("LB_HTTP_FAST").map_or(true, |v| v != "off"))
}

/// Whether a configuration leaves every request's work to what this path does.
pub(in crate::http) fn takes(up: &Upstreams) -> bool {
    // It speaks HTTP/1.1 to backends too: one spoken to in HTTP/2 (chapter 17) is hyper's.
    !up.settings.needs_hyper() && !up.any_h2
}

/// What went wrong on the way to an answer; the exchange's [`Failure`] says what follows.
enum AnswerFailed {
    /// The connection was found closed before any byte of the request was written.
    Unsent(io::Error),
    /// Nothing came back (the connection was closed or reset before any byte of an answer)
    /// after the request was written.
    NoAnswer(io::Error),
    /// Garbage, ambiguous framing, or an answer cut short: 502.
    Bad(io::Error),
    /// No head within `response-timeout` of the request's end: 504.
    Timeout,
}

/// Where a `103 Early Hints` goes while the final answer is awaited: the client, at once (an
/// HTTP/1.1 one), or the own HTTP/2 codec's stream, through its connection's queue.
///
/// RFC 9110 §15.2: a proxy forwards a 1xx answer it did not ask for itself, except to an
/// HTTP/1.0 client (which cannot read one; such a request never takes this path). Early Hints
/// (RFC 8297) are what a backend sends while it prepares a slow page, so that the browser
/// starts fetching its stylesheets meanwhile: held back until the final answer, they would be
/// worth nothing. The fields go through the same rules as a final answer's: hop-by-hop ones
/// were left out while parsing, hidden ones (`--hide-header`) are removed. hyper's path passes
/// them on too, under hyper's server (`http::early_hints`); never stored either way.
struct Hints<'a> {
    to: HintsTo<'a>,
    up: &'a Upstreams,
}

/// The two places a hint can go (see [`Hints`]).
enum HintsTo<'a> {
    Client(&'a mut Conn),
    Stream(&'a StreamHints),
}

impl HintsTo<'_> {
    fn reborrow(&mut self) -> HintsTo<'_> {
        match self {
            HintsTo::Client(client) => HintsTo::Client(client),
            HintsTo::Stream(stream) => HintsTo::Stream(stream),
        }
    }
}

impl Hints<'_> {
    async fn pass_on(&mut self, hint: &ParsedAnswer, head: &[u8], kept: &[(Span, Span)]) {
        let bytes = |(start, end): Span| &head[start..end];
        let client = match &mut self.to {
            HintsTo::Client(client) => client,
            HintsTo::Stream(stream) => {
                // RFC 9113 §8.1: a 1xx is a HEADERS frame before the answer's; no reason
                // phrase (§8.3.2 has none).
                let up = self.up;
                stream.hint(
                    kept[..hint.codings]
                        .iter()
                        .map(|&(name, value)| (bytes(name), bytes(value)))
                        .filter(|(name, _)| !up.hides(name)),
                );
                return;
            }
        };
        let mut out = Vec::with_capacity(head.len());
        out.extend_from_slice(b"HTTP/1.1 103 ");
        out.extend_from_slice(bytes(hint.reason));
        out.extend_from_slice(b"\r\n");
        for &(name, value) in &kept[..hint.codings] {
            if !self.up.hides(bytes(name)) {
                field(&mut out, bytes(name), bytes(value));
            }
        }
        out.extend_from_slice(b"\r\n");
        // A client that is gone is found out when the final answer is written.
        let _ = write_flushed(client, &out).await;
    }
}

/// The buffers a connection reuses from request to request: what is written next, what the
/// backend sent, and where the answer's fields are in it.
struct Scratch {
    out: Vec<u8>,
    upstream: Vec<u8>,
    kept: Vec<(Span, Span)>,
    /// For the fields the forwarding rules add to a request.
    added: Vec<(HeaderName, Value)>,
}

impl HttpServer {
    /// Serves requests on `conn` while this path can; see the module's header.
    pub(super) async fn serve_h1(&self, conn: &mut Conn, info: &ConnInfo) -> Left {
        // Nothing is held while the connection waits for a request (see `spare`).
        let mut buf: Vec<u8> = Vec::new();
        let mut stop = self.stop.subscribe();
        // Two timers for the connection's life, one for heads and one for answers, each only
        // ever pushed later: pushing a registered tokio timer later is one atomic operation,
        // where a new timer per wait costs a lock and a timer-wheel insertion and removal.
        let far = tokio::time::Instant::now() + FAR;
        let mut head_timer = std::pin::pin!(tokio::time::sleep_until(far));
        let mut answer_timer = std::pin::pin!(tokio::time::sleep_until(far));
        // When the connection last had nothing to do: its start, then each answer's end
        // (a clock read the answer made anyway).
        let mut idle_since = Instant::now();
        loop {
            let up = self.upstreams();
            if !takes(&up) {
                return Left::ToHyper(buf);
            }
            // 1. A request head, within `header-timeout` (of idleness too, as hyper's).
            let deadline = idle_since + up.settings.header_timeout;
            head_timer.as_mut().reset(deadline.into());
            let started;
            let head = loop {
                match parse(&buf, up.settings.max_head, up.settings.max_body) {
                    Parsed::Complete(head) => {
                        started = Instant::now();
                        self.counters.path(true, false);
                        break head;
                    }
                    Parsed::Hyper => return Left::ToHyper(buf),
                    Parsed::TooLarge { method, target } => {
                        self.counters.path(true, false);
                        let line = self.line(info, &method, &target, Instant::now());
                        // Closed either way: the body was not read.
                        let _ = self
                            .answer_locally(conn, StatusCode::PAYLOAD_TOO_LARGE, line, true)
                            .await;
                        return Left::Closed { clean: false };
                    }
                    Parsed::Refused {
                        method,
                        target,
                        refused,
                    } => {
                        self.counters.path(true, false);
                        tracing::info!(client = %info.client, "request refused: {}", refused.why);
                        let line = self.line(info, &method, &target, Instant::now());
                        let _ = self.answer_locally(conn, refused.status, line, true).await;
                        return Left::Closed { clean: false };
                    }
                    Parsed::Partial => {}
                }
                let idle = buf.is_empty();
                if idle && buf.capacity() > 0 {
                    spare::give_buffer(std::mem::take(&mut buf));
                }
                let read = tokio::select! {
                    biased;
                    read = read_some(conn, &mut buf) => Ok(read),
                    // Draining: an idle connection closes at once; a head on its way finishes.
                    _ = stop.wait_for(|stop| *stop), if idle => return Left::Closed { clean: true },
                    () = head_timer.as_mut() => Err(()),
                };
                match read {
                    Ok(Ok(0)) => return Left::Closed { clean: idle },
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(client = %info.client, "connection ended: {e}");
                        return Left::Closed { clean: false };
                    }
                    Err(_) => {
                        let status = StatusCode::REQUEST_TIMEOUT;
                        self.refused_head(
                            info.client,
                            status,
                            idle_since,
                            &"request head timed out",
                        );
                        if !idle {
                            let _ = tokio::time::timeout(
                                crate::net::LINGER,
                                write_flushed(conn, super::balancer::TIMEOUT_408),
                            )
                            .await;
                        }
                        return Left::Closed { clean: false };
                    }
                }
            };
            let mut scratch = spare::scratch();
            let forwarded = self
                .forward(
                    conn,
                    info,
                    &up,
                    head,
                    &mut buf,
                    &mut scratch,
                    started,
                    answer_timer.as_mut(),
                    &stop,
                )
                .await;
            spare::give_scratch(scratch);
            match forwarded {
                // A drain that began during the answer's body closes here.
                Ok(Some(done)) if !*stop.borrow() => idle_since = done,
                Ok(_) => return Left::Closed { clean: true },
                Err(()) => return Left::Closed { clean: false },
            }
        }
    }

    /// One request, from its parsed head to the end of its answer. `Ok(Some(done))`: the
    /// client's connection may carry another, and this one's answer ended at `done`;
    /// `Ok(None)`: it closes; `Err`: it must close, lingering.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        conn: &mut Conn,
        info: &ConnInfo,
        up: &Arc<Upstreams>,
        head: Head,
        buf: &mut Vec<u8>,
        scratch: &mut Scratch,
        started: Instant,
        mut timer: Pin<&mut Sleep>,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<Instant>, ()> {
        let Head {
            method,
            target,
            fields,
            len,
            body,
            length,
            close: client_closes,
        } = head;
        let Scratch {
            out,
            upstream,
            kept,
            added,
        } = scratch;
        // The target and the fields as the client sent them: in the buffer until the head is
        // written out.
        let target = std::str::from_utf8(&buf[target.0..target.1]).unwrap_or("/");
        let mut headers = ReadFields::new(buf, fields, std::mem::take(added));
        let mut line = self.line(info, &method, target, started);

        // 1 and 2: the cookie's backend while health allows, else the strategy's.
        let balancer = &up.balancer;
        let tried: Vec<usize> = Vec::new();
        let Chosen {
            pick,
            mut outcome,
            cookie: cookie_backend,
        } = up.choose(&mut headers, info.client.ip(), &tried);
        line.affinity = outcome;
        let Some(i) = pick else {
            tracing::warn!(client = %info.client, "no backend is up: 503");
            buf.drain(..len + body);
            return self
                .answer_locally(conn, StatusCode::SERVICE_UNAVAILABLE, line, false)
                .await
                .map(|keep| keep.then(Instant::now));
        };
        up.log_redispatch(outcome, i, info.client);

        // 3: what the backend is sent, head and body in one buffer. Its framing is ours: the
        // length decided from the head as received, whatever `Connection` named.
        up.forward_read(&mut headers, info);
        out.clear();
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers.iter() {
            field(out, name, value);
        }
        let (read, emptied) = headers.into_lists();
        *added = emptied;
        spare::give_fields(read);
        if let Some(length) = length {
            field(out, b"content-length", itoa(length, &mut [0; 20]));
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&buf[len..len + body]);
        buf.drain(..len + body);

        // 4: send it, on a pooled connection when there is one; after a failure, what the
        // exchange's rule allows (`Attempts`, as on hyper's path).
        let replayable = exchange::is_idempotent(&method) && body == 0;
        let mut attempts = Attempts::new(up, info.client, i, tried, replayable);
        let answered = send(
            up,
            &mut attempts,
            |i| balancer.count_active(i),
            Some(HintsTo::Client(conn)),
            out,
            upstream,
            kept,
            &method,
            started,
            up.settings.response_timeout,
            timer.as_mut(),
        )
        .await;
        let Some((answer, mut backend_conn, active, i)) = answered else {
            return self
                .answer_locally(conn, attempts.status, line, false)
                .await
                .map(|keep| keep.then(Instant::now));
        };
        line.answered_by(&mut outcome, cookie_backend, &up.names[i], i);
        let backend = &up.backends[i];
        let (parsed, head_len) = answer;
        // One clock read for the latency and the pool's timestamp: they are microseconds apart.
        let answered = Instant::now();
        backend.counters.observe(parsed.status, answered - started);
        self.counters.affinity(outcome);

        // 5: the answer's head, as the client sees it.
        // The client's `Connection: close` is answered in kind, as hyper does.
        let closing = client_closes || *stop.borrow() || matches!(parsed.framing, Framing::Close);
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(parsed.status.as_str().as_bytes());
        out.push(b' ');
        let bytes = |(start, end): Span| &upstream[start..end];
        out.extend_from_slice(bytes(parsed.reason));
        out.extend_from_slice(b"\r\n");
        let mut dated = false;
        for &(name, value) in &kept[..parsed.codings] {
            let name = bytes(name);
            dated |= name.eq_ignore_ascii_case(b"date");
            if !up.hides(name) {
                field(out, name, bytes(value));
            }
        }
        // RFC 9110 §6.6.1: a recipient with a clock forwards a response without `Date` with
        // one (hyper's server adds it too).
        if !dated {
            field(out, b"date", &exchange::date_now());
        }
        // The framing, written by us from what was decided on the head as received: the
        // length, or the codings the body passes on in (RFC 9112 §6.1).
        if let Some(n) = parsed.length {
            field(out, b"content-length", itoa(n, &mut [0; 20]));
        }
        if matches!(parsed.framing, Framing::Chunked(_) | Framing::Close) {
            for &(name, value) in &kept[parsed.codings..] {
                field(out, bytes(name), bytes(value));
            }
        }
        for (name, value) in up.answer_fields(outcome, i, info.tls) {
            field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if closing {
            field(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");

        // 6: the body, as it comes. A backend that stalls in the middle of it, or a client
        // that stops reading, gets the body's idle limit between two steps (`--idle-timeout`,
        // else `--response-timeout`); the first write still has the answer's deadline.
        upstream.drain(..head_len);
        let stall = up
            .balancer
            .idle_timeout
            .unwrap_or(up.settings.response_timeout);
        let mut framing = parsed.framing;
        let mut reusable = parsed.reusable;
        let mut sent: u64 = 0;
        let mut complete = false;
        // The head goes out with the first bytes of the body, in one write; the rest of the
        // body is written from the buffer it was read into.
        let mut head_sent = false;
        // A chunked answer's trailer section is held back (at most MAX_TRAILERS) and written
        // without the hidden fields (a backend can name itself there as well as in its head)
        // and without those a trailer may not carry on (`forward::is_unfit_trailer`).
        let mut trailers: Option<Vec<u8>> = None;
        loop {
            let (take, done) = match &mut framing {
                Framing::None => (0, true),
                Framing::Length(left) => {
                    let take = (upstream.len() as u64).min(*left);
                    *left -= take;
                    (take as usize, *left == 0)
                }
                Framing::Chunked(chunks) => match chunks.advance(upstream, |_, _| {}) {
                    Ok(take) => (take, chunks.done()),
                    // Bad from the first bytes, before the head went out: the client can
                    // still be told, with 502 (RFC 9112 §7.1: the backend's error).
                    Err(e) if !head_sent => {
                        tracing::warn!(backend = %up.names[i], "answer refused (502): {e}");
                        drop(active);
                        return match self
                            .answer_locally(conn, StatusCode::BAD_GATEWAY, line, true)
                            .await
                        {
                            Ok(_) => Ok(None),
                            Err(()) => Err(()),
                        };
                    }
                    Err(e) => {
                        tracing::warn!(backend = %up.names[i], "answer cut off: {e}");
                        break;
                    }
                },
                Framing::Close => (upstream.len(), false),
            };
            // Bytes after the end of the answer: the backend said more than it should have,
            // and the connection cannot be trusted with another request.
            if done && take < upstream.len() {
                reusable = false;
            }
            // What of `upstream[..take]` is written now, and what comes after it.
            let mut emit = take;
            let mut tail: Option<Vec<u8>> = None;
            if let Framing::Chunked(chunks) = &mut framing {
                // Held from where the section starts in this read, or from the read's start
                // once it has started.
                let from = match chunks.take_trailers_at() {
                    Some(at) => {
                        trailers = Some(Vec::new());
                        at
                    }
                    None => 0,
                };
                if let Some(held) = trailers.as_mut() {
                    held.extend_from_slice(&upstream[from..take]);
                    emit = from;
                    if held.len() > MAX_TRAILERS {
                        tracing::warn!(backend = %up.names[i], "answer cut off: trailers too large");
                        break;
                    }
                    if done {
                        tail = Some(without_hidden(held, |name| {
                            up.hides(name)
                                || std::str::from_utf8(name).map_or(true, forward::is_unfit_trailer)
                        }));
                    }
                }
            }
            let write = async {
                match (head_sent, &tail) {
                    (false, _) => {
                        out.extend_from_slice(&upstream[..emit]);
                        out.extend_from_slice(tail.as_deref().unwrap_or_default());
                        write_flushed(conn, out).await
                    }
                    (true, None) => write_flushed(conn, &upstream[..emit]).await,
                    (true, Some(tail)) => {
                        let joined = [&upstream[..emit], tail.as_slice()].concat();
                        write_flushed(conn, &joined).await
                    }
                }
            };
            if head_sent {
                timer.as_mut().reset((Instant::now() + stall).into());
            }
            let written = tokio::select! {
                biased;
                written = write => written,
                () = timer.as_mut() => Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")),
            };
            head_sent = true;
            if let Err(e) = written {
                tracing::debug!(client = %info.client, "client gone mid-answer: {e}");
                break;
            }
            sent += take as u64;
            if done {
                complete = true;
                break;
            }
            // A read that filled the buffer: the body is a big one, and bigger reads cost less
            // per byte (hyper grows its buffer the same way). Given back once the answer ends.
            let grow = upstream.len() == upstream.capacity() && upstream.capacity() < MAX_READ;
            let capacity = upstream.capacity();
            upstream.clear();
            if grow {
                upstream.reserve(capacity * 2);
            }
            timer.as_mut().reset((Instant::now() + stall).into());
            let read = tokio::select! {
                biased;
                read = backend_conn.read_buf(upstream) => read,
                () = timer.as_mut() => Err(io::Error::new(io::ErrorKind::TimedOut,
                    format!("no byte of the body for {stall:?}"))),
            };
            match read {
                Ok(0) if matches!(framing, Framing::Close) => {
                    complete = true;
                    break;
                }
                Ok(0) => {
                    tracing::warn!(backend = %up.names[i], "answer cut off by the backend");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(backend = %up.names[i], "answer cut off: {e}");
                    break;
                }
            }
        }
        if upstream.capacity() > READ {
            *upstream = Vec::with_capacity(READ);
        }
        drop(active);
        backend.counters.bytes(sent);
        if complete && reusable {
            backend.pool.put_raw(backend_conn, answered);
        }
        line.log(parsed.status, sent, complete);
        match complete {
            true => Ok((!closing).then_some(answered)),
            false => Err(()),
        }
    }

    /// The access-log line of a request that starts now.
    fn line(&self, info: &ConnInfo, method: &Method, target: &str, started: Instant) -> Line {
        Line {
            client: info.client,
            method: method.clone(),
            path: match tracing::enabled!(target: "access", tracing::Level::INFO) {
                true => target.to_owned(),
                false => String::new(),
            },
            backend: None,
            affinity: AffinityOutcome::Off,
            started,
        }
    }

    /// An answer the balancer gives itself (the same as [`HttpServer::local`]'s). `Ok(keep)`:
    /// whether the connection may carry another request; `Err`: it must close, lingering.
    async fn answer_locally(
        &self,
        conn: &mut Conn,
        status: StatusCode,
        line: Line,
        close: bool,
    ) -> Result<bool, ()> {
        self.counters.local(status);
        let text = local_text(status);
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\ndate: ");
        out.extend_from_slice(&exchange::date_now());
        out.extend_from_slice(b"\r\ncontent-type: text/plain\r\ncontent-length: ");
        out.extend_from_slice(text.len().to_string().as_bytes());
        if close {
            out.extend_from_slice(b"\r\nconnection: close");
        }
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(text.as_bytes());
        let written = write_flushed(conn, &out).await.is_ok();
        line.log(status, text.len() as u64, written);
        match written {
            true => Ok(!close),
            false => Err(()),
        }
    }
}

/// Reads what the client sent next into `buf`, taking a buffer only once there is something
/// to read on a plain connection (a TLS stream buffers inside rustls anyway).
async fn read_some(conn: &mut Conn, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() == 0 {
        match conn {
            Conn::Plain(tcp) => tcp.readable().await?,
            Conn::Fresh(fresh) if fresh.is_registered() => fresh.readable().await?,
            Conn::Fresh(fresh) => {
                // Unregistered, it cannot wait: one read says whether a request is there (it
                // usually is, `net::defer_accept`). When none is, the buffer goes back before
                // the wait, as for a registered socket: held through it, every kept-alive
                // client would keep 16 KiB from its first answer on.
                *buf = spare::buffer();
                buf.resize(buf.capacity().min(crate::conn::FRESH_READ), 0);
                match fresh.try_read(buf) {
                    Ok(n) => {
                        buf.truncate(n);
                        return Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        spare::give_buffer(std::mem::take(buf));
                        fresh.registered()?.readable().await?;
                    }
                    Err(e) => {
                        spare::give_buffer(std::mem::take(buf));
                        return Err(e);
                    }
                }
            }
            _ => {}
        }
        *buf = spare::buffer();
    }
    if buf.capacity() - buf.len() < READ / 4 {
        buf.reserve(READ);
    }
    conn.read_buf(buf).await
}

/// Writes `data`, and for TLS makes sure the records left rustls' buffer.
async fn write_flushed(conn: &mut Conn, data: &[u8]) -> io::Result<()> {
    conn.write_all(data).await?;
    conn.flush().await
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The most bytes of trailer fields held back to remove hidden ones from.
const MAX_TRAILERS: usize = 16 * 1024;

/// A trailer section (field lines, then the empty line, as received and already checked by
/// the chunk walker) without the lines whose field name `hidden` names.
fn without_hidden(section: &[u8], hidden: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(section.len());
    for line in section.split_inclusive(|&b| b == b'\n') {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if line == b"\r\n" || !hidden(name.trim_ascii()) {
            out.extend_from_slice(line);
        }
    }
    out
}

/// `n` in decimal, without an allocation.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Step 4 for both of this path's callers (a client's HTTP/1 request, and an HTTP/2 stream's
/// hop): `request` sent to backend `attempts.i` on a pooled connection when there is one,
/// else on a new one; after a failure, what the exchange's rule allows (`Attempts`, as on
/// hyper's path). The answer's head is read into `upstream`. `Some`: that head, the connection
/// it came on, the backend's count of requests in flight (`count`'s guard, held from the send
/// on), and which backend; `None` when no attempt is left (`attempts.status` says what the
/// client gets). A 103 goes to `hints` when there is a place for it (see [`exchange`]).
///
/// A plain `fn` around an `async move` block: an `async fn` keeps each argument twice in its
/// state (as the argument, and as the local it is moved into), and this state is part of every
/// HTTP/1 client connection's task, idle or not (README chapter 12: memory per idle client).
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
fn send<G>(
    up: &Upstreams,
    attempts: &mut Attempts<'_>,
    count: impl Fn(usize) -> G,
    mut hints: Option<HintsTo<'_>>,
    request: &[u8],
    upstream: &mut Vec<u8>,
    kept: &mut Vec<(Span, Span)>,
    method: &Method,
    started: Instant,
    response_timeout: std::time::Duration,
    mut timer: Pin<&mut Sleep>,
) -> impl Future<Output = Option<((ParsedAnswer, usize), Conn, G, usize)>> {
    async move {
        let mut retried = false;
        while attempts.another() {
            let i = attempts.i;
            let backend = &up.backends[i];
            let pooled = match attempts.may_reuse() {
                true => backend.pool.take_raw(started),
                false => None,
            };
            let (mut dialled, fresh) = match pooled {
                Some(conn) => (conn, false),
                // Boxed: a dial (a TLS handshake, for a TLS backend) is the largest state of a
                // request, and inline it would size the connection's task for all its idle time;
                // dials are rare once the pool is warm, so the allocation is too.
                None => match Box::pin(up.balancer.dial_reporting(i, None)).await {
                    Ok(conn) => {
                        backend.pool.opened();
                        crate::metrics::inc(&up.balancer.state(i).counters.connections);
                        (conn, true)
                    }
                    Err(e) if attempts.dial_failed(&e) => continue,
                    Err(_) => return None,
                },
            };
            let active = count(i);
            upstream.clear();
            let (failed, error) = match exchange(
                &mut dialled,
                hints.as_mut().map(|to| Hints {
                    to: to.reborrow(),
                    up,
                }),
                request,
                upstream,
                method,
                // From the head's arrival (a clock read already made) on a pooled connection's
                // first try; after a dial or a failed try, from now.
                match fresh || retried {
                    false => started,
                    true => Instant::now(),
                },
                response_timeout,
                timer.as_mut(),
                kept,
            )
            .await
            {
                Ok(answer) => return Some((answer, dialled, active, i)),
                Err(AnswerFailed::Timeout) => (Failure::Timeout, None),
                Err(AnswerFailed::Bad(e)) => (Failure::BadAnswer, Some(e)),
                Err(AnswerFailed::Unsent(e)) => (Failure::Unsent, Some(e)),
                Err(AnswerFailed::NoAnswer(e)) => (Failure::NoAnswer, Some(e)),
            };
            drop(active);
            if !attempts.failed(failed, !fresh, error.as_ref().map(|e| e as _)) {
                return None;
            }
            retried = true;
        }
        None
    }
}

/// Sends `request` on `conn` and reads the answer's head into `buf` (with whatever of the
/// body came with it). The backend has `response_timeout` to take the request, then as long
/// again from the request's end to its answer's head (RFC 9110 leaves the timing to us; this
/// is what HAProxy's `timeout server` and nginx's `proxy_read_timeout` count). A 103 Early
/// Hints goes to `hints` when there is a place to pass it on at once (an HTTP/1.1 client, an
/// own HTTP/2 stream), and is dropped otherwise.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    conn: &mut Conn,
    mut hints: Option<Hints<'_>>,
    request: &[u8],
    buf: &mut Vec<u8>,
    method: &Method,
    from: Instant,
    response_timeout: std::time::Duration,
    mut timer: Pin<&mut Sleep>,
    kept: &mut Vec<(Span, Span)>,
) -> Result<(ParsedAnswer, usize), AnswerFailed> {
    // `from` is a moment ago: the backend's time starts from there while it takes the
    // request, and again from the request's end if writing it had to wait.
    timer.as_mut().reset((from + response_timeout).into());
    // Written, or not a byte of it: a connection found closed before anything was taken from
    // us may carry the request again, whatever it is.
    let write = async {
        let mut at = 0;
        while at < request.len() {
            match conn.write(&request[at..]).await {
                Ok(0) => return Err(AnswerFailed::NoAnswer(io::ErrorKind::WriteZero.into())),
                Ok(n) => at += n,
                Err(e) if at == 0 => return Err(AnswerFailed::Unsent(e)),
                Err(e) => return Err(AnswerFailed::NoAnswer(e)),
            }
        }
        conn.flush().await.map_err(AnswerFailed::NoAnswer)
    };
    let mut write = std::pin::pin!(write);
    // Almost always the whole request goes into the socket's buffer at the first try: then
    // no time has passed, and the deadline set above stands, without another clock read.
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(written) => written?,
        Poll::Pending => {
            tokio::select! {
                biased;
                written = write => written?,
                () = timer.as_mut() => return Err(AnswerFailed::Timeout),
            }
            timer
                .as_mut()
                .reset((Instant::now() + response_timeout).into());
        }
    }
    let read = async {
        loop {
            if !buf.is_empty() {
                if kept.capacity() == 0 {
                    // The HTTP/2 hop's list, taken only now (`hop::proxied_own`).
                    *kept = spare::fields();
                }
                match parse_answer(buf, method, kept) {
                    Ok(Some((answer, len))) if answer.status.is_informational() => {
                        if answer.status == StatusCode::SWITCHING_PROTOCOLS {
                            return Err(AnswerFailed::Bad(io::Error::other(
                                "101 to a request without Upgrade",
                            )));
                        }
                        if answer.status == StatusCode::EARLY_HINTS
                            && let Some(hints) = hints.as_mut()
                        {
                            hints.pass_on(&answer, &buf[..len], kept).await;
                        }
                        // A 100 Continue is dropped: this path never sends `Expect` (such a
                        // request goes to hyper), so it answers nothing the client asked.
                        buf.drain(..len);
                        continue;
                    }
                    Ok(Some(answer)) => return Ok(answer),
                    Ok(None) if buf.len() > super::balancer::DEFAULT_MAX_HEAD * 2 => {
                        return Err(AnswerFailed::Bad(io::Error::other("answer head too large")));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(AnswerFailed::Bad(e)),
                }
            }
            // Room for a read: what the buffer has, unless a quarter of it or less is left. A
            // small buffer (the HTTP/2 hop's, made only now that there is an answer to read) is
            // read into as it is, as most answers fit in it; growing it up front cost every
            // request a large allocation and its copy.
            if buf.capacity() == 0 {
                // The HTTP/2 hop's buffer is taken once the answer is there to read, not while
                // the stream waits for it: what hundreds of waiting streams hold is what the
                // allocator's caches cannot keep (`spare::small`).
                if let Conn::Plain(tcp) = &*conn
                    && let Err(e) = tcp.readable().await
                {
                    return Err(AnswerFailed::NoAnswer(e));
                }
                *buf = spare::small();
            } else if buf.capacity() - buf.len() <= buf.capacity() / 4 {
                buf.reserve(READ);
            }
            match conn.read_buf(buf).await {
                Ok(0) if buf.is_empty() => {
                    return Err(AnswerFailed::NoAnswer(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before an answer",
                    )));
                }
                Ok(0) => return Err(AnswerFailed::Bad(io::Error::other("answer head cut short"))),
                Ok(_) => {}
                Err(e) if buf.is_empty() => return Err(AnswerFailed::NoAnswer(e)),
                Err(e) => return Err(AnswerFailed::Bad(e)),
            }
        }
    };
    tokio::select! {
        biased;
        answer = read => answer,
        () = timer => Err(AnswerFailed::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Fresh;
    use std::io::Write as _;

    /// A kept-alive client waiting for its next request holds no read buffer, even while its
    /// socket is still unregistered (`conn::Fresh`, whose first wait registers it): the wait
    /// for the second request is where every idle keep-alive client sits.
    #[tokio::test]
    async fn an_unregistered_client_waits_without_a_buffer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let mut conn = Conn::Fresh(Fresh::new(accepted));
        let mut buf = Vec::new();
        {
            let mut read = std::pin::pin!(read_some(&mut conn, &mut buf));
            // Nothing sent yet: the read waits.
            let waits =
                std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx).is_pending())).await;
            assert!(waits);
        }
        assert_eq!(buf.capacity(), 0, "a buffer was held through the wait");
        client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let n = read_some(&mut conn, &mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
    }
}
