//! The admin listener of chapter 10: `GET /metrics` (Prometheus text) and `GET /health`;
//! from chapter 14, the registry of servers that register themselves (`lb::registry`):
//! `PUT /backends/NAME`, `DELETE /backends/NAME`, `GET /backends`, all behind a bearer token.
//!
//! On its own address, which should not be reachable by clients: it tells anyone who asks how
//! many connections each backend has. `/health` answers 200 `ok` while the balancer serves with
//! at least one backend up, and 503 while it drains or when every backend is down, so the layer
//! in front of it (DNS, a cloud load balancer, keepalived) can route around it.
//!
//! It shares the runtime with the data path, so it is kept small: at most
//! [`MAX_CONNECTIONS`] at once (a few more wait a moment, the rest are closed on arrival), a
//! bounded head and body, each within a timeout. A flood of bad registrations costs a few microseconds each and is
//! counted; it cannot queue work for the threads that serve clients.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::balancer::Balancer;
use crate::dummy::DummyBody;
use crate::metrics;
use crate::net;
use crate::registry::{MAX_BODY, Put, Refused, Registry};
use crate::server::Server;
use crate::sources::Sources;

/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections that may wait for one of those slots; more are closed as they arrive.
pub const MAX_WAITING: usize = 256;
/// How long a connection waits for a slot.
const WAIT_FOR_SLOT: Duration = Duration::from_secs(2);
/// How long a request's head, then its body, may take to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin listener reports on: `tcp-lb`'s [`Server`], or `http-lb`'s server
/// (chapter 12).
pub trait Status: Send + Sync + 'static {
    /// `/metrics`, in Prometheus' text format.
    fn metrics(&self) -> String;
    /// `/health`: `Ok` while serving with a backend up, `Err(why)` otherwise.
    fn health(&self) -> Result<&'static str, &'static str>;
    /// The balancer serving now, for `GET /backends`.
    fn balancer(&self) -> Arc<Balancer>;
    /// The metric names' prefix: `tcplb` or `httplb`.
    fn prefix(&self) -> &'static str {
        "tcplb"
    }
}

impl Status for Server {
    fn metrics(&self) -> String {
        Server::metrics(self)
    }
    fn health(&self) -> Result<&'static str, &'static str> {
        Server::health(self)
    }
    fn balancer(&self) -> Arc<Balancer> {
        Server::balancer(self)
    }
}

/// Serves the admin endpoints on `listener` for as long as the task runs.
pub async fn run<S: Status>(listener: TcpListener, server: Arc<S>, sources: Sources) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let waiting = Arc::new(tokio::sync::Semaphore::new(MAX_WAITING));
    loop {
        let (stream, peer) = net::accept(&listener).await;
        // Past the limit, a connection waits a moment for a slot (a scraper polling a busy
        // balancer is served late, not refused); past the waiting room too, it is closed.
        let Ok(in_line) = Arc::clone(&waiting).try_acquire_owned() else {
            tracing::debug!(client = %peer, "admin listener busy: connection closed");
            continue;
        };
        let (server, sources) = (Arc::clone(&server), sources.clone());
        let permits = Arc::clone(&permits);
        tokio::spawn(async move {
            let permit = tokio::time::timeout(WAIT_FOR_SLOT, permits.acquire_owned()).await;
            drop(in_line);
            let Ok(Ok(_permit)) = permit else {
                tracing::debug!(client = %peer, "admin listener busy: connection closed");
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let (server, sources) = (Arc::clone(&server), sources.clone());
                async move {
                    // An IPv4 client of a dual-stack listener as IPv4, for `register-allow`.
                    let ip = peer.ip().to_canonical();
                    Ok::<_, std::convert::Infallible>(respond(&*server, &sources, ip, req).await)
                }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                tracing::debug!(client = %peer, "admin connection ended: {e}");
            }
        });
    }
}

async fn respond<S: Status>(
    server: &S,
    sources: &Sources,
    peer: IpAddr,
    req: Request<Incoming>,
) -> Response<DummyBody> {
    let registry = &*sources.registry;
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if let Some(name) = path.strip_prefix("/backends/") {
        return match registration(registry, peer, &method, name, req).await {
            Ok(response) => response,
            Err(refused) => refusal(peer, &method, &path, refused),
        };
    }
    // Chapter 10's status page: public files (the data behind them is `/metrics`, with its
    // own rule).
    if method == Method::GET
        && let Some(asset) = crate::status::asset(&path)
    {
        let mut response = answer(StatusCode::OK, asset.content_type, asset.body.to_owned());
        for (name, value) in crate::status::security_headers() {
            response.headers_mut().insert(name, value);
        }
        return response;
    }
    let (status, content_type, body) = match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => {
            // One rule for what reveals the topology: `/metrics` names every backend, as
            // `GET /backends` does, so with a token configured it needs the token too
            // (Prometheus sends it with `authorization: { credentials_file: … }`).
            if registry.has_token() {
                let auth = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
                if let Err(refused) = registry.authorize(peer, auth, false) {
                    return refusal(peer, &method, &path, refused);
                }
            }
            (
                StatusCode::OK,
                metrics::CONTENT_TYPE,
                server.metrics() + &sources.metrics(server.prefix()),
            )
        }
        (&Method::GET, "/health") => match server.health() {
            // Serving, and saying so: stale discovery is not a reason to route around it.
            Ok(ok) if sources.discovered.stale() => (
                StatusCode::OK,
                "text/plain",
                format!("{ok}; etcd discovery is stale: serving the last known backends\n"),
            ),
            Ok(ok) => (StatusCode::OK, "text/plain", format!("{ok}\n")),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n"),
            ),
        },
        (&Method::GET, "/backends") => {
            let auth = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
            if let Err(refused) = registry.authorize(peer, auth, false) {
                return refusal(peer, &method, &path, refused);
            }
            let list = list(&server.balancer(), sources);
            (
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&list).unwrap_or_default() + "\n",
            )
        }
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /, /metrics, /health or /backends\n".to_owned(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET, and PUT or DELETE on /backends/NAME\n".to_owned(),
        ),
    };
    answer(status, content_type, body)
}

/// `PUT` or `DELETE /backends/NAME`.
async fn registration(
    registry: &Registry,
    peer: IpAddr,
    method: &Method,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<DummyBody>, Refused> {
    if method != Method::PUT && method != Method::DELETE {
        return Ok(answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "PUT or DELETE /backends/NAME\n".to_owned(),
        ));
    }
    let auth = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    registry.authorize(peer, auth, true)?;
    if method == Method::DELETE {
        registry.delete(name)?;
        tracing::info!(registrant = %peer, "registered backend {name} deregistered");
        return Ok(answer(StatusCode::NO_CONTENT, "text/plain", String::new()));
    }
    let body = read_body(req).await.inspect_err(|r| registry.refused(r))?;
    let outcome = registry.put(name, &body, Instant::now())?;
    let status = match outcome {
        Put::Created => {
            tracing::info!(registrant = %peer, "backend {name} registered");
            StatusCode::CREATED
        }
        Put::Changed => {
            tracing::info!(registrant = %peer, "registered backend {name} changed");
            StatusCode::OK
        }
        Put::Renewed => {
            tracing::debug!(registrant = %peer, "registered backend {name} renewed");
            StatusCode::OK
        }
    };
    let result = match outcome {
        Put::Created => "created",
        Put::Changed => "changed",
        Put::Renewed => "renewed",
    };
    Ok(answer(
        status,
        "application/json",
        format!("{{\"name\": \"{name}\", \"result\": \"{result}\"}}\n"),
    ))
}

/// A registration body: at most [`MAX_BODY`] bytes, within [`READ_TIMEOUT`].
async fn read_body(req: Request<Incoming>) -> Result<Vec<u8>, Refused> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(Refused::TooLarge);
    }
    let mut body = req.into_body();
    let read = async {
        let mut bytes = Vec::new();
        while let Some(frame) =
            std::future::poll_fn(|cx| hyper::body::Body::poll_frame(Pin::new(&mut body), cx)).await
        {
            let frame =
                frame.map_err(|e| Refused::BadRequest(format!("cannot read the body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > MAX_BODY {
                    return Err(Refused::TooLarge);
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok(bytes)
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err(Refused::BadRequest(
                "the body did not arrive in time".into(),
            ))
        })
}

/// A refused call: its status, a one-line reason, and a log line that names the caller and
/// never the token.
fn refusal(peer: IpAddr, method: &Method, path: &str, refused: Refused) -> Response<DummyBody> {
    let reason = refused.reason();
    match refused {
        Refused::NotFound(_) => tracing::debug!(client = %peer, "{method} {path}: {reason}"),
        _ => tracing::warn!(client = %peer, "admin {method} {path} refused: {reason}"),
    }
    let status = StatusCode::from_u16(refused.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = answer(status, "text/plain", reason + "\n");
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
    }
    response
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<DummyBody> {
    let mut response = Response::new(DummyBody::text(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// One line of `GET /backends`.
#[derive(Serialize)]
struct Listed {
    name: String,
    address: String,
    url: String,
    /// `config` or `registered`.
    source: &'static str,
    up: bool,
    weight: u32,
    /// Seconds left on a registration's lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in: Option<f64>,
}

/// Every backend the balancer has, then registrations it does not have yet (a rebuild under
/// way, or a name that did not resolve).
fn list(balancer: &Balancer, sources: &Sources) -> Vec<Listed> {
    let leases = sources.registry.leases(Instant::now());
    let mut out: Vec<Listed> = balancer
        .backends()
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let spec = b.spec();
            let lease = leases
                .iter()
                .find(|(s, ..)| s.same_target(spec) && s.name == spec.name);
            let source = match (&spec.name, lease) {
                (_, Some(_)) => "registered",
                (Some(name), None) => sources.source_of(name).unwrap_or("config"),
                (None, None) => "config",
            };
            Listed {
                name: spec.name.clone().unwrap_or_else(|| spec.to_string()),
                address: spec.addr.to_string(),
                url: spec.public_url(),
                source,
                up: balancer.is_up(i),
                weight: spec.weight,
                expires_in: lease.map(|(_, left, _)| left.as_secs_f64()),
            }
        })
        .collect();
    for (spec, left, _) in &leases {
        if !out.iter().any(|l| Some(&l.name) == spec.name.as_ref()) {
            out.push(Listed {
                name: spec.name.clone().unwrap_or_default(),
                address: spec.addr.to_string(),
                url: spec.public_url(),
                source: "registered",
                up: false,
                weight: spec.weight,
                expires_in: Some(left.as_secs_f64()),
            });
        }
    }
    out
}
