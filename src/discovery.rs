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
//!   metric say so); it reconnects with backoff, and resumes watching from the last revision
//!   it saw, so nothing that happened meanwhile is missed;
//! * that revision compacted away: it lists the prefix again;
//! * a malformed key: one log line, and the others are used.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::etcd::{Etcd, Event, Watched};
use crate::registry::{self, Registry};

/// The first wait before trying etcd again; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where the backends are kept.
pub struct Source {
    pub etcd: Etcd,
    /// Keys start with it; a backend's name is what follows the last `/`.
    pub prefix: String,
}

/// Lists the prefix once, for the first plan: `true` when it could. A balancer whose etcd
/// answers starts with its backends; one whose etcd does not starts without them and lets
/// [`follow`] catch up.
pub async fn load(source: &Source, registry: &Registry) -> Option<i64> {
    match source.etcd.range(&source.prefix).await {
        Ok((revision, kvs)) => {
            registry.etcd_replace(parse_all(source, kvs));
            tracing::info!(
                "etcd {}: {} backends under {}",
                source.etcd.endpoints(),
                registry.etcd_len(),
                source.prefix
            );
            Some(revision)
        }
        Err(e) => {
            registry.set_etcd_stale(true);
            tracing::warn!(
                "etcd {} cannot be read ({e}): starting without its backends, retrying",
                source.etcd.endpoints()
            );
            None
        }
    }
}

/// Keeps `registry`'s etcd backends in step with the prefix, for the life of the process.
/// `revision` is what [`load`] read, if it could.
pub async fn follow(source: Arc<Source>, registry: Arc<Registry>, mut revision: Option<i64>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let from = match revision {
            Some(r) => r,
            None => match source.etcd.range(&source.prefix).await {
                Ok((r, kvs)) => {
                    registry.etcd_replace(parse_all(&source, kvs));
                    r
                }
                Err(e) => {
                    lost(&registry, &source, &e.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        revision = Some(from);
        let mut watch = match source.etcd.watch(&source.prefix, from + 1).await {
            Ok(watch) => watch,
            Err(e) => {
                lost(&registry, &source, &e.to_string());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if registry.etcd_stale() {
            tracing::info!(
                "etcd {} reached again: watching {} from revision {}",
                source.etcd.endpoints(),
                source.prefix,
                from + 1
            );
        }
        registry.set_etcd_stale(false);
        backoff = MIN_BACKOFF;
        loop {
            match watch.next().await {
                Ok(Some(Watched::Events {
                    revision: r,
                    events,
                })) => {
                    for event in events {
                        apply(&source, &registry, event);
                    }
                    revision = Some(r);
                }
                Ok(Some(Watched::Compacted)) => {
                    tracing::warn!("etcd compacted the revisions being watched: listing again");
                    revision = None;
                    break;
                }
                Ok(None) => {
                    lost(&registry, &source, "the watch ended");
                    break;
                }
                Err(e) => {
                    lost(&registry, &source, &e.to_string());
                    break;
                }
            }
        }
    }
}

/// Notes that etcd is out of reach (logged once per outage).
fn lost(registry: &Registry, source: &Source, why: &str) {
    if !registry.etcd_stale() {
        tracing::warn!(
            "etcd {} lost ({why}): serving the last {} known backends, reconnecting",
            source.etcd.endpoints(),
            registry.etcd_len()
        );
    }
    registry.set_etcd_stale(true);
}

fn apply(source: &Source, registry: &Registry, event: Event) {
    match event {
        Event::Put { key, value } => {
            let Some(name) = name_of(source, &key) else {
                return;
            };
            match registry::parse_backend(name, &value) {
                Ok(spec) => registry.etcd_set(name, Some(spec)),
                Err(why) => {
                    tracing::warn!("etcd key {key} skipped: {why}");
                    // A key that turned bad takes its old backend out.
                    registry.etcd_set(name, None);
                }
            }
        }
        Event::Delete { key } => {
            if let Some(name) = name_of(source, &key) {
                registry.etcd_set(name, None);
            }
        }
    }
}

/// Every well-formed key, by name; each malformed one is one log line.
fn parse_all(
    source: &Source,
    kvs: Vec<(String, Vec<u8>)>,
) -> BTreeMap<String, crate::backend::BackendSpec> {
    let mut found = BTreeMap::new();
    for (key, value) in kvs {
        let Some(name) = name_of(source, &key) else {
            continue;
        };
        match registry::parse_backend(name, &value) {
            Ok(spec) => {
                found.insert(name.to_owned(), spec);
            }
            Err(why) => tracing::warn!("etcd key {key} skipped: {why}"),
        }
    }
    found
}

/// The backend's name: the key's last segment, directly under the prefix (deeper keys are
/// someone else's).
fn name_of<'k>(source: &Source, key: &'k str) -> Option<&'k str> {
    let rest = key.strip_prefix(&source.prefix)?;
    match rest.contains('/') || rest.is_empty() {
        true => None,
        false => Some(rest),
    }
}
