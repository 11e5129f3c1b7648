//! The start-up shared by the last steps (07 on): flags, config file, backends, TLS, and the
//! balancer they add up to.
//!
//! Step 07 wrote this in its `main.rs`; steps 08 and 09 add one feature each (failover and
//! health, then the load-aware strategies) to the same flags and file. Keeping the start-up
//! here lets each of those `main.rs` files show only what its chapter adds, and keeps every
//! step reading flags and file the same way: flags win over the file, the file over defaults.
//!
//! Its rooms, by idea: `flags.rs` (what each step adds to the command line), `plan.rs` (flags
//! and file turned into a balancer, again on every reload), `reload.rs` (SIGHUP, and the
//! registry's changes, chapter 14), `sources.rs` (backends from etcd, chapter 15). What is here
//! is the order they run in: [`main`], [`runtime`], [`run`].

mod flags;
mod plan;
mod reload;
mod sources;

pub use flags::{Common, HealthArgs, ProductionArgs};
pub(crate) use plan::{Layer, Plan, Setup};
pub(crate) use reload::{follow_registry, hangups, on_sighup, reload_config};
pub use sources::DEFAULT_ETCD_PREFIX;
pub(crate) use sources::{follow_etcd, start_etcd};

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::server::Server;
use crate::strategy::StrategyKind;
use crate::{admin, cli, net};

use reload::reload_on_sighup;

pub use crate::config::MAX_WORKERS;

/// How long a SIGHUP reload may take (reading files, resolving backend names) before it is
/// given up and the running configuration kept.
pub const RELOAD_LIMIT: Duration = Duration::from_secs(10);

/// How long in-flight connections get after SIGTERM unless configured.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may be quiet both ways unless configured.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What a step brings to the shared start-up.
pub struct Step {
    /// The binary's name, for messages.
    pub name: &'static str,
    /// The strategies this step's chapter has introduced.
    pub strategies: &'static [StrategyKind],
    /// `Some` from step 08 on: failover and health, with these flags.
    pub health: Option<HealthArgs>,
    /// `Some` in step 10: limits, timeouts, drain, reload, PROXY protocol, admin listener.
    pub production: Option<ProductionArgs>,
}

/// `main` for the steps that pick their thread count (tcp-lb): builds the runtime the flags
/// and config ask for, then [`run`]s on it.
///
/// One worker is tokio's current-thread runtime: accept loop, relays, health checks and the
/// admin listener all take turns on the main thread, with no work stealing and no cross-thread
/// wake-ups, which is what a proxy pinned to one CPU wants (chapter 11 measures it). More
/// workers is the multi-thread runtime with that many threads.
pub fn main(step: Step, common: Common, strategy: Option<StrategyKind>) -> anyhow::Result<()> {
    runtime(&step, &common)?.block_on(run(step, common, strategy))
}

/// The runtime `--workers` (or the config's `workers`) asks for; see [`main`].
pub fn runtime(step: &Step, common: &Common) -> anyhow::Result<tokio::runtime::Runtime> {
    // A file that does not load is reported once the runtime runs (`Setup::load_config`), in
    // the words of the step that reads it.
    let configured = common
        .config
        .as_ref()
        .and_then(|path| Config::load(path).ok()?.workers);
    let flag = step.production.as_ref().and_then(|p| p.workers);
    let workers = flag.map(usize::from).or(configured);
    match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
    .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))
}

/// Starts the balancer the flags and config describe, and serves until Ctrl-C or SIGTERM.
/// Step 10 then drains, and reloads its configuration on SIGHUP while it serves.
pub async fn run(step: Step, common: Common, strategy: Option<StrategyKind>) -> anyhow::Result<()> {
    let production = step.production.is_some();
    let setup = Arc::new(Setup::new(step, common, strategy, Layer::Tcp));
    let config = setup.load_config()?;
    // Bound before the built-in backends start: a port in use fails the start on its own.
    let listen = setup.listen(&config)?;
    let listener = net::listen(listen)?;
    let admin = setup.admin(&config);
    let admin_listener = admin.map(net::listen).transpose()?;
    let etcd = start_etcd(&setup, &config).await?;
    let plan = setup.plan(config).await?;

    let server = Server::new(plan.balancer);
    // Before the `listening on` line: see `Hangups`.
    let hangups = production.then(hangups);
    net::announce(&listener)?;
    if let Some(admin) = admin_listener {
        net::announce(&admin)?;
        tokio::spawn(admin::run(
            admin,
            Arc::clone(&server),
            setup.sources.clone(),
        ));
    }
    tracing::info!("{}", plan.summary);
    follow_etcd(&setup, etcd);
    if production {
        let (server, following) = (Arc::clone(&server), Arc::clone(&setup));
        tokio::spawn(follow_registry(following, move |setup, config| {
            let server = Arc::clone(&server);
            async move {
                let plan = setup.plan(config).await?;
                server.replace(plan.balancer);
                Ok(plan.summary)
            }
        }));
    }
    if let Some(hangups) = hangups {
        tokio::spawn(reload_on_sighup(
            hangups,
            Arc::clone(&setup),
            Arc::clone(&server),
            (listen, admin),
        ));
    }
    server.run(listener, cli::shutdown_signal()).await;
    if production {
        let left = server.drain(cli::shutdown_signal()).await;
        if left == 0 {
            tracing::info!("stopped");
        }
    }
    Ok(())
}
