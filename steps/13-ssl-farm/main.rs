//! # Step 13: `ssl-farm`, seed 000's load-balanced SSL farm, four tiers from one command
//!
//! Seed 000 describes how a site serves HTTPS to more users than one machine can handshake
//! with: a **layer-4 balancer** spreads TLS connections, untouched, over a farm of cheap
//! **TLS offloaders**; they decrypt and pass plain HTTP to a **layer-7 balancer** that pins each
//! user to an **application server** by a cookie. Every piece already exists: chapter 10's
//! `tcp-lb` is tiers 1 and 2, chapter 12's `http-lb` tier 3, `dummy-server` tier 4. This step
//! starts them as separate processes, each tier on its own loopback /24 so each looks like its
//! own host, wires them as the seed says, and changes the farm while it runs:
//!
//! * the client's address crosses two PROXY v2 headers (tier 1 → 2 → 3) and reaches the
//!   application as `X-Forwarded-For`; the second header also says "the client spoke TLS"
//!   (the SSL TLV, [`lb::proxy_protocol`]), so tier 3 says `X-Forwarded-Proto: https` and
//!   marks its cookie `Secure`;
//! * every offloader reads one ticket-key file ([`lb::tickets`]), so a returning client that
//!   tier 1 sends to *another* offloader still resumes its TLS session;
//! * commands on standard input add and remove members: the tier in front is reconfigured and
//!   reloaded (SIGHUP) first, then the member drains (SIGTERM), so nothing in flight is cut;
//! * an offloader killed with ClientHellos in its sockets loses none of them: tier 1 keeps a
//!   connection's first bytes until its offloader answers, and gives them to another if it
//!   closes without a word (`retry-unanswered`, [`lb::relay::until_answered`]);
//! * `ssl-farm` itself killed (`kill -9`) leaves no orphan: each child watches a pipe only the
//!   farm holds (`LB_STOP_ON_STDIN_EOF`, [`lb::cli::shutdown_signal`]).
//! * a page for the whole farm (`--dashboard`, `dashboard.rs`): the tiers as columns, what a
//!   new TLS connection costs each one in CPU, and the path one request takes through them.
//!
//! The config files it writes under `--state-dir` are the deployment: on four machines, the
//! same files with real addresses (README, chapter 13).
//!
//! **What the Go version got wrong:** it has one process doing everything; its TLS
//! termination cannot be scaled out, and nothing behind it learns who the client was.
//!
//! **Try it** in two terminals:
//!
//! ```text
//! terminal 1:  cargo build --release && cargo run --release --bin ssl-farm
//! terminal 2:  for i in $(seq 5); do curl -s --cacert target/ssl-farm/ca.pem -c jar -b jar \
//!                  https://localhost:3000/ | head -1; done
//!              kill -9 <an offloader's PID from the table>; curl … again: still answered
//!              open the `open http://…/` address it printed: the farm's page
//! terminal 1:  add offloader     remove app 2     rotate keys     status     stop
//! ```

mod dashboard;
mod farm;

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use farm::{Exit, Farm, Tier};
use lb::cli;
use tokio::io::AsyncBufReadExt as _;
use tokio::signal::unix::{SignalKind, signal};

/// ssl-farm: the four-tier SSL farm of seed 000 on one machine, as real processes.
#[derive(Parser)]
#[command(name = "ssl-farm", version)]
struct Args {
    /// Tier 1's address: where clients connect (HTTPS).
    #[arg(long, value_name = "ADDR", default_value = lb::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// TLS offloaders (tier 2).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=254))]
    offloaders: u32,
    /// http-lb instances (tier 3), sharing one affinity secret.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=254))]
    l7: u32,
    /// Application servers (tier 4).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=254))]
    apps: u32,
    /// Where the certificates, keys, configs, logs and farm.json go.
    #[arg(long, value_name = "DIR", default_value = "target/ssl-farm")]
    state_dir: PathBuf,
    /// The certificate's key: `rsa` shows the economics seed 000 was written for (a full
    /// handshake fifty times dearer).
    #[arg(long, value_name = "TYPE", value_enum, default_value_t = lb::certs::LeafKey::Ecdsa)]
    key_type: lb::certs::LeafKey,
    /// Where tcp-lb, http-lb and dummy-server are [default: beside ssl-farm].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// What tier 3 speaks to the applications: `http1`, or `h2c` (HTTP/2 in clear text, which
    /// gRPC calls need end to end; chapter 17).
    #[arg(long, value_name = "PROTOCOL", value_parser = ["http1", "h2c"], default_value = "http1")]
    app_protocol: String,
    /// The farm's page: the tiers as columns, each member's state and load, the CPU a new TLS
    /// connection costs each tier, the path of one request. Printed at start as the second
    /// `listening on` line; port 0 picks a free one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    dashboard: SocketAddr,
}

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return cli::report(Err(anyhow::anyhow!("cannot start the runtime: {e}"))),
    };
    let result = runtime.block_on(run(args));
    // Not a plain drop: the read of standard input runs on a blocking thread that no one can
    // interrupt, and dropping the runtime would wait for it, that is, for a line that may
    // never come.
    runtime.shutdown_background();
    cli::report(result)
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Caught before the first child starts: a Ctrl-C during start-up must stop the children
    // already started, not kill ssl-farm and leave them running.
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let bins = match args.bin_dir {
        Some(dir) => dir,
        None => std::env::current_exe()
            .context("cannot find ssl-farm's own path")?
            .parent()
            .context("ssl-farm's path has no folder")?
            .to_owned(),
    };
    // Bound before any child starts: a dashboard address in use is a start-up error that
    // leaves nothing running.
    let dashboard = lb::net::listen(args.dashboard)?;
    let (exits, mut exited) = tokio::sync::mpsc::unbounded_channel();
    let mut farm = Farm::new(&args.state_dir, bins, args.listen, args.key_type, exits)?;
    farm.apps_h2c = args.app_protocol == "h2c";

    // Back to front: each tier starts with the tier behind it already listening.
    let sizes = [
        (Tier::App, args.apps),
        (Tier::L7, args.l7),
        (Tier::Offload, args.offloaders),
        (Tier::L4, 1),
    ];
    let start = async {
        for (tier, n) in sizes {
            for _ in 0..n {
                farm.start(tier).await?;
            }
        }
        anyhow::Ok(())
    };
    let started = tokio::select! {
        result = start => result,
        _ = interrupt.recv() => Err(anyhow::anyhow!("interrupted while starting")),
        _ = terminate.recv() => Err(anyhow::anyhow!("terminated while starting")),
    };
    if let Err(e) = started {
        farm.stop_all().await;
        return Err(e);
    }

    println!("listening on {}", farm.entry());
    let page = dashboard::Dashboard::new(farm.roster(), farm.entry(), &farm.dir.join("ca.pem"));
    let page = match page {
        Ok(page) => page,
        Err(e) => {
            farm.stop_all().await;
            return Err(e.context("cannot start the dashboard"));
        }
    };
    let page_addr = lb::net::announce(&dashboard)?;
    tokio::spawn(dashboard::run(dashboard, std::sync::Arc::new(page)));
    print_table(&farm);
    print_try(&farm, page_addr);

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut draining = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            Some(exit) = exited.recv() => {
                if on_exit(&mut farm, &exit).await.is_break() {
                    farm.stop_all().await;
                    anyhow::bail!("tier 1 ({}) exited: {}; the farm cannot serve", exit.pid, exit.how);
                }
            }
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(line)) => match command(&mut farm, line.trim()).await {
                    Ok(Reply::Said(text)) => tracing::info!("{text}"),
                    Ok(Reply::Draining(text, task)) => {
                        tracing::info!("{text}");
                        draining.spawn(async move { let _ = task.await; });
                    }
                    Ok(Reply::Stop) => break,
                    Err(e) => tracing::error!("{e:#}"),
                },
                // No terminal (started in the background, stdin from /dev/null): the farm
                // keeps serving; signals stop it.
                _ => stdin_open = false,
            },
            Some(_) = draining.join_next(), if !draining.is_empty() => {}
        }
    }
    tracing::info!("stopping the farm, front to back");
    farm.stop_all().await;
    while draining.join_next().await.is_some() {}
    tracing::info!("stopped");
    Ok(())
}

const COMMANDS: &str =
    "commands: add offloader|l7|app, remove offloader|l7|app N, rotate keys, status, stop";

/// What a command did.
enum Reply {
    Said(String),
    /// A member removed from its tier and now draining in this task.
    Draining(String, tokio::task::JoinHandle<()>),
    Stop,
}

async fn command(farm: &mut Farm, line: &str) -> anyhow::Result<Reply> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let tier = |word: &str| {
        Tier::parse(word).with_context(|| {
            format!("no tier `{word}`: offloader, l7 or app (tier 1 is one process)")
        })
    };
    match words.as_slice() {
        [] => Ok(Reply::Said(String::new())),
        ["add", what] => Ok(Reply::Said(farm.add(tier(what)?).await?)),
        ["remove", what, n] => {
            let n: u32 = n
                .parse()
                .with_context(|| format!("`{n}` is not a number from the table"))?;
            let (text, task) = farm.remove(tier(what)?, n).await?;
            Ok(Reply::Draining(text, task))
        }
        ["rotate", "keys"] => Ok(Reply::Said(farm.rotate_keys().await?)),
        ["status" | "table"] => {
            print_table(farm);
            Ok(Reply::Said(String::new()))
        }
        ["stop" | "quit" | "exit"] => Ok(Reply::Stop),
        ["help"] => Ok(Reply::Said(COMMANDS.to_owned())),
        _ => anyhow::bail!("unknown command `{line}`; {COMMANDS}"),
    }
}

/// Reports a member that exited unexpectedly, and takes it out of the farm. `Break` when it
/// was tier 1: without it nothing reaches the farm.
async fn on_exit(farm: &mut Farm, exit: &Exit) -> std::ops::ControlFlow<()> {
    match farm.forget(exit) {
        Ok(true) => {}
        Ok(false) => return std::ops::ControlFlow::Continue(()),
        Err(e) => tracing::error!("cannot rewrite farm.json: {e:#}"),
    }
    if exit.tier == Tier::L4 {
        return std::ops::ControlFlow::Break(());
    }
    // Reported first: the reload of the tier in front may take a while, and until it lands
    // that tier's retries and health checks are what keep the farm answering.
    let left = farm.count(exit.tier);
    tracing::error!(
        pid = exit.pid,
        "{} {} exited unexpectedly ({}); {left} left in its tier{}",
        exit.tier.key(),
        exit.number,
        exit.how,
        if left == 0 {
            ": the farm cannot answer until one is added"
        } else {
            ""
        }
    );
    if let Err(e) = farm.reconfigure_front(exit.tier).await {
        tracing::error!("could not reconfigure the tier in front: {e:#}");
    }
    std::ops::ControlFlow::Continue(())
}

/// The table of processes, on stdout: what the chapter is about.
fn print_table(farm: &Farm) {
    let cwd = std::env::current_dir().unwrap_or_default();
    let short = |p: &std::path::Path| p.strip_prefix(&cwd).unwrap_or(p).display().to_string();
    let mut out = format!(
        "\n{:<8} {:<9} {:<21} {:<8} {:<21} {:<34} {}\n",
        "tier", "process", "address", "pid", "admin", "config", "log"
    );
    for m in farm.members() {
        out.push_str(&format!(
            "{:<8} {:<9} {:<21} {:<8} {:<21} {:<34} {}\n",
            m.tier.key(),
            m.name,
            m.address.to_string(),
            m.pid,
            m.admin.map_or("-".to_owned(), |a| a.to_string()),
            m.config.as_deref().map_or("-".to_owned(), short),
            short(&m.log),
        ));
    }
    print!("{out}");
}

fn print_try(farm: &Farm, dashboard: SocketAddr) {
    let ca = farm.dir.join("ca.pem");
    let addr = farm.entry();
    let url = match addr.ip() {
        ip if ip.is_loopback() => format!("https://localhost:{}/", addr.port()),
        ip => format!("https://{ip}:{}/", addr.port()),
    };
    let mut text = format!(
        "\nTry (state and logs in {}):\n  \
         curl --cacert {} -c jar -b jar {url}      same app every time, your address in X-Forwarded-For\n  \
         kill -9 <an offload PID>; curl again                 still answered\n  \
         curl http://<an admin address>/metrics               each tier's numbers\n  \
         {page:<53}the farm's page\n\
         Commands here: add offloader|l7|app, remove offloader|l7|app N, rotate keys, status, stop\n",
        farm.dir.display(),
        ca.display(),
        page = format!("open http://{dashboard}/"),
    );
    if !std::io::stdin().is_terminal() {
        text.push_str(
            "(standard input is not a terminal: commands are read from it all the same)\n",
        );
    }
    print!("{text}");
}
