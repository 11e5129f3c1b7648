//! # Step 14: `assign-client`, the client of seed 001's assign-and-register design
//!
//! Seed 001 proposes redundant balancers whose only job is to hand each client the address of
//! one application server, which the client then uses directly for all its requests: the
//! response bandwidth never crosses a balancer, and the client keeps its server (affinity for
//! free). Servers register themselves with every balancer (`dummy-server --register`,
//! [`lb::registry`]); the balancers are `http-lb --mode assign` ([`lb::http::assign`]). This
//! binary is the client the design needs:
//!
//! 1. ask a balancer for a server (`GET /assign`, JSON), trying the next balancer in the list
//!    when one does not answer: the seed's redundant balancers;
//! 2. send every request to that server, printing which server answered each;
//! 3. when the server fails (no connection, or no answer), ask again, telling the balancer
//!    which server failed (`?exclude=NAME`), and repeat the request there: the caller sees no
//!    failed request.
//!
//! It keeps the balancer's affinity cookie, so asking again while its server lives returns the
//! same server. URLs may be `https://`: it trusts `--ca` and resolves `*.localhost` to
//! 127.0.0.1 itself, as curl and browsers do, so servers can present one wildcard certificate
//! (`certs --wildcard apps.localhost`) each on its own name.
//!
//! **What the Go version got wrong:** nothing to compare; the Go tutorial's balancer proxies
//! every byte, which is what this design avoids.
//!
//! **Try it** in four terminals (`cargo build` first; see README chapter 14):
//!
//! ```text
//! terminal 1:  mkdir -p certs; openssl rand -hex 32 > certs/token; chmod 600 certs/token
//!              cargo run --bin http-lb -- --mode assign --admin 127.0.0.1:9000 --admin-token-file certs/token
//! terminal 2:  cargo run --bin dummy-server -- --listen 127.0.0.1:5001 --name s1 --listen 127.0.0.1:5002 --name s2 \
//!                  --register http://127.0.0.1:9000 --register-token-file certs/token
//! terminal 3:  cargo run --bin assign-client -- --requests 20 --interval 500 http://127.0.0.1:8080
//! ```

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use lb::cli;
use lb::conn::Conn;
use lb::http::client;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// assign-client: ask a balancer for a server, then talk to that server directly.
#[derive(Parser)]
#[command(name = "assign-client", version)]
struct Args {
    /// Balancers to ask (http-lb --mode assign), in order of preference.
    #[arg(value_name = "URL", required = true, value_parser = parse_url)]
    balancers: Vec<Url>,
    /// How many requests to send.
    #[arg(long, value_name = "N", default_value_t = 10)]
    requests: u32,
    /// The path to ask each time.
    #[arg(long, value_name = "PATH", default_value = "/")]
    path: String,
    /// Milliseconds between requests.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    interval: u64,
    /// Seconds to keep asking, with a growing pause (0.1 s, doubling, at most 2 s), while no
    /// balancer has a server to assign (every server down or restarting) before giving up.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = cli::seconds_or_zero)]
    wait: Duration,
    /// CA certificates (PEM) that https:// servers and balancers must chain to.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

/// `http(s)://HOST:PORT` with an optional path, as far as this client needs.
#[derive(Clone, Debug)]
struct Url {
    tls: bool,
    host: String,
    port: u16,
    /// The path prefix, without a trailing `/`.
    base: String,
}

fn parse_url(s: &str) -> Result<Url, String> {
    let (tls, rest) = match s.split_once("://") {
        Some(("http", rest)) => (false, rest),
        Some(("https", rest)) => (true, rest),
        _ => return Err(format!("`{s}` is not an http:// or https:// URL")),
    };
    let (authority, base) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
            host.trim_start_matches('[').trim_end_matches(']'),
            port.parse::<u16>()
                .map_err(|_| format!("`{port}` in `{s}` is not a port"))?,
        ),
        _ => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    Ok(Url {
        tls,
        host: host.to_owned(),
        port,
        base: base.to_owned(),
    })
}

/// What the client holds: how to reach servers, and its server while it has one.
struct Client {
    tls: Arc<rustls::ClientConfig>,
    cookie: Option<String>,
}

/// A server a balancer handed out.
struct Assigned {
    name: String,
    url: Url,
}

/// How many times one request is tried on a new server before the caller is told it failed.
const ATTEMPTS: u32 = 5;
/// How long a connection and an answer may take.
const TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return cli::report(Err(anyhow::anyhow!("cannot start the runtime: {e}"))),
    };
    cli::report(runtime.block_on(run(args)))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tls = match &args.ca {
        Some(ca) => lb::tls::client_config(lb::tls::load_roots(ca)?)?,
        None => lb::tls::client_config(rustls::RootCertStore::empty())?,
    };
    let mut client = Client { tls, cookie: None };
    let mut server: Option<Assigned> = None;
    let mut failed: Option<String> = None;
    for n in 1..=args.requests {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let assigned = match server.take() {
                Some(s) => s,
                None => client.ask_waiting(&args, failed.as_deref()).await?,
            };
            match client.get(&assigned.url, &args.path).await {
                Ok((status, served_by)) => {
                    let by = served_by.unwrap_or_else(|| assigned.name.clone());
                    println!("request {n}: {status} from {by} at {}", show(&assigned.url));
                    failed = None;
                    server = Some(assigned);
                    break;
                }
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(server = %assigned.name, "failed ({e}): asking for another");
                    failed = Some(assigned.name);
                }
                Err(e) => {
                    anyhow::bail!(
                        "request {n} failed on {ATTEMPTS} servers, the last {}: {e}",
                        assigned.name
                    )
                }
            }
        }
        if args.interval > 0 && n < args.requests {
            tokio::time::sleep(Duration::from_millis(args.interval)).await;
        }
    }
    Ok(())
}

impl Client {
    /// [`Client::ask`] until a server is assigned or `--wait` runs out: a moment with no
    /// server (the only one restarting) is not the end of the client's work.
    async fn ask_waiting(&mut self, args: &Args, failed: Option<&str>) -> anyhow::Result<Assigned> {
        let until = tokio::time::Instant::now() + args.wait;
        let mut pause = Duration::from_millis(100);
        loop {
            match self.ask(&args.balancers, failed).await {
                Ok(assigned) => return Ok(assigned),
                Err(e) if tokio::time::Instant::now() + pause < until => {
                    tracing::warn!("{e:#}: asking again in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `GET /assign` from the first balancer that answers, sending the affinity cookie and the
    /// server that just failed, if any.
    async fn ask(&mut self, balancers: &[Url], failed: Option<&str>) -> anyhow::Result<Assigned> {
        let query = failed.map(|f| format!("?exclude={f}")).unwrap_or_default();
        let mut why = String::new();
        for balancer in balancers {
            let path = format!("/assign{query}");
            match self.request(balancer, &path).await {
                Ok(answer) if answer.status == 200 => {
                    if let Some(cookie) = answer.set_cookie {
                        self.cookie = cookie.split(';').next().map(str::to_owned);
                    }
                    let json: serde_json::Value = serde_json::from_slice(&answer.body)
                        .with_context(|| {
                            format!("{} answered /assign with no JSON", show(balancer))
                        })?;
                    let name = json["name"].as_str().unwrap_or("?").to_owned();
                    let url = json["url"]
                        .as_str()
                        .map(parse_url)
                        .transpose()
                        .map_err(anyhow::Error::msg)?
                        .with_context(|| {
                            format!("{} assigned a server without a url", show(balancer))
                        })?;
                    tracing::info!(balancer = %show(balancer), "assigned {name} ({})", show(&url));
                    return Ok(Assigned { name, url });
                }
                Ok(answer) => why = format!("{} answered {}", show(balancer), answer.status),
                Err(e) => {
                    tracing::warn!(balancer = %show(balancer), "no answer ({e}): trying the next");
                    why = format!("{}: {e}", show(balancer));
                }
            }
        }
        anyhow::bail!("no balancer assigned a server (last: {why})")
    }

    /// One request to the assigned server: its status and `x-served-by`. A 5xx counts as a
    /// failure of the server, as no connection does.
    async fn get(&self, server: &Url, path: &str) -> io::Result<(u16, Option<String>)> {
        let answer = self
            .request(server, &format!("{}{path}", server.base))
            .await?;
        if answer.status >= 500 {
            return Err(io::Error::other(format!("answered {}", answer.status)));
        }
        Ok((answer.status, answer.served_by))
    }

    /// `GET path` on a new connection to `url`'s host (TLS for https), the whole answer.
    async fn request(&self, url: &Url, path: &str) -> io::Result<Answer> {
        let exchange = async {
            let tcp = TcpStream::connect(resolve(url).await?).await?;
            let conn = match url.tls {
                false => Conn::Plain(tcp),
                true => {
                    let name = ServerName::try_from(url.host.clone())
                        .map_err(|_| io::Error::other(format!("`{}` is no TLS name", url.host)))?;
                    let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
                        .connect(name, tcp)
                        .await?;
                    Conn::TlsClient(Box::new(tls))
                }
            };
            let mut request = hyper::Request::get(path)
                .header(hyper::header::HOST, format!("{}:{}", url.host, url.port))
                .header(hyper::header::USER_AGENT, "assign-client");
            if let Some(cookie) = &self.cookie {
                request = request.header(hyper::header::COOKIE, cookie);
            }
            let request = request.body(client::body("")).map_err(io::Error::other)?;
            let answer = client::fetch(conn, request, MAX_ANSWER).await?;
            Ok(Answer {
                status: answer.status.as_u16(),
                set_cookie: answer.header("set-cookie").map(str::to_owned),
                served_by: answer.header("x-served-by").map(str::to_owned),
                body: answer.body.to_vec(),
            })
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time")))
    }
}

/// The most of an answer the client reads: a page of the demo servers, or an assignment.
const MAX_ANSWER: usize = 1 << 20;

/// An answer, as much of it as the client reads.
struct Answer {
    status: u16,
    set_cookie: Option<String>,
    served_by: Option<String>,
    body: Vec<u8>,
}

/// The address to dial: `localhost` and every `*.localhost` name are the loopback address
/// (RFC 6761), as curl and browsers treat them, with no DNS or /etc/hosts entry needed.
async fn resolve(url: &Url) -> io::Result<SocketAddr> {
    let host = url.host.to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return Ok(SocketAddr::from(([127, 0, 0, 1], url.port)));
    }
    tokio::net::lookup_host((url.host.as_str(), url.port))
        .await?
        .next()
        .ok_or_else(|| io::Error::other(format!("{} resolves to no address", url.host)))
}

fn show(url: &Url) -> String {
    let scheme = if url.tls { "https" } else { "http" };
    format!("{scheme}://{}:{}{}", url.host, url.port, url.base)
}
