//! Shared test helpers: run the real binaries, wait for readiness, speak raw TCP, HTTP and TLS.
//!
//! Everything here blocks on a real event (a line printed, a byte received, a process exit),
//! each bounded by a generous timeout so a broken build fails instead of hanging. Nothing sleeps.

#![allow(dead_code)]

pub mod cdp;
pub mod h2;
pub mod tls;

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The path of one of this package's binaries, e.g. `bin!("02-forward")`.
#[macro_export]
macro_rules! bin {
    ($name:literal) => {
        env!(concat!("CARGO_BIN_EXE_", $name))
    };
}

/// How long any single wait may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How long one test binary may run in all. Every wait here is bounded by [`PATIENCE`]; this
/// is the net under that, for a blocking call a test forgot to bound: the binary prints which
/// tests were still running and exits non-zero, instead of holding CI until its own limit.
pub const BINARY_LIMIT: Duration = Duration::from_secs(600);

/// Starts the [`BINARY_LIMIT`] watchdog once per test binary (every helper that does I/O calls
/// it).
pub fn watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let started = Instant::now();
        thread::spawn(move || {
            while let Some(left) = BINARY_LIMIT.checked_sub(started.elapsed()) {
                thread::park_timeout(left);
            }
            let running = RUNNING.lock().map(|r| r.join(", ")).unwrap_or_default();
            eprintln!(
                "error: this test binary is still running after {BINARY_LIMIT:?}; stuck: {running}"
            );
            std::process::exit(3);
        });
    });
}

/// Names of the threads (libtest names them after their test) that started a process or a
/// connection and have not finished: what the watchdog reports.
static RUNNING: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn note_running() {
    watchdog();
    /// Removes its thread's test from [`RUNNING`] when the thread (the test) ends.
    struct Registered(String);
    impl Drop for Registered {
        fn drop(&mut self) {
            if let Ok(mut running) = RUNNING.lock() {
                running.retain(|n| *n != self.0);
            }
        }
    }
    thread_local! {
        static REGISTERED: std::cell::OnceCell<Registered> = const { std::cell::OnceCell::new() };
    }
    let Some(name) = thread::current().name().map(str::to_owned) else {
        return;
    };
    REGISTERED.with(|r| {
        r.get_or_init(|| {
            if let Ok(mut running) = RUNNING.lock() {
                running.push(name.clone());
            }
            Registered(name)
        });
    });
}

/// Text a child wrote so far, with a way to wait for more.
#[derive(Default)]
struct Output {
    text: Mutex<String>,
    changed: Condvar,
}

impl Output {
    fn wait_for(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut text = self.text.lock().unwrap();
        loop {
            if pred(&text) {
                return Some(text.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            text = self.changed.wait_timeout(text, left).unwrap().0;
        }
    }
}

/// A running binary, killed when dropped.
pub struct Proc {
    child: Child,
    /// Its standard input, for [`Proc::start_with_input`].
    stdin: Option<std::process::ChildStdin>,
    /// The addresses of its `listening on` lines, in order.
    pub addrs: Vec<SocketAddr>,
    stdout: Arc<Output>,
    stderr: Arc<Output>,
}

impl Proc {
    /// Starts `bin` with `args` and waits until it printed `listeners` `listening on` lines.
    pub fn start(bin: &str, args: &[&str], listeners: usize) -> Proc {
        Self::start_in(bin, args, listeners, None)
    }

    /// [`Proc::start`] in the working directory `dir`.
    pub fn start_in(bin: &str, args: &[&str], listeners: usize, dir: Option<&Path>) -> Proc {
        Self::launch(bin, args, listeners, dir, false)
    }

    /// [`Proc::start`] with a pipe to its standard input, for [`Proc::send_line`].
    pub fn start_with_input(bin: &str, args: &[&str], listeners: usize) -> Proc {
        Self::launch(bin, args, listeners, None, true)
    }

    /// [`Proc::start`] with `env` set for it (for example `LB_HTTP_FAST=off`).
    pub fn start_env(bin: &str, args: &[&str], listeners: usize, env: &[(&str, &str)]) -> Proc {
        Self::launch_env(bin, args, listeners, None, false, env)
    }

    /// Writes `line` and a newline to its standard input.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("started with start_with_input");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn launch(bin: &str, args: &[&str], listeners: usize, dir: Option<&Path>, input: bool) -> Proc {
        Self::launch_env(bin, args, listeners, dir, input, &[])
    }

    fn launch_env(
        bin: &str,
        args: &[&str],
        listeners: usize,
        dir: Option<&Path>,
        input: bool,
        env: &[(&str, &str)],
    ) -> Proc {
        note_running();
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(if input { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let stdout = Arc::new(Output::default());
        let stderr = Arc::new(Output::default());
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let sink = Arc::clone(&stdout);
        // Drain stdout for the whole life of the child: a full pipe would block it.
        thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let text = String::from_utf8_lossy(&line).into_owned();
                if let Some(addr) = text.trim_end().strip_prefix("listening on ") {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
                sink.text.lock().unwrap().push_str(&text);
                sink.changed.notify_all();
                line.clear();
            }
        });
        let err = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut reader = BufReader::new(err);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                sink.text
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&line));
                sink.changed.notify_all();
                line.clear();
            }
        });
        let mut addrs = Vec::new();
        for _ in 0..listeners {
            match rx.recv_timeout(PATIENCE) {
                Ok(addr) => addrs.push(addr),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = stderr.text.lock().unwrap().clone();
                    panic!("{bin} {args:?} did not print `listening on`; stderr:\n{log}");
                }
            }
        }
        Proc {
            stdin: child.stdin.take(),
            child,
            addrs,
            stdout,
            stderr,
        }
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn stderr(&self) -> String {
        self.stderr.text.lock().unwrap().clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.text.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle` `times` times; panics with the log otherwise.
    /// Counts as the log grows (lines arrive whole, so no match straddles two looks): waiting
    /// for the 20,000th line does not rescan the first 19,999 each time.
    pub fn wait_stderr(&self, needle: &str, times: usize) -> String {
        self.wait_stderr_within(needle, times, PATIENCE)
    }

    /// [`Proc::wait_stderr`] with a time limit of its own, for events that come on a timer.
    pub fn wait_stderr_within(&self, needle: &str, times: usize, limit: Duration) -> String {
        let (seen, count) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
        self.stderr
            .wait_for(
                |t| {
                    count.set(count.get() + t[seen.get()..].matches(needle).count());
                    seen.set(t.len());
                    count.get() >= times
                },
                limit,
            )
            .unwrap_or_else(|| {
                panic!(
                    "stderr never showed {times}× {needle:?}:\n{}",
                    self.stderr()
                )
            })
    }

    /// Waits until stdout contains `needle`.
    pub fn wait_stdout(&self, needle: &str) -> String {
        self.stdout
            .wait_for(|t| t.contains(needle), PATIENCE)
            .unwrap_or_else(|| panic!("stdout never showed {needle:?}:\n{}", self.stdout()))
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` dummy servers (server1..serverN) in one process, and the `--backend ADDR` arguments
/// that name them in order.
pub fn dummies(n: usize) -> (Proc, Vec<String>) {
    let args: Vec<&str> = (0..n).flat_map(|_| ["--listen", "127.0.0.1:0"]).collect();
    let dummy = Proc::start(bin!("dummy-server"), &args, n);
    let backends = dummy
        .addrs
        .iter()
        .flat_map(|a| ["--backend".to_owned(), a.to_string()])
        .collect();
    (dummy, backends)
}

/// The `x-served-by` of `n` requests to `addr`, each on a new connection.
pub fn served_by(addr: SocketAddr, n: usize) -> Vec<String> {
    (0..n).map(|_| get(addr, "/").served_by()).collect()
}

/// Runs `bin` to completion; returns (exit code, stdout, stderr).
pub fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a start-up failure: non-zero exit (not a panic's 101), and exactly one line on
/// stderr that starts with `error:` and contains every one of `words`. One-shot runs use
/// `assert_cmd`, the ecosystem's way to test a command line.
pub fn assert_one_line_error(bin: &str, args: &[&str], words: &[&str]) {
    use predicates::prelude::*;
    let mut line = predicate::str::starts_with("error: ").boxed();
    for w in words {
        line = line.and(predicate::str::contains(*w)).boxed();
    }
    // A balancer binds its port before it plans (`app::serve`: a port in use fails the start
    // before any backend is touched), so an error found in planning shows only while the
    // default port is free; a balancer a learner started from the README may hold it. Such a
    // run gets a port of its own, unless the test gives one.
    let name = std::path::Path::new(bin)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let balancer = matches!(name, "http-lb" | "tcp-lb")
        || (name.len() > 3 && name.as_bytes()[..2].iter().all(u8::is_ascii_digit));
    let mut args = args.to_vec();
    if balancer && !args.iter().any(|a| a.starts_with("--listen")) {
        args.extend(["--listen", "127.0.0.1:0"]);
    }
    let assert = assert_cmd::Command::new(bin)
        .args(&args)
        .timeout(PATIENCE)
        .assert()
        .failure()
        .code(predicate::ne(101));
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{bin} {args:?}: expected one line, got:\n{stderr}"
    );
    assert!(
        line.eval(lines[0]),
        "{bin} {args:?}: {:?} lacks one of {words:?}",
        lines[0]
    );
}

/// A TCP connection with timeouts, so a test that goes wrong fails instead of hanging.
pub fn connect(addr: SocketAddr) -> TcpStream {
    note_running();
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// A loopback port where nothing listens, for as long as the returned guard lives: the port
/// is bound but not listening, so a connect is refused and no other socket (not even the
/// balancer's own `127.0.0.1:0` listener, which once drew it and dialled itself in a loop)
/// can take it meanwhile: the kernel's choice of a port for `bind(0)` or for a `connect`
/// skips a bound port even when both sides set `SO_REUSEADDR`.
///
/// It is also how a test reserves a port for a server it starts later on that number (a
/// backend that comes back, an etcd restarted on its address). The guard sets `SO_REUSEADDR`
/// and never listens, so a server that binds the port by number with `SO_REUSEADDR` (ours,
/// through `net::bind`; etcd and any Go or tokio listener) still can, while the guard lives
/// and after that server stops. A port that was only free a moment ago could meanwhile be
/// taken by another test's connection: etcd failed to restart in CI that way.
pub fn refusing_port() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = hold_dead_port(SocketAddr::from(([127, 0, 0, 1], 0))).expect("a loopback port");
    (socket.local_addr().unwrap(), socket)
}

/// Keeps `addr` refusing connections once the server that listened on it is gone (bound, never
/// listening), so that no other test's listener takes the port in between and answers a health
/// check meant to fail. Best effort: `None` when someone took it already.
pub fn hold_dead_port(addr: SocketAddr) -> Option<tokio::net::TcpSocket> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let _entered = rt.enter();
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    // The closed server's connections may be in TIME_WAIT on it.
    socket.set_reuseaddr(true).ok()?;
    socket.bind(addr).ok()?;
    Some(socket)
}

/// A fresh, empty folder under the system temp dir, named `tcp-lb-LABEL-PID-N`.
///
/// Tests hand these paths to the binaries they start, so nothing removes a folder while its
/// test runs; instead each test process, the first time it asks for one, removes the folders
/// that processes no longer alive left behind (certificates, configs, a few KiB each, but
/// thousands after a few hundred runs).
pub fn temp_dir(label: &str) -> PathBuf {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(remove_dead_processes_folders);
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tcp-lb-{label}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes the [`temp_dir`] folders whose process is gone (no `/proc/PID`).
fn remove_dead_processes_folders() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("tcp-lb-")) else {
            continue;
        };
        // LABEL-PID-N: the PID is the second field from the end.
        let mut fields = rest.rsplit('-');
        let (Some(n), Some(pid)) = (fields.next(), fields.next()) else {
            continue;
        };
        let (Ok(_), Ok(pid)) = (n.parse::<usize>(), pid.parse::<u32>()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Deterministic, non-repeating test data, different for each `seed`.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
}

/// A one-response-per-request HTTP/1.1 reply: status line, headers (lowercase names), body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn served_by(&self) -> String {
        self.header("x-served-by").unwrap_or("<none>").to_owned()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response that carries `content-length` (the dummy server always sends it).
pub fn read_reply(r: &mut impl Read) -> Reply {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match r.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            // A signal arrived during the read (seen under load): read again, as read_exact
            // would.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => panic!("connection ended inside a response head ({other:?}): {head:?}"),
        }
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    // An informational answer has no body, and no length to say so (RFC 9112 §6.3).
    let len: usize = match (100..200).contains(&status) {
        true => 0,
        false => headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .expect("content-length"),
    };
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

/// Sends `GET path` on `stream` (keeping the connection open) and reads the reply.
pub fn get_on(stream: &mut (impl Read + Write), path: &str) -> Reply {
    write!(stream, "GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").unwrap();
    stream.flush().unwrap();
    read_reply(stream)
}

/// One `GET path` on a new plain connection to `addr`.
pub fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut s = connect(addr);
    get_on(&mut s, path)
}

/// Reads one request head and its `Content-Length` body from a backend's connection, as a
/// backend that knows no other framing would; `None` when the connection ends. Byte by byte,
/// so that nothing of a next request is taken; a read a signal interrupts is read again (a bare
/// `read` taking EINTR for the end flaked a test under stress-ng).
pub fn read_request(conn: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let l = l.to_ascii_lowercase();
            l.strip_prefix("content-length:")?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    conn.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// Seeded noise, so that a failure replays: xorshift64.
pub struct Noise(pub u64);

impl Noise {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `seed` with a few bytes changed, inserted or cut.
    pub fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut bytes = seed.to_vec();
        for _ in 0..1 + self.next() % 4 {
            let at = (self.next() as usize) % (bytes.len() + 1);
            match self.next() % 3 {
                0 if at < bytes.len() => bytes[at] = self.next() as u8,
                1 => bytes.insert(at, self.next() as u8),
                _ => bytes.truncate(at.max(1)),
            }
        }
        bytes
    }
}

/// Reads one request from a backend connection as a strict server would (a length, or
/// chunks decoded), normalised for comparison: the request line, then the fields with
/// lower-case names in sorted order, then the body. `None` when the connection ends or the
/// request is not one a server could read.
pub fn strict_request(conn: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? != 1 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let line = lines.next()?.to_owned();
    let mut fields: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap_or((l, ""));
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let value = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if value("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut size = Vec::new();
            while !size.ends_with(b"\r\n") {
                if conn.read(&mut byte).ok()? != 1 {
                    return None;
                }
                size.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&size[..size.len() - 2]).into_owned();
            let n = usize::from_str_radix(text.split(';').next()?.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            conn.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body
    } else {
        let n: usize = value("content-length").map_or(Some(0), |v| v.parse().ok())?;
        let mut body = vec![0; n];
        conn.read_exact(&mut body).ok()?;
        body
    };
    // How the body was framed is each path's own choice (hyper chunks what it did not read
    // whole; an empty body may or may not say `content-length: 0`): the body is compared,
    // not its framing fields.
    fields.retain(|(n, _)| n != "transfer-encoding" && n != "content-length");
    fields.sort();
    let fields: Vec<String> = fields.iter().map(|(n, v)| format!("{n}: {v}")).collect();
    Some(format!(
        "{line}\n{}\n\n{}",
        fields.join("\n"),
        String::from_utf8_lossy(&body)
    ))
}

/// A backend that reads requests strictly, records each, and answers each with `answer(path)`
/// then, when it asks, closes.
pub fn strict_backend(answer: fn(&str) -> Vec<u8>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let addr = spawn_per_connection(move |mut conn| {
        while let Some(request) = strict_request(&mut conn) {
            let path = request.split(' ').nth(1).unwrap_or("/").to_owned();
            record.lock().unwrap().push(request);
            let mut bytes = answer(path.trim_start_matches('/'));
            let close = bytes.ends_with(b"CLOSE");
            if close {
                bytes.truncate(bytes.len() - 5);
            }
            if conn.write_all(&bytes).is_err() || close {
                return;
            }
        }
    });
    (addr, seen)
}

/// True when the peer closes `stream` (EOF or reset) without sending anything.
pub fn closed_without_data(stream: &mut impl Read) -> bool {
    let mut buf = [0u8; 64];
    loop {
        return match stream.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            // A signal to this test process (a child's exit) interrupts a bare `read`; the
            // peer has decided nothing yet: read again (seen under stress-ng, 1 run in 4).
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ),
        };
    }
}

/// Writes `data` from a second thread while reading everything back on this one, then
/// half-closes; returns what came back. Reading and writing at once is required: an echo
/// through a proxy would otherwise deadlock once every socket buffer on the path is full.
pub fn echo_through(stream: TcpStream, data: Arc<Vec<u8>>) -> Vec<u8> {
    let mut writer = stream.try_clone().unwrap();
    let to_send = Arc::clone(&data);
    let w = thread::spawn(move || {
        writer.write_all(&to_send).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(data.len());
    let mut reader = stream;
    reader.read_to_end(&mut back).unwrap();
    w.join().unwrap();
    back
}

/// A raw TCP server on loopback: `handle` runs on a thread of its own for each connection it
/// accepts. The backends tests write by hand (echo, capture, a scripted HTTP peer) are this
/// with a different `handle`.
pub fn spawn_per_connection<F>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) + Clone + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let handle = handle.clone();
            thread::spawn(move || handle(conn));
        }
    });
    addr
}

/// A raw TCP echo server on loopback (one thread per connection): it copies until the client
/// half-closes, then closes its side. A byte proxy's tests want a backend with no HTTP in it.
pub fn spawn_echo_server() -> SocketAddr {
    spawn_per_connection(|mut conn| {
        let mut buf = [0u8; 32 * 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = conn.shutdown(Shutdown::Write);
    })
}

/// A raw TCP server that answers only after the client half-closed: it reads everything, then
/// sends `reply` followed by the number of bytes it read, and closes. It proves the half-close
/// reached the backend *and* that the answer still came back.
pub fn spawn_answer_after_eof_server(reply: &'static [u8]) -> SocketAddr {
    spawn_per_connection(move |mut conn| {
        let mut got = Vec::new();
        if conn.read_to_end(&mut got).is_ok() {
            let _ = conn.write_all(reply);
            let _ = write!(conn, " after {} bytes", got.len());
        }
    })
}

/// The tutorial's certificates, written by the real `certs` binary into a fresh folder.
pub fn make_certs(label: &str) -> PathBuf {
    let dir = temp_dir(label);
    let (code, _, stderr) = run(bin!("certs"), &["--out", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "certs failed: {stderr}");
    dir
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Polls `done` every 10 ms until it holds, failing the test naming `what` after `limit`;
/// how long it took.
///
/// Only for states no process announces: a cache entry's age passing its `max-age`, a health
/// probe counted in `/metrics`, a line in a log *file* another process writes, a process that
/// is not our child leaving `/proc`, or a balancer's backends after a rebuild whose log line
/// names addresses, not the servers the test knows by name. Where a line on a [`Proc`]'s
/// output marks the moment, wait for it with [`Proc::wait_stderr`] instead. (Re-checking on
/// every new output line would not do here: most checks send a request, whose access-log line
/// would wake the check again at once.)
#[allow(dead_code)]
pub fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "never happened within {limit:?}: {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// A blocking connection to `addr` from the loopback address `from` (127.0.0.x): how a test
/// plays several client IPs.
pub fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        socket.connect(addr).await.unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`HUP`, `TERM`, `INT`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit; returns its exit code. A watchdog kills it after
    /// [`PATIENCE`], so a process that never exits fails the test instead of hanging it.
    pub fn wait_exit(&mut self) -> i32 {
        let pid = self.pid().to_string();
        let (done, watch) = mpsc::channel::<()>();
        let watchdog = thread::spawn(move || {
            if watch.recv_timeout(PATIENCE).is_err() {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                return true;
            }
            false
        });
        let status = self.child.wait().unwrap();
        let _ = done.send(());
        assert!(
            !watchdog.join().unwrap(),
            "the process did not exit within {PATIENCE:?}:\n{}",
            self.stderr()
        );
        status.code().unwrap_or(-1)
    }

    /// Open file descriptors of the process now, pipes aside (Linux). Plain forwarding keeps a
    /// few empty pipes pooled for splice(2), as it pools buffers; what a leaked connection
    /// leaves behind is a socket, and sockets are what this counts.
    pub fn fd_count(&self) -> usize {
        self.fds()
            .filter(|target| !target.starts_with("pipe:"))
            .count()
    }

    /// Pipes the process holds now: stdout and stderr (to this test), and the pooled ones.
    pub fn pipe_count(&self) -> usize {
        self.fds()
            .filter(|target| target.starts_with("pipe:"))
            .count()
    }

    fn fds(&self) -> impl Iterator<Item = String> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| std::fs::read_link(entry.path()).ok())
            .map(|target| target.to_string_lossy().into_owned())
    }

    /// CPU time the process used so far, user and system, in clock ticks (1/100 s).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the `(comm)`, which may itself hold spaces: utime and stime are the
        // 14th and 15th fields overall, the 12th and 13th after it.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split(' ').collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

/// Raises this test process's soft open-file limit to at least `want` (up to the hard limit)
/// with prlimit(1); the balancers it starts inherit it.
pub fn raise_fd_limit(want: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft: u64 = fields.next().unwrap().parse().unwrap_or(u64::MAX);
    let hard: u64 = fields.next().unwrap().parse().unwrap_or(u64::MAX);
    if soft >= want {
        return;
    }
    assert!(
        hard >= want,
        "this test needs {want} open files but the hard limit is {hard}"
    );
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={want}:{hard}"),
        ])
        .status()
        .expect("prlimit (util-linux) is needed to raise the open-file limit");
    assert!(status.success(), "prlimit failed");
}

/// `GET path` on the admin listener `addr`: (status, body).
pub fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let reply = get(addr, path);
    (reply.status, reply.text())
}

/// The value of one sample in the Prometheus text `metrics` (`name{labels}` as written).
pub fn metric(metrics: &str, sample: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {sample} in:\n{metrics}"))
        .parse()
        .unwrap()
}

/// HTTP/2 requests `http-lb` counted, whichever codec read them (the own one, or hyper's with
/// `LB_H2_OWN=off`).
pub fn h2_requests(metrics: &str) -> u64 {
    ["own", "hyper"]
        .iter()
        .map(|path| {
            metric(
                metrics,
                &format!("httplb_requests_total{{path=\"{path}\",protocol=\"h2\"}}"),
            )
        })
        .sum()
}
