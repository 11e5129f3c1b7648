//! Chapter 17: HTTP/2 through `http-lb`, from clients (ALPN `h2` over TLS, `--h2c` by prior
//! knowledge) and to backends (`h2c://`), gRPC's trailers end to end, and the HTTP/2 attacks
//! each bounded (RFC 9113; CVE-2023-44487 for rapid reset).
//!
//! The clients here are hyper's own HTTP/2 client, as a program using the balancer would be,
//! and a raw frame writer for the attacks, which no well-behaved client library would send.
//! The gRPC backend is hyper's HTTP/2 server answering in gRPC's framing (a 5-byte prefix per
//! message, `grpc-status` in the trailers), so no protobuf compiler is needed.

mod common;

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use common::*;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

const LB: &str = bin!("http-lb");

/// A body fed from a channel, frame by frame: how a streaming client (or server) sends.
struct Frames(mpsc::Receiver<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// A body and the sender that feeds it.
fn frames() -> (mpsc::Sender<Frame<Bytes>>, Frames) {
    let (tx, rx) = mpsc::channel(16);
    (tx, Frames(rx))
}

/// A body of one piece, then the end.
fn whole(bytes: &[u8]) -> Frames {
    let (tx, body) = frames();
    let _ = tx.try_send(Frame::data(Bytes::copy_from_slice(bytes)));
    body
}

/// The next frame of `body`, or `None` at its end.
async fn next(body: &mut Incoming) -> Option<Frame<Bytes>> {
    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
        .await
        .map(|f| f.expect("a body frame"))
}

/// Everything `body` carries: its data, and its trailers if any.
async fn collect(mut body: Incoming) -> (Vec<u8>, Option<HeaderMap>) {
    let (mut data, mut trailers) = (Vec::new(), None);
    while let Some(frame) = next(&mut body).await {
        match frame.into_data() {
            Ok(bytes) => data.extend_from_slice(&bytes),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    (data, trailers)
}

/// One gRPC message: compressed flag, length, bytes (gRPC over HTTP/2, "Length-Prefixed-Message").
fn grpc_message(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// An HTTP/2 connection from a test client: prior knowledge in clear text.
async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Frames> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("an HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

/// A gRPC-style backend on hyper's HTTP/2 server, by prior knowledge (`h2c://`): `Unary`
/// answers the request's bytes, `Stream` echoes each piece as it arrives; both end with
/// `grpc-status: 0` in the trailers, and say which backend they are in `x-served-by`. `Hang`
/// never answers.
fn grpc_backend(name: &'static str) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<Incoming>| async move {
                            if req.uri().path().ends_with("/Hang") {
                                // Never answers: the call's deadline must end it.
                                std::future::pending::<()>().await;
                            }
                            let streaming = req.uri().path().ends_with("/Stream");
                            let te = req.headers().get("te").cloned();
                            let (tx, body) = frames();
                            let mut incoming = req.into_body();
                            tokio::spawn(async move {
                                let mut all = Vec::new();
                                while let Some(frame) = next(&mut incoming).await {
                                    if let Ok(data) = frame.into_data() {
                                        match streaming {
                                            true => {
                                                let _ = tx.send(Frame::data(data)).await;
                                            }
                                            false => all.extend_from_slice(&data),
                                        }
                                    }
                                }
                                if !streaming {
                                    let _ = tx.send(Frame::data(Bytes::from(all))).await;
                                }
                                let mut trailers = HeaderMap::new();
                                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                                trailers.insert("grpc-message", HeaderValue::from_static("ok"));
                                let _ = tx.send(Frame::trailers(trailers)).await;
                            });
                            let mut response = Response::new(body);
                            let headers = response.headers_mut();
                            headers.insert(
                                "content-type",
                                HeaderValue::from_static("application/grpc"),
                            );
                            headers.insert("x-served-by", HeaderValue::from_static(name));
                            if let Some(te) = te {
                                headers.insert("x-saw-te", te);
                            }
                            Ok::<_, Infallible>(response)
                        });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
    });
    addr
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn h2c_lb(backends: &[String], extra: &[&str]) -> Proc {
    let mut args = vec!["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--h2c"];
    args.extend(["--health-interval", "0"]);
    for b in backends {
        args.extend(["--backend", b.as_str()]);
    }
    args.extend_from_slice(extra);
    Proc::start(LB, &args, 2)
}

/// RFC 9113 §3.3 (prior knowledge) and chapter 12's affinity, per stream: an h2c client's
/// requests, many on one connection, each balanced on its own; one that sends the affinity
/// cookie back stays on its backend. HTTP/1 clients are served as before beside it, and the
/// requests are counted by protocol.
#[test]
fn h2c_clients_are_balanced_per_stream_with_affinity() {
    let (_dummy, backends) = dummies(2);
    let addrs: Vec<String> = backends.iter().skip(1).step_by(2).cloned().collect();
    let lb = h2c_lb(&addrs, &[]);
    let addr = lb.addr();
    runtime().block_on(async {
        let mut send = h2c(addr).await;
        let mut seen = std::collections::HashSet::new();
        let mut cookie = None;
        for _ in 0..6 {
            let request = Request::get(format!("http://{addr}/"))
                .body(whole(b""))
                .unwrap();
            let response = send.send_request(request).await.unwrap();
            assert_eq!(response.version(), hyper::Version::HTTP_2);
            assert_eq!(response.status(), 200);
            seen.insert(
                response.headers()["x-served-by"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
            cookie = response.headers().get("set-cookie").cloned();
        }
        assert_eq!(
            seen.len(),
            2,
            "one connection's streams reach both backends"
        );
        let cookie = cookie
            .unwrap()
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let mut pinned = std::collections::HashSet::new();
        for _ in 0..6 {
            let request = Request::get(format!("http://{addr}/"))
                .header("cookie", cookie.as_str())
                .body(whole(b""))
                .unwrap();
            let response = send.send_request(request).await.unwrap();
            pinned.insert(
                response.headers()["x-served-by"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        assert_eq!(
            pinned.len(),
            1,
            "the cookie pins every stream to one backend"
        );
    });
    assert_eq!(get(addr, "/").status, 200, "HTTP/1.1 beside it");
    let (_, metrics) = admin_get(lb.addrs[1], "/metrics");
    assert_eq!(
        metric(
            &metrics,
            "httplb_requests_total{path=\"hyper\",protocol=\"h2\"}"
        ),
        12
    );
}

/// RFC 9113 §3.2 and RFC 7301: over TLS, a client that offers `h2` in ALPN gets it; one that
/// offers only `http/1.1` gets that. Without `--h2c`, a clear-text preface is not answered in
/// HTTP/2.
#[test]
fn tls_clients_choose_h2_in_alpn() {
    let (_dummy, backends) = dummies(1);
    let certs = make_certs("h2-alpn");
    let cert = certs.join("localhost.pem");
    let key = certs.join("localhost-key.pem");
    let mut args = vec!["--listen", "127.0.0.1:0", "--health-interval", "0"];
    args.extend(["--cert", path_str(&cert), "--key", path_str(&key)]);
    args.extend(backends.iter().map(String::as_str));
    let lb = Proc::start(LB, &args, 1);
    let ca = certs.join("ca.pem");
    for (offer, expect) in [
        (&[&b"h2"[..], b"http/1.1"][..], Some(&b"h2"[..])),
        (&[b"http/1.1"], Some(b"http/1.1")),
    ] {
        let mut config = (*common::tls::config_trusting(&ca)).clone();
        config.alpn_protocols = offer.iter().map(|p| p.to_vec()).collect();
        let tls = common::tls::connect(lb.addr(), Arc::new(config), "localhost").unwrap();
        assert_eq!(tls.conn.alpn_protocol(), expect);
    }
    // hyper's HTTP/2 client over that TLS connection.
    let mut config = (*common::tls::config_trusting(&ca)).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let addr = lb.addr();
    runtime().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = Request::get("https://localhost/").body(whole(b"")).unwrap();
        let response = send.send_request(request).await.unwrap();
        assert_eq!(
            (response.version(), response.status().as_u16()),
            (hyper::Version::HTTP_2, 200)
        );
        let (body, _) = collect(response.into_body()).await;
        assert!(String::from_utf8_lossy(&body).contains("server1"));
    });
    let _ = std::fs::remove_dir_all(&certs);

    // No --h2c: the preface is refused as HTTP/1 would refuse it.
    let plain = Proc::start(
        LB,
        &[
            "--listen",
            "127.0.0.1:0",
            "--health-interval",
            "0",
            &backends[0],
            &backends[1],
        ],
        1,
    );
    let mut s = connect(plain.addr());
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    // hyper's HTTP/1 server knows the preface and closes; an HTTP/1 answer would do too. What
    // must not come back is HTTP/2 (a SETTINGS frame).
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

/// gRPC through the balancer (gRPC over HTTP/2): a unary call and a bidirectional stream reach
/// an `h2c://` backend and come back with their trailers (`grpc-status`, `grpc-message`); the
/// client's `TE: trailers` reaches the backend (RFC 9113 §8.2.2 lets it through); the stream's
/// answers come back while the client is still sending (nothing is buffered whole).
#[test]
fn grpc_unary_and_streaming_calls_pass_with_trailers() {
    let backend = grpc_backend("grpc1");
    let lb = h2c_lb(&[format!("h2c://{backend}")], &["--affinity", "none"]);
    let addr = lb.addr();
    runtime().block_on(async move {
        let mut send = h2c(addr).await;
        let request = Request::post(format!("http://{addr}/echo.Echo/Unary"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(whole(&grpc_message(b"hello")))
            .unwrap();
        let response = send.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-saw-te"], "trailers");
        let (body, trailers) = collect(response.into_body()).await;
        assert_eq!(body, grpc_message(b"hello"));
        let trailers = trailers.expect("trailers");
        assert_eq!(
            (
                trailers["grpc-status"].as_bytes(),
                trailers["grpc-message"].as_bytes()
            ),
            (&b"0"[..], &b"ok"[..])
        );

        let (tx, body) = frames();
        let request = Request::post(format!("http://{addr}/echo.Echo/Stream"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .unwrap();
        let response = send.send_request(request).await.unwrap();
        let mut incoming = response.into_body();
        for i in 0..5u8 {
            let message = grpc_message(&[b'a' + i; 3]);
            tx.send(Frame::data(Bytes::from(message.clone())))
                .await
                .unwrap();
            let echoed = next(&mut incoming).await.unwrap().into_data().unwrap();
            assert_eq!(
                echoed.as_ref(),
                message.as_slice(),
                "message {i} echoed before the next is sent"
            );
        }
        drop(tx);
        let last = next(&mut incoming).await.unwrap();
        let trailers = last.into_trailers().expect("trailers at the end");
        assert_eq!(trailers["grpc-status"], "0");
    });
}

/// A unary call to `path` with `fields`; the answer's status, and its `grpc-status` from the
/// head (a Trailers-Only answer) or the trailers.
async fn call(addr: SocketAddr, path: &str, fields: &[(&str, &str)]) -> (u16, Option<String>) {
    let mut send = h2c(addr).await;
    let mut request = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in fields {
        request = request.header(*name, *value);
    }
    let response = send
        .send_request(request.body(whole(&grpc_message(b"x"))).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let in_head = response.headers().get("grpc-status").cloned();
    let (_, trailers) = collect(response.into_body()).await;
    let code = in_head
        .or_else(|| trailers.and_then(|t| t.get("grpc-status").cloned()))
        .map(|v| v.to_str().unwrap().to_owned());
    (status, code)
}

/// gRPC's status mapping (gRPC's `http-grpc-status-mapping.md`): a call the balancer cannot
/// carry gets a gRPC status a gRPC client understands, in a Trailers-Only 200, never an HTTP
/// error page: no backend up is `UNAVAILABLE` (14); a backend that does not answer within the
/// call's own `grpc-timeout` is `DEADLINE_EXCEEDED` (4), there and then, however long
/// `response-timeout` is.
#[test]
fn grpc_calls_get_grpc_statuses_for_our_failures_and_deadlines() {
    let backend = grpc_backend("grpc1");
    // An hour for any answer: only the call's own deadline can end `Hang` within the test.
    let lb = h2c_lb(
        &[format!("h2c://{backend}")],
        &["--affinity", "none", "--response-timeout", "3600"],
    );
    let (refusing, _guard) = refusing_port();
    let down = h2c_lb(&[format!("h2c://{refusing}")], &["--affinity", "none"]);
    runtime().block_on(async {
        let ok = call(lb.addr(), "/echo.Echo/Unary", &[]).await;
        assert_eq!(ok, (200, Some("0".to_owned())));
        let unavailable = call(down.addr(), "/echo.Echo/Unary", &[]).await;
        assert_eq!(unavailable, (200, Some("14".to_owned())));
        let started = std::time::Instant::now();
        let late = call(lb.addr(), "/echo.Echo/Hang", &[("grpc-timeout", "300m")]).await;
        assert_eq!(late, (200, Some("4".to_owned())));
        assert!(
            started.elapsed() < PATIENCE,
            "the deadline, not the hour, ended the call"
        );
    });
}
