//! # Step 17: `grpc-call`, a gRPC call through the balancer, without grpcurl or protoc
//!
//! Chapter 17 makes `http-lb` speak HTTP/2: to clients over TLS (ALPN `h2`) or in clear text
//! (`--h2c`), and to backends (`h2c://`, `h2://`). gRPC is HTTP/2 with a few rules: a `POST`
//! to `/package.Service/Method` with `content-type: application/grpc`, each message prefixed
//! by a flag byte and its length, and the outcome in the *trailers* (`grpc-status`,
//! `grpc-message`), which HTTP/1.1 proxies usually lose. This binary makes such a call: it
//! sends each MESSAGE (UTF-8 text as the message's bytes: no protobuf needed to watch a proxy
//! carry them) as one gRPC message, one after the other on the same stream, prints each message
//! that comes back as it arrives, then the status. The dummy server echoes any gRPC call, so
//! the messages come back as they were sent.
//!
//! **Where the code is:** this client is all here. What it talks to is the library's:
//! HTTP/2 from clients in [`lb::http::h2`] (its bounds and the reset budget), gRPC's rules in
//! [`lb::http::grpc`] (our failures as statuses, the deadline), HTTP/2 to backends in
//! `lb::http::pool` (shared connections, more when their streams run out) and the balancer's
//! `fit`, and the dummy server's gRPC echo in [`lb::dummy`].
//!
//! **What the Go version got wrong:** nothing to compare: the Go tutorial's balancer moves
//! bytes at layer 4, where HTTP/2 needs nothing (and where it cannot be balanced per request:
//! one connection carries them all to one backend, which is what this chapter fixes at layer 7).
//!
//! **Try it** in two terminals (`cargo build` first; README chapter 17):
//!
//! ```text
//! terminal 1:  cargo run --bin dummy-server &
//!              cargo run --bin http-lb -- --h2c --backend h2c://127.0.0.1:4444 --backend h2c://127.0.0.1:4445
//! terminal 2:  cargo run --bin grpc-call -- http://127.0.0.1:8080/echo.Echo/Chat hello world
//!              curl --http2-prior-knowledge -s localhost:8080 | head -3     # plain HTTP/2 too
//! ```

use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lb::cli;
use lb::conn::Conn;
use rustls::pki_types::ServerName;
use tokio::sync::mpsc;

/// grpc-call: one gRPC call over HTTP/2, each MESSAGE sent as one message on one stream.
#[derive(Parser)]
#[command(name = "grpc-call", version)]
struct Args {
    /// `http://HOST:PORT/package.Service/Method` (HTTP/2 by prior knowledge) or `https://…`
    /// (TLS, `h2` in ALPN).
    #[arg(value_name = "URL", value_parser = parse_url)]
    url: Uri,
    /// The messages to send, in order (each as its UTF-8 bytes).
    #[arg(value_name = "MESSAGE")]
    messages: Vec<String>,
    /// The CA to trust for `https://` [default: certs/ca.pem].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The call's deadline, in milliseconds (`grpc-timeout`): past it the balancer answers
    /// `DEADLINE_EXCEEDED` itself if the backend has not.
    #[arg(long, value_name = "MS")]
    deadline: Option<u64>,
}

fn parse_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.authority(), uri.path()) {
        (Some("http" | "https"), Some(_), path) if path.len() > 1 => Ok(uri),
        _ => Err(format!(
            "`{s}`: give http:// or https://, a host and port, and the method's path \
             (http://127.0.0.1:8080/echo.Echo/Chat)"
        )),
    }
}

/// A request body fed message by message, as a streaming client sends.
struct Messages(mpsc::Receiver<Bytes>);

impl Body for Messages {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|m| Ok(Frame::data(m))))
    }
}

/// gRPC's Length-Prefixed-Message: not compressed, the length, the bytes.
fn framed(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    match call(args).await {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => cli::report(Err(e)),
    }
}

/// Makes the call; the `grpc-status` it ended with.
async fn call(args: Args) -> anyhow::Result<u32> {
    let authority = args.url.authority().context("the URL has no host")?.clone();
    let port = authority
        .port_u16()
        .unwrap_or(if args.url.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let tcp = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    let conn = match args.url.scheme_str() {
        Some("https") => {
            let ca = args.ca.unwrap_or_else(|| lb::tls::DEFAULT_CA.into());
            let mut config = (*lb::tls::client_config(lb::tls::load_roots(&ca)?)?).clone();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let name = ServerName::try_from(authority.host().to_owned())
                .map_err(|_| anyhow::anyhow!("`{}` is not a TLS server name", authority.host()))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS handshake with {authority} failed"))?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                anyhow::bail!("{authority} did not agree to HTTP/2 in ALPN");
            }
            Conn::TlsClient(Box::new(tls))
        }
        _ => Conn::Plain(tcp),
    };
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(conn))
            .await
            .with_context(|| format!("{authority} does not speak HTTP/2 (is it http-lb --h2c?)"))?;
    tokio::spawn(connection);

    let (feed, messages) = mpsc::channel(16);
    let mut request = Request::post(args.url.clone())
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(ms) = args.deadline {
        request = request.header("grpc-timeout", format!("{ms}m"));
    }
    let request = request.body(Messages(messages))?;
    let response = send
        .send_request(request)
        .await
        .context("the call failed before an answer")?;
    println!("{:?} {}", response.version(), response.status());
    if let Some(by) = response.headers().get(lb::dummy::SERVED_BY) {
        println!("x-served-by: {}", String::from_utf8_lossy(by.as_bytes()));
    }
    // A Trailers-Only answer carries its status in the head.
    let mut status = response.headers().get("grpc-status").cloned();
    let mut message = response.headers().get("grpc-message").cloned();
    let mut body = response.into_body();
    // One message at a time, each sent once the previous one came back: a conversation on one
    // stream, which only a proxy that streams both ways can carry. After the last, the request
    // ends, which is when a unary method answers.
    let mut pending: Vec<u8> = Vec::new();
    let mut to_send = args.messages.into_iter().peekable();
    let mut feed = Some(feed);
    if let (Some(first), Some(tx)) = (to_send.next(), &feed) {
        let _ = tx.send(framed(first.as_bytes())).await;
    }
    if to_send.peek().is_none() {
        feed = None;
    }
    while let Some(frame) = next(&mut body).await? {
        match frame.into_data() {
            Ok(data) => {
                pending.extend_from_slice(&data);
                while pending.len() >= 5 {
                    let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]])
                        as usize;
                    if pending.len() < 5 + len {
                        break;
                    }
                    let text = String::from_utf8_lossy(&pending[5..5 + len]).into_owned();
                    println!("< {text}");
                    pending.drain(..5 + len);
                    if let (Some(m), Some(tx)) = (to_send.next(), &feed) {
                        let _ = tx.send(framed(m.as_bytes())).await;
                    }
                    if to_send.peek().is_none() {
                        feed = None;
                    }
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    status = trailers.get("grpc-status").cloned().or(status);
                    message = trailers.get("grpc-message").cloned().or(message);
                }
            }
        }
    }
    let code: u32 = status
        .as_ref()
        .and_then(|s| s.to_str().ok()?.parse().ok())
        .context("the answer ended without a grpc-status")?;
    let message = message
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    println!("grpc-status: {code} {message}");
    Ok(code)
}

/// The next frame of `body`, within a minute.
async fn next(body: &mut Incoming) -> anyhow::Result<Option<Frame<Bytes>>> {
    let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
    match tokio::time::timeout(Duration::from_secs(60), frame).await {
        Ok(Some(Ok(frame))) => Ok(Some(frame)),
        Ok(Some(Err(e))) => Err(anyhow::anyhow!("the answer broke off: {e}")),
        Ok(None) => Ok(None),
        Err(_) => Err(anyhow::anyhow!("no more of the answer for a minute")),
    }
}
