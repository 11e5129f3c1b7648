//! The admin listener of chapter 10: `GET /metrics` (Prometheus text) and `GET /health`.
//!
//! On its own address, which should not be reachable by clients: it tells anyone who asks how
//! many connections each backend has. `/health` answers 200 `ok` while the balancer serves with
//! at least one backend up, and 503 while it drains or when every backend is down, so the layer
//! in front of it (DNS, a cloud load balancer, keepalived) can route around it.

use std::sync::Arc;
use std::time::Duration;

use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::dummy::DummyBody;
use crate::metrics;
use crate::net;
use crate::server::Server;

/// What the admin listener reports on: `tcp-lb`'s [`Server`], or `http-lb`'s server
/// (chapter 12).
pub trait Status: Send + Sync + 'static {
    /// `/metrics`, in Prometheus' text format.
    fn metrics(&self) -> String;
    /// `/health`: `Ok` while serving with a backend up, `Err(why)` otherwise.
    fn health(&self) -> Result<&'static str, &'static str>;
}

impl Status for Server {
    fn metrics(&self) -> String {
        Server::metrics(self)
    }
    fn health(&self) -> Result<&'static str, &'static str> {
        Server::health(self)
    }
}

/// Serves the admin endpoints on `listener` for as long as the task runs.
pub async fn run<S: Status>(listener: TcpListener, server: Arc<S>) {
    loop {
        let (stream, peer) = net::accept(&listener).await;
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = Arc::clone(&server);
                async move { Ok::<_, std::convert::Infallible>(respond(&*server, &req)) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                tracing::debug!(client = %peer, "admin connection ended: {e}");
            }
        });
    }
}

fn respond<S: Status, B>(server: &S, req: &Request<B>) -> Response<DummyBody> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, metrics::CONTENT_TYPE, server.metrics()),
        (&Method::GET, "/health") => match server.health() {
            Ok(ok) => (StatusCode::OK, "text/plain", format!("{ok}\n")),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n"),
            ),
        },
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /health\n".to_owned(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_owned(),
        ),
    };
    let mut response = Response::new(DummyBody::text(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
