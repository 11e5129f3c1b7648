//! Zero-copy forwarding on Linux: `splice(2)` through a pipe (chapter 11).
//!
//! Copying through a user-space buffer costs two copies per byte: the kernel copies the
//! received bytes into our buffer (`recv`), then copies them back into the other socket
//! (`send`). `splice` moves them from a socket into a pipe and from the pipe into the other
//! socket as references to the kernel's own pages: the bytes never enter the process. For a
//! bulk stream that cuts the proxy's CPU per byte by more than half (60 % in chapter 11); for a 100-byte request it saves nothing
//! and costs the same two system calls, so [`crate::relay`] switches a direction to splicing
//! only once a read fills its whole buffer (HAProxy calls this `splice-auto`).
//!
//! A pipe is two file descriptors and a small kernel structure; like the buffers, pipes are
//! kept in a small per-thread pool and a connection holds one only while bytes sit in it.
//! Where a pipe cannot be had (the descriptor limit is reached) or the kernel refuses to splice
//! these sockets, the caller falls back to copying: [`Pipe::take`] and [`splice_in`] say so
//! with [`Unavailable`].

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};

/// How many bytes one `splice` asks for: the default pipe capacity (16 pages).
pub const CHUNK: usize = 64 * 1024;

/// Pipes a thread keeps for reuse. Each is two descriptors, so this stays well inside the
/// descriptors `net::RESERVED_FDS` sets aside for everything that is not a connection.
const KEEP: usize = 8;

thread_local! {
    static FREE: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// Whether plain forwarding may splice: yes, unless `TCP_LB_SPLICE=off` is in the environment
/// (read once), which is there to measure the difference (chapter 11) and as a way out should
/// a kernel misbehave.
pub fn enabled() -> bool {
    static ENABLED: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var_os("TCP_LB_SPLICE").is_none_or(|v| v != "off"));
    *ENABLED
}

/// Splicing cannot be used here; copy through a buffer instead.
#[derive(Debug)]
pub struct Unavailable;

/// A pipe that is empty whenever it is in the pool.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A pipe from this thread's pool, or a new one.
    pub fn take() -> Result<Pipe, Unavailable> {
        if let Some(pipe) = FREE.with(|f| f.borrow_mut().pop()) {
            return Ok(pipe);
        }
        let (read, write) =
            pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).map_err(|_| Unavailable)?;
        Ok(Pipe { read, write })
    }

    /// Returns an *empty* pipe to the pool (a pipe still holding bytes must be dropped, which
    /// closes it and frees them).
    pub fn give(self) {
        FREE.with(|f| {
            let mut free = f.borrow_mut();
            if free.len() < KEEP {
                free.push(self);
            }
        });
    }
}

/// Moves up to [`CHUNK`] bytes from the socket into the (empty) pipe. `Ok(0)` is the end of
/// the stream; `WouldBlock` means nothing to read yet. `Err(Unavailable)` inside means the
/// kernel cannot splice from this socket.
pub fn splice_in(src: impl AsFd, pipe: &Pipe) -> io::Result<Result<usize, Unavailable>> {
    match splice(
        src,
        None,
        &pipe.write,
        None,
        CHUNK,
        SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
    ) {
        Ok(n) => Ok(Ok(n)),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            Ok(Err(Unavailable))
        }
        Err(e) => Err(e.into()),
    }
}

/// Moves up to `len` bytes from the pipe into the socket; `WouldBlock` when the socket's send
/// buffer is full.
pub fn splice_out(pipe: &Pipe, dst: impl AsFd, len: usize) -> io::Result<usize> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    Ok(splice(&pipe.read, None, dst, None, len, flags)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};

    /// Every socket of the test gives up after this long, so a stall fails with a message.
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

    fn patient(s: TcpStream) -> TcpStream {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.set_write_timeout(Some(PATIENCE)).unwrap();
        s
    }

    #[test]
    fn bytes_cross_a_pooled_pipe_between_two_sockets_unchanged() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut a = patient(TcpStream::connect(addr).unwrap());
        let b = patient(listener.accept().unwrap().0);
        let c = patient(TcpStream::connect(addr).unwrap());
        let mut d = patient(listener.accept().unwrap().0);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || {
                a.write_all(&data).unwrap();
                a.shutdown(std::net::Shutdown::Write).unwrap();
                // Handed back, not dropped: a closed socket with bytes still queued is an
                // orphan, and under memory pressure the kernel kills orphans ("TCP: out of
                // memory") without a FIN, which left the splice below waiting forever.
                a
            })
        };
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            d.read_to_end(&mut got).map(|_| got)
        });
        // Blocking sockets: splice waits on the socket (up to PATIENCE), and the pipe is
        // drained each time.
        let mut moved = 0;
        loop {
            let pipe = Pipe::take().unwrap();
            let n = match splice_in(&b, &pipe) {
                Ok(n) => n.unwrap(),
                Err(e) => panic!("splice_in stalled after {moved} bytes: {e}"),
            };
            if n == 0 {
                pipe.give();
                break;
            }
            let mut left = n;
            while left > 0 {
                left -= splice_out(&pipe, &c, left)
                    .unwrap_or_else(|e| panic!("splice_out stalled after {moved} bytes: {e}"));
            }
            moved += n;
            pipe.give();
        }
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let got = reader
            .join()
            .unwrap()
            .expect("the far end reads everything in time");
        drop(writer.join().unwrap());
        assert!(
            got == data,
            "{} bytes arrived, {} sent",
            got.len(),
            data.len()
        );
        assert!(
            FREE.with(|f| f.borrow().len()) == 1,
            "the one pipe was reused"
        );
    }
}
