//! A response cache in memory (chapter 16, seed 004's "caching static resources"), following
//! RFC 9111 as a *shared* cache.
//!
//! What may be stored and for how long, which stored response answers which request (its
//! `Vary`), when it must be revalidated: those rules are many and easy to get dangerously
//! wrong, so they come from a well-kept crate, `http-cache-semantics` (its `CachePolicy`, with
//! `shared: true`: `private` is never stored, `s-maxage` counts, a response to a request with
//! `Authorization` is stored only if it says `public` or `s-maxage`). On top of it, this module
//! adds what a proxy needs around the rules:
//!
//! * **never a response that sets a cookie**: a stored `Set-Cookie` would be handed to every
//!   later user. That is the trap of this feature: the cache that gives one user's session to
//!   the next. The affinity cookie of chapter 12 is never stored either: it is added after;
//! * **a byte bound**, with the least recently used entries evicted first;
//! * **collapsed misses** (nginx's `proxy_cache_lock`): while one request fetches a key, the
//!   others for that key wait for it instead of all going to the backend;
//! * **revalidation**: an expired entry with a validator is asked for with `If-None-Match` /
//!   `If-Modified-Since`, and a `304` refreshes it;
//! * **stale if error**: when the backend fails (5xx, or cannot be reached), an expired entry
//!   is served for up to `stale-if-error` seconds past its freshness, from the response's own
//!   `Cache-Control: stale-if-error=N` or the configured default.
//!
//! Every answer says what happened in `X-Cache`: `HIT`, `MISS`, `EXPIRED` (revalidated or
//! fetched again), `STALE` (served on a backend error), `BYPASS` (a request the cache does
//! not serve: not `GET`/`HEAD`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};
use hyper::header::{self, HeaderValue};
use hyper::{Method, StatusCode};

use crate::metrics::{Exposition, get, inc};

/// The field naming what the cache did.
pub const X_CACHE: &str = "x-cache";
/// How long a collapsed request waits for the one fetching its key.
pub const COLLAPSE_WAIT: Duration = Duration::from_secs(10);

/// What the cache did for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Expired,
    Stale,
    Bypass,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Hit,
        Outcome::Miss,
        Outcome::Expired,
        Outcome::Stale,
        Outcome::Bypass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Expired => "EXPIRED",
            Outcome::Stale => "STALE",
            Outcome::Bypass => "BYPASS",
        }
    }

    pub fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// One stored response.
pub struct Entry {
    pub policy: CachePolicy,
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    /// When it stops being fresh, and how long past that it may serve on a backend error.
    fresh_until: SystemTime,
    stale_if_error: Duration,
    /// The values, in the request that stored it, of the fields its `Vary` names: two
    /// entries of one key with the same are the same variant.
    variant: String,
    /// For least-recently-used eviction: a tick of the cache's clock.
    used: AtomicU64,
}

impl Entry {
    fn size(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len())
                .sum::<usize>()
            + 256
    }
}

/// What a lookup found.
pub enum Found {
    /// Fresh: answer with it. The head is the crate's, `Age` updated.
    Fresh(Arc<Entry>, hyper::http::response::Parts),
    /// Expired but usable after revalidation (or on an error): the conditional fields to send.
    Expired(Arc<Entry>, hyper::HeaderMap),
    Nothing,
}

/// The cache: entries by key, each key with the variants its `Vary` tells apart.
pub struct Cache {
    max_bytes: usize,
    stale_if_error: Duration,
    state: Mutex<State>,
    counts: [AtomicU64; 5],
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Vec<Arc<Entry>>>,
    bytes: usize,
    tick: u64,
    /// Keys being fetched now: a waiter clones the receiver, which wakes when the fetcher's
    /// sender is dropped (even if that happened before the waiter started waiting).
    fetching: HashMap<String, tokio::sync::watch::Receiver<()>>,
}

/// Held by the request that fetches a key for everyone: when it drops (the response stored,
/// or not storable, or failed), the waiters look again.
pub struct Fetching {
    cache: Arc<Cache>,
    key: String,
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for Fetching {
    fn drop(&mut self) {
        self.cache.lock().fetching.remove(&self.key);
    }
}

impl Cache {
    /// A cache of at most `max_bytes`, serving stale entries on errors for `stale_if_error`
    /// unless a response says otherwise.
    pub fn new(max_bytes: usize, stale_if_error: Duration) -> Cache {
        Cache {
            max_bytes,
            stale_if_error,
            state: Mutex::new(State::default()),
            counts: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the cache serves this request at all: `GET` and `HEAD` only.
    pub fn serves(method: &Method) -> bool {
        method == Method::GET || method == Method::HEAD
    }

    /// The key of a request: host, path and query (`HEAD` shares `GET`'s entries).
    pub fn key(parts: &hyper::http::request::Parts) -> String {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        format!("{host}{path}")
    }

    /// The entry for `request`, if any variant of `key` matches it.
    pub fn lookup(
        &self,
        key: &str,
        request: &hyper::http::request::Parts,
        now: SystemTime,
    ) -> Found {
        let mut state = self.lock();
        state.tick += 1;
        let tick = state.tick;
        let Some(variants) = state.entries.get(key) else {
            return Found::Nothing;
        };
        let mut expired = None;
        for entry in variants {
            match entry.policy.before_request(request, now) {
                BeforeRequest::Fresh(head) => {
                    entry.used.store(tick, Ordering::Relaxed);
                    return Found::Fresh(Arc::clone(entry), head);
                }
                BeforeRequest::Stale {
                    request: conditional,
                    matches: true,
                } => expired = Some((Arc::clone(entry), conditional.headers)),
                BeforeRequest::Stale { matches: false, .. } => {}
            }
        }
        match expired {
            Some((entry, headers)) => Found::Expired(entry, headers),
            None => Found::Nothing,
        }
    }

    /// Becomes the one request that fetches `key` (`Ok`), or gets what to wait on while
    /// another does (`Err`: `changed()` returns once that one is done).
    pub fn fetch(
        self: &Arc<Self>,
        key: &str,
    ) -> Result<Fetching, tokio::sync::watch::Receiver<()>> {
        let mut state = self.lock();
        if let Some(waiting) = state.fetching.get(key) {
            return Err(waiting.clone());
        }
        let (done, waiting) = tokio::sync::watch::channel(());
        state.fetching.insert(key.to_owned(), waiting);
        Ok(Fetching {
            cache: Arc::clone(self),
            key: key.to_owned(),
            _done: done,
        })
    }

    /// The policy for storing `response` to `request`, if it may be stored: storable for a
    /// shared cache, no `Set-Cookie`, a `200`, and small enough to fit (an eighth of the cache
    /// at most, so one response cannot empty it).
    pub fn policy_for(
        &self,
        request: &hyper::http::request::Parts,
        response: &hyper::http::response::Parts,
        now: SystemTime,
    ) -> Option<(CachePolicy, usize)> {
        if response.status != StatusCode::OK || response.headers.contains_key(header::SET_COOKIE) {
            return None;
        }
        let limit = self.max_bytes / 8;
        let length = response
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if length.is_some_and(|len| len > limit) {
            return None;
        }
        let options = CacheOptions {
            shared: true,
            ..CacheOptions::default()
        };
        let policy = CachePolicy::new_options(request, response, now, options);
        policy.is_storable().then_some((policy, limit))
    }

    /// Stores a complete response under `key`, evicting the least recently used entries to
    /// stay within the byte bound; a variant its `Vary` matches the same way is replaced.
    pub fn store(
        &self,
        key: &str,
        policy: CachePolicy,
        request: &hyper::http::request::Parts,
        response: &hyper::http::response::Parts,
        body: Bytes,
        now: SystemTime,
    ) {
        let stale_if_error =
            directive(&response.headers, "stale-if-error").unwrap_or(self.stale_if_error);
        let entry = Arc::new(Entry {
            fresh_until: now + policy.time_to_live(now),
            policy,
            status: response.status,
            headers: response.headers.clone(),
            body,
            stale_if_error,
            variant: variant(&response.headers, &request.headers),
            used: AtomicU64::new(0),
        });
        let size = entry.size();
        let mut state = self.lock();
        state.tick += 1;
        entry.used.store(state.tick, Ordering::Relaxed);
        let variants = state.entries.entry(key.to_owned()).or_default();
        // The same variant (the same request fields that Vary names) is replaced.
        let replaced: Vec<Arc<Entry>> = variants
            .extract_if(.., |old| old.variant == entry.variant)
            .collect();
        variants.push(entry);
        let freed: usize = replaced.iter().map(|e| e.size()).sum();
        state.bytes = state.bytes + size - freed;
        while state.bytes > self.max_bytes {
            if !evict_one(&mut state) {
                break;
            }
        }
    }

    /// A `304` answered a revalidation of `entry`: the refreshed entry, with the headers to
    /// answer with, stored in its place.
    pub fn refresh(
        &self,
        key: &str,
        entry: &Arc<Entry>,
        request: &hyper::http::request::Parts,
        response: &hyper::http::response::Parts,
        now: SystemTime,
    ) -> Option<hyper::http::response::Parts> {
        match entry.policy.after_response(request, response, now) {
            AfterResponse::NotModified(policy, head) => {
                self.store(key, policy, request, &head, entry.body.clone(), now);
                Some(head)
            }
            AfterResponse::Modified(..) => None,
        }
    }

    /// Whether `entry` may still be served because the backend failed: at most its
    /// `stale-if-error` past its freshness.
    pub fn usable_on_error(&self, entry: &Entry, now: SystemTime) -> bool {
        now.duration_since(entry.fresh_until)
            .map_or(true, |staleness| staleness <= entry.stale_if_error)
    }

    pub fn count(&self, outcome: Outcome) {
        let i = Outcome::ALL.iter().position(|&o| o == outcome).unwrap_or(0);
        inc(&self.counts[i]);
    }

    /// The byte bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The cache's lines of `/metrics`.
    pub fn metrics(&self) -> String {
        let mut e = Exposition::default();
        let name = "httplb_cache_total";
        e.metric(name, "counter", "Requests by what the cache did (X-Cache).");
        for (outcome, n) in Outcome::ALL.iter().zip(&self.counts) {
            e.sample(name, &[("result", outcome.as_str())], get(n));
        }
        let name = "httplb_cache_bytes";
        e.metric(name, "gauge", "Bytes the cache holds, headers included.")
            .sample(name, &[], self.bytes());
        let name = "httplb_cache_max_bytes";
        e.metric(name, "gauge", "The cache's bound.")
            .sample(name, &[], self.max_bytes);
        e.finish()
    }
}

/// The request's values of the fields the response's `Vary` names, in a canonical order.
fn variant(response: &hyper::HeaderMap, request: &hyper::HeaderMap) -> String {
    let mut names: Vec<String> = response
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
        .iter()
        .map(|n| {
            let values: Vec<&str> = request
                .get_all(n.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            format!("{n}={}", values.join(","))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn evict_one(state: &mut State) -> bool {
    let oldest = state
        .entries
        .iter()
        .flat_map(|(k, vs)| {
            vs.iter()
                .enumerate()
                .map(move |(i, e)| (e.used.load(Ordering::Relaxed), k.clone(), i))
        })
        .min_by_key(|(used, ..)| *used);
    let Some((_, key, i)) = oldest else {
        return false;
    };
    if let Some(variants) = state.entries.get_mut(&key) {
        let gone = variants.remove(i);
        state.bytes = state.bytes.saturating_sub(gone.size());
        if variants.is_empty() {
            state.entries.remove(&key);
        }
    }
    true
}

/// `name=N` (seconds) in a response's `Cache-Control`.
fn directive(headers: &hyper::HeaderMap, name: &str) -> Option<Duration> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| {
            let (k, v) = d.trim().split_once('=')?;
            (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().parse::<u64>().ok())?
        })
        .map(Duration::from_secs)
}
