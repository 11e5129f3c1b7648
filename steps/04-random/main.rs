//! # Step 4: random choice, and a choice of strategy
//!
//! Mirrors the Go tutorial's `RandomRobin`: pick a backend at random. Over many connections
//! each backend gets its share; no state is shared between picks at all, which makes random
//! the cheapest strategy under contention (compare them with `cargo bench --bench strategies`).
//!
//! **What it adds:** [`Random`](lb::strategy::Random) from a per-thread generator, and
//! `--strategy round-robin|random|least-called`. Run with no `--backend` (as `cargo run`
//! does), it starts three dummy servers inside the process and logs their addresses, so it
//! works on its own.
//!
//! **What the Go version got wrong:** `servers[rand.Intn(len(servers))]` is fine; the problem
//! around it is the same as in step 2: one read of 1024 bytes and a panic when the randomly
//! chosen server is down.
//!
//! **Try it** in two terminals (built-in backends), or three (your own dummy-server):
//!
//! ```text
//! terminal 1:  cargo run --bin 04-random
//! terminal 2:  for i in $(seq 9); do curl -s localhost:3000 | head -1; done
//!
//! terminal 1:  cargo run --bin dummy-server
//! terminal 2:  cargo run --bin 04-random -- --strategy round-robin \
//!                --backend 127.0.0.1:4444 --backend 127.0.0.1:4445 --backend 127.0.0.1:4446
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use lb::backend::{self, BackendSpec, HostPort};
use lb::balancer::{Balancer, Options};
use lb::strategy::StrategyKind;
use lb::{cli, dummy, net};

/// Step 4: random (or round robin) over several backends.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = lb::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// A backend, HOST:PORT; repeat for several. None: three built-in dummy servers.
    #[arg(long = "backend", value_name = "HOST:PORT")]
    backends: Vec<HostPort>,
    /// How to choose the backend of each new connection.
    #[arg(long, value_parser = StrategyKind::parser(StrategyKind::TUTORIAL), default_value_t = StrategyKind::Random)]
    strategy: StrategyKind,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    cli::report(run(args).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Bound first: a port in use fails before anything else starts.
    let listener = net::listen(args.listen)?;
    let backends = if args.backends.is_empty() {
        tracing::info!("no --backend given: balancing over three built-in dummy servers");
        dummy::start_builtin(&[("server1", None), ("server2", None), ("server3", None)])?
    } else {
        let specs = args.backends.into_iter().map(BackendSpec::plain);
        backend::resolve_all(specs, None).await?
    };
    let strategy = args.strategy.build(&backend::members(&backends));
    let balancer = Balancer::new(backends, strategy, Options::default())?;
    net::announce(&listener)?;
    tracing::info!("strategy: {}", args.strategy);
    balancer.run(listener, cli::shutdown_signal()).await;
    Ok(())
}
