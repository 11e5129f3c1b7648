//! A response cache in memory (chapter 16, seed 004's "caching static resources"), following
//! RFC 9111 as a *shared* cache.
//!
//! What may be stored and for how long, which stored response answers which request (its
//! `Vary`), when it must be revalidated: those rules are many and easy to get dangerously
//! wrong, so they come from a well-kept crate, `http-cache-semantics` (its `CachePolicy`, with
//! `shared: true`: `private` is never stored, `s-maxage` counts, a response to a request with
//! `Authorization` is stored only if it says `public` or `s-maxage`). Where that crate reads
//! HTTP wrongly, this module corrects what it hands it and what it gets back, instead of
//! replacing it ([`for_policy`], [`Cache::answer_head`]):
//!
//! * `Cache-Control` directive names are case-insensitive (RFC 9111 §5.2): `Max-Age=60` is
//!   handed over as `max-age=60`;
//! * dates in the three formats of RFC 9110 §5.6.7 are accepted (the crate knows only one) and
//!   an invalid `Expires` means "already expired" (RFC 9111 §5.3); an `Age` that is not one
//!   number is invalid (RFC 9111 §5.1) and makes the response stale, not fresh;
//! * `CDN-Cache-Control` (RFC 9213), which a CDN-like shared cache such as this one honours, is
//!   handed over in place of `Cache-Control`;
//! * a hit goes out with the stored fields as received, its `Date` included (the crate writes
//!   a new `Date` in a format that is not an HTTP date), and `Age` saying how old it is
//!   (RFC 9111 §4, §5.1).
//!
//! Around the rules, what a proxy needs:
//!
//! * **never a response that sets a cookie**: a stored `Set-Cookie` would be handed to every
//!   later user. That is the trap of this feature: the cache that gives one user's session to
//!   the next. The affinity cookie of chapter 12 is never stored either: it is added after;
//! * **a byte bound that counts what an entry really holds** (its body, its fields twice, the
//!   fields of the request the policy keeps, its key, and a fixed cost per entry and per field
//!   measured with a counting allocator in `tests/16_cache_memory.rs`), with the copies of
//!   answers still streaming taken from the same budget before they are made ([`Reservation`]);
//! * **eviction in O(log n)**: the least recently used entry is the first of an ordered index,
//!   not the result of a scan of every entry under the lock; a hit only marks its entry used
//!   (CLOCK's second chance, under a shared lock), so hits do not wait for one another;
//! * **variants found by one lookup**: a key's variants are indexed by the request fields its
//!   `Vary` names, and a key keeps at most [`MAX_VARIANTS`], so one URL whose `Vary` names a
//!   field a client chooses cannot fill the cache or slow every other lookup;
//! * **invalidation** (RFC 9111 §4.4): a successful unsafe request (`POST`, `PUT`, `DELETE`, any
//!   method not known to be safe) removes what is stored for its URL, and for its answer's
//!   `Location` and `Content-Location` on the same host;
//! * **collapsed misses** (nginx's `proxy_cache_lock`): while one request fetches a key, the
//!   others for that key wait for it instead of all going to the backend;
//! * **revalidation**: an expired entry with a validator is asked for with `If-None-Match` /
//!   `If-Modified-Since`, and a `304` refreshes it (RFC 9111 §4.3.4);
//! * **conditional requests answered**: a client's `If-None-Match` or `If-Modified-Since` that
//!   a fresh entry satisfies gets `304` without a body (RFC 9111 §4.3.2);
//! * **stale if error**: when the backend fails (5xx, or cannot be reached), an expired entry
//!   is served for up to `stale-if-error` seconds past its freshness, from the response's own
//!   `Cache-Control: stale-if-error=N` or the configured default.
//!
//! * **parts of an answer** (RFC 9111 §3.3, §3.4): a `206` with one range and a known length is
//!   stored as a part ([`Span`]) that answers the ranges it holds; a newer part of the same
//!   representation (the same strong `ETag`) that overlaps or touches it is combined with it,
//!   and parts that add up to the whole become a whole answer, which then answers any request;
//!
//! * **stale while revalidate** (RFC 5861 §3): an entry expired for less than its
//!   `stale-while-revalidate=N` is served at once, and one request in the background (one
//!   per key, however many clients arrive meanwhile) revalidates or replaces it.
//!
//! Every answer says what happened in `X-Cache`: `HIT`, `MISS`, `EXPIRED` (revalidated or
//! fetched again), `STALE` (served on a backend error), `UPDATING` (served stale while it is
//! revalidated in the background, as nginx calls it), `BYPASS` (a request the cache does not
//! serve: not `GET`/`HEAD`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_cache_semantics::{BeforeRequest, CacheOptions, CachePolicy};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};

use crate::metrics::{Exposition, get, inc};

mod serve;

/// The field naming what the cache did.
pub const X_CACHE: &str = "x-cache";
/// How long a collapsed request waits for the one fetching its key.
pub const COLLAPSE_WAIT: Duration = Duration::from_secs(10);
/// The most variants one key keeps: past it, storing a new one evicts that key's least
/// recently used. A `Vary` on a field the client chooses (`Vary: X-Anything`) could otherwise
/// make one URL hold any number of entries.
pub const MAX_VARIANTS: usize = 32;
/// What an entry costs besides its bytes: the entry itself, its `Arc`, its place in the key's
/// map, in the LRU index, the policy's fixed part, and the header maps' tables. Measured with
/// a counting allocator (`tests/16_cache_memory.rs`) and rounded up.
const ENTRY_COST: usize = 1024;
/// What one stored field costs besides its name and value: its slot in a header map (hash,
/// links, the name's and value's representations), and a value's own allocation.
const FIELD_COST: usize = 112;
/// The statuses whose caching rules this cache (through its policy) implements, for
/// `must-understand`: the policy's own list. A 206 is not among them because the policy never
/// sees one: this module stores parts itself (RFC 9111 §3.3, §3.4) and hands the policy the
/// whole answer's head ([`Cache::policy_for`]).
const UNDERSTOOD: [u16; 14] = [
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];
/// `Age` for an answer whose `Age` field is invalid: the largest age RFC 9111 §1.2.2 lets a
/// cache send, so the answer is never taken as fresh.
const INVALID_AGE: &str = "2147483648";

/// What the cache did for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Expired,
    Stale,
    Updating,
    Bypass,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Hit,
        Outcome::Miss,
        Outcome::Expired,
        Outcome::Stale,
        Outcome::Updating,
        Outcome::Bypass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Expired => "EXPIRED",
            Outcome::Stale => "STALE",
            Outcome::Updating => "UPDATING",
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
    /// The response's fields as received (hop-by-hop fields removed).
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it stops being fresh, and how long past that it may serve on a backend error, or
    /// while a request in the background revalidates it.
    fresh_until: SystemTime,
    stale_if_error: Duration,
    stale_while_revalidate: Duration,
    /// The request's values of the fields the response's `Vary` names: the variant's name
    /// under its key.
    variant: Arc<str>,
    /// Its place in the LRU index: a tick of the cache's clock.
    used: AtomicU64,
    /// Used since it was last placed in the index: eviction gives it a second chance (CLOCK),
    /// so that a hit marks it without the write lock.
    referenced: AtomicBool,
    /// What it costs the byte bound.
    size: usize,
    /// `Some` for a part of an answer (a stored `206`): where its body sits in the whole.
    pub partial: Option<Span>,
}

/// Where a stored part (a `206`, RFC 9111 §3.3) sits in the whole answer: the whole's first
/// byte it holds (its body holds the bytes from there on), and the whole's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub first: u64,
    pub complete: u64,
}

impl Entry {
    /// Where its body sits in the whole answer: all of it, unless it is a part.
    pub fn span(&self) -> Span {
        self.partial.unwrap_or(Span {
            first: 0,
            complete: self.body.len() as u64,
        })
    }

    /// Whether it can answer `request`. A whole answer answers any request; a part only a `GET`
    /// for one range that lies inside it, whose `If-Range` (if any) names it (RFC 9111 §3.3:
    /// "a cache MUST NOT use an incomplete response to answer requests unless ... the request
    /// is partial and specifies a range wholly within the incomplete response").
    pub fn answers(&self, request: &hyper::http::request::Parts) -> bool {
        use crate::http::static_files::{Ranged, byte_range};
        let Some(span) = self.partial else {
            return true;
        };
        let Some(range) = request.headers.get(header::RANGE) else {
            return false;
        };
        let end = span.first + self.body.len() as u64;
        request.method == Method::GET
            && if_range_holds(&request.headers, &self.headers)
            && matches!(byte_range(range, span.complete),
                Ranged::Part(first, last) if first >= span.first && last < end)
    }
}

/// What a lookup found.
pub enum Found {
    /// Fresh: answer with it. The head to answer with (its `Age` updated).
    Fresh(Arc<Entry>, hyper::http::response::Parts),
    /// Expired but usable after revalidation (or on an error): the conditional fields to send.
    Expired(Arc<Entry>, HeaderMap),
    Nothing,
}

/// The stored variants of one key.
struct Variants {
    /// The field names its `Vary` lists (lower case, sorted): the same for every variant, as
    /// they come from the latest answer stored for the key.
    vary: Vec<HeaderName>,
    by_variant: HashMap<Arc<str>, Arc<Entry>>,
}

/// Shards of the cache, each under its own lock, by a hash of the key: a flood of stores on
/// one URL locks one shard, and hits on the others do not wait for it (nor share a lock's
/// cache line with it).
const SHARDS: usize = 16;

/// The cache: entries by key, each key with the variants its `Vary` tells apart.
pub struct Cache {
    max_bytes: usize,
    stale_if_error: Duration,
    /// Hits read a shard under a shared lock; stores, evictions and invalidations write.
    shards: Vec<RwLock<Shard>>,
    /// Bytes of the stored entries and of the reservations, across shards: what the bound
    /// holds ([`Cache::claim`]).
    used: AtomicUsize,
    /// The reservations' part of `used`.
    reserved: AtomicUsize,
    /// The shard the next eviction starts from, round robin.
    victim: AtomicUsize,
    /// Keys being fetched now: a waiter clones the receiver, which wakes when the fetcher's
    /// sender is dropped (even if that happened before the waiter started waiting).
    fetching: Mutex<HashMap<String, tokio::sync::watch::Receiver<()>>>,
    counts: [AtomicU64; Outcome::ALL.len()],
    /// Stores abandoned because the budget had no room for their copy.
    abandoned: AtomicU64,
}

#[derive(Default)]
struct Shard {
    keys: HashMap<Arc<str>, Variants>,
    /// Every entry by when it was placed, oldest first: eviction takes the first.
    lru: BTreeMap<u64, (Arc<str>, Arc<str>)>,
    tick: u64,
}

impl Shard {
    /// Removes the least recently used entry: the bytes it freed, or `None` when there is
    /// none. An entry used since it was placed goes to the back instead, once (CLOCK's second
    /// chance): every entry is moved at most once per pass, so an eviction costs O(log n)
    /// amortised.
    fn evict_one(&mut self) -> Option<usize> {
        while let Some((_, (key, variant))) = self.lru.pop_first() {
            let entry = self
                .keys
                .get(&key)
                .and_then(|v| v.by_variant.get(&variant))
                .cloned();
            match entry {
                Some(entry) if entry.referenced.swap(false, Ordering::Relaxed) => {
                    self.tick += 1;
                    entry.used.store(self.tick, Ordering::Relaxed);
                    self.lru.insert(self.tick, (key, variant));
                }
                _ => return Some(self.remove_variant(&key, &variant, false)),
            }
        }
        None
    }

    /// Removes one variant of `key` (and its LRU place, unless it was just popped): the bytes
    /// it freed.
    fn remove_variant(&mut self, key: &str, variant: &str, in_lru: bool) -> usize {
        let Some(variants) = self.keys.get_mut(key) else {
            return 0;
        };
        let mut freed = 0;
        if let Some(gone) = variants.by_variant.remove(variant) {
            freed = gone.size;
            if in_lru {
                self.lru.remove(&gone.used.load(Ordering::Relaxed));
            }
        }
        if variants.by_variant.is_empty() {
            self.keys.remove(key);
        }
        freed
    }

    /// Removes every variant of `key`: the bytes they freed.
    fn remove_key(&mut self, key: &str) -> usize {
        let Some(variants) = self.keys.remove(key) else {
            return 0;
        };
        let mut freed = 0;
        for gone in variants.by_variant.values() {
            freed += gone.size;
            self.lru.remove(&gone.used.load(Ordering::Relaxed));
        }
        freed
    }
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
        let mut fetching = self
            .cache
            .fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        fetching.remove(&self.key);
    }
}

/// Bytes of the cache's budget promised to the copy of an answer that is still streaming, so
/// that copies in flight count against `--cache BYTES` before they are made. Given back when
/// dropped; [`Cache::store`] turns it into the entry's own size.
pub struct Reservation {
    cache: Arc<Cache>,
    /// The shard its entry will go to.
    near: usize,
    bytes: usize,
    /// The most this copy may grow to (an eighth of the cache).
    limit: usize,
}

impl Reservation {
    /// Bytes promised so far.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Promises `more` bytes, evicting stored entries to make room; `false` when the copy
    /// would pass its limit or the budget has no room (the store is then abandoned and the
    /// client still served).
    pub fn grow(&mut self, more: usize) -> bool {
        if self.bytes + more > self.limit || !self.cache.claim(more, self.near) {
            return false;
        }
        self.cache.reserved.fetch_add(more, Ordering::Relaxed);
        self.bytes += more;
        true
    }
}

impl Reservation {
    /// Gives the budget back and counts a store given up.
    pub fn abandon(self) {
        inc(&self.cache.abandoned);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.cache.reserved.fetch_sub(self.bytes, Ordering::Relaxed);
            self.cache.release(self.bytes);
        }
    }
}

/// A response the cache will store once its body has streamed: its policy and the budget its
/// copy may use.
pub struct Storing {
    pub policy: CachePolicy,
    pub reservation: Reservation,
}

impl Cache {
    /// A cache of at most `max_bytes`, serving stale entries on errors for `stale_if_error`
    /// unless a response says otherwise.
    pub fn new(max_bytes: usize, stale_if_error: Duration) -> Cache {
        Cache {
            max_bytes,
            stale_if_error,
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            used: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
            victim: AtomicUsize::new(0),
            fetching: Mutex::new(HashMap::new()),
            counts: Default::default(),
            abandoned: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &str) -> &RwLock<Shard> {
        &self.shards[Self::shard_of(key)]
    }

    fn shard_of(key: &str) -> usize {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        hasher.finish() as usize % SHARDS
    }

    fn write(shard: &RwLock<Shard>) -> std::sync::RwLockWriteGuard<'_, Shard> {
        shard.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(shard: &RwLock<Shard>) -> std::sync::RwLockReadGuard<'_, Shard> {
        shard.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `bytes` of the bound, evicting (from shard `near` first, whose memory the caller
    /// is about to touch anyway, then the others round robin; never while the caller holds a
    /// shard's lock) until they fit; `false` when even an empty cache, with the reservations
    /// it has promised, has no room.
    fn claim(&self, bytes: usize, near: usize) -> bool {
        loop {
            let claimed = self
                .used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    (used + bytes <= self.max_bytes).then_some(used + bytes)
                })
                .is_ok();
            if claimed {
                return true;
            }
            if !self.evict_somewhere(near) {
                return false;
            }
        }
    }

    /// Gives `bytes` of the bound back.
    fn release(&self, bytes: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    /// Evicts one entry from shard `near`, or else from the next shard that has one.
    fn evict_somewhere(&self, near: usize) -> bool {
        for i in 0..=SHARDS {
            let at = match i {
                0 => near,
                _ => self.victim.fetch_add(1, Ordering::Relaxed) % SHARDS,
            };
            let freed = Self::write(&self.shards[at]).evict_one();
            if let Some(freed) = freed {
                self.release(freed);
                crate::memory::note_freed(freed);
                return true;
            }
        }
        false
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
        // An absolute-form target's authority is the host (RFC 9112 §3.2.2).
        let host = parts.uri.authority().map_or(host, |a| a.as_str());
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        format!("{host}{path}")
    }

    /// The entry for `request`, if a variant of `key` matches it: one lookup under the lock
    /// (the variant by the fields its `Vary` names), the policy's rules outside it.
    pub fn lookup(
        &self,
        key: &str,
        request: &hyper::http::request::Parts,
        now: SystemTime,
    ) -> Found {
        let entry = {
            let shard = Self::read(self.shard(key));
            let Some(variants) = shard.keys.get(key) else {
                return Found::Nothing;
            };
            let name = variant(&variants.vary, &request.headers);
            let Some(entry) = variants.by_variant.get(name.as_str()).cloned() else {
                return Found::Nothing;
            };
            entry.referenced.store(true, Ordering::Relaxed);
            entry
        };
        // The request's own directives, with their names in lower case too (RFC 9111 §5.2).
        let lowered;
        let request = match request.headers.contains_key(header::CACHE_CONTROL) {
            true => {
                let mut copy = request.clone();
                let directives = lower_directives(&copy.headers, &header::CACHE_CONTROL);
                copy.headers.insert(header::CACHE_CONTROL, directives);
                lowered = copy;
                &lowered
            }
            false => request,
        };
        match entry.policy.before_request(request, now) {
            BeforeRequest::Fresh(head) => {
                let head = Self::answer_head(&entry, &head);
                Found::Fresh(entry, head)
            }
            BeforeRequest::Stale {
                request: conditional,
                matches: true,
            } => Found::Expired(entry, conditional.headers),
            BeforeRequest::Stale { matches: false, .. } => Found::Nothing,
        }
    }

    /// The head a stored answer goes out with: its fields as received (its own `Date`
    /// included), and `Age` from the policy (RFC 9111 §4, §5.1). The crate's head would carry
    /// the fields as they were normalised for it, and a `Date` of now in a format that is not
    /// an HTTP date.
    pub fn answer_head(
        entry: &Entry,
        policy_head: &hyper::http::response::Parts,
    ) -> hyper::http::response::Parts {
        let mut head = entry_parts(entry);
        if let Some(age) = policy_head.headers.get(header::AGE) {
            head.headers.insert(header::AGE, age.clone());
        }
        head
    }

    /// Becomes the one request that fetches `key` (`Ok`), or gets what to wait on while
    /// another does (`Err`: `changed()` returns once that one is done).
    pub fn fetch(
        self: &Arc<Self>,
        key: &str,
    ) -> Result<Fetching, tokio::sync::watch::Receiver<()>> {
        let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiting) = fetching.get(key) {
            return Err(waiting.clone());
        }
        let (done, waiting) = tokio::sync::watch::channel(());
        fetching.insert(key.to_owned(), waiting);
        Ok(Fetching {
            cache: Arc::clone(self),
            key: key.to_owned(),
            _done: done,
        })
    }

    /// How to store `response` to `request`, if it may be stored: storable for a shared cache
    /// by the policy (any status it understands: those cacheable by default, RFC 9110 §15.1,
    /// and any other with explicit freshness), no `Set-Cookie`, no `Vary: *`, and a copy that
    /// fits in an eighth of the cache, with its budget reserved now.
    pub fn policy_for(
        self: &Arc<Self>,
        request: &hyper::http::request::Parts,
        response: &hyper::http::response::Parts,
        now: SystemTime,
    ) -> Option<Storing> {
        // 1xx are never stored. Nor is an answer to a HEAD: it has no body, so stored under
        // the key it would displace the GET's entry (or part) with one no GET can use.
        if request.method != Method::GET
            || response.status.is_informational()
            || response.headers.contains_key(header::SET_COOKIE)
            || vary_names(&response.headers).is_none()
        {
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
        // A part (RFC 9111 §3.3): only one range of a known length can be stored and combined.
        // The crate has no rules for 206, so its policy is the whole answer's, which the part's
        // fields describe: the same representation, the same freshness.
        let whole;
        let response = match response.status == StatusCode::PARTIAL_CONTENT {
            true => {
                content_range(&response.headers)?;
                let mut head = response.clone();
                head.status = StatusCode::OK;
                head.headers.remove(header::CONTENT_RANGE);
                head.headers.remove(header::CONTENT_LENGTH);
                whole = head;
                &whole
            }
            false => response,
        };
        let policy = new_policy(request, response, now);
        if !policy.is_storable() {
            return None;
        }
        let mut reservation = Reservation {
            cache: Arc::clone(self),
            near: Self::shard_of(&Self::key(request)),
            bytes: 0,
            limit,
        };
        if let Some(length) = length
            && !reservation.grow(length)
        {
            inc(&self.abandoned);
            return None;
        }
        Some(Storing {
            policy,
            reservation,
        })
    }

    /// Stores a complete response under `key`, evicting the least recently used entries to
    /// stay within the byte bound; the same variant (the same values of the fields its `Vary`
    /// names) is replaced. `reservation`, the budget its copy used, becomes the entry's size.
    #[allow(clippy::too_many_arguments)]
    pub fn store(
        &self,
        key: &str,
        policy: CachePolicy,
        request: &hyper::http::request::Parts,
        response: &hyper::http::response::Parts,
        body: Bytes,
        now: SystemTime,
        reservation: Option<Reservation>,
    ) {
        let Some(vary) = vary_names(&response.headers) else {
            return;
        };
        let (combined, body, partial) = match response.status == StatusCode::PARTIAL_CONTENT {
            true => match self.combine(key, &vary, request, response, body) {
                Some(part) => part,
                None => return,
            },
            false => (None, body, None),
        };
        let response = combined.as_ref().unwrap_or(response);
        let stale_if_error =
            directive(&response.headers, "stale-if-error").unwrap_or(self.stale_if_error);
        let stale_while_revalidate =
            directive(&response.headers, "stale-while-revalidate").unwrap_or_default();
        let variant: Arc<str> = Arc::from(variant(&vary, &request.headers));
        let size = ENTRY_COST
            + body.len()
            + key.len() * 2
            + variant.len() * 2
            + request.uri.to_string().len()
            // The fields as received, and the policy's copy of them, and of the request's.
            + 2 * fields_size(&response.headers)
            + fields_size(&policy_request_fields(request, &vary));
        if size > self.max_bytes / 8 {
            return;
        }
        let entry = Arc::new(Entry {
            fresh_until: now + policy.time_to_live(now),
            policy,
            status: response.status,
            headers: detached(&response.headers),
            body,
            stale_if_error,
            stale_while_revalidate,
            variant: Arc::clone(&variant),
            used: AtomicU64::new(0),
            referenced: AtomicBool::new(false),
            size,
            partial,
        });
        // The copy's promise becomes the entry's size.
        if let Some(mut reservation) = reservation {
            self.reserved
                .fetch_sub(reservation.bytes, Ordering::Relaxed);
            self.release(reservation.bytes);
            reservation.bytes = 0;
        }
        let near = Self::shard_of(key);
        if !self.claim(size, near) {
            return;
        }
        let mut shard = Self::write(&self.shards[near]);
        let mut freed = 0;
        let key: Arc<str> = match shard.keys.get_key_value(key) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(key),
        };
        // A new `Vary` for the key: the old variants were told apart by other fields.
        if shard.keys.get(&key).is_some_and(|v| v.vary != vary) {
            freed += shard.remove_key(&key);
        }
        freed += shard.remove_variant(&key, &variant, true);
        // At most MAX_VARIANTS per key: the key's least recently placed variant makes room.
        if let Some(variants) = shard.keys.get(&key)
            && variants.by_variant.len() >= MAX_VARIANTS
            && let Some(oldest) = variants
                .by_variant
                .values()
                .min_by_key(|e| e.used.load(Ordering::Relaxed))
                .map(|e| Arc::clone(&e.variant))
        {
            freed += shard.remove_variant(&key, &oldest, true);
        }
        shard.tick += 1;
        let tick = shard.tick;
        entry.used.store(tick, Ordering::Relaxed);
        shard
            .lru
            .insert(tick, (Arc::clone(&key), Arc::clone(&variant)));
        shard
            .keys
            .entry(key)
            .or_insert_with(|| Variants {
                vary,
                by_variant: HashMap::new(),
            })
            .by_variant
            .insert(variant, entry);
        drop(shard);
        self.release(freed);
        crate::memory::note_freed(freed);
    }

    /// RFC 9111 §3.4: a `206` (`response`, its part `body`) to store under `key`, combined with
    /// the part already stored for the same variant when both are of one representation (the
    /// same strong `ETag`, the same length) and they overlap or touch; where they overlap, the
    /// newer bytes win, and the fields are the newer response's. Otherwise the new part replaces
    /// the old one. Returns the head to store (a `206` with its `Content-Range`, or a `200` once
    /// the parts add up to the whole answer), its body and its span; `None` when there is
    /// nothing to store: a `Content-Range` that does not describe the body (a backend that said
    /// one thing and sent another is not stored), or a whole answer already stored, which
    /// answers every range itself.
    #[allow(clippy::type_complexity)]
    fn combine(
        &self,
        key: &str,
        vary: &[HeaderName],
        request: &hyper::http::request::Parts,
        response: &hyper::http::response::Parts,
        body: Bytes,
    ) -> Option<(Option<hyper::http::response::Parts>, Bytes, Option<Span>)> {
        let (first, last, complete) = content_range(&response.headers)?;
        if last - first + 1 != body.len() as u64 {
            return None;
        }
        let stored = {
            let shard = Self::read(self.shard(key));
            let variants = shard.keys.get(key).filter(|v| v.vary == vary);
            let name = variant(vary, &request.headers);
            variants.and_then(|v| v.by_variant.get(name.as_str()).cloned())
        };
        let (mut first, mut bytes) = (first, body);
        if let Some(stored) = stored {
            let span = stored.partial?;
            let (old_first, old_end) = (span.first, span.first + stored.body.len() as u64);
            let new_end = first + bytes.len() as u64;
            let same = span.complete == complete
                && strong_etag(&stored.headers).is_some()
                && strong_etag(&stored.headers) == strong_etag(&response.headers);
            if same && first <= old_end && old_first <= new_end {
                let mut merged =
                    Vec::with_capacity((old_end.max(new_end) - old_first.min(first)) as usize);
                if old_first < first {
                    merged.extend_from_slice(&stored.body[..(first - old_first) as usize]);
                }
                merged.extend_from_slice(&bytes);
                if old_end > new_end {
                    merged.extend_from_slice(&stored.body[(new_end - old_first) as usize..]);
                }
                first = first.min(old_first);
                bytes = Bytes::from(merged);
            }
        }
        let mut head = response.clone();
        let len = bytes.len() as u64;
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if first == 0 && len == complete {
            head.status = StatusCode::OK;
            head.headers.remove(header::CONTENT_RANGE);
            return Some((Some(head), bytes, None));
        }
        let range = format!("bytes {first}-{}/{complete}", first + len - 1);
        head.headers
            .insert(header::CONTENT_RANGE, HeaderValue::from_str(&range).ok()?);
        Some((Some(head), bytes, Some(Span { first, complete })))
    }

    /// A `304` answered a revalidation of `entry`: the stored fields updated with the 304's
    /// (RFC 9111 §3.2, §4.3.4), stored in its place with a new policy; the head to answer
    /// with.
    pub fn refresh(
        &self,
        key: &str,
        entry: &Arc<Entry>,
        request: &hyper::http::request::Parts,
        not_modified: &hyper::http::response::Parts,
        now: SystemTime,
    ) -> hyper::http::response::Parts {
        let mut head = entry_parts(entry);
        freshen(&mut head.headers, &not_modified.headers);
        let policy = new_policy(request, &head, now);
        self.store(key, policy, request, &head, entry.body.clone(), now, None);
        head
    }

    /// RFC 9111 §4.4: a successful answer to an unsafe request invalidates what is stored for
    /// its URL (`key`), and for its `Location` and `Content-Location` when they are on the same
    /// host. `host` is the request's.
    pub fn invalidate(&self, key: &str, host: &str, response: &HeaderMap) {
        let mut freed = Self::write(self.shard(key)).remove_key(key);
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(location) = response.get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let same_host_path = match location.split_once("://") {
                Some((_, rest)) => {
                    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                    authority.eq_ignore_ascii_case(host).then_some(path)
                }
                None if location.starts_with('/') => Some(location),
                None => None,
            };
            if let Some(path) = same_host_path {
                let path = if path.is_empty() { "/" } else { path };
                let key = format!("{host}{path}");
                freed += Self::write(self.shard(&key)).remove_key(&key);
            }
        }
        self.release(freed);
        crate::memory::note_freed(freed);
    }

    /// Whether `entry` may still be served because the backend failed: at most its
    /// `stale-if-error` past its freshness.
    pub fn usable_on_error(&self, entry: &Entry, now: SystemTime) -> bool {
        now.duration_since(entry.fresh_until)
            .map_or(true, |staleness| staleness <= entry.stale_if_error)
    }

    /// RFC 5861 §3: whether `entry`, expired, may answer `request` at once while a request in
    /// the background revalidates it: expired for less than its `stale-while-revalidate`, and
    /// asked for by a request that set no `Cache-Control` or `Pragma` of its own (a client's
    /// `no-cache` or `max-age=0` asks for a validated answer, RFC 9111 §5.2.1, which a stale
    /// one is not).
    pub fn usable_while_revalidating(
        &self,
        entry: &Entry,
        request: &HeaderMap,
        now: SystemTime,
    ) -> bool {
        let expired_for = now.duration_since(entry.fresh_until);
        expired_for.is_ok_and(|stale| stale < entry.stale_while_revalidate)
            && !request.contains_key(header::CACHE_CONTROL)
            && !request.contains_key(header::PRAGMA)
    }

    /// The head a stale entry answers with: as stored, with its `Age` now (RFC 9111 §5.1).
    pub fn stale_head(entry: &Entry, now: SystemTime) -> hyper::http::response::Parts {
        let mut head = entry_parts(entry);
        let age = entry.policy.age(now).as_secs();
        head.headers.insert(header::AGE, HeaderValue::from(age));
        head
    }

    pub fn count(&self, outcome: Outcome) {
        // `counts` has one slot per member of `ALL`.
        let i = Outcome::ALL.iter().position(|&o| o == outcome).unwrap_or(0);
        inc(&self.counts[i]);
    }

    /// The byte bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Bytes held now by stored entries, and promised to copies still streaming.
    pub fn bytes(&self) -> (usize, usize) {
        let reserved = self.reserved.load(Ordering::Relaxed);
        let used = self.used.load(Ordering::Relaxed);
        (used.saturating_sub(reserved), reserved)
    }

    /// Entries stored now.
    pub fn entries(&self) -> usize {
        self.shards.iter().map(|s| Self::read(s).lru.len()).sum()
    }

    /// The cache's lines of `/metrics`.
    pub fn metrics(&self) -> String {
        let mut e = Exposition::default();
        let name = "httplb_cache_total";
        e.metric(name, "counter", "Requests by what the cache did (X-Cache).");
        for (outcome, n) in Outcome::ALL.iter().zip(&self.counts) {
            e.sample(name, &[("result", outcome.as_str())], get(n));
        }
        let (bytes, reserved) = self.bytes();
        let name = "httplb_cache_bytes";
        e.metric(
            name,
            "gauge",
            "Bytes the cache holds: bodies, fields, keys and each entry's fixed cost.",
        )
        .sample(name, &[], bytes);
        let name = "httplb_cache_reserved_bytes";
        e.metric(
            name,
            "gauge",
            "Bytes promised to answers being copied into the cache as they stream.",
        )
        .sample(name, &[], reserved);
        let name = "httplb_cache_entries";
        e.metric(name, "gauge", "Answers stored, every variant counted.")
            .sample(name, &[], self.entries());
        let name = "httplb_cache_max_bytes";
        e.metric(name, "gauge", "The cache's bound.")
            .sample(name, &[], self.max_bytes);
        let name = "httplb_cache_abandoned_total";
        e.metric(
            name,
            "counter",
            "Stores given up because the budget had no room for their copy.",
        )
        .sample(name, &[], get(&self.abandoned));
        e.finish()
    }
}

/// A stored answer's head as received.
/// The head of a stored answer, as stored (its own `Age`, not updated).
pub fn entry_parts(entry: &Entry) -> hyper::http::response::Parts {
    let mut parts = hyper::Response::new(()).into_parts().0;
    parts.status = entry.status;
    parts.headers = entry.headers.clone();
    parts
}

/// A `206`'s `Content-Range` when it names one range of a known length (RFC 9110 §14.4):
/// its first and last byte and the whole's length; `None` for anything else (`*` for the
/// length, a range that does not fit in it).
fn content_range(headers: &HeaderMap) -> Option<(u64, u64, u64)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, complete) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let digits = |s: &str| match !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        true => s.parse::<u64>().ok(),
        false => None,
    };
    let (first, last, complete) = (digits(first)?, digits(last)?, digits(complete)?);
    (first <= last && last < complete).then_some((first, last, complete))
}

/// The `ETag` of `headers` when it is a strong one (RFC 9110 §8.8.3): `None` for a weak one or
/// none. Only a strong validator says two parts are of the same bytes (RFC 9111 §3.4).
fn strong_etag(headers: &HeaderMap) -> Option<&[u8]> {
    let etag = headers.get(header::ETAG)?.as_bytes().trim_ascii();
    etag.starts_with(b"\"").then_some(etag)
}

/// RFC 9110 §13.1.5: whether `If-Range` (if any) still names the stored answer whose fields are
/// `stored`: an entity tag must match its `ETag` strongly (a weak one never does), a date must
/// be exactly its `Last-Modified`.
pub fn if_range_holds(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(condition) = request.get(header::IF_RANGE) else {
        return true;
    };
    let Ok(condition) = condition.to_str() else {
        return false;
    };
    let condition = condition.trim();
    if condition.starts_with('"') {
        let etag = stored.get(header::ETAG).and_then(|v| v.to_str().ok());
        return etag.is_some_and(|etag| etag.trim() == condition);
    }
    let modified = stored
        .get(header::LAST_MODIFIED)
        .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
    let asked = httpdate::parse_http_date(condition).ok();
    modified.is_some() && modified == asked
}

/// The policy for `response` to `request`, from what [`for_policy`] hands the crate.
fn new_policy(
    request: &hyper::http::request::Parts,
    response: &hyper::http::response::Parts,
    now: SystemTime,
) -> CachePolicy {
    let options = CacheOptions {
        shared: true,
        ..CacheOptions::default()
    };
    let vary = vary_names(&response.headers).unwrap_or_default();
    let mut kept = hyper::Request::new(()).into_parts().0;
    kept.method = request.method.clone();
    kept.uri = detached_uri(&request.uri);
    kept.headers = detached(&policy_request_fields(request, &vary));
    let mut normalised = hyper::Response::new(()).into_parts().0;
    normalised.status = response.status;
    normalised.headers = detached(&for_policy(response.status, &response.headers));
    CachePolicy::new_options(&kept, &normalised, now, options)
}

/// `headers` with every value copied into an allocation of its own.
///
/// What hyper parses is not copied: each value (and a URI's text) is a slice of the
/// connection's read buffer, which it keeps alive. Stored as they came, a 300-byte answer's
/// fields held that whole buffer (8 to 16 KiB) for as long as the entry lived: measured, 2,000
/// small entries the cache counted as 6.8 MB grew the process by 23.7 MiB
/// (`benches/compare/cache_rss.py`). A copy per stored answer is what the byte bound needs.
fn detached(headers: &HeaderMap) -> HeaderMap {
    let mut copy = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        // `from_bytes` copies; it cannot fail on bytes that already made a valid value.
        if let Ok(mut owned) = HeaderValue::from_bytes(value.as_bytes()) {
            owned.set_sensitive(value.is_sensitive());
            copy.append(name.clone(), owned);
        }
    }
    copy
}

/// [`detached`] for a URI: its text copied, so that it holds no request buffer.
fn detached_uri(uri: &hyper::Uri) -> hyper::Uri {
    hyper::Uri::try_from(uri.to_string()).unwrap_or_else(|_| uri.clone())
}

/// The request fields the policy needs, and no others: a request's `Cookie`, `User-Agent` and
/// the like would otherwise be kept with every entry (the crate keeps the whole request).
fn policy_request_fields(request: &hyper::http::request::Parts, vary: &[HeaderName]) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in [header::HOST, header::CACHE_CONTROL, header::PRAGMA]
        .iter()
        .chain(vary)
    {
        for value in request.headers.get_all(name) {
            kept.append(name.clone(), value.clone());
        }
    }
    // Only its presence counts (a shared cache stores an authorized answer only when told
    // it may): the credentials themselves are not kept.
    if request.headers.contains_key(header::AUTHORIZATION) {
        kept.insert(header::AUTHORIZATION, HeaderValue::from_static("present"));
    }
    if kept.contains_key(header::CACHE_CONTROL) {
        let directives = lower_directives(&kept, &header::CACHE_CONTROL);
        kept.insert(header::CACHE_CONTROL, directives);
    }
    kept
}

/// A response's fields as the crate must read them (see the module's header).
pub fn for_policy(status: StatusCode, response: &HeaderMap) -> HeaderMap {
    let mut fields = response.clone();
    // RFC 9213: a CDN-like shared cache may take its directives from `CDN-Cache-Control`,
    // which then wins over `Cache-Control` and `Expires`.
    let cdn = HeaderName::from_static("cdn-cache-control");
    if fields.contains_key(&cdn) {
        let value = lower_directives(&fields, &cdn);
        fields.remove(header::EXPIRES);
        fields.insert(header::CACHE_CONTROL, value);
    } else if fields.contains_key(header::CACHE_CONTROL) {
        let value = lower_directives(&fields, &header::CACHE_CONTROL);
        fields.insert(header::CACHE_CONTROL, value);
    }
    // RFC 9111 §5.2.2.3: `must-understand` lets a cache that understands the status's
    // caching rules ignore the `no-store` beside it (for older caches), and keeps every other
    // cache from storing the answer at all.
    let directives = fields
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(directives) = directives
        && directives.split(',').any(|d| d.trim() == "must-understand")
    {
        let value = match UNDERSTOOD.contains(&status.as_u16()) {
            true => directives
                .split(',')
                .map(str::trim)
                .filter(|d| *d != "no-store" && *d != "must-understand")
                .collect::<Vec<_>>()
                .join(", "),
            false => "no-store".to_owned(),
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            fields.insert(header::CACHE_CONTROL, value);
        }
    }
    // Dates in any of the three formats of RFC 9110 §5.6.7, as IMF-fixdate. An invalid
    // `Expires` means already expired (RFC 9111 §5.3); an invalid `Date` or `Last-Modified`
    // is as if absent.
    for name in [header::DATE, header::EXPIRES, header::LAST_MODIFIED] {
        let Some(value) = fields.get(&name) else {
            continue;
        };
        let parsed = value
            .to_str()
            .ok()
            .and_then(|v| httpdate::parse_http_date(v).ok());
        match (parsed, &name) {
            (Some(date), _) => {
                if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(date)) {
                    fields.insert(name, v);
                }
            }
            (None, n) if *n == header::EXPIRES => {
                fields.insert(name, HeaderValue::from_static("0"));
            }
            (None, _) => {
                fields.remove(name);
            }
        }
    }
    // RFC 9111 §5.1: `Age` is one non-negative integer. Anything else is invalid, and must not
    // make the answer look younger than it is.
    let ages: Vec<&HeaderValue> = fields.get_all(header::AGE).iter().collect();
    let valid = match ages.as_slice() {
        [] => true,
        [one] => !one.is_empty() && one.as_bytes().iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !valid {
        fields.insert(header::AGE, HeaderValue::from_static(INVALID_AGE));
    }
    fields
}

/// Every line of `name` as one value, each directive's name in lower case (RFC 9111 §5.2:
/// directive names are case-insensitive), its argument as it was.
fn lower_directives(fields: &HeaderMap, name: &HeaderName) -> HeaderValue {
    let joined: Vec<String> = fields
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| match d.split_once('=') {
            Some((k, v)) => format!("{}={}", k.trim().to_ascii_lowercase(), v.trim()),
            None => d.to_ascii_lowercase(),
        })
        .collect();
    HeaderValue::from_str(&joined.join(", ")).unwrap_or(HeaderValue::from_static(""))
}

/// The field names a response's `Vary` lists, lower case and sorted; `None` for `Vary: *`
/// (or a name that is not one), which no later request can match.
fn vary_names(response: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in response.get_all(header::VARY) {
        for name in value.to_str().ok()?.split(',').map(str::trim) {
            if name.is_empty() {
                continue;
            }
            if name == "*" {
                return None;
            }
            names.push(HeaderName::from_bytes(name.as_bytes()).ok()?);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// A request's values of the fields `vary` names: the variant it asks for.
fn variant(vary: &[HeaderName], request: &HeaderMap) -> String {
    let mut out = String::new();
    for name in vary {
        out.push_str(name.as_str());
        out.push('=');
        for (i, value) in request.get_all(name).iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
        out.push('\n');
    }
    out
}

/// What a header map's fields cost: their bytes and each one's slot.
fn fields_size(fields: &HeaderMap) -> usize {
    fields
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + FIELD_COST)
        .sum()
}

/// RFC 9111 §3.2: the stored fields updated with a `304`'s, except those that describe the
/// stored body itself.
fn freshen(stored: &mut HeaderMap, not_modified: &HeaderMap) {
    let kept = [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::CONTENT_RANGE,
        header::TRANSFER_ENCODING,
    ];
    for name in not_modified.keys() {
        if kept.contains(name) {
            continue;
        }
        stored.remove(name);
        for value in not_modified.get_all(name) {
            stored.append(name.clone(), value.clone());
        }
    }
}

/// `name=N` (seconds) in a response's `Cache-Control`.
fn directive(headers: &HeaderMap, name: &str) -> Option<Duration> {
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

/// RFC 9110 §13.1.1, §13.1.3 and RFC 9111 §4.3.2: whether a client's conditional `GET` or
/// `HEAD` is satisfied by the stored answer's validators, so that it is answered `304`.
/// `If-None-Match` (weak comparison) wins over `If-Modified-Since`, which counts only without
/// it and only when it is a valid date.
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        // Weak comparison: the opaque tags alike, `W/` or not.
        let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| tag.trim() == "*" || opaque(tag) == opaque(etag));
    }
    let Some(since) = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok())
    else {
        return false;
    };
    // A date in the future is invalid (RFC 9110 §13.1.3).
    if since > SystemTime::now() {
        return false;
    }
    let modified = stored
        .get(header::LAST_MODIFIED)
        .or_else(|| stored.get(header::DATE))
        .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
    modified.is_some_and(|modified| modified <= since)
}

/// The fields a `304` carries from the stored answer (RFC 9110 §15.4.5).
pub fn not_modified_fields(stored: &HeaderMap) -> HeaderMap {
    let mut fields = HeaderMap::new();
    for name in [
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::VARY,
        header::AGE,
        header::LAST_MODIFIED,
    ] {
        for value in stored.get_all(&name) {
            fields.append(name.clone(), value.clone());
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn what_the_policy_reads_is_normalised() {
        let f = for_policy(
            StatusCode::OK,
            &fields(&[
                ("cache-control", "Max-Age=60, No-Cache"),
                ("expires", "Sunday, 06-Nov-94 08:49:37 GMT"),
                ("date", "Sun Nov  6 08:49:37 1994"),
                ("age", "7200, 0"),
            ]),
        );
        assert_eq!(f["cache-control"], "max-age=60, no-cache");
        assert_eq!(f["expires"], "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(f["date"], "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(f["age"], INVALID_AGE);
        let f = for_policy(
            StatusCode::OK,
            &fields(&[("expires", "Sun, 06  Nov 1994 08:49:37 GMT")]),
        );
        assert_eq!(f["expires"], "0");
        let f = for_policy(
            StatusCode::OK,
            &fields(&[
                ("cache-control", "max-age=600"),
                ("cdn-cache-control", "No-Store"),
            ]),
        );
        assert_eq!(f["cache-control"], "no-store");
        let understood = |status| {
            let f = for_policy(
                status,
                &fields(&[("cache-control", "max-age=60, must-understand, no-store")]),
            );
            f["cache-control"].to_str().unwrap().to_owned()
        };
        assert_eq!(understood(StatusCode::OK), "max-age=60");
        assert_eq!(understood(StatusCode::PARTIAL_CONTENT), "no-store");
    }

    #[test]
    fn conditional_requests_match_by_weak_etag_then_by_date() {
        let stored = fields(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(not_modified(
            &fields(&[("if-none-match", "W/\"v1\"")]),
            &stored
        ));
        assert!(not_modified(
            &fields(&[("if-none-match", "\"x\", \"v1\"")]),
            &stored
        ));
        assert!(not_modified(&fields(&[("if-none-match", "*")]), &stored));
        assert!(!not_modified(
            &fields(&[("if-none-match", "\"v2\"")]),
            &stored
        ));
        // If-None-Match wins: a matching date does not count beside a tag that does not.
        assert!(!not_modified(
            &fields(&[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT")
            ]),
            &stored
        ));
        assert!(not_modified(
            &fields(&[("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT")]),
            &stored
        ));
        assert!(!not_modified(
            &fields(&[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")]),
            &stored
        ));
        assert!(!not_modified(
            &fields(&[("if-modified-since", "Sun, 06 Nov 2994 08:49:37 GMT")]),
            &stored
        ));
    }

    fn request(path: &str, pairs: &[(&str, &str)]) -> hyper::http::request::Parts {
        let mut r = hyper::Request::builder().uri(path);
        for (n, v) in pairs {
            r = r.header(*n, *v);
        }
        r.body(()).unwrap().into_parts().0
    }

    fn response(pairs: &[(&str, &str)]) -> hyper::http::response::Parts {
        let mut r = hyper::Response::builder().status(200);
        for (n, v) in pairs {
            r = r.header(*n, *v);
        }
        r.body(()).unwrap().into_parts().0
    }

    fn put(
        cache: &Arc<Cache>,
        path: &str,
        req: &[(&str, &str)],
        res: &[(&str, &str)],
        body: &'static [u8],
    ) {
        let req = request(path, req);
        let res = response(res);
        let now = SystemTime::now();
        let storing = cache.policy_for(&req, &res, now).expect("storable");
        let key = Cache::key(&req);
        cache.store(
            &key,
            storing.policy,
            &req,
            &res,
            Bytes::from_static(body),
            now,
            Some(storing.reservation),
        );
    }

    /// What hyper parses is a slice of its read buffer; what is stored must not be, or every
    /// small entry holds a whole buffer (issue 26's memory bound). Values sliced from one
    /// 16 KiB "read buffer", as hyper makes them, are stored; none of the entry's then points
    /// into it.
    #[test]
    fn a_stored_answer_holds_no_buffer_it_was_parsed_from() {
        let mut res = response(&[("etag", "\"v1\"")]);
        // A read buffer, and a value that is a slice of it.
        let mut bytes = vec![b'x'; 16 * 1024];
        bytes[100..110].copy_from_slice(b"max-age=60");
        let read = Bytes::from(bytes);
        let cc = HeaderValue::from_maybe_shared(read.slice(100..110)).unwrap();
        res.headers.insert(header::CACHE_CONTROL, cc);
        let range = read.as_ptr() as usize..read.as_ptr() as usize + read.len();
        let inside = |v: &HeaderValue| range.contains(&(v.as_bytes().as_ptr() as usize));
        assert!(
            inside(&res.headers[header::CACHE_CONTROL]),
            "the test's premise"
        );
        assert!(detached(&res.headers).values().all(|v| !inside(v)));

        let cache = Arc::new(Cache::new(1 << 20, Duration::ZERO));
        let req = request("/pinned", &[]);
        let now = SystemTime::now();
        let storing = cache.policy_for(&req, &res, now).expect("storable");
        let key = Cache::key(&req);
        let body = Bytes::from_static(b"small");
        cache.store(
            &key,
            storing.policy,
            &req,
            &res,
            body,
            now,
            Some(storing.reservation),
        );
        match cache.lookup(&key, &req, now) {
            Found::Fresh(entry, _) => {
                assert!(entry.headers.values().all(|v| !inside(v)));
                assert_eq!(entry.headers[header::CACHE_CONTROL], "max-age=60");
            }
            _ => panic!("stored"),
        }
    }

    #[test]
    fn the_bound_holds_and_the_least_recently_used_go_first() {
        let cache = Arc::new(Cache::new(64 * 1024, Duration::ZERO));
        let public = [("cache-control", "max-age=60")];
        for i in 0..200 {
            put(
                &cache,
                &format!("/{i}"),
                &[("host", "h")],
                &public,
                b"0123456789",
            );
            let (bytes, reserved) = cache.bytes();
            assert!(bytes + reserved <= 64 * 1024, "{bytes} + {reserved}");
        }
        let now = SystemTime::now();
        assert!(matches!(
            cache.lookup("h/199", &request("/199", &[("host", "h")]), now),
            Found::Fresh(..)
        ));
        assert!(matches!(
            cache.lookup("h/0", &request("/0", &[("host", "h")]), now),
            Found::Nothing
        ));
        let variants: usize = cache
            .shards
            .iter()
            .map(|s| {
                Cache::read(s)
                    .keys
                    .values()
                    .map(|v| v.by_variant.len())
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(cache.entries(), variants);
    }

    #[test]
    fn one_key_keeps_at_most_max_variants() {
        let cache = Arc::new(Cache::new(1 << 24, Duration::ZERO));
        for i in 0..(MAX_VARIANTS * 3) {
            let v = i.to_string();
            put(
                &cache,
                "/v",
                &[("host", "h"), ("x-pick", &v)],
                &[("cache-control", "max-age=60"), ("vary", "X-Pick")],
                b"x",
            );
        }
        assert_eq!(cache.entries(), MAX_VARIANTS);
        let now = SystemTime::now();
        let last = (MAX_VARIANTS * 3 - 1).to_string();
        assert!(matches!(
            cache.lookup(
                "h/v",
                &request("/v", &[("host", "h"), ("x-pick", &last)]),
                now
            ),
            Found::Fresh(..)
        ));
        assert!(matches!(
            cache.lookup(
                "h/v",
                &request("/v", &[("host", "h"), ("x-pick", "0")]),
                now
            ),
            Found::Nothing
        ));
    }

    #[test]
    fn reservations_count_against_the_bound() {
        let cache = Arc::new(Cache::new(80 * 1024, Duration::ZERO));
        let big = response(&[("cache-control", "max-age=60"), ("content-length", "10000")]);
        let req = request("/big", &[("host", "h")]);
        let held: Vec<Storing> = (0..8)
            .filter_map(|_| cache.policy_for(&req, &big, SystemTime::now()))
            .collect();
        assert_eq!(held.len(), 8, "8 × 10,000 fit in 80 KiB");
        assert!(
            cache.policy_for(&req, &big, SystemTime::now()).is_none(),
            "a ninth does not"
        );
        drop(held);
        assert_eq!(cache.bytes(), (0, 0));
    }

    #[test]
    fn an_unsafe_request_invalidates_its_url_and_its_locations() {
        let cache = Arc::new(Cache::new(1 << 20, Duration::ZERO));
        for path in ["/a", "/b", "/c", "/d"] {
            put(
                &cache,
                path,
                &[("host", "h")],
                &[("cache-control", "max-age=60")],
                b"x",
            );
        }
        cache.invalidate(
            "h/a",
            "h",
            &fields(&[("location", "http://h/b"), ("content-location", "/c")]),
        );
        cache.invalidate("h/none", "h", &fields(&[("location", "http://other/d")]));
        let now = SystemTime::now();
        for (path, there) in [("/a", false), ("/b", false), ("/c", false), ("/d", true)] {
            let found = cache.lookup(&format!("h{path}"), &request(path, &[("host", "h")]), now);
            assert_eq!(matches!(found, Found::Fresh(..)), there, "{path}");
        }
    }
}
