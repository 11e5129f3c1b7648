//! Who may connect, and how many (chapter 10): allow and deny lists of CIDRs, a cap on the
//! connections of one client IP, and a cap on connections overall with a short, bounded queue.
//!
//! Seed 002 lists "blacklist IPs" and "limit connections per client" among what a reverse proxy
//! is for. The overall cap matters as much: every proxied connection costs two file descriptors
//! and some memory, and a balancer that accepts without bound fails *everyone* when it runs out
//! (`EMFILE` on accept and on dial) instead of turning away the surplus. So beyond
//! `max-connections`, a new client waits in a queue of at most `queue` clients for at most
//! `queue-timeout`, and is closed if no slot frees up; with `queue = 0` it is closed at once.
//!
//! The limits are read per connection from the current configuration, so a reload (SIGHUP)
//! changes them at once; the counts live in [`Gate`], which outlives reloads.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// Clients that may wait for a slot beyond `max-connections` unless configured.
pub const DEFAULT_QUEUE: usize = 128;
/// How long a queued client waits for a slot unless configured.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// An IPv4 or IPv6 network, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a /32 (/128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The network as an IPv6 address, IPv4 mapped into `::ffff:0:0/96`.
    net: u128,
    /// Prefix length in that IPv6 space (an IPv4 /8 is /104).
    prefix: u8,
    /// Whether it was written as IPv4, for display.
    v4: bool,
}

fn as_v6_bits(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p)),
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        (as_v6_bits(ip) ^ self.net) & mask(self.prefix) == 0
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("`{s}` is not an address or CIDR (10.0.0.0/8, 2001:db8::/32)"))?;
        let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(len) => match len.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("`{len}` in `{s}` is not a prefix length 0-{max}")),
            },
        };
        let prefix = if ip.is_ipv4() { len + 96 } else { len };
        let bits = as_v6_bits(ip);
        // `10.0.0.1/8` is almost always a typo for `10.0.0.1/32` or `10.0.0.0/8`: refuse it
        // rather than guess.
        if bits & !mask(prefix) != 0 {
            return Err(format!("`{s}` has bits set beyond its /{len} prefix"));
        }
        Ok(Cidr {
            net: bits,
            prefix,
            v4: ip.is_ipv4(),
        })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = std::net::Ipv6Addr::from(self.net);
        match (self.v4, ip.to_ipv4_mapped()) {
            (true, Some(v4)) => write!(f, "{v4}/{}", self.prefix - 96),
            _ => write!(f, "{ip}/{}", self.prefix),
        }
    }
}

/// The settings, as configured. `Limits::default()` limits nothing: chapters 3 to 9.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections served at once; `None` for no limit.
    pub max_connections: Option<usize>,
    /// Clients that may wait for a slot when `max_connections` are served.
    pub queue: usize,
    pub queue_timeout: Duration,
    /// Connections at once from one client IP; `None` for no limit.
    pub max_per_client: Option<usize>,
    /// When not empty, only these networks may connect.
    pub allow: Vec<Cidr>,
    /// These networks may not connect, even if allowed.
    pub deny: Vec<Cidr>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: None,
            queue: DEFAULT_QUEUE,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            max_per_client: None,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

impl Limits {
    /// Deny wins over allow; an empty allow list allows everyone.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|c| c.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
    }
}

/// Why a client was turned away: the access log's `end=` and the refusals metric's label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot taken and the queue full (or `queue = 0`).
    Full,
    /// Waited `queue-timeout` in the queue without a slot freeing up.
    QueueTimeout,
    /// The client IP already has `max-per-client` connections.
    PerClient,
    /// Not allowed by the allow/deny lists.
    Denied,
    /// The balancer is shutting down.
    Draining,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::Full,
        Refusal::QueueTimeout,
        Refusal::PerClient,
        Refusal::Denied,
        Refusal::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "max-connections",
            Refusal::QueueTimeout => "queue-timeout",
            Refusal::PerClient => "max-per-client",
            Refusal::Denied => "denied",
            Refusal::Draining => "draining",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The live counts the limits are checked against. One per listener, kept across reloads.
#[derive(Debug, Default)]
pub struct Gate {
    /// Connections holding a slot.
    active: AtomicUsize,
    /// Clients queued for a slot.
    waiting: AtomicUsize,
    /// Signalled when a slot frees up (and when draining starts, to empty the queue).
    freed: Notify,
    draining: AtomicBool,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    /// The most connections held at once since [`Gate::take_peak`] last looked: how the memory
    /// trimmer (`crate::memory`) knows a burst came and went between two of its looks.
    peak: AtomicUsize,
}

/// A connection's place under `max-connections`; frees it when dropped. It owns a handle on
/// the gate so that the accept loop can take it and hand it to the connection's task.
#[derive(Debug)]
pub struct Slot(Arc<Gate>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

/// A place in the queue for a slot; given up when dropped.
#[derive(Debug)]
pub struct Queued(Arc<Gate>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What [`Gate::enter`] decides at once.
#[derive(Debug)]
pub enum Entry {
    /// A slot was free.
    Admitted(Slot),
    /// Every slot is taken; this client may wait for one ([`Queued::wait`]).
    Queued(Queued),
}

/// A connection counted against its client IP (when that is limited); uncounted when dropped.
/// It owns its share of the gate, as [`Slot`] does, so that a connection can move to a task of
/// its own (`http-lb` gives each HTTP/2 connection one, sized for it alone).
#[derive(Debug)]
pub struct ClientSlot(Option<(Arc<Gate>, IpAddr)>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let Some((gate, ip)) = &self.0 else { return };
        let mut map = gate.per_client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(ip);
            }
        }
    }
}

impl Gate {
    /// Connections holding a slot now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Clients waiting in the queue now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Decides at once, without waiting: a slot, a place in the queue, or a refusal. The
    /// accept loop calls this, so that a refused client is closed before the next accept:
    /// a flood of clients never piles up accepted sockets waiting to be refused.
    pub fn enter(self: &Arc<Self>, limits: &Limits) -> Result<Entry, Refusal> {
        if self.draining.load(Ordering::Acquire) {
            return Err(Refusal::Draining);
        }
        if self.try_take(limits) {
            return Ok(Entry::Admitted(Slot(Arc::clone(self))));
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= limits.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        Ok(Entry::Queued(Queued(Arc::clone(self))))
    }

    fn try_take(&self, limits: &Limits) -> bool {
        let max = limits.max_connections.unwrap_or(usize::MAX);
        match self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            }) {
            Ok(before) => {
                self.peak.fetch_max(before + 1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// The high-water mark of held slots since the last call, which resets it to the count now.
    pub fn take_peak(&self) -> usize {
        self.peak.swap(self.active(), Ordering::Relaxed)
    }

    /// Counts a connection against `ip`, unless it already has `max` of them.
    pub fn admit_client(
        self: &Arc<Self>,
        ip: IpAddr,
        max: Option<usize>,
    ) -> Result<ClientSlot, Refusal> {
        let Some(max) = max else {
            // Not counted when not limited: no lock on the path of every connection.
            return Ok(ClientSlot(None));
        };
        let ip = ip.to_canonical();
        let mut map = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return Err(Refusal::PerClient);
        }
        *n += 1;
        Ok(ClientSlot(Some((Arc::clone(self), ip))))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// From now on, refuse new clients and close the queued ones.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.freed.notify_waiters();
    }

    /// Resolves once no connection holds a slot.
    pub async fn drained(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            freed.await;
        }
    }
}

impl Queued {
    /// Waits for a slot, at most `queue-timeout`; the place in the queue is given up however
    /// the wait ends.
    pub async fn wait(self, limits: &Limits) -> Result<Slot, Refusal> {
        let gate = &self.0;
        let wait = async {
            loop {
                // Registered before the check, so a slot freed between the two is not missed.
                let freed = gate.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if gate.draining.load(Ordering::Acquire) {
                    return Err(Refusal::Draining);
                }
                if gate.try_take(limits) {
                    return Ok(Slot(Arc::clone(gate)));
                }
                freed.await;
            }
        };
        match tokio::time::timeout(limits.queue_timeout, wait).await {
            Ok(result) => result,
            Err(_) => Err(Refusal::QueueTimeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_match_what_they_say() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.0.1")) && !c.contains(ip("11.0.0.1")));
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert_eq!(c.to_string(), "10.0.0.0/8");
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(c.contains(ip("2001:db8:1::5")) && !c.contains(ip("2001:db9::1")));
        let c: Cidr = "127.0.0.1".parse().unwrap();
        assert!(c.contains(ip("127.0.0.1")) && !c.contains(ip("127.0.0.2")));
        assert_eq!(c.to_string(), "127.0.0.1/32");
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("1.2.3.4")) && !all.contains(ip("::2")));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains(ip("1.2.3.4")) && all6.contains(ip("::2")));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0/8",
            "::1/129",
            "x",
            "1.2.3.4/",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn deny_wins_and_an_empty_allow_list_allows_all() {
        let mut l = Limits::default();
        assert!(l.permits(ip("192.0.2.1")));
        l.allow = vec!["10.0.0.0/8".parse().unwrap()];
        l.deny = vec!["10.0.13.0/24".parse().unwrap()];
        assert!(l.permits(ip("10.0.12.1")));
        assert!(!l.permits(ip("10.0.13.1")));
        assert!(!l.permits(ip("192.0.2.1")));
    }

    #[test]
    fn per_client_counts_come_back_down() {
        let gate = Arc::new(Gate::default());
        let a = gate.admit_client(ip("10.0.0.1"), Some(2)).unwrap();
        let b = gate.admit_client(ip("::ffff:10.0.0.1"), Some(2)).unwrap();
        assert_eq!(
            gate.admit_client(ip("10.0.0.1"), Some(2)).unwrap_err(),
            Refusal::PerClient
        );
        assert!(gate.admit_client(ip("10.0.0.2"), Some(2)).is_ok());
        drop((a, b));
        assert!(gate.per_client.lock().unwrap().is_empty());
        assert!(gate.admit_client(ip("10.0.0.1"), Some(2)).is_ok());
        assert!(gate.admit_client(ip("10.0.0.1"), None).is_ok());
    }

    impl Gate {
        /// What the server does for a client, in one call: [`Gate::enter`], then the wait in
        /// the queue if it comes to that.
        async fn admit(self: &Arc<Self>, limits: &Limits) -> Result<Slot, Refusal> {
            match self.enter(limits)? {
                Entry::Admitted(slot) => Ok(slot),
                Entry::Queued(queued) => queued.wait(limits).await,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_the_limit_clients_queue_then_time_out_or_are_refused() {
        let gate = Arc::new(Gate::default());
        let limits = Limits {
            max_connections: Some(1),
            queue: 1,
            queue_timeout: Duration::from_secs(5),
            ..Limits::default()
        };
        let first = gate.admit(&limits).await.unwrap();
        // The queue holds one: a second waiter is refused at once.
        let queued = gate.admit(&limits);
        tokio::pin!(queued);
        assert!(futures_poll(&mut queued).is_none());
        assert_eq!(gate.waiting(), 1);
        assert_eq!(gate.admit(&limits).await.unwrap_err(), Refusal::Full);
        // A slot freeing up goes to the queued client.
        drop(first);
        let second = queued.await.unwrap();
        assert_eq!((gate.active(), gate.waiting()), (1, 0));
        // Nobody frees a slot: the queued client gives up after the timeout.
        assert_eq!(
            gate.admit(&limits).await.unwrap_err(),
            Refusal::QueueTimeout
        );
        drop(second);
        let none_queued = Limits {
            queue: 0,
            ..limits.clone()
        };
        let _third = gate.admit(&none_queued).await.unwrap();
        assert_eq!(gate.admit(&none_queued).await.unwrap_err(), Refusal::Full);
        gate.start_draining();
        assert_eq!(
            gate.admit(&none_queued).await.unwrap_err(),
            Refusal::Draining
        );
    }

    /// Polls a future once.
    fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
