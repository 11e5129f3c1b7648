//! # Step 9: strategies that know about load
//!
//! Beyond the tutorial. Round robin and random send every backend the same *number* of
//! connections, whatever each one is doing with them. When one backend is slow (a long garbage
//! collection, a cold cache, a smaller machine), it keeps receiving its full share, its
//! connections pile up, and a third of the clients wait on it. This step adds the strategies
//! that look at load, plus weights and client affinity (see [`lb::strategy`]):
//!
//! **What it adds:**
//! * `least-connections`: the backend with the fewest open connections per unit of weight;
//!   a slow backend holds its connections longer, so it is offered fewer new ones.
//! * `power-of-two`: two backends at random, the less loaded wins. Nearly as good as
//!   least-connections at a fraction of the cost (two counters read, not all of them).
//! * `weighted-round-robin`: nginx's smooth algorithm, `--backend HOST:PORT,weight=3` (or
//!   `weight = 3` in the config) for a backend with three times the capacity.
//! * `ip-hash`: consistent hashing (a ketama ring) of the client's IP: each client keeps its
//!   backend ("server affinity", seed 001), and removing one of N backends moves only ~1/N of
//!   the clients.
//!
//! Everything from step 8 (failover, health checks) still applies: health filters whatever
//! the strategy proposes.
//!
//! **What the Go version got wrong:** its only "smart" strategy counts calls ever made, not
//! connections open now (see [`lb::strategy::LeastCalled`]): a slow backend receives as many
//! new clients as a fast one, and a backend back from an outage is flooded until it catches up.
//!
//! **Where the code is:** the [`Step`] value below is chapter 8's with `strategies: ALL`: the
//! four new strategies are in [`lb::strategy`] (`LeastConnections`, `SmoothWeighted`,
//! `PowerOfTwo`, `IpHash`), fed by the live counts the balancer keeps ([`lb::balancer`]).
//!
//! **Try it** in three terminals, with the third server 100 ms slow:
//!
//! ```text
//! terminal 1:  cargo run --bin dummy-server -- --delay 0 --delay 0 --delay 100
//! terminal 2:  cargo run --bin 09-strategies -- --strategy least-connections \
//!                --backend 127.0.0.1:4444 --backend 127.0.0.1:4445 --backend 127.0.0.1:4446
//! terminal 3:  seq 300 | xargs -P 20 -I{} curl -s -o /dev/null -w '%{time_total}\n' \
//!                localhost:3000 | sort -n | awk '{t[NR]=$1} END {print "p50", t[int(NR/2)], "p90", t[int(NR*0.9)]}'
//! ```
//!
//! Run terminal 2 again with `--strategy round-robin` and compare the median and the 90th
//! percentile: round robin sends a third of the requests to the slow server, so its p90 is the
//! slow server's 100 ms, while least-connections keeps both low. The slowest few requests do not
//! differ much (each strategy tries the slow server sometimes); `cargo bench --bench
//! slow_backend` does the comparison for every strategy, with percentiles.

use std::process::ExitCode;

use clap::Parser;
use lb::app::{self, Common, HealthArgs, Step};
use lb::cli;
use lb::strategy::StrategyKind;

/// Step 9: least-connections, weighted round robin, power of two choices, consistent ip-hash.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// How to choose the backend of each new connection [default: round-robin].
    #[arg(long, value_parser = StrategyKind::parser(StrategyKind::ALL))]
    strategy: Option<StrategyKind>,
    #[command(flatten)]
    health: HealthArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    let step = Step {
        name: "09-strategies",
        strategies: StrategyKind::ALL,
        health: Some(args.health),
        production: None,
    };
    cli::report(app::run(step, args.common, args.strategy).await)
}
