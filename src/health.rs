//! Backend health (chapter 8): which backends the balancer should stop offering to clients,
//! and when to offer them again.
//!
//! Two sources of evidence, as in HAProxy and nginx:
//!
//! * **Passive**: the connections clients make anyway. A backend that fails
//!   [`Failover::fail_after`] connects in a row is skipped for a cooldown. When the cooldown
//!   ends it is offered again; the next real connect decides: success clears everything, failure
//!   skips it again for twice as long (1 s, 2 s, 4 s … up to 30 s), so a dead backend costs one
//!   client's retry per cooldown instead of one per connection.
//! * **Active**: a probe every interval, whether or not clients come: a TCP connect (with the
//!   TLS handshake for a TLS backend), or `GET /health` expecting a 2xx for a backend with
//!   `check=http` (in HTTP/2 for an HTTP/2 backend: [`http_check_h2`]), or gRPC's own health
//!   protocol for an HTTP/2 backend with `check=grpc` ([`grpc_check`], chapter 17). `fall` failed probes in a row mark it down, `rise` good ones
//!   mark it up again.
//!   Thresholds keep one lost probe from flapping a backend in and out.
//!
//! A backend is eligible when neither source holds it out. A backend that passes `rise` probes
//! is also forgiven its passive cooldown: the prober saw it come back, there is no need to wait.
//!
//! Health only *filters*: the strategy still decides the order (see [`crate::strategy`]). And
//! every change of state is one log line, so an operator can read a backend's history from the
//! log alone.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Failover and health settings; `Options::failover = None` is the tutorial's behaviour (a
/// failed dial costs the client its connection, nothing is remembered).
#[derive(Clone, Debug)]
pub struct Failover {
    /// Consecutive failed connects that make passive health skip a backend.
    pub fail_after: u32,
    /// How long the first skip lasts; each further one doubles, up to `max_cooldown`.
    pub cooldown: Duration,
    pub max_cooldown: Duration,
    /// Active health checks, if any.
    pub checks: Option<Checks>,
}

pub const DEFAULT_FAIL_AFTER: u32 = 3;
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_COOLDOWN: Duration = Duration::from_secs(30);

impl Default for Failover {
    fn default() -> Self {
        Failover {
            fail_after: DEFAULT_FAIL_AFTER,
            cooldown: DEFAULT_COOLDOWN,
            max_cooldown: DEFAULT_MAX_COOLDOWN,
            checks: Some(Checks::default()),
        }
    }
}

/// Active health checks: HAProxy's `inter`, `rise` and `fall`, with its defaults.
#[derive(Clone, Debug)]
pub struct Checks {
    /// Time between probes of one backend; also the time a probe may take.
    pub interval: Duration,
    /// Good probes in a row that bring a backend back.
    pub rise: u32,
    /// Failed probes in a row that take a backend out.
    pub fall: u32,
}

pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;

impl Default for Checks {
    fn default() -> Self {
        Checks {
            interval: DEFAULT_CHECK_INTERVAL,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
        }
    }
}

/// The health of one backend.
///
/// What every connection reads (is it eligible?) is two atomics; the counters that change only
/// on failures and probes sit behind a mutex that the healthy path never takes.
#[derive(Debug, Default)]
pub struct Health {
    /// Passive: milliseconds after [`Clock`]'s start until which the backend is skipped;
    /// 0 when it is not.
    skip_until: AtomicU64,
    /// Active: the probes say it is down.
    probed_down: AtomicBool,
    /// Passive: connects that failed in a row.
    failures: AtomicU32,
    slow: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    /// Passive health has skipped this backend since its last successful connect.
    skipped: bool,
    /// The length of the next skip (0 until the first one: then `cooldown`).
    next_cooldown: Duration,
    probes_ok: u32,
    probes_failed: u32,
    /// When the backend last changed state, and why: what the status page shows.
    changed: Option<(SystemTime, Cause)>,
}

/// Why a backend last changed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Down: `fall` active health checks failed in a row.
    ChecksFailed,
    /// Down: `fail-after` clients' connects failed in a row (passive health).
    ConnectsFailed,
    /// Up: `rise` active health checks passed in a row.
    ChecksPassed,
    /// Up: a client's connect succeeded after a passive skip.
    ConnectSucceeded,
}

impl Cause {
    /// Its name in metrics' `cause` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::ChecksFailed => "health-checks-failed",
            Cause::ConnectsFailed => "connects-failed",
            Cause::ChecksPassed => "health-checks-passed",
            Cause::ConnectSucceeded => "connect-succeeded",
        }
    }
}

/// Milliseconds since the balancer started: what [`Health`] stores its deadlines in, so that
/// they fit an atomic.
#[derive(Clone, Copy, Debug)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    pub fn now(self) -> u64 {
        // 2^64 ms is 584 million years.
        self.0.elapsed().as_millis() as u64
    }
}

impl Health {
    /// May a client be sent here? `now` is called only if a passive skip is pending, so the
    /// healthy path reads no clock.
    pub fn is_up(&self, now: impl FnOnce() -> u64) -> bool {
        if self.probed_down.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.skip_until.load(Ordering::Relaxed);
        until == 0 || now() >= until
    }

    /// A client's connect succeeded. Returns the log-worthy news, if any.
    pub fn connected(&self) -> Option<String> {
        // The common case, a healthy backend, is one load and no write: the cache line with
        // the counter stays shared between cores.
        if self.failures.load(Ordering::Relaxed) == 0
            && self.skip_until.load(Ordering::Relaxed) == 0
        {
            return None;
        }
        self.failures.store(0, Ordering::Relaxed);
        let mut c = self.lock();
        self.skip_until.store(0, Ordering::Relaxed);
        c.next_cooldown = Duration::ZERO;
        let news = std::mem::take(&mut c.skipped);
        if news {
            c.changed = Some((SystemTime::now(), Cause::ConnectSucceeded));
        }
        news.then(|| "backend up: a connection succeeded".to_owned())
    }

    /// When the backend last changed state (since the balancer started), and why.
    pub fn last_change(&self) -> Option<(SystemTime, Cause)> {
        self.lock().changed
    }

    /// A client's connect failed with `error`. Returns the log line if this failure made
    /// passive health skip the backend.
    pub fn connect_failed(
        &self,
        error: &std::io::Error,
        settings: &Failover,
        clock: Clock,
    ) -> Option<String> {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures < settings.fail_after {
            return None;
        }
        let mut c = self.lock();
        let now = clock.now();
        // Several clients may fail on the same backend at once; the first one to get here
        // starts the skip, the others find it already running.
        if self.skip_until.load(Ordering::Relaxed) > now {
            return None;
        }
        let cooldown = if c.next_cooldown.is_zero() {
            settings.cooldown
        } else {
            c.next_cooldown
        };
        c.next_cooldown = (cooldown * 2).min(settings.max_cooldown);
        c.skipped = true;
        c.changed = Some((SystemTime::now(), Cause::ConnectsFailed));
        // Only probes that pass *after* this failure may cut the skip short.
        c.probes_ok = 0;
        self.skip_until.store(
            now + (cooldown.as_millis() as u64).max(1),
            Ordering::Relaxed,
        );
        Some(format!(
            "backend down: {failures} connects failed in a row (last: {error}); \
             skipping it for {cooldown:?}"
        ))
    }

    /// The result of one active probe. Returns the log line if the backend changed state.
    pub fn probed(&self, result: Result<(), String>, checks: &Checks) -> Option<String> {
        let mut c = self.lock();
        match result {
            Ok(()) => {
                c.probes_failed = 0;
                c.probes_ok = c.probes_ok.saturating_add(1);
                if c.probes_ok < checks.rise {
                    return None;
                }
                let was_down = self.probed_down.swap(false, Ordering::Relaxed);
                let was_skipped = std::mem::take(&mut c.skipped);
                if was_skipped {
                    self.failures.store(0, Ordering::Relaxed);
                    self.skip_until.store(0, Ordering::Relaxed);
                    c.next_cooldown = Duration::ZERO;
                }
                if was_down || was_skipped {
                    c.changed = Some((SystemTime::now(), Cause::ChecksPassed));
                }
                (was_down || was_skipped)
                    .then(|| format!("backend up: {} health checks passed in a row", c.probes_ok))
            }
            Err(e) => {
                c.probes_ok = 0;
                c.probes_failed = c.probes_failed.saturating_add(1);
                if c.probes_failed < checks.fall || self.probed_down.load(Ordering::Relaxed) {
                    return None;
                }
                self.probed_down.store(true, Ordering::Relaxed);
                c.changed = Some((SystemTime::now(), Cause::ChecksFailed));
                Some(format!(
                    "backend down: {} health checks failed in a row (last: {e})",
                    c.probes_failed
                ))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        // The counters are plain numbers; a panic elsewhere while holding the lock cannot
        // leave them in a state worse than slightly off.
        self.slow.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An HTTP/2 connection on `conn` for one probe: hyper's client, and its connection's task,
/// stopped when the guard is dropped (the probe's answer read, or given up on).
async fn h2_probe(
    conn: crate::conn::Conn,
) -> Result<
    (
        hyper::client::conn::http2::SendRequest<String>,
        crate::balancer::AbortOnDrop,
    ),
    String,
> {
    let (send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(conn),
    )
    .await
    .map_err(|e| format!("no HTTP/2: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((send, crate::balancer::AbortOnDrop(task)))
}

/// `check=http` on an HTTP/2 backend (`h2://`, `h2c://`): the same `GET /health`, answered
/// 2xx, as HTTP/1.1's (`Balancer::probe`), in HTTP/2 frames. A server that speaks only
/// HTTP/2 would read HTTP/1.1's request as a broken preface (RFC 9113 §3.4).
pub async fn http_check_h2(
    conn: crate::conn::Conn,
    authority: &str,
    tls: bool,
) -> Result<(), String> {
    let (mut send, _task) = h2_probe(conn).await?;
    let scheme = if tls { "https" } else { "http" };
    let request = hyper::Request::get(format!("{scheme}://{authority}/health"))
        .header("user-agent", "tcp-lb-health-check")
        .body(String::new())
        .map_err(|e| e.to_string())?;
    let response = send
        .send_request(request)
        .await
        .map_err(|e| format!("GET /health failed: {e}"))?;
    match response.status().is_success() {
        true => Ok(()),
        false => Err(format!(
            "GET /health answered `HTTP/2 {}`",
            response.status()
        )),
    }
}

/// `check=grpc` (chapter 17): gRPC's health protocol on `conn`, over HTTP/2. One call to
/// `grpc.health.v1.Health/Check` with an empty request (the whole server, not one service);
/// the backend is up when the answer is `SERVING` with `grpc-status: 0`. `authority` and `tls`
/// make the call's `:authority` and `:scheme`.
pub async fn grpc_check(conn: crate::conn::Conn, authority: &str, tls: bool) -> Result<(), String> {
    use hyper::body::Body;
    let (mut send, _task) = h2_probe(conn).await?;
    let scheme = if tls { "https" } else { "http" };
    let request = hyper::Request::post(format!(
        "{scheme}://{authority}/grpc.health.v1.Health/Check"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("user-agent", "lb-health-check")
    // One gRPC message: not compressed, length 0 (an empty HealthCheckRequest).
    .body(String::from("\0\0\0\0\0"))
    .map_err(|e| e.to_string())?;
    let response = send
        .send_request(request)
        .await
        .map_err(|e| format!("the health call failed: {e}"))?;
    if response.status() != hyper::StatusCode::OK {
        return Err(format!("the health call answered {}", response.status()));
    }
    let mut status = response.headers().get("grpc-status").cloned();
    let mut body = response.into_body();
    let mut message = Vec::new();
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame = frame.map_err(|e| format!("the health answer broke off: {e}"))?;
        match frame.into_data() {
            // One small message is all there is to read; a larger answer is not one.
            Ok(data) if message.len() + data.len() <= 1024 => message.extend_from_slice(&data),
            Ok(_) => return Err("the health answer is too long".to_owned()),
            Err(frame) => {
                if let Some(s) = frame.trailers_ref().and_then(|t| t.get("grpc-status")) {
                    status = Some(s.clone());
                }
            }
        }
    }
    match status.as_ref().map(|s| s.as_bytes()) {
        Some(b"0") => {}
        Some(other) => {
            return Err(format!("grpc-status {}", String::from_utf8_lossy(other)));
        }
        None => return Err("the health answer has no grpc-status".to_owned()),
    }
    match serving_status(&message) {
        Some(1) => Ok(()),
        Some(2) => Err("NOT_SERVING".to_owned()),
        Some(n) => Err(format!("health status {n}, not SERVING")),
        None => Err("the health answer is not a HealthCheckResponse".to_owned()),
    }
}

/// The `status` of a HealthCheckResponse in one gRPC message (its 5-byte prefix, then the
/// protobuf: field 1, a varint; other fields skipped): `SERVING` is 1. An absent field is its
/// default, 0 (`UNKNOWN`). `None` for anything that is not such a message.
fn serving_status(message: &[u8]) -> Option<u64> {
    let (&[compressed, a, b, c, d], rest) = message.split_first_chunk::<5>()?;
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if compressed != 0 || rest.len() != len {
        return None;
    }
    fn varint(bytes: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = bytes.split_first()?;
            *bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut fields = rest;
    let mut status = 0;
    while !fields.is_empty() {
        let key = varint(&mut fields)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut fields)?,
            (_, 0) => {
                varint(&mut fields)?;
            }
            (_, 1) => fields = fields.get(8..)?,
            (_, 2) => {
                let len = usize::try_from(varint(&mut fields)?).ok()?;
                fields = fields.get(len..)?;
            }
            (_, 5) => fields = fields.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gRPC's HealthCheckResponse as `check=grpc` reads it: field 1 is the status (SERVING is
    /// 1), absent means UNKNOWN, other fields are skipped; anything else is not an answer.
    #[test]
    fn health_answers_are_read_as_grpc_writes_them() {
        let message = |payload: &[u8]| {
            let mut m = vec![0, 0, 0, 0, payload.len() as u8];
            m.extend_from_slice(payload);
            m
        };
        assert_eq!(serving_status(&message(&[0x08, 0x01])), Some(1));
        assert_eq!(serving_status(&message(&[0x08, 0x02])), Some(2));
        assert_eq!(serving_status(&message(&[])), Some(0));
        // A field 2 (length-delimited) and a field 3 (fixed 32-bit) before the status.
        let others = [0x12, 0x02, b'h', b'i', 0x1d, 1, 2, 3, 4, 0x08, 0x01];
        assert_eq!(serving_status(&message(&others)), Some(1));
        let mut compressed = message(&[0x08, 0x01]);
        compressed[0] = 1;
        for bad in [
            compressed,
            vec![0, 0, 0, 0, 3, 0x08, 0x01],
            vec![0, 0, 0],
            message(&[0x08]),
            message(&[0x12, 0x09, b'x']),
            message(&[0x0f]),
        ] {
            assert_eq!(serving_status(&bad), None, "{bad:?}");
        }
    }

    fn refused() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
    }

    #[test]
    fn passive_skips_after_k_failures_and_backs_off() {
        let settings = Failover {
            fail_after: 3,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(4),
            checks: None,
        };
        let clock = Clock::start();
        let h = Health::default();
        assert!(h.connect_failed(&refused(), &settings, clock).is_none());
        assert!(h.connect_failed(&refused(), &settings, clock).is_none());
        let line = h.connect_failed(&refused(), &settings, clock).unwrap();
        assert!(
            line.contains("3 connects failed") && line.contains("1s"),
            "{line}"
        );
        assert!(!h.is_up(|| clock.now()));
        // The cooldown is over: offered again; another failure skips it for twice as long,
        // then four times, then no longer grows.
        for expect in ["2s", "4s", "4s"] {
            assert!(h.is_up(|| clock.now() + 60_000));
            h.skip_until.store(0, Ordering::Relaxed);
            let line = h.connect_failed(&refused(), &settings, clock).unwrap();
            assert!(line.contains(expect), "{line}");
        }
        let line = h.connected().unwrap();
        assert!(line.contains("up"), "{line}");
        assert!(h.is_up(|| unreachable!("a healthy backend reads no clock")));
        assert!(h.connected().is_none());
    }

    #[test]
    fn probes_use_rise_and_fall_and_forgive_a_passive_skip() {
        let checks = Checks {
            interval: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        };
        let h = Health::default();
        let fail = || Err("refused".to_owned());
        assert!(h.probed(fail(), &checks).is_none());
        assert!(h.probed(fail(), &checks).is_none());
        assert!(
            h.probed(Ok(()), &checks).is_none(),
            "a good probe resets the count"
        );
        assert!(h.is_up(|| 0));
        for _ in 0..2 {
            assert!(h.probed(fail(), &checks).is_none());
        }
        assert!(
            h.probed(fail(), &checks)
                .unwrap()
                .contains("3 health checks failed")
        );
        assert!(!h.is_up(|| 0));
        assert_eq!(h.last_change().map(|c| c.1), Some(Cause::ChecksFailed));
        assert!(h.probed(fail(), &checks).is_none(), "one line per change");
        assert!(h.probed(Ok(()), &checks).is_none());
        assert!(h.probed(Ok(()), &checks).unwrap().contains("up"));
        assert!(h.is_up(|| 0));
        assert_eq!(h.last_change().map(|c| c.1), Some(Cause::ChecksPassed));

        let settings = Failover {
            fail_after: 1,
            ..Failover::default()
        };
        let clock = Clock::start();
        h.connect_failed(&refused(), &settings, clock).unwrap();
        assert!(!h.is_up(|| clock.now()));
        assert_eq!(h.last_change().map(|c| c.1), Some(Cause::ConnectsFailed));
        assert!(
            h.probed(Ok(()), &checks).is_none(),
            "rise counts from the failure on"
        );
        assert!(!h.is_up(|| clock.now()));
        assert!(h.probed(Ok(()), &checks).is_some());
        assert!(h.is_up(|| clock.now()));
    }
}
