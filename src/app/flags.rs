//! The flags each step adds to the command line: step 07's [`Common`], step 08's
//! [`HealthArgs`], step 10's [`ProductionArgs`]. Each overrides its key in the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::backend::BackendSpec;
use crate::cli;
use crate::limits::Cidr;

use super::MAX_WORKERS;

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
