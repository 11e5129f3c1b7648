//! Backends from etcd (chapter 15): started here, kept in `Setup::sources` beside the
//! registry of chapter 14 (`lb::sources` merges them).

use std::sync::Arc;

use crate::config::Config;

use super::plan::Setup;

/// The etcd prefix unless configured.
pub const DEFAULT_ETCD_PREFIX: &str = "/lb/backends/";

/// Chapter 15: when the flags or the config name etcd endpoints, lists the prefix once (so a
/// balancer whose etcd answers starts with its backends) and returns what [`follow_etcd`]
/// needs to keep them current. Read at start-up only: new endpoints take a restart.
pub(crate) async fn start_etcd(
    setup: &Setup,
    config: &Config,
) -> anyhow::Result<Option<(Arc<crate::discovery::Source>, Option<crate::etcd::Header>)>> {
    let Some(flags) = &setup.step.production else {
        return Ok(None);
    };
    let urls = match flags.etcd.is_empty() {
        false => flags.etcd.clone(),
        true => config.etcd.clone(),
    };
    if urls.is_empty() {
        return Ok(None);
    }
    let etcd = crate::etcd::Etcd::new(&urls).map_err(anyhow::Error::msg)?;
    let mut prefix = flags
        .etcd_prefix
        .clone()
        .or(config.etcd_prefix.clone())
        .unwrap_or_else(|| DEFAULT_ETCD_PREFIX.to_owned());
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let source = Arc::new(crate::discovery::Source { etcd, prefix });
    setup.sources.discovered.turn_on();
    let revision = crate::discovery::load(&source, &setup.sources.discovered).await;
    Ok(Some((source, revision)))
}

/// Chapter 15: keeps the etcd backends current (see `lb::discovery`); the registry's
/// notification rebuilds the balancer through [`follow_registry`].
pub(crate) fn follow_etcd(
    setup: &Setup,
    started: Option<(Arc<crate::discovery::Source>, Option<crate::etcd::Header>)>,
) {
    if let Some((source, revision)) = started {
        tokio::spawn(crate::discovery::follow(
            source,
            Arc::clone(&setup.sources.discovered),
            revision,
        ));
    }
}
