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
//! is the order they run in: [`main`], [`runtime`], [`run`], and `serve`, the one start-up
//! both `tcp-lb` and `http-lb` (chapter 12) go through: a `Serving` says what differs.

mod flags;
mod plan;
mod reload;
mod sources;

pub use flags::{Common, HealthArgs, ProductionArgs};
pub(crate) use plan::{Layer, Plan, Setup};
pub(crate) use reload::{follow_registry, hangups, on_sighup, reload_config};
pub use sources::DEFAULT_ETCD_PREFIX;
pub(crate) use sources::{follow_etcd, start_etcd};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::server::Server;
use crate::strategy::StrategyKind;
use crate::{admin, cli, net};

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
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder
        .enable_all()
        // Chapter 17: HTTP/2 frames held for the moment a thread would sleep go out then.
        .on_thread_park(crate::http::h2::held::at_park)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))
}

/// Starts the balancer the flags and config describe, and serves until Ctrl-C or SIGTERM.
/// Step 10 then drains, and reloads its configuration on SIGHUP while it serves.
pub async fn run(step: Step, common: Common, strategy: Option<StrategyKind>) -> anyhow::Result<()> {
    serve(Tcp, Setup::new(step, common, strategy, Layer::Tcp)).await
}

/// What differs between the two servers the shared start-up runs: `tcp-lb`'s [`Server`] and
/// `http-lb`'s `HttpServer` (chapter 12). Each plans a configuration its own way and takes
/// it its own way; the order of everything else (bind, announce, follow the registry and
/// etcd, reload, drain) is [`serve`]'s, written once.
pub(crate) trait Serving: Send + Sync + 'static {
    /// The server this layer runs; the admin listener reports on it.
    type Server: admin::Status;
    /// One configuration, planned: the balancer, and whatever else the server takes.
    type Plan: Send + 'static;
    /// Plans from the flags and `config`: at start, on SIGHUP, and when the backends change.
    fn plan(
        self: Arc<Self>,
        setup: Arc<Setup>,
        config: Config,
    ) -> impl Future<Output = anyhow::Result<Self::Plan>> + Send;
    /// The line logged when a plan takes effect.
    fn summary(&self, plan: &Self::Plan) -> String;
    /// The server, on the first plan.
    fn start(&self, setup: &Setup, plan: Self::Plan) -> Arc<Self::Server>;
    /// Puts a later plan in place; `reload` counts it as a reload (SIGHUP), otherwise it is
    /// the registry's or etcd's change (chapters 14 and 15).
    fn put(server: &Self::Server, plan: Self::Plan, reload: bool);
    /// Counts a reload that was refused.
    fn reload_failed(server: &Self::Server);
    /// Serves `listener` until Ctrl-C or SIGTERM.
    fn run(server: &Arc<Self::Server>, listener: TcpListener) -> impl Future<Output = ()>;
    /// After [`Serving::run`], in step 10 and on: waits for the connections in flight, and
    /// returns how many were left.
    fn drain(server: &Self::Server) -> impl Future<Output = usize>;
}

/// `tcp-lb` and steps 07-09: a plan is a balancer.
struct Tcp;

impl Serving for Tcp {
    type Server = Server;
    type Plan = Plan;

    async fn plan(self: Arc<Self>, setup: Arc<Setup>, config: Config) -> anyhow::Result<Plan> {
        setup.plan(config).await
    }
    fn summary(&self, plan: &Plan) -> String {
        plan.summary.clone()
    }
    fn start(&self, _: &Setup, plan: Plan) -> Arc<Server> {
        Server::new(plan.balancer)
    }
    fn put(server: &Server, plan: Plan, reload: bool) {
        match reload {
            true => server.reload(plan.balancer),
            false => server.replace(plan.balancer),
        }
    }
    fn reload_failed(server: &Server) {
        server.reload_failed();
    }
    async fn run(server: &Arc<Server>, listener: TcpListener) {
        server.run(listener, cli::shutdown_signal()).await;
    }
    async fn drain(server: &Server) -> usize {
        server.drain(cli::shutdown_signal()).await
    }
}

/// The start-up both layers share, in order: bind (a port in use fails the start before any
/// backend is touched), list etcd, plan, announce, then serve; from step 10 on, also follow
/// the registry, reload on SIGHUP, and drain at the end.
pub(crate) async fn serve<L: Serving>(layer: L, setup: Setup) -> anyhow::Result<()> {
    let production = setup.step.production.is_some();
    let (layer, setup) = (Arc::new(layer), Arc::new(setup));
    let config = setup.load_config()?;
    // Bound before the built-in backends start: a port in use fails the start on its own.
    let listen = setup.listen(&config)?;
    let listener = net::listen(listen)?;
    if setup.client_speaks_first()
        && let Err(e) = net::defer_accept(&listener)
    {
        // A kernel without it serves as well, at the cost of the wake-ups it saves.
        tracing::warn!("cannot set TCP_DEFER_ACCEPT on {listen}: {e}");
    }
    let admin = setup.admin(&config);
    let admin_listener = admin.map(net::listen).transpose()?;
    let etcd = start_etcd(&setup, &config).await?;
    let plan = Arc::clone(&layer).plan(Arc::clone(&setup), config).await?;
    let summary = layer.summary(&plan);
    let server = layer.start(&setup, plan);
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
    tracing::info!("{summary}");
    follow_etcd(&setup, etcd);
    if production {
        let (layer, server) = (Arc::clone(&layer), Arc::clone(&server));
        tokio::spawn(follow_registry(Arc::clone(&setup), move |setup, config| {
            let (layer, server) = (Arc::clone(&layer), Arc::clone(&server));
            async move {
                let plan = Arc::clone(&layer).plan(setup, config).await?;
                let summary = layer.summary(&plan);
                L::put(&server, plan, false);
                Ok(summary)
            }
        }));
    }
    if let Some(hangups) = hangups {
        let (layer, server, setup) = (Arc::clone(&layer), Arc::clone(&server), Arc::clone(&setup));
        tokio::spawn(on_sighup(hangups, move || {
            let (layer, server, setup) =
                (Arc::clone(&layer), Arc::clone(&server), Arc::clone(&setup));
            async move {
                let _applying = setup.applying.lock().await;
                let planning = Arc::clone(&layer);
                let planned = reload_config(&setup, (listen, admin), move |setup, config| {
                    planning.plan(setup, config)
                })
                .await;
                match planned {
                    Ok(plan) => {
                        let summary = layer.summary(&plan);
                        L::put(&server, plan, true);
                        tracing::info!("configuration reloaded: {summary}");
                    }
                    Err(e) => {
                        L::reload_failed(&server);
                        tracing::error!("reload failed, keeping the running configuration: {e:#}");
                    }
                }
            }
        }));
    }
    L::run(&server, listener).await;
    if production && L::drain(&server).await == 0 {
        tracing::info!("stopped");
    }
    Ok(())
}
