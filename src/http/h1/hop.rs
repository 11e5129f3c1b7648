//! The own HTTP/1.1 hop for a request that arrived over HTTP/2 (chapter 17).
//!
//! Until this, an HTTP/2 stream's request went to its backend through hyper's HTTP/1 client.
//! That means a channel to the backend connection's task, a `oneshot` back, and the answer's
//! head parsed into hyper's map. The body then comes through another channel, and a copy of
//! the request is kept in case it must be sent again. A `GET` through the balancer cost about
//! 20 µs of CPU more than the 3.9 µs the own codec costs when it answers by itself (README
//! chapter 17).
//!
//! This is chapter 12's backend half (`forward` in `h1/mod.rs`) for such a stream:
//!
//! * the same code for the decisions: `send` in `h1/mod.rs`, which chapter 12's path calls
//!   too, with `Attempts` for the retries (RFC 9110 §9.2.2: only what is idempotent goes again
//!   once written), `exchange` for the write, the timeouts and the answer's head, and
//!   `parse_answer` for its framing, decided once from the head as received (RFC 9112 §6.3);
//! * the same pooled sockets (`Pool::take_raw`): one is reused only when its answer ended
//!   exactly where its framing said, with nothing after it (RFC 9112 §9.3);
//! * no second task: the HTTP/2 connection's task writes the request and reads the answer, and
//!   the body is read from the backend's socket as the stream asks for it ([`RawBody`]);
//! * HTTP/2 carries no chunked framing and no transfer codings. A chunked body is decoded here,
//!   and its trailer section becomes the stream's trailers. An answer in any other transfer
//!   coding was refused with 502 when its head was read (`exchange::response_framing`);
//! * for the own HTTP/2 codec, the request's fields come as they decoded from HPACK, in one
//!   buffer, and chapter 12's rules run on them there ([`ReadFields`]; `proxied_plain`): no map
//!   is built for the request either. Its head passed the exchange's checks as it was made
//!   plain (`h2::message::Head::plain`); anything unusual took hyper's way (`proxied`);
//! * for the own HTTP/2 codec, the answer's fields go from where they were read straight into
//!   the HEADERS frame's HPACK block ([`AnswerFields`]), with no field map in between;
//! * what a stream keeps while it waits for its backend is only what it needs then: the
//!   request's bytes (for a retry) and its method. Its head goes once written, and the answer's
//!   buffers come with the answer (README chapter 17: glibc's per-thread cache and hundreds of
//!   streams in flight).
//!
//! It takes a stream when chapter 12's path takes the configuration ([`super::takes`]: HTTP/1.1
//! backends only, no cache, no routes, no compression) and the request has no body, which is
//! most `GET`s. Bodies, gRPC calls among them, still go through hyper's client.
//! `LB_HTTP_FAST=off` turns this off with the rest of the own HTTP/1 path, so that the same
//! bytes can be run through both (`tests/12_exchange.rs`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode, Version};
use tokio::io::{AsyncRead, ReadBuf};

use super::parse::Framing;
use super::{HintsTo, MAX_TRAILERS, READ, field, itoa, send, spare};
use crate::balancer::OwnedActive;
use crate::conn::Conn;
use crate::http::balancer::{
    Attempts, BackendHttp, Chosen, ConnInfo, HttpServer, Line, Upstreams, join_cookies,
};
use crate::http::body::{BoxError, Download, Payload};
use crate::http::early_hints::StreamHints;
use crate::http::exchange;
use crate::http::fields::ReadFields;
use crate::http::h2::hpack;
use crate::http::h2::message::Plain;
use crate::http::metrics::AffinityOutcome;
use crate::http::pool::Pool;

/// Whether the own hop carries this request: see the module's header.
pub(in crate::http) fn takes(
    up: &Upstreams,
    head: &hyper::http::request::Parts,
    has_body: bool,
) -> bool {
    head.version == Version::HTTP_2
        && !has_body
        && head.method != hyper::Method::CONNECT
        && super::enabled()
        && super::takes(up)
}

impl HttpServer {
    /// An HTTP/2 request the own codec decoded into a [`Plain`] head: all of `proxied` that
    /// such a request goes through, on the head as it decoded, with no map. The configuration
    /// is one [`takes`] accepts (so no route, cache, compression or assign mode to apply), and
    /// the head passed the exchange's checks as it was made plain; the rest is chapter 12's
    /// path: the backend chosen ([`Upstreams::choose`]: the affinity cookie taken out), the
    /// hop-by-hop fields dropped and `X-Forwarded-*` set (RFC 9110 §7.6), on [`ReadFields`],
    /// the head written, then [`HttpServer::proxied_own`].
    pub(in crate::http) async fn proxied_plain(
        &self,
        up: Arc<Upstreams>,
        plain: Plain,
        info: &ConnInfo,
        hints: StreamHints,
    ) -> Response<Download> {
        self.counters.path(true, true);
        let started = Instant::now();
        let Plain {
            method,
            target,
            text,
            fields,
        } = plain;
        let target = &text[target.0..target.1];
        let mut line = Line {
            client: info.client,
            method: method.clone(),
            // Copied only when the access log is on, as `proxied` does.
            path: match tracing::enabled!(target: "access", tracing::Level::INFO) {
                true => String::from_utf8_lossy(target).into_owned(),
                false => String::new(),
            },
            backend: None,
            affinity: AffinityOutcome::Off,
            started,
        };
        let mut headers = ReadFields::new(&text, fields, spare::added());
        let Chosen {
            pick,
            outcome,
            cookie: cookie_backend,
        } = up.choose(&mut headers, info.client.ip(), &[]);
        line.affinity = outcome;
        let Some(i) = pick else {
            tracing::warn!(client = %info.client, "no backend is up: 503");
            return self.local(StatusCode::SERVICE_UNAVAILABLE, line);
        };
        up.log_redispatch(outcome, i, info.client);
        up.forward_read(&mut headers, info);
        let mut out = spare::small();
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(target);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut length = false;
        for (name, value) in headers.iter() {
            // The framing is ours: no body, so a `Content-Length` (checked to be 0) says 0.
            if name == b"content-length" {
                length = true;
            } else {
                field(&mut out, name, value);
            }
        }
        if length {
            field(&mut out, b"content-length", b"0");
        }
        out.extend_from_slice(b"\r\n");
        let (read, added) = headers.into_lists();
        spare::give_fields(read);
        spare::give_added(added);
        spare::give_small(text);
        let stall = up
            .balancer
            .idle_timeout
            .unwrap_or(up.settings.response_timeout);
        let timeout = up.settings.response_timeout;
        let replayable = exchange::is_idempotent(&method);
        let attempts = Attempts::new(&up, info.client, i, Vec::new(), replayable);
        self.proxied_own(
            &up,
            out,
            method,
            info,
            line,
            attempts,
            (outcome, cookie_backend),
            timeout,
            stall,
            true,
            Some(hints),
        )
        .await
    }

    /// Steps 4 to 6 of `proxied` for a request [`takes`] accepted, whose head went through the
    /// forwarding rules and was written out as `out` ([`request_head`], or `proxied_plain`'s):
    /// sent to backend `attempts.i` (or the ones after it, as the attempts allow), and the
    /// answer's head with its body to come.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::http) async fn proxied_own(
        &self,
        up: &Arc<Upstreams>,
        out: Vec<u8>,
        method: hyper::Method,
        info: &ConnInfo,
        mut line: Line,
        mut attempts: Attempts<'_>,
        (mut outcome, cookie_backend): (AffinityOutcome, Option<usize>),
        timeout: Duration,
        stall: Duration,
        encoded: bool,
        hints: Option<StreamHints>,
    ) -> Response<Download> {
        let started = line.started;
        // What the request needs while it waits for its answer is only `out` (the bytes to
        // send again, which RFC 9110 §9.2.2 allows for some) and the method (the answer's
        // framing depends on it). With hundreds of streams waiting, what each holds through
        // the wait is what the allocator's per-thread cache (seven blocks of a size) cannot
        // keep: the head was freed in the same turn as made, and the answer's buffer and field
        // list are taken when its head comes, for the same reason.
        let (mut upstream, mut kept) = (Vec::new(), Vec::new());
        let mut timer = std::pin::pin!(tokio::time::sleep_until((started + timeout).into()));
        // RFC 9110 §15.2: a proxy forwards a 1xx it did not ask for. The own codec's stream
        // takes a 103 as a HEADERS frame (`hints`); hyper's HTTP/2 server cannot send one
        // (its pull request 4114), so there it is dropped.
        let answered = send(
            up,
            &mut attempts,
            |i| up.balancer.count_active_owned(i),
            hints.as_ref().map(HintsTo::Stream),
            &out,
            &mut upstream,
            &mut kept,
            &method,
            started,
            timeout,
            timer.as_mut(),
        )
        .await;
        spare::give_small(out);
        let Some(((parsed, head_len), conn, active, i)) = answered else {
            spare::give_fields(kept);
            spare::give_small(upstream);
            return self.local(attempts.status, line);
        };
        let name = &up.names[i];
        line.answered_by(&mut outcome, cookie_backend, name, i);
        let backend = Arc::clone(&up.backends[i]);
        backend.counters.observe(parsed.status, started.elapsed());

        // 5: the answer's head, as the client sees it: a map for hyper's HTTP/2 server, or,
        // for the own codec, the header block itself (`encoded`).
        let mut fields = AnswerFields::new(encoded, &upstream[..head_len], kept.len() + 2);
        let mut fields_ok = true;
        for &(name, value) in &kept[..parsed.codings] {
            if !up.hides(&upstream[name.0..name.1]) {
                fields_ok &= fields.read(&upstream[..head_len], name, value);
            }
        }
        spare::give_fields(kept);
        if !fields_ok {
            tracing::warn!(client = %info.client, backend = %name,
                "answer refused (502): a field HTTP/2 cannot carry");
            return self.local(StatusCode::BAD_GATEWAY, line);
        }
        // RFC 9110 §6.6.1: an answer forwarded without `Date` gets one.
        if !fields.has_date
            && let Ok(now) = HeaderValue::from_bytes(&exchange::date_now())
        {
            fields.add(header::DATE, &now);
        }
        if let Some(n) = parsed.length {
            fields.length(n);
        }
        for (name, value) in up.answer_fields(outcome, i, info.tls) {
            fields.add(name, value);
        }
        self.counters.affinity(outcome);

        // 6: the body, read from the backend's socket as the stream takes it.
        let after_head = upstream.len();
        let (headers, block) = match fields.out {
            Out::Map { map, .. } => (map, None),
            Out::Block(block) => (HeaderMap::new(), Some(block)),
        };
        let mut body = RawBody {
            block,
            conn: Some(conn),
            first: (head_len, after_head),
            buf: upstream,
            framing: parsed.framing,
            reusable: parsed.reusable,
            trailers: None,
            trailers_out: None,
            ranges: Vec::new(),
            ended: false,
            pool: Arc::clone(&backend.pool),
            backend: Arc::clone(name),
            done: None,
        };
        // No content (a 204, a 304, an answer to HEAD): the answer ended with its head, and the
        // stream ends with its HEADERS. Anything after the head is an answer nobody asked for.
        if matches!(body.framing, Framing::None) {
            body.end(head_len < after_head);
        }
        let status = parsed.status;
        body.done = Some(Done {
            active,
            backend,
            line,
            status,
        });
        let mut download = Download::new(Payload::Raw(Box::new(body)), None);
        download.set_stall(stall);
        download.set_hide(Arc::clone(&up.hidden));
        let mut response = Response::new(download);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}

/// Where an answer's fields go on their way to an HTTP/2 client.
///
/// hyper's HTTP/2 server takes a map. The own codec (chapter 17) takes the HPACK block its
/// HEADERS frame carries, and the hop writes it here directly from the fields where they were
/// read: a map built only to be walked and encoded again cost about 4,000 instructions an
/// answer, most of them its allocations, the names' parsing and hashing, and their drops.
/// Either way a field is what the client gets only if HTTP/2 can carry it (RFC 9113 §8.2.1:
/// a name in lower case, no control character in a value, which `httparse` saw to); the
/// framing fields and those HTTP/2 forbids (§8.2.2) were set apart by `parse_answer` already.
struct AnswerFields {
    out: Out,
    /// A `Date` came from the backend.
    has_date: bool,
}

enum Out {
    /// The map, and one copy of the head that its values share.
    Map {
        map: HeaderMap,
        read: Bytes,
    },
    Block(Vec<u8>),
}

impl AnswerFields {
    fn new(encoded: bool, head: &[u8], fields: usize) -> AnswerFields {
        let out = match encoded {
            true => Out::Block(Vec::with_capacity(head.len() + 64)),
            false => Out::Map {
                map: HeaderMap::with_capacity(fields),
                read: Bytes::copy_from_slice(head),
            },
        };
        AnswerFields {
            out,
            has_date: false,
        }
    }

    /// A field of the backend's head: whether HTTP/2 can carry it.
    fn read(&mut self, head: &[u8], (n0, n1): (usize, usize), (v0, v1): (usize, usize)) -> bool {
        let (name, value) = (&head[n0..n1], &head[v0..v1]);
        self.has_date |= name.eq_ignore_ascii_case(b"date");
        match &mut self.out {
            // Both were checked by `httparse` already, by the same grammar.
            Out::Map { map, read } => match (
                HeaderName::from_bytes(name),
                HeaderValue::from_maybe_shared(read.slice(v0..v1)),
            ) {
                (Ok(name), Ok(value)) => {
                    map.append(name, value);
                    true
                }
                _ => false,
            },
            // `httparse`'s tables are the same rules (a token for a name; tab, space, visible
            // characters and obs-text for a value), and no lenient option is on.
            Out::Block(block) => {
                hpack::encode_field_lowercase(block, name, value);
                true
            }
        }
    }

    /// `Content-Length`, as framed by us.
    fn length(&mut self, n: u64) {
        match &mut self.out {
            Out::Map { map, .. } => {
                map.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            Out::Block(block) => {
                hpack::encode_field(block, b"content-length", itoa(n, &mut [0; 20]))
            }
        }
    }

    /// A field of the balancer's own.
    fn add(&mut self, name: HeaderName, value: &HeaderValue) {
        match &mut self.out {
            Out::Map { map, .. } => {
                map.append(name, value.clone());
            }
            Out::Block(block) => {
                hpack::encode_field(block, name.as_str().as_bytes(), value.as_bytes())
            }
        }
    }
}

/// The request's head for an HTTP/1.1 backend, from a head that went through the forwarding
/// rules, and its method: `Host` first (RFC 9112 §3.2 asks clients for that), then the fields. Its framing is
/// written here, not copied: the request has no body, and a `Content-Length` the client sent
/// was checked to be 0 against its DATA (RFC 9113 §8.1.1).
pub(in crate::http) fn written(mut head: hyper::http::request::Parts) -> (Vec<u8>, hyper::Method) {
    // RFC 9113 §8.2.3: an HTTP/2 client's cookie crumbs become one line for HTTP/1.1 (hyper's
    // server hands them on apart).
    join_cookies(&mut head.headers);
    // A small buffer (`spare::small`): a request head fits, and it grows when it does not.
    // Taking 16 KiB ones from `spare` ran their list dry with hundreds of streams in flight,
    // and each request then paid a large allocation and its release.
    let mut out = spare::small();
    request_head(&mut out, &head);
    (out, head.method)
}

fn request_head(out: &mut Vec<u8>, head: &hyper::http::request::Parts) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = head.headers.get(header::HOST) {
        field(out, b"host", host.as_bytes());
    }
    for (name, value) in &head.headers {
        if matches!(
            *name,
            header::HOST | header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::TE
        ) {
            continue;
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if head.headers.contains_key(header::CONTENT_LENGTH) {
        field(out, b"content-length", b"0");
    }
    out.extend_from_slice(b"\r\n");
}

/// An answer's body as it comes from a backend's HTTP/1.1 socket, turned into a stream's
/// frames: its content without chunked framing, then its trailers. When the body ended
/// exactly where its framing said and nothing came after it, the socket goes back to the pool
/// for the next request; otherwise it closes with this.
pub struct RawBody {
    /// The answer's fields as an HPACK block, for the own HTTP/2 codec: its HEADERS frame
    /// carries them as they are ([`AnswerFields`]). `None` for hyper's server, which takes
    /// the response's map.
    block: Option<Vec<u8>>,
    conn: Option<Conn>,
    /// Where in `buf` the bytes that came with the answer's head are: walked before the
    /// socket is read.
    first: (usize, usize),
    /// The buffer the head was read into; then where the socket is read into (taken from the
    /// spare list, or zeroed to its full length once: no `unsafe`), and back to it after.
    buf: Vec<u8>,
    framing: Framing,
    reusable: bool,
    /// A chunked body's trailer section, held from its start to its end.
    trailers: Option<Vec<u8>>,
    /// The trailers, once parsed: the last frame.
    trailers_out: Option<HeaderMap>,
    /// Where the content lies in a chunked piece being walked (one range, by length or to the
    /// close, needs no list: [`Content::One`]).
    ranges: Vec<(usize, usize)>,
    /// The body ended (or broke): nothing more is read.
    ended: bool,
    pool: Arc<Pool>,
    backend: Arc<str>,
    /// What happens when the body ends (`Download` calls [`RawBody::done`] where it would
    /// call an `OnEnd`): kept in the body's own box, since a closure's box was one more
    /// allocation a request, held as long.
    done: Option<Done>,
}

/// The end of a request carried by the hop: see [`RawBody::done`].
struct Done {
    active: OwnedActive,
    /// Where its bytes count (`RawBody::backend` is only the backend's name, for its logs).
    backend: Arc<BackendHttp>,
    line: Line,
    status: StatusCode,
}

/// Where a piece's content is, as `RawBody::walk` found it.
enum Content {
    None,
    One(usize, usize),
    /// In `RawBody::ranges`.
    Ranges,
}

impl RawBody {
    pub(in crate::http) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(trailers) = self.trailers_out.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            // Taken out while walked: the walk settles the rest of `self`.
            let mut buf = std::mem::take(&mut self.buf);
            let piece = match self.first {
                (start, end) if start < end => {
                    self.first = (0, 0);
                    start..end
                }
                _ => match self.read(&mut buf, cx) {
                    Poll::Pending => {
                        self.buf = buf;
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(0)) if matches!(self.framing, Framing::Close) => {
                        self.buf = buf;
                        self.end(false);
                        continue;
                    }
                    Poll::Ready(Ok(0)) => {
                        self.buf = buf;
                        let e = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "answer cut off by the backend",
                        );
                        return Poll::Ready(Some(Err(self.broke(e))));
                    }
                    Poll::Ready(Ok(n)) => 0..n,
                    Poll::Ready(Err(e)) => {
                        self.buf = buf;
                        return Poll::Ready(Some(Err(self.broke(e))));
                    }
                },
            };
            let walked = self.walk(&buf[piece.clone()]);
            let data = walked.map(|content| self.content(&buf[piece], content));
            self.buf = buf;
            let data = match data {
                Ok(data) => data,
                Err(e) => return Poll::Ready(Some(Err(self.broke(e)))),
            };
            if let Some(data) = data {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
        }
    }

    /// Reads the backend's socket into `buf`, the whole of it (zeroed to its length once).
    fn read(&mut self, buf: &mut Vec<u8>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if buf.len() < READ {
            *buf = spare::buffer();
            buf.resize(READ, 0);
        }
        let mut read = ReadBuf::new(buf);
        match Pin::new(conn).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(read.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    /// Walks `piece` by the answer's framing: `ranges` is where the content lies in it, and
    /// at the body's end the socket's fate is settled and the trailers parsed.
    fn walk(&mut self, piece: &[u8]) -> io::Result<Content> {
        let ranges = &mut self.ranges;
        let mut content = Content::None;
        let (used, done) = match &mut self.framing {
            Framing::None => (0, true),
            Framing::Length(left) => {
                let take = (piece.len() as u64).min(*left);
                *left -= take;
                content = Content::One(0, take as usize);
                (take as usize, *left == 0)
            }
            Framing::Close => {
                content = Content::One(0, piece.len());
                (piece.len(), false)
            }
            Framing::Chunked(chunks) => {
                ranges.clear();
                content = Content::Ranges;
                let used = chunks.advance(piece, |start, end| ranges.push((start, end)))?;
                let from = match chunks.take_trailers_at() {
                    Some(at) => {
                        self.trailers = Some(Vec::new());
                        at
                    }
                    None => 0,
                };
                if let Some(held) = self.trailers.as_mut() {
                    held.extend_from_slice(&piece[from..used]);
                    if held.len() > MAX_TRAILERS {
                        return Err(io::Error::other("trailers too large"));
                    }
                }
                (used, chunks.done())
            }
        };
        if done {
            if let Some(section) = self.trailers.take() {
                let trailers = trailer_fields(&section)?;
                self.trailers_out = (!trailers.is_empty()).then_some(trailers);
            }
            // RFC 9112 §9.3: bytes after the end of an answer are an answer nobody asked
            // for; the next client on this socket would read them as its own.
            self.end(used < piece.len());
        }
        Ok(content)
    }

    /// The content `walk` found in `piece`, as one frame's data.
    fn content(&self, piece: &[u8], content: Content) -> Option<Bytes> {
        let ranges = match content {
            Content::None => return None,
            Content::One(start, end) => &[(start, end)][..],
            Content::Ranges => self.ranges.as_slice(),
        };
        match ranges {
            [] => None,
            [(start, end)] if start == end => None,
            &[(start, end)] => Some(Bytes::copy_from_slice(&piece[start..end])),
            ranges => {
                let mut data = Vec::with_capacity(ranges.iter().map(|(s, e)| e - s).sum());
                for &(start, end) in ranges {
                    data.extend_from_slice(&piece[start..end]);
                }
                (!data.is_empty()).then(|| Bytes::from(data))
            }
        }
    }

    /// The body is over: the socket goes back to the pool if it may carry another request.
    fn end(&mut self, extra: bool) {
        self.ended = true;
        if let Some(conn) = self.conn.take()
            && self.reusable
            && !extra
        {
            self.pool.put_raw(conn, Instant::now());
        }
    }

    /// The body broke: logged, the socket closed, the stream ended with the error.
    fn broke(&mut self, e: io::Error) -> BoxError {
        tracing::warn!(backend = %self.backend, "answer cut off: {e}");
        self.ended = true;
        self.conn = None;
        Box::new(e)
    }

    /// The answer's fields, encoded already: taken once, by the codec writing the head.
    pub(in crate::http) fn take_block(&mut self) -> Option<Vec<u8>> {
        self.block.take()
    }

    pub(in crate::http) fn is_end_stream(&self) -> bool {
        self.ended && self.trailers_out.is_none()
    }

    /// The body is done, with `sent` bytes of it sent and `complete` if it ended (rather than
    /// the client going away first): the request stops counting on its backend
    /// (least-connections), and its access-log line is written.
    pub(in crate::http) fn done(&mut self, sent: u64, complete: bool) {
        if let Some(Done {
            active,
            backend,
            line,
            status,
        }) = self.done.take()
        {
            drop(active);
            backend.counters.bytes(sent);
            line.log(status, sent, complete);
        }
    }

    pub(in crate::http) fn size_hint(&self) -> SizeHint {
        match (&self.framing, self.ended) {
            (_, true) => SizeHint::with_exact(0),
            (Framing::Length(left), false) => SizeHint::with_exact(*left),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for RawBody {
    /// The buffer is kept for the next answer: a small one as taken, or one a large body grew
    /// to full size.
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        match buf.capacity() >= READ {
            true => spare::give_buffer(buf),
            false => spare::give_small(buf),
        }
    }
}

/// A trailer section (field lines and the empty line, checked by the chunk walker already)
/// as the stream's trailers. `Download` then removes the hidden ones and those a trailer may
/// not carry on (`forward::is_unfit_trailer`), as it does for hyper's path.
fn trailer_fields(section: &[u8]) -> io::Result<HeaderMap> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad trailer section");
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let fields = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err(bad()),
    };
    let mut map = HeaderMap::new();
    for f in fields.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| bad())?;
        map.append(name, value);
    }
    Ok(map)
}
