//! The comparison chapter 9 is for: three HTTP backends, one of them ten times slower than
//! the others (100 ms per answer against 10 ms), and a closed loop of clients, each sending one
//! request per new connection and waiting for the answer before the next. Every strategy
//! balances the same load; for each we report throughput, median and tail latency, and the
//! share of requests the slow backend received.
//!
//! Each client connects from its own loopback address (127.0.3.1, 127.0.3.2, …), so that
//! ip-hash sees several clients as it would in production. The delays are long and the clients
//! few on purpose: the machine's CPU stays far from saturated, so the table measures the
//! strategies and not the scheduler.
//!
//! Criterion measures the time per batch of requests (its report, under
//! `target/criterion/slow-backend/`, shows requests per second); the latency percentiles are
//! collected across all of criterion's runs and printed as a table at the end, which is also
//! written to `target/criterion/slow-backend/table.md`.
//!
//! `cargo bench --bench slow_backend`

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lb::backend::Backend;
use lb::balancer::Options;
use lb::dummy::{self, DummyServer};
use lb::strategy::StrategyKind;
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const FAST: Duration = Duration::from_millis(10);
const SLOW: Duration = Duration::from_millis(100);
/// Clients sending at once: more than the backends, so that where the next request goes
/// depends on where the others still are.
const CLIENTS: u8 = 12;
/// Requests per criterion iteration.
const BATCH: usize = 48;

/// What one strategy's requests saw, over every batch criterion ran.
#[derive(Default)]
struct Record {
    /// Latency of every request, by client.
    latencies: Vec<(u8, Duration)>,
    to_slow: usize,
    busy: Duration,
}

/// One request on a new connection; returns its latency and whether the slow backend answered.
async fn request(client: IpAddr, lb: SocketAddr) -> (Duration, bool) {
    let started = Instant::now();
    let socket = tokio::net::TcpSocket::new_v4().or_exit("cannot make a socket");
    socket
        .bind(SocketAddr::new(client, 0))
        .or_exit("cannot bind the client address");
    let mut s = socket.connect(lb).await.or_exit("cannot connect");
    s.write_all(b"GET / HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
        .await
        .or_exit("cannot send the request");
    let mut answer = Vec::with_capacity(1024);
    s.read_to_end(&mut answer)
        .await
        .or_exit("cannot read the answer");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let slow = answer.windows(18).any(|w| w == b"x-served-by: slow\r");
    (started.elapsed(), slow)
}

/// `requests` requests, sent by `CLIENTS` clients that each take the next one as soon as
/// their last one is answered (a closed loop with no pause between batches, which would let
/// the slow backend's stragglers idle everyone else).
async fn closed_loop(lb: SocketAddr, requests: usize, record: &Mutex<Record>) -> Duration {
    let started = Instant::now();
    let left = Arc::new(AtomicUsize::new(requests));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let client = IpAddr::from([127, 0, 3, i + 1]);
        let left = Arc::clone(&left);
        clients.spawn(async move {
            let mut seen = Vec::new();
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let (latency, slow) = request(client, lb).await;
                seen.push((i, latency, slow));
            }
            seen
        });
    }
    let mut all = Vec::with_capacity(requests);
    while let Some(seen) = clients.join_next().await {
        all.extend(seen.or_exit("a client task failed"));
    }
    let elapsed = started.elapsed();
    let mut r = record.lock().or_exit("record lock");
    r.to_slow += all.iter().filter(|(_, _, slow)| *slow).count();
    r.latencies.extend(all.iter().map(|&(i, l, _)| (i, l)));
    r.busy += elapsed;
    elapsed
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn slow_backend(c: &mut Criterion) {
    let rt = runtime();
    let backends = rt.block_on(async {
        [("fast1", FAST), ("fast2", FAST), ("slow", SLOW)].map(|(name, delay)| {
            let server = DummyServer::new(name)
                .or_exit("bad server name")
                .with_delay(delay);
            dummy::spawn_on_loopback(server).or_exit("cannot start a dummy server")
        })
    });
    // Every strategy with equal weights, plus weighted round robin told the truth about the
    // slow backend (weights 10, 10, 1): what an operator who knows can do without load-aware
    // picking.
    let runs: Vec<(String, StrategyKind, [u32; 3])> = StrategyKind::ALL
        .iter()
        .map(|&k| (k.name().to_owned(), k, [1, 1, 1]))
        .chain([(
            "weighted-round-robin 10:10:1".to_owned(),
            StrategyKind::WeightedRoundRobin,
            [10, 10, 1],
        )])
        .collect();
    let records: BTreeMap<&str, Arc<Mutex<Record>>> = runs
        .iter()
        .map(|(name, _, _)| (name.as_str(), Arc::default()))
        .collect();

    let mut group = c.benchmark_group("slow-backend");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    for (name, kind, weights) in &runs {
        let list = backends
            .iter()
            .zip(weights)
            .map(|(&a, &w)| Backend::from_addr(a, false).with_weight(w))
            .collect();
        let lb = rt.block_on(spawn_balancer(list, *kind, Options::default()));
        let record = Arc::clone(&records[name.as_str()]);
        group.bench_function(name.as_str(), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let record = Arc::clone(&record);
                async move { closed_loop(lb, iters as usize * BATCH, &record).await }
            })
        });
    }
    group.finish();

    let mut table = format!(
        "One backend of three {}× slower ({SLOW:?} against {FAST:?}), {CLIENTS} clients, one \
         request per connection:\n\n\
         | strategy | requests/s | p50 | p90 | p99 | worst client's p50 | to the slow backend |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        SLOW.as_millis() / FAST.as_millis()
    );
    for (name, _, _) in &runs {
        let r = records[name.as_str()].lock().or_exit("record lock");
        if r.latencies.is_empty() {
            continue; // filtered out on the command line
        }
        let mut all: Vec<Duration> = r.latencies.iter().map(|&(_, l)| l).collect();
        all.sort_unstable();
        // The median of the client that fared worst: where ip-hash's stickiness shows.
        let worst = (0..CLIENTS)
            .filter_map(|c| {
                let mut mine: Vec<Duration> = r
                    .latencies
                    .iter()
                    .filter(|e| e.0 == c)
                    .map(|e| e.1)
                    .collect();
                mine.sort_unstable();
                (!mine.is_empty()).then(|| percentile(&mine, 0.5))
            })
            .max()
            .unwrap_or_default();
        let n = all.len();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let _ = writeln!(
            table,
            "| {} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} % |",
            name,
            n as f64 / r.busy.as_secs_f64(),
            ms(percentile(&all, 0.50)),
            ms(percentile(&all, 0.90)),
            ms(percentile(&all, 0.99)),
            ms(worst),
            100.0 * r.to_slow as f64 / n as f64,
        );
    }
    println!("\n{table}");
    let dir = std::path::Path::new(&std::env::var("CARGO_TARGET_DIR").unwrap_or("target".into()))
        .join("criterion/slow-backend");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("table.md"), &table);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    targets = slow_backend
}
criterion_main!(benches);
