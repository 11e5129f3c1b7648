//! The numbers `http-lb` adds to chapter 10's (chapter 12): per backend, responses by status
//! class and a latency histogram; affinity outcomes; the answers the balancer gave itself.
//!
//! As in chapter 10, a counter is one relaxed `fetch_add` where the event happens; nothing is
//! formatted until `/metrics` is scraped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::StatusCode;

use super::pool::Pool;
use crate::metrics::{Exposition, get, inc};

/// What became of a request's affinity cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AffinityOutcome {
    /// Affinity is off.
    Off,
    /// The cookie named a backend that was up: the request went there.
    Hit,
    /// No valid cookie (none, forged, stale, garbage): a backend was chosen and the cookie set.
    Miss,
    /// The cookie named a backend that is down or gone: another was chosen, the cookie re-set.
    Redispatch,
}

impl AffinityOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AffinityOutcome::Off => "-",
            AffinityOutcome::Hit => "hit",
            AffinityOutcome::Miss => "miss",
            AffinityOutcome::Redispatch => "redispatch",
        }
    }
}

/// The statuses the balancer answers itself, in the order they are reported.
const LOCAL: [StatusCode; 7] = [
    StatusCode::BAD_REQUEST,
    StatusCode::REQUEST_TIMEOUT,
    StatusCode::PAYLOAD_TOO_LARGE,
    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
];

/// Upper bounds of the latency histogram's buckets, in seconds (Prometheus' defaults).
pub const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counters of the whole listener.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// hit, miss, redispatch.
    affinity: [AtomicU64; 3],
    /// By [`LOCAL`] index.
    local: [AtomicU64; LOCAL.len()],
    /// Requests by path and protocol: own HTTP/1, hyper's HTTP/1, hyper's HTTP/2, own HTTP/2.
    paths: [AtomicU64; 4],
    /// What `--compress` took in and sent out (chapter 16); shared with every compressing
    /// body.
    pub compression: Arc<Compression>,
}

/// Bytes through `--compress`: the backends' bytes it took in, and what it sent out.
#[derive(Debug, Default)]
pub struct Compression {
    taken: AtomicU64,
    sent: AtomicU64,
}

impl Compression {
    pub fn taken(&self, n: usize) {
        self.taken.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn out(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl HttpCounters {
    pub fn affinity(&self, outcome: AffinityOutcome) {
        let i = match outcome {
            AffinityOutcome::Off => return,
            AffinityOutcome::Hit => 0,
            AffinityOutcome::Miss => 1,
            AffinityOutcome::Redispatch => 2,
        };
        inc(&self.affinity[i]);
    }

    /// One request read by the balancer's own HTTP/1 path (`own`) or by hyper.
    /// A request read by an own codec (`own`) or hyper's, over HTTP/2 (`h2`, chapter 17) or
    /// HTTP/1.
    pub fn path(&self, own: bool, h2: bool) {
        // A request read is work on this thread: HTTP/2 frames held for a lull wait only so
        // much of it (chapter 17).
        crate::http::h2::held::busy();
        let i = match (own, h2) {
            (true, false) => 0,
            (false, false) => 1,
            (false, true) => 2,
            (true, true) => 3,
        };
        inc(&self.paths[i]);
    }

    pub fn local(&self, status: StatusCode) {
        if let Some(i) = LOCAL.iter().position(|&s| s == status) {
            inc(&self.local[i]);
        }
    }

    /// The Prometheus text of these counters and of each `(name, counters, pool)` backend.
    pub fn render(
        &self,
        backends: &[(&str, &BackendHttpCounters, &Pool)],
        routes: &[super::route::Routed],
    ) -> String {
        let mut e = Exposition::default();
        let name = "httplb_route_requests_total";
        e.metric(
            name,
            "counter",
            "Requests each route took (first match wins), since the config that made it was \
             loaded.",
        );
        for r in routes {
            let label = r.route.label();
            e.sample(
                name,
                &[("route", &label), ("kind", r.route.kind())],
                get(&r.hits),
            );
        }
        let name = "httplb_compression_bytes_total";
        e.metric(
            name,
            "counter",
            "Bytes through --compress: taken in from the backends, and sent out compressed.",
        );
        e.sample(name, &[("direction", "in")], get(&self.compression.taken));
        e.sample(name, &[("direction", "out")], get(&self.compression.sent));
        let name = "httplb_affinity_total";
        e.metric(
            name,
            "counter",
            "Requests by what their affinity cookie did: hit, miss (none or invalid), redispatch.",
        );
        for (outcome, n) in ["hit", "miss", "redispatch"].iter().zip(&self.affinity) {
            e.sample(name, &[("outcome", outcome)], get(n));
        }
        let name = "httplb_requests_total";
        e.metric(
            name,
            "counter",
            "Requests by the code that read them (the balancer's own HTTP/1 path, or hyper) \
             and their protocol (http1 or h2).",
        );
        let labels = [
            ("own", "http1"),
            ("hyper", "http1"),
            ("hyper", "h2"),
            ("own", "h2"),
        ];
        for ((path, protocol), n) in labels.iter().zip(&self.paths) {
            e.sample(name, &[("path", path), ("protocol", protocol)], get(n));
        }
        let name = "httplb_local_responses_total";
        e.metric(
            name,
            "counter",
            "Responses the balancer gave itself, by status (no backend answered them).",
        );
        for (status, n) in LOCAL.iter().zip(&self.local) {
            e.sample(name, &[("status", status.as_str())], get(n));
        }
        let name = "httplb_backend_responses_total";
        e.metric(
            name,
            "counter",
            "Responses from each backend, by status class.",
        );
        for (backend, c, _) in backends {
            for (class, n) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().zip(&c.classes) {
                e.sample(name, &[("backend", backend), ("class", class)], get(n));
            }
        }
        let name = "httplb_backend_response_seconds";
        e.metric(
            name,
            "histogram",
            "Time from a request's arrival to its backend's response head.",
        );
        for (backend, c, _) in backends {
            let bucket = format!("{name}_bucket");
            let mut cumulative = 0;
            for (le, n) in BUCKETS.iter().zip(&c.buckets) {
                cumulative += get(n);
                e.sample(
                    &bucket,
                    &[("backend", backend), ("le", &le.to_string())],
                    cumulative,
                );
            }
            // Every response counts in exactly one status class, so their sum is the count:
            // one counter fewer per request. Read a moment after the buckets, it can only be
            // larger, unless a response came between its bucket and its class: the larger of
            // the two keeps the histogram cumulative.
            let count = c.classes.iter().map(get).sum::<u64>().max(cumulative);
            e.sample(&bucket, &[("backend", backend), ("le", "+Inf")], count);
            let sum = get(&c.sum_micros) as f64 / 1e6;
            e.sample(&format!("{name}_sum"), &[("backend", backend)], sum);
            e.sample(&format!("{name}_count"), &[("backend", backend)], count);
        }
        let name = "httplb_backend_pool_idle";
        e.metric(
            name,
            "gauge",
            "Idle keep-alive connections pooled for each backend.",
        );
        for (backend, _, pool) in backends {
            e.sample(name, &[("backend", backend)], pool.idle());
        }
        let name = "httplb_backend_response_bytes_total";
        e.metric(
            name,
            "counter",
            "Response body bytes sent to clients from each backend.",
        );
        for (backend, c, _) in backends {
            e.sample(name, &[("backend", backend)], get(&c.bytes));
        }
        let name = "httplb_backend_assignments_total";
        e.metric(
            name,
            "counter",
            "Clients sent to each backend in assignment mode (--mode assign).",
        );
        for (backend, c, _) in backends {
            e.sample(name, &[("backend", backend)], get(&c.assigned));
        }
        e.finish()
    }
}

/// Counters of one backend, kept across reloads while the backend stays.
#[derive(Debug, Default)]
pub struct BackendHttpCounters {
    classes: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
    bytes: AtomicU64,
    /// Clients sent to it in assignment mode (chapter 14).
    assigned: AtomicU64,
}

impl BackendHttpCounters {
    /// One response head from the backend, `latency` after its request arrived.
    pub fn observe(&self, status: StatusCode, latency: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        inc(&self.classes[class]);
        let secs = latency.as_secs_f64();
        if let Some(b) = BUCKETS.iter().position(|&le| secs <= le) {
            inc(&self.buckets[b]);
        }
        self.sum_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Body bytes of one response, once sent.
    pub fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// One client assigned to this backend (`--mode assign`).
    pub fn assigned(&self) {
        inc(&self.assigned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_counts_every_response_once() {
        let c = BackendHttpCounters::default();
        c.observe(StatusCode::OK, Duration::from_micros(300));
        c.observe(StatusCode::NOT_FOUND, Duration::from_millis(20));
        // Past the last bucket: only `+Inf` and the count hold it.
        c.observe(StatusCode::BAD_GATEWAY, Duration::from_secs(3600));
        let pool = Pool::new(1, Duration::from_secs(1));
        let text = HttpCounters::default().render(&[("b", &c, &pool)], &[]);
        let value = |sample: &str| -> u64 {
            let line = text.lines().find(|l| l.starts_with(sample)).unwrap();
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let name = "httplb_backend_response_seconds";
        assert_eq!(
            value(&format!("{name}_count{{backend=\"b\"}}")),
            3,
            "{text}"
        );
        assert_eq!(
            value(&format!("{name}_bucket{{backend=\"b\",le=\"+Inf\"}}")),
            3,
            "{text}"
        );
    }
}
