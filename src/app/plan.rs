//! Flags and a config file turned into a balancer ([`Setup::plan`]), the same way at start-up
//! and on every reload: flags win over the file, the file over defaults.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::backend::{self, Backend, DEFAULT_CONNECT_TIMEOUT, HealthCheck};
use crate::balancer::{Balancer, Options};
use crate::config::{Config, HealthSection};
use crate::health::{Checks, Failover};
use crate::limits::{self, Cidr, Limits};
use crate::sources::Sources;
use crate::strategy::StrategyKind;
use crate::{dummy, net, tls};

use super::flags::{Common, HealthArgs, ProductionArgs};
use super::{DEFAULT_DRAIN_TIMEOUT, DEFAULT_IDLE_TIMEOUT, Step};

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
    /// Where backends come from besides the file: servers that registered themselves
    /// (chapter 14), etcd (chapter 15); kept across reloads.
    pub(crate) sources: Sources,
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
            sources: Sources::default(),
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

    /// Whether the kernel should hold a client back until its first bytes are in
    /// (`net::defer_accept`): for `http-lb`, whose clients all speak first (a request, a TLS
    /// ClientHello, a PROXY header) and whose first act is to read. Not for `tcp-lb`: a server
    /// may speak first (SMTP, MySQL), and where it cannot (a TLS listener) it was measured to
    /// save nothing, since `tcp-lb` dials the backend at once anyway (README, chapter 11).
    pub(crate) fn client_speaks_first(&self) -> bool {
        self.layer == Layer::Http
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
        // Chapter 17: http-lb offers HTTP/2 in ALPN, then HTTP/1.1 (what a client that
        // offers neither gets too). tcp-lb offers nothing: it does not read what it carries,
        // so it cannot promise a protocol; the client and the backend would have to agree.
        let alpn = config
            .tls
            .as_ref()
            .map(|t| t.alpn.clone())
            .unwrap_or_default();
        let alpn: Vec<Vec<u8>> = match self.layer {
            Layer::Http if !alpn.is_empty() => anyhow::bail!(
                "tls.alpn is tcp-lb's (a TLS offloader in front of http-lb); http-lb offers h2 \
                 and http/1.1 itself"
            ),
            Layer::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Layer::Tcp => alpn.into_iter().map(String::into_bytes).collect(),
        };
        let offers_alpn = self.layer == Layer::Tcp && !alpn.is_empty();
        let listener_tls = match alpn.is_empty() {
            true => listener_tls,
            false => listener_tls.map(|config| {
                let mut config = Arc::unwrap_or_clone(config);
                config.alpn_protocols = alpn;
                Arc::new(config)
            }),
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
            self.sources.registry.configure(token, allow, cap)?;
            options.may_be_empty = self.sources.expect_backends();
        }
        let mut backends: Vec<Backend> = if !common.backends.is_empty() {
            backend::resolve_all(common.backends.clone(), None).await?
        } else if !config.backends.is_empty() {
            let mut backends = Vec::new();
            for entry in &config.backends {
                backends.push(Backend::resolve(entry.spec(), entry.sni.as_deref()).await?);
            }
            backends
        } else if self.sources.expect_backends() {
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

        for spec in self.sources.specs() {
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
        // tcp-lb offers a protocol only where the backend learns which one was chosen.
        if offers_alpn
            && let Some(b) = backends
                .iter()
                .find(|b| b.spec().proxy != Some(crate::proxy_protocol::Version::V2))
        {
            anyhow::bail!(
                "tls.alpn: backend {b} does not take PROXY v2, whose ALPN TLV would tell it the \
                 protocol the client chose; give it proxy-protocol = \"v2\" (or offer no ALPN)"
            );
        }
        if self.layer == Layer::Tcp
            && let Some(b) = backends.iter().find(|b| b.spec().protocol.is_h2())
        {
            anyhow::bail!(
                "backend {b}: h2:// and h2c:// are what http-lb speaks to a backend (chapter \
                 17); {} relays bytes, whatever the protocol",
                step.name
            );
        }
        if let Some(b) = backends
            .iter()
            .find(|b| !b.spec().protocol.is_h2() && b.spec().check == HealthCheck::Grpc)
        {
            anyhow::bail!(
                "backend {b}: check=grpc speaks gRPC, which runs over HTTP/2: give it as \
                 h2c:// or h2:// (http-lb, chapter 17)"
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
            match spec.check {
                backend::HealthCheck::Http => s += " check http",
                backend::HealthCheck::Grpc => s += " check grpc",
                backend::HealthCheck::Tcp => {}
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
