//! The cost of one pick, per strategy, for 3, 100 and 1000 backends: alone, and with two
//! threads picking at once (the shared counter of round robin bounces between cores; random
//! has nothing to share; least-called and least-connections scan every backend; power-of-two
//! reads two counters; ip-hash binary-searches its ring; weighted round robin takes a lock).
//!
//! The strategies see live connection counters as the balancer's are (atomics that other
//! threads write), and clients from 1024 different addresses, so that ip-hash does not find
//! the same ring position in cache every time.
//!
//! `cargo bench --bench strategies`; report in `target/criterion/report/index.html`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lb::strategy::{Candidates, Member, StrategyKind};

/// Every backend up, each with a few open connections.
struct Live(Vec<AtomicUsize>);

impl Live {
    fn new(n: usize) -> Live {
        Live((0..n).map(|i| AtomicUsize::new(10 + i % 7)).collect())
    }
}

impl Candidates for Live {
    fn eligible(&self, _i: usize) -> bool {
        true
    }
    fn active(&self, i: usize) -> usize {
        self.0[i].load(Ordering::Relaxed)
    }
}

fn clients() -> Vec<IpAddr> {
    (0..1024u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 ^ i.wrapping_mul(2_654_435_761))))
        .collect()
}

fn pick(c: &mut Criterion) {
    let clients = clients();
    let mut group = c.benchmark_group("pick");
    for n in [3, 100, 1000] {
        let live = Live::new(n);
        for &kind in StrategyKind::ALL {
            let strategy = kind.build(&Member::uniform(n));
            let mut next = 0;
            group.bench_with_input(BenchmarkId::new(kind.name(), n), &n, |b, _| {
                b.iter(|| {
                    next = (next + 1) % clients.len();
                    black_box(strategy.pick(black_box(clients[next]), &live))
                })
            });
        }
    }
    group.finish();

    // Time per pick as seen by each of two threads picking concurrently.
    let mut group = c.benchmark_group("pick-2-threads");
    for n in [3, 100, 1000] {
        let live = Live::new(n);
        for &kind in StrategyKind::ALL {
            let strategy = kind.build(&Member::uniform(n));
            group.bench_with_input(BenchmarkId::new(kind.name(), n), &n, |b, _| {
                b.iter_custom(|iters| {
                    let (strategy, live, clients) = (&*strategy, &live, &clients);
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for _ in 0..2 {
                            s.spawn(move || {
                                for i in 0..iters as usize {
                                    let client = clients[i % clients.len()];
                                    black_box(strategy.pick(black_box(client), live));
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
