//! # Step 2: forward bytes to a backend
//!
//! Mirrors the Go tutorial's `net.Dial` section: for every client, dial the backend (the dummy
//! server on 4444) and relay bytes both ways. HTTP is just bytes on TCP, so curl's request
//! reaches the dummy server and its answer comes back: a reverse proxy in a few lines.
//!
//! **What it adds:** [`lb::conn::forward`], copying in both directions at once until both are
//! done, half-close included; [`lb::backend::Backend`], an address resolved once and dialled
//! with a timeout.
//!
//! **What the Go version got wrong:**
//! * It reads the client *once* into a 1024-byte buffer, writes that to the backend, reads the
//!   answer once, and closes. A request or response longer than 1024 bytes, or one that arrives
//!   in two TCP segments, is cut short.
//! * Its `sendBuf`/`recvBuf` are shared by every connection: the bytes one client did not
//!   overwrite are sent to the next.
//! * `panic(err)` when the backend is down: one stopped backend kills the proxy for everyone.
//!   Here the client whose backend is down gets its connection closed at once, the error is
//!   logged, and the next client is served as usual.
//!
//! **Try it** in three terminals:
//!
//! ```text
//! terminal 1:  cargo run --bin dummy-server
//! terminal 2:  cargo run --bin 02-forward
//! terminal 3:  curl localhost:3000                                   # server1 answers
//!              curl -s localhost:3000/bytes/10000000 | wc -c         # 10000000: no 1024 cut
//!              curl -s --data-binary @Cargo.lock localhost:3000/echo | cmp - Cargo.lock
//! ```
//!
//! Stop the dummy server and curl again: curl prints `curl: (56) Recv failure: Connection
//! reset by peer` (02-forward closed the connection with the request unread, and the kernel
//! answers that with a reset), 02-forward logs `cannot reach backend` and keeps running. Start
//! the dummy server again: it works again.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use lb::backend::{Backend, BackendSpec, HostPort};
use lb::{cli, conn, net};
use tokio::net::TcpStream;

/// Step 2: relay every client to one backend.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = lb::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// The backend, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", default_value = lb::TUTORIAL_BACKENDS[0])]
    backend: HostPort,
    /// Seconds to wait for the backend to accept a connection.
    #[arg(long, value_name = "SECS", value_parser = cli::seconds, default_value = "3")]
    connect_timeout: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    cli::report(run(args).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let spec = BackendSpec::plain(args.backend);
    let backend = Arc::new(Backend::resolve(spec, None).await?);
    let listener = net::listen(args.listen)?;
    net::announce(&listener)?;
    let shutdown = cli::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            (client, peer) = net::accept(&listener) => {
                let backend = Arc::clone(&backend);
                tokio::spawn(relay(client, peer, backend, args.connect_timeout));
            }
        }
    }
}

/// One client's whole life: dial, forward until both sides are done, log one line.
/// Everything it needs is local to this task: no buffer is shared with another client.
async fn relay(mut client: TcpStream, peer: SocketAddr, backend: Arc<Backend>, timeout: Duration) {
    let started = Instant::now();
    let mut upstream = match backend.connect(timeout).await {
        Ok(upstream) => upstream,
        Err(e) => {
            // Returning drops `client`, which closes it: the client learns at once.
            tracing::warn!(client = %peer, %backend, "cannot reach backend: {e}");
            return;
        }
    };
    let result = conn::forward(&mut client, &mut upstream).await;
    let duration = started.elapsed();
    match result {
        Ok((up, down)) => {
            tracing::info!(client = %peer, %backend, up, down, ?duration, "connection closed")
        }
        Err(e) => {
            tracing::info!(client = %peer, %backend, ?duration, "connection closed by error: {e}")
        }
    }
}
