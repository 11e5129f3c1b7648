//! # The dummy servers: the backends the tutorial balances over
//!
//! Mirrors the Go tutorial's "Creating dummy servers": small HTTP servers on 4444, 4445 and
//! 4446 that say which server they are, how many times they were called, and the headers they
//! received. One process runs all three (or as many as you give `--listen`).
//!
//! **What it adds:** the logic lives in [`lb::dummy`], so tests, benchmarks and the built-in
//! backends of `cargo run` run the very same server. Every response carries `x-served-by: NAME`;
//! `GET /bytes/N` answers N bytes (to push large bodies through a proxy) and `/echo` sends the
//! request body back. `--tls` serves HTTPS for chapters 6 and 7. `--delay MS` makes a server
//! slow and `GET /delay/MS` makes one request slow (chapters 8 and 9); `GET /health` answers
//! `ok` without counting as a hit.
//!
//! **What the Go version got wrong:** its counter `v` is a global incremented by every request
//! handler, and Go's HTTP server runs handlers concurrently: a data race (`go run -race`
//! reports it) that loses counts under load. Here each server has its own atomic counter.
//!
//! **Try it** in two terminals:
//!
//! ```text
//! terminal 1:  cargo run --bin dummy-server
//! terminal 2:  curl localhost:4444 ; curl localhost:4445 ; curl -i localhost:4446
//!              curl -s localhost:4444/bytes/100000 | wc -c
//!              time curl -s localhost:4445/delay/500
//! ```
//!
//! A slow third server: `cargo run --bin dummy-server -- --delay 0 --delay 0 --delay 100`.
//!
//! With your own ports and names: `cargo run --bin dummy-server -- --listen 127.0.0.1:5000
//! --name alpha --listen 127.0.0.1:5001 --name beta`. HTTPS (after `cargo run --bin certs`):
//! `cargo run --bin dummy-server -- --tls`, then `curl --cacert certs/ca.pem https://localhost:4444`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lb::dummy::{self, DummyServer};
use lb::{cli, net, tls};

/// The tutorial's dummy HTTP servers.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to serve on; repeat for several servers.
    #[arg(long = "listen", value_name = "ADDR", default_values = lb::TUTORIAL_BACKENDS)]
    listen: Vec<SocketAddr>,
    /// Name of the server on the --listen at the same position (default: server1, server2, …).
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// Milliseconds to wait before each answer, for the --listen at the same position (default
    /// 0): a slow backend for chapters 8 and 9.
    #[arg(long = "delay", value_name = "MS")]
    delays: Vec<u64>,
    /// Serve HTTPS instead of HTTP.
    #[arg(long)]
    tls: bool,
    /// Certificate chain (PEM) for --tls.
    #[arg(long, value_name = "FILE", default_value = tls::DEFAULT_CERT)]
    cert: PathBuf,
    /// Private key (PEM) for --tls.
    #[arg(long, value_name = "FILE", default_value = tls::DEFAULT_KEY)]
    key: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    cli::report(run(args).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    for (count, flag) in [(args.names.len(), "--name"), (args.delays.len(), "--delay")] {
        if count > args.listen.len() {
            anyhow::bail!(
                "{count} {flag} for {} --listen: each {flag} pairs with the --listen at its \
                 position",
                args.listen.len()
            );
        }
    }
    let tls_config = match args.tls {
        true => Some(tls::server_config_from_files(&args.cert, &args.key)?),
        false => None,
    };
    // Bind everything before announcing anything: a port in use fails the start as a whole.
    let mut servers = Vec::new();
    for (i, &addr) in args.listen.iter().enumerate() {
        let name = args
            .names
            .get(i)
            .cloned()
            .unwrap_or(format!("server{}", i + 1));
        let delay = Duration::from_millis(args.delays.get(i).copied().unwrap_or(0));
        if delay > dummy::MAX_DELAY {
            anyhow::bail!(
                "--delay {} is over the {:?} limit",
                delay.as_millis(),
                dummy::MAX_DELAY
            );
        }
        let mut server = DummyServer::new(&name)?.with_delay(delay);
        if let Some(config) = &tls_config {
            server = server.with_tls(config.clone());
        }
        servers.push((server, net::listen(addr)?));
    }
    let (stop, _) = tokio::sync::watch::channel(false);
    let mut running = tokio::task::JoinSet::new();
    for (server, listener) in servers {
        let addr = net::announce(&listener)?;
        tracing::info!(
            "{} serving {} on {addr}{}",
            server.name(),
            if args.tls { "HTTPS" } else { "HTTP" },
            match server.delay() {
                d if d.is_zero() => String::new(),
                d => format!(", answering after {d:?}"),
            }
        );
        let mut stopped = stop.subscribe();
        running.spawn(server.run(listener, async move {
            let _ = stopped.wait_for(|&stop| stop).await;
        }));
    }
    // Ctrl-C or SIGTERM: every server stops accepting and lets the requests in flight finish
    // (`DummyServer::run`), so a farm that removes this server cuts nothing (chapter 13).
    cli::shutdown_signal().await;
    let _ = stop.send(true);
    while running.join_next().await.is_some() {}
    Ok(())
}
