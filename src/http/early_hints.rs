//! `103 Early Hints` on hyper's path: the path every request takes when a setting needs hyper
//! (the cache of chapter 16 among them), where hyper's server has no way to send one.
//!
//! RFC 9110 §15.2: a proxy forwards a 1xx answer it did not ask for itself, except to an
//! HTTP/1.0 client. Early Hints (RFC 8297) are what a backend sends while it prepares a slow
//! page, so that the browser fetches its stylesheets meanwhile; held back, they are worth
//! nothing. The own HTTP/1 path writes them itself (`h1::Hints`). On hyper's path, hyper's
//! *client* hands each one to a callback (`hyper::ext::on_informational`), but its *server*
//! writes nothing but the final answer (its pull request 4114 adds an API, for HTTP/2 only).
//!
//! So the hint goes under hyper: the callback queues its bytes here, and the client
//! connection's socket wrapper (`balancer::Returning`) writes them when hyper flushes. Where
//! it may write them is the whole difficulty, since the hint must land between two answers,
//! never inside one:
//!
//! * only in a *flush*: hyper calls the socket's flush only once its own buffer is empty, so
//!   every byte of the previous answer has been written (hyper's HTTP/1 server serves one
//!   request at a time: the next one is dispatched only once the previous answer is whole in
//!   its buffer). Writing in `poll_write` instead could put the hint in the middle of an answer
//!   that hyper was still writing out;
//! * and before this request's own answer, because the request does not hand its answer to
//!   hyper until what it queued is written ([`Open::written`]): hyper cannot buffer the head
//!   in front of the hint. hyper flushes on every turn of its loop, while a request waits for
//!   its backend too, so the hint leaves as soon as it arrives.
//!
//! Each request opens the queue with a number of its own, so a late hint from a backend
//! already given up on (a timeout) cannot land before the next request's answer.
//!
//! The own HTTP/2 codec (chapter 17) is simpler: RFC 9113 §8.1 lets any number of 1xx
//! `HEADERS` frames come on a stream before its final answer's, and the codec writes frames
//! itself. A stream's hints are encoded as the client will see them and queued for its
//! connection ([`StreamHints`]), from the own hop as it reads the backend's answer or from
//! hyper's client's callback; the connection writes what is queued before it takes any
//! stream's final answer, so a hint can never follow the answer it came before.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use hyper::header::{HeaderMap, HeaderName};
use tokio::io::AsyncWrite;

use super::forward;
use super::h2::hpack;

/// Bytes of hints that may wait for a client that does not read: past it, a hint is dropped
/// (a hint is advice; a backend that sends them without end must not grow our memory).
const MAX_QUEUED: usize = 64 * 1024;

/// One client connection's hints on their way out; see the module's header.
#[derive(Default)]
pub(super) struct EarlyHints {
    queued: Mutex<Queued>,
}

#[derive(Default)]
struct Queued {
    bytes: Vec<u8>,
    /// How much of `bytes` is written.
    written: usize,
    /// The request whose hints are taken now, if one waits for its backend.
    open: Option<u64>,
    last: u64,
    /// The connection's task, woken when a hint arrives from the backend's.
    waker: Option<Waker>,
    /// The request waiting for its hints to be written before it answers.
    answering: Option<Waker>,
}

/// While it lives, the hints of one request are taken; see [`EarlyHints::open`].
pub(super) struct Open {
    hints: Arc<EarlyHints>,
    request: u64,
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut queued = self.hints.lock();
        if queued.open == Some(self.request) {
            queued.open = None;
        }
    }
}

impl Open {
    /// Once every hint queued for this request is written: the answer may go to hyper. Waits
    /// as long as a client that does not read would make the answer itself wait; a connection
    /// that fails drops the request, and this with it.
    pub(super) async fn written(&self) {
        std::future::poll_fn(|cx| {
            let mut queued = self.hints.lock();
            if queued.bytes.is_empty() {
                return Poll::Ready(());
            }
            queued.answering = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl EarlyHints {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the hints of the request about to be sent, until the returned guard is dropped.
    pub(super) fn open(self: &Arc<Self>) -> Open {
        let mut queued = self.lock();
        queued.last += 1;
        queued.open = Some(queued.last);
        Open {
            hints: Arc::clone(self),
            request: queued.last,
        }
    }

    /// Called by hyper's client, on the backend connection's task, for each 1xx of the
    /// request `open` was made for: a `103` is queued as the client will see it
    /// ([`passed_on`]), and the client's task woken; another 1xx is dropped.
    pub(super) fn hint(
        open: &Open,
        status: hyper::StatusCode,
        fields: &HeaderMap,
        hidden: &[HeaderName],
    ) {
        let Some(fields) = passed_on(status, fields, hidden) else {
            return;
        };
        let mut bytes = b"HTTP/1.1 103 Early Hints\r\n".to_vec();
        for (name, value) in &fields {
            bytes.extend_from_slice(name.as_str().as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
        let waker = {
            let mut queued = open.hints.lock();
            let waiting = queued.bytes.len() - queued.written;
            if queued.open != Some(open.request) || waiting + bytes.len() > MAX_QUEUED {
                return;
            }
            queued.bytes.extend_from_slice(&bytes);
            queued.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// From the client socket's flush, which hyper calls only with its own buffer empty:
    /// writes what is queued to `io`. `Ready(Ok)` once nothing is queued; the task is
    /// remembered, to be woken by the next hint, and a request waiting to answer is woken.
    pub(super) fn poll_write_queued<W: AsyncWrite + Unpin>(
        &self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let mut queued = self.lock();
        while queued.written < queued.bytes.len() {
            let at = queued.written;
            match Pin::new(&mut *io).poll_write(cx, &queued.bytes[at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => queued.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if !queued.bytes.is_empty() {
            queued.bytes = Vec::new();
            queued.written = 0;
            if let Some(answering) = queued.answering.take() {
                answering.wake();
            }
        }
        if !queued
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            queued.waker = Some(cx.waker().clone());
        }
        Poll::Ready(Ok(()))
    }
}

/// What of a 1xx from hyper's client the client gets: a `103`'s fields less the hop-by-hop
/// ones and the `hidden` ones, as a final answer's; nothing of another 1xx (`100 Continue`
/// answers an `Expect` hyper's server has answered itself, and `102` is deprecated, RFC 9110
/// §15.2).
fn passed_on(
    status: hyper::StatusCode,
    fields: &HeaderMap,
    hidden: &[HeaderName],
) -> Option<HeaderMap> {
    if status != hyper::StatusCode::EARLY_HINTS {
        return None;
    }
    let mut fields = fields.clone();
    forward::strip_hop_by_hop(&mut fields, false);
    for name in hidden {
        fields.remove(name);
    }
    Some(fields)
}

/// One HTTP/2 connection's hints on their way to its streams (the own codec's); see the
/// module's header. Made with the connection's first stream.
#[derive(Default)]
pub(in crate::http) struct StreamQueue {
    /// Something is queued: most connections never get a hint, and look at this alone.
    pending: AtomicBool,
    /// The connection's waker is in `queued`.
    registered: AtomicBool,
    queued: Mutex<StreamQueued>,
}

#[derive(Default)]
struct StreamQueued {
    /// Each hint's stream, and its header block (`:status` first).
    blocks: Vec<(u32, Vec<u8>)>,
    /// The blocks' bytes: past [`MAX_QUEUED`], a hint is dropped.
    bytes: usize,
    /// The connection's task, woken when a hint comes from another task (hyper's client's).
    /// Kept: a connection is polled by one task all its life.
    waker: Option<Waker>,
}

/// Where a hint for stream `id` goes: its connection's [`StreamQueue`].
#[derive(Clone)]
pub(in crate::http) struct StreamHints {
    queue: Arc<StreamQueue>,
    id: u32,
}

impl StreamQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, StreamQueued> {
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hints of stream `id`.
    pub(in crate::http) fn stream(self: &Arc<Self>, id: u32) -> StreamHints {
        StreamHints {
            queue: Arc::clone(self),
            id,
        }
    }

    /// The hints queued since the last look, oldest first, into `into` (emptied first);
    /// the task polling `cx` is woken by the next one.
    pub(in crate::http) fn take(&self, into: &mut Vec<(u32, Vec<u8>)>, cx: &Context<'_>) {
        into.clear();
        if !self.pending.load(Ordering::Acquire) && self.registered.load(Ordering::Relaxed) {
            return;
        }
        let mut queued = self.lock();
        std::mem::swap(&mut queued.blocks, into);
        queued.bytes = 0;
        self.pending.store(false, Ordering::Relaxed);
        if !queued
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            queued.waker = Some(cx.waker().clone());
        }
        self.registered.store(true, Ordering::Relaxed);
    }
}

impl StreamHints {
    /// A `103` from the own hop: its fields as the client gets them (hop-by-hop and framing
    /// fields were set apart by the parser, hidden ones are left out by the caller), names in
    /// any case.
    pub(in crate::http) fn hint<'a>(&self, fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
        let mut block = Vec::with_capacity(128);
        hpack::encode_status(&mut block, hyper::StatusCode::EARLY_HINTS.as_u16());
        for (name, value) in fields {
            hpack::encode_field_lowercase(&mut block, name, value);
        }
        self.queue(block);
    }

    /// A 1xx from hyper's client (`hyper::ext::on_informational`): a `103` is queued as the
    /// client will see it ([`passed_on`]: HTTP/2 forbids the hop-by-hop fields, RFC 9113
    /// §8.2.2); another 1xx is dropped.
    pub(in crate::http) fn hint_map(
        &self,
        status: hyper::StatusCode,
        fields: &HeaderMap,
        hidden: &[HeaderName],
    ) {
        let Some(fields) = passed_on(status, fields, hidden) else {
            return;
        };
        self.hint(
            fields
                .iter()
                .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())),
        );
    }

    fn queue(&self, block: Vec<u8>) {
        let mut queued = self.queue.lock();
        // A hint is advice: one more than a client that does not read can hold is dropped.
        if queued.bytes + block.len() > MAX_QUEUED {
            return;
        }
        queued.bytes += block.len();
        queued.blocks.push((self.id, block));
        // Set under the lock, so `take` cannot miss it.
        self.queue.pending.store(true, Ordering::Release);
        if let Some(waker) = &queued.waker {
            waker.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    /// What a client socket received, and whether it takes more now.
    #[derive(Default)]
    struct Socket {
        got: Vec<u8>,
        full: bool,
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.full {
                return Poll::Pending;
            }
            self.got.extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn link() -> HeaderMap {
        let mut fields = HeaderMap::new();
        fields.insert("link", HeaderValue::from_static("</a.css>; rel=preload"));
        fields.insert("x-secret", HeaderValue::from_static("1"));
        fields.insert("connection", HeaderValue::from_static("keep-alive"));
        fields
    }

    /// A hint is queued as the client will read it (hop-by-hop and hidden fields removed),
    /// written at the next flush, and the request may answer only then; a hint of a request
    /// that has answered (or been given up) is dropped, as is one past the bound.
    #[test]
    fn a_hint_is_written_at_a_flush_before_its_answer_and_only_for_its_request() {
        let up = [HeaderName::from_static("x-secret")];
        let hints = Arc::new(EarlyHints::default());
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut socket = Socket {
            full: true,
            ..Socket::default()
        };
        let open = hints.open();
        EarlyHints::hint(&open, hyper::StatusCode::EARLY_HINTS, &link(), &up);
        EarlyHints::hint(&open, hyper::StatusCode::CONTINUE, &link(), &up);
        {
            let mut written = std::pin::pin!(open.written());
            assert!(written.as_mut().poll(&mut cx).is_pending());
            // A client that does not read: the hint waits, and so does the answer.
            assert!(hints.poll_write_queued(&mut socket, &mut cx).is_pending());
            assert!(written.as_mut().poll(&mut cx).is_pending());
            socket.full = false;
            assert!(hints.poll_write_queued(&mut socket, &mut cx).is_ready());
            assert!(written.as_mut().poll(&mut cx).is_ready());
        }
        assert_eq!(
            String::from_utf8_lossy(&socket.got),
            "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
        );

        // Late: the request answered, its guard is gone.
        let stale = Open {
            hints: Arc::clone(&hints),
            request: open.request,
        };
        drop(open);
        EarlyHints::hint(&stale, hyper::StatusCode::EARLY_HINTS, &link(), &up);
        assert!(hints.lock().bytes.is_empty(), "a late hint was queued");

        // A backend that sends hints without end, to a client that does not read.
        let open = hints.open();
        for _ in 0..10_000 {
            EarlyHints::hint(&open, hyper::StatusCode::EARLY_HINTS, &link(), &up);
        }
        assert!(hints.lock().bytes.len() <= MAX_QUEUED);
    }
}
