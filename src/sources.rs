//! Where backends come from besides the config file, behind one trait: servers that registered
//! themselves (chapter 14, [`crate::registry::Registry`]) and servers found in etcd (chapter
//! 15, [`crate::discovery::Discovered`]). [`Sources`] merges them in one place, for the plan
//! (which backends), the admin listener (where each came from, what is stale) and the task
//! that rebuilds the balancer when one of them changes; a source added later touches its own
//! file and this list, nothing else.

use std::sync::Arc;

use crate::backend::BackendSpec;
use crate::discovery::Discovered;
use crate::registry::Registry;

/// One place backends come from.
pub trait Source: Send + Sync {
    /// What `GET /backends` calls its backends' origin: `registered`, `etcd`.
    fn label(&self) -> &'static str;
    /// Whether it is configured: a balancer with a source on may start with no backend, and
    /// starts no demo servers in their place.
    fn is_on(&self) -> bool;
    /// Its backends now.
    fn specs(&self) -> Vec<BackendSpec>;
    /// Whether it holds the backend named `name`.
    fn holds(&self, name: &str) -> bool;
    /// Its lines of `/metrics`, each name under `prefix` (`tcplb`, `httplb`).
    fn metrics(&self, prefix: &str) -> String;
}

/// Every source, in the order a name is looked up: the first to hold a name has it.
#[derive(Clone, Default)]
pub struct Sources {
    pub registry: Arc<Registry>,
    pub discovered: Arc<Discovered>,
}

impl Sources {
    fn all(&self) -> [&dyn Source; 2] {
        [&*self.registry, &*self.discovered]
    }

    /// Whether any source is configured.
    pub fn expect_backends(&self) -> bool {
        self.all().iter().any(|s| s.is_on())
    }

    /// Every source's backends, one per name (a registered server wins over an etcd key of
    /// the same name: one name, one backend, one cookie identity); those without a name all.
    pub fn specs(&self) -> Vec<BackendSpec> {
        let mut seen = std::collections::HashSet::new();
        let mut specs = Vec::new();
        for source in self.all() {
            for spec in source.specs() {
                match &spec.name {
                    Some(name) if !seen.insert(name.clone()) => {}
                    _ => specs.push(spec),
                }
            }
        }
        specs
    }

    /// Where the backend named `name` came from, or `None`: the config.
    pub fn source_of(&self, name: &str) -> Option<&'static str> {
        self.all()
            .into_iter()
            .find(|s| s.holds(name))
            .map(|s| s.label())
    }

    /// Resolves when any source's set of backends changed.
    pub async fn changed(&self) {
        tokio::select! {
            () = self.registry.changed() => {}
            () = self.discovered.changed() => {}
        }
    }

    /// Every source's lines of `/metrics`.
    pub fn metrics(&self, prefix: &str) -> String {
        self.all().iter().map(|s| s.metrics(prefix)).collect()
    }
}
