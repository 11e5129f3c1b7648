//! # Step 5: TLS termination
//!
//! Mirrors the Go tutorial's "Upgrade loadbalancer to https": clients speak HTTPS to the
//! balancer, which decrypts and forwards plain bytes to plain backends. This is the "SSL
//! termination" of seed 002 and the first tier of the SSL farm of seed 000: the expensive
//! handshakes happen here, once, and the backends never see TLS.
//!
//! **What it adds:** a rustls [`ServerConfig`](rustls::ServerConfig) built once from PEM files
//! (`--cert`, `--key`, defaults from `cargo run --bin certs`), a TLS handshake per connection
//! bounded by `--handshake-timeout`, and a lenient end of stream for clients that close without
//! `close_notify`. The config ([`lb::tls::server_config`]) prefers AES-128-GCM over the
//! client's order and issues stateless session tickets, so a returning client resumes;
//! chapter 11 measures both.
//!
//! **What the Go version got wrong:** `tls.Listen` has no handshake deadline: a client that
//! connects and sends nothing holds a goroutine and a file descriptor forever (it takes a few
//! hundred such clients to exhaust a default `ulimit -n`). Its self-signed, SAN-less certificate
//! is rejected by every modern client unless verification is turned off (`curl -k`), which
//! teaches exactly the wrong habit.
//!
//! Plaintext or garbage sent to the TLS port fails the handshake: the connection is dropped and
//! logged once, and the next client is served as usual.
//!
//! **Try it** in three terminals:
//!
//! ```text
//! once:        cargo run --bin certs
//! terminal 1:  cargo run --bin dummy-server
//! terminal 2:  cargo run --bin 05-tls-termination
//! terminal 3:  curl --cacert certs/ca.pem https://localhost:3000
//!              openssl s_client -connect localhost:3000 -CAfile certs/ca.pem -brief </dev/null
//!              curl http://localhost:3000     # plaintext: refused, terminal 2 logs why
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lb::backend::{self, BackendSpec, HostPort};
use lb::balancer::{Balancer, Options};
use lb::strategy::StrategyKind;
use lb::{cli, net, tls};

/// Step 5: terminate TLS, forward plain bytes to the backends.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = lb::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// A plain backend, HOST:PORT; repeat for several.
    #[arg(long = "backend", value_name = "HOST:PORT", default_values = lb::TUTORIAL_BACKENDS)]
    backends: Vec<HostPort>,
    /// How to choose the backend of each new connection.
    #[arg(long, value_parser = StrategyKind::parser(StrategyKind::TUTORIAL), default_value_t = StrategyKind::RoundRobin)]
    strategy: StrategyKind,
    /// Certificate chain (PEM) presented to clients, leaf first.
    #[arg(long, value_name = "FILE", default_value = tls::DEFAULT_CERT)]
    cert: PathBuf,
    /// Private key (PEM) of that certificate.
    #[arg(long, value_name = "FILE", default_value = tls::DEFAULT_KEY)]
    key: PathBuf,
    /// Seconds a client has to complete its TLS handshake.
    #[arg(long, value_name = "SECS", value_parser = cli::seconds, default_value = "10")]
    handshake_timeout: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    cli::report(run(args).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Read and checked once, before listening: a bad file is a start-up error, not a failure
    // on every connection.
    let server_config = tls::server_config_from_files(&args.cert, &args.key)?;
    let specs = args.backends.into_iter().map(BackendSpec::plain);
    let backends = backend::resolve_all(specs, None).await?;
    let options = Options {
        listener_tls: Some(server_config),
        handshake_timeout: args.handshake_timeout,
        ..Options::default()
    };
    let strategy = args.strategy.build(&backend::members(&backends));
    let balancer = Balancer::new(backends, strategy, options)?;
    let listener = net::listen(args.listen)?;
    net::announce(&listener)?;
    balancer.run(listener, cli::shutdown_signal()).await;
    Ok(())
}
