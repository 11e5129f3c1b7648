//! Chapter 11's io_uring experiment: how much could `tcp-lb`'s plain-TCP path gain from
//! io_uring, before anyone builds it into the balancer?
//!
//! `tcp-lb` runs on tokio, a *readiness* model: the kernel says "this socket can be read"
//! (`epoll_wait`), then we make the call (`recvfrom`), one system call per operation, plus an
//! `epoll_ctl` to register each new socket and another to deregister it. io_uring is a
//! *completion* model: we queue "read this socket into this buffer" in a ring shared with the
//! kernel, the kernel does it when data arrives and queues the result, and one `io_uring_enter`
//! submits every queued operation and collects every finished one. No registration, and the
//! system calls are batched across all connections.
//!
//! This program is the *upper bound* of that idea: the relay and nothing else (round robin over
//! the backends, both directions copied, a half-close passed on, both sockets closed at the
//! end), on one thread, one ring. No health checks, limits, timeouts, metrics, TLS or logs:
//! whatever it saves against `tcp-lb` in the comparison is the most io_uring could save,
//! because `tcp-lb`'s extra work would come back on top. If that bound does not beat the
//! peers by a margin worth a second runtime model, the balancer should not take one on.
//! The result is in the README, chapter 11 ("Step 10").
//!
//! Try it (two terminals, Linux only):
//!
//! ```text
//! cargo run --release --bin dummy-server -- --listen 127.0.0.1:5001
//! cargo run --release --example uring-relay -- --listen 127.0.0.1:3000 --backend 127.0.0.1:5001
//! curl http://127.0.0.1:3000/
//! ```
//!
//! and measure it beside `tcp-lb`, HAProxy and nginx, in the same interleaved rounds:
//!
//! ```text
//! python3 benches/compare/compare.py --mode pinned --workloads keepalive,close \
//!     --targets haproxy,nginx,tcp-lb,tcp-lb-b --tcp-lb-b target/release/examples/uring-relay
//! ```
//!
//! It takes `tcp-lb`'s flags that the comparison passes (`--strategy`, `--health-interval`,
//! `--workers` are accepted and ignored: it is always round robin on one thread) and says
//! `listening on ADDR` when ready, as every binary here.

#[cfg(target_os = "linux")]
fn main() {
    use clap::Parser as _;
    let args = uring::Args::parse();
    if let Err(e) = uring::run(args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("error: io_uring is Linux only");
    std::process::exit(1);
}

#[cfg(target_os = "linux")]
mod uring {
    use std::io;
    use std::net::{SocketAddr, TcpListener};
    use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

    use io_uring::{IoUring, cqueue, opcode, squeue, types::Fd};

    #[derive(clap::Parser)]
    pub struct Args {
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        /// IPv4 HOST:PORT, repeatable; round robin.
        #[arg(long, required = true)]
        backend: Vec<SocketAddr>,
        /// Ring size: operations in flight before a submission must wait.
        #[arg(long, default_value_t = 4096)]
        entries: u32,
        // tcp-lb's flags that benches/compare passes, accepted so that the script can start
        // this program as its `tcp-lb-b` target.
        #[arg(long, hide = true)]
        strategy: Option<String>,
        #[arg(long, hide = true)]
        health_interval: Option<String>,
        #[arg(long, hide = true)]
        workers: Option<u16>,
    }

    /// The same buffer size as `tcp-lb`'s copying path (chapter 11).
    const BUF: usize = 16 * 1024;

    /// What a completion is for: the low 8 bits of its `user_data`; the pair's slot is above.
    const ACCEPT: u64 = 0;
    const CONNECT: u64 = 1;
    const RECV: u64 = 2; // + direction (0: client → backend, 1: backend → client)
    const SEND: u64 = 4; // + direction
    const SHUTDOWN: u64 = 6;
    /// Closes are fire-and-forget: they name no pair, so a slot can be reused at once.
    const CLOSE: u64 = 7;

    /// One direction of a pair: bytes read from one socket, not yet all written to the other.
    struct Half {
        buf: Box<[u8]>,
        len: usize,
        sent: usize,
        ended: bool,
    }

    struct Pair {
        /// 0: the client, 1: the backend. Direction `d` reads `fds[d]` and writes `fds[1 - d]`.
        fds: [RawFd; 2],
        halves: [Half; 2],
        /// Operations submitted for this pair and not completed yet: its buffers must live
        /// (and its slot stay taken) until this is 0, whatever else happened.
        in_flight: u32,
        failed: bool,
    }

    struct Relay {
        ring: IoUring,
        listener: RawFd,
        /// Built once and never resized: the kernel reads these while a connect is in flight.
        backends: Vec<libc::sockaddr_in>,
        next_backend: usize,
        pairs: Vec<Option<Pair>>,
        free: Vec<usize>,
    }

    pub fn run(args: Args) -> io::Result<()> {
        let backends = args
            .backend
            .iter()
            .map(|a| match a {
                SocketAddr::V4(v4) => Ok(sockaddr_in(v4)),
                SocketAddr::V6(_) => Err(io::Error::other(format!(
                    "backend {a}: this experiment speaks IPv4 only"
                ))),
            })
            .collect::<io::Result<Vec<_>>>()?;
        let listener = TcpListener::bind(args.listen).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", args.listen))
        })?;
        // Inherited by every accepted socket (chapter 11, step 8), as in tcp-lb.
        set_nodelay(listener.as_raw_fd())?;
        // A single thread submits, and completions are processed only when it asks for them:
        // the two settings the io_uring authors recommend for this shape of program. Older
        // kernels lack them; a plain ring still works. Some sandboxes forbid io_uring
        // altogether (a seccomp filter, `kernel.io_uring_disabled`): that is said plainly.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(args.entries)
            .or_else(|_| IoUring::new(args.entries))
            .map_err(|e| {
                io::Error::new(e.kind(), format!("io_uring is not available here: {e}"))
            })?;
        println!("listening on {}", listener.local_addr()?);
        let mut relay = Relay {
            ring,
            listener: listener.into_raw_fd(),
            backends,
            next_backend: 0,
            pairs: Vec::new(),
            free: Vec::new(),
        };
        relay.run()
    }

    impl Relay {
        fn run(&mut self) -> io::Result<()> {
            self.arm_accept()?;
            let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
            loop {
                // One system call: submits everything queued since the last turn, and waits
                // for at least one completion.
                match self.ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => return Err(e),
                }
                done.extend(
                    self.ring
                        .completion()
                        .map(|c| (c.user_data(), c.result(), c.flags())),
                );
                for (data, result, flags) in done.drain(..) {
                    self.complete(data, result, flags)?;
                }
            }
        }

        /// Queues an operation; a full submission queue is submitted first (the kernel copies
        /// entries out when they are submitted, so there is room again).
        fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
            loop {
                // SAFETY: every buffer and address an entry points to lives in a `Pair` (or
                // `self.backends`) that is not freed or moved while the operation is in
                // flight: `in_flight` counts them, and a slot is released only at 0. Pair
                // buffers are boxed, so the `pairs` vector may grow without moving them.
                if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                    return Ok(());
                }
                self.ring.submit()?;
            }
        }

        fn arm_accept(&mut self) -> io::Result<()> {
            // Multishot: one submission, a completion per accepted client, until the kernel
            // says it stopped (no `more` flag).
            let entry = opcode::AcceptMulti::new(Fd(self.listener))
                .build()
                .user_data(ACCEPT);
            self.push(entry)
        }

        fn submit_for(&mut self, slot: usize, entry: squeue::Entry) -> io::Result<()> {
            if let Some(pair) = self.pairs[slot].as_mut() {
                pair.in_flight += 1;
            }
            self.push(entry)
        }

        fn recv(&mut self, slot: usize, d: usize) -> io::Result<()> {
            let Some(pair) = self.pairs[slot].as_mut() else {
                return Ok(());
            };
            let (fd, buf) = (pair.fds[d], pair.halves[d].buf.as_mut_ptr());
            let entry = opcode::Recv::new(Fd(fd), buf, BUF as u32)
                .build()
                .user_data(tag(slot, RECV + d as u64));
            self.submit_for(slot, entry)
        }

        fn send(&mut self, slot: usize, d: usize) -> io::Result<()> {
            let Some(pair) = self.pairs[slot].as_mut() else {
                return Ok(());
            };
            let half = &pair.halves[d];
            let (fd, start, left) = (
                pair.fds[1 - d],
                half.buf[half.sent..].as_ptr(),
                (half.len - half.sent) as u32,
            );
            let entry = opcode::Send::new(Fd(fd), start, left)
                .build()
                .user_data(tag(slot, SEND + d as u64));
            self.submit_for(slot, entry)
        }

        fn complete(&mut self, data: u64, result: i32, flags: u32) -> io::Result<()> {
            let (slot, op) = ((data >> 8) as usize, data & 0xff);
            match op {
                ACCEPT => {
                    if !cqueue::more(flags) {
                        self.arm_accept()?;
                    }
                    if result >= 0 {
                        self.start_pair(result)?;
                    } else if result != -libc::EAGAIN && result != -libc::ECONNABORTED {
                        eprintln!("accept: {}", io::Error::from_raw_os_error(-result));
                    }
                    return Ok(());
                }
                CLOSE => return Ok(()),
                _ => {}
            }
            let Some(pair) = self.pairs[slot].as_mut() else {
                return Ok(());
            };
            pair.in_flight -= 1;
            if pair.failed {
                return self.finish_if_idle(slot);
            }
            match op {
                CONNECT if result < 0 => self.fail(slot),
                CONNECT => {
                    self.recv(slot, 0)?;
                    self.recv(slot, 1)
                }
                SHUTDOWN => self.finish_if_idle(slot),
                _ if result < 0 => self.fail(slot),
                _ if op < SEND => {
                    let d = (op - RECV) as usize;
                    if result == 0 {
                        return self.end(slot, d);
                    }
                    let half = &mut pair.halves[d];
                    (half.len, half.sent) = (result as usize, 0);
                    self.send(slot, d)
                }
                _ => {
                    let d = (op - SEND) as usize;
                    let half = &mut pair.halves[d];
                    half.sent += result as usize;
                    if half.sent < half.len {
                        self.send(slot, d)
                    } else {
                        self.recv(slot, d)
                    }
                }
            }
        }

        fn start_pair(&mut self, client: RawFd) -> io::Result<()> {
            // SAFETY: plain system calls on descriptors this function owns.
            let backend = unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                )
            };
            if backend < 0 {
                eprintln!("socket: {}", io::Error::last_os_error());
                self.close(client)?;
                return Ok(());
            }
            set_nodelay(backend)?;
            let half = || Half {
                buf: vec![0; BUF].into_boxed_slice(),
                len: 0,
                sent: 0,
                ended: false,
            };
            let pair = Pair {
                fds: [client, backend],
                halves: [half(), half()],
                in_flight: 0,
                failed: false,
            };
            let slot = match self.free.pop() {
                Some(slot) => {
                    self.pairs[slot] = Some(pair);
                    slot
                }
                None => {
                    self.pairs.push(Some(pair));
                    self.pairs.len() - 1
                }
            };
            let addr = &self.backends[self.next_backend % self.backends.len()];
            self.next_backend = self.next_backend.wrapping_add(1);
            let entry = opcode::Connect::new(
                Fd(backend),
                (addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
            .build()
            .user_data(tag(slot, CONNECT));
            self.submit_for(slot, entry)
        }

        /// Direction `d` reached its end of stream. As in `tcp-lb` (`Ended::pass_on`): the
        /// first end is passed on with a `shutdown`, the second closes both sockets.
        fn end(&mut self, slot: usize, d: usize) -> io::Result<()> {
            let Some(pair) = self.pairs[slot].as_mut() else {
                return Ok(());
            };
            pair.halves[d].ended = true;
            if pair.halves[1 - d].ended {
                return self.finish_if_idle(slot);
            }
            let fd = pair.fds[1 - d];
            let entry = opcode::Shutdown::new(Fd(fd), libc::SHUT_WR)
                .build()
                .user_data(tag(slot, SHUTDOWN));
            self.submit_for(slot, entry)
        }

        /// An error on either side: both sockets are shut down at once, which completes any
        /// receive still waiting on them, and the pair is closed when nothing is in flight.
        fn fail(&mut self, slot: usize) -> io::Result<()> {
            if let Some(pair) = self.pairs[slot].as_mut() {
                pair.failed = true;
                for fd in pair.fds {
                    // SAFETY: the pair owns both descriptors until `finish_if_idle` closes them.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
            }
            self.finish_if_idle(slot)
        }

        fn finish_if_idle(&mut self, slot: usize) -> io::Result<()> {
            let done = matches!(&self.pairs[slot], Some(p) if p.in_flight == 0
                && (p.failed || (p.halves[0].ended && p.halves[1].ended)));
            if done && let Some(pair) = self.pairs[slot].take() {
                self.free.push(slot);
                for fd in pair.fds {
                    self.close(fd)?;
                }
            }
            Ok(())
        }

        fn close(&mut self, fd: RawFd) -> io::Result<()> {
            self.push(opcode::Close::new(Fd(fd)).build().user_data(CLOSE))
        }
    }

    fn tag(slot: usize, op: u64) -> u64 {
        ((slot as u64) << 8) | op
    }

    fn sockaddr_in(addr: &std::net::SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(addr.ip().octets()),
            },
            sin_zero: [0; 8],
        }
    }

    fn set_nodelay(fd: RawFd) -> io::Result<()> {
        let on: libc::c_int = 1;
        // SAFETY: `on` outlives the call, and its size is passed with it.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}
