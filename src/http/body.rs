//! Bodies that stream through the HTTP balancer (chapter 12) without being held.
//!
//! A proxy that reads a whole upload before sending it on needs as much memory as the largest
//! upload, and makes the backend wait for the last byte before it sees the first. Here a body
//! is passed on frame by frame as hyper reads it: the client's request body goes to the backend
//! as an [`Upload`], the backend's response body back to the client inside a [`Download`].
//! hyper applies back-pressure on both sides, so a slow reader slows the writer instead of
//! filling memory: a 1 GiB upload costs the balancer a few buffers.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;

use super::cache::Reservation;

/// Errors inside a streamed body.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The request body was larger than `max-body`: the request is answered 413.
#[derive(Debug)]
pub struct TooLarge(pub u64);

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body over the {}-byte limit", self.0)
    }
}

impl StdError for TooLarge {}

/// Whether `error`, or anything it was caused by, is [`TooLarge`].
pub fn is_too_large(error: &(dyn StdError + 'static)) -> bool {
    caused_by::<TooLarge>(error)
}

/// A body that sent nothing for its idle limit: the client's upload (408) or the backend's
/// answer (the exchange is abandoned and both connections close).
#[derive(Debug)]
pub struct Stalled(pub Duration);

impl fmt::Display for Stalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no byte of the body for {:?}", self.0)
    }
}

impl StdError for Stalled {}

/// Whether `error`, or anything it was caused by, is an `E`.
pub fn caused_by<E: StdError + 'static>(error: &(dyn StdError + 'static)) -> bool {
    let mut e: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(current) = e {
        if current.is::<E>() {
            return true;
        }
        e = current.source();
    }
    false
}

/// The idle limit of a streamed body: how long it may keep us waiting for its next frame.
///
/// The timer starts when a poll finds nothing and the last one found something, and is made
/// (boxed, since a body moves) only then: most answers arrive whole with their head, and a
/// timer per frame, set and moved in the runtime's wheel, was about 1,500 instructions a
/// request for a limit that never came near (callgrind, chapter 17). It also times only
/// the peer: a client that stops reading for a while does not make a backend that had
/// nothing to send then look stalled.
struct Stall {
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The last poll found nothing: the timer runs.
    waiting: bool,
}

impl Stall {
    fn new(limit: Duration) -> Stall {
        Stall {
            limit,
            timer: None,
            waiting: false,
        }
    }

    /// After a poll of the body: a frame stops the wait; nothing starts one, and nothing past
    /// the limit is the error that ends the body.
    fn check<T>(
        &mut self,
        polled: Poll<Option<Result<T, BoxError>>>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<T, BoxError>>> {
        if polled.is_ready() {
            self.waiting = false;
            return polled;
        }
        if !std::mem::replace(&mut self.waiting, true) {
            let deadline = tokio::time::Instant::now() + self.limit;
            match self.timer.as_mut() {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match self.timer.as_mut().map(|timer| timer.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Some(Err(Box::new(Stalled(self.limit))))),
            _ => Poll::Pending,
        }
    }
}

/// hyper's frame, with its error boxed as our bodies' error type.
fn boxed(
    polled: Poll<Option<Result<Frame<Bytes>, hyper::Error>>>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    polled.map(|frame| frame.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
}

/// A client's request body as its codec received it: hyper's (HTTP/1, and HTTP/2 through
/// hyper's server), or the own HTTP/2 codec's ([`crate::http::h2::conn::RecvBody`]). The
/// decisions after the codec are the same for both.
pub enum Inbound {
    Hyper(Incoming),
    Own(crate::http::h2::conn::RecvBody),
}

impl From<Incoming> for Inbound {
    fn from(body: Incoming) -> Inbound {
        Inbound::Hyper(body)
    }
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Inbound::Hyper(body) => boxed(Pin::new(body).poll_frame(cx)),
            Inbound::Own(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Hyper(body) => body.is_end_stream(),
            Inbound::Own(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Hyper(body) => body.size_hint(),
            Inbound::Own(body) => body.size_hint(),
        }
    }
}

/// A client's request body on its way to a backend, stopped at `limit` bytes.
pub struct Upload {
    inner: Option<Inbound>,
    limit: u64,
    seen: u64,
    /// Set if the body is dropped before its end: the client's connection then still holds
    /// (or will receive) bytes nobody reads, and must be closed lingering.
    left_unread: Option<Arc<AtomicBool>>,
    /// Told (or dropped) when the body has all been sent: the backend's time to answer starts
    /// then, not while a slow client is still uploading.
    sent: Option<oneshot::Sender<()>>,
    stall: Option<Stall>,
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(flag) = &self.left_unread
            && !self.is_end_stream()
        {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

impl Upload {
    /// `body`, refused past `limit` bytes (`None`: no limit).
    /// `left_unread` is set if the body is dropped before its end.
    /// `stall`: the longest the client may pause in the middle of it.
    pub fn new(
        body: Inbound,
        limit: Option<u64>,
        left_unread: Arc<AtomicBool>,
        stall: Duration,
    ) -> Upload {
        let streams = !body.is_end_stream();
        Upload {
            inner: Some(body),
            limit: limit.unwrap_or(u64::MAX),
            seen: 0,
            left_unread: Some(left_unread),
            sent: None,
            stall: streams.then(|| Stall::new(stall)),
        }
    }

    /// No body: for a request rebuilt to be retried, which must not have had one.
    pub fn empty() -> Upload {
        Upload {
            inner: None,
            limit: u64::MAX,
            seen: 0,
            left_unread: None,
            sent: None,
            stall: None,
        }
    }

    /// A receiver that resolves once the body has all been read (or is given up).
    pub fn when_sent(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        match self.is_end_stream() {
            true => drop(tx),
            false => self.sent = Some(tx),
        }
        rx
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let mut polled = Pin::new(inner).poll_frame(cx);
        if let Some(stall) = this.stall.as_mut() {
            polled = stall.check(polled, cx);
        }
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.seen += data.len() as u64;
            if this.seen > this.limit {
                return Poll::Ready(Some(Err(Box::new(TooLarge(this.limit)))));
            }
        }
        // The end, an error: either way nothing more goes to the backend.
        if polled.is_ready()
            && (this.is_end_stream() || !matches!(polled, Poll::Ready(Some(Ok(_)))))
        {
            this.sent = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// What the client receives: a backend's streamed body, or a short answer of our own (an
/// error page).
pub enum Payload {
    Upstream(Incoming),
    Full(Option<Bytes>),
    /// A backend's body compressed on the way (chapter 16). Boxed, as the file below: every
    /// answer's body is as large as its largest kind, and it is moved from function to
    /// function and kept in each HTTP/2 stream's entry.
    Compressed(Box<Compressing>),
    /// A file from a static folder (chapter 16): `left` bytes from where it was opened.
    File {
        file: Box<tokio::fs::File>,
        left: u64,
    },
    /// A backend's body read from its HTTP/1.1 socket by the own hop (chapter 17).
    Raw(Box<crate::http::h1::hop::RawBody>),
}

/// How much of a file is read per frame.
const FILE_CHUNK: usize = 64 * 1024;

impl Payload {
    /// `len` bytes of `file`, from its current position.
    pub fn file(file: tokio::fs::File, len: u64) -> Payload {
        Payload::File {
            file: Box::new(file),
            left: len,
        }
    }
}

/// The next chunk of a file; an error if it ends before `left` bytes (it shrank).
fn poll_file(
    file: &mut tokio::fs::File,
    left: &mut u64,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    if *left == 0 {
        return Poll::Ready(None);
    }
    let want = (*left).min(FILE_CHUNK as u64) as usize;
    let mut buf = vec![0u8; want];
    let mut read = tokio::io::ReadBuf::new(&mut buf);
    match tokio::io::AsyncRead::poll_read(Pin::new(file), cx, &mut read) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
        Poll::Ready(Ok(())) => {
            let n = read.filled().len();
            if n == 0 {
                let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file shrank");
                return Poll::Ready(Some(Err(Box::new(e))));
            }
            *left -= n as u64;
            buf.truncate(n);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
        }
    }
}

/// A backend's body and the encoder it goes through; see `super::compress`.
pub struct Compressing {
    body: Incoming,
    /// `None` once the stream is finished.
    encoder: Option<super::compress::Encoder>,
    /// Fed bytes not yet flushed out.
    dirty: bool,
    /// Bytes in and out, for `httplb_compression_bytes_total`.
    tally: Arc<super::metrics::Compression>,
}

impl Compressing {
    pub fn new(
        body: Incoming,
        encoder: super::compress::Encoder,
        tally: Arc<super::metrics::Compression>,
    ) -> Compressing {
        Compressing {
            body,
            encoder: Some(encoder),
            dirty: false,
            tally,
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        mut tap: Option<&mut Tap>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let tally = Arc::clone(&self.tally);
        let data = move |bytes: Bytes| {
            tally.out(bytes.len());
            Poll::Ready(Some(Ok(Frame::data(bytes))))
        };
        let fail = |e: std::io::Error| Poll::Ready(Some(Err(Box::new(e) as BoxError)));
        loop {
            let Some(encoder) = self.encoder.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers cannot follow a body whose bytes they no longer describe.
                    let Ok(chunk) = frame.into_data() else {
                        continue;
                    };
                    self.dirty = true;
                    self.tally.taken(chunk.len());
                    if let Some(tap) = tap.as_deref_mut() {
                        tap.feed(&chunk);
                    }
                    match encoder.push(&chunk) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return data(out),
                        Err(e) => return fail(e),
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => {
                    let Some(encoder) = self.encoder.take() else {
                        return Poll::Ready(None);
                    };
                    return match encoder.finish() {
                        Ok(last) if last.is_empty() => Poll::Ready(None),
                        Ok(last) => data(last),
                        Err(e) => fail(e),
                    };
                }
                // The backend pauses: send what was compressed so far rather than hold it.
                Poll::Pending if self.dirty => {
                    self.dirty = false;
                    match encoder.flush() {
                        Ok(out) if out.is_empty() => return Poll::Pending,
                        Ok(out) => return data(out),
                        Err(e) => return fail(e),
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Called once when a [`Download`] is dropped, with the body bytes sent and whether the body
/// ended (rather than the client going away first): where the access-log line is written.
pub type OnEnd = Box<dyn FnOnce(u64, bool) + Send>;

/// What a [`Tap`] hands over when the body ended whole: the copy, and the budget it used.
pub type Tapped = Box<dyn FnOnce(Bytes, Reservation) + Send>;

/// A copy of a body as it streams past, for the cache (chapter 16): handed over whole when the
/// body ended, dropped (the store abandoned) if the cache's budget has no room for it. Each
/// piece is promised from the budget before it is copied, so copies in flight count against
/// `--cache BYTES` too.
pub struct Tap {
    copy: Vec<u8>,
    reservation: Option<Reservation>,
    done: Option<Tapped>,
}

impl Tap {
    pub fn new(reservation: Reservation, done: Tapped) -> Tap {
        Tap {
            copy: Vec::new(),
            reservation: Some(reservation),
            done: Some(done),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        let Some(reservation) = self.reservation.as_mut() else {
            return;
        };
        let need = self.copy.len() + data.len();
        if need > reservation.bytes() && !reservation.grow(need - reservation.bytes()) {
            if let Some(reservation) = self.reservation.take() {
                reservation.abandon();
            }
            self.copy = Vec::new();
            self.done = None;
            return;
        }
        self.copy.extend_from_slice(data);
    }

    fn end(&mut self) {
        if let (Some(done), Some(reservation)) = (self.done.take(), self.reservation.take()) {
            // The copy grew by doubling; stored as is, up to half of its allocation would be
            // held for nothing for the entry's whole life.
            let mut copy = std::mem::take(&mut self.copy);
            copy.shrink_to_fit();
            done(Bytes::from(copy), reservation);
        }
    }
}

/// A response body on its way to the client, counted, with [`OnEnd`] run when it is done.
pub struct Download {
    payload: Payload,
    sent: u64,
    ended: bool,
    on_end: Option<OnEnd>,
    /// Boxed: only an answer the cache stores has one.
    tap: Option<Box<Tap>>,
    /// The backend's idle limit in the middle of its body.
    stall: Option<Stall>,
    /// Fields removed from the backend's trailers (`--hide-header`, as from its head).
    hide: Option<Arc<[hyper::header::HeaderName]>>,
    /// Kept for as long as the body is (an HTTP/2 stream's place in its connection's count).
    held: Option<Box<dyn Send + Sync>>,
}

impl Download {
    pub fn new(payload: Payload, on_end: Option<OnEnd>) -> Download {
        Download {
            payload,
            sent: 0,
            ended: false,
            on_end,
            tap: None,
            stall: None,
            hide: None,
            held: None,
        }
    }

    /// No body after all (an answer of our own to a gRPC call, chapter 17); what runs at the
    /// end still runs.
    pub fn empty(&mut self) {
        self.payload = Payload::Full(None);
    }

    /// Keeps `guard` until the body ends or is dropped.
    pub fn hold(&mut self, guard: Box<dyn Send + Sync>) {
        self.held = Some(guard);
    }

    /// Removes these fields from the trailers the backend sends, as from its head.
    pub fn set_hide(&mut self, hide: Arc<[hyper::header::HeaderName]>) {
        if !hide.is_empty() {
            self.hide = Some(hide);
        }
    }

    /// The answer's fields as a header block, when the own hop encoded them for the own HTTP/2
    /// codec (`h1::hop`): that codec then sends them as they are, and the map is empty.
    pub(in crate::http) fn take_block(&mut self) -> Option<Vec<u8>> {
        match &mut self.payload {
            Payload::Raw(raw) => raw.take_block(),
            _ => None,
        }
    }

    /// Ends the body with [`Stalled`] when the backend sends nothing for `limit` in the
    /// middle of it: without it, a backend that stops halfway holds the client, the backend
    /// connection and the request's slot for as long as both sockets stay open.
    pub fn set_stall(&mut self, limit: Duration) {
        if !self.is_end_stream() {
            self.stall = Some(Stall::new(limit));
        }
    }

    /// A short body of our own.
    pub fn text(text: &'static str) -> Download {
        Download::new(
            Payload::Full(Some(Bytes::from_static(text.as_bytes()))),
            None,
        )
    }

    /// [`Download::text`] for a text made at run time (an assignment, chapter 14).
    pub fn text_owned(text: String) -> Download {
        Download::new(Payload::Full(Some(Bytes::from(text))), None)
    }

    /// Copies the backend's bytes (before any compression) for the cache.
    pub fn set_tap(&mut self, tap: Tap) {
        self.tap = Some(Box::new(tap));
    }

    pub fn set_on_end(&mut self, on_end: OnEnd) {
        self.on_end = Some(on_end);
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        let ended = self.ended || self.is_end_stream();
        // hyper stops polling once a body says it is at its end, so the end of a body with a
        // length is seen here, not as a last `None`.
        if ended && let Some(tap) = self.tap.as_mut() {
            tap.end();
        }
        if let Some(on_end) = self.on_end.take() {
            on_end(self.sent, ended);
        }
        // The own hop's body carries its end itself (one allocation a request fewer).
        if let Payload::Raw(raw) = &mut self.payload {
            raw.done(self.sent, ended);
        }
    }
}

impl Body for Download {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.payload {
            Payload::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Payload::Upstream(body) => {
                let polled = boxed(Pin::new(body).poll_frame(cx));
                if let (Poll::Ready(Some(Ok(frame))), Some(tap)) = (&polled, this.tap.as_mut())
                    && let Some(data) = frame.data_ref()
                {
                    tap.feed(data);
                }
                polled
            }
            Payload::Compressed(c) => c.poll(cx, this.tap.as_deref_mut()),
            Payload::File { file, left } => poll_file(file, left, cx),
            Payload::Raw(raw) => raw.poll_frame(cx),
        };
        let mut polled = match this.stall.as_mut() {
            Some(stall) => stall.check(polled, cx),
            None => polled,
        };
        // A backend's trailers lose what `--hide-header` hides and what a trailer may not
        // carry on (`forward::is_unfit_trailer`), on every path alike.
        if let Poll::Ready(Some(Ok(frame))) = &mut polled
            && let Some(trailers) = frame.trailers_mut()
        {
            for name in this.hide.as_deref().unwrap_or_default() {
                trailers.remove(name);
            }
            let unfit: Vec<_> = trailers
                .keys()
                .filter(|name| crate::http::forward::is_unfit_trailer(name.as_str()))
                .cloned()
                .collect();
            for name in unfit {
                trailers.remove(name);
            }
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                this.ended = true;
                if let Some(tap) = this.tap.as_mut() {
                    tap.end();
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.payload {
            Payload::Full(data) => data.is_none(),
            Payload::Upstream(body) => body.is_end_stream(),
            Payload::Compressed(c) => c.encoder.is_none(),
            Payload::File { left, .. } => *left == 0,
            Payload::Raw(raw) => raw.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.payload {
            Payload::Full(Some(data)) => SizeHint::with_exact(data.len() as u64),
            Payload::Full(None) => SizeHint::with_exact(0),
            Payload::Upstream(body) => body.size_hint(),
            Payload::Compressed(_) => SizeHint::default(),
            Payload::File { left, .. } => SizeHint::with_exact(*left),
            Payload::Raw(raw) => raw.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every answer's body is moved from function to function and kept in each HTTP/2
    /// stream's entry: the kinds that are large, and rare, are boxed (chapter 17).
    #[test]
    fn an_answers_body_stays_small() {
        let size = std::mem::size_of::<Download>();
        assert!(size <= 144, "Download is {size} bytes");
    }
}
