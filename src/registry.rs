//! Servers that register themselves (chapter 14, seed 001): a directory of backends kept by
//! leases, on the admin listener of either balancer.
//!
//! `PUT /backends/NAME` with `{"address": "HOST:PORT", "url": …, "ttl": SECS, "tls": …,
//! "weight": …}` registers a server (or renews it: the same body again only moves its expiry);
//! `DELETE /backends/NAME` removes it; `GET /backends` lists configured and registered ones.
//! A registration is a **lease**, as an etcd lease or a Consul TTL check: a server that stops
//! renewing (it crashed, its host lost the network) is removed once its TTL runs out, logged
//! and counted. Registered backends are balanced and health-checked like configured ones, and
//! a registry change rebuilds the balancer as a reload does, so every backend that stays keeps
//! its health and counters.
//!
//! **Who may register** is the seed's security question: an open registry lets anyone put a
//! server of theirs in front of the users. So every call that reads or changes the list needs
//! `Authorization: Bearer TOKEN`, the token read from a file (`admin-token-file`, owner-only,
//! compared in constant time, never logged); `register-allow` can further restrict which
//! networks may register; a cap bounds how many may; bodies are small and bounded. Without a
//! token file the registry is off and the list is not served at all.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::backend::{BackendSpec, HealthCheck, HostPort, check_weight};
use crate::files;
use crate::limits::Cidr;
use crate::metrics::{self, Exposition, get};

/// A lease's length unless the body says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// The shortest and longest lease: shorter is a renewal storm, longer a dead server kept an
/// hour.
pub const TTL_RANGE: std::ops::RangeInclusive<f64> = 1.0..=3600.0;
/// How many servers may be registered at once unless configured.
pub const DEFAULT_CAP: usize = 256;
/// The largest registration body: a few fields of JSON.
pub const MAX_BODY: usize = 4096;
/// The shortest token accepted: a guessable token is no token.
pub const MIN_TOKEN: usize = 16;

/// What a refused call gets: its status and a one-line reason.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// 404: the registry is off (no token file), or no such registration.
    NotFound(&'static str),
    /// 401: no `Authorization: Bearer` header.
    Unauthorized,
    /// 403: a wrong token, or a registrant outside `register-allow`.
    Forbidden(&'static str),
    /// 400: a body that does not parse, or a bad field.
    BadRequest(String),
    /// 413: a body over [`MAX_BODY`].
    TooLarge,
    /// 429: the registry holds its cap.
    Full(usize),
}

impl Refused {
    pub fn status(&self) -> u16 {
        match self {
            Refused::NotFound(_) => 404,
            Refused::Unauthorized => 401,
            Refused::Forbidden(_) => 403,
            Refused::BadRequest(_) => 400,
            Refused::TooLarge => 413,
            Refused::Full(_) => 429,
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Refused::NotFound(why) => (*why).to_owned(),
            Refused::Unauthorized => "an Authorization: Bearer token is required".to_owned(),
            Refused::Forbidden(why) => (*why).to_owned(),
            Refused::BadRequest(why) => why.clone(),
            Refused::TooLarge => format!("a registration is at most {MAX_BODY} bytes"),
            Refused::Full(cap) => format!("the registry holds its limit of {cap} servers"),
        }
    }

    /// The metric label.
    fn label(&self) -> &'static str {
        match self {
            Refused::NotFound(_) => "not-found",
            Refused::Unauthorized => "unauthorized",
            Refused::Forbidden(_) => "forbidden",
            Refused::BadRequest(_) => "bad-request",
            Refused::TooLarge => "too-large",
            Refused::Full(_) => "full",
        }
    }
}

/// What a `PUT` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    /// A new server: the balancer is rebuilt with it.
    Created,
    /// The same server again: its lease moved, nothing else.
    Renewed,
    /// The name now points elsewhere (another address, URL, weight): rebuilt.
    Changed,
}

/// The body of `PUT /backends/NAME`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    address: String,
    url: Option<String>,
    ttl: Option<f64>,
    tls: Option<bool>,
    weight: Option<u32>,
    /// `"tcp"` or `"http"`: how active checks probe it.
    check: Option<HealthCheck>,
}

struct Lease {
    spec: BackendSpec,
    ttl: Duration,
    expires: Instant,
}

/// Counters of the registry, for `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    created: AtomicU64,
    renewed: AtomicU64,
    changed: AtomicU64,
    deleted: AtomicU64,
    expired: AtomicU64,
    refused: [AtomicU64; 6],
}

/// The registry: the token, who may register, and the leases.
pub struct Registry {
    /// `None`: no token file, the registry is off.
    token: Mutex<Option<Vec<u8>>>,
    allow: Mutex<Vec<Cidr>>,
    cap: std::sync::atomic::AtomicUsize,
    leases: Mutex<BTreeMap<String, Lease>>,
    changed: tokio::sync::Notify,
    counters: Counters,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(DEFAULT_CAP)
    }
}

impl Registry {
    /// An empty registry, off until [`Registry::configure`] gives it a token.
    pub fn new(cap: usize) -> Registry {
        Registry {
            token: Mutex::new(None),
            allow: Mutex::new(Vec::new()),
            cap: std::sync::atomic::AtomicUsize::new(cap),
            leases: Mutex::new(BTreeMap::new()),
            changed: tokio::sync::Notify::new(),
            counters: Counters::default(),
        }
    }

    /// Reads the token file (owner-only, as a key: [`files::read_private`]) and the networks
    /// that may register; `None` turns the registry off. Called at start and on every reload.
    pub fn configure(
        &self,
        token_file: Option<&Path>,
        allow: Vec<Cidr>,
        cap: usize,
    ) -> anyhow::Result<()> {
        let token = token_file.map(read_token).transpose()?;
        // Lowering the cap removes nobody: it refuses new names until enough have left.
        self.cap.store(cap, std::sync::atomic::Ordering::Relaxed);
        *lock(&self.token) = token;
        *lock(&self.allow) = allow;
        Ok(())
    }

    /// Whether a token is configured: registration is on.
    pub fn is_on(&self) -> bool {
        lock(&self.token).is_some()
    }

    /// Checks the caller: a token must be configured and presented (`Authorization: Bearer
    /// …`, compared in constant time), and a registrant (`changes`) must come from an allowed
    /// network.
    pub fn authorize(
        &self,
        peer: IpAddr,
        authorization: Option<&[u8]>,
        changes: bool,
    ) -> Result<(), Refused> {
        let result = self.check(peer, authorization, changes);
        if let Err(refused) = &result {
            self.refused(refused);
        }
        result
    }

    /// Whether an admin token is configured (registration is on).
    pub fn has_token(&self) -> bool {
        lock(&self.token).is_some()
    }

    fn check(
        &self,
        peer: IpAddr,
        authorization: Option<&[u8]>,
        changes: bool,
    ) -> Result<(), Refused> {
        let token = lock(&self.token);
        let Some(token) = token.as_deref() else {
            return Err(Refused::NotFound(
                "registration is off: the balancer has no admin-token-file",
            ));
        };
        // RFC 9110 §11.1: the scheme's name is case-insensitive (`bearer` is `Bearer`), and
        // one or more spaces follow it.
        let presented = authorization
            .and_then(|h| {
                let space = h.iter().position(|&b| b == b' ')?;
                let (scheme, token) = h.split_at(space);
                scheme.eq_ignore_ascii_case(b"bearer").then_some(token)
            })
            .ok_or(Refused::Unauthorized)?;
        if !same(presented.trim_ascii(), token) {
            return Err(Refused::Forbidden("wrong token"));
        }
        let allow = lock(&self.allow);
        if changes && !allow.is_empty() && !allow.iter().any(|c| c.contains(peer)) {
            return Err(Refused::Forbidden(
                "this address may not register (register-allow)",
            ));
        }
        Ok(())
    }

    /// Counts a refusal made outside the registry (a body over the limit).
    pub fn refused(&self, refused: &Refused) {
        let i = match refused {
            Refused::NotFound(_) => 0,
            Refused::Unauthorized => 1,
            Refused::Forbidden(_) => 2,
            Refused::BadRequest(_) => 3,
            Refused::TooLarge => 4,
            Refused::Full(_) => 5,
        };
        metrics::inc(&self.counters.refused[i]);
    }

    /// `PUT /backends/NAME` with `body`, already authorized.
    pub fn put(&self, name: &str, body: &[u8], now: Instant) -> Result<Put, Refused> {
        let result = self.lease(name, body, now);
        match &result {
            Ok(Put::Created) => metrics::inc(&self.counters.created),
            Ok(Put::Renewed) => metrics::inc(&self.counters.renewed),
            Ok(Put::Changed) => metrics::inc(&self.counters.changed),
            Err(refused) => self.refused(refused),
        }
        if matches!(result, Ok(Put::Created | Put::Changed)) {
            self.changed.notify_one();
        }
        result
    }

    fn lease(&self, name: &str, body: &[u8], now: Instant) -> Result<Put, Refused> {
        check_name(name).map_err(Refused::BadRequest)?;
        if body.len() > MAX_BODY {
            return Err(Refused::TooLarge);
        }
        let body: Body = serde_json::from_slice(body)
            .map_err(|e| Refused::BadRequest(format!("not a registration: {e}")))?;
        let ttl = body.ttl;
        let spec = spec(name, body).map_err(Refused::BadRequest)?;
        let ttl = match ttl {
            None => DEFAULT_TTL,
            Some(secs) if TTL_RANGE.contains(&secs) => Duration::from_secs_f64(secs),
            Some(secs) => {
                return Err(Refused::BadRequest(format!(
                    "ttl must be from {} to {} seconds, not {secs}",
                    TTL_RANGE.start(),
                    TTL_RANGE.end()
                )));
            }
        };
        let cap = self.cap.load(std::sync::atomic::Ordering::Relaxed);
        let mut leases = lock(&self.leases);
        let outcome = match leases.get(name) {
            Some(lease) if lease.spec == spec => Put::Renewed,
            Some(_) => Put::Changed,
            None if leases.len() >= cap => return Err(Refused::Full(cap)),
            None => Put::Created,
        };
        let expires = now + ttl;
        match outcome {
            Put::Renewed => {
                if let Some(lease) = leases.get_mut(name) {
                    lease.expires = expires;
                    lease.ttl = ttl;
                }
            }
            _ => {
                leases.insert(name.to_owned(), Lease { spec, ttl, expires });
            }
        }
        Ok(outcome)
    }

    /// `DELETE /backends/NAME`, already authorized.
    pub fn delete(&self, name: &str) -> Result<(), Refused> {
        let removed = lock(&self.leases).remove(name);
        match removed {
            Some(_) => {
                metrics::inc(&self.counters.deleted);
                self.changed.notify_one();
                Ok(())
            }
            None => {
                let refused = Refused::NotFound("no such registration");
                self.refused(&refused);
                Err(refused)
            }
        }
    }

    /// Removes the leases that ran out before `now`; their names. The caller rebuilds.
    pub fn expire(&self, now: Instant) -> Vec<String> {
        let mut leases = lock(&self.leases);
        let gone: Vec<String> = leases
            .iter()
            .filter(|(_, lease)| lease.expires <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            leases.remove(name);
            metrics::inc(&self.counters.expired);
        }
        // No notification: the caller, which rebuilds the balancer, knows already.
        gone
    }

    /// The registered backends.
    pub fn specs(&self) -> Vec<BackendSpec> {
        let leases = lock(&self.leases);
        leases.values().map(|lease| lease.spec.clone()).collect()
    }

    /// Each registered backend with the time its lease has left at `now`, and its TTL.
    pub fn leases(&self, now: Instant) -> Vec<(BackendSpec, Duration, Duration)> {
        let leases = lock(&self.leases);
        leases
            .values()
            .map(|l| {
                (
                    l.spec.clone(),
                    l.expires.saturating_duration_since(now),
                    l.ttl,
                )
            })
            .collect()
    }

    /// Resolves once the set of registered backends changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The registry's lines of `/metrics`.
    fn exposition(&self, prefix: &str) -> String {
        let c = &self.counters;
        let mut e = Exposition::default();
        let name = format!("{prefix}_registered_backends");
        e.metric(&name, "gauge", "Backends registered now (chapter 14).")
            .sample(&name, &[], self.specs().len());
        let name = format!("{prefix}_registrations_total");
        e.metric(
            &name,
            "counter",
            "Registry calls that succeeded, by what they did.",
        );
        for (what, n) in [
            ("created", &c.created),
            ("renewed", &c.renewed),
            ("changed", &c.changed),
            ("deleted", &c.deleted),
            ("expired", &c.expired),
        ] {
            e.sample(&name, &[("result", what)], get(n));
        }
        let name = format!("{prefix}_registrations_refused_total");
        e.metric(&name, "counter", "Registry calls refused, by reason.");
        for (refused, n) in [
            Refused::NotFound(""),
            Refused::Unauthorized,
            Refused::Forbidden(""),
            Refused::BadRequest(String::new()),
            Refused::TooLarge,
            Refused::Full(0),
        ]
        .iter()
        .zip(&c.refused)
        {
            e.sample(&name, &[("reason", refused.label())], get(n));
        }
        e.finish()
    }
}

/// The backend an etcd key's value describes (chapter 15): chapter 14's JSON, every field
/// checked; `name` is the key's last segment. A TTL in it is ignored: etcd's lease is the TTL.
pub fn parse_backend(name: &str, json: &[u8]) -> Result<BackendSpec, String> {
    check_name(name)?;
    if json.len() > MAX_BODY {
        return Err(format!("more than {MAX_BODY} bytes"));
    }
    let body: Body = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    spec(name, body)
}

/// The backend a registration describes, every field checked.
fn spec(name: &str, body: Body) -> Result<BackendSpec, String> {
    let Body {
        address,
        url,
        tls,
        weight,
        check,
        ttl: _,
    } = body;
    let addr: HostPort = address.parse()?;
    if addr.port == 0 {
        return Err("address needs a port other than 0".to_owned());
    }
    if let Some(url) = &url {
        check_url(url)?;
    }
    let weight = check_weight(weight.unwrap_or(1))?;
    if check == Some(crate::backend::HealthCheck::Grpc) {
        return Err(
            "check \"grpc\" is for an HTTP/2 backend, and a registration is spoken to in \
             HTTP/1.1; use \"tcp\" or \"http\""
                .to_owned(),
        );
    }
    Ok(BackendSpec {
        tls: tls.unwrap_or(false),
        weight,
        check: check.unwrap_or_default(),
        name: Some(name.to_owned()),
        url,
        ..BackendSpec::plain(addr)
    })
}

/// A name is 1 to 64 of `A-Z a-z 0-9 . _ -`: it goes into URLs, logs and metric labels.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    match ok {
        true => Ok(()),
        false => Err("a name is 1 to 64 letters, digits, `.`, `_` or `-`".to_owned()),
    }
}

/// A public URL is `http://` or `https://`, a host, and nothing that would let it break out
/// of a `Location` header.
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("url must start with http:// or https://, not `{url}`"))?;
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if host_end == 0 || rest.len() > 2000 || !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("`{url}` is not a usable URL"));
    }
    if url.contains(['?', '#']) {
        return Err(format!("url `{url}` may not carry a query or a fragment"));
    }
    Ok(())
}

fn read_token(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut token = files::read_private(path, "admin token file", files::MAX_SECRET)?;
    while token.last().is_some_and(u8::is_ascii_whitespace) {
        token.pop();
    }
    if token.len() < MIN_TOKEN {
        anyhow::bail!(
            "admin token file {} holds {} bytes; at least {MIN_TOKEN} are needed (for example: \
             openssl rand -hex 32 > {0}; chmod 600 {0})",
            path.display(),
            token.len()
        );
    }
    Ok(token)
}

/// A lock that a panic elsewhere did not poison for good: the data is plain and stays valid.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Equal, in time that depends on the lengths only: a comparison that stops at the first
/// difference tells an attacker, byte by byte, how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

impl crate::sources::Source for Registry {
    fn label(&self) -> &'static str {
        "registered"
    }

    fn is_on(&self) -> bool {
        Registry::is_on(self)
    }

    fn specs(&self) -> Vec<BackendSpec> {
        Registry::specs(self)
    }

    fn holds(&self, name: &str) -> bool {
        lock(&self.leases).contains_key(name)
    }

    fn metrics(&self, prefix: &str) -> String {
        self.exposition(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let r = Registry::new(2);
        *r.token.lock().unwrap() = Some(b"0123456789abcdef".to_vec());
        r
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn only_the_right_token_from_an_allowed_network_passes() {
        let r = registry();
        assert_eq!(r.authorize(LOCAL, None, true), Err(Refused::Unauthorized));
        assert_eq!(
            r.authorize(LOCAL, Some(b"Basic abc"), true),
            Err(Refused::Unauthorized)
        );
        assert!(matches!(
            r.authorize(LOCAL, Some(b"Bearer 0123456789abcdeF"), true),
            Err(Refused::Forbidden(_))
        ));
        assert!(matches!(
            r.authorize(LOCAL, Some(b"Bearer 0123456789abcde"), true),
            Err(Refused::Forbidden(_))
        ));
        assert_eq!(
            r.authorize(LOCAL, Some(b"Bearer 0123456789abcdef"), true),
            Ok(())
        );
        for scheme in [&b"bearer"[..], b"BEARER", b"bEaReR"] {
            let header = [scheme, b"  0123456789abcdef"].concat();
            assert_eq!(r.authorize(LOCAL, Some(&header), true), Ok(()));
        }
        assert_eq!(
            r.authorize(LOCAL, Some(b"Bearer0123456789abcdef"), true),
            Err(Refused::Unauthorized)
        );
        *r.allow.lock().unwrap() = vec!["10.0.0.0/8".parse().unwrap()];
        let good = Some(&b"Bearer 0123456789abcdef"[..]);
        assert!(matches!(
            r.authorize(LOCAL, good, true),
            Err(Refused::Forbidden(_))
        ));
        // Reading the list is not registering.
        assert_eq!(r.authorize(LOCAL, good, false), Ok(()));
        let off = Registry::new(2);
        assert!(matches!(
            off.authorize(LOCAL, good, false),
            Err(Refused::NotFound(_))
        ));
    }

    #[test]
    fn leases_are_created_renewed_changed_capped_and_expire() {
        let r = registry();
        let t = Instant::now();
        let body = br#"{"address": "127.0.0.1:4444", "ttl": 5}"#;
        assert_eq!(r.put("s1", body, t), Ok(Put::Created));
        assert_eq!(
            r.put("s1", body, t + Duration::from_secs(3)),
            Ok(Put::Renewed)
        );
        assert_eq!(
            r.put("s1", br#"{"address": "127.0.0.1:4445", "ttl": 5}"#, t),
            Ok(Put::Changed)
        );
        assert_eq!(r.put("s2", body, t), Ok(Put::Created));
        assert_eq!(r.put("s3", body, t), Err(Refused::Full(2)));
        assert_eq!(r.specs().len(), 2);
        // s1's lease ends at t+5, s2's at t+5 too: nothing before.
        assert!(r.expire(t + Duration::from_secs(4)).is_empty());
        assert_eq!(r.expire(t + Duration::from_secs(6)), ["s1", "s2"]);
        assert!(r.specs().is_empty());
        assert_eq!(
            r.delete("s1"),
            Err(Refused::NotFound("no such registration"))
        );
    }

    #[test]
    fn bad_bodies_and_names_change_nothing() {
        let r = registry();
        let t = Instant::now();
        for (name, body) in [
            ("s1", &b"not json"[..]),
            ("s1", br#"{"address": "nowhere"}"#),
            // Issue 27, item 8: a host that would forge a log line or a Host field.
            ("s1", br#"{"address": "evil\r\nX-Injected-yes:80"}"#),
            ("s1", br#"{"address": "user@evil:80"}"#),
            ("s1", br#"{"address": "127.0.0.1:0"}"#),
            ("s1", br#"{"address": "127.0.0.1:1", "ttl": 0}"#),
            ("s1", br#"{"address": "127.0.0.1:1", "weight": 0}"#),
            ("s1", br#"{"address": "127.0.0.1:1", "url": "ftp://x"}"#),
            (
                "s1",
                br#"{"address": "127.0.0.1:1", "url": "http://x\r\nSet-Cookie: a=b"}"#,
            ),
            ("s1", br#"{"address": "127.0.0.1:1", "evil": true}"#),
            ("../x", br#"{"address": "127.0.0.1:1"}"#),
            ("", br#"{"address": "127.0.0.1:1"}"#),
        ] {
            assert!(
                matches!(r.put(name, body, t), Err(Refused::BadRequest(_))),
                "{name} {}",
                String::from_utf8_lossy(body)
            );
        }
        let huge = format!(
            r#"{{"address": "127.0.0.1:1", "url": "http://{}"}}"#,
            "a".repeat(5000)
        );
        assert_eq!(r.put("s1", huge.as_bytes(), t), Err(Refused::TooLarge));
        assert!(r.specs().is_empty());
    }

    #[test]
    fn a_registered_backend_is_named_and_has_its_url() {
        let r = registry();
        let body = br#"{"address": "127.0.0.1:8443", "url": "https://s1.apps.localhost:8443/", "tls": true, "weight": 3}"#;
        r.put("s1", body, Instant::now()).unwrap();
        let spec = &r.specs()[0];
        assert_eq!(spec.name.as_deref(), Some("s1"));
        assert_eq!(spec.identity(), "name:s1");
        assert_eq!(spec.public_url(), "https://s1.apps.localhost:8443");
        assert!(spec.tls);
        assert_eq!(spec.weight, 3);
    }
}
