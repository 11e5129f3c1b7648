//! Chapter 14's costs: what the balancer spends to assign a client (a `307` redirect), and to
//! renew a server's registration. Targets: a redirect under 20 µs, a renewal under 50 µs.
//!
//! Each is measured twice. In memory: the registry's `put` for a renewal, the redirect's
//! response built by `assign::answer`. And whole: an in-process `http-lb --mode assign` (or
//! admin listener) on its own thread and one-thread runtime answers a kept-alive client over
//! loopback, and what is reported is **that thread's CPU time per request** (user and kernel,
//! from `/proc/self/task/TID/schedstat`): parsing, choosing, answering, the system calls;
//! neither the client's work nor the wait for it.
//!
//! `cargo bench --bench assign`; report in `target/criterion/report/index.html`.

#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use lb::backend::Backend;
use lb::balancer::{Balancer, Options};
use lb::http::affinity::CookieSettings;
use lb::http::assign::{self, Mode};
use lb::http::balancer::{HttpServer, Settings};
use lb::registry::Registry;
use lb::server::Server;
use lb::strategy::StrategyKind;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn balancer() -> Balancer {
    // Assignment never dials: the addresses need not answer.
    let backends: Vec<Backend> = (0..4)
        .map(|i| Backend::from_addr(SocketAddr::from(([127, 0, 0, 1], 5000 + i)), false))
        .collect();
    let members = lb::backend::members(&backends);
    Balancer::new(
        backends,
        StrategyKind::RoundRobin.build(&members),
        Options::default(),
    )
    .unwrap()
}

/// Sends `request` on `stream` and reads one answer (its head and `content-length` body).
async fn round_trip(stream: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) {
    stream.write_all(request).await.unwrap();
    buf.clear();
    loop {
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])
                .unwrap()
                .to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return;
            }
        }
    }
}

/// A server running on its own OS thread (a one-thread runtime), whose CPU time can be read.
struct Served {
    addr: SocketAddr,
    schedstat: std::path::PathBuf,
}

impl Served {
    /// Starts `serve` on a thread of its own; it gets the listener.
    fn start<F, Fut>(name: &str, serve: F) -> Served
    where
        F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = lb::net::listen("127.0.0.1:0".parse().unwrap()).unwrap();
                    tx.send(listener.local_addr().unwrap()).unwrap();
                    serve(listener).await
                });
            })
            .unwrap();
        let addr = rx.recv().unwrap();
        // The thread's entry in /proc, found by its name.
        let schedstat = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
            })
            .map(|t| t.path().join("schedstat"))
            .expect("the server thread");
        Served { addr, schedstat }
    }

    /// CPU time the thread has used so far.
    fn cpu(&self) -> std::time::Duration {
        let text = std::fs::read_to_string(&self.schedstat).unwrap();
        let ns: u64 = text.split(' ').next().unwrap().parse().unwrap();
        std::time::Duration::from_nanos(ns)
    }
}

/// Clients at once, each on its own kept-alive connection: the balancer under load, as in
/// production, where one wake-up serves several requests. One client at a time would measure
/// mostly the cost of the thread falling asleep and waking for every request.
const CLIENTS: u64 = 16;

/// `iters` round trips of `request` to `served`, spread over [`CLIENTS`] kept-alive
/// connections; the server thread's CPU time over them.
async fn server_cpu(served: &Served, request: &'static [u8], iters: u64) -> std::time::Duration {
    let mut streams = Vec::new();
    for _ in 0..CLIENTS {
        let mut stream = TcpStream::connect(served.addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        round_trip(&mut stream, request, &mut Vec::new()).await;
        streams.push(stream);
    }
    let before = served.cpu();
    let mut clients = tokio::task::JoinSet::new();
    for (k, mut stream) in streams.into_iter().enumerate() {
        // The first `iters % CLIENTS` clients take one more: exactly `iters` in all.
        let n = iters / CLIENTS + u64::from((k as u64) < iters % CLIENTS);
        clients.spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            for _ in 0..n {
                round_trip(&mut stream, request, &mut buf).await;
            }
        });
    }
    while clients.join_next().await.is_some() {}
    served.cpu() - before
}

fn assign(c: &mut Criterion) {
    let rt = support::runtime();
    let mut group = c.benchmark_group("assign");

    group.bench_function("redirect, built in memory", |b| {
        b.iter(|| {
            black_box(assign::answer(
                black_box("https://s1.apps.example"),
                "s1",
                "10.0.3.1:8443",
                black_box("/a/b?x=1"),
                None,
            ))
        })
    });

    let lb = Served::start("assign-lb", |listener| async move {
        let settings = Settings {
            mode: Mode::Assign,
            affinity: Some((vec![7; 32], CookieSettings::default())),
            ..Settings::default()
        };
        let server = HttpServer::new(balancer(), settings);
        server.run(listener, std::future::pending()).await
    });
    group.bench_function(
        "redirect, balancer CPU per request (16 clients, kept-alive, loopback)",
        |b| {
            let lb = &lb;
            b.to_async(&rt).iter_custom(|iters| async move {
                server_cpu(lb, b"GET /a/b?x=1 HTTP/1.1\r\nhost: lb\r\n\r\n", iters).await
            })
        },
    );

    let registry = Arc::new(Registry::default());
    let dir = std::env::temp_dir().join(format!("assign-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(&token, TOKEN).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    registry.configure(Some(&token), Vec::new(), 256).unwrap();
    let body = br#"{"address": "127.0.0.1:5001", "url": "https://s1.apps.example", "ttl": 30}"#;
    registry.put("s1", body, Instant::now()).unwrap();
    group.bench_function("renewal, in memory", |b| {
        b.iter(|| black_box(registry.put("s1", black_box(body), Instant::now())))
    });

    let admin = {
        let sources = lb::sources::Sources {
            registry: Arc::clone(&registry),
            ..Default::default()
        };
        Served::start("assign-admin", move |listener| async move {
            lb::admin::run(listener, Server::new(balancer()), sources).await
        })
    };
    let renewal: &'static str = Box::leak(
        format!(
            "PUT /backends/s1 HTTP/1.1\r\nhost: lb\r\nauthorization: Bearer {TOKEN}\r\n\
         content-length: {}\r\n\r\n{}",
            body.len(),
            std::str::from_utf8(body).unwrap()
        )
        .into_boxed_str(),
    );
    group.bench_function(
        "renewal, balancer CPU per PUT (16 clients, kept-alive, loopback)",
        |b| {
            let (admin, renewal) = (&admin, renewal.as_bytes());
            b.to_async(&rt)
                .iter_custom(|iters| async move { server_cpu(admin, renewal, iters).await })
        },
    );
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, assign);
criterion_main!(benches);
