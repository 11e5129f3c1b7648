//! What every binary does before and after its real work: flags, logs, and errors a human reads.
//!
//! The contract (see `DESIGN.md`): a start-up problem is *one* line `error: …` on stderr and a
//! non-zero exit, never a panic and never a screen of usage text; logs go to stderr through
//! `tracing`, so stdout carries only the `listening on ADDR` lines and what a chapter prints.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Parses the command line; on a mistake prints clap's one-line diagnosis and exits with 2.
///
/// clap would also print a usage block; we keep its diagnosis on one line (`error: invalid
/// value 'x' for '--listen <ADDR>': invalid socket address syntax`) so scripts and tests see
/// one line.
/// `--help` and `--version` are printed in full, as usual.
pub fn parse<T: Parser>() -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // The diagnosis is the first paragraph (some errors continue it on indented
            // lines, e.g. the list of missing arguments); usage and hints come after a blank.
            let rendered = e.render().to_string();
            let diagnosis: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{}", diagnosis.join(" "));
            std::process::exit(2)
        }
    }
}

/// Sends `tracing` output to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Turns the outcome of `main`'s work into the process exit code, printing `error: …` on one
/// line: anyhow's `{:#}` joins the chain of contexts with `: `, e.g.
/// `error: cannot listen on 127.0.0.1:3000: Address already in use (os error 98)`.
pub fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The environment variable that makes a process stop when its standard input closes (see
/// [`shutdown_signal`]).
pub const STOP_ON_STDIN_EOF: &str = "LB_STOP_ON_STDIN_EOF";

/// Resolves when the process is asked to stop: Ctrl-C (SIGINT) or SIGTERM; and, with
/// `LB_STOP_ON_STDIN_EOF=1` in the environment, when standard input closes.
///
/// That last one is how a parent makes its children stop when it dies, however it dies
/// (chapter 13's `ssl-farm`): it gives each child a pipe as standard input and keeps the
/// writing end; when the parent exits, even by SIGKILL, the kernel closes that end and the
/// child reads end-of-file. The usual alternative, `prctl(PR_SET_PDEATHSIG)`, needs `unsafe`
/// code between fork and exec, and fires when the *thread* that forked the child exits, not
/// the process: with a thread pool that can retire threads, a child can be told its parent
/// died while it is alive. A pipe has neither problem, and the child drains (as on SIGTERM)
/// instead of being killed. Only the first call watches standard input: the second (which
/// turns a drain into an immediate stop) must not fire on the same end-of-file.
pub async fn shutdown_signal() {
    static WATCHING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let stdin_closed = async {
        let wanted = std::env::var_os(STOP_ON_STDIN_EOF).is_some_and(|v| v == "1");
        if !wanted || WATCHING.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return std::future::pending::<()>().await;
        }
        let (closed, is_closed) = tokio::sync::oneshot::channel();
        // A thread of its own, not tokio's blocking pool: a runtime waits for its blocking
        // tasks when it is dropped, and this read lasts as long as the parent lives.
        let spawned = std::thread::Builder::new()
            .name("stdin-watch".into())
            .spawn(move || {
                use std::io::Read as _;
                let mut buf = [0u8; 512];
                let mut stdin = std::io::stdin().lock();
                // Whatever the parent writes is ignored; only the end counts.
                while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
                let _ = closed.send(());
            });
        match spawned {
            Ok(_) if is_closed.await.is_ok() => {
                tracing::info!("standard input closed (the process that started us is gone)");
            }
            _ => std::future::pending::<()>().await,
        }
    };
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
        () = stdin_closed => {}
    }
    tracing::info!("shutting down");
}

/// Parses a flag given in seconds (`3`, `0.5`) into a [`std::time::Duration`].
pub fn seconds(s: &str) -> Result<std::time::Duration, String> {
    parse_seconds(s, false)
}

/// [`seconds`], where 0 is allowed (it turns something off).
pub fn seconds_or_zero(s: &str) -> Result<std::time::Duration, String> {
    parse_seconds(s, true)
}

fn parse_seconds(s: &str, zero_ok: bool) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    checked_seconds(secs, zero_ok).map_err(|why| format!("`{s}` {why}"))
}

/// The one rule for every duration given in seconds, on the command line and in the config
/// file alike: a finite number under 1e9 (31 years; more is a typo), and either exactly 0
/// where 0 turns the thing off, or at least one nanosecond. Without that last check `1e-300`
/// passes "positive" and becomes a zero `Duration`: a timeout that fires at once, or an
/// interval that means "off" where the user asked for "often".
pub fn checked_seconds(secs: f64, zero_ok: bool) -> Result<std::time::Duration, &'static str> {
    if zero_ok && secs == 0.0 {
        return Ok(std::time::Duration::ZERO);
    }
    if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
        return Err(match zero_ok {
            true => "must be 0 or a positive number of seconds",
            false => "must be a positive number of seconds",
        });
    }
    let d = std::time::Duration::from_secs_f64(secs);
    if d.is_zero() {
        return Err("is below one nanosecond: give 0 to turn it off, or a longer time");
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_take_seconds_and_refuse_what_would_become_zero() {
        assert_eq!(seconds("0.5").unwrap().as_millis(), 500);
        assert!(seconds("0").unwrap_err().contains("positive"));
        assert!(seconds("1e-300").unwrap_err().contains("nanosecond"));
        assert!(
            seconds_or_zero("1e-300")
                .unwrap_err()
                .contains("nanosecond")
        );
        assert!(seconds_or_zero("0").unwrap().is_zero());
        assert!(seconds("inf").is_err() && seconds("-1").is_err() && seconds("1e9").is_err());
        assert!(seconds("x").unwrap_err().contains("not a number"));
    }
}
