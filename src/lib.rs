//! The library behind every chapter of the tutorial.
//!
//! Each step binary in `steps/` is a thin `main.rs` that parses its flags and hands the work to
//! the pieces here, so that tests, benchmarks and later chapters run *the same code* the learner
//! reads. A piece enters the library in the chapter that introduces it:
//!
//! | module | introduced by | what it holds |
//! |---|---|---|
//! | [`net`] | 01-ping | binding with a real backlog, the `listening on` line, an accept loop that never spins |
//! | [`cli`] | 01-ping | one-line start-up errors, logging set-up |
//! | [`files`] | hardening | reading operator-named files: regular files only, size caps, no blocking |
//! | [`dummy`] | dummy-server | the HTTP backend the tutorial balances over |
//! | [`conn`] | 02-forward | copying bytes both ways with half-close; `Conn`, one side plain or TLS |
//! | [`backend`] | 02-forward | a backend address, resolved once, dialled with a timeout |
//! | [`strategy`] | 03-round-robin | the `Strategy` trait and its implementations |
//! | [`balancer`] | 03-round-robin | accept, pick, dial, forward, log: the load balancer itself |
//! | [`certs`] | certs | a local CA and a `localhost` certificate, made with rcgen |
//! | [`tls`] | 05-tls-termination | PEM loading, server and client configs, the `danger` verifier |
//! | [`config`] | 07-final | the TOML configuration file |
//! | [`app`] | 07-final | the start-up shared by steps 07 to 10: flags, file, backends, TLS |
//! | [`health`] | 08-failover | passive and active health, failover |
//! | [`server`] | 10-production | the accept loop that outlives a configuration: reload, drain |
//! | [`limits`] | 10-production | allow/deny CIDRs, per-client and overall connection limits |
//! | [`proxy_protocol`] | 10-production | PROXY protocol v1/v2, sent and accepted |
//! | [`memory`] | hardening | returning freed memory to the system after a burst of connections |
//! | [`metrics`] | 10-production | counters and their Prometheus text |
//! | [`admin`] | 10-production | the admin listener: `/metrics`, `/health` |
//! | [`status`] | 10-production | the admin listener's status page, `GET /`: a person's view of `/metrics` |
//! | [`relay`] | 10-production, 11 | the metered, idle-aware relay; buffers only while bytes move; splice |
//! | `splice` (Linux) | 11, making it fast | zero-copy forwarding through a pooled pipe |
//! | [`http`] | 12-http-lb, 16, 17 | layer 7: per-request balancing, cookie affinity, forwarding rules, pools; the cache and routes (16); HTTP/2 and gRPC (17) |
//! | [`tickets`] | 13-ssl-farm | session-ticket keys from a file, shared by every offloader, rotated |
//! | [`registry`] | 14-assign | servers that register themselves: leases, a token, a cap |
//! | [`etcd`] | 15 | an etcd v3 client over its JSON gateway: range, watch, leases |
//! | [`discovery`] | 15 | backends from an etcd prefix, listed then watched; stale but serving |
//! | [`sources`] | 14, 15 | where backends come from besides the file, behind one trait, merged |
//! | [`registrant`] | 14-assign | the server's side: register with each balancer, renew, deregister |

pub mod admin;
pub mod app;
pub mod backend;
pub mod balancer;
pub mod certs;
pub mod cli;
pub mod config;
pub mod conn;
pub mod discovery;
pub mod dummy;
pub mod etcd;
pub mod files;
pub mod health;
pub mod http;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod proxy_protocol;
pub mod registrant;
pub mod registry;
pub mod relay;
pub mod server;
pub mod sources;
#[cfg(target_os = "linux")]
pub mod splice;
pub mod status;
pub mod strategy;
pub mod tickets;
pub mod tls;

/// The three servers of the Go tutorial (`SERVER1`..`SERVER3`), on the IPv4 loopback.
pub const TUTORIAL_BACKENDS: [&str; 3] = ["127.0.0.1:4444", "127.0.0.1:4445", "127.0.0.1:4446"];

/// Where every load balancer listens unless told otherwise, as in the Go tutorial.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
