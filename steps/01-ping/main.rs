//! # Step 1: a TCP listener that answers `pong`
//!
//! Mirrors the Go tutorial's "Lets do a simple ping test": listen on `127.0.0.1:3000`, accept
//! connections, print what arrives, answer. The answer is a minimal HTTP response, so that
//! `curl` shows `pong` instead of complaining about a malformed reply.
//!
//! **What it adds:** a listener with a real backlog ([`lb::net::bind`]), a task per connection,
//! and the `listening on ADDR` line every later step prints.
//!
//! **What the Go version got wrong:** its `for` loop handles connections one after the other,
//! so one client that connects and says nothing stops the server for everybody; and it calls
//! `panic(err)` when `Accept` fails, which happens in normal operation (a client resetting
//! while queued, running out of file descriptors). Here each connection gets its own task, and
//! an accept error is logged and retried with a backoff.
//!
//! **Try it** in two terminals:
//!
//! ```text
//! terminal 1:  cargo run --bin 01-ping
//! terminal 2:  curl localhost:3000          # prints: pong
//!              curl -d hello localhost:3000 # terminal 1 shows the request and its body
//! ```
//!
//! A raw TCP client (`nc`, `telnet`) is answered each time it sends an empty line, as an HTTP
//! request head ends with one.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use lb::{cli, net};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Step 1: answer `pong` to every request and print what arrives.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = lb::DEFAULT_LISTEN)]
    listen: SocketAddr,
}

/// A complete HTTP/1.1 response. `content-length` lets the client reuse the connection
/// (keep-alive) instead of waiting for us to close it.
const PONG: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\npong\n";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::init_tracing();
    cli::report(run(args).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let listener = net::listen(args.listen)?;
    net::announce(&listener)?;
    let shutdown = cli::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            (stream, peer) = net::accept(&listener) => {
                // The whole point of this step: the conversation runs in its own task, and the
                // loop is back at `accept` at once.
                tokio::spawn(async move {
                    if let Err(e) = ping(stream).await {
                        tracing::warn!(client = %peer, "connection ended by error: {e}");
                    }
                });
            }
        }
    }
}

/// Prints every byte received and answers [`PONG`] each time a request head ends (an empty
/// line), until the client closes.
async fn ping(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    let mut head_end = HeadEnd::default();
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        {
            // One lock per chunk, so output from two clients does not interleave mid-chunk.
            let mut out = std::io::stdout().lock();
            out.write_all(&buf[..n])?;
            out.flush()?;
        }
        for &byte in &buf[..n] {
            if head_end.push(byte) {
                stream.write_all(PONG).await?;
            }
        }
    }
}

/// Recognises the empty line that ends a request head (`\r\n\r\n`, or `\n\n` from a human
/// typing), across reads: a head can arrive split anywhere.
#[derive(Default)]
struct HeadEnd {
    /// The previous byte ended a line (ignoring `\r`).
    after_newline: bool,
}

impl HeadEnd {
    fn push(&mut self, byte: u8) -> bool {
        match byte {
            b'\n' if self.after_newline => {
                self.after_newline = false;
                true
            }
            b'\n' => {
                self.after_newline = true;
                false
            }
            b'\r' => false,
            _ => {
                self.after_newline = false;
                false
            }
        }
    }
}
