//! Chapter 16: the cache's byte bound holds for what the process really allocates, not only
//! for what the cache counts. A counting allocator (this test program's global allocator)
//! measures the heap the cache holds after 20,000 small answers to realistic requests (a fat
//! cookie, a user agent: what the policy would keep if it kept the whole request) and 2,000
//! large ones, through the library's `Cache` itself.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use lb::http::cache::Cache;

/// Bytes allocated and not yet freed, by anyone in this program.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call goes to the system allocator unchanged; the counter only watches.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn request(path: &str) -> hyper::http::request::Parts {
    hyper::Request::builder()
        .uri(path)
        .header("host", "shop.example")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36")
        .header("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
        .header("accept-language", "en-GB,en;q=0.9")
        .header("accept-encoding", "gzip, deflate, br")
        .header("cookie", "session=".to_owned() + &"s".repeat(300))
        .header("x-forwarded-for", "192.0.2.10")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn response(len: usize) -> hyper::http::response::Parts {
    hyper::Response::builder()
        .status(200)
        .header("cache-control", "public, max-age=3600")
        .header("content-type", "text/html; charset=utf-8")
        .header("content-length", len.to_string())
        .header("date", httpdate::fmt_http_date(SystemTime::now()))
        .header("etag", "\"5f3e-1a2b3c4d\"")
        .header("last-modified", "Sun, 06 Nov 2026 08:49:37 GMT")
        .header("server", "nginx")
        .header("vary", "accept-encoding")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn store(cache: &Arc<Cache>, path: &str, body_len: usize) {
    let req = request(path);
    let res = response(body_len);
    let now = SystemTime::now();
    let Some(storing) = cache.policy_for(&req, &res, now) else {
        return;
    };
    let key = Cache::key(&req);
    let body = Bytes::from(vec![b'x'; body_len]);
    cache.store(
        &key,
        storing.policy,
        &req,
        &res,
        body,
        now,
        Some(storing.reservation),
    );
}

/// With `--cache 8000000`, 20,000 small and 2,000 large answers: the heap the cache holds
/// stays within 1.25 × its bound, and what the cache counts is at least 80 % of what it
/// really holds (so the bound is a bound on memory, not on a guess).
#[test]
fn the_bound_holds_for_what_is_really_allocated() {
    const BOUND: usize = 8_000_000;
    let before = LIVE.load(Ordering::Relaxed);
    let cache = Arc::new(Cache::new(BOUND, Duration::ZERO));
    for i in 0..20_000 {
        store(
            &cache,
            &format!("/products/{i}?ref=home&utm_source=newsletter"),
            200,
        );
    }
    let small = LIVE.load(Ordering::Relaxed) - before;
    let (counted_small, _) = cache.bytes();
    let small_entries = cache.entries();
    for i in 0..2_000 {
        store(&cache, &format!("/images/{i}.jpg"), 40_000);
    }
    let held = LIVE.load(Ordering::Relaxed) - before;
    let (counted, reserved) = cache.bytes();
    println!(
        "20,000 small: {small} B held, {counted_small} counted ({} entries); \
         then 2,000 large: {held} B held, {counted} counted ({} entries)",
        small_entries,
        cache.entries()
    );
    assert_eq!(reserved, 0);
    assert!(counted <= BOUND, "{counted} counted");
    for (held, counted) in [(small, counted_small), (held, counted)] {
        let held = held as f64;
        assert!(
            held <= 1.25 * BOUND as f64,
            "{held} B held for a bound of {BOUND}"
        );
        assert!(
            counted as f64 >= 0.8 * held,
            "the cache counts {counted} B of the {held} B it holds"
        );
    }
}
