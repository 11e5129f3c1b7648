//! # Step 12: `http-lb`, a layer-7 balancer with cookie affinity
//!
//! Beyond the tutorial, toward seed 000's third tier. Up to step 10 the balancer never reads
//! what it forwards; `http-lb` reads every HTTP/1.1 request, so that it can:
//!
//! * balance **each request** on its own (any chapter-9 strategy) over **pooled keep-alive
//!   connections** to the backends ([`lb::http::pool`]), bodies streaming both ways
//!   ([`lb::http::body`]): a 1 GiB upload costs a few buffers;
//! * keep a user on one backend with an **affinity cookie** ([`lb::http::affinity`]) whose value
//!   is a keyed hash of the backend, never its address or position, so any number of
//!   instances with the same secret agree with no shared state; a cookie naming a backend that
//!   is down is redispatched and re-issued;
//! * forward as **RFC 9110** asks ([`lb::http::forward`]): hop-by-hop fields removed,
//!   `X-Forwarded-For`/`-Proto`/`-Host` added, trusted only from `--trusted-proxy` networks;
//! * serve the **common request on its own HTTP/1.1 path** (`lb::http`'s `h1` codec:
//!   `httparse`, one task owning the pooled backend connection for the request), and
//!   everything else through hyper, which takes over a connection with the bytes already read:
//!   hyper's path alone cost 1.17× nginx's CPU per kept-alive request and 20 KiB per idle
//!   client, this one is level with nginx at 2.6 KiB (`LB_HTTP_FAST=off` to compare);
//! * tunnel **upgrades** (WebSocket) after a `101`;
//! * answer failures in HTTP ([`lb::http::balancer`]): 503 no backend up, 502 unreachable, 504
//!   too slow (`--response-timeout`), 413 over `--max-body`, 431 head over `--max-head`, 400
//!   malformed, 408 head too slow (`--header-timeout`).
//!
//! Everything around the requests is chapter 10's, reused as it is (the `Step` below switches
//! on chapter 8's health checks and chapter 10's operator features in [`lb::app`]): the
//! config file, limits and queue, allow/deny, PROXY protocol in (`--accept-proxy`), TLS
//! termination (`--cert`/`--key`), SIGHUP reload, SIGTERM drain, `--admin` metrics.
//!
//! **What the Go version got wrong:** it has no layer 7 at all; its byte proxy cannot see a
//! request, so it can neither keep a user on a server nor tell the server who the user is.
//!
//! **Try it** in three terminals:
//!
//! ```text
//! terminal 1:  cargo run --bin dummy-server
//! terminal 2:  cargo run --bin http-lb -- --backend 127.0.0.1:4444 --backend 127.0.0.1:4445 --backend 127.0.0.1:4446
//! terminal 3:  for i in 1 2 3; do curl -s -c jar -b jar localhost:8080 | head -1; done
//!              for i in 1 2 3; do curl -s localhost:8080 | head -1; done
//! ```
//!
//! With the cookie jar every answer comes from the same server; without it they rotate.

use std::process::ExitCode;

use clap::Parser;
use lb::app::{Common, HealthArgs, ProductionArgs, Step};
use lb::cli;
use lb::http::app::{self, HttpArgs};
use lb::strategy::StrategyKind;

/// http-lb: an HTTP/1.1 load balancer with cookie affinity. Flags override the config file.
#[derive(Parser)]
// `--listen`'s help is `Common`'s, written for tcp-lb's default; http-lb's is 8080.
#[command(
    name = "http-lb",
    version,
    mut_arg("listen", |a| a.help("Address to listen on [default: 127.0.0.1:8080]"))
)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// How to choose the backend of a request without a valid affinity cookie [default:
    /// round-robin].
    #[arg(long, value_parser = StrategyKind::parser(StrategyKind::ALL))]
    strategy: Option<StrategyKind>,
    #[command(flatten)]
    health: HealthArgs,
    #[command(flatten)]
    production: ProductionArgs,
    #[command(flatten)]
    http: HttpArgs,
}

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    let step = Step {
        name: "http-lb",
        strategies: StrategyKind::ALL,
        health: Some(args.health),
        production: Some(args.production),
    };
    cli::report(app::main(step, args.common, args.strategy, args.http))
}
