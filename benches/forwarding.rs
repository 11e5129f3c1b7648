//! End to end through the in-process balancer, per strategy, beside a direct connection:
//! throughput (a 4 MiB echo per connection) and connections per second (connect, one byte
//! each way, close). Everything on loopback with three echo backends.
//!
//! `cargo bench --bench forwarding`; report in `target/criterion/report/index.html`.

mod support;

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lb::backend::Backend;
use lb::balancer::Options;
use lb::strategy::StrategyKind;
use support::*;

const BULK: usize = 4 << 20;

fn forwarding(c: &mut Criterion) {
    let rt = runtime();
    let (direct, targets) = rt.block_on(async {
        let mut backends = Vec::new();
        for _ in 0..3 {
            backends.push(spawn_echo(None).await);
        }
        let mut targets = Vec::new();
        for &kind in StrategyKind::ALL {
            let list = backends
                .iter()
                .map(|&a| Backend::from_addr(a, false))
                .collect();
            targets.push((
                kind.name(),
                spawn_balancer(list, kind, Options::default()).await,
            ));
        }
        (backends[0], targets)
    });
    let all: Vec<(&str, _)> = std::iter::once(("direct", direct)).chain(targets).collect();
    let data = vec![0x5a_u8; BULK];

    let mut group = c.benchmark_group("throughput");
    group.throughput(Throughput::Bytes(BULK as u64));
    for &(name, addr) in &all {
        group.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { roundtrip(tcp(addr).await, &data).await })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("connections");
    group.throughput(Throughput::Elements(1));
    for &(name, addr) in &all {
        group.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { roundtrip(tcp(addr).await, b"x").await })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500)).sample_size(30);
    targets = forwarding
}
criterion_main!(benches);
