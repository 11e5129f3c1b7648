//! Choosing a backend for each new connection.
//!
//! A strategy is a small object behind one trait, as in pingora's load-balancing crate: the
//! balancer asks it for an index and knows nothing of how it was chosen. The balancer, in turn,
//! tells the strategy only two things about the backends at the moment of the pick (see
//! [`Candidates`]): which ones it may choose (chapter 8: up, and not already tried for this
//! client), and how many connections each one holds right now (chapter 9). Health is kept apart
//! from selection: the strategy proposes, health filters.
//!
//! Strategies keep their state in atomics wherever they can: `pick` runs once per connection on
//! every worker thread at once, and a mutex there makes all of them queue on one cache line
//! *and* on the OS. Smooth weighted round robin is the exception: its state is one number per
//! backend that every pick rewrites, so it takes a short lock (as nginx does).
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
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rand::RngExt as _;

/// The largest `weight=` a backend may have. It bounds the consistent-hash ring (points per
/// backend grow with the weight) and matches HAProxy's limit.
pub const MAX_WEIGHT: u32 = 256;

/// What the balancer knows about backend `i` when a strategy picks.
pub trait Candidates {
    /// May backend `i` be chosen: it is up, and this client has not already failed on it.
    fn eligible(&self, i: usize) -> bool;
    /// Connections to backend `i` open right now (including ones still being dialled).
    fn active(&self, i: usize) -> usize;
}

/// Every backend eligible, none loaded: the view of a balancer that has just started, and what
/// benchmarks of the bare pick use.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllIdle;

impl Candidates for AllIdle {
    fn eligible(&self, _i: usize) -> bool {
        true
    }
    fn active(&self, _i: usize) -> usize {
        0
    }
}

/// Chooses the backend of the next connection from `client`, or `None` when no backend is
/// eligible.
///
/// `client` is only used by [`IpHash`]; the others ignore it. A strategy never returns an index
/// that `candidates` says is not eligible, so the balancer's failover can ask again after a
/// failed dial (with that backend now ineligible) and get the strategy's next choice.
pub trait Strategy: Send + Sync + fmt::Debug {
    fn pick(&self, client: IpAddr, candidates: &dyn Candidates) -> Option<usize>;
}

/// The strategy of a balancer with no backend yet (servers that will register themselves,
/// chapter 14): it never picks.
#[derive(Debug)]
pub struct Nobody;

impl Strategy for Nobody {
    fn pick(&self, _: IpAddr, _: &dyn Candidates) -> Option<usize> {
        None
    }
}

/// A backend as a strategy sees it: a stable key (its address as typed, which is what
/// consistent hashing hashes, so that the mapping survives reordering the list) and a weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub key: String,
    pub weight: u32,
}

impl Member {
    /// `n` members of weight 1 named `backend-0`, `backend-1`, …: for tests and benchmarks.
    pub fn uniform(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                key: format!("backend-{i}"),
                weight: 1,
            })
            .collect()
    }
}

/// `start, start+1, …, len-1, 0, …, start-1`: every index once, beginning at `start`. Two
/// ranges rather than `(start + k) % len`, whose division per step costs more than the rest of
/// a scan's step.
fn rotated(start: usize, len: usize) -> impl Iterator<Item = usize> {
    (start..len).chain(0..start)
}

/// Compares loads `(connections, weight)` per unit of weight, by cross-multiplying
/// (`a/wa < b/wb` ⇔ `a·wb < b·wa`), as nginx does, to stay in integers.
fn cmp_load(a: (usize, u32), b: (usize, u32)) -> std::cmp::Ordering {
    ((a.0 as u64) * u64::from(b.1)).cmp(&((b.0 as u64) * u64::from(a.1)))
}

/// The eligible backend chosen by `pick(k)`, where k is how many are eligible: how round robin
/// and random hand out a down backend's turns evenly among the others. Two scans and no
/// allocation, on a path that runs only while some backend is down.
fn nth_eligible(
    len: usize,
    c: &dyn Candidates,
    pick: impl FnOnce(usize) -> usize,
) -> Option<usize> {
    let eligible = (0..len).filter(|&i| c.eligible(i)).count();
    if eligible == 0 {
        return None;
    }
    (0..len).filter(|&i| c.eligible(i)).nth(pick(eligible))
}

/// True round robin: one shared counter, `fetch_add` and modulo.
///
/// `Relaxed` is enough: we need every caller to get a distinct ticket, which `fetch_add`
/// guarantees at any ordering; no other memory is published through this counter.
///
/// When the ticket lands on a backend that is not eligible, the turn goes to the
/// `ticket mod k`-th of the k eligible ones. Handing it to the next backend in the list instead
/// would double that neighbour's share for as long as the other one is down.
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
    fn pick(&self, _client: IpAddr, c: &dyn Candidates) -> Option<usize> {
        // The counter wraps at 2^64; the one uneven step that causes is once per 584 years
        // at a billion connections a second.
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let first = ticket % self.len;
        if c.eligible(first) {
            return Some(first);
        }
        nth_eligible(self.len, c, |k| ticket % k)
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
    fn pick(&self, _client: IpAddr, c: &dyn Candidates) -> Option<usize> {
        let mut rng = rand::rng();
        let first = rng.random_range(0..self.len);
        if c.eligible(first) {
            return Some(first);
        }
        // Draw again among the eligible ones only. Taking "the next one after `first`" instead
        // would hand the down backend's share to its neighbour.
        nth_eligible(self.len, c, |k| rng.random_range(0..k))
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
    fn pick(&self, _client: IpAddr, c: &dyn Candidates) -> Option<usize> {
        let mut best = None;
        let mut best_calls = u64::MAX;
        for (i, calls) in self.calls.iter().enumerate() {
            let n = calls.load(Ordering::Relaxed);
            if n < best_calls && c.eligible(i) {
                best = Some(i);
                best_calls = n;
            }
        }
        let best = best?;
        self.calls[best].fetch_add(1, Ordering::Relaxed);
        Some(best)
    }
}

/// Least connections (chapter 9): the eligible backend with the fewest open connections per
/// unit of weight.
///
/// Unlike [`LeastCalled`] it counts what is open *now*, not what was ever sent, so a backend
/// that answers slowly (and so holds its connections longer) gets fewer new ones, and a
/// backend back from an outage gets only its share, not a flood. Ties are broken by starting
/// the scan at a rotating offset: with every backend idle, it behaves as round robin instead
/// of sending everything to the first one.
#[derive(Debug)]
pub struct LeastConnections {
    weights: Box<[u32]>,
    next: AtomicUsize,
}

impl LeastConnections {
    pub fn new(members: &[Member]) -> Self {
        assert!(!members.is_empty(), "a strategy needs at least one backend");
        LeastConnections {
            weights: members.iter().map(|m| m.weight.max(1)).collect(),
            next: AtomicUsize::new(0),
        }
    }
}

impl Strategy for LeastConnections {
    fn pick(&self, _client: IpAddr, c: &dyn Candidates) -> Option<usize> {
        let len = self.weights.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % len;
        let mut best: Option<(usize, (usize, u32))> = None;
        for i in rotated(start, len) {
            if !c.eligible(i) {
                continue;
            }
            let load = (c.active(i), self.weights[i]);
            if best.is_none_or(|(_, b)| cmp_load(load, b).is_lt()) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Power of two choices (chapter 9): draw two different backends at random, take the less
/// loaded (connections per unit of weight).
///
/// Least connections reads every backend's counter on every pick (O(n), and each of those
/// cache lines is being written by other cores). Two random probes read two counters, yet
/// avoiding the worse of two is enough to keep a slow backend from piling up connections: the
/// load spread is exponentially better than one random choice (Mitzenmacher, 2001). It also
/// avoids the herd that exact least-connections causes when many balancers share backends and
/// all see the same "least loaded" one.
#[derive(Debug)]
pub struct PowerOfTwo {
    weights: Box<[u32]>,
}

impl PowerOfTwo {
    pub fn new(members: &[Member]) -> Self {
        assert!(!members.is_empty(), "a strategy needs at least one backend");
        PowerOfTwo {
            weights: members.iter().map(|m| m.weight.max(1)).collect(),
        }
    }
}

impl Strategy for PowerOfTwo {
    fn pick(&self, _client: IpAddr, c: &dyn Candidates) -> Option<usize> {
        let len = self.weights.len();
        let load = |i: usize| (c.active(i), self.weights[i]);
        let mut rng = rand::rng();
        let a = rng.random_range(0..len);
        // A second index different from the first: draw from the other len-1 and skip `a`.
        let b = match len {
            1 => a,
            _ => (a + 1 + rng.random_range(0..len - 1)) % len,
        };
        match (c.eligible(a), c.eligible(b)) {
            (true, true) => Some(if cmp_load(load(b), load(a)).is_lt() {
                b
            } else {
                a
            }),
            (true, false) => Some(a),
            (false, true) => Some(b),
            // Both probes hit backends that are down: fall back to the least loaded of all the
            // eligible ones (rare, and the only O(n) path).
            (false, false) => (0..len)
                .filter(|&i| c.eligible(i))
                .min_by(|&x, &y| cmp_load(load(x), load(y))),
        }
    }
}

/// Smooth weighted round robin (chapter 9), the algorithm of nginx's `upstream`.
///
/// Weights 5, 1, 1 could be served `a a a a a b c`, which sends bursts of five to `a`. nginx's
/// smooth variant interleaves them: `a a b a c a a`. Each pick adds every eligible backend's
/// weight to its `current` score, takes the highest score, and subtracts the total weight from
/// the winner. Over any window of Σweight picks each backend is chosen exactly `weight` times,
/// and a backend that is down simply does not take part.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    weights: Box<[i64]>,
    current: Mutex<Box<[i64]>>,
}

impl WeightedRoundRobin {
    pub fn new(members: &[Member]) -> Self {
        assert!(!members.is_empty(), "a strategy needs at least one backend");
        WeightedRoundRobin {
            weights: members.iter().map(|m| i64::from(m.weight.max(1))).collect(),
            current: Mutex::new(vec![0; members.len()].into_boxed_slice()),
        }
    }
}

impl Strategy for WeightedRoundRobin {
    fn pick(&self, _client: IpAddr, c: &dyn Candidates) -> Option<usize> {
        // A poisoned lock only means another pick panicked mid-update; the scores are still
        // valid numbers, so keep using them.
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut best: Option<usize> = None;
        let mut total = 0;
        for (i, &w) in self.weights.iter().enumerate() {
            if !c.eligible(i) {
                continue;
            }
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        current[best] -= total;
        Some(best)
    }
}

/// Consistent hashing on the client's IP address (chapter 9): the same client lands on the
/// same backend for as long as that backend is up ("server affinity", seed 001), and removing
/// one of N backends moves only the clients that were on it, about 1/N of them.
///
/// `hash(ip) % N` would be the naive version: affinity, yes, but removing one backend changes
/// N and moves almost every client. This is the ketama ring, as in nginx's
/// `hash $remote_addr consistent`: each backend owns 160 points per unit of weight on a ring of
/// 64-bit hashes (of its address, so independent of its position in the list); a client goes to
/// the owner of the first point at or after the hash of its IP. Removing a backend removes its
/// points only; the clients on the other points do not move. When the owner is down, the walk
/// goes on to the next point whose backend is eligible, which spreads that backend's clients
/// over all the others instead of doubling one neighbour's load.
#[derive(Debug)]
pub struct IpHash {
    /// Sorted by point.
    ring: Box<[(u64, u32)]>,
}

/// Points per unit of weight on the ring: enough that each backend's share is within a few
/// percent of its weight (nginx and libketama use 160).
const POINTS_PER_WEIGHT: u64 = 160;
/// Ring size cap, so 1000 backends of weight 256 cannot ask for 40 million points.
const MAX_RING_POINTS: u64 = 1 << 20;

impl IpHash {
    pub fn new(members: &[Member]) -> Self {
        assert!(!members.is_empty(), "a strategy needs at least one backend");
        let total_weight: u64 = members.iter().map(|m| u64::from(m.weight.max(1))).sum();
        let per_weight = (MAX_RING_POINTS / total_weight).clamp(1, POINTS_PER_WEIGHT);
        let mut ring = Vec::new();
        for (i, m) in members.iter().enumerate() {
            let key = hash_bytes(m.key.as_bytes());
            for point in 0..per_weight * u64::from(m.weight.max(1)) {
                ring.push((mix(key ^ mix(point)), i as u32));
            }
        }
        ring.sort_unstable();
        IpHash {
            ring: ring.into_boxed_slice(),
        }
    }
}

impl Strategy for IpHash {
    fn pick(&self, client: IpAddr, c: &dyn Candidates) -> Option<usize> {
        let h = hash_ip(client);
        let start = self.ring.partition_point(|&(point, _)| point < h);
        rotated(start, self.ring.len())
            .map(|k| self.ring[k].1 as usize)
            .find(|&i| c.eligible(i))
    }
}

/// FNV-1a, then [`mix`]: a hash that is the same in every build and on every machine (std's
/// `DefaultHasher` promises neither), so two balancers send a client to the same backend.
fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The hash of a client address. An IPv4 client seen through an IPv6 socket (`::ffff:1.2.3.4`)
/// hashes as the IPv4 address it is.
fn hash_ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

/// splitmix64's finaliser: every input bit flips about half the output bits, so neighbouring
/// addresses (10.0.0.1, 10.0.0.2) land far apart on the ring.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
    /// The fewest open connections per unit of weight.
    LeastConnections,
    /// Round robin in proportion to the weights, interleaved (nginx's smooth algorithm).
    WeightedRoundRobin,
    /// The less loaded of two backends drawn at random.
    PowerOfTwo,
    /// Consistent hashing of the client's IP address: each client keeps its backend.
    IpHash,
}

impl StrategyKind {
    /// The strategies of the Go tutorial's chapters (steps 04 to 08).
    pub const TUTORIAL: &[StrategyKind] = &[
        StrategyKind::RoundRobin,
        StrategyKind::Random,
        StrategyKind::LeastCalled,
    ];

    /// Every strategy (step 09 on).
    pub const ALL: &[StrategyKind] = &[
        StrategyKind::RoundRobin,
        StrategyKind::Random,
        StrategyKind::LeastCalled,
        StrategyKind::LeastConnections,
        StrategyKind::WeightedRoundRobin,
        StrategyKind::PowerOfTwo,
        StrategyKind::IpHash,
    ];

    /// The strategy for `members` (at least one).
    pub fn build(self, members: &[Member]) -> Box<dyn Strategy> {
        let len = members.len();
        if len == 0 {
            return Box::new(Nobody);
        }
        match self {
            StrategyKind::RoundRobin => Box::new(RoundRobin::new(len)),
            StrategyKind::Random => Box::new(Random::new(len)),
            StrategyKind::LeastCalled => Box::new(LeastCalled::new(len)),
            StrategyKind::LeastConnections => Box::new(LeastConnections::new(members)),
            StrategyKind::WeightedRoundRobin => Box::new(WeightedRoundRobin::new(members)),
            StrategyKind::PowerOfTwo => Box::new(PowerOfTwo::new(members)),
            StrategyKind::IpHash => Box::new(IpHash::new(members)),
        }
    }

    /// Does this strategy take `weight=` into account?
    pub fn uses_weights(self) -> bool {
        !matches!(
            self,
            StrategyKind::RoundRobin | StrategyKind::Random | StrategyKind::LeastCalled
        )
    }

    /// The name as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round-robin",
            StrategyKind::Random => "random",
            StrategyKind::LeastCalled => "least-called",
            StrategyKind::LeastConnections => "least-connections",
            StrategyKind::WeightedRoundRobin => "weighted-round-robin",
            StrategyKind::PowerOfTwo => "power-of-two",
            StrategyKind::IpHash => "ip-hash",
        }
    }

    /// A `--strategy` parser that accepts only `allowed`, so each step's `--help` lists the
    /// strategies its chapter has introduced.
    pub fn parser(allowed: &'static [StrategyKind]) -> StrategyParser {
        StrategyParser(allowed)
    }
}

/// The `--strategy` parser of [`StrategyKind::parser`]. A strategy of a later chapter is
/// refused with the step that has it, as the config file's `strategy` is, rather than with
/// clap's generic list.
#[derive(Clone, Copy)]
pub struct StrategyParser(&'static [StrategyKind]);

impl clap::builder::TypedValueParser for StrategyParser {
    type Value = StrategyKind;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<StrategyKind, clap::Error> {
        let name = value.to_string_lossy();
        let step = cmd.get_bin_name().unwrap_or(cmd.get_name());
        let step = std::path::Path::new(step)
            .file_name()
            .map_or(step.into(), |f| f.to_string_lossy());
        let known = self
            .0
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ");
        let why = match StrategyKind::ALL.iter().find(|k| k.name() == name) {
            Some(kind) if self.0.contains(kind) => return Ok(*kind),
            Some(_) => format!("strategy {name} comes with step 09-strategies"),
            None => format!("unknown strategy `{name}`"),
        };
        let flag = arg.map_or_else(|| "--strategy".to_owned(), ToString::to_string);
        let message = format!("invalid value '{name}' for '{flag}': {why}; {step} knows {known}\n");
        Err(clap::Error::raw(clap::error::ErrorKind::InvalidValue, message).with_cmd(cmd))
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            self.0
                .iter()
                .map(|k| clap::builder::PossibleValue::new(k.name())),
        ))
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
    use std::net::Ipv4Addr;

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A hand-made view: which backends are up, and their open connections.
    struct View {
        up: Vec<bool>,
        active: Vec<usize>,
    }

    impl View {
        fn idle(n: usize) -> View {
            View {
                up: vec![true; n],
                active: vec![0; n],
            }
        }
    }

    impl Candidates for View {
        fn eligible(&self, i: usize) -> bool {
            self.up[i]
        }
        fn active(&self, i: usize) -> usize {
            self.active[i]
        }
    }

    fn picks(s: &dyn Strategy, c: &dyn Candidates, n: usize) -> Vec<usize> {
        (0..n).map(|_| s.pick(CLIENT, c).unwrap()).collect()
    }

    fn counts(s: &dyn Strategy, c: &dyn Candidates, len: usize, n: usize) -> Vec<usize> {
        let mut seen = vec![0; len];
        for i in picks(s, c, n) {
            seen[i] += 1;
        }
        seen
    }

    fn weighted(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Member {
                key: format!("10.0.0.{i}:80"),
                weight,
            })
            .collect()
    }

    fn client(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn round_robin_rotates_in_order_and_shares_a_down_backends_turns() {
        assert_eq!(
            picks(&RoundRobin::new(3), &AllIdle, 7),
            [0, 1, 2, 0, 1, 2, 0]
        );
        assert_eq!(picks(&RoundRobin::new(1), &AllIdle, 3), [0, 0, 0]);
        let mut view = View::idle(3);
        view.up[1] = false;
        // Tickets 1 and 4 land on the down backend; its turns alternate between the others.
        assert_eq!(picks(&RoundRobin::new(3), &view, 6), [0, 2, 2, 0, 0, 2]);
        view.up = vec![false; 3];
        assert_eq!(RoundRobin::new(3).pick(CLIENT, &view), None);
    }

    #[test]
    fn least_called_matches_round_robin_only_from_equal_counts() {
        assert_eq!(picks(&LeastCalled::new(3), &AllIdle, 6), [0, 1, 2, 0, 1, 2]);
        // A backend that joins a running balancer gets every connection until it catches up.
        let joined = LeastCalled::with_history(&[100, 100, 0]);
        assert!(picks(&joined, &AllIdle, 100).iter().all(|&i| i == 2));
        assert_eq!(picks(&joined, &AllIdle, 3), [0, 1, 2]);
    }

    #[test]
    fn random_stays_in_range_and_reaches_every_eligible_backend() {
        let seen = counts(&Random::new(5), &AllIdle, 5, 5000);
        assert!(seen.iter().all(|&n| n > 700), "{seen:?}");
        let mut view = View::idle(5);
        view.up[2] = false;
        let seen = counts(&Random::new(5), &view, 5, 4000);
        assert_eq!(seen[2], 0);
        // The down backend's share is spread evenly, not handed to its neighbour.
        assert!(
            seen.iter()
                .enumerate()
                .all(|(i, &n)| i == 2 || (800..1200).contains(&n)),
            "{seen:?}"
        );
    }

    #[test]
    fn least_connections_avoids_the_loaded_backend_and_rotates_ties() {
        let s = LeastConnections::new(&Member::uniform(3));
        assert_eq!(counts(&s, &AllIdle, 3, 300), [100, 100, 100]);
        let view = View {
            up: vec![true; 3],
            active: vec![5, 0, 0],
        };
        assert_eq!(counts(&s, &view, 3, 100)[0], 0);
        // Weight 2 against 1: 3 connections on the heavy one weigh as 1.5 on a light one.
        let s = LeastConnections::new(&weighted(&[2, 1]));
        let view = View {
            up: vec![true; 2],
            active: vec![3, 2],
        };
        assert_eq!(picks(&s, &view, 4), [0; 4]);
    }

    #[test]
    fn power_of_two_never_picks_the_most_loaded_of_three() {
        let s = PowerOfTwo::new(&Member::uniform(3));
        let view = View {
            up: vec![true; 3],
            active: vec![1, 9, 2],
        };
        let seen = counts(&s, &view, 3, 3000);
        // Any pair containing backend 1 is won by the other one.
        assert_eq!(seen[1], 0, "{seen:?}");
        // Backend 0 wins both pairs it is drawn in; backend 2 only the pair {1, 2}.
        assert!(seen[0] > seen[2], "{seen:?}");
        let mut view = View::idle(3);
        view.up = vec![false, true, false];
        assert_eq!(picks(&s, &view, 20), [1; 20]);
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves_like_nginx() {
        let s = WeightedRoundRobin::new(&weighted(&[5, 1, 1]));
        // nginx's documented sequence for weights 5, 1, 1.
        assert_eq!(picks(&s, &AllIdle, 7), [0, 0, 1, 0, 2, 0, 0]);
        let s = WeightedRoundRobin::new(&weighted(&[3, 2, 1]));
        assert_eq!(counts(&s, &AllIdle, 3, 600), [300, 200, 100]);
        let mut view = View::idle(3);
        view.up[0] = false;
        assert_eq!(counts(&s, &view, 3, 300), [0, 200, 100]);
    }

    #[test]
    fn ip_hash_keeps_clients_and_moves_few_when_a_backend_goes() {
        let members = weighted(&[1; 10]);
        let all = IpHash::new(&members);
        let before: Vec<usize> = (0..10_000)
            .map(|i| all.pick(client(i), &AllIdle).unwrap())
            .collect();
        // Stable: the same answer every time, and independent of the list's order.
        assert!((0..10_000).all(|i| all.pick(client(i), &AllIdle) == Some(before[i as usize])));
        let mut reversed = members.clone();
        reversed.reverse();
        let rev = IpHash::new(&reversed);
        assert!((0..1000).all(|i| rev.pick(client(i), &AllIdle) == Some(9 - before[i as usize])));
        // Spread: each of the 10 backends gets roughly a tenth.
        let mut seen = [0; 10];
        for &b in &before {
            seen[b] += 1;
        }
        assert!(seen.iter().all(|&n| (700..1300).contains(&n)), "{seen:?}");

        // Remove backend 3 from the list: only its clients move.
        let mut fewer = members.clone();
        fewer.remove(3);
        let after = IpHash::new(&fewer);
        let mut moved = 0;
        for (i, &b) in before.iter().enumerate() {
            let now = after.pick(client(i as u32), &AllIdle).unwrap();
            let now = if now >= 3 { now + 1 } else { now };
            if now != b {
                assert_eq!(b, 3, "client {i} moved off a backend that stayed");
                moved += 1;
            }
        }
        assert!((700..1300).contains(&moved), "{moved} of 10000 moved");

        // A backend marked down: same as removing it, without rebuilding the ring.
        let mut view = View::idle(10);
        view.up[3] = false;
        for (i, &b) in before.iter().enumerate() {
            let now = all.pick(client(i as u32), &view).unwrap();
            assert!(now != 3 && (b == 3 || now == b));
        }
    }

    #[test]
    fn ip_hash_honours_weights() {
        let s = IpHash::new(&weighted(&[3, 1]));
        let mut seen = [0; 2];
        for i in 0..10_000 {
            seen[s.pick(client(i), &AllIdle).unwrap()] += 1;
        }
        assert!((6500..8500).contains(&seen[0]), "{seen:?}");
    }

    #[test]
    fn every_kind_survives_a_single_backend_and_none_eligible() {
        let none = View {
            up: vec![false; 3],
            active: vec![0; 3],
        };
        for &kind in StrategyKind::ALL {
            assert_eq!(
                picks(&*kind.build(&Member::uniform(1)), &AllIdle, 5),
                [0; 5],
                "{kind}"
            );
            assert_eq!(
                kind.build(&Member::uniform(3)).pick(CLIENT, &none),
                None,
                "{kind}"
            );
        }
    }

    #[test]
    fn names_round_trip() {
        for &kind in StrategyKind::ALL {
            let parsed = <StrategyKind as clap::ValueEnum>::from_str(kind.name(), false);
            assert_eq!(parsed, Ok(kind));
        }
    }
}
