//! # Step 10: `tcp-lb`, the balancer an operator runs
//!
//! Beyond the tutorial. Everything from steps 7 to 9 (plain and TLS on either side, the config
//! file, failover and health checks, every strategy), plus what running it for real asks for
//! (seed 002's list, and what operators expect of HAProxy or nginx):
//!
//! **What it adds:**
//! * **Timeouts** on every wait a peer controls: connect (3 s), the client's TLS handshake
//!   (10 s), and idle: a pair where neither side sent a byte for `--idle-timeout` (300 s) is
//!   closed, so a vanished client does not hold two sockets forever.
//! * **Limits**: `--max-connections` (by default what the open-file limit allows), beyond which
//!   clients wait in a short queue (`--queue 128`, `--queue-timeout 5`) or, with `--queue 0`,
//!   are closed at once; `--max-per-client`; `--allow`/`--deny` lists of CIDRs
//!   ([`lb::limits`]).
//! * **Graceful stop**: on SIGTERM or Ctrl-C it stops accepting and lets connections in flight
//!   finish for up to `--drain-timeout` (30 s), then closes the rest and exits 0. A second
//!   Ctrl-C stops at once.
//! * **Reload** on SIGHUP: the config file is read again (backends, strategy, health, limits,
//!   timeouts, certificates); established connections are not touched, and a file with a
//!   mistake is refused with the error logged while the running configuration stays.
//! * **PROXY protocol** ([`lb::proxy_protocol`]): `proxy-protocol = "v2"` on a backend sends it
//!   the client's real address; `--accept-proxy` reads it from a proxy in front of us, and the
//!   limits and logs then see the real client.
//! * **Observability**: `--admin ADDR` serves `/metrics` (Prometheus) and `/health`; one
//!   access-log line per connection with client, backend, bytes, duration and how it ended
//!   (`end=done`, `idle-timeout`, `client-error`, `max-connections`, `denied`, …).
//! * **Speed** (chapter 11, measured beside HAProxy and nginx by `benches/compare/run.sh`):
//!   `--workers N` threads (`1` is a one-thread runtime, for a proxy pinned to one CPU), plain
//!   TCP that borrows a buffer only while bytes are in flight, bulk streams moved by
//!   `splice(2)` without entering the process ([`lb::splice`]), and TLS handshakes at about
//!   half the crypto they cost on `ring` alone ([`lb::tls::provider`]).
//!
//! **What the Go version got wrong:** no timeout anywhere (a silent client holds its goroutine
//! and two sockets forever), no limit (past the open-file limit every `Accept` fails, and its
//! loop logs and retries at full speed), `os.Exit` on a signal (every transfer cut), and a
//! restart as the only way to change a backend.
//!
//! **Where the code is:** the [`Step`] value below switches on `production`, chapter 10's flags
//! ([`lb::app::ProductionArgs`]) and config keys: the accept loop that outlives a configuration
//! (reload, drain) in [`lb::server`], limits and the queue in [`lb::limits`], PROXY protocol in
//! [`lb::proxy_protocol`], counters in [`lb::metrics`], the admin listener in [`lb::admin`];
//! chapter 10 and 11's relay and splice path in [`lb::relay`] and `lb::splice`.
//!
//! **Try it** in two terminals (`$LB` is the PID of this `tcp-lb`, not of every one on the
//! machine):
//!
//! ```text
//! terminal 1:  cargo run --bin dummy-server
//! terminal 2:  cargo build --release
//!              target/release/tcp-lb --config examples/10-production.toml & LB=$!
//!              curl -s localhost:9000/metrics | grep backend_connections_total
//!              curl -s localhost:3000/delay/3000 | head -1 & sleep 1; kill -TERM $LB; wait
//! ```
//!
//! The delayed answer still arrives after the SIGTERM (the log shows the drain). Start it again
//! the same way, edit the file (remove a backend), `kill -HUP $LB`, and watch the log.

use std::process::ExitCode;

use clap::Parser;
use lb::app::{self, Common, HealthArgs, ProductionArgs, Step};
use lb::cli;
use lb::strategy::StrategyKind;

/// tcp-lb: a TCP and TLS load balancer. Flags override the config file (--config).
#[derive(Parser)]
#[command(name = "tcp-lb", version)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// How to choose the backend of each new connection [default: round-robin].
    #[arg(long, value_parser = StrategyKind::parser(StrategyKind::ALL))]
    strategy: Option<StrategyKind>,
    #[command(flatten)]
    health: HealthArgs,
    #[command(flatten)]
    production: ProductionArgs,
}

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    let step = Step {
        name: "tcp-lb",
        strategies: StrategyKind::ALL,
        health: Some(args.health),
        production: Some(args.production),
    };
    cli::report(app::main(step, args.common, args.strategy))
}
