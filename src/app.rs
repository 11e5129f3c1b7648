//! The start-up shared by the last steps (07 on): flags, config file, backends, TLS, and the
//! balancer they add up to.
//!
//! Step 07 wrote this in its `main.rs`; steps 08 and 09 add one feature each (failover and
//! health, then the load-aware strategies) to the same flags and file. Keeping the start-up
//! here lets each of those `main.rs` files show only what its chapter adds, and keeps every
//! step reading flags and file the same way: flags win over the file, the file over defaults.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::backend::{self, Backend, BackendSpec, DEFAULT_CONNECT_TIMEOUT};
use crate::balancer::{Balancer, Options};
use crate::config::{Config, HealthSection};
use crate::health::{Checks, Failover};
use crate::limits::{self, Cidr, Limits};
use crate::registry::Registry;
use crate::server::Server;
use crate::strategy::StrategyKind;
use crate::{admin, cli, dummy, net, tls};

/// The flags of step 07, shared by every later step.
#[derive(clap::Args, Clone)]
pub struct Common {
    /// TOML configuration file; flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:3000].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// A backend: HOST:PORT for plain TCP, tls://HOST:PORT for TLS; repeat for several.
    /// Later steps take options after a comma (08: ,check=http; 09: ,weight=N; tcp-lb:
    /// ,proxy=v1|v2). Replaces the config file's backends. None anywhere: built-in dummy
    /// servers.
    #[arg(long = "backend", value_name = "[tls://]HOST:PORT[,OPTION...]")]
    pub backends: Vec<BackendSpec>,
    /// Terminate TLS on the listener with this certificate chain (PEM); needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// CA certificate(s) (PEM) that TLS backends must chain to [default: certs/ca.pem].
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Do not verify TLS backends' certificates (testing only).
    #[arg(long)]
    pub insecure: bool,
    /// Seconds to connect to a backend (and finish its TLS handshake) [default: 3].
    #[arg(long, value_name = "SECS", value_parser = cli::seconds)]
    pub connect_timeout: Option<Duration>,
    /// Seconds a client has to finish its TLS handshake (and, in tcp-lb with --accept-proxy,
    /// to send its PROXY header) [default: 10].
    #[arg(long, value_name = "SECS", value_parser = cli::seconds)]
    pub handshake_timeout: Option<Duration>,
}

/// The flags of step 08: failover and health checks. Each overrides the config's `[health]`.
#[derive(clap::Args, Clone)]
pub struct HealthArgs {
    /// Seconds between active health checks of each backend; 0 turns them off [default: 2].
    #[arg(long, value_name = "SECS", value_parser = cli::seconds_or_zero)]
    pub health_interval: Option<Duration>,
    /// Good checks in a row that bring a backend back [default: 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rise: Option<u32>,
    /// Failed checks in a row that take a backend out [default: 3].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub fall: Option<u32>,
    /// Failed client connects in a row after which a backend is skipped for a cooldown
    /// (1 s, doubling up to 30 s) [default: 3].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub fail_after: Option<u32>,
}

/// The flags of step 10: timeouts, limits, drain, PROXY protocol, admin listener. Each
/// overrides its key in the config file.
#[derive(clap::Args, Clone)]
pub struct ProductionArgs {
    /// Seconds both directions of a connection may stay quiet before the pair is closed;
    /// 0 for never [default: 300].
    #[arg(long, value_name = "SECS", value_parser = cli::seconds_or_zero)]
    pub idle_timeout: Option<Duration>,
    /// Seconds connections in flight get to finish after SIGTERM or Ctrl-C; 0 closes them at
    /// once [default: 30].
    #[arg(long, value_name = "SECS", value_parser = cli::seconds_or_zero)]
    pub drain_timeout: Option<Duration>,
    /// Connections served at once; 0 for no limit [default: what the open-file limit allows].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Clients that may wait for a slot beyond --max-connections; 0 refuses them at once
    /// [default: 128].
    #[arg(long, value_name = "N")]
    pub queue: Option<usize>,
    /// Seconds a queued client waits for a slot [default: 5].
    #[arg(long, value_name = "SECS", value_parser = cli::seconds)]
    pub queue_timeout: Option<Duration>,
    /// Connections at once from one client IP; 0 for no limit [default: 0].
    #[arg(long, value_name = "N")]
    pub max_per_client: Option<usize>,
    /// Only clients in this network may connect (CIDR or address; repeat). Replaces the
    /// config's list.
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<Cidr>,
    /// Clients in this network may not connect, even if allowed (repeat). Replaces the
    /// config's list.
    #[arg(long = "deny", value_name = "CIDR")]
    pub deny: Vec<Cidr>,
    /// Read a PROXY protocol header (v1 or v2) from every client: for a balancer behind
    /// another proxy.
    #[arg(long)]
    pub accept_proxy: bool,
    /// Serve /metrics (Prometheus) and /health on this address.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Discover backends from this etcd endpoint (http://HOST:PORT; repeat for a cluster):
    /// every key under --etcd-prefix is one (chapter 15).
    #[arg(long = "etcd", value_name = "URL")]
    pub etcd: Vec<String>,
    /// The etcd key prefix whose keys are backends [default: /lb/backends/].
    #[arg(long, value_name = "PREFIX")]
    pub etcd_prefix: Option<String>,
    /// Bearer token (a file, mode 600) that lets servers register themselves on the admin
    /// listener (`PUT /backends/NAME`); without it, registration is off.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Only servers in this network may register (repeat). Replaces the config's list.
    #[arg(long = "register-allow", value_name = "CIDR")]
    pub register_allow: Vec<Cidr>,
    /// Session-ticket keys shared with other TLS listeners (one per line, 96 hex digits, mode
    /// 600; re-read on SIGHUP) [default: a random key per process].
    #[arg(long, value_name = "FILE")]
    pub ticket_keys: Option<PathBuf>,
    /// Threads that serve connections; 1 runs everything on the main thread [default: one per
    /// CPU].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=MAX_WORKERS as i64))]
    pub workers: Option<u16>,
}

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
            Arc::clone(&setup.registry),
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

/// The top-level keys chapter 10 and later add, which steps 07 to 09 refuse.
const PRODUCTION_KEYS: [&str; 11] = [
    "idle-timeout",
    "drain-timeout",
    "accept-proxy",
    "admin",
    "admin-token-file",
    "register-allow",
    "max-registered",
    "etcd",
    "etcd-prefix",
    "workers",
    "limits",
];

/// Which balancer a [`Setup`] is for: the config's `[http]` section belongs to `http-lb`
/// alone, and each listens on its own default port.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layer {
    Tcp,
    Http,
}

/// Everything needed to turn flags and a config file into a [`Balancer`], again on every
/// reload: flags keep overriding the file. `http-lb` (chapter 12) starts from the same.
pub(crate) struct Setup {
    pub(crate) step: Step,
    pub(crate) common: Common,
    strategy: Option<StrategyKind>,
    layer: Layer,
    /// The in-process servers of `cargo run`, started by the first plan that needs them, and
    /// the client config that trusts their in-memory CA.
    builtin: OnceLock<(Vec<Backend>, Option<Arc<rustls::ClientConfig>>)>,
    /// Servers that registered themselves (chapter 14): kept across reloads.
    pub(crate) registry: Arc<Registry>,
    /// The configuration of the last plan that succeeded: what a registry change rebuilds
    /// from, without reading the file again.
    last: Mutex<Option<Config>>,
    /// Held while a new configuration is planned and put in place, by a reload or a registry
    /// change: one after the other, or a registry change planned from the old file could
    /// land after a reload and undo it.
    pub(crate) applying: tokio::sync::Mutex<()>,
    /// `http-lb --mode assign` (chapter 14): least-connections counts assignments.
    assigning: std::sync::atomic::AtomicBool,
}

/// One configuration, ready to serve.
pub(crate) struct Plan {
    pub(crate) balancer: Balancer,
    /// The start-up (and reload) log line.
    pub(crate) summary: String,
}

impl Setup {
    pub(crate) fn new(
        step: Step,
        common: Common,
        strategy: Option<StrategyKind>,
        layer: Layer,
    ) -> Setup {
        Setup {
            step,
            common,
            strategy,
            layer,
            builtin: OnceLock::new(),
            registry: Arc::default(),
            last: Mutex::new(None),
            applying: tokio::sync::Mutex::new(()),
            assigning: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the next plans are for assignment mode, where the balancer holds no
    /// connections: `least-connections` then counts assignments (`least-called`).
    pub(crate) fn count_assignments(&self, on: bool) {
        self.assigning
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The configuration the running balancer was planned from.
    pub(crate) fn last_config(&self) -> Config {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }

    pub(crate) fn load_config(&self) -> anyhow::Result<Config> {
        let config = match &self.common.config {
            Some(path) => Config::load(path).map_err(|e| self.keys_it_has(e))?,
            None => Config::default(),
        };
        if self.layer == Layer::Tcp && config.http.is_some() {
            anyhow::bail!(
                "the config's [http] section is for http-lb (chapter 12); {} balances TCP \
                 connections and does not read HTTP",
                self.step.name
            );
        }
        if self.step.production.is_none()
            && let Some(key) = config.production_key()
        {
            anyhow::bail!(
                "the config's {key} comes with step 10-production (the tcp-lb binary); {} does \
                 not have it",
                self.step.name
            );
        }
        Ok(config)
    }

    /// A file's unknown key is one line listing the keys expected: only those this step
    /// reads, or the line would suggest a key it then refuses (07-final listing `etcd`).
    fn keys_it_has(&self, error: anyhow::Error) -> anyhow::Error {
        let text = error.to_string();
        let Some((before, listed)) = text.split_once("expected one of ") else {
            return error;
        };
        let mut refused: Vec<&str> = Vec::new();
        if self.layer == Layer::Tcp {
            refused.push("http");
        }
        if self.step.production.is_none() {
            refused.extend(PRODUCTION_KEYS);
        }
        if self.step.health.is_none() {
            refused.push("health");
        }
        let kept: Vec<&str> = listed
            .split(", ")
            .filter(|key| !refused.contains(&key.trim_matches('`')))
            .collect();
        anyhow::anyhow!("{before}expected one of {}", kept.join(", "))
    }

    pub(crate) fn listen(&self, config: &Config) -> anyhow::Result<SocketAddr> {
        let default = match self.layer {
            Layer::Tcp => crate::DEFAULT_LISTEN,
            Layer::Http => crate::http::DEFAULT_LISTEN,
        };
        Ok(match self.common.listen.or(config.listen) {
            Some(addr) => addr,
            None => default.parse()?,
        })
    }

    pub(crate) fn admin(&self, config: &Config) -> Option<SocketAddr> {
        let flags = self.step.production.as_ref()?;
        flags.admin.or(config.admin)
    }

    pub(crate) async fn plan(&self, config: Config) -> anyhow::Result<Plan> {
        let kept = config.clone();
        let plan = self.plan_from(config).await?;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(kept);
        Ok(plan)
    }

    async fn plan_from(&self, config: Config) -> anyhow::Result<Plan> {
        let step = &self.step;
        let strategy = self
            .strategy
            .or(config.strategy)
            .unwrap_or(StrategyKind::RoundRobin);
        let strategy = match strategy {
            StrategyKind::LeastConnections
                if self.assigning.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                StrategyKind::LeastCalled
            }
            other => other,
        };
        if !step.strategies.contains(&strategy) {
            anyhow::bail!(
                "strategy {strategy} comes with step 09-strategies; {} knows {}",
                step.name,
                names(step.strategies)
            );
        }
        let failover = match (&step.health, &config.health) {
            (None, Some(_)) => anyhow::bail!(
                "the config's [health] section comes with step 08-failover; {} has no health \
                 checks",
                step.name
            ),
            (None, None) => None,
            (Some(flags), section) => Some(with_flags(
                flags,
                section
                    .as_ref()
                    .map_or_else(Failover::default, HealthSection::failover),
            )),
        };
        let common = &self.common;
        let insecure = common.insecure || config.insecure.unwrap_or(false);
        let ca = common
            .ca
            .clone()
            .or(config.ca.clone())
            .unwrap_or_else(|| tls::DEFAULT_CA.into());
        let ticket_keys = step
            .production
            .as_ref()
            .and_then(|p| p.ticket_keys.clone())
            .or(config.tls.as_ref().and_then(|t| t.ticket_keys.clone()));
        let keys = ticket_keys.as_deref();
        let listener_tls = match (&common.cert, &common.key, &config.tls) {
            (Some(cert), Some(key), _) => {
                Some(tls::server_config_from_files_with(cert, key, keys)?)
            }
            (_, _, Some(t)) => Some(tls::server_config_from_files_with(&t.cert, &t.key, keys)?),
            _ if ticket_keys.is_some() => anyhow::bail!(
                "ticket keys are for a TLS listener: give --cert and --key (or [tls]) too"
            ),
            _ => None,
        };
        let secs = |s: f64| Duration::from_secs_f64(s);
        let mut options = Options {
            listener_tls,
            connect_timeout: common
                .connect_timeout
                .or(config.connect_timeout.map(secs))
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            handshake_timeout: common
                .handshake_timeout
                .or(config.handshake_timeout.map(secs))
                .unwrap_or(tls::DEFAULT_HANDSHAKE_TIMEOUT),
            failover,
            ..Options::default()
        };
        if let Some(flags) = &step.production {
            production_options(flags, &config, &mut options);
        }
        if insecure {
            tracing::warn!("{}", tls::INSECURE_WARNING);
        }

        // Registration (chapter 14): the token and who may register, read again on every
        // reload; then the servers registered so far, after the configured ones.
        if let Some(flags) = &step.production {
            let token = flags
                .admin_token_file
                .as_deref()
                .or(config.admin_token_file.as_deref());
            let allow = match flags.register_allow.is_empty() {
                false => flags.register_allow.clone(),
                true => config.register_allow.clone(),
            };
            let cap = config
                .max_registered
                .unwrap_or(crate::registry::DEFAULT_CAP);
            self.registry.configure(token, allow, cap)?;
            options.may_be_empty = self.registry.expects_backends();
        }
        let mut backends: Vec<Backend> = if !common.backends.is_empty() {
            backend::resolve_all(common.backends.clone(), None).await?
        } else if !config.backends.is_empty() {
            let mut backends = Vec::new();
            for entry in &config.backends {
                backends.push(Backend::resolve(entry.spec(), entry.sni.as_deref()).await?);
            }
            backends
        } else if self.registry.expects_backends() {
            // Its servers will register (or are in etcd): no demo servers in their place.
            Vec::new()
        } else {
            let (backends, client_tls) = match self.builtin.get() {
                Some(started) => started.clone(),
                None => {
                    let started = start_builtin(insecure)?;
                    self.builtin.get_or_init(|| started).clone()
                }
            };
            options.upstream_tls = client_tls;
            backends
        };

        for spec in self.registry.specs() {
            // One server whose name no longer resolves must not stop the others: it stays
            // out until it registers again.
            match Backend::resolve(spec.clone(), None).await {
                Ok(b) => backends.push(b),
                Err(e) => tracing::warn!("registered backend {spec} left out: {e:#}"),
            }
        }
        if step.production.is_none()
            && let Some(b) = backends.iter().find(|b| b.spec().proxy.is_some())
        {
            anyhow::bail!(
                "backend {b}: proxy= comes with step 10-production (the tcp-lb binary); {} \
                 does not send PROXY headers",
                step.name
            );
        }
        if step.production.is_none()
            && let Some(b) = backends.iter().find(|b| b.spec().retry_unanswered)
        {
            anyhow::bail!(
                "backend {b}: retry-unanswered comes with tcp-lb (chapters 10 and 13), not {}",
                step.name
            );
        }
        let any_tls = backends.iter().any(|b| b.server_name().is_some());
        if any_tls && options.upstream_tls.is_none() {
            options.upstream_tls = Some(if insecure {
                tls::insecure_client_config()?
            } else {
                tls::client_config(tls::load_roots(&ca)?)?
            });
        }
        if !strategy.uses_weights() && backends.iter().any(|b| b.spec().weight != 1) {
            tracing::warn!(
                "strategy {strategy} ignores weights; use weighted-round-robin, \
                 least-connections, power-of-two or ip-hash"
            );
        }
        let summary = summary(strategy, &options, &backends);
        let picker = strategy.build(&backend::members(&backends));
        Ok(Plan {
            balancer: Balancer::new(backends, picker, options)?,
            summary,
        })
    }
}

/// The Go finale's servers, in-process, with a CA that exists only in memory.
fn start_builtin(
    insecure: bool,
) -> anyhow::Result<(Vec<Backend>, Option<Arc<rustls::ClientConfig>>)> {
    tracing::info!("no backend configured: starting the Go finale's three servers in-process");
    let bundle = crate::certs::generate_localhost()?;
    let server_tls = bundle.server_config()?;
    let client_tls = match insecure {
        true => None,
        false => Some(tls::client_config(bundle.roots())?),
    };
    let backends = dummy::start_builtin(&[
        ("server1", Some(server_tls.clone())),
        ("server2", None),
        ("server3", Some(server_tls)),
    ])?;
    Ok((backends, client_tls))
}

/// Step 10's settings: each flag given overrides its key, each key its default.
fn production_options(flags: &ProductionArgs, config: &Config, options: &mut Options) {
    let secs = |s: f64| Duration::from_secs_f64(s);
    let section = config.limits.as_ref();
    let limit = |n: usize| (n > 0).then_some(n);
    let idle = flags
        .idle_timeout
        .or(config.idle_timeout.map(secs))
        .unwrap_or(DEFAULT_IDLE_TIMEOUT);
    options.idle_timeout = (!idle.is_zero()).then_some(idle);
    options.drain_timeout = flags
        .drain_timeout
        .or(config.drain_timeout.map(secs))
        .unwrap_or(DEFAULT_DRAIN_TIMEOUT);
    options.accept_proxy = flags.accept_proxy || config.accept_proxy.unwrap_or(false);
    let queue = flags
        .queue
        .or(section.and_then(|l| l.queue))
        .unwrap_or(limits::DEFAULT_QUEUE);
    let max_connections = match flags
        .max_connections
        .or(section.and_then(|l| l.max_connections))
    {
        Some(n) => limit(n),
        None => Some(net::connection_budget(queue)),
    };
    if let Some(max) = max_connections
        && let Some(fds) = net::open_file_limit()
        && net::fds_needed(max, queue) > fds
    {
        tracing::warn!(
            "max-connections {max} and queue {queue} need about {} file descriptors but the \
             limit is {fds}: raise it (ulimit -n, systemd LimitNOFILE=) or lower them",
            net::fds_needed(max, queue)
        );
    }
    options.limits = Limits {
        max_connections,
        queue,
        queue_timeout: flags
            .queue_timeout
            .or(section.and_then(|l| l.queue_timeout).map(secs))
            .unwrap_or(limits::DEFAULT_QUEUE_TIMEOUT),
        max_per_client: flags
            .max_per_client
            .or(section.and_then(|l| l.max_per_client))
            .and_then(limit),
        allow: match flags.allow.is_empty() {
            false => flags.allow.clone(),
            true => section.map(|l| l.allow.clone()).unwrap_or_default(),
        },
        deny: match flags.deny.is_empty() {
            false => flags.deny.clone(),
            true => section.map(|l| l.deny.clone()).unwrap_or_default(),
        },
    };
}

/// Step 10: on SIGHUP, re-read the config file (and re-resolve backend names), and put the
/// result in place; a file that does not load or does not make sense leaves the running
/// configuration alone.
async fn reload_on_sighup(
    hangups: Hangups,
    setup: Arc<Setup>,
    server: Arc<Server>,
    bound: (SocketAddr, Option<SocketAddr>),
) {
    on_sighup(hangups, || async {
        let _applying = setup.applying.lock().await;
        let planned = reload_config(&setup, bound, |setup, config| async move {
            setup.plan(config).await
        })
        .await;
        match planned {
            Ok(plan) => {
                server.reload(plan.balancer);
                tracing::info!("configuration reloaded: {}", plan.summary);
            }
            Err(e) => {
                server.reload_failed();
                tracing::error!("reload failed, keeping the running configuration: {e:#}");
            }
        }
    })
    .await;
}

/// The etcd prefix unless configured.
pub const DEFAULT_ETCD_PREFIX: &str = "/lb/backends/";

/// Chapter 15: when the flags or the config name etcd endpoints, lists the prefix once (so a
/// balancer whose etcd answers starts with its backends) and returns what [`follow_etcd`]
/// needs to keep them current. Read at start-up only: new endpoints take a restart.
pub(crate) async fn start_etcd(
    setup: &Setup,
    config: &Config,
) -> anyhow::Result<Option<(Arc<crate::discovery::Source>, Option<crate::etcd::Header>)>> {
    let Some(flags) = &setup.step.production else {
        return Ok(None);
    };
    let urls = match flags.etcd.is_empty() {
        false => flags.etcd.clone(),
        true => config.etcd.clone(),
    };
    if urls.is_empty() {
        return Ok(None);
    }
    let etcd = crate::etcd::Etcd::new(&urls).map_err(anyhow::Error::msg)?;
    let mut prefix = flags
        .etcd_prefix
        .clone()
        .or(config.etcd_prefix.clone())
        .unwrap_or_else(|| DEFAULT_ETCD_PREFIX.to_owned());
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let source = Arc::new(crate::discovery::Source { etcd, prefix });
    setup.registry.use_etcd();
    let revision = crate::discovery::load(&source, &setup.registry).await;
    Ok(Some((source, revision)))
}

/// Chapter 15: keeps the etcd backends current (see `lb::discovery`); the registry's
/// notification rebuilds the balancer through [`follow_registry`].
pub(crate) fn follow_etcd(
    setup: &Setup,
    started: Option<(Arc<crate::discovery::Source>, Option<crate::etcd::Header>)>,
) {
    if let Some((source, revision)) = started {
        tokio::spawn(crate::discovery::follow(
            source,
            Arc::clone(&setup.registry),
            revision,
        ));
    }
}

/// How often leases are checked for expiry: a server that stopped renewing is gone at most
/// this long after its TTL.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

/// Chapter 14: keeps the balancer in step with the registry. A registration, a change, a
/// deregistration or an expired lease rebuilds it from the last configuration with `rebuild`
/// (the balancer's own plan-and-replace), as a reload would, so backends that stay keep their
/// health and counters. Runs for the life of the process; a registry that is off never wakes
/// it but for the expiry tick.
pub(crate) async fn follow_registry<F, Fut>(setup: Arc<Setup>, rebuild: F)
where
    F: Fn(Arc<Setup>, Config) -> Fut,
    Fut: Future<Output = anyhow::Result<String>>,
{
    loop {
        tokio::select! {
            () = setup.registry.changed() => {}
            () = tokio::time::sleep(EXPIRY_TICK) => {
                let gone = setup.registry.expire(std::time::Instant::now());
                if gone.is_empty() {
                    continue;
                }
                for name in &gone {
                    tracing::warn!("registered backend {name}: its lease ran out without a renewal; removed");
                }
            }
        }
        let _applying = setup.applying.lock().await;
        match rebuild(Arc::clone(&setup), setup.last_config()).await {
            Ok(summary) => tracing::info!("backends changed: {summary}"),
            Err(e) => {
                tracing::error!("the registry changed but the balancer could not follow: {e:#}")
            }
        }
    }
}

/// SIGHUP, caught from the moment this is made. It must exist before the `listening on` line:
/// until a process asks for SIGHUP, the signal's default action is to terminate it, and a
/// supervisor (or a test) that reloads as soon as the balancer says it is ready would kill it
/// instead (seen under load, when the task that used to ask had not run yet).
pub(crate) struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

/// Starts catching SIGHUP (a warning, and reload off, where it cannot).
pub(crate) fn hangups() -> Hangups {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let signal = signal(SignalKind::hangup())
            .map_err(|e| tracing::warn!("cannot listen for SIGHUP, reload is off: {e}"))
            .ok();
        Hangups { signal }
    }
    #[cfg(not(unix))]
    {
        tracing::warn!("no SIGHUP on this platform: reload is off");
        Hangups {}
    }
}

/// Runs `reload` on every SIGHUP, for as long as the task lives.
pub(crate) async fn on_sighup<F, Fut>(hangups: Hangups, mut reload: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    #[cfg(not(unix))]
    {
        let _ = (hangups, &mut reload);
    }
    #[cfg(unix)]
    {
        let Some(mut signal) = hangups.signal else {
            return;
        };
        while signal.recv().await.is_some() {
            reload().await;
        }
    }
}

/// Reads the config again and turns it into a plan with `make`, off the runtime's threads and
/// within [`RELOAD_LIMIT`]: the config and PEM files are read with blocking calls, and a path
/// that turned into a FIFO or a hung mount must stall only this reload, never the
/// connections the runtime serves (`files` refuses FIFOs and devices at once; the limit is for
/// what even that cannot see).
pub(crate) async fn reload_config<T, F, Fut>(
    setup: &Arc<Setup>,
    (listen, admin): (SocketAddr, Option<SocketAddr>),
    make: F,
) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(Arc<Setup>, Config) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let source = match &setup.common.config {
        Some(path) => path.display().to_string(),
        None => "the command line".to_owned(),
    };
    tracing::info!("SIGHUP: reloading the configuration from {source}");
    let runtime = tokio::runtime::Handle::current();
    let reading = Arc::clone(setup);
    let work = tokio::task::spawn_blocking(move || {
        runtime.block_on(async move {
            let config = reading.load_config()?;
            if reading.listen(&config)? != listen || reading.admin(&config) != admin {
                tracing::warn!(
                    "a new listen or admin address takes a restart; keeping {listen}{}",
                    admin.map(|a| format!(" and {a}")).unwrap_or_default()
                );
            }
            make(reading, config).await
        })
    });
    match tokio::time::timeout(RELOAD_LIMIT, work).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(anyhow::anyhow!("the reload task failed: {e}")),
        Err(_) => Err(anyhow::anyhow!(
            "not done within {RELOAD_LIMIT:?} (a file or a backend name that does not answer)"
        )),
    }
}

/// The `[health]` settings, with each flag given overriding its key.
fn with_flags(flags: &HealthArgs, mut f: Failover) -> Failover {
    if let Some(n) = flags.fail_after {
        f.fail_after = n;
    }
    if let Some(interval) = flags.health_interval {
        f.checks = (!interval.is_zero()).then(|| Checks {
            interval,
            ..f.checks.clone().unwrap_or_default()
        });
    }
    if let Some(checks) = &mut f.checks {
        checks.rise = flags.rise.unwrap_or(checks.rise);
        checks.fall = flags.fall.unwrap_or(checks.fall);
    }
    f
}

/// The start-up log line: what an operator checks first when traffic goes somewhere odd.
fn summary(strategy: StrategyKind, options: &Options, backends: &[Backend]) -> String {
    let listener = match options.listener_tls {
        Some(_) => "TLS",
        None => "plain TCP",
    };
    let health = match &options.failover {
        None => String::new(),
        Some(Failover {
            checks: Some(c), ..
        }) => format!(
            ", failover on, health checks every {:?} (rise {}, fall {})",
            c.interval, c.rise, c.fall
        ),
        Some(_) => ", failover on, no active health checks".to_owned(),
    };
    let backends = backends
        .iter()
        .map(|b| {
            let spec = b.spec();
            let mut s = spec.to_string();
            if spec.weight != 1 {
                s += &format!(" weight {}", spec.weight);
            }
            if spec.check == backend::HealthCheck::Http {
                s += " check http";
            }
            if let Some(version) = spec.proxy {
                s += &format!(" proxy {version}");
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut extra = String::new();
    if let Some(idle) = options.idle_timeout {
        extra += &format!(", idle timeout {idle:?}");
    }
    let l = &options.limits;
    if let Some(max) = l.max_connections {
        extra += &format!(
            ", max {max} connections (then {} queued for {:?})",
            l.queue, l.queue_timeout
        );
    }
    if let Some(max) = l.max_per_client {
        extra += &format!(", max {max} per client");
    }
    let list = |cidrs: &[Cidr]| {
        cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !l.allow.is_empty() {
        extra += &format!(", allow {}", list(&l.allow));
    }
    if !l.deny.is_empty() {
        extra += &format!(", deny {}", list(&l.deny));
    }
    if options.accept_proxy {
        extra += ", reads PROXY headers";
    }
    format!("strategy {strategy}, {listener} listener{health}{extra}, backends: {backends}")
}

fn names(kinds: &[StrategyKind]) -> String {
    kinds
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}
