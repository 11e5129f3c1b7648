//! # Step 7: the tutorial's finale
//!
//! Mirrors the Go tutorial's "Finalizing": a `type Server struct` per backend saying whether it
//! speaks TLS, one balancer over a mix of plain and TLS backends, HTTP or HTTPS in front.
//!
//! **What it adds:** backends given as `HOST:PORT` (plain) or `tls://HOST:PORT`; a TLS listener
//! when `--cert`/`--key` (or the config's `[tls]`) are given; the strategies of the tutorial (`round-robin`,
//! `random`, and `least-called`, the Go tutorial's own algorithm, to compare); and a TOML file
//! (`--config`, see [`lb::config`]) as an alternative to flags, which override it. The
//! start-up itself lives in [`lb::app`], because steps 08, 09 and 10 (`tcp-lb`) reuse it whole.
//!
//! With no backend configured at all it starts the Go finale's topology inside the process:
//! server1 on HTTPS, server2 on HTTP, server3 on HTTPS, their certificates from a CA made in
//! memory at start-up. `cargo run --release` (step 10's `tcp-lb`, which keeps this) runs that:
//! it works on a fresh clone, with no certificate files.
//!
//! **What the Go version got wrong:** the servers are constants compiled in; each TLS dial
//! re-reads the certificate files; the "RoundRobin" is least-cumulative-calls over a map
//! mutated without a lock; and everything from steps 2–6 (1024-byte reads, shared buffers,
//! panics) is still there.
//!
//! **Where the code is:** this `main.rs` is a [`Step`] value handed to [`lb::app::run`], the
//! start-up steps 07 to 12 share ([`lb::app`]: flags over file over defaults, the built-in
//! backends, TLS configs built once). `health: None, production: None` switch chapters 8 and 10
//! off; `strategies: TUTORIAL` limits `--strategy` and the file's `strategy` to this chapter's
//! three. The file is [`lb::config`]; the balancer it builds is [`lb::balancer`].
//!
//! **Try it:**
//!
//! ```text
//! terminal 1:  cargo run --release --bin 07-final
//! terminal 2:  for i in 1 2 3; do curl -s localhost:3000 | head -1; done
//!
//! with files:  cargo run --bin certs
//!              cargo run --bin dummy-server -- --tls --listen 127.0.0.1:4444 --name server1 \
//!                --listen 127.0.0.1:4446 --name server3
//!              cargo run --bin dummy-server -- --listen 127.0.0.1:4445 --name server2
//!              cargo run --bin 07-final -- --config examples/07-final.toml
//!              curl --cacert certs/ca.pem https://localhost:3000
//! ```

use std::process::ExitCode;

use clap::Parser;
use lb::app::{self, Common, Step};
use lb::cli;
use lb::strategy::StrategyKind;

/// Step 7: plain and TLS backends, optional TLS listener, config file or flags.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// How to choose the backend of each new connection [default: round-robin].
    #[arg(long, value_parser = StrategyKind::parser(StrategyKind::TUTORIAL))]
    strategy: Option<StrategyKind>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    let step = Step {
        name: "07-final",
        strategies: StrategyKind::TUTORIAL,
        health: None,
        production: None,
    };
    cli::report(app::run(step, args.common, args.strategy).await)
}
