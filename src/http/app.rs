//! `http-lb`'s start-up (chapter 12): chapter 10's flags, file and reload, plus the `[http]`
//! section and the flags that mirror it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::affinity::{self, CookieSettings};
use super::assign::Mode;
use super::balancer::{self, HttpServer, Settings};
use super::forward::Forwarding;
use super::h2::{self, H2Settings};
use super::pool;
use super::route::{Route, Target as RouteTarget};
use super::route::{Routed, RoutedTarget};
use super::static_files::{self, StaticDir};
use crate::app::{self, Common, Layer, Setup, Step};
use crate::cli;
use crate::config::{AffinityMode, Config, MAX_HEAD_RANGE};
use crate::files;
use crate::limits::Cidr;
use crate::strategy::StrategyKind;
use tokio::net::TcpListener;

/// The flags chapter 12 adds; each overrides its key in the config's `[http]` section.
#[derive(clap::Args, Clone)]
pub struct HttpArgs {
    /// Cache responses in memory, up to this many bytes (chapter 16).
    #[arg(long, value_name = "BYTES")]
    pub cache: Option<usize>,
    /// Compress responses with gzip, brotli or zstd when the client accepts it (chapter 16).
    #[arg(long)]
    pub compress: bool,
    /// Remove this response field before the client sees it (repeat); `Server` and
    /// `X-Powered-By` go too once any is given (chapter 16).
    #[arg(long = "hide-header", value_name = "NAME", value_parser = header_name)]
    pub hide_headers: Vec<String>,
    /// Serve the folder DIR directly for paths under PREFIX (repeat; the first match wins),
    /// with ETags, ranges and no way out of the folder (chapter 16).
    #[arg(long = "static", value_name = "PREFIX=DIR", value_parser = static_files::parse_flag)]
    pub statics: Vec<(String, PathBuf)>,
    /// Also serve files and folders whose name starts with a dot (`.env`, `.git/`), which
    /// static folders refuse (404) unless this is given.
    #[arg(long)]
    pub static_dotfiles: bool,
    /// `proxy` carries each request to a backend; `assign` answers with the backend the
    /// client should use itself: a 307 redirect, or JSON at /assign [default: proxy].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// How a user is kept on one backend: a cookie naming it (keyed), or none [default:
    /// cookie].
    #[arg(long, value_enum)]
    pub affinity: Option<AffinityMode>,
    /// The affinity cookie's name [default: lb].
    #[arg(long, value_name = "NAME", value_parser = cookie_name)]
    pub cookie_name: Option<String>,
    /// File holding the secret that keys the affinity cookie (at least 32 bytes; trailing
    /// whitespace is trimmed). Every instance that must agree on cookies uses the same one
    /// [default: a random secret per start].
    #[arg(long, value_name = "FILE")]
    pub affinity_secret_file: Option<PathBuf>,
    /// Believe and extend X-Forwarded-For and Forwarded from peers in this network (CIDR or
    /// address; repeat). Replaces the config's list.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxies: Vec<Cidr>,
    /// Seconds a backend has to start answering, counted from the end of the request, before
    /// the client gets 504 [default: 60]. Inside a body, either way, `--idle-timeout` is the
    /// longest pause.
    #[arg(long, value_name = "SECS", value_parser = cli::seconds)]
    pub response_timeout: Option<Duration>,
    /// Seconds a client has to send a request head before it gets 408 [default: 10].
    #[arg(long, value_name = "SECS", value_parser = cli::seconds)]
    pub header_timeout: Option<Duration>,
    /// Largest request body in bytes, answered 413 beyond; 0 for no limit [default: 0].
    #[arg(long, value_name = "BYTES")]
    pub max_body: Option<u64>,
    /// Largest request head in bytes, answered 431 beyond [default: 65536]. In HTTP/2, the
    /// largest header block (CONTINUATIONs included).
    #[arg(long, value_name = "BYTES", value_parser = max_head)]
    pub max_head: Option<usize>,
    /// Accept HTTP/2 in clear text (h2c) from clients that start with its preface, as
    /// `curl --http2-prior-knowledge` does (chapter 17). Over TLS, `h2` is offered in ALPN
    /// whatever this says.
    #[arg(long)]
    pub h2c: bool,
    /// Streams one HTTP/2 connection may have open at once [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: Option<u32>,
    /// Streams an HTTP/2 client may reset before their answer, per connection and second;
    /// past it the connection is closed (rapid reset, CVE-2023-44487) [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub h2_reset_budget: Option<u32>,
}

fn header_name(s: &str) -> Result<String, String> {
    hyper::header::HeaderName::from_bytes(s.as_bytes())
        .map(|_| s.to_owned())
        .map_err(|_| format!("`{s}` is not a header field name"))
}

/// Fields that frame an answer or manage its connection (RFC 9112 §6, RFC 9110 §7.6.1).
const FRAMING: [&str; 6] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "trailer",
];

/// The fields to hide: those named, and `Server` and `X-Powered-By` with them.
fn hidden(names: &[String]) -> anyhow::Result<Vec<hyper::header::HeaderName>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = vec![
        hyper::header::SERVER,
        hyper::header::HeaderName::from_static("x-powered-by"),
    ];
    for name in names {
        let name = hyper::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            anyhow::anyhow!("http.hide-headers: `{name}` is not a header field name")
        })?;
        // Without its framing or connection fields an answer cannot be read at all (a kept-alive
        // client would wait forever for its end): not a field to hide.
        if FRAMING.contains(&name.as_str()) {
            anyhow::bail!("http.hide-headers: `{name}` frames the answer and cannot be hidden");
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

fn cookie_name(s: &str) -> Result<String, String> {
    affinity::check_cookie_name(s).map(|()| s.to_owned())
}

fn max_head(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of bytes"))?;
    match MAX_HEAD_RANGE.contains(&n) {
        true => Ok(n),
        false => Err(format!(
            "must be from {} to {} bytes",
            MAX_HEAD_RANGE.start(),
            MAX_HEAD_RANGE.end()
        )),
    }
}

/// `main` for `http-lb`: the runtime `--workers` asks for, then [`run`].
pub fn main(
    step: Step,
    common: Common,
    strategy: Option<StrategyKind>,
    http: HttpArgs,
) -> anyhow::Result<()> {
    app::runtime(&step, &common)?.block_on(run(step, common, strategy, http))
}

/// Starts `http-lb` as the flags and config describe, and serves until Ctrl-C or SIGTERM,
/// reloading on SIGHUP: chapter 10's start-up (`app::serve`) with an `Http` layer.
pub async fn run(
    step: Step,
    common: Common,
    strategy: Option<StrategyKind>,
    http: HttpArgs,
) -> anyhow::Result<()> {
    let layer = Http {
        args: http,
        // A random secret, made once: a reload without a secret file keeps the cookies valid.
        fallback: random_secret(),
    };
    app::serve(layer, Setup::new(step, common, strategy, Layer::Http)).await
}

/// What `http-lb` brings to the shared start-up: its flags, and the affinity secret used
/// when no file gives one.
struct Http {
    args: HttpArgs,
    fallback: Vec<u8>,
}

impl app::Serving for Http {
    type Server = HttpServer;
    /// Chapter 10's balancer, and the HTTP settings.
    type Plan = (Settings, app::Plan);

    async fn plan(
        self: Arc<Self>,
        setup: Arc<Setup>,
        config: Config,
    ) -> anyhow::Result<Self::Plan> {
        prepare(&setup, &self.args, &self.fallback, config).await
    }
    fn summary(&self, (settings, plan): &Self::Plan) -> String {
        describe(&plan.summary, settings)
    }
    fn start(&self, setup: &Setup, (settings, plan): Self::Plan) -> Arc<HttpServer> {
        if settings.affinity.is_some() && uses_fallback(setup, &self.args) {
            tracing::warn!(
                "no affinity-secret-file: using a random secret, so other http-lb instances (and \
                 this one after a restart) will not recognise its cookies"
            );
        }
        HttpServer::new(plan.balancer, settings)
    }
    fn put(server: &HttpServer, (settings, plan): Self::Plan, reload: bool) {
        match reload {
            true => server.reload(plan.balancer, settings),
            false => server.replace(plan.balancer, settings),
        }
    }
    fn reload_failed(server: &HttpServer) {
        server.reload_failed();
    }
    async fn run(server: &Arc<HttpServer>, listener: TcpListener) {
        server.run(listener, cli::shutdown_signal()).await;
    }
    async fn drain(server: &HttpServer) -> usize {
        server.drain(cli::shutdown_signal()).await
    }
}

/// One configuration: the balancer chapter 10 would build, and the HTTP settings.
async fn prepare(
    setup: &Setup,
    http: &HttpArgs,
    fallback: &[u8],
    config: Config,
) -> anyhow::Result<(Settings, app::Plan)> {
    let settings = settings(http, &config, fallback)?;
    if let Some(entry) = config.backends.iter().find(|b| b.proxy_protocol.is_some()) {
        anyhow::bail!(
            "backend {}: http-lb sends requests over pooled connections shared by many clients, \
             so it cannot send a PROXY header per client; the backends see X-Forwarded-For",
            entry.address
        );
    }
    let unanswered = config.backends.iter().find(|b| b.retry_unanswered);
    let unanswered = unanswered.map(|b| b.address.to_string()).or_else(|| {
        let flags = setup.common.backends.iter();
        flags
            .filter(|b| b.retry_unanswered)
            .map(|b| b.addr.to_string())
            .next()
    });
    if let Some(address) = unanswered {
        anyhow::bail!(
            "backend {address}: retry-unanswered is tcp-lb's; http-lb decides retries per \
             request, from its method (only idempotent ones, RFC 9110 §9.2.2)"
        );
    }
    if let Some(b) = setup.common.backends.iter().find(|b| b.proxy.is_some()) {
        anyhow::bail!(
            "backend {}: http-lb cannot send PROXY headers over pooled connections; the \
             backends see X-Forwarded-For",
            b.addr
        );
    }
    // An assignment holds no connection, so least-connections would see none: it counts
    // assignments instead (least-called), as seed 001 asks.
    setup.count_assignments(settings.mode == Mode::Assign);
    let plan = setup.plan(config).await?;
    Ok((settings, plan))
}

fn uses_fallback(setup: &Setup, http: &HttpArgs) -> bool {
    http.affinity_secret_file.is_none()
        && setup
            .common
            .config
            .as_ref()
            .and_then(|p| Config::load(p).ok())
            .and_then(|c| c.http)
            .and_then(|h| h.affinity_secret_file)
            .is_none()
}

/// The `[http]` section with each flag given overriding its key.
fn settings(http: &HttpArgs, config: &Config, fallback: &[u8]) -> anyhow::Result<Settings> {
    let section = config.http.as_ref();
    let key = |f: fn(&crate::config::HttpSection) -> Option<f64>| {
        section.and_then(f).map(Duration::from_secs_f64)
    };
    let mode = http
        .affinity
        .or(section.and_then(|s| s.affinity))
        .unwrap_or(AffinityMode::Cookie);
    let affinity = match mode {
        AffinityMode::None => None,
        AffinityMode::Cookie => {
            let file = http
                .affinity_secret_file
                .clone()
                .or(section.and_then(|s| s.affinity_secret_file.clone()));
            let secret = match file {
                Some(path) => read_secret(&path)?,
                None => fallback.to_vec(),
            };
            let cookie = CookieSettings {
                name: http
                    .cookie_name
                    .clone()
                    .or(section.and_then(|s| s.cookie_name.clone()))
                    .unwrap_or_else(|| affinity::DEFAULT_COOKIE.to_owned()),
                max_age: section.and_then(|s| s.cookie_max_age),
                domain: section.and_then(|s| s.cookie_domain.clone()),
            };
            Some((secret, cookie))
        }
    };
    let trusted = match http.trusted_proxies.is_empty() {
        false => http.trusted_proxies.clone(),
        true => section
            .map(|s| s.trusted_proxies.clone())
            .unwrap_or_default(),
    };
    let hide = match http.hide_headers.is_empty() {
        false => hidden(&http.hide_headers)?,
        true => hidden(&section.map(|s| s.hide_headers.clone()).unwrap_or_default())?,
    };
    let compress =
        (http.compress || section.and_then(|s| s.compress).unwrap_or(false)).then(|| {
            section
                .and_then(|s| s.compress_min_size)
                .unwrap_or(super::compress::DEFAULT_MIN_SIZE)
        });
    let statics = match http.statics.is_empty() {
        false => http.statics.clone(),
        true => section
            .map(|s| {
                s.statics
                    .iter()
                    .map(|f| static_files::parse_flag(f))
                    .collect()
            })
            .transpose()
            .map_err(|e| anyhow::anyhow!("http.static: {e}"))?
            .unwrap_or_default(),
    };
    let dotfiles = http.static_dotfiles || section.and_then(|s| s.static_dotfiles) == Some(true);
    // The config's routes in order, then `--static` folders (or the config's `static`).
    let mut routes = Vec::new();
    let configured = section.map(|s| s.routes.clone()).unwrap_or_default();
    let folders = statics.iter().map(|(prefix, dir)| Route {
        prefix: prefix.clone(),
        host: None,
        target: RouteTarget::Static(dir.clone()),
    });
    for route in configured.into_iter().chain(folders) {
        let target = match &route.target {
            RouteTarget::Backends(_) => RoutedTarget::Pool,
            RouteTarget::Static(dir) => RoutedTarget::Static(
                StaticDir::new(&route.prefix, dir)
                    .map_err(anyhow::Error::msg)?
                    .with_dotfiles(dotfiles),
            ),
            RouteTarget::Redirect { to, status } => RoutedTarget::Redirect {
                to: to.clone(),
                status: hyper::StatusCode::from_u16(*status)?,
            },
        };
        routes.push(Routed {
            route,
            target,
            hits: Default::default(),
        });
    }
    let cache = match http.cache.or(section.and_then(|s| s.cache)) {
        None | Some(0) => None,
        Some(bytes) => Some((
            bytes,
            section
                .and_then(|s| s.cache_stale_if_error)
                .map_or(Duration::ZERO, Duration::from_secs_f64),
        )),
    };
    Ok(Settings {
        cache,
        compress,
        hide,
        routes,
        mode: http
            .mode
            .or(section.and_then(|s| s.mode))
            .unwrap_or_default(),
        affinity,
        forwarding: Forwarding {
            trusted,
            forwarded: section.and_then(|s| s.forwarded).unwrap_or(false),
            via: section.and_then(|s| s.via).unwrap_or(false),
        },
        header_timeout: http
            .header_timeout
            .or(key(|s| s.header_timeout))
            .unwrap_or(balancer::DEFAULT_HEADER_TIMEOUT),
        response_timeout: http
            .response_timeout
            .or(key(|s| s.response_timeout))
            .unwrap_or(balancer::DEFAULT_RESPONSE_TIMEOUT),
        max_head: http
            .max_head
            .or(section.and_then(|s| s.max_head))
            .unwrap_or(balancer::DEFAULT_MAX_HEAD),
        max_body: http
            .max_body
            .or(section.and_then(|s| s.max_body))
            .filter(|&n| n > 0),
        pool_max_idle: section
            .and_then(|s| s.pool_max_idle)
            .unwrap_or(pool::DEFAULT_MAX_IDLE),
        pool_idle_timeout: key(|s| s.pool_idle_timeout).unwrap_or(pool::DEFAULT_IDLE_TIMEOUT),
        h2: H2Settings {
            h2c: http.h2c || section.and_then(|s| s.h2c) == Some(true),
            max_concurrent_streams: http
                .max_concurrent_streams
                .or(section.and_then(|s| s.max_concurrent_streams))
                .unwrap_or(h2::DEFAULT_MAX_CONCURRENT_STREAMS),
            reset_budget: http
                .h2_reset_budget
                .or(section.and_then(|s| s.h2_reset_budget))
                .unwrap_or(h2::DEFAULT_RESET_BUDGET),
        },
    })
}

/// The affinity secret: the file's bytes, trailing whitespace (a final newline) trimmed.
fn read_secret(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let mut secret = files::read_capped(path, "affinity secret file", files::MAX_SECRET)?;
    while secret.last().is_some_and(u8::is_ascii_whitespace) {
        secret.pop();
    }
    if secret.len() < affinity::MIN_SECRET {
        anyhow::bail!(
            "affinity secret file {} holds {} bytes; at least {} are needed (for example: \
             head -c 32 /dev/urandom | base64 > {})",
            path.display(),
            secret.len(),
            affinity::MIN_SECRET,
            path.display()
        );
    }
    Ok(secret)
}

fn random_secret() -> Vec<u8> {
    use rand::Rng as _;
    let mut secret = vec![0u8; affinity::MIN_SECRET];
    rand::rng().fill_bytes(&mut secret);
    secret
}

/// The start-up line: chapter 10's, then what `[http]` adds.
fn describe(summary: &str, s: &Settings) -> String {
    let affinity = match &s.affinity {
        Some((_, cookie)) => format!("cookie affinity ({})", cookie.name),
        None => "no affinity".to_owned(),
    };
    let http2 = match s.h2.h2c {
        true => "HTTP/2 (h2 over TLS, h2c)",
        false => "HTTP/2 over TLS",
    };
    let mut line = format!(
        "HTTP/1.1 and {http2} ({} streams), {affinity}, response timeout {:?}, header timeout \
         {:?}, max head {} bytes",
        s.h2.max_concurrent_streams, s.response_timeout, s.header_timeout, s.max_head
    );
    if let Some(max) = s.max_body {
        line += &format!(", max body {max} bytes");
    }
    if !s.forwarding.trusted.is_empty() {
        let list: Vec<String> = s.forwarding.trusted.iter().map(|c| c.to_string()).collect();
        line += &format!(", trusts X-Forwarded-For from {}", list.join(" "));
    }
    format!("{line}; {summary}")
}
