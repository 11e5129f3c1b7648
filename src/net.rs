//! Listening and accepting: the parts every step shares.
//!
//! Two habits start here, in chapter 1, because they cost nothing now and a lot to retrofit:
//!
//! * **A real listen backlog.** `tokio::net::TcpListener::bind` asks the kernel for a queue of
//!   128 connections that have finished the TCP handshake but were not yet accepted. A burst of
//!   clients beyond that is dropped or delayed by the kernel before our code ever sees it. We bind
//!   through [`TcpSocket`] and ask for [`BACKLOG`] instead.
//! * **`TCP_NODELAY` on every socket we forward.** A proxy relays whatever it has at once; Nagle's
//!   algorithm would hold small writes back while an acknowledgement is outstanding, which adds
//!   up to 40 ms to request/response traffic (the delayed-ACK interaction).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::conn::Fresh;

/// Connections the kernel may queue for us before we call `accept`. The kernel caps it at
/// `net.core.somaxconn` (4096 on current Linux): a burst of thousands of clients arriving
/// at once (chapter 10's reliability suite has 2,000) is queued instead of dropped.
pub const BACKLOG: u32 = 4096;

/// Binds a listener with [`BACKLOG`] and `SO_REUSEADDR` (so a restart does not wait for old
/// connections in `TIME_WAIT`; a port held by a *live* listener still fails, as it should).
///
/// `TCP_NODELAY` is set on the listener itself: on Linux every accepted socket inherits it,
/// which saves a `setsockopt` per connection (chapter 11, issue 19). Elsewhere [`accept`]
/// sets it on each socket, as POSIX does not promise the inheritance.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// `TCP_DEFER_ACCEPT` on `listener` (nginx's `listen … deferred`, HAProxy's `defer-accept`):
/// the kernel completes a client's handshake but hands it to `accept` only once its first
/// bytes have arrived, or after about a second of silence. For a protocol where the client
/// speaks first (HTTP), a connection then arrives with its request in it: the first read
/// succeeds instead of failing with `EAGAIN`, and the process is not woken twice for one
/// client (issue 31: 15 % of `http-lb`'s CPU per `Connection: close` request). A silent
/// client costs no task and no descriptor until then. Linux only; elsewhere a no-op.
pub fn defer_accept(listener: &TcpListener) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        // Seconds the kernel waits for data before accepting anyway, rounded up to its
        // SYN-ACK retransmissions: one second holds a silent client back about one second,
        // after which `--header-timeout` takes over as before.
        let seconds: libc::c_int = 1;
        // SAFETY: a plain setsockopt on a descriptor `listener` owns and keeps open for the
        // call, with a pointer to a live `c_int` and its exact size.
        let done = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&raw const seconds).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if done != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = listener;
    Ok(())
}

/// [`bind`], with an error that names the address: the message a user sees at start-up.
pub fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    bind(addr).with_context(|| format!("cannot listen on {addr}"))
}

/// Prints the contract line `listening on ADDR` on stdout with the address really bound
/// (so `--listen 127.0.0.1:0` tells tests and users which port the kernel chose).
pub fn announce(listener: &TcpListener) -> io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    // `println!` goes through a line-buffered stdout: the line is flushed as soon as it is
    // complete, even when stdout is a pipe read by a test.
    println!("listening on {addr}");
    Ok(addr)
}

/// Waits for the next client (with `TCP_NODELAY`, see [`bind`]), and never gives up.
///
/// `accept` fails for two kinds of reasons. Some concern one connection only (the client reset
/// it while it sat in the backlog): skip it. Others concern the whole process, typically running
/// out of file descriptors (`EMFILE`): retrying at once would spin a core at 100% while nothing
/// can change, so we back off, doubling from 10 ms up to 1 s, and log each failure once per try.
pub async fn accept<L: Accept>(listener: &L) -> (L::Stream, SocketAddr) {
    let mut backoff = Duration::from_millis(10);
    loop {
        match listener.accept_one().await {
            Ok((stream, peer)) => return (stream, peer),
            Err(e) if is_per_connection(&e) => {
                tracing::debug!("accept: a client went away before we took it: {e}");
            }
            Err(e) => {
                tracing::error!("accept failed, retrying in {backoff:?}: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// A listener [`accept`] takes clients from.
pub trait Accept: Send + Sync {
    type Stream: Send + 'static;
    fn accept_one(
        &self,
    ) -> impl std::future::Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    async fn accept_one(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = self.accept().await?;
        #[cfg(not(target_os = "linux"))]
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
        }
        Ok((stream, peer))
    }
}

/// A listener whose clients are accepted without being registered with the runtime: each
/// comes as a [`Fresh`] socket, registered only if it ever has to wait (`http-lb`, issue 31).
/// The listener itself is registered, once, to wait for clients.
pub struct Unregistered(tokio::io::unix::AsyncFd<std::net::TcpListener>);

impl Unregistered {
    pub fn new(listener: TcpListener) -> io::Result<Unregistered> {
        let listener = listener.into_std()?;
        let interest = tokio::io::Interest::READABLE;
        // SAFETY: a `std::net::TcpListener` owns its descriptor, keeps it open until it is
        // dropped (with the `AsyncFd` that owns it), and always returns the same one; nothing
        // here replaces it.
        let registered =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(listener, interest) };
        Ok(Unregistered(registered.map_err(io::Error::from)?))
    }
}

impl Accept for Unregistered {
    type Stream = Fresh;
    async fn accept_one(&self) -> io::Result<(Fresh, SocketAddr)> {
        loop {
            let mut ready = self.0.readable().await?;
            // `accept4` with `SOCK_NONBLOCK`: one call, where std's accept and a
            // `set_nonblocking` would be two.
            let accepted = ready.try_io(|listener| {
                let flags = rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC;
                let (fd, addr) = rustix::net::acceptfrom_with(listener.get_ref(), flags)?;
                let peer = addr
                    .and_then(|addr| SocketAddr::try_from(addr).ok())
                    .ok_or_else(|| io::Error::other("a client without an IP address"))?;
                let stream = std::net::TcpStream::from(fd);
                #[cfg(not(target_os = "linux"))]
                stream.set_nodelay(true)?;
                Ok((Fresh::new(stream), peer))
            });
            // `Err`: it would block; the readiness is cleared, wait again.
            if let Ok(result) = accepted {
                return result;
            }
        }
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// File descriptors kept aside for everything that is not a proxied connection: listeners,
/// the runtime's own, health probes, log files.
pub const RESERVED_FDS: u64 = 64;

/// The process's open-file limit (the soft `RLIMIT_NOFILE`, what `ulimit -n` shows), read from
/// `/proc/self/limits`; `None` where that cannot be read (not Linux).
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// How many proxied connections the open-file limit allows: two descriptors each (client and
/// backend), after [`RESERVED_FDS`] and one for each of the `queue` clients that may wait for
/// a slot (an accepted client holds its socket while it waits). HAProxy derives its default
/// `maxconn` the same way: past it, accept and dial fail with `EMFILE` for everyone, so it is
/// better to stop short and turn the surplus away. 10,000 where the limit cannot be read.
pub fn connection_budget(queue: usize) -> usize {
    match open_file_limit() {
        Some(fds) => {
            let free = fds.saturating_sub(RESERVED_FDS + queue as u64);
            (free / 2).clamp(1, 1 << 24) as usize
        }
        None => 10_000,
    }
}

/// The descriptors `max_connections` pairs and `queue` waiting clients need.
pub fn fds_needed(max_connections: usize, queue: usize) -> u64 {
    max_connections as u64 * 2 + queue as u64 + RESERVED_FDS
}

/// Whether a failed dial is our own shortage rather than the peer's doing: out of file
/// descriptors (`EMFILE`, `ENFILE`), buffers or memory (`ENOBUFS`, `ENOMEM`), or local ports
/// (`EADDRNOTAVAIL`). Linux's numbers; elsewhere nothing is treated so.
pub fn is_local_exhaustion(e: &io::Error) -> bool {
    cfg!(target_os = "linux") && matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12 | 99))
}

/// Dials `addr` with `TCP_NODELAY`, giving up after `timeout`.
///
/// Without a timeout, a backend host that silently drops packets (a firewall, a machine that
/// is off) keeps the client waiting for the kernel's SYN retries, over two minutes on Linux.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ));
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How long [`lingering_close`] keeps reading what a peer still sends after our last byte.
pub const LINGER: Duration = Duration::from_secs(2);

/// Closes a connection we are done writing to without losing the end of what we wrote:
/// shut down our side (for TLS, `close_notify` then FIN), then read and discard until the peer
/// closes too, for at most `limit`.
///
/// Why not just drop it: closing a TCP socket that still has *unread* bytes in its receive
/// buffer makes the kernel send a reset instead of a FIN and throw away whatever it had not yet
/// sent of ours (RFC 1122 4.2.2.13). A TLS peer that half-closes sends a `close_notify` record,
/// which an HTTP server that stops reading after the request body never reads; under load our
/// last kilobytes are still queued when we close, and the peer sees a truncated response. nginx
/// calls this `lingering_close`, Apache `lingering close`; both exist for exactly this.
pub async fn lingering_close<S>(mut io: S, limit: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let linger = async {
        // An error here (the peer already reset, or our side already shut) still leaves
        // whatever is unread to drain.
        let _ = io.shutdown().await;
        let mut sink = [0u8; 1024];
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(limit, linger).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every accepted client has `TCP_NODELAY`, whether it was set on it or inherited from
    /// the listener: a proxy that let Nagle hold its small writes would add up to 40 ms.
    #[tokio::test]
    async fn accepted_clients_have_tcp_nodelay() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = accept(&listener).await;
        assert!(accepted.nodelay().unwrap());
    }

    /// A client accepted from an [`Unregistered`] listener is read and written with plain
    /// system calls while it never has to wait, and registered with the runtime on the first
    /// read that would block, which then waits as any tokio read does.
    #[tokio::test]
    async fn a_fresh_client_is_registered_only_once_it_must_wait() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = Unregistered::new(listener).unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let (mut fresh, peer) = accept(&listener).await;
        assert_eq!(peer, client.local_addr().unwrap());
        let mut buf = [0u8; 64];
        assert_eq!(fresh.read(&mut buf).await.unwrap(), 5);
        fresh.write_all(b"back").await.unwrap();
        assert!(!fresh.is_registered(), "nothing had to wait");
        let mut back = [0u8; 4];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");

        // Nothing more to read: the next read registers it, and waits for the bytes.
        let reading = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let n = fresh.read(&mut buf).await.unwrap();
            (fresh, buf[..n].to_vec())
        });
        tokio::task::yield_now().await;
        client.write_all(b"later").await.unwrap();
        let (mut fresh, got) = reading.await.unwrap();
        assert_eq!(got, b"later");
        assert!(fresh.is_registered());
        // And the end of the stream, through the runtime now.
        drop(client);
        assert_eq!(fresh.read(&mut buf).await.unwrap(), 0);
    }

    /// `defer_accept` sets the option the kernel reads back (it keeps it as SYN-ACK
    /// retransmissions, so the seconds come back rounded up, never zero), and a client that
    /// has spoken is accepted with its bytes already readable.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn deferred_accept_is_set_and_hands_over_clients_with_their_bytes() {
        use std::os::fd::AsRawFd as _;
        use tokio::io::AsyncWriteExt as _;
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let read_back = |listener: &TcpListener| {
            let mut value: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt on a live descriptor into a live c_int of the given size.
            let done = unsafe {
                libc::getsockopt(
                    listener.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_DEFER_ACCEPT,
                    (&raw mut value).cast(),
                    &mut len,
                )
            };
            assert_eq!(done, 0);
            value
        };
        assert_eq!(read_back(&listener), 0);
        defer_accept(&listener).unwrap();
        assert!(read_back(&listener) >= 1);
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (accepted, _) = accept(&listener).await;
        let mut buf = [0u8; 64];
        assert_eq!(accepted.try_read(&mut buf).unwrap(), 16);
    }
}
