//! The balancer's own HTTP/1.1 path (chapter 12): the common request without hyper.
//!
//! hyper serves every request correctly, but a kept-alive request through it costs about
//! twice nginx's user-space CPU: the client's connection and the backend's are two tasks with
//! a channel between them, and every head is parsed into a map, then written out of it, on
//! each side. `examples/h1-relay.rs` measured what a path of our own could save: 0.87× nginx's
//! CPU per request, against hyper's 1.17×. This is that path, doing everything
//! [`HttpServer::proxied`] does for the requests it takes:
//!
//! * one task per client connection owns its pooled backend connection for the length of a
//!   request: no channel, no second task;
//! * the request head is parsed by `httparse` (the parser hyper uses) and goes through the
//!   same rules as hyper's path, written once over [`Fields`](crate::http::fields::Fields):
//!   the affinity cookie taken out
//!   ([`Affinity::take`](crate::http::affinity::Affinity::take)), hop-by-hop fields dropped
//!   ([`forward::strip_hop_by_hop`]), `X-Forwarded-*` set
//!   ([`Forwarding::apply`](crate::http::forward::Forwarding::apply)). Here they run on
//!   [`ReadFields`]: the fields stay in the client's buffer, where they were read, and no map
//!   is built;
//! * one head timer and one answer timer per connection, pushed later at each request, and
//!   deadlines taken from clock reads the request makes anyway (the metrics' timestamps);
//! * the response head is rewritten as bytes (no map: it is read once and written once), the
//!   body passed on as it comes, by `Content-Length`, chunk by chunk, or to the close.
//!
//! It takes a request only when that is simple, and hands the connection to hyper, bytes
//! already read included, for the rest of its life otherwise: a configuration with a cache,
//! compression, routes or assignment; HTTP/1.0; an `Upgrade`, an `Expect`, a chunked request
//! body or one that has not fully arrived with its head; a head hyper must refuse (400, 431).
//! `LB_HTTP_FAST=off` sends every connection to hyper, to compare the two (CI runs chapter 12's
//! tests both ways).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use hyper::header::HeaderName;
use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Sleep;

use super::{Attempts, Chosen, ConnInfo, HttpServer, Line, Upstreams, local_text};
use crate::http::exchange::{self, BodyLength, Failure};
use crate::http::fields::{ReadFields, Span, Value};
use crate::http::forward;
use crate::http::metrics::AffinityOutcome;
use crate::proxy::Conn;

/// At most this many fields in a head, as hyper's default: more is hyper's to refuse.
const MAX_FIELDS: usize = 100;
/// Beyond any timeout: where the connection's timers start.
const FAR: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);
/// What one read asks for at least.
const READ: usize = 16 * 1024;
/// What one read of a big answer's body may grow to.
const MAX_READ: usize = 256 * 1024;

/// How a client connection left this path.
pub(super) enum Left {
    /// It is over. `clean`: nothing can be left unread on it (a lingering close is not needed
    /// unless the socket says otherwise).
    Closed { clean: bool },
    /// hyper serves the rest of it, starting with these bytes already read.
    ToHyper(Vec<u8>),
}

/// Whether this path may serve: `LB_HTTP_FAST=off` says no, for comparisons and for CI's
/// second run of the HTTP tests.
pub(super) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("LB_HTTP_FAST").map_or(true, |v| v != "off"))
}

/// Whether a configuration leaves every request's work to what this path does.
pub(super) fn takes(up: &Upstreams) -> bool {
    !up.settings.needs_hyper()
}

/// One request head, parsed and checked.
struct Head {
    method: Method,
    /// Where the request target (origin form: `/path?query`) is in the buffer.
    target: Span,
    /// Its fields, where they are in the buffer; never its `Content-Length`, which the
    /// request is framed with again by us ([`Head::length`]).
    fields: Vec<(Span, Span)>,
    /// Bytes of the head, then of the body (all already read).
    len: usize,
    body: usize,
    /// The length the client gave, sent on as ours (`Content-Length: 0` included).
    length: Option<u64>,
    /// The client asked to close after this request.
    close: bool,
}

enum Parsed {
    Complete(Head),
    Partial,
    /// Not for this path: hyper takes the connection from here.
    Hyper,
    /// A body over `max-body`: 413 without reading it.
    TooLarge {
        method: Method,
        target: String,
    },
    /// A head the exchange's rules refuse (400, 501): answered, then the connection closes,
    /// since where its body ends cannot be trusted (RFC 9112 §6.1).
    Refused {
        method: Method,
        target: String,
        refused: exchange::Refused,
    },
}

fn parse(buf: &[u8], max_head: usize, max_body: Option<u64>) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Parsed::Partial,
        // Oversized, malformed: hyper answers 431 or 400 and logs it, as for any connection.
        _ => return Parsed::Hyper,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Hyper;
    };
    if len > max_head {
        return Parsed::Hyper;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Hyper;
    };
    let refuse = |refused| Parsed::Refused {
        method: method.clone(),
        target: target.to_owned(),
        refused,
    };
    let named = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value)
    };
    // The exchange's rules, on the head as received, before anything is edited: the same
    // rules hyper's path runs (`HttpServer::request`).
    let form = exchange::Target::of(target);
    if let Err(refused) = exchange::check_target(&method, form, named("host"), true) {
        return refuse(refused);
    }
    let framing =
        exchange::request_framing(req.headers.iter().map(|f| (f.name.as_bytes(), f.value)));
    let body = match framing {
        Err(refused) => return refuse(refused),
        // Streamed by hyper's path, which decodes and checks each chunk.
        Ok(BodyLength::Chunked | BodyLength::UntilClose) => return Parsed::Hyper,
        Ok(BodyLength::Empty) => 0,
        Ok(BodyLength::Length(n)) => n,
    };
    // Absolute form and `OPTIONS *` are valid, and hyper's to serve.
    if form != exchange::Target::Origin {
        return Parsed::Hyper;
    }
    let mut close = false;
    for field in req.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("upgrade") || name.eq_ignore_ascii_case("expect") {
            return Parsed::Hyper;
        }
        if name.eq_ignore_ascii_case("connection")
            && field
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            close = true;
        }
    }
    // Past `max-body`, or past any length hyper could carry (it answers those 431, as if the
    // head were too large; the body is what is too large: 413).
    if max_body.is_some_and(|max| body > max) || body > u64::MAX - 2 {
        return Parsed::TooLarge {
            method,
            target: target.to_owned(),
        };
    }
    // A body still on its way is streamed by hyper's path, which reads and writes at once.
    if body > (buf.len() - len) as u64 {
        return Parsed::Hyper;
    }
    let length = named("content-length").next().map(|_| body);
    // httparse checked both: a name is a token, a value has no control bytes but tabs (what
    // hyper's `HeaderName` and `HeaderValue` would check again).
    let mut fields = spare::fields();
    fields.extend(
        req.headers
            .iter()
            .filter(|f| !f.name.eq_ignore_ascii_case("content-length"))
            .map(|f| (span_in(buf, f.name.as_bytes()), span_in(buf, f.value))),
    );
    Parsed::Complete(Head {
        method,
        target: span_in(buf, target.as_bytes()),
        fields,
        len,
        body: body as usize,
        length,
        close,
    })
}

/// How a response body ends.
enum Framing {
    None,
    Length(u64),
    Chunked(Chunks),
    /// Until the backend closes (no length given): the client's connection closes after it.
    Close,
}

/// Finds the end of a chunked body (RFC 9112 §7.1) as its bytes go by, without buffering:
/// chunk sizes, extensions and trailer fields are passed on as they are, so they are checked
/// as strictly as a parser that decodes them. A backend whose framing is off by one byte
/// (a bare LF, an empty size, `5 5`) would otherwise make the client and this path disagree on
/// where the answer ends, and the next answer on the client's connection would be wrong.
#[derive(Default)]
struct Chunks {
    state: ChunkState,
    left: u64,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Before the first digit of a size.
    #[default]
    SizeStart,
    Size,
    /// Whitespace after the size (`BWS` before `;`, RFC 9112 §7.1.1).
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

impl Chunks {
    /// How many bytes of `data` belong to the body; `Err` for a framing error.
    fn advance(&mut self, data: &[u8]) -> io::Result<usize> {
        use ChunkState::*;
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad chunked framing");
        let mut i = 0;
        while i < data.len() && self.state != Done {
            if self.state == Data {
                let take = (data.len() - i).min(self.left.min(usize::MAX as u64) as usize);
                i += take;
                self.left -= take as u64;
                if self.left == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = data[i];
            i += 1;
            self.state = match (self.state, b) {
                (SizeStart | Size, b) if b.is_ascii_hexdigit() => {
                    let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                    self.left = self
                        .left
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(digit))
                        .ok_or_else(bad)?;
                    Size
                }
                (Size | SizeSpace, b' ' | b'\t') => SizeSpace,
                (Size | SizeSpace, b';') => Extension,
                (Size | Extension, b'\r') => SizeLf,
                // Any visible byte, space or tab; no control byte, and above all no bare LF.
                (Extension, b) if b == b'\t' || b >= b' ' && b != 0x7f => Extension,
                (SizeLf, b'\n') if self.left == 0 => TrailerStart,
                (SizeLf, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => SizeStart,
                (TrailerStart, b'\r') => FinalLf,
                (TrailerStart | Trailer, b) if b == b'\t' || b >= b' ' && b != 0x7f => Trailer,
                (Trailer, b'\r') => TrailerLf,
                (TrailerLf, b'\n') => TrailerStart,
                (FinalLf, b'\n') => Done,
                _ => return Err(bad()),
            };
        }
        Ok(i)
    }

    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// What went wrong on the way to an answer; the exchange's [`Failure`] says what follows.
enum Failed {
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

/// An answer's head in `buf`, if it is all there: what the client is to see of it, and its
/// length. Its framing is decided here, once, from the fields as received
/// ([`exchange::response_framing`]), before anything is removed from them.
fn parse_answer(
    buf: &[u8],
    method: &Method,
    kept: &mut Vec<(Span, Span)>,
) -> io::Result<Option<(ParsedAnswer, usize)>> {
    let invalid = |e| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut res = httparse::Response::new(&mut fields);
    let len = match res.parse(buf).map_err(|e| invalid(e.to_string()))? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let code = res.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|e| invalid(e.to_string()))?;
    let body = exchange::response_framing(
        status,
        method,
        res.headers.iter().map(|f| (f.name.as_bytes(), f.value)),
    )
    .map_err(|e| invalid(e.to_owned()))?;
    let connection: Vec<&[u8]> = res
        .headers
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("connection"))
        .map(|f| f.value)
        .collect();
    // The length as the backend gave it (checked above): what a HEAD or 304 answer passes on.
    let length = res
        .headers
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case("content-length"))
        .and_then(|f| exchange::content_length(f.value.split(|&b| b == b',').next()?));
    let close = connection.iter().any(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    }) || res.version == Some(0);
    let framing = match body {
        BodyLength::Empty => Framing::None,
        BodyLength::Length(n) => Framing::Length(n),
        BodyLength::Chunked => Framing::Chunked(Chunks::default()),
        BodyLength::UntilClose => Framing::Close,
    };
    // Where a field's bytes are in `buf`: the head is written out from there, uncopied.
    let span = |bytes: &[u8]| span_in(buf, bytes);
    let framing_field = |name: &str| {
        name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
    };
    kept.clear();
    kept.extend(
        res.headers
            .iter()
            .filter(|f| !framing_field(f.name) && !forward::is_hop_by_hop(f.name, &connection))
            .map(|f| (span(f.name.as_bytes()), span(f.value))),
    );
    // The transfer codings go last, written only when the body passes on in them.
    let codings = kept.len();
    kept.extend(
        res.headers
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case("transfer-encoding"))
            .map(|f| (span(f.name.as_bytes()), span(f.value))),
    );
    // What the client is told of the body's length, framed by us: the same length, or for a
    // HEAD or 304 the length the backend gave (RFC 9110 §8.6); never for 1xx and 204.
    let length = match framing {
        Framing::Length(n) => Some(n),
        Framing::None if !status.is_informational() && status != StatusCode::NO_CONTENT => length,
        _ => None,
    };
    let reusable = !close && !matches!(framing, Framing::Close);
    Ok(Some((
        ParsedAnswer {
            status,
            reason: res.reason.map_or((0, 0), |r| span(r.as_bytes())),
            codings,
            length,
            framing,
            reusable,
        },
        len,
    )))
}

/// Where `part`, a slice `httparse` returned, lies in `buf`. An empty value may be a slice of
/// something else (httparse returns a static `""` for an empty reason phrase), so anything not
/// inside `buf` is the empty span rather than an offset computed from an unrelated address.
fn span_in(buf: &[u8], part: &[u8]) -> Span {
    let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    match start <= buf.len() && part.len() <= buf.len() - start {
        true => (start, start + part.len()),
        false => (0, 0),
    }
}

/// An answer's head as read from the backend; its end-to-end fields are in the `kept` list
/// [`parse_answer`] fills.
struct ParsedAnswer {
    status: StatusCode,
    reason: Span,
    /// Where in `kept` the backend's `Transfer-Encoding` lines start: passed on when its body
    /// is, in that framing.
    codings: usize,
    /// The `Content-Length` the client is sent.
    length: Option<u64>,
    framing: Framing,
    reusable: bool,
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
    pub(super) async fn serve_fast(&self, conn: &mut Conn, info: &ConnInfo) -> Left {
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
                        self.counters.path(true);
                        break head;
                    }
                    Parsed::Hyper => return Left::ToHyper(buf),
                    Parsed::TooLarge { method, target } => {
                        self.counters.path(true);
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
                        self.counters.path(true);
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
                                write_flushed(conn, super::TIMEOUT_408),
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
        if outcome == AffinityOutcome::Redispatch {
            tracing::info!(client = %info.client, backend = %up.names[i],
                "affinity cookie named a backend that is down or gone: redispatched");
        }

        // 3: what the backend is sent, head and body in one buffer. Its framing is ours: the
        // length decided from the head as received, whatever `Connection` named.
        forward::strip_hop_by_hop(&mut headers, false);
        up.settings
            .forwarding
            .apply(&mut headers, &info.forwarded_for, info.tls);
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
        let mut answered = None;
        while attempts.another() {
            let i = attempts.i;
            let backend = &up.backends[i];
            let pooled = match attempts.may_reuse() {
                true => backend.pool.take_raw(started),
                false => None,
            };
            let (mut dialled, fresh) = match pooled {
                Some(conn) => (conn, false),
                // Boxed: a dial (a TLS handshake, for a TLS backend) is the largest state of
                // a request, and inline it would size the connection's task for all its idle
                // time; dials are rare once the pool is warm, so the allocation is too.
                None => match Box::pin(up.balancer.dial_reporting(i, None)).await {
                    Ok(conn) => {
                        backend.pool.opened();
                        crate::metrics::inc(&up.balancer.state(i).counters.connections);
                        (conn, true)
                    }
                    Err(e) if attempts.dial_failed(&e) => continue,
                    Err(_) => break,
                },
            };
            let active = balancer.count_active(i);
            upstream.clear();
            let (failed, error) = match exchange(
                &mut dialled,
                out,
                upstream,
                &method,
                up.settings.response_timeout,
                timer.as_mut(),
                kept,
            )
            .await
            {
                Ok(answer) => {
                    answered = Some((answer, dialled, active, i));
                    break;
                }
                Err(Failed::Timeout) => (Failure::Timeout, None),
                Err(Failed::Bad(e)) => (Failure::BadAnswer, Some(e)),
                Err(Failed::Unsent(e)) => (Failure::Unsent, Some(e)),
                Err(Failed::NoAnswer(e)) => (Failure::NoAnswer, Some(e)),
            };
            drop(active);
            if !attempts.failed(failed, !fresh, error.as_ref().map(|e| e as _)) {
                break;
            }
        }
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
            field(
                out,
                b"date",
                httpdate::fmt_http_date(SystemTime::now()).as_bytes(),
            );
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
        loop {
            let (take, done) = match &mut framing {
                Framing::None => (0, true),
                Framing::Length(left) => {
                    let take = (upstream.len() as u64).min(*left);
                    *left -= take;
                    (take as usize, *left == 0)
                }
                Framing::Chunked(chunks) => match chunks.advance(upstream) {
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
            let write = async {
                match head_sent {
                    false => {
                        out.extend_from_slice(&upstream[..take]);
                        write_flushed(conn, out).await
                    }
                    true => write_flushed(conn, &upstream[..take]).await,
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
        out.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
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
        if let Conn::Plain(tcp) = conn {
            tcp.readable().await?;
        }
        *buf = spare::buffer();
    }
    if buf.capacity() - buf.len() < READ / 4 {
        buf.reserve(READ);
    }
    conn.read_buf(buf).await
}

/// Buffers kept per worker thread, as chapter 11's relay keeps its own: a request takes them
/// when its head is on its way and gives them back when its answer is done, so an idle
/// keep-alive connection holds none (three 16 KiB buffers each would be 48 KiB per idle
/// client), and a busy one costs no allocation. A buffer taken on one thread may come back on
/// another; each thread keeps at most [`spare::KEEP`] of each kind.
mod spare {
    use std::cell::RefCell;

    use super::{READ, Scratch, Span};

    pub const KEEP: usize = 64;

    thread_local! {
        static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
        static FIELDS: RefCell<Vec<Vec<(Span, Span)>>> = const { RefCell::new(Vec::new()) };
        static SCRATCH: RefCell<Vec<Scratch>> = const { RefCell::new(Vec::new()) };
    }

    pub fn buffer() -> Vec<u8> {
        BUFFERS
            .with(|b| b.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(READ))
    }

    /// Keeps `buf` for another connection, unless it grew past the usual size (a large head).
    pub fn give_buffer(mut buf: Vec<u8>) {
        if buf.capacity() > 2 * READ {
            return;
        }
        buf.clear();
        BUFFERS.with(|b| {
            let mut free = b.borrow_mut();
            if free.len() < KEEP {
                free.push(buf);
            }
        });
    }

    /// A list for a request head's fields.
    pub fn fields() -> Vec<(Span, Span)> {
        FIELDS
            .with(|f| f.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(32))
    }

    pub fn give_fields(mut fields: Vec<(Span, Span)>) {
        fields.clear();
        FIELDS.with(|f| {
            let mut free = f.borrow_mut();
            if free.len() < KEEP {
                free.push(fields);
            }
        });
    }

    pub fn scratch() -> Scratch {
        SCRATCH
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| Scratch {
                out: Vec::with_capacity(READ),
                upstream: Vec::with_capacity(READ),
                kept: Vec::with_capacity(32),
                added: Vec::with_capacity(8),
            })
    }

    pub fn give_scratch(scratch: Scratch) {
        if scratch.out.capacity() > 2 * READ || scratch.upstream.capacity() > 2 * READ {
            return;
        }
        SCRATCH.with(|s| {
            let mut free = s.borrow_mut();
            if free.len() < KEEP {
                free.push(scratch);
            }
        });
    }
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

/// Sends `request` on `conn` and reads the answer's head into `buf` (with whatever of the
/// body came with it). The backend has `response_timeout` to take the request, then as long
/// again from the request's end to its answer's head (RFC 9110 leaves the timing to us; this
/// is what HAProxy's `timeout server` and nginx's `proxy_read_timeout` count).
async fn exchange(
    conn: &mut Conn,
    request: &[u8],
    buf: &mut Vec<u8>,
    method: &Method,
    response_timeout: std::time::Duration,
    mut timer: Pin<&mut Sleep>,
    kept: &mut Vec<(Span, Span)>,
) -> Result<(ParsedAnswer, usize), Failed> {
    timer
        .as_mut()
        .reset((Instant::now() + response_timeout).into());
    // Written, or not a byte of it: a connection found closed before anything was taken from
    // us may carry the request again, whatever it is.
    let write = async {
        let mut at = 0;
        while at < request.len() {
            match conn.write(&request[at..]).await {
                Ok(0) => return Err(Failed::NoAnswer(io::ErrorKind::WriteZero.into())),
                Ok(n) => at += n,
                Err(e) if at == 0 => return Err(Failed::Unsent(e)),
                Err(e) => return Err(Failed::NoAnswer(e)),
            }
        }
        conn.flush().await.map_err(Failed::NoAnswer)
    };
    tokio::select! {
        biased;
        written = write => written?,
        () = timer.as_mut() => return Err(Failed::Timeout),
    }
    timer
        .as_mut()
        .reset((Instant::now() + response_timeout).into());
    let read = async {
        loop {
            if !buf.is_empty() {
                match parse_answer(buf, method, kept) {
                    Ok(Some((answer, len))) if answer.status.is_informational() => {
                        // 100 Continue, 103 Early Hints: hyper's client drops them too.
                        if answer.status == StatusCode::SWITCHING_PROTOCOLS {
                            return Err(Failed::Bad(io::Error::other(
                                "101 to a request without Upgrade",
                            )));
                        }
                        buf.drain(..len);
                        continue;
                    }
                    Ok(Some(answer)) => return Ok(answer),
                    Ok(None) if buf.len() > super::DEFAULT_MAX_HEAD * 2 => {
                        return Err(Failed::Bad(io::Error::other("answer head too large")));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(Failed::Bad(e)),
                }
            }
            buf.reserve(READ);
            match conn.read_buf(buf).await {
                Ok(0) if buf.is_empty() => {
                    return Err(Failed::NoAnswer(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before an answer",
                    )));
                }
                Ok(0) => return Err(Failed::Bad(io::Error::other("answer head cut short"))),
                Ok(_) => {}
                Err(e) if buf.is_empty() => return Err(Failed::NoAnswer(e)),
                Err(e) => return Err(Failed::Bad(e)),
            }
        }
    };
    tokio::select! {
        biased;
        answer = read => answer,
        () = timer => Err(Failed::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(pieces: &[&[u8]]) -> io::Result<(usize, bool)> {
        let mut c = Chunks::default();
        let mut total = 0;
        for p in pieces {
            total += c.advance(p)?;
        }
        Ok((total, c.done()))
    }

    #[test]
    fn the_end_of_a_chunked_body_is_found_however_it_is_cut() {
        let body: &[u8] = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-sum: 1\r\n\r\n";
        for cut in 0..body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(chunks(&[a, b]).unwrap(), (body.len(), true), "cut at {cut}");
        }
        // What follows the end is not the body's.
        let mut more = body.to_vec();
        more.extend_from_slice(b"HTTP/1.1 200");
        assert_eq!(chunks(&[&more]).unwrap(), (body.len(), true));
        assert_eq!(chunks(&[b"0\r\n\r\n"]).unwrap(), (5, true));
        assert_eq!(chunks(&[b"3\r\nab"]).unwrap(), (5, false));
    }

    /// RFC 9112 §7.1: what a decoding parser would refuse is refused here too, so the client
    /// and this path never disagree on where a chunked answer ends.
    #[test]
    fn bad_chunk_framing_is_an_error_not_a_guess() {
        for bad in [
            &b"zz\r\n"[..],
            b"3\r\nabcX",
            b"ffffffffffffffffff\r\n",
            // An empty size line, a size with a space inside, a bare LF after an extension,
            // after a size, after data, in the trailer section.
            b"\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"5;x\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\nx: 1\n\r\n",
            b"0\r\n\n",
            // Whitespace before CR (BWS is allowed only before `;`), a control byte in an
            // extension, a sign.
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5;a\x00\r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                chunks(&[bad]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // BWS before an extension is allowed (RFC 9112 §7.1.1).
        assert_eq!(
            chunks(&[b"5 ;a=\"b c\"\r\nhello\r\n0\r\n\r\n"]).unwrap(),
            (24, true)
        );
    }

    #[test]
    fn simple_requests_are_taken_and_the_rest_left_to_hyper() {
        let take = |raw: &[u8]| matches!(parse(raw, 65536, None), Parsed::Complete(_));
        let hyper = |raw: &[u8]| matches!(parse(raw, 65536, None), Parsed::Hyper);
        let refused = |raw: &[u8]| match parse(raw, 65536, None) {
            Parsed::Refused { refused, .. } => Some(refused.status.as_u16()),
            _ => None,
        };
        assert!(take(b"GET /a?b HTTP/1.1\r\nhost: x\r\n\r\n"));
        assert!(take(
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi"
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nhost: x\r\n", 65536, None),
            Parsed::Partial
        ));
        // A body still on its way, chunked, upgrades, Expect, HTTP/1.0, absolute form.
        assert!(hyper(
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhi"
        ));
        assert!(hyper(
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        ));
        assert!(hyper(
            b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
        ));
        assert!(hyper(
            b"PUT / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n"
        ));
        assert!(hyper(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(hyper(b"GET http://x/ HTTP/1.1\r\nhost: x\r\n\r\n"));
        // Refused by the exchange's rules, here as on hyper's path: ambiguous framing, a bad
        // Host, a target of no form, CONNECT (RFC 9112 §3.2, §6.1–6.3).
        for (raw, status) in [
            (&b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"[..], 400),
            (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: +1\r\n\r\nA", 400),
            (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nhost: evil.example/x@good\r\n\r\n", 400),
            (b"GET f515 HTTP/1.1\r\nhost: x\r\n\r\n", 400),
            (b"GET http://u@x/ HTTP/1.1\r\nhost: x\r\n\r\n", 400),
            (b"CONNECT x:443 HTTP/1.1\r\nhost: x:443\r\n\r\n", 501),
        ] {
            assert_eq!(refused(raw), Some(status), "{}", String::from_utf8_lossy(raw));
        }
        // Garbage and oversized heads: hyper answers 400 and 431.
        assert!(hyper(b"\x16\x03\x01garbage\r\n\r\n"));
        assert!(matches!(parse(&[b'a'; 100], 64, None), Parsed::Hyper));
        // Over max-body: 413 here, without waiting for the body, however large the number.
        for length in ["5000", "18446744073709551615"] {
            let raw = format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n\r\n");
            assert!(matches!(
                parse(raw.as_bytes(), 65536, Some(1000)),
                Parsed::TooLarge { .. }
            ));
        }
    }

    /// Mutations of real heads and plain noise, through every parser of this path: none may
    /// panic (a slice out of range, an overflow), whatever a client or a backend sends.
    #[test]
    fn no_input_makes_the_parsers_panic() {
        let seeds: [&[u8]; 4] = [
            b"GET /a?b HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\ncookie: lb=x\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close, x\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"5;a=b\r\nhello\r\nA\r\n0123456789\r\n0\r\nt: 1\r\n\r\n",
        ];
        // A fixed xorshift: the same inputs on every run, so a failure can be replayed.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut kept = Vec::new();
        for round in 0..20_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            let noise = round % 5 == 4;
            if noise {
                input = (0..next() % 200).map(|_| next() as u8).collect();
            } else {
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % (input.len() + 1);
                    match next() % 3 {
                        0 if at < input.len() => input[at] = next() as u8,
                        1 => input.insert(at, next() as u8),
                        _ => input.truncate(at),
                    }
                }
            }
            let _ = parse(&input, 64, Some(10));
            let _ = parse(&input, 65536, None);
            for method in [Method::GET, Method::HEAD] {
                let _ = parse_answer(&input, &method, &mut kept);
            }
            // Spans point inside the buffer they came from.
            if let Ok(Some((answer, len))) = parse_answer(&input, &Method::GET, &mut kept) {
                assert!(len <= input.len());
                for &((a, b), (c, d)) in &kept {
                    assert!(a <= b && b <= input.len() && c <= d && d <= input.len());
                }
                assert!(answer.reason.1 <= input.len());
            }
            let mut chunks = Chunks::default();
            let mut at = 0;
            while at < input.len() {
                let step = 1 + (next() as usize) % 7;
                let piece = &input[at..(at + step).min(input.len())];
                match chunks.advance(piece) {
                    Ok(n) => assert!(n <= piece.len()),
                    Err(_) => break,
                }
                at += step;
            }
        }
    }
}
