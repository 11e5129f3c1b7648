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

/// One sample read back from Prometheus' text format: what `ssl-farm`'s dashboard (chapter
/// 13) learns from each member's `/metrics`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if it has one.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of an exposition ([`Exposition`]'s output, or any in the text format).
/// Comments are skipped, and so is a line that does not parse: a scrape of a newer process
/// with a sample this reader does not know must still show the rest.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let Some((name, rest)) = series.split_once('{') else {
        return Some(Sample {
            name: series.to_owned(),
            labels: Vec::new(),
            value,
        });
    };
    let mut labels = Vec::new();
    let mut rest = rest.strip_suffix('}')?;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut chars = after.char_indices();
        let mut label = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => label.push('\n'),
                    c => label.push(c),
                },
                (_, c) => label.push(c),
            }
        };
        labels.push((key.to_owned(), label));
        rest = after[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&after[end + 1..]);
    }
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
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
    fn what_is_written_reads_back() {
        let mut e = Exposition::default();
        e.metric("lb_up", "gauge", "Whether it is up.").sample(
            "lb_up",
            &[("backend", "a\"b\\c,d=\"\n"), ("x", "")],
            1,
        );
        e.sample("lb_total", &[], 12.5);
        let text = e.finish() + "lb_bucket{le=\"+Inf\"} +Inf\nnot a sample\nlb_half{a=\"b} 1\n";
        let samples = parse(&text);
        assert_eq!(samples.len(), 3, "{samples:?}");
        assert_eq!(samples[0].label("backend"), Some("a\"b\\c,d=\"\n"));
        assert_eq!(samples[0].label("x"), Some(""));
        assert_eq!(samples[0].value, 1.0);
        assert_eq!(
            (samples[1].name.as_str(), samples[1].value),
            ("lb_total", 12.5)
        );
        assert_eq!(samples[2].label("le"), Some("+Inf"));
        assert!(samples[2].value.is_infinite());
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
