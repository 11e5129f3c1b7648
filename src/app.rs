//! The start-up shared by the last steps (07 on): flags, config file, backends, TLS, and the
//! balancer they add up to.
//!
//! Step 07 wrote this in its `main.rs`; steps 08 and 09 add one feature each (failover and
//! health, then the load-aware strategies) to the same flags and file. Keeping the start-up
//! here lets each of those `main.rs` files show only what its chapter adds, and keeps every
//! step reading flags and file the same way: flags win over the file, the file over defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::backend::{self, Backend, BackendSpec, DEFAULT_CONNECT_TIMEOUT};
use crate::balancer::{Balancer, Options};
use crate::config::Config;
use crate::config::HealthSection;
use crate::health::{Checks, Failover};
use crate::strategy::StrategyKind;
use crate::{cli, dummy, net, tls};

/// The flags of step 07, shared by every later step.
#[derive(clap::Args)]
pub struct Common {
    /// TOML configuration file; flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:3000].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// A backend: HOST:PORT for plain TCP, tls://HOST:PORT for TLS, optionally followed by
    /// ,weight=N and ,check=http; repeat for several. Replaces the config file's backends.
    /// None anywhere: built-in dummy servers.
    #[arg(
        long = "backend",
        value_name = "[tls://]HOST:PORT[,weight=N][,check=http]"
    )]
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
    /// Seconds a client has to finish its TLS handshake [default: 10].
    #[arg(long, value_name = "SECS", value_parser = cli::seconds)]
    pub handshake_timeout: Option<Duration>,
}

/// The flags of step 08: failover and health checks. Each overrides the config's `[health]`.
#[derive(clap::Args)]
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

/// What a step brings to the shared start-up.
pub struct Step {
    /// The binary's name, for messages.
    pub name: &'static str,
    /// The strategies this step's chapter has introduced.
    pub strategies: &'static [StrategyKind],
    /// `Some` from step 08 on: failover and health, with these flags.
    pub health: Option<HealthArgs>,
}

/// Starts the balancer the flags and config describe, and serves until Ctrl-C or SIGTERM.
pub async fn run(step: Step, common: Common, strategy: Option<StrategyKind>) -> anyhow::Result<()> {
    let config = match &common.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };

    let listen = match common.listen.or(config.listen) {
        Some(addr) => addr,
        None => crate::DEFAULT_LISTEN.parse()?,
    };
    let strategy = strategy
        .or(config.strategy)
        .unwrap_or(StrategyKind::RoundRobin);
    if !step.strategies.contains(&strategy) {
        anyhow::bail!(
            "strategy {strategy} comes with step 09-strategies; {} knows {}",
            step.name,
            names(step.strategies)
        );
    }
    let failover = match (&step.health, &config.health) {
        (None, Some(_)) => anyhow::bail!(
            "the config's [health] section comes with step 08-failover; {} has no health checks",
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
    let insecure = common.insecure || config.insecure.unwrap_or(false);
    let ca = common
        .ca
        .or(config.ca)
        .unwrap_or_else(|| tls::DEFAULT_CA.into());
    let listener_tls = match (common.cert, common.key, config.tls) {
        (Some(cert), Some(key), _) => Some(tls::server_config_from_files(&cert, &key)?),
        (_, _, Some(t)) => Some(tls::server_config_from_files(&t.cert, &t.key)?),
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
        upstream_tls: None,
        failover,
    };
    if insecure {
        tracing::warn!("{}", tls::INSECURE_WARNING);
    }
    // Bound before the built-in backends start: a port in use fails the start on its own.
    let listener = net::listen(listen)?;

    let backends: Vec<Backend> = if !common.backends.is_empty() {
        backend::resolve_all(common.backends, None).await?
    } else if !config.backends.is_empty() {
        let mut backends = Vec::new();
        for entry in &config.backends {
            backends.push(Backend::resolve(entry.spec(), entry.sni.as_deref()).await?);
        }
        backends
    } else {
        // The Go finale's servers, in-process, with a CA that exists only in memory.
        tracing::info!("no backend configured: starting the Go finale's three servers in-process");
        let bundle = crate::certs::generate_localhost()?;
        let server_tls = bundle.server_config()?;
        if !insecure {
            options.upstream_tls = Some(tls::client_config(bundle.roots())?);
        }
        dummy::start_builtin(&[
            ("server1", Some(server_tls.clone())),
            ("server2", None),
            ("server3", Some(server_tls)),
        ])?
    };

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
            "strategy {strategy} ignores weights; use weighted-round-robin, least-connections, \
             power-of-two or ip-hash"
        );
    }

    let summary = summary(strategy, &options, &backends);
    let picker = strategy.build(&backend::members(&backends));
    let balancer = Balancer::new(backends, picker, options)?;
    net::announce(&listener)?;
    tracing::info!("{summary}");
    balancer.run(listener, cli::shutdown_signal()).await;
    Ok(())
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
            s
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("strategy {strategy}, {listener} listener{health}, backends: {backends}")
}

fn names(kinds: &[StrategyKind]) -> String {
    kinds
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}
