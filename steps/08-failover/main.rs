//! # Step 8: failover and health checks
//!
//! Beyond the tutorial. The Go code ends at chapter 7 with `panic(err)` when a backend does not
//! answer: one dead server takes the whole balancer down. Real balancers (HAProxy, nginx,
//! Envoy) do three things instead, and this step does all three (see [`lb::health`]):
//!
//! **What it adds:**
//! * **Retry elsewhere.** A connect that fails or times out (`--connect-timeout`, 3 s) is
//!   retried on the next backend the strategy offers, each backend at most once per client. The
//!   client never notices while any backend is up; with none up it is closed at once.
//! * **Passive health.** A backend that fails `--fail-after` connects in a row (3) is skipped
//!   for 1 s, then 2 s, 4 s … up to 30 s while it keeps failing: a dead backend stops costing
//!   every client a failed connect.
//! * **Active health.** Every `--health-interval` (2 s; 0 turns it off) each backend is probed:
//!   a TCP connect, or `GET /health` expecting a 2xx for a backend given as
//!   `HOST:PORT,check=http`. `--fall` failures in a row (3) take it out, `--rise` successes (2)
//!   bring it back, by itself, with no restart.
//!
//! Each change of a backend's state is one log line. Health only filters the strategy's choice;
//! the strategies are chapter 7's (chapter 9 brings the ones that watch load).
//!
//! **What the Go version got wrong:** `panic` on a failed dial (the whole process exits for
//! every client), no timeout on the dial (a silent host holds the client for the kernel's two
//! minutes of SYN retries), and no memory of failure (every request pays for a dead server).
//!
//! **Where the code is:** the [`Step`] value below is chapter 7's start-up ([`lb::app::run`])
//! with `health: Some(flags)`, which turns on failover and the `[health]` section: passive
//! and active health in [`lb::health`], the retry loop in `Balancer::connect_upstream` and the
//! probes in `Balancer::check_health` ([`lb::balancer`]).
//!
//! **Try it** in four terminals (the third backend is down to begin with):
//!
//! ```text
//! terminal 1:  cargo run --bin dummy-server -- --listen 127.0.0.1:4444 --listen 127.0.0.1:4445
//! terminal 2:  cargo run --bin 08-failover -- --backend 127.0.0.1:4444 \
//!                --backend 127.0.0.1:4445,check=http --backend 127.0.0.1:4446
//! terminal 3:  while true; do curl -s localhost:3000 | head -1; sleep 0.3; done
//! terminal 4:  cargo run --bin dummy-server -- --listen 127.0.0.1:4446 --name server3
//! ```
//!
//! Every curl gets an answer from the start, although 4446 is down; terminal 2 logs it going
//! down. Start terminal 4: within a few seconds server3 is logged back up and takes its turn.
//! Stop terminal 1 with Ctrl-C: server3 answers everything. Stop terminal 4 too: the loop prints
//! nothing (`curl -sS` would show `curl: (56) Recv failure: Connection reset by peer`), and the
//! balancer keeps running for when they come back.

use std::process::ExitCode;

use clap::Parser;
use lb::app::{self, Common, HealthArgs, Step};
use lb::cli;
use lb::strategy::StrategyKind;

/// Step 8: retry on the next backend, passive and active health checks.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// How to choose the backend of each new connection [default: round-robin].
    #[arg(long, value_parser = StrategyKind::parser(StrategyKind::TUTORIAL))]
    strategy: Option<StrategyKind>,
    #[command(flatten)]
    health: HealthArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    let step = Step {
        name: "08-failover",
        strategies: StrategyKind::TUTORIAL,
        health: Some(args.health),
        production: None,
    };
    cli::report(app::run(step, args.common, args.strategy).await)
}
