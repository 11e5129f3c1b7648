//! The farm's page (`--dashboard ADDR`, chapter 13): the four tiers as columns, each member's
//! state and load, what a new TLS connection costs each tier in CPU, and the path one request
//! takes through them.
//!
//! It learns everything from outside, as an operator's tools would: each balancer's `/metrics`
//! on its admin listener, each process's CPU time in `/proc/PID/stat`, and, for the path, one
//! real HTTPS request through the front door. A member's state is what the tier in front of
//! it thinks (its health checks), since that is what decides whether traffic reaches it; the
//! load shown for it is what that tier sent it (an application has no admin listener of its
//! own).
//!
//! The page itself (`lb::status::farm_asset`) polls `GET /farm.json` every second and does
//! the arithmetic of rates and costs between two polls; it puts every value in as text, and
//! goes out with the admin page's strict `Content-Security-Policy`. The farm's balancers have
//! no admin token, so neither has this page; it listens on 127.0.0.1 unless told otherwise.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use lb::http::client::{Body, body};
use lb::metrics::Sample;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::farm::{Member, Roster, Tier};

/// How long one member's `/metrics` may take: a member slower than that is shown as silent
/// rather than holding up the whole page.
const SCRAPE_LIMIT: Duration = Duration::from_secs(1);
/// How long the traced request may take, handshake included.
const TRACE_LIMIT: Duration = Duration::from_secs(5);
/// A busy farm moves other counters during a trace; this many tries to find a quiet moment.
const TRACE_TRIES: usize = 3;
/// Connections served at once: a page, its scripts and its polls, a few times over.
const MAX_CONNECTIONS: usize = 16;
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The trace's answer (`dummy-server` describing the request) is far smaller.
const MAX_ANSWER: usize = 1 << 20;
/// The field a trace must carry: a page of another site cannot send it without a CORS
/// preflight, which this listener never grants, so it cannot make the farm send requests.
const TRACE_FIELD: &str = "x-farm-trace";

/// What the page's server knows: who is in the farm, and how to reach its front door.
pub struct Dashboard {
    roster: watch::Receiver<Roster>,
    entry: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    started: Instant,
    ticks: f64,
}

impl Dashboard {
    /// `ca` is the farm's CA, which the traced request trusts.
    pub fn new(
        roster: watch::Receiver<Roster>,
        entry: SocketAddr,
        ca: &std::path::Path,
    ) -> anyhow::Result<Dashboard> {
        let tls = lb::tls::client_config(lb::tls::load_roots(ca)?)?;
        Ok(Dashboard {
            roster,
            entry,
            tls,
            started: Instant::now(),
            ticks: rustix::param::clock_ticks_per_second() as f64,
        })
    }
}

/// Serves the page on `listener` for as long as the farm runs.
pub async fn run(listener: TcpListener, dashboard: Arc<Dashboard>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = lb::net::accept(&listener).await;
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(client = %peer, "dashboard busy: connection closed");
            continue;
        };
        let dashboard = Arc::clone(&dashboard);
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let dashboard = Arc::clone(&dashboard);
                async move { Ok::<_, Infallible>(respond(&dashboard, req).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(client = %peer, "dashboard connection ended: {e}");
            }
        });
    }
}

async fn respond(dashboard: &Dashboard, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let method = req.method();
    if (method == Method::GET || method == Method::HEAD)
        && let Some(asset) = lb::status::farm_asset(path)
    {
        return answer(StatusCode::OK, asset.content_type, asset.body.to_owned());
    }
    match (method, path) {
        (&Method::GET, "/farm.json") => {
            let view = dashboard.view().await;
            json(StatusCode::OK, &view)
        }
        (&Method::POST, "/trace") if req.headers().contains_key(TRACE_FIELD) => {
            match dashboard.trace().await {
                Ok(trace) => json(StatusCode::OK, &trace),
                // The farm's failure, reported as the gateway's (RFC 9110 §15.6.3).
                Err(e) => answer(
                    StatusCode::BAD_GATEWAY,
                    "text/plain; charset=utf-8",
                    format!("{e:#}\n"),
                ),
            }
        }
        (&Method::POST, "/trace") => answer(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            format!("a trace needs the `{TRACE_FIELD}` field (the page sends it)\n"),
        ),
        (&Method::GET, _) => answer(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try / or /farm.json\n".to_owned(),
        ),
        _ => answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET, and POST /trace\n".to_owned(),
        ),
    }
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let text = serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned());
    answer(status, "application/json", text)
}

/// Every answer carries the admin page's security headers, errors too.
fn answer(status: StatusCode, content_type: &'static str, text: String) -> Response<Body> {
    let mut response = Response::new(body(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in lb::status::security_headers() {
        headers.insert(name, value);
    }
    response
}

/// One member's numbers as read now: its `/metrics` (balancers) and its CPU time.
struct Scraped {
    samples: Result<Vec<Sample>, String>,
    cpu: Option<f64>,
}

/// The whole farm at one moment, as `GET /farm.json` gives it.
#[derive(Serialize)]
struct View {
    /// Seconds since the dashboard started: rates are taken between two views' `at`.
    at: f64,
    entry: SocketAddr,
    tiers: Vec<TierView>,
}

#[derive(Serialize)]
struct TierView {
    tier: &'static str,
    title: &'static str,
    /// What `active` and `total` count for its members.
    unit: &'static str,
    members: Vec<MemberView>,
}

#[derive(Serialize)]
struct MemberView {
    name: String,
    pid: u32,
    address: SocketAddr,
    admin: Option<SocketAddr>,
    /// `up`, `down`, `partly` (up for some of the tier in front), `draining`, `silent` (its
    /// admin listener does not answer) or `starting` (not yet in the front's config).
    state: &'static str,
    /// Why, in words.
    detail: String,
    /// CPU seconds, user and system, since it started.
    cpu: Option<f64>,
    /// Open now, and in all, as the tier in front counts them (tier 1: its own clients).
    active: f64,
    total: f64,
    /// Client TLS handshakes it completed (offloaders).
    #[serde(skip_serializing_if = "Option::is_none")]
    full: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resumed: Option<f64>,
    /// Requests it took in (tier 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    requests: Option<f64>,
}

/// The path of one request, front to back.
#[derive(Serialize)]
struct Trace {
    status: u16,
    /// `x-served-by`: the application that answered, in its own words.
    served_by: Option<String>,
    millis: f64,
    /// `full` or `resumed`: the offloader's TLS handshake for it.
    handshake: &'static str,
    hops: Vec<Hop>,
    /// Every hop is one member: no other traffic moved the same counters.
    certain: bool,
    tries: usize,
}

#[derive(Serialize)]
struct Hop {
    tier: &'static str,
    /// The members it may have crossed: one when certain.
    names: Vec<String>,
}

impl Dashboard {
    async fn view(&self) -> View {
        let roster = self.roster.borrow().clone();
        let scraped = self.scrape(&roster).await;
        let at = self.started.elapsed().as_secs_f64();
        let tiers = Tier::ALL
            .iter()
            .map(|&tier| TierView {
                tier: tier.key(),
                title: title(tier),
                unit: if tier == Tier::App {
                    "requests"
                } else {
                    "connections"
                },
                members: roster
                    .members
                    .iter()
                    .map(|m| (m, false))
                    .chain(roster.draining.iter().map(|m| (m, true)))
                    .filter(|(m, _)| m.tier == tier)
                    .map(|(m, draining)| member_view(m, draining, &roster, &scraped))
                    .collect(),
            })
            .collect();
        View {
            at,
            entry: self.entry,
            tiers,
        }
    }

    /// Every member's numbers, read at once.
    async fn scrape(&self, roster: &Roster) -> HashMap<u32, Scraped> {
        let mut reads = tokio::task::JoinSet::new();
        for m in roster.members.iter().chain(&roster.draining) {
            let (pid, admin, ticks) = (m.pid, m.admin, self.ticks);
            reads.spawn(async move {
                let samples = match admin {
                    Some(admin) => crate::farm::metrics(admin, SCRAPE_LIMIT)
                        .await
                        .map(|text| lb::metrics::parse(&text))
                        .map_err(|e| format!("{e:#}")),
                    None => Ok(Vec::new()),
                };
                let cpu = cpu_seconds(pid, ticks);
                (pid, Scraped { samples, cpu })
            });
        }
        let mut out = HashMap::new();
        while let Some(read) = reads.join_next().await {
            if let Ok((pid, scraped)) = read {
                out.insert(pid, scraped);
            }
        }
        out
    }

    /// One HTTPS request through the front door, and the counters of every tier read just
    /// before and just after it: the members whose counters moved are its path. Retried when
    /// other traffic moved the same counters.
    async fn trace(&self) -> anyhow::Result<Trace> {
        let mut tries = 0;
        loop {
            tries += 1;
            let roster = self.roster.borrow().clone();
            let before = self.scrape(&roster).await;
            let started = Instant::now();
            let (status, served_by, handshake) = tokio::time::timeout(TRACE_LIMIT, self.probe())
                .await
                .with_context(|| format!("no answer within {TRACE_LIMIT:?}"))??;
            let millis = started.elapsed().as_secs_f64() * 1000.0;
            let after = self.scrape(&roster).await;
            let hops = path(&roster, &before, &after, served_by.as_deref());
            let certain = hops.iter().all(|h| h.names.len() == 1);
            if certain || tries == TRACE_TRIES {
                return Ok(Trace {
                    status,
                    served_by,
                    millis,
                    handshake,
                    hops,
                    certain,
                    tries,
                });
            }
        }
    }

    /// `GET /` on a new TLS connection to tier 1, as a browser would send it.
    async fn probe(&self) -> anyhow::Result<(u16, Option<String>, &'static str)> {
        let tcp = tokio::net::TcpStream::connect(self.entry)
            .await
            .with_context(|| format!("cannot connect to the farm at {}", self.entry))?;
        let name = ServerName::try_from("localhost")?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .context("TLS handshake with the farm failed")?;
        let handshake = match tls.get_ref().1.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => "resumed",
            _ => "full",
        };
        let request = Request::get("/")
            .header(HOST, "localhost")
            .header("user-agent", "ssl-farm dashboard (trace)")
            .body(body(""))?;
        let answer = lb::http::client::fetch(tls, request, MAX_ANSWER)
            .await
            .context("the farm's answer")?;
        let served_by = answer.header(lb::dummy::SERVED_BY).map(str::to_owned);
        Ok((answer.status.as_u16(), served_by, handshake))
    }
}

fn title(tier: Tier) -> &'static str {
    match tier {
        Tier::L4 => "tier 1: layer 4",
        Tier::Offload => "tier 2: TLS offloaders",
        Tier::L7 => "tier 3: layer 7",
        Tier::App => "tier 4: applications",
    }
}

/// The metric prefix of the balancer a member of `tier` runs.
fn prefix(tier: Tier) -> &'static str {
    if tier == Tier::L7 { "httplb" } else { "tcplb" }
}

/// The sum of the samples called `name` (every label set), or only those of `backend`.
fn sum(samples: &[Sample], name: &str, backend: Option<&str>) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && backend.is_none_or(|b| s.label("backend") == Some(b)))
        .map(|s| s.value)
        .sum()
}

/// What a tier in front counts per backend, for `member`: `(active, total)`.
fn counted_in_front(member: &Member, front: &[&[Sample]]) -> (f64, f64) {
    let p = prefix(member.tier.front().unwrap_or(Tier::L4));
    let total_name = if member.tier == Tier::App {
        format!("{p}_backend_responses_total")
    } else {
        format!("{p}_backend_connections_total")
    };
    let backend = member.address.to_string();
    front.iter().fold((0.0, 0.0), |(active, total), samples| {
        (
            active
                + sum(
                    samples,
                    &format!("{p}_backend_connections_active"),
                    Some(&backend),
                ),
            total + sum(samples, &total_name, Some(&backend)),
        )
    })
}

fn member_view(
    m: &Member,
    draining: bool,
    roster: &Roster,
    scraped: &HashMap<u32, Scraped>,
) -> MemberView {
    let own = scraped.get(&m.pid);
    let own_samples = own.and_then(|s| s.samples.as_ref().ok()).map(Vec::as_slice);
    let front: Vec<&[Sample]> = match m.tier.front() {
        Some(front) => roster
            .members
            .iter()
            .filter(|f| f.tier == front)
            .filter_map(|f| scraped.get(&f.pid)?.samples.as_ref().ok())
            .map(Vec::as_slice)
            .collect(),
        None => Vec::new(),
    };
    let p = prefix(m.tier);
    let (active, total) = match (m.tier, own_samples) {
        (Tier::L4, Some(own)) => (
            sum(own, "tcplb_connections_active", None),
            sum(own, "tcplb_connections_total", None),
        ),
        (Tier::L4, None) => (0.0, 0.0),
        _ => counted_in_front(m, &front),
    };
    let handshakes = |kind: &str| {
        own_samples.map(|own| {
            own.iter()
                .filter(|s| {
                    s.name == "tcplb_client_tls_handshakes_total" && s.label("kind") == Some(kind)
                })
                .map(|s| s.value)
                .sum()
        })
    };
    let offloader = m.tier == Tier::Offload;
    let (state, detail) = state(m, draining, own, &front);
    MemberView {
        name: m.name.clone(),
        pid: m.pid,
        address: m.address,
        admin: m.admin,
        state,
        detail,
        cpu: own.and_then(|s| s.cpu),
        active,
        total,
        full: handshakes("full").filter(|_| offloader),
        resumed: handshakes("resumed").filter(|_| offloader),
        requests: own_samples
            .filter(|_| m.tier == Tier::L7)
            .map(|own| sum(own, &format!("{p}_requests_total"), None)),
    }
}

/// A member's state, and why: first its own process, then what the tier in front thinks.
fn state(
    m: &Member,
    draining: bool,
    own: Option<&Scraped>,
    front: &[&[Sample]],
) -> (&'static str, String) {
    if draining {
        return (
            "draining",
            "out of the tier in front; finishing what it has in flight".to_owned(),
        );
    }
    if let Some(Err(e)) = own.map(|s| &s.samples) {
        return ("silent", format!("its admin listener does not answer: {e}"));
    }
    let Some(front_tier) = m.tier.front() else {
        return ("up", "up: the front door".to_owned());
    };
    let p = prefix(front_tier);
    let backend = m.address.to_string();
    let verdicts: Vec<(bool, Option<String>)> = front
        .iter()
        .filter_map(|samples| {
            let up = samples.iter().find(|s| {
                s.name == format!("{p}_backend_up") && s.label("backend") == Some(&backend)
            })?;
            let cause = samples
                .iter()
                .find(|s| {
                    s.name == format!("{p}_backend_state_cause")
                        && s.label("backend") == Some(&backend)
                        && s.value == 1.0
                })
                .and_then(|s| s.label("cause"))
                .map(|c| c.replace('-', " "));
            Some((up.value == 1.0, cause))
        })
        .collect();
    let front_name = title(front_tier);
    let up = verdicts.iter().filter(|(up, _)| *up).count();
    match (up, verdicts.len()) {
        (_, 0) => ("starting", format!("not yet known to {front_name}")),
        (up, n) if up == n => ("up", format!("up for {front_name}")),
        (0, _) => {
            let cause = verdicts.iter().find_map(|(_, c)| c.clone());
            (
                "down",
                format!(
                    "down for {front_name}: {}",
                    cause.unwrap_or_else(|| "no reason given".to_owned())
                ),
            )
        }
        (up, n) => ("partly", format!("up for {up} of {n} in {front_name}")),
    }
}

/// The members of each tier whose counter for the next hop moved between `before` and
/// `after`; the application is also named by its answer.
fn path(
    roster: &Roster,
    before: &HashMap<u32, Scraped>,
    after: &HashMap<u32, Scraped>,
    served_by: Option<&str>,
) -> Vec<Hop> {
    // How much the counter `name{backend=to}` of `from` moved.
    let moved = |from: &Member, name: &str, to: &Member| {
        let read = |scraped: &HashMap<u32, Scraped>| {
            scraped
                .get(&from.pid)
                .and_then(|s| s.samples.as_ref().ok())
                .map(|s| sum(s, name, Some(&to.address.to_string())))
        };
        matches!((read(before), read(after)), (Some(b), Some(a)) if a > b)
    };
    let of = |tier: Tier| roster.members.iter().filter(move |m| m.tier == tier);
    let next = |from: &[&Member], tier: Tier, name: &str| -> Vec<&Member> {
        of(tier)
            .filter(|to| from.iter().any(|f| moved(f, name, to)))
            .collect()
    };
    let l4: Vec<&Member> = of(Tier::L4).collect();
    let offload = next(&l4, Tier::Offload, "tcplb_backend_connections_total");
    let l7 = next(&offload, Tier::L7, "tcplb_backend_connections_total");
    let mut apps = next(&l7, Tier::App, "httplb_backend_responses_total");
    if let Some(name) = served_by
        && apps.iter().any(|a| a.name == name)
    {
        apps.retain(|a| a.name == name);
    }
    [l4, offload, l7, apps]
        .iter()
        .zip(Tier::ALL)
        .map(|(members, tier)| Hop {
            tier: tier.key(),
            names: members.iter().map(|m| m.name.clone()).collect(),
        })
        .collect()
}

/// User and system CPU seconds of `pid` and all its threads, from `/proc/PID/stat` (fields
/// 14 and 15, in clock ticks; the name in field 2 may hold spaces, so fields are counted
/// from its closing parenthesis).
fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_of_this_process_is_read_and_grows() {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let before = cpu_seconds(std::process::id(), ticks).unwrap();
        // Work until the kernel has counted a tick more (bounded: a test never hangs).
        let spin = Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after <= before && spin.elapsed() < Duration::from_secs(30) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            after = cpu_seconds(std::process::id(), ticks).unwrap();
        }
        assert!(after > before, "{before} → {after}");
        assert_eq!(cpu_seconds(u32::MAX, ticks), None);
    }
}
