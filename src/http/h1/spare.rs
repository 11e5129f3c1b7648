//! Buffers kept per worker thread, as chapter 11's relay keeps its own: a request takes them
//! when its head is on its way and gives them back when its answer is done, so an idle
//! keep-alive connection holds none (three 16 KiB buffers each would be 48 KiB per idle
//! client), and a busy one costs no allocation. A buffer taken on one thread may come back on
//! another; each thread keeps at most [`KEEP`] of each kind.

use std::cell::RefCell;

use super::{READ, SMALL, Scratch, Span};
use crate::http::fields::AddedList;

pub const KEEP: usize = 64;

/// Small buffers kept per thread: their number in use moves by hundreds with the streams in
/// flight (each waiting stream holds one), and a list that overflows on the way down runs dry
/// on the way up. At most 1 MB a thread.
const KEEP_SMALL: usize = 1024;

thread_local! {
    static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static SMALLS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static FIELDS: RefCell<Vec<Vec<(Span, Span)>>> = const { RefCell::new(Vec::new()) };
    static SCRATCH: RefCell<Vec<Scratch>> = const { RefCell::new(Vec::new()) };
    static ADDED: RefCell<Vec<AddedList>> = const { RefCell::new(Vec::new()) };
}

type List<T> = std::thread::LocalKey<RefCell<Vec<T>>>;

/// One kept in `list`, or a new one.
fn take<T>(list: &'static List<T>, new: impl FnOnce() -> T) -> T {
    list.with(|l| l.borrow_mut().pop()).unwrap_or_else(new)
}

/// Keeps `item` in `list` unless it holds `max` already.
fn keep<T>(list: &'static List<T>, item: T, max: usize) {
    list.with(|l| {
        let mut free = l.borrow_mut();
        if free.len() < max {
            free.push(item);
        }
    });
}

pub fn buffer() -> Vec<u8> {
    take(&BUFFERS, || Vec::with_capacity(READ))
}

/// Keeps `buf` for another connection, unless it grew past the usual size (a large head).
pub fn give_buffer(mut buf: Vec<u8>) {
    if buf.capacity() > 2 * READ {
        return;
    }
    buf.clear();
    keep(&BUFFERS, buf, KEEP);
}

/// A buffer of [`SMALL`] bytes: an HTTP/2 stream's request head as it decoded, the head the
/// hop writes for its backend, the backend's answer head.
///
/// glibc's per-thread cache keeps 7 freed blocks of a size, and a connection's turn makes and
/// frees about 10 of each (`h2load -m 10`: ten streams' heads decoded, then their answers),
/// with hundreds more held by streams waiting for answers: without this list, most of them
/// came from the arena's bins (about 300 instructions each, and as many to give back, against
/// 20 here). Like HAProxy's pools, a list per kind of object a stream uses, bounded per thread.
pub(in crate::http) fn small() -> Vec<u8> {
    take(&SMALLS, || Vec::with_capacity(SMALL))
}

/// Keeps `buf` for another stream, unless it did not come from [`small`] or grew (a large
/// head, or the start of a large body).
pub(in crate::http) fn give_small(mut buf: Vec<u8>) {
    if buf.capacity() != SMALL {
        return;
    }
    buf.clear();
    keep(&SMALLS, buf, KEEP_SMALL);
}

/// A list for a request head's fields.
pub(in crate::http) fn fields() -> Vec<(Span, Span)> {
    take(&FIELDS, || Vec::with_capacity(32))
}

pub(in crate::http) fn give_fields(mut fields: Vec<(Span, Span)>) {
    // One never taken (the HTTP/2 hop's, when no answer came) is not worth keeping.
    if fields.capacity() == 0 {
        return;
    }
    fields.clear();
    keep(&FIELDS, fields, KEEP);
}

/// A list for the fields the forwarding rules add (the HTTP/2 hop's; chapter 12's path keeps
/// one in its [`Scratch`]).
pub(super) fn added() -> AddedList {
    take(&ADDED, || Vec::with_capacity(8))
}

/// Keeps `added` (emptied, as `ReadFields::into_lists` gives it) for the next request.
pub(super) fn give_added(added: AddedList) {
    if added.capacity() == 0 {
        return;
    }
    keep(&ADDED, added, KEEP);
}

pub(super) fn scratch() -> Scratch {
    take(&SCRATCH, || Scratch {
        out: Vec::with_capacity(READ),
        upstream: Vec::with_capacity(READ),
        kept: Vec::with_capacity(32),
        added: Vec::with_capacity(8),
    })
}

pub(super) fn give_scratch(scratch: Scratch) {
    if scratch.out.capacity() > 2 * READ || scratch.upstream.capacity() > 2 * READ {
        return;
    }
    keep(&SCRATCH, scratch, KEEP);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small buffer that grew (a large head) is not kept: the list holds [`SMALL`] bytes
    /// each, whatever went through it.
    #[test]
    fn a_small_buffer_that_grew_is_let_go() {
        let mut grown = small();
        grown.extend_from_slice(&[b'x'; SMALL + 1]);
        give_small(grown);
        let next = small();
        assert_eq!(next.capacity(), SMALL, "a grown buffer was kept");
        assert!(next.is_empty());
        let at = next.as_ptr();
        give_small(next);
        let again = small();
        assert_eq!(again.as_ptr(), at, "a small buffer given back was not kept");
    }
}
