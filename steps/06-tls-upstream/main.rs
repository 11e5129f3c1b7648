//! # Step 6: TLS to the backends
//!
//! Mirrors the Go tutorial's "Loadbalancer to support https request/response": clients speak
//! plain TCP to the balancer, and the balancer speaks TLS to HTTPS backends, checking their
//! certificates against a CA (`--ca`, default `certs/ca.pem`).
//!
//! **What it adds:** one rustls [`ClientConfig`](rustls::ClientConfig) for the whole process
//! (built once, and shared so TLS sessions to the backends *resume* instead of paying a full
//! handshake each time); the name checked in each backend's certificate, taken from the host
//! you typed (`localhost` or `127.0.0.1`; `--sni NAME` overrides it); `--insecure`.
//!
//! **What the Go version got wrong:** it loads the certificate files on every dial, and its way
//! to make its self-signed certificate work is `InsecureSkipVerify: true`, which accepts any
//! certificate from anyone on the path. Here verification is on by default; `--insecure` goes
//! through a verifier in a module named [`danger`](lb::tls::danger), still checks the handshake
//! signatures, and prints a warning at every start.
//!
//! **Try it** in three terminals:
//!
//! ```text
//! once:        cargo run --bin certs
//! terminal 1:  cargo run --bin dummy-server -- --tls
//! terminal 2:  cargo run --bin 06-tls-upstream
//! terminal 3:  curl localhost:3000         # plain HTTP in, HTTPS to server1..3
//! ```
//!
//! Give it the wrong CA (`cargo run --bin certs -- --out /tmp/other` then `--ca
//! /tmp/other/ca.pem`): every connection fails with `invalid peer certificate: UnknownIssuer`
//! in terminal 2's log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lb::backend::{self, BackendSpec, HostPort};
use lb::balancer::{Balancer, Options};
use lb::strategy::StrategyKind;
use lb::{cli, net, tls};

/// Step 6: plain TCP in, TLS to every backend.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = lb::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// A TLS backend, HOST:PORT; repeat for several.
    #[arg(long = "backend", value_name = "HOST:PORT", default_values = lb::TUTORIAL_BACKENDS)]
    backends: Vec<HostPort>,
    /// How to choose the backend of each new connection.
    #[arg(long, value_parser = StrategyKind::parser(StrategyKind::TUTORIAL), default_value_t = StrategyKind::RoundRobin)]
    strategy: StrategyKind,
    /// CA certificate(s) (PEM) that backend certificates must chain to.
    #[arg(long, value_name = "FILE", default_value = tls::DEFAULT_CA)]
    ca: PathBuf,
    /// Do not verify backend certificates at all (testing only).
    #[arg(long)]
    insecure: bool,
    /// Name to expect in every backend's certificate instead of the host of its address.
    #[arg(long, value_name = "NAME", value_parser = tls::check_server_name)]
    sni: Option<String>,
    /// Seconds to connect to a backend and complete the TLS handshake with it.
    #[arg(long, value_name = "SECS", value_parser = cli::seconds, default_value = "3")]
    connect_timeout: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    cli::report(run(args).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client_config = if args.insecure {
        tracing::warn!("{}", tls::INSECURE_WARNING);
        tls::insecure_client_config()?
    } else {
        tls::client_config(tls::load_roots(&args.ca)?)?
    };
    let specs = args.backends.into_iter().map(|addr| BackendSpec {
        tls: true,
        ..BackendSpec::plain(addr)
    });
    let backends = backend::resolve_all(specs, args.sni.as_deref()).await?;
    let options = Options {
        upstream_tls: Some(client_config),
        connect_timeout: args.connect_timeout,
        ..Options::default()
    };
    let strategy = args.strategy.build(&backend::members(&backends));
    let balancer = Balancer::new(backends, strategy, options)?;
    let listener = net::listen(args.listen)?;
    net::announce(&listener)?;
    balancer.run(listener, cli::shutdown_signal()).await;
    Ok(())
}
