//! Frames held until the runtime would sleep: what an event loop that writes at the end of its
//! turn does (HAProxy's), for the own codec's connections on tokio (chapter 17).
//!
//! Every write to a client on loopback costs the writer the client's TCP receive and, when the
//! client sleeps, its wake-up: on the virtual machines chapter 17 measures on, a wake-up from
//! one CPU to another costs the waker about 2.4 µs, a quarter of a request. HAProxy reads all
//! that is ready, works, then writes everything it owes in one run of `sendto`s, so the client
//! (h2load) is still awake for most of them: at 50,000 requests a second it woke h2load 0.012
//! times a request. Our connections wrote as each one's answers were ready, spread over the
//! turn, and woke it 0.10 times a request: most writes found it asleep again.
//!
//! So a connection with frames ready does not write them at once: it holds them ([`Hold`]),
//! reads what its client sent meanwhile, and returns to the runtime. Just before the runtime
//! parks (it has nothing left to run), its `on_thread_park` hook ([`at_park`], which
//! `app::runtime` sets) wakes every held connection, and they write one after another. Under
//! load that never lets the runtime park, frames wait at most [`LIMIT`] units of other work on
//! the thread ([`busy`]: a request read, a connection accepted, a poll of an own HTTP/2
//! connection), so a held answer is never stuck behind a busy thread. Only a current-thread
//! runtime (`--workers 1`) holds: a runtime without the hook (a test's, a bench's) never does,
//! and neither does the multi-thread one ([`at_park`] says why).

use std::cell::{Cell, RefCell};
use std::task::Waker;

use tokio::runtime::{Handle, RuntimeFlavor};

/// Units of other work (see [`busy`]) a held frame waits at most on a thread that never parks:
/// a request read or a connection polled is a few microseconds, so this is about a millisecond
/// of a saturated thread.
pub const LIMIT: u32 = 256;

thread_local! {
    /// The wakers of the connections held on this thread.
    static HELD: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
    /// Releases on this thread: a connection held in release `n` writes once this has moved
    /// past `n`.
    static RELEASE: Cell<u32> = const { Cell::new(0) };
    /// Whether connections may hold on this thread, known at its runtime's first park: only a
    /// current-thread runtime's thread that calls [`at_park`].
    static HOOKED: Cell<Option<bool>> = const { Cell::new(None) };
    /// Work done on this thread ([`busy`]), and its count when `HELD` last became non-empty.
    static WORK: Cell<u32> = const { Cell::new(0) };
    static HELD_SINCE: Cell<u32> = const { Cell::new(0) };
}

/// The runtime's `on_thread_park` hook: the thread is about to sleep, so whatever is held on
/// it goes out now. tokio's current-thread scheduler polls the tasks this wakes before it
/// sleeps. The multi-thread one (`--workers` other than 1) would put them in its shared queue
/// and wake another worker to run them while this one sleeps: a cross-thread wake-up each
/// time, the very cost holding saves. So only a current-thread runtime holds.
pub fn at_park() {
    let hooked = HOOKED.get().unwrap_or_else(|| {
        let one =
            Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread);
        HOOKED.set(Some(one));
        one
    });
    if hooked {
        release();
    }
}

/// One unit of work on this thread; past [`LIMIT`] of them since a frame was held, what is
/// held goes out even though the runtime has not parked.
pub fn busy() {
    let work = WORK.get().wrapping_add(1);
    WORK.set(work);
    if work.wrapping_sub(HELD_SINCE.get()) >= LIMIT && HELD.with(|h| !h.borrow().is_empty()) {
        release();
    }
}

fn release() {
    let held = HELD.with(|h| std::mem::take(&mut *h.borrow_mut()));
    if held.is_empty() {
        return;
    }
    RELEASE.set(RELEASE.get().wrapping_add(1));
    for waker in held {
        waker.wake();
    }
    // The list's room is not kept: it is the size of the busiest turn, and an idle server
    // should hold nothing.
}

/// What one connection keeps of its hold.
#[derive(Debug, Default)]
pub struct Hold {
    /// The release its waker is waiting for, once registered.
    since: Option<u32>,
}

impl Hold {
    /// Whether frames ready now may wait for the runtime to park: false on a thread whose
    /// runtime has no hook, and once the release this connection waited for has come (then it
    /// writes, and a later hold waits for the next one). A waiting connection's waker is
    /// registered by [`Hold::wait`] when it returns to the runtime.
    pub fn may_wait(&mut self) -> bool {
        match self.since {
            Some(since) if since != RELEASE.get() => {
                self.since = None;
                false
            }
            Some(_) => true,
            None => HOOKED.get() == Some(true),
        }
    }

    /// The connection returns to the runtime with frames held: its waker joins this thread's
    /// list, once per release.
    pub fn wait(&mut self, waker: &Waker) {
        if self.since.is_some() {
            return;
        }
        self.since = Some(RELEASE.get());
        HELD.with(|h| {
            let mut held = h.borrow_mut();
            if held.is_empty() {
                HELD_SINCE.set(WORK.get());
            }
            held.push(waker.clone());
        });
    }

    /// The frames went out another way (too many to hold, a write already under way): the
    /// waker may still be woken at the release, which then finds nothing to write.
    pub fn clear(&mut self) {
        self.since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (Arc::clone(&count), Waker::from(count))
    }

    /// Runs `check` on a runtime with the hook (`app::runtime`'s), once it has parked.
    fn after_a_park<T: Send + 'static>(
        mut builder: tokio::runtime::Builder,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let rt = builder
            .on_thread_park(at_park)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::spawn(async {
                // Nothing to run while this sleeps: the thread parks.
                tokio::time::sleep(Duration::from_millis(2)).await;
                check()
            })
            .await
            .unwrap()
        })
    }

    #[test]
    fn nothing_waits_on_a_thread_whose_runtime_has_no_hook() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let waits = rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Hold::default().may_wait()
        });
        assert!(!waits);
    }

    #[test]
    fn nothing_waits_on_the_multi_thread_runtime() {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(1);
        // Its one worker parked while the task slept, and found it is not a current-thread
        // runtime's.
        assert!(!after_a_park(builder, || Hold::default().may_wait()));
    }

    #[test]
    fn a_held_connection_writes_at_park_or_after_limit_units_of_work() {
        let builder = tokio::runtime::Builder::new_current_thread();
        after_a_park(builder, || {
            let (count, waker) = counter();
            let mut hold = Hold::default();
            assert!(hold.may_wait());
            hold.wait(&waker);
            // Polled again for its own reasons before the park: it still waits, listed once.
            assert!(hold.may_wait());
            hold.wait(&waker);
            at_park();
            assert_eq!(count.0.load(Ordering::SeqCst), 1);
            assert!(!hold.may_wait(), "released: it writes now");

            // A thread that never parks: the next frames wait LIMIT units of work at most.
            assert!(hold.may_wait());
            hold.wait(&waker);
            for _ in 0..LIMIT - 1 {
                busy();
            }
            assert_eq!(count.0.load(Ordering::SeqCst), 1);
            busy();
            assert_eq!(count.0.load(Ordering::SeqCst), 2);
            assert!(!hold.may_wait());

            // Frames that went out another way: the waker's later wake finds nothing held.
            assert!(hold.may_wait());
            hold.wait(&waker);
            hold.clear();
            at_park();
            assert_eq!(count.0.load(Ordering::SeqCst), 3);
            assert!(hold.may_wait(), "not waiting for a release any more");
        });
    }
}
