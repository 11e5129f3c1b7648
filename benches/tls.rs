//! TLS cost through the in-process balancer: full handshakes per second and throughput, for
//! termination (step 5: TLS client → balancer → plain backend) and origination (step 6: plain
//! client → balancer → TLS backend, with session resumption to the backend), beside the plain
//! forwarder.
//!
//! `cargo bench --bench tls`; report in `target/criterion/report/index.html`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lb::backend::Backend;
use lb::balancer::Options;
use lb::strategy::StrategyKind;
use support::*;
use tokio_rustls::TlsConnector;

const BULK: usize = 4 << 20;

fn tls(c: &mut Criterion) {
    let rt = runtime();
    let bundle = lb::certs::generate_localhost().or_exit("cannot make certificates");
    let server_config = bundle.server_config().or_exit("bad server config");
    let upstream = lb::tls::client_config(bundle.roots()).or_exit("bad client config");
    // The benchmark's own client never resumes: each connection is a full handshake.
    let mut client = (*lb::tls::client_config(bundle.roots()).or_exit("bad client config")).clone();
    client.resumption = rustls::client::Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(client));

    let (plain, terminate, originate) = rt.block_on(async {
        let plain_backend = spawn_echo(None).await;
        let tls_backend = spawn_echo(Some(server_config.clone())).await;
        let rr = StrategyKind::RoundRobin;
        let plain = spawn_balancer(
            vec![Backend::from_addr(plain_backend, false)],
            rr,
            Options::default(),
        )
        .await;
        let terminate = spawn_balancer(
            vec![Backend::from_addr(plain_backend, false)],
            rr,
            Options {
                listener_tls: Some(server_config.clone()),
                ..Options::default()
            },
        )
        .await;
        let originate = spawn_balancer(
            vec![Backend::from_addr(tls_backend, true)],
            rr,
            Options {
                upstream_tls: Some(upstream),
                ..Options::default()
            },
        )
        .await;
        (plain, terminate, originate)
    });
    let data = vec![0xa5_u8; BULK];

    let mut group = c.benchmark_group("tls-handshakes");
    group.throughput(Throughput::Elements(1));
    group.bench_function("plain-forwarder", |b| {
        b.to_async(&rt)
            .iter(|| async { roundtrip(tcp(plain).await, b"x").await })
    });
    group.bench_function("05-termination", |b| {
        b.to_async(&rt)
            .iter(|| async { roundtrip(support::tls(terminate, &connector).await, b"x").await })
    });
    group.bench_function("06-origination", |b| {
        b.to_async(&rt)
            .iter(|| async { roundtrip(tcp(originate).await, b"x").await })
    });
    group.finish();

    let mut group = c.benchmark_group("tls-throughput");
    group.throughput(Throughput::Bytes(BULK as u64));
    group.bench_function("plain-forwarder", |b| {
        b.to_async(&rt)
            .iter(|| async { roundtrip(tcp(plain).await, &data).await })
    });
    group.bench_function("05-termination", |b| {
        b.to_async(&rt)
            .iter(|| async { roundtrip(support::tls(terminate, &connector).await, &data).await })
    });
    group.bench_function("06-origination", |b| {
        b.to_async(&rt)
            .iter(|| async { roundtrip(tcp(originate).await, &data).await })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500)).sample_size(30);
    targets = tls
}
criterion_main!(benches);
