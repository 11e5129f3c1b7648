//! The cost of cookie affinity per request (chapter 12): finding the affinity cookie in a
//! request's `Cookie` header, taking it out, and mapping its value to a backend; and, for
//! comparison, computing a value (HMAC-SHA256), which `http-lb` does once per backend and
//! configuration, never per request. The target: under 1 µs per request.
//!
//! `cargo bench --bench affinity`; report in `target/criterion/report/index.html`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hyper::header::{COOKIE, HeaderMap, HeaderValue};
use lb::http::affinity::{Affinity, CookieSettings, seal};
use lb::http::fields::ReadFields;

const SECRET: &[u8] = b"a secret of at least thirty-two bytes, for the bench";

fn affinity(c: &mut Criterion) {
    let ids: Vec<String> = (0..16).map(|i| format!("10.0.0.{i}:8080")).collect();
    let affinity = Affinity::new(SECRET, CookieSettings::default(), &ids);
    let value = seal(SECRET, &ids[7]);
    // A browser's typical header: a few cookies of the application around ours.
    let typical = HeaderValue::from_str(&format!(
        "_ga=GA1.2.1234567890.1700000000; session=3f2a9c1b7e5d4a0f; lb={value}; theme=dark"
    ))
    .unwrap();
    let mut group = c.benchmark_group("affinity");
    group.bench_function("verify and strip (hit, 4 cookies)", |b| {
        b.iter_batched_ref(
            || {
                let mut h = HeaderMap::new();
                h.insert(COOKIE, typical.clone());
                h
            },
            |h| black_box(affinity.take(h)),
            criterion::BatchSize::SmallInput,
        )
    });
    // The same on the balancer's own HTTP/1 path, where the fields stay in the buffer they
    // were read into (`lb::http::fields::ReadFields`).
    let head = format!("cookie: {}", typical.to_str().unwrap());
    let value_at = "cookie: ".len();
    group.bench_function("verify and strip (hit, 4 cookies, fields as read)", |b| {
        b.iter_batched_ref(
            || vec![((0, 6), (value_at, head.len()))],
            |read| {
                let mut fields = ReadFields::new(head.as_bytes(), std::mem::take(read), Vec::new());
                black_box(affinity.take(&mut fields))
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("no cookie header (first visit)", |b| {
        let mut h = HeaderMap::new();
        b.iter(|| black_box(affinity.take(black_box(&mut h))))
    });
    group.bench_function("set-cookie for a new user", |b| {
        b.iter(|| black_box(affinity.set_cookie(black_box(7), false)))
    });
    group.bench_function("seal one backend (HMAC-SHA256, once per config)", |b| {
        b.iter(|| black_box(seal(SECRET, black_box(&ids[7]))))
    });
    group.finish();
}

criterion_group!(benches, affinity);
criterion_main!(benches);
