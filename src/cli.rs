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

/// Resolves when the process is asked to stop: Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
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
    }
    tracing::info!("shutting down");
}

/// Parses a flag given in seconds (`3`, `0.5`) into a [`std::time::Duration`].
pub fn seconds(s: &str) -> Result<std::time::Duration, String> {
    let d = seconds_or_zero(s)?;
    if d.is_zero() {
        return Err(format!("`{s}` must be a positive number of seconds"));
    }
    Ok(d)
}

/// [`seconds`], where 0 is allowed (it turns something off).
pub fn seconds_or_zero(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(0.0..1e9).contains(&secs) {
        return Err(format!("`{s}` must be a number of seconds, 0 or more"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}
