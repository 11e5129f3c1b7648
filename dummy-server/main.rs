//! # The dummy servers: the backends the tutorial balances over
//!
//! Mirrors the Go tutorial's "Creating dummy servers": small HTTP servers on 4444, 4445 and
//! 4446 that say which server they are, how many times they were called, and the headers they
//! received. One process runs all three (or as many as you give `--listen`).
//!
//! **What it adds:** the logic lives in [`lb::dummy`], so tests, benchmarks and the built-in
//! backends of `cargo run` run the very same server. Every response carries `x-served-by: NAME`;
//! `GET /bytes/N` answers N bytes (to push large bodies through a proxy) and `/echo` sends the
//! request body back. `--tls` serves HTTPS for chapters 6 and 7. `--delay MS` makes a server
//! slow and `GET /delay/MS` makes one request slow (chapters 8 and 9); `GET /health` answers
//! `ok` without counting as a hit.
//!
//! **What the Go version got wrong:** its counter `v` is a global incremented by every request
//! handler, and Go's HTTP server runs handlers concurrently: a data race (`go run -race`
//! reports it) that loses counts under load. Here each server has its own atomic counter.
//!
//! **Try it** in two terminals:
//!
//! ```text
//! terminal 1:  cargo run --bin dummy-server
//! terminal 2:  curl localhost:4444 ; curl localhost:4445 ; curl -i localhost:4446
//!              curl -s localhost:4444/bytes/100000 | wc -c
//!              time curl -s localhost:4445/delay/500
//! ```
//!
//! A slow third server: `cargo run --bin dummy-server -- --delay 0 --delay 0 --delay 100`.
//!
//! With your own ports and names: `cargo run --bin dummy-server -- --listen 127.0.0.1:5000
//! --name alpha --listen 127.0.0.1:5001 --name beta`. HTTPS (after `cargo run --bin certs`):
//! `cargo run --bin dummy-server -- --tls`, then `curl --cacert certs/ca.pem https://localhost:4444`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lb::dummy::{self, DummyServer};
use lb::registrant::{self, Lease, Registrar};
use lb::{cli, files, net, registry, tls};

/// The tutorial's dummy HTTP servers.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to serve on; repeat for several servers.
    #[arg(long = "listen", value_name = "ADDR", default_values = lb::TUTORIAL_BACKENDS)]
    listen: Vec<SocketAddr>,
    /// Name of the server on the --listen at the same position (default: server1, server2, …).
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// Milliseconds to wait before each answer, for the --listen at the same position (default
    /// 0): a slow backend for chapters 8 and 9.
    #[arg(long = "delay", value_name = "MS")]
    delays: Vec<u64>,
    /// Serve HTTPS instead of HTTP.
    #[arg(long)]
    tls: bool,
    /// Register with the balancer whose admin listener is at this URL (http://HOST:PORT), or
    /// in etcd (etcd://HOST:PORT/PREFIX/NAME, chapter 15), and keep the registration alive;
    /// repeat for several.
    #[arg(long = "register", value_name = "URL")]
    register: Vec<Registrar>,
    /// The URL clients should use to reach the server on the --listen at the same position,
    /// handed out by assigning balancers [default: http(s)://its address].
    #[arg(long = "advertise-url", value_name = "URL", value_parser = advertise_url)]
    advertise_urls: Vec<String>,
    /// The address balancers should dial for the --listen at the same position [default: the
    /// address it is bound to; required for 0.0.0.0].
    #[arg(long = "advertise", value_name = "HOST:PORT")]
    advertise: Vec<lb::backend::HostPort>,
    /// The balancers' registration token (a file, mode 600).
    #[arg(long, value_name = "FILE")]
    register_token_file: Option<PathBuf>,
    /// Seconds a registration lasts without a renewal; renewed every third of it.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = registration_ttl)]
    register_ttl: Duration,
    /// Certificate chain (PEM) for --tls.
    #[arg(long, value_name = "FILE", default_value = tls::DEFAULT_CERT)]
    cert: PathBuf,
    /// Private key (PEM) for --tls.
    #[arg(long, value_name = "FILE", default_value = tls::DEFAULT_KEY)]
    key: PathBuf,
}

fn advertise_url(s: &str) -> Result<String, String> {
    registry::check_url(s).map(|()| s.to_owned())
}

fn registration_ttl(s: &str) -> Result<Duration, String> {
    let ttl = cli::seconds(s)?;
    match registry::TTL_RANGE.contains(&ttl.as_secs_f64()) {
        true => Ok(ttl),
        false => Err(format!(
            "must be from {} to {} seconds",
            registry::TTL_RANGE.start(),
            registry::TTL_RANGE.end()
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    cli::report(run(args).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    for (count, flag) in [
        (args.names.len(), "--name"),
        (args.delays.len(), "--delay"),
        (args.advertise_urls.len(), "--advertise-url"),
        (args.advertise.len(), "--advertise"),
    ] {
        if count > args.listen.len() {
            anyhow::bail!(
                "{count} {flag} for {} --listen: each {flag} pairs with the --listen at its \
                 position",
                args.listen.len()
            );
        }
    }
    // etcd needs no token (etcd's own authentication is the deployment's); balancers do.
    let to_balancers = args
        .register
        .iter()
        .any(|r| matches!(r, Registrar::Balancer(_)));
    for registrar in &args.register {
        if let Registrar::Etcd { name: Some(_), .. } = registrar
            && args.listen.len() > 1
        {
            anyhow::bail!(
                "{registrar} names one key, for {} servers: end the URL with / to register \
                 each under its --name",
                args.listen.len()
            );
        }
    }
    // `Some` when registering: the balancers' token (etcd needs none here: its own
    // authentication is the deployment's).
    let token = match (&args.register_token_file, args.register.is_empty()) {
        (_, true) => None,
        (Some(path), false) => {
            let bytes = files::read_private(path, "registration token file", files::MAX_SECRET)?;
            let token = String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("{}: the token is not text", path.display()))?;
            Some(token.trim().to_owned())
        }
        (None, false) if to_balancers => anyhow::bail!(
            "--register with a balancer needs --register-token-file: balancers take \
             registrations with a token only"
        ),
        (None, false) => Some(String::new()),
    };
    let tls_config = match args.tls {
        true => Some(tls::server_config_from_files(&args.cert, &args.key)?),
        false => None,
    };
    // Bind everything before announcing anything: a port in use fails the start as a whole.
    let mut servers = Vec::new();
    for (i, &addr) in args.listen.iter().enumerate() {
        let name = args
            .names
            .get(i)
            .cloned()
            .unwrap_or(format!("server{}", i + 1));
        let delay = Duration::from_millis(args.delays.get(i).copied().unwrap_or(0));
        if delay > dummy::MAX_DELAY {
            anyhow::bail!(
                "--delay {} is over the {:?} limit",
                delay.as_millis(),
                dummy::MAX_DELAY
            );
        }
        let mut server = DummyServer::new(&name)?.with_delay(delay);
        if let Some(config) = &tls_config {
            server = server.with_tls(config.clone());
        }
        servers.push((server, net::listen(addr)?));
    }
    let (stop, _) = tokio::sync::watch::channel(false);
    let mut running = tokio::task::JoinSet::new();
    let (deregister, _) = tokio::sync::watch::channel(false);
    let mut registrations = tokio::task::JoinSet::new();
    for (i, (server, listener)) in servers.into_iter().enumerate() {
        let addr = net::announce(&listener)?;
        if let Some(token) = &token {
            registry::check_name(server.name())
                .map_err(|e| anyhow::anyhow!("cannot register as `{}`: {e}", server.name()))?;
            let address = match args.advertise.get(i) {
                Some(a) => a.to_string(),
                None if addr.ip().is_unspecified() => anyhow::bail!(
                    "{addr} is every address: give --advertise HOST:PORT, the one balancers \
                     should dial"
                ),
                None => addr.to_string(),
            };
            let scheme = if args.tls { "https" } else { "http" };
            let url = args
                .advertise_urls
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("{scheme}://{address}"));
            let lease = Lease::new(
                server.name(),
                &address,
                &url,
                args.tls,
                args.register_ttl,
                token.clone(),
            );
            for registrar in &args.register {
                registrations.spawn(registrant::keep_with(
                    registrar.clone(),
                    lease.clone(),
                    deregister.subscribe(),
                ));
            }
        }
        tracing::info!(
            "{} serving {} on {addr}{}",
            server.name(),
            if args.tls { "HTTPS" } else { "HTTP" },
            match server.delay() {
                d if d.is_zero() => String::new(),
                d => format!(", answering after {d:?}"),
            }
        );
        let mut stopped = stop.subscribe();
        running.spawn(server.run(listener, async move {
            let _ = stopped.wait_for(|&stop| stop).await;
        }));
    }
    // Ctrl-C or SIGTERM: every server stops accepting and lets the requests in flight finish
    // (`DummyServer::run`), so a farm that removes this server cuts nothing (chapter 13).
    cli::shutdown_signal().await;
    // Deregistered first: the balancers stop sending clients before the servers stop taking
    // them (chapter 14).
    let _ = deregister.send(true);
    while registrations.join_next().await.is_some() {}
    let _ = stop.send(true);
    while running.join_next().await.is_some() {}
    Ok(())
}
