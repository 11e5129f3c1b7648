//! The cache's costs under the lock (chapter 16, issue 26): a miss (a lookup that finds
//! nothing, then a store that evicts) on an empty cache and on a full one of 100,000 entries,
//! where eviction used to scan every entry; and a hit, alone and while another thread floods
//! the cache with misses on one URL's variants (`Vary` on a field the client chooses).
//! Targets: a miss on the full cache within 2× one on the empty cache; hits during the flood
//! at least 80 % as fast as quiet ones.
//!
//! `cargo bench --bench cache` (about a minute); report in `target/criterion/report/index.html`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use lb::http::cache::{Cache, Found};

fn request(path: &str, pick: &str) -> hyper::http::request::Parts {
    hyper::Request::builder()
        .uri(path)
        .header("host", "t")
        .header("x-pick", pick)
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn response(vary: bool) -> hyper::http::response::Parts {
    let mut r = hyper::Response::builder()
        .status(200)
        .header("cache-control", "public, max-age=3600")
        .header("content-length", "100");
    if vary {
        r = r.header("vary", "x-pick");
    }
    r.body(()).unwrap().into_parts().0
}

fn store(cache: &Arc<Cache>, req: &hyper::http::request::Parts, vary: bool) {
    let res = response(vary);
    let now = SystemTime::now();
    if let Some(storing) = cache.policy_for(req, &res, now) {
        let key = Cache::key(req);
        let body = Bytes::from_static(&[b'x'; 100]);
        cache.store(
            &key,
            storing.policy,
            req,
            &res,
            body,
            now,
            Some(storing.reservation),
        );
    }
}

/// A lookup that finds nothing, then the store that follows it.
fn miss(cache: &Arc<Cache>, i: &mut u64) {
    *i += 1;
    let req = request(&format!("/miss/{i}"), "a");
    let found = cache.lookup(&Cache::key(&req), &req, SystemTime::now());
    black_box(matches!(found, Found::Nothing));
    store(cache, &req, false);
}

fn misses(c: &mut Criterion) {
    let mut group = c.benchmark_group("cache miss");
    // Room for about 100,000 entries of this size, filled; and the same bound, empty.
    let bound = 100_000 * 2_200;
    let full = Arc::new(Cache::new(bound, Duration::ZERO));
    let mut i = 0;
    while full.entries() < 100_000 && i < 200_000 {
        miss(&full, &mut i);
    }
    assert!(full.entries() >= 90_000, "{} entries", full.entries());
    group.bench_function("on a full cache of 100,000 entries", |b| {
        b.iter(|| miss(&full, &mut i))
    });
    let empty = Arc::new(Cache::new(bound, Duration::ZERO));
    let mut j = 0;
    group.bench_function("on an empty cache", |b| b.iter(|| miss(&empty, &mut j)));
    group.finish();
}

fn hits(c: &mut Criterion) {
    let mut group = c.benchmark_group("cache hit");
    let cache = Arc::new(Cache::new(64 << 20, Duration::ZERO));
    let hot = request("/hot", "a");
    store(&cache, &hot, false);
    let key = Cache::key(&hot);
    let hit = |cache: &Cache| {
        let found = cache.lookup(&key, &hot, SystemTime::now());
        black_box(matches!(found, Found::Fresh(..)))
    };
    group.bench_function("quiet", |b| b.iter(|| hit(&cache)));
    // The same flood into another cache: what the second core's work costs this one through
    // the memory it shares (caches, the allocator), with no lock in common. The difference
    // between this and the next is what the lock costs.
    let other = Arc::new(Cache::new(64 << 20, Duration::ZERO));
    let stop = Arc::new(AtomicBool::new(false));
    let flood = spawn_flood(&other, &stop);
    group.bench_function("while another thread floods another cache", |b| {
        b.iter(|| hit(&cache))
    });
    stop.store(true, Ordering::Relaxed);
    let _ = flood.join();
    // Another thread stores variant after variant of one URL of this cache, as fast as it can.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = spawn_flood(&cache, &stop);
    group.bench_function("while another thread floods one URL's variants", |b| {
        b.iter(|| hit(&cache))
    });
    stop.store(true, Ordering::Relaxed);
    let _ = flood.join();
    group.finish();
}

/// A thread storing variant after variant of one URL of `cache` until `stop`.
fn spawn_flood(cache: &Arc<Cache>, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    {
        let (cache, stop) = (Arc::clone(cache), Arc::clone(stop));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let req = request("/flood", &n.to_string());
                let found = cache.lookup(&Cache::key(&req), &req, SystemTime::now());
                black_box(matches!(found, Found::Nothing));
                store(&cache, &req, true);
            }
        })
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = misses, hits
}
criterion_main!(benches);
