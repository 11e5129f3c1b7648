//! What changes a running balancer: SIGHUP (step 10 re-reads its file) and the registry
//! (chapter 14's servers that come and go). Both plan anew from flags and file and put the
//! result in place; a plan that fails leaves the running one alone.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;

use super::RELOAD_LIMIT;
use super::plan::Setup;

/// How often leases are checked for expiry: a server that stopped renewing is gone at most
/// this long after its TTL.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

/// Chapter 14: keeps the balancer in step with the registry. A registration, a change, a
/// deregistration or an expired lease rebuilds it from the last configuration with `rebuild`
/// (the balancer's own plan-and-replace), as a reload would, so backends that stay keep their
/// health and counters. Runs for the life of the process; a registry that is off never wakes
/// it but for the expiry tick.
pub(crate) async fn follow_registry<F, Fut>(setup: Arc<Setup>, rebuild: F)
where
    F: Fn(Arc<Setup>, Config) -> Fut,
    Fut: Future<Output = anyhow::Result<String>>,
{
    loop {
        tokio::select! {
            () = setup.sources.changed() => {}
            () = tokio::time::sleep(EXPIRY_TICK) => {
                let gone = setup.sources.registry.expire(std::time::Instant::now());
                if gone.is_empty() {
                    continue;
                }
                for name in &gone {
                    tracing::warn!("registered backend {name}: its lease ran out without a renewal; removed");
                }
            }
        }
        let _applying = setup.applying.lock().await;
        match rebuild(Arc::clone(&setup), setup.last_config()).await {
            Ok(summary) => tracing::info!("backends changed: {summary}"),
            Err(e) => {
                tracing::error!("the registry changed but the balancer could not follow: {e:#}")
            }
        }
    }
}

/// SIGHUP, caught from the moment this is made. It must exist before the `listening on` line:
/// until a process asks for SIGHUP, the signal's default action is to terminate it, and a
/// supervisor (or a test) that reloads as soon as the balancer says it is ready would kill it
/// instead (seen under load, when the task that used to ask had not run yet).
pub(crate) struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

/// Starts catching SIGHUP (a warning, and reload off, where it cannot).
pub(crate) fn hangups() -> Hangups {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let signal = signal(SignalKind::hangup())
            .map_err(|e| tracing::warn!("cannot listen for SIGHUP, reload is off: {e}"))
            .ok();
        Hangups { signal }
    }
    #[cfg(not(unix))]
    {
        tracing::warn!("no SIGHUP on this platform: reload is off");
        Hangups {}
    }
}

/// Runs `reload` on every SIGHUP, for as long as the task lives.
pub(crate) async fn on_sighup<F, Fut>(hangups: Hangups, mut reload: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    #[cfg(not(unix))]
    {
        let _ = (hangups, &mut reload);
    }
    #[cfg(unix)]
    {
        let Some(mut signal) = hangups.signal else {
            return;
        };
        while signal.recv().await.is_some() {
            reload().await;
        }
    }
}

/// Reads the config again and turns it into a plan with `make`, off the runtime's threads and
/// within [`RELOAD_LIMIT`]: the config and PEM files are read with blocking calls, and a path
/// that turned into a FIFO or a hung mount must stall only this reload, never the
/// connections the runtime serves (`files` refuses FIFOs and devices at once; the limit is for
/// what even that cannot see).
pub(crate) async fn reload_config<T, F, Fut>(
    setup: &Arc<Setup>,
    (listen, admin): (SocketAddr, Option<SocketAddr>),
    make: F,
) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(Arc<Setup>, Config) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let source = match &setup.common.config {
        Some(path) => path.display().to_string(),
        None => "the command line".to_owned(),
    };
    tracing::info!("SIGHUP: reloading the configuration from {source}");
    let runtime = tokio::runtime::Handle::current();
    let reading = Arc::clone(setup);
    let work = tokio::task::spawn_blocking(move || {
        runtime.block_on(async move {
            let config = reading.load_config()?;
            if reading.listen(&config)? != listen || reading.admin(&config) != admin {
                tracing::warn!(
                    "a new listen or admin address takes a restart; keeping {listen}{}",
                    admin.map(|a| format!(" and {a}")).unwrap_or_default()
                );
            }
            make(reading, config).await
        })
    });
    match tokio::time::timeout(RELOAD_LIMIT, work).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(anyhow::anyhow!("the reload task failed: {e}")),
        Err(_) => Err(anyhow::anyhow!(
            "not done within {RELOAD_LIMIT:?} (a file or a backend name that does not answer)"
        )),
    }
}
