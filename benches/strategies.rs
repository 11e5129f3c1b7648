//! The cost of one pick, per strategy, for 3, 100 and 1000 backends: alone, and with two
//! threads picking at once (the shared counter of round robin bounces between cores; random
//! has nothing to share; least-called scans every backend).
//!
//! `cargo bench --bench strategies`; report in `target/criterion/report/index.html`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lb::strategy::StrategyKind;

const CLIENT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000);

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [3, 100, 1000] {
        for kind in StrategyKind::ALL {
            let strategy = kind.build(n);
            group.bench_with_input(BenchmarkId::new(kind.name(), n), &n, |b, _| {
                b.iter(|| black_box(strategy.pick(black_box(CLIENT))))
            });
        }
    }
    group.finish();

    // Time per pick as seen by each of two threads picking concurrently.
    let mut group = c.benchmark_group("pick-2-threads");
    for n in [3, 100, 1000] {
        for kind in StrategyKind::ALL {
            let strategy = kind.build(n);
            group.bench_with_input(BenchmarkId::new(kind.name(), n), &n, |b, _| {
                b.iter_custom(|iters| {
                    let strategy = &*strategy;
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for _ in 0..2 {
                            s.spawn(|| {
                                for _ in 0..iters {
                                    black_box(strategy.pick(black_box(CLIENT)));
                                }
                            });
                        }
                    });
                    start.elapsed()
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = pick
}
criterion_main!(benches);
