//! Backends from etcd (chapter 15): list a prefix, then watch it from the revision read,
//! so every balancer pointed at the same prefix sees the same servers within milliseconds of a
//! change.
//!
//! Each key under the prefix is one backend, its value chapter 14's JSON (`{"address": …}`),
//! its name the key's last segment. Servers put their key with a lease
//! (`dummy-server --register etcd://…`); when a server dies, the lease expires, etcd deletes
//! the key, and the watch tells every balancer.
//!
//! etcd misbehaving must never stop the data path:
//!
//! * unreachable at start-up: the balancer starts with its file's backends and keeps trying;
//! * lost while running: the last known set keeps serving (`/health` and the `etcd_stale`
//!   metric say so); it reconnects with backoff and lists the prefix again, so nothing that
//!   happened meanwhile is missed, whatever happened to the store;
//! * replaced while we were away (its data lost, so its revisions restarted, or another
//!   cluster on the same address): resuming a watch from our old revision would wait for a
//!   revision the new store has not reached, and miss every change until then; listing again
//!   on every reconnect cannot be fooled that way, and the log says when the store changed;
//! * a watch that stays open but goes silent (a partition, a frozen etcd): a connection that
//!   says nothing looks exactly like a prefix where nothing changes, so every
//!   `CHECK_EVERY` (5 s) a cheap read must come back within the call timeout; one that does not
//!   marks discovery stale and starts again;
//! * a malformed key or value (one that is not UTF-8, not JSON, not an address): one log line
//!   and a count in `etcd_skipped_total`, and the others are used.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::BackendSpec;
use crate::etcd::{Etcd, Event, Header, Watched};
use crate::metrics::Exposition;
use crate::registry;

/// How often a watch that is open must prove etcd still answers.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The first wait before trying etcd again; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The backends found in etcd, by name, and how discovery goes: chapter 15's state, beside
/// (not inside) chapter 14's registry; one of the balancer's `Sources`.
#[derive(Default)]
pub struct Discovered {
    backends: Mutex<BTreeMap<String, BackendSpec>>,
    /// Discovery is configured: the balancer may start with no backend.
    on: AtomicBool,
    /// etcd cannot be reached: the backends are the last ones known.
    stale: AtomicBool,
    /// Keys or values under the prefix that could not be used.
    skipped: AtomicU64,
    changed: tokio::sync::Notify,
}

impl Discovered {
    /// Discovery is on (`--etcd` given).
    pub fn turn_on(&self) {
        self.on.store(true, Ordering::Relaxed);
    }

    /// Replaces every backend (after listing the prefix); notifies when that changed.
    pub fn replace(&self, found: BTreeMap<String, BackendSpec>) {
        let mut backends = lock(&self.backends);
        if *backends != found {
            *backends = found;
            self.changed.notify_one();
        }
    }

    /// One backend added or changed (`Some`), or removed (`None`); notifies on a change.
    pub fn set(&self, name: &str, spec: Option<BackendSpec>) {
        let mut backends = lock(&self.backends);
        let changed = match spec {
            Some(spec) => backends.insert(name.to_owned(), spec.clone()).as_ref() != Some(&spec),
            None => backends.remove(name).is_some(),
        };
        if changed {
            self.changed.notify_one();
        }
    }

    /// How many backends etcd holds now.
    pub fn len(&self) -> usize {
        lock(&self.backends).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks discovery as cut off (`true`: serving the last known set) or back.
    pub fn set_stale(&self, stale: bool) {
        self.stale.store(stale, Ordering::Relaxed);
    }

    pub fn stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    fn count_skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// Resolves once the set of backends changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

impl crate::sources::Source for Discovered {
    fn label(&self) -> &'static str {
        "etcd"
    }

    fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    fn specs(&self) -> Vec<BackendSpec> {
        lock(&self.backends).values().cloned().collect()
    }

    fn holds(&self, name: &str) -> bool {
        lock(&self.backends).contains_key(name)
    }

    fn metrics(&self, prefix: &str) -> String {
        if !self.is_on() {
            return String::new();
        }
        let mut e = Exposition::default();
        let name = format!("{prefix}_etcd_backends");
        e.metric(
            &name,
            "gauge",
            "Backends found under the etcd prefix (chapter 15).",
        )
        .sample(&name, &[], self.len());
        let name = format!("{prefix}_etcd_stale");
        e.metric(
            &name,
            "gauge",
            "1 while etcd cannot be reached and the last known backends are served.",
        )
        .sample(&name, &[], u8::from(self.stale()));
        let name = format!("{prefix}_etcd_skipped_total");
        e.metric(
            &name,
            "counter",
            "etcd keys or values skipped because they could not be used (not UTF-8, not \
             JSON, not an address); each is also one log line.",
        )
        .sample(&name, &[], self.skipped.load(Ordering::Relaxed));
        e.finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where the backends are kept.
pub struct Source {
    pub etcd: Etcd,
    /// Keys start with it; a backend's name is what follows the last `/`.
    pub prefix: String,
}

/// Lists the prefix once, for the first plan: the store's header when it could. A balancer
/// whose etcd answers starts with its backends; one whose etcd does not starts without them
/// and lets [`follow`] catch up.
pub async fn load(source: &Source, found: &Discovered) -> Option<Header> {
    match source.etcd.range(&source.prefix).await {
        Ok((header, kvs)) => {
            found.replace(parse_all(source, found, kvs));
            tracing::info!(
                "etcd {}: {} backends under {}",
                source.etcd.endpoints(),
                found.len(),
                source.prefix
            );
            Some(header)
        }
        Err(e) => {
            found.set_stale(true);
            tracing::warn!(
                "etcd {} cannot be read ({e}): starting without its backends, retrying",
                source.etcd.endpoints()
            );
            None
        }
    }
}

/// Keeps `found` (etcd's backends) in step with the prefix, for the life of the process.
/// `listed` is what [`load`] read, if it could.
pub async fn follow(source: Arc<Source>, found: Arc<Discovered>, mut listed: Option<Header>) {
    let mut backoff = MIN_BACKOFF;
    // The newest header seen, from whichever store: what a replaced store is told apart by.
    let mut seen = listed.clone();
    loop {
        let header = match listed.take() {
            Some(header) => header,
            None => match source.etcd.range(&source.prefix).await {
                Ok((header, kvs)) => {
                    if let Some(why) = seen.as_ref().and_then(|s| header.replaces(s)) {
                        tracing::warn!(
                            "etcd {}: the store was replaced ({why}): its listing replaces every \
                             backend it gave before",
                            source.etcd.endpoints()
                        );
                    }
                    found.replace(parse_all(&source, &found, kvs));
                    header
                }
                Err(e) => {
                    lost(&found, &source, &e.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        seen = Some(header.clone());
        let mut watch = match source.etcd.watch(&source.prefix, header.revision + 1).await {
            Ok(watch) => watch,
            Err(e) => {
                lost(&found, &source, &e.to_string());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if found.stale() {
            tracing::info!(
                "etcd {} reached again: {} backends under {}, watching from revision {}",
                source.etcd.endpoints(),
                found.len(),
                source.prefix,
                header.revision + 1
            );
        }
        found.set_stale(false);
        backoff = MIN_BACKOFF;
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.reset();
        // Whatever ends this loop, the next turn lists the prefix again (`listed` is `None`).
        loop {
            tokio::select! {
                next = watch.next() => match next {
                    Ok(Some(Watched::Events { revision, events })) => {
                        for event in events {
                            apply(&source, &found, event);
                        }
                        if let Some(seen) = &mut seen {
                            seen.revision = seen.revision.max(revision);
                        }
                    }
                    Ok(Some(Watched::Compacted)) => {
                        tracing::warn!("etcd compacted the revisions being watched: listing again");
                        break;
                    }
                    Ok(None) => {
                        lost(&found, &source, "the watch ended");
                        break;
                    }
                    Err(e) => {
                        lost(&found, &source, &e.to_string());
                        break;
                    }
                },
                _ = check.tick() => match source.etcd.probe(&source.prefix, &watch).await {
                    Ok(now) => {
                        let replaced = seen.as_ref().and_then(|s| now.replaces(s));
                        if let Some(why) = replaced {
                            // Still connected, so no outage to report: just start again.
                            tracing::warn!(
                                "etcd {}: the store was replaced ({why}): listing again",
                                source.etcd.endpoints()
                            );
                            break;
                        }
                        if let Some(seen) = &mut seen {
                            seen.revision = seen.revision.max(now.revision);
                        }
                    }
                    Err(e) => {
                        lost(
                            &found,
                            &source,
                            &format!("the watch is open but etcd did not answer a check: {e}"),
                        );
                        break;
                    }
                },
            }
        }
    }
}

/// Notes that etcd is out of reach (logged once per outage).
fn lost(found: &Discovered, source: &Source, why: &str) {
    if !found.stale() {
        tracing::warn!(
            "etcd {} lost ({why}): serving the last {} known backends, reconnecting",
            source.etcd.endpoints(),
            found.len()
        );
    }
    found.set_stale(true);
}

fn apply(source: &Source, found: &Discovered, event: Event) {
    match event {
        Event::Put { key, value } => {
            let Some(name) = name_of(source, found, &key) else {
                return;
            };
            match registry::parse_backend(name, &value) {
                Ok(spec) => found.set(name, Some(spec)),
                Err(why) => {
                    skipped(found, &key, &why);
                    // A key that turned bad takes its old backend out.
                    found.set(name, None);
                }
            }
        }
        Event::Delete { key } => {
            // A key that is not UTF-8 never became a backend: nothing to remove, nothing to log.
            let name = std::str::from_utf8(&key).ok();
            if let Some(name) = name.and_then(|key| name_in(source, key)) {
                found.set(name, None);
            }
        }
    }
}

/// Every well-formed key, by name; each malformed one is one log line.
fn parse_all(
    source: &Source,
    found: &Discovered,
    kvs: Vec<(Vec<u8>, Vec<u8>)>,
) -> BTreeMap<String, crate::backend::BackendSpec> {
    let mut backends = BTreeMap::new();
    for (key, value) in kvs {
        let Some(name) = name_of(source, found, &key) else {
            continue;
        };
        match registry::parse_backend(name, &value) {
            Ok(spec) => {
                backends.insert(name.to_owned(), spec);
            }
            Err(why) => skipped(found, &key, &why),
        }
    }
    backends
}

/// One log line and one count for a key we cannot use. The key is escaped: anyone who can
/// write under the prefix must not be able to forge log lines with a CR or LF in a key.
fn skipped(found: &Discovered, key: &[u8], why: &str) {
    tracing::warn!("etcd key {} skipped: {why}", key.escape_ascii());
    found.count_skipped();
}

/// The backend's name: the key's last segment, directly under the prefix (deeper keys are
/// someone else's). A key under the prefix that is not UTF-8 cannot name a backend: skipped
/// (its delete needs nothing either, as it never became one).
fn name_of<'k>(source: &Source, found: &Discovered, key: &'k [u8]) -> Option<&'k str> {
    match std::str::from_utf8(key) {
        Ok(key) => name_in(source, key),
        Err(_) => {
            skipped(found, key, "a key that is not UTF-8");
            None
        }
    }
}

fn name_in<'k>(source: &Source, key: &'k str) -> Option<&'k str> {
    let rest = key.strip_prefix(&source.prefix)?;
    match rest.contains('/') || rest.is_empty() {
        true => None,
        false => Some(rest),
    }
}
