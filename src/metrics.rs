//! Numbers to watch (chapter 10): counters kept with relaxed atomics on the connection path, and
//! their rendering in Prometheus' text format for the admin listener's `/metrics`.
//!
//! A counter here is one `fetch_add` where something happens (a connection accepted, a chunk of
//! bytes forwarded, a dial that failed): no lock, no allocation, nothing formatted until someone
//! scrapes. Per-backend counters live with the backend's state and survive a reload for a
//! backend that stays, so `rate()` in Prometheus sees no reset.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::limits::Refusal;

/// Counters of the listener side, one set per process.
#[derive(Debug, Default)]
pub struct Counters {
    /// Clients accepted by the listener (refused ones included).
    pub accepted: AtomicU64,
    /// Clients turned away, by [`Refusal`] (index in [`Refusal::ALL`]).
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// Client TLS handshakes that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
    /// Client TLS handshakes that completed in full (a key exchange and a signature).
    pub tls_full: AtomicU64,
    /// Client TLS handshakes that resumed a session from a ticket (chapter 13: the number
    /// that shows offloaders sharing their ticket keys).
    pub tls_resumed: AtomicU64,
    /// `accept-proxy` clients whose PROXY header was missing or malformed.
    pub proxy_header_errors: AtomicU64,
    /// Clients closed because no backend could be reached.
    pub no_backend: AtomicU64,
    /// Connections a `retry-unanswered` backend closed before answering, given to another.
    pub unanswered_retries: AtomicU64,
    /// Connection pairs closed because both directions were quiet for `idle-timeout`.
    pub idle_timeouts: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

impl Counters {
    pub fn refused(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|&r| r == why).unwrap_or(0);
        inc(&self.refused[i]);
    }

    /// Counts a completed client handshake as full or resumed.
    pub fn tls_handshake<IO>(&self, tls: &tokio_rustls::server::TlsStream<IO>) {
        match tls.get_ref().1.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => inc(&self.tls_resumed),
            _ => inc(&self.tls_full),
        }
    }
}

/// Counters of one backend.
#[derive(Debug, Default)]
pub struct BackendCounters {
    /// Client connections that reached this backend.
    pub connections: AtomicU64,
    /// Bytes from clients to this backend.
    pub bytes_up: AtomicU64,
    /// Bytes from this backend to clients.
    pub bytes_down: AtomicU64,
    /// Dials that failed or timed out (TCP or TLS), from clients and probes.
    pub connect_failures: AtomicU64,
    /// Of those, TLS handshakes with the backend that failed.
    pub tls_handshake_failures: AtomicU64,
    /// Active health probes sent, whatever their outcome.
    pub probes: AtomicU64,
}

pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Builds a Prometheus text exposition (format 0.0.4): each metric's `# HELP` and `# TYPE`
/// once, then its samples.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

/// The content type Prometheus expects for [`Exposition`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Exposition {
    /// Starts a metric: `kind` is `counter` or `gauge`.
    pub fn metric(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// One sample of the metric last started, with `labels` as `(name, value)` pairs.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    pub fn finish(self) -> String {
        self.text
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_prometheus_text() {
        let mut e = Exposition::default();
        e.metric("lb_up", "gauge", "Whether it is up.").sample(
            "lb_up",
            &[("backend", "a\"b\\c")],
            1,
        );
        e.sample("lb_up", &[], 0);
        assert_eq!(
            e.finish(),
            "# HELP lb_up Whether it is up.\n# TYPE lb_up gauge\n\
             lb_up{backend=\"a\\\"b\\\\c\"} 1\nlb_up 0\n"
        );
    }

    #[test]
    fn refusals_count_under_their_reason() {
        let c = Counters::default();
        c.refused(Refusal::PerClient);
        c.refused(Refusal::PerClient);
        let i = Refusal::ALL
            .iter()
            .position(|&r| r == Refusal::PerClient)
            .unwrap();
        assert_eq!(get(&c.refused[i]), 2);
    }
}
