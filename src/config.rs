//! The configuration file of chapter 7, in TOML.
//!
//! The Go tutorial hard-codes its servers in a `type Server struct` literal and recompiles to
//! change them. A file lets an operator change backends without a build, and keeping the same
//! names as the flags (`listen`, `strategy`, `ca`, …) means one mental model for both; flags
//! given on the command line override the file.
//!
//! ```toml
//! listen = "127.0.0.1:3000"
//! strategy = "round-robin"      # or random, least-called
//! ca = "certs/ca.pem"           # verifies TLS backends
//! insecure = false
//! [tls]                         # optional: terminate TLS on the listener
//! cert = "certs/localhost.pem"
//! key = "certs/localhost-key.pem"
//! [[backend]]
//! address = "127.0.0.1:4444"
//! tls = true
//! [[backend]]
//! address = "127.0.0.1:4445"
//! ```
//!
//! Relative paths are relative to the working directory, as for the flags. Unknown keys are
//! errors: a misspelt `stratgy` silently ignored is worse than a refusal to start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::backend::{BackendSpec, HealthCheck, HostPort, Protocol, check_weight};
use crate::health::{self, Checks, Failover};
use crate::limits::Cidr;
use crate::proxy_protocol;
use crate::strategy::StrategyKind;

/// More worker threads than this is a typo, not a tuning.
pub const MAX_WORKERS: usize = 1024;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub listen: Option<SocketAddr>,
    pub strategy: Option<StrategyKind>,
    /// CA certificates (PEM) that TLS backends must chain to.
    pub ca: Option<PathBuf>,
    /// Skip verifying TLS backends (see `tls::danger`).
    pub insecure: Option<bool>,
    /// Seconds allowed to dial a backend.
    pub connect_timeout: Option<f64>,
    /// Seconds allowed for a client's TLS handshake.
    pub handshake_timeout: Option<f64>,
    pub tls: Option<ListenerTls>,
    /// `[health]`: failover and health checks (chapter 8).
    pub health: Option<HealthSection>,
    /// Seconds both directions may stay quiet before the pair is closed; 0 for never
    /// (chapter 10).
    pub idle_timeout: Option<f64>,
    /// Seconds to let connections finish after SIGTERM; 0 to close them at once.
    pub drain_timeout: Option<f64>,
    /// Read a PROXY protocol header (v1 or v2) from every client first.
    pub accept_proxy: Option<bool>,
    /// Address of the admin listener (`/metrics`, `/health`).
    pub admin: Option<SocketAddr>,
    /// A file holding the bearer token of the admin listener's registry (chapter 14); without
    /// it, servers cannot register.
    pub admin_token_file: Option<PathBuf>,
    /// When given, only these networks may register servers.
    #[serde(default)]
    pub register_allow: Vec<Cidr>,
    /// How many servers may be registered at once (default 256).
    pub max_registered: Option<usize>,
    /// etcd endpoints to discover backends from (chapter 15): `http://HOST:PORT`.
    #[serde(default)]
    pub etcd: Vec<String>,
    /// The etcd key prefix whose keys are backends (default `/lb/backends/`).
    pub etcd_prefix: Option<String>,
    /// Threads that serve connections (chapter 11); read once, at start-up.
    pub workers: Option<usize>,
    /// `[limits]`: who may connect, and how many.
    pub limits: Option<LimitsSection>,
    /// `[http]`: what `http-lb` does per request (chapter 12).
    pub http: Option<HttpSection>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendEntry>,
}

/// `[limits]` (chapter 10).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsSection {
    /// Connections served at once; 0 for no limit.
    pub max_connections: Option<usize>,
    /// Clients that may wait for a slot beyond `max-connections`; 0 refuses them at once.
    pub queue: Option<usize>,
    /// Seconds a queued client waits for a slot.
    pub queue_timeout: Option<f64>,
    /// Connections at once from one client IP; 0 for no limit.
    pub max_per_client: Option<usize>,
    /// When given, only these networks may connect.
    #[serde(default)]
    pub allow: Vec<Cidr>,
    /// These networks may not connect.
    #[serde(default)]
    pub deny: Vec<Cidr>,
}

/// `[http]` (chapter 12, `http-lb` only): each key is also a flag of the same name.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpSection {
    /// Cache responses in memory, up to this many bytes; 0 or absent: no cache (chapter 16).
    pub cache: Option<usize>,
    /// Seconds past its freshness an entry may be served when the backend fails, unless the
    /// response's own `stale-if-error` says otherwise (default 0).
    pub cache_stale_if_error: Option<f64>,
    /// Compress responses the client accepts compressed (chapter 16).
    pub compress: Option<bool>,
    /// Bodies known to be smaller than this many bytes are not compressed (default 256).
    pub compress_min_size: Option<u64>,
    /// Response fields to remove (chapter 16); `Server` and `X-Powered-By` with them.
    #[serde(default)]
    pub hide_headers: Vec<String>,
    /// Folders served directly: `"PREFIX=DIR"`, as the `--static` flag (chapter 16).
    #[serde(default, rename = "static")]
    pub statics: Vec<String>,
    /// Also serve names that start with a dot (`.env`, `.git/`), refused by default.
    pub static_dotfiles: Option<bool>,
    /// `[[http.route]]`: routes by path prefix and host (chapter 16), in order.
    #[serde(default, rename = "route")]
    pub routes: Vec<crate::http::route::Route>,
    /// `"proxy"` (the default) or `"assign"` (chapter 14).
    pub mode: Option<crate::http::assign::Mode>,
    /// `"cookie"` (the default) or `"none"`.
    pub affinity: Option<AffinityMode>,
    /// The affinity cookie's name.
    pub cookie_name: Option<String>,
    /// A file whose content (trailing whitespace trimmed, at least 32 bytes) keys the cookie.
    pub affinity_secret_file: Option<PathBuf>,
    /// The cookie's `Max-Age` in seconds; none makes it a session cookie.
    pub cookie_max_age: Option<u64>,
    /// The cookie's `Domain`.
    pub cookie_domain: Option<String>,
    /// Peers whose `X-Forwarded-For` and `Forwarded` are believed and extended.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// Also send the standard `Forwarded` field (RFC 7239).
    pub forwarded: Option<bool>,
    /// Add `Via: 1.1 http-lb` both ways.
    pub via: Option<bool>,
    /// Seconds a backend has to start its answer before the client gets 504.
    pub response_timeout: Option<f64>,
    /// Seconds a client has to send a request head before it gets 408.
    pub header_timeout: Option<f64>,
    /// Largest request body in bytes (413 beyond); 0 for no limit.
    pub max_body: Option<u64>,
    /// Largest request head in bytes (431 beyond).
    pub max_head: Option<usize>,
    /// Idle keep-alive connections kept per backend; 0 turns pooling off.
    pub pool_max_idle: Option<usize>,
    /// Seconds an idle pooled connection is kept.
    pub pool_idle_timeout: Option<f64>,
    /// Accept HTTP/2 in clear text from clients that start with its preface (chapter 17).
    pub h2c: Option<bool>,
    /// Streams one HTTP/2 connection may have open at once (default 100).
    pub max_concurrent_streams: Option<u32>,
    /// Streams an HTTP/2 client may reset before their answer, per connection and second,
    /// before the connection is closed (default 100).
    pub h2_reset_budget: Option<u32>,
}

/// How `http-lb` keeps a user on one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AffinityMode {
    /// A cookie names the backend (keyed, never in clear).
    Cookie,
    /// Every request is balanced afresh.
    None,
}

/// The bounds of `max-head`: hyper needs 8 KiB to read a head at all; past 16 MiB it is no
/// longer a bound.
pub const MAX_HEAD_RANGE: std::ops::RangeInclusive<usize> = 8192..=16 * 1024 * 1024;

/// `[health]`: every key optional, defaulting as the flags of chapter 8 do.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HealthSection {
    /// Consecutive failed connects before passive health skips a backend.
    pub fail_after: Option<u32>,
    /// Seconds of the first skip; doubles on each further failure up to `max-cooldown`.
    pub cooldown: Option<f64>,
    pub max_cooldown: Option<f64>,
    /// Seconds between active checks; 0 turns them off.
    pub interval: Option<f64>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

impl HealthSection {
    /// The settings this section describes, defaults filled in.
    pub fn failover(&self) -> Failover {
        let secs = |v: Option<f64>, default| v.map_or(default, Duration::from_secs_f64);
        let interval = secs(self.interval, health::DEFAULT_CHECK_INTERVAL);
        Failover {
            fail_after: self.fail_after.unwrap_or(health::DEFAULT_FAIL_AFTER),
            cooldown: secs(self.cooldown, health::DEFAULT_COOLDOWN),
            max_cooldown: secs(self.max_cooldown, health::DEFAULT_MAX_COOLDOWN),
            checks: (!interval.is_zero()).then(|| Checks {
                interval,
                rise: self.rise.unwrap_or(health::DEFAULT_RISE),
                fall: self.fall.unwrap_or(health::DEFAULT_FALL),
            }),
        }
    }
}

/// `[tls]`: terminate TLS on the listener with this certificate chain and key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A session-ticket key file shared with other TLS listeners, so that a client resumes
    /// whichever of them it reaches (chapter 13; `lb::tickets`).
    pub ticket_keys: Option<PathBuf>,
    /// `tcp-lb` only: the protocols offered in ALPN, in order of preference (`["h2",
    /// "http/1.1"]`), for a TLS offloader in front of `http-lb` (chapter 17). The protocol
    /// chosen reaches the backend in the PROXY v2 header's ALPN TLV, so every backend must
    /// take PROXY v2. `http-lb` offers `h2` and `http/1.1` on its own.
    #[serde(default)]
    pub alpn: Vec<String>,
}

/// One `[[backend]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackendEntry {
    pub address: HostPort,
    #[serde(default)]
    pub tls: bool,
    /// The name the backend's certificate must carry, if not the host of `address`.
    pub sni: Option<String>,
    /// Share for the weighted strategies (chapter 9), 1 by default.
    #[serde(default)]
    pub weight: Weight,
    /// `"tcp"` (the default) or `"http"`: how active checks probe it (chapter 8).
    #[serde(default)]
    pub health_check: HealthCheck,
    /// `"v1"` or `"v2"`: send a PROXY protocol header first (chapter 10).
    pub proxy_protocol: Option<proxy_protocol::Version>,
    /// A name for it: the affinity cookie is keyed on it instead of the address (chapter 14).
    pub name: Option<String>,
    /// Where clients reach it themselves, for `http-lb --mode assign` (chapter 14).
    pub url: Option<String>,
    /// Give a connection it closes unanswered to another backend (`tcp-lb`, chapter 13).
    #[serde(default)]
    pub retry_unanswered: bool,
    /// `"http1"` (the default), `"h2"` (HTTP/2 over TLS: needs `tls = true`) or `"h2c"`
    /// (HTTP/2 in clear text): what `http-lb` speaks to it (chapter 17).
    #[serde(default)]
    pub protocol: Protocol,
}

/// A `weight`, checked while parsing so that an error points at the offending line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u32")]
pub struct Weight(pub u32);

impl Default for Weight {
    fn default() -> Self {
        Weight(1)
    }
}

impl TryFrom<u32> for Weight {
    type Error = String;
    fn try_from(w: u32) -> Result<Self, String> {
        check_weight(w).map(Weight)
    }
}

impl BackendEntry {
    pub fn spec(&self) -> BackendSpec {
        BackendSpec {
            addr: self.address.clone(),
            // `h2` is HTTP/2 over TLS by its name (RFC 9113 §3.2).
            tls: self.tls || self.protocol == Protocol::H2,
            weight: self.weight.0,
            check: self.health_check,
            proxy: self.proxy_protocol,
            name: self.name.clone(),
            url: self.url.clone(),
            retry_unanswered: self.retry_unanswered,
            protocol: self.protocol,
        }
    }
}

impl Config {
    /// The keys chapter 10 adds, that earlier steps refuse; the first one present.
    pub fn production_key(&self) -> Option<&'static str> {
        [
            ("idle-timeout", self.idle_timeout.is_some()),
            ("drain-timeout", self.drain_timeout.is_some()),
            ("accept-proxy", self.accept_proxy.is_some()),
            ("admin", self.admin.is_some()),
            ("admin-token-file", self.admin_token_file.is_some()),
            ("register-allow", !self.register_allow.is_empty()),
            ("max-registered", self.max_registered.is_some()),
            ("etcd", !self.etcd.is_empty()),
            ("etcd-prefix", self.etcd_prefix.is_some()),
            ("workers", self.workers.is_some()),
            ("[limits]", self.limits.is_some()),
            (
                "tls.ticket-keys",
                self.tls.as_ref().is_some_and(|t| t.ticket_keys.is_some()),
            ),
            (
                "proxy-protocol",
                self.backends.iter().any(|b| b.proxy_protocol.is_some()),
            ),
            (
                "retry-unanswered",
                self.backends.iter().any(|b| b.retry_unanswered),
            ),
        ]
        .into_iter()
        .find_map(|(key, present)| present.then_some(key))
    }

    /// Reads and parses `path`. Errors are one line: `FILE:LINE:COLUMN: what is wrong`.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = crate::files::read_capped_text(path, "config file", crate::files::MAX_CONFIG)?;
        Config::parse(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))
    }

    /// Parses TOML text; the error starts with `LINE:COLUMN: `.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| {
            // toml's own Display quotes the offending line over several lines; we want one.
            let (line, column) = e
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((1, 1));
            let message = e.message().trim().replace('\n', " ");
            format!("{line}:{column}: {message}")
        })?;
        let h = config.health.as_ref();
        let l = config.limits.as_ref();
        for (key, value, zero_ok) in [
            ("connect-timeout", config.connect_timeout, false),
            ("handshake-timeout", config.handshake_timeout, false),
            ("idle-timeout", config.idle_timeout, true),
            ("drain-timeout", config.drain_timeout, true),
            (
                "limits.queue-timeout",
                l.and_then(|l| l.queue_timeout),
                false,
            ),
            ("health.cooldown", h.and_then(|h| h.cooldown), false),
            ("health.max-cooldown", h.and_then(|h| h.max_cooldown), false),
            ("health.interval", h.and_then(|h| h.interval), true),
            (
                "http.response-timeout",
                config.http.as_ref().and_then(|h| h.response_timeout),
                false,
            ),
            (
                "http.header-timeout",
                config.http.as_ref().and_then(|h| h.header_timeout),
                false,
            ),
            (
                "http.pool-idle-timeout",
                config.http.as_ref().and_then(|h| h.pool_idle_timeout),
                false,
            ),
            (
                "http.cache-stale-if-error",
                config.http.as_ref().and_then(|h| h.cache_stale_if_error),
                true,
            ),
        ] {
            // The flags' own rule (`cli::checked_seconds`), so a value one refuses the other
            // refuses too.
            if let Some(v) = value
                && let Err(why) = crate::cli::checked_seconds(v, zero_ok)
            {
                return Err(format!("{key} {why}, not {v}"));
            }
        }
        for (key, value) in [
            ("health.fail-after", h.and_then(|h| h.fail_after)),
            ("health.rise", h.and_then(|h| h.rise)),
            ("health.fall", h.and_then(|h| h.fall)),
        ] {
            if value == Some(0) {
                return Err(format!("{key} must be at least 1"));
            }
        }
        if let Some(http) = &config.http {
            if let Some(n) = http.max_head
                && !MAX_HEAD_RANGE.contains(&n)
            {
                return Err(format!(
                    "http.max-head must be from {} to {} bytes, not {n}",
                    MAX_HEAD_RANGE.start(),
                    MAX_HEAD_RANGE.end()
                ));
            }
            if let Some(name) = &http.cookie_name {
                crate::http::affinity::check_cookie_name(name)
                    .map_err(|e| format!("http.cookie-name: {e}"))?;
            }
            if let Some(domain) = &http.cookie_domain
                && !domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                return Err(format!(
                    "http.cookie-domain `{domain}` is not a domain name"
                ));
            }
        }
        if let Some(n) = config.workers
            && !(1..=MAX_WORKERS).contains(&n)
        {
            return Err(format!(
                "workers must be from 1 to {}, not {n}",
                MAX_WORKERS
            ));
        }
        Ok(config)
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let text = "listen = \"127.0.0.1:3000\"\nstrategy = \"round-robin\"\nca = \"certs/ca.pem\"\n\
                    insecure = false\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
                    [[backend]]\naddress = \"127.0.0.1:4444\"\ntls = true\n\
                    [[backend]]\naddress = \"127.0.0.1:4445\"\n";
        let c = Config::parse(text).unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:3000".parse().unwrap()));
        assert_eq!(c.strategy, Some(StrategyKind::RoundRobin));
        assert_eq!(c.backends.len(), 2);
        assert!(c.backends[0].tls && !c.backends[1].tls);
        assert_eq!(c.tls.unwrap().key, PathBuf::from("k.pem"));
    }

    #[test]
    fn the_sample_config_in_examples_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/07-final.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.backends.len(), 3);
        assert_eq!(c.backends[2].spec().to_string(), "tls://localhost:4446");
        assert_eq!(c.handshake_timeout, Some(10.0));
    }

    #[test]
    fn the_chapter_9_sample_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/09-strategies.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.strategy, Some(StrategyKind::LeastConnections));
        let weights: Vec<u32> = c.backends.iter().map(|b| b.spec().weight).collect();
        assert_eq!(weights, [2, 2, 1]);
        assert_eq!(c.backends[0].spec().check, HealthCheck::Http);
        let f = c.health.unwrap().failover();
        assert_eq!(f.max_cooldown, Duration::from_secs(30));
        assert_eq!(f.checks.unwrap().rise, 2);
    }

    #[test]
    fn the_chapter_10_sample_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/10-production.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.production_key(), Some("idle-timeout"));
        assert_eq!(c.admin, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!((c.idle_timeout, c.drain_timeout), (Some(300.0), Some(30.0)));
        let limits = c.limits.unwrap();
        assert_eq!((limits.queue, limits.max_per_client), (Some(128), Some(0)));
        assert!(limits.allow.is_empty() && limits.max_connections.is_none());
        assert_eq!(c.backends.len(), 3);
    }

    #[test]
    fn limits_and_proxy_protocol_parse() {
        let c = Config::parse(
            "accept-proxy = true\n[limits]\nallow = [\"10.0.0.0/8\", \"::1\"]\n\
             deny = [\"10.0.13.0/24\"]\n[[backend]]\naddress = \"h:1\"\n\
             proxy-protocol = \"v2\"\n",
        )
        .unwrap();
        let limits = c.limits.as_ref().unwrap();
        assert_eq!(limits.allow.len(), 2);
        assert_eq!(limits.deny[0].to_string(), "10.0.13.0/24");
        assert_eq!(
            c.backends[0].spec().proxy,
            Some(crate::proxy_protocol::Version::V2)
        );
        assert_eq!(c.production_key(), Some("accept-proxy"));
        let e = Config::parse("[limits]\ndeny = [\"10.0.0.1/8\"]\n").unwrap_err();
        assert!(e.starts_with("2:8: ") && e.contains("prefix"), "{e}");
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = Config::parse("listen = \"127.0.0.1:3000\"\nstratgy = \"random\"\n").unwrap_err();
        assert!(e.starts_with("2:1: unknown field `stratgy`"), "{e}");
        let e = Config::parse("[[backend]]\naddress = \"nope\"\n").unwrap_err();
        assert!(e.starts_with("2:11: ") && e.contains("HOST:PORT"), "{e}");
        let e = Config::parse("strategy = \"fastest\"\n").unwrap_err();
        assert!(e.starts_with("1:12: ") && e.contains("fastest"), "{e}");
        let e = Config::parse("connect-timeout = -1\n").unwrap_err();
        assert!(e.contains("connect-timeout"), "{e}");
        // What the flags refuse, the file refuses: a duration that would round to zero.
        for key in [
            "connect-timeout",
            "handshake-timeout",
            "idle-timeout",
            "drain-timeout",
        ] {
            let e = Config::parse(&format!("{key} = 1e-300\n")).unwrap_err();
            assert!(e.contains(key) && e.contains("nanosecond"), "{e}");
        }
        for key in ["cooldown", "max-cooldown", "interval"] {
            let e = Config::parse(&format!("[health]\n{key} = 1e-300\n")).unwrap_err();
            assert!(e.contains(key) && e.contains("nanosecond"), "{e}");
        }
        let e = Config::parse("[limits]\nqueue-timeout = 1e-300\n").unwrap_err();
        assert!(e.contains("queue-timeout"), "{e}");
        assert!(!Config::parse("listen = [\n").unwrap_err().contains('\n'));
        let e = Config::parse("[[backend]]\naddress = \"h:1\"\nweight = 0\n").unwrap_err();
        assert!(
            e.starts_with("3:10: ") && e.contains("weight must be"),
            "{e}"
        );
        let e = Config::parse("[health]\nrise = 0\n").unwrap_err();
        assert!(e.contains("health.rise"), "{e}");
        let e = Config::parse("[health]\nintervl = 1\n").unwrap_err();
        assert!(e.starts_with("2:1: unknown field `intervl`"), "{e}");
    }

    #[test]
    fn health_section_fills_defaults_and_zero_interval_turns_checks_off() {
        let c = Config::parse("[health]\nrise = 5\n").unwrap();
        let f = c.health.unwrap().failover();
        let checks = f.checks.unwrap();
        assert_eq!((f.fail_after, checks.rise, checks.fall), (3, 5, 3));
        let c = Config::parse("[health]\ninterval = 0\n").unwrap();
        assert!(c.health.unwrap().failover().checks.is_none());
        let c =
            Config::parse("[[backend]]\naddress = \"h:1\"\nweight = 4\nhealth-check = \"http\"\n")
                .unwrap();
        let spec = c.backends[0].spec();
        assert_eq!((spec.weight, spec.check), (4, HealthCheck::Http));
    }
}
