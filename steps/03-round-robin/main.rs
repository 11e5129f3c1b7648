//! # Step 3: round robin over several backends
//!
//! Mirrors the Go tutorial's "The actual load balancer" and its `RoundRobin`: several
//! backends, and each new connection goes to the next one in turn.
//!
//! **What it adds:** the [`Strategy`](lb::strategy::Strategy) trait and a true
//! [`RoundRobin`] (one atomic counter, no lock); the accept loop of step 2 moves into
//! [`lb::balancer::Balancer`], which every later step reuses.
//!
//! **What the Go version got wrong:** its `RoundRobin` is *least cumulative calls*: it keeps a
//! count per server and picks the smallest. That matches round robin only while every count
//! moves in lockstep; a server that joins later receives every connection until it catches up,
//! and each pick scans every server. See [`lb::strategy`] for the comparison, and
//! `--strategy least-called` in step 7 to try it.
//!
//! **Try it** in three terminals:
//!
//! ```text
//! terminal 1:  cargo run --bin dummy-server
//! terminal 2:  cargo run --bin 03-round-robin
//! terminal 3:  for i in 1 2 3 4 5 6; do curl -s localhost:3000 | head -1; done
//!              # server: server1, server2, server3, server1, server2, server3
//! ```
//!
//! Note that round robin balances *connections*: with keep-alive, every request sent on one
//! connection goes to the same backend (`curl localhost:3000 localhost:3000` shows it).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use lb::backend::{self, BackendSpec, HostPort};
use lb::balancer::{Balancer, Options};
use lb::strategy::RoundRobin;
use lb::{cli, net};

/// Step 3: round robin over several backends.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = lb::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// A backend, HOST:PORT; repeat for several.
    #[arg(long = "backend", value_name = "HOST:PORT", default_values = lb::TUTORIAL_BACKENDS)]
    backends: Vec<HostPort>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    cli::report(run(args).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let specs = args.backends.into_iter().map(BackendSpec::plain);
    let backends = backend::resolve_all(specs, None).await?;
    let strategy = Box::new(RoundRobin::new(backends.len()));
    let balancer = Balancer::new(backends, strategy, Options::default())?;
    let listener = net::listen(args.listen)?;
    net::announce(&listener)?;
    balancer.run(listener, cli::shutdown_signal()).await;
    Ok(())
}
