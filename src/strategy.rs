//! Choosing a backend for each new connection.
//!
//! A strategy is a small object behind one trait, as in pingora's load-balancing crate: the
//! balancer asks it for an index and knows nothing of how it was chosen. Strategies keep their
//! state in atomics, never behind a lock: `pick` runs once per connection on every worker thread
//! at once, and a mutex there would make all of them queue on one cache line *and* on the OS.
//!
//! # The Go tutorial's "RoundRobin" is not round robin
//!
//! The Go code keeps a map `server → number of calls`, picks the server with the fewest calls,
//! and increments it. That is **least cumulative calls** ([`LeastCalled`]). With a fixed set of
//! servers that never fail it visits each server once per round, so it looks like round robin,
//! but it differs whenever the counts are not all equal:
//!
//! * a server added later (or back from an outage, chapter 8) starts at 0 calls and receives
//!   *every* new connection until it has caught up with the others: a thundering herd on the
//!   one server that just came up;
//! * it scans every server on every pick (O(n)) where round robin is one atomic increment;
//! * ties are broken by Go's map iteration order, which is deliberately random, so the order
//!   within a round changes from round to round.
//!
//! [`RoundRobin`] keeps one counter and takes `counter mod n`: strictly `0, 1, 2, 0, 1, 2, …`
//! whatever happened before.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rand::RngExt as _;

/// Picks a backend index in `0..len` for the next connection from `client`.
///
/// `client` is unused by the strategies here; it is in the signature so that strategies that
/// hash the client's address (chapter 9) fit the same trait.
pub trait Strategy: Send + Sync + fmt::Debug {
    fn pick(&self, client: SocketAddr) -> usize;
}

/// True round robin: one shared counter, `fetch_add` and modulo.
///
/// `Relaxed` is enough: we need every caller to get a distinct ticket, which `fetch_add`
/// guarantees at any ordering; no other memory is published through this counter.
#[derive(Debug)]
pub struct RoundRobin {
    next: AtomicUsize,
    len: usize,
}

impl RoundRobin {
    /// `len` is the number of backends, at least 1 (the balancer refuses an empty list).
    pub fn new(len: usize) -> Self {
        assert!(len > 0, "a strategy needs at least one backend");
        RoundRobin {
            next: AtomicUsize::new(0),
            len,
        }
    }
}

impl Strategy for RoundRobin {
    fn pick(&self, _client: SocketAddr) -> usize {
        // The counter wraps at 2^64; the one uneven step that causes is once per 584 years
        // at a billion connections a second.
        self.next.fetch_add(1, Ordering::Relaxed) % self.len
    }
}

/// Uniform random choice from a per-thread generator (no shared state at all).
#[derive(Debug)]
pub struct Random {
    len: usize,
}

impl Random {
    pub fn new(len: usize) -> Self {
        assert!(len > 0, "a strategy needs at least one backend");
        Random { len }
    }
}

impl Strategy for Random {
    fn pick(&self, _client: SocketAddr) -> usize {
        rand::rng().random_range(0..self.len)
    }
}

/// The Go tutorial's algorithm, kept to compare: the backend with the fewest picks so far
/// (the first one on a tie), whose count is then incremented.
///
/// Two concurrent picks may read the same minimum and both choose it; the counts stay exact
/// and the imbalance is at most one per concurrent pick, which is all this algorithm promises.
#[derive(Debug)]
pub struct LeastCalled {
    calls: Box<[AtomicU64]>,
}

impl LeastCalled {
    pub fn new(len: usize) -> Self {
        Self::with_history(&vec![0; len])
    }

    /// Starts from existing call counts: models a backend added to a running balancer
    /// (`[100, 100, 0]`), which is where this algorithm stops behaving like round robin.
    pub fn with_history(calls: &[u64]) -> Self {
        assert!(!calls.is_empty(), "a strategy needs at least one backend");
        LeastCalled {
            calls: calls.iter().map(|&c| AtomicU64::new(c)).collect(),
        }
    }
}

impl Strategy for LeastCalled {
    fn pick(&self, _client: SocketAddr) -> usize {
        let mut best = 0;
        let mut best_calls = u64::MAX;
        for (i, calls) in self.calls.iter().enumerate() {
            let c = calls.load(Ordering::Relaxed);
            if c < best_calls {
                best = i;
                best_calls = c;
            }
        }
        self.calls[best].fetch_add(1, Ordering::Relaxed);
        best
    }
}

/// The strategies a user can name with `--strategy` or `strategy = "…"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    /// Each backend in turn.
    RoundRobin,
    /// A backend chosen uniformly at random.
    Random,
    /// The Go tutorial's "RoundRobin": the backend picked the fewest times so far.
    LeastCalled,
}

impl StrategyKind {
    pub const ALL: [StrategyKind; 3] = [
        StrategyKind::RoundRobin,
        StrategyKind::Random,
        StrategyKind::LeastCalled,
    ];

    /// The strategy for `len` backends (at least 1).
    pub fn build(self, len: usize) -> Box<dyn Strategy> {
        match self {
            StrategyKind::RoundRobin => Box::new(RoundRobin::new(len)),
            StrategyKind::Random => Box::new(Random::new(len)),
            StrategyKind::LeastCalled => Box::new(LeastCalled::new(len)),
        }
    }

    /// The name as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round-robin",
            StrategyKind::Random => "random",
            StrategyKind::LeastCalled => "least-called",
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

    fn picks(s: &dyn Strategy, n: usize) -> Vec<usize> {
        (0..n).map(|_| s.pick(CLIENT)).collect()
    }

    #[test]
    fn round_robin_rotates_in_order() {
        assert_eq!(picks(&RoundRobin::new(3), 7), [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(picks(&RoundRobin::new(1), 3), [0, 0, 0]);
    }

    #[test]
    fn least_called_matches_round_robin_only_from_equal_counts() {
        assert_eq!(picks(&LeastCalled::new(3), 6), [0, 1, 2, 0, 1, 2]);
        // A backend that joins a running balancer gets every connection until it catches up.
        let joined = LeastCalled::with_history(&[100, 100, 0]);
        assert!(picks(&joined, 100).iter().all(|&i| i == 2));
        assert_eq!(picks(&joined, 3), [0, 1, 2]);
    }

    #[test]
    fn random_stays_in_range_and_reaches_every_backend() {
        let r = Random::new(5);
        let mut seen = [0u32; 5];
        for i in picks(&r, 5000) {
            seen[i] += 1;
        }
        assert!(seen.iter().all(|&n| n > 700), "{seen:?}");
    }

    #[test]
    fn every_kind_survives_a_single_backend() {
        for kind in StrategyKind::ALL {
            assert_eq!(picks(&*kind.build(1), 5), [0; 5], "{kind}");
        }
    }
}
