//! The server's side of one TLS 1.3 handshake, in memory: no sockets, no kernel, no runtime,
//! only the crypto and rustls' state machine that a balancer pays per new TLS client.
//!
//! The client lists its cipher suites as OpenSSL does (AES-256-GCM first), as curl, wrk and
//! most other clients do. Four cases:
//!
//! * `full` or `resumed`: a first visit, or a client back with a session ticket (PSK with a
//!   fresh X25519 exchange and no certificate signature);
//! * `client-order` or `ours`: the server follows the client's preference and hashes with
//!   SHA-384, or takes its own (AES-128-GCM with SHA-256), as [`lb::tls::server_config`] does.
//!
//! Only the server's calls are timed (`iter_custom`). Chapter 11 has the figures.
//!
//! `cargo bench --bench handshake`; report in `target/criterion/report/index.html`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};
use support::OrExit;

/// A TLS 1.3 handshake is two flights each way, and the tickets come after: a handshake that
/// has not finished after this many rounds is a bug, and the bench stops instead of spinning.
const MAX_ROUNDS: usize = 8;

/// Runs one handshake to completion, tickets delivered; returns the time spent in the server
/// and the kind of handshake it was.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> (Duration, HandshakeKind) {
    let name = ServerName::try_from("localhost").or_exit("bad server name");
    let mut c = ClientConnection::new(client.clone(), name).or_exit("cannot start a client");
    let started = Instant::now();
    let mut s = ServerConnection::new(server.clone()).or_exit("cannot start a server");
    let mut in_server = started.elapsed();
    let mut to_server = Vec::with_capacity(4096);
    let mut to_client = Vec::with_capacity(4096);
    for _ in 0..MAX_ROUNDS {
        to_server.clear();
        while c.wants_write() {
            c.write_tls(&mut to_server).or_exit("client write");
        }
        let started = Instant::now();
        let mut incoming = &to_server[..];
        while !incoming.is_empty() {
            s.read_tls(&mut incoming).or_exit("server read");
            s.process_new_packets().or_exit("server handshake");
        }
        to_client.clear();
        while s.wants_write() {
            s.write_tls(&mut to_client).or_exit("server write");
        }
        in_server += started.elapsed();
        let mut incoming = &to_client[..];
        while !incoming.is_empty() {
            c.read_tls(&mut incoming).or_exit("client read");
            c.process_new_packets().or_exit("client handshake");
        }
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            let kind = s
                .handshake_kind()
                .ok_or("none reported")
                .or_exit("handshake kind");
            return (in_server, kind);
        }
    }
    eprintln!("error: the handshake did not finish in {MAX_ROUNDS} rounds");
    std::process::exit(1)
}

fn handshakes(c: &mut Criterion) {
    let bundle = lb::certs::generate_localhost().or_exit("cannot make certificates");
    let ours = bundle.server_config().or_exit("bad server config");
    let mut client_order = (*ours).clone();
    client_order.ignore_client_order = false;
    let client_order = Arc::new(client_order);

    // The client: aws-lc-rs' own suite order, AES-256-GCM first like OpenSSL's.
    let resuming = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .or_exit("bad protocol versions")
    .with_root_certificates(bundle.roots())
    .with_no_client_auth();
    let mut first_visit = resuming.clone();
    first_visit.resumption = rustls::client::Resumption::disabled();
    let (resuming, first_visit) = (Arc::new(resuming), Arc::new(first_visit));

    let mut group = c.benchmark_group("tls13-server-handshake");
    for (server_name, server) in [("client-order", &client_order), ("ours", &ours)] {
        for (client_name, client, kind) in [
            ("full", &first_visit, HandshakeKind::Full),
            ("resumed", &resuming, HandshakeKind::Resumed),
        ] {
            // The first handshake leaves a ticket in the resuming client's store; the second
            // shows that the case measures what its name says.
            handshake(client, server);
            if handshake(client, server).1 != kind {
                eprintln!("error: {client_name}/{server_name}: not a {kind:?} handshake");
                std::process::exit(1);
            }
            group.bench_function(format!("{client_name}/{server_name}"), |b| {
                b.iter_custom(|n| (0..n).map(|_| handshake(client, server).0).sum())
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = handshakes
}
criterion_main!(benches);
