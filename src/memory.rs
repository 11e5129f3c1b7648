//! Giving memory back to the system after a burst of connections (hardening).
//!
//! Measured: 2,000 concurrent TLS clients lift `tcp-lb`'s resident memory from 7 MB to about
//! 90 MB, and it stays there once they are gone, however many more bursts follow (it plateaus:
//! the high-water mark of live connections, about 45 KiB each with TLS buffers). Nothing
//! leaks: calling glibc's `malloc_trim(0)` on the idle process brings it back to 9 MB. The
//! allocator keeps freed memory in its per-thread arenas, and because a few long-lived
//! allocations sit between the freed ones, the heap's top never shrinks on its own
//! (`MALLOC_TRIM_THRESHOLD_` alone changed nothing; `MALLOC_ARENA_MAX=1` neither).
//!
//! For an operator that is memory a quiet balancer holds for nothing, and a misleading
//! number on the dashboard. So the server looks every [`INTERVAL`]: when at least
//! [`BURST`] connections have ended since the last look (the peak since then, minus the
//! connections open now), it asks the allocator to return what is free. Under steady load the
//! peak equals the live count and nothing is done; `malloc_trim` itself costs a walk of the
//! free lists, a few milliseconds for a heap of 100 MB, off the accept loop.
//!
//! Connections are not the only churn. Chapter 16's cache stores and evicts entries all the
//! time once full; each is freed on whichever thread evicts it, between entries still held, so
//! the same fragmentation holds memory the cache no longer counts: measured with
//! `--cache 8000000`, 30 MiB of growth after 20,000 small answers and 46 MiB after 2,000 of
//! 64 KiB, while the cache held 8 MB (`benches/compare/cache_rss.py`). So what anything frees
//! in bulk is noted too ([`note_freed`]), and [`FREED_ENOUGH`] of it since the last look also
//! gets the memory returned.

use std::sync::Arc;
use std::time::Duration;

use crate::limits::Gate;

/// How often the trimmer looks.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Connections that must have come and gone since the last look before memory is returned.
pub const BURST: usize = 256;

/// Bytes freed in bulk (cache entries evicted) since the last look that get memory returned.
pub const FREED_ENOUGH: usize = 4 * 1024 * 1024;

/// Bytes noted by [`note_freed`] since the trimmer last looked.
static FREED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Notes `bytes` freed by something that churns (the cache's evictions): one relaxed add.
pub fn note_freed(bytes: usize) {
    FREED.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// Runs for as long as the task lives: returns freed memory after each burst on `gate`.
pub async fn trim_after_bursts(gate: Arc<Gate>) {
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let peak = gate.take_peak();
        let live = gate.active();
        let freed = FREED.swap(0, std::sync::atomic::Ordering::Relaxed);
        if peak >= live + BURST || freed >= FREED_ENOUGH {
            // On the blocking pool: the walk is short, but it is not the accept loop's to pay.
            let before = resident_kib();
            if tokio::task::spawn_blocking(trim).await.unwrap_or(false) {
                tracing::info!(
                    peak,
                    live,
                    freed,
                    "returned free memory to the system after a burst: resident {} -> {} KiB",
                    before.unwrap_or(0),
                    resident_kib().unwrap_or(0)
                );
            }
        }
    }
}

/// Returns free heap memory to the system where the allocator can (glibc); elsewhere a no-op.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            /// glibc: releases free memory at the top of the heap and, since 2.8, every whole
            /// free page inside it (`madvise(MADV_DONTNEED)`). Returns 1 if any was released.
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim takes a plain integer, touches only the allocator's own state
        // under its own locks, and is documented as safe to call at any time from any thread.
        unsafe { malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Resident memory of this process in KiB, where `/proc` tells (Linux).
pub fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}
