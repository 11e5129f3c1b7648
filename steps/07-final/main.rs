//! # Step 7: the tutorial's finale
//!
//! Mirrors the Go tutorial's "Finalizing": a `type Server struct` per backend saying whether it
//! speaks TLS, one balancer over a mix of plain and TLS backends, HTTP or HTTPS in front.
//!
//! **What it adds:** backends given as `HOST:PORT` (plain) or `tls://HOST:PORT`; a TLS listener
//! when `--cert`/`--key` (or the config's `[tls]`) are given; every strategy (`round-robin`,
//! `random`, and `least-called`, the Go tutorial's own algorithm, to compare); and a TOML file
//! (`--config`, see [`lb::config`]) as an alternative to flags, which override it.
//!
//! With no backend configured at all it starts the Go finale's topology inside the process:
//! server1 on HTTPS, server2 on HTTP, server3 on HTTPS, their certificates from a CA made in
//! memory at start-up. That is what `cargo run --release` runs: it works on a fresh clone,
//! with no certificate files.
//!
//! **What the Go version got wrong:** the servers are constants compiled in; each TLS dial
//! re-reads the certificate files; the "RoundRobin" is least-cumulative-calls over a map
//! mutated without a lock; and everything from steps 2–6 (1024-byte reads, shared buffers,
//! panics) is still there.
//!
//! **Try it:**
//!
//! ```text
//! terminal 1:  cargo run --release
//! terminal 2:  for i in 1 2 3; do curl -s localhost:3000 | head -1; done
//!
//! with files:  cargo run --bin certs
//!              cargo run --bin dummy-server -- --tls --listen 127.0.0.1:4444 --name server1 \
//!                --listen 127.0.0.1:4446 --name server3
//!              cargo run --bin dummy-server -- --listen 127.0.0.1:4445 --name server2
//!              cargo run --bin 07-final -- --config examples/07-final.toml
//!              curl --cacert certs/ca.pem https://localhost:3000
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lb::backend::{self, Backend, BackendSpec, DEFAULT_CONNECT_TIMEOUT};
use lb::balancer::{Balancer, Options};
use lb::config::Config;
use lb::strategy::StrategyKind;
use lb::{cli, dummy, net, tls};

/// Step 7: plain and TLS backends, optional TLS listener, config file or flags.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file; flags given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:3000].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// A backend: HOST:PORT for plain TCP, tls://HOST:PORT for TLS; repeat for several.
    /// Replaces the config file's backends. None anywhere: built-in dummy servers.
    #[arg(long = "backend", value_name = "[tls://]HOST:PORT")]
    backends: Vec<BackendSpec>,
    /// How to choose the backend of each new connection [default: round-robin].
    #[arg(long, value_enum)]
    strategy: Option<StrategyKind>,
    /// Terminate TLS on the listener with this certificate chain (PEM); needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// CA certificate(s) (PEM) that TLS backends must chain to [default: certs/ca.pem].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Do not verify TLS backends' certificates (testing only).
    #[arg(long)]
    insecure: bool,
    /// Seconds to connect to a backend (and finish its TLS handshake) [default: 3].
    #[arg(long, value_name = "SECS", value_parser = cli::seconds)]
    connect_timeout: Option<Duration>,
    /// Seconds a client has to finish its TLS handshake [default: 10].
    #[arg(long, value_name = "SECS", value_parser = cli::seconds)]
    handshake_timeout: Option<Duration>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    cli::report(run(args).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };

    // Flags win over the file, the file over the defaults.
    let listen = match args.listen.or(config.listen) {
        Some(addr) => addr,
        None => lb::DEFAULT_LISTEN.parse()?,
    };
    let strategy = args
        .strategy
        .or(config.strategy)
        .unwrap_or(StrategyKind::RoundRobin);
    let insecure = args.insecure || config.insecure.unwrap_or(false);
    let ca = args
        .ca
        .or(config.ca)
        .unwrap_or_else(|| tls::DEFAULT_CA.into());
    let listener_tls = match (args.cert, args.key, config.tls) {
        (Some(cert), Some(key), _) => Some(tls::server_config_from_files(&cert, &key)?),
        (_, _, Some(t)) => Some(tls::server_config_from_files(&t.cert, &t.key)?),
        _ => None,
    };
    let secs = |s: f64| Duration::from_secs_f64(s);
    let mut options = Options {
        listener_tls,
        connect_timeout: args
            .connect_timeout
            .or(config.connect_timeout.map(secs))
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        handshake_timeout: args
            .handshake_timeout
            .or(config.handshake_timeout.map(secs))
            .unwrap_or(tls::DEFAULT_HANDSHAKE_TIMEOUT),
        upstream_tls: None,
    };
    if insecure {
        tracing::warn!("{}", tls::INSECURE_WARNING);
    }
    // Bound before the built-in backends start: a port in use fails the start on its own.
    let listener = net::listen(listen)?;

    let backends: Vec<Backend> = if !args.backends.is_empty() {
        backend::resolve_all(args.backends, None).await?
    } else if !config.backends.is_empty() {
        let mut backends = Vec::new();
        for entry in &config.backends {
            backends.push(Backend::resolve(entry.spec(), entry.sni.as_deref()).await?);
        }
        backends
    } else {
        // The Go finale's servers, in-process, with a CA that exists only in memory.
        tracing::info!("no backend configured: starting the Go finale's three servers in-process");
        let bundle = lb::certs::generate_localhost()?;
        let server_tls = bundle.server_config()?;
        if !insecure {
            options.upstream_tls = Some(tls::client_config(bundle.roots())?);
        }
        dummy::start_builtin(&[
            ("server1", Some(server_tls.clone())),
            ("server2", None),
            ("server3", Some(server_tls)),
        ])?
    };

    let any_tls = backends.iter().any(|b| b.server_name().is_some());
    if any_tls && options.upstream_tls.is_none() {
        options.upstream_tls = Some(if insecure {
            tls::insecure_client_config()?
        } else {
            tls::client_config(tls::load_roots(&ca)?)?
        });
    }

    let listener_is_tls = options.listener_tls.is_some();
    let picker = strategy.build(backends.len());
    let balancer = Balancer::new(backends, picker, options)?;
    net::announce(&listener)?;
    tracing::info!(
        "strategy {strategy}, {} listener, backends: {}",
        if listener_is_tls { "TLS" } else { "plain TCP" },
        balancer
            .backends()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    balancer.run(listener, cli::shutdown_signal()).await;
    Ok(())
}
