//! The start and end of every sidecar binary, so each `main` is one call.

use std::fmt;
use std::future::Future;
use std::process::ExitCode;

use crate::{LogFormat, Shutdown};

/// Runs a sidecar: a configuration error (a [`crate::ConfigError`], or every bad setting at
/// once as [`crate::settings::ConfigErrors`]) is printed on stderr and exit code 2 (nothing
/// starts half-configured); otherwise logging is installed, SIGTERM/SIGINT trigger the
/// [`Shutdown`] handed to `run`, and `run`'s error is logged with its cause chain (exit 1).
pub async fn run_sidecar<C, CE, E, Fut>(
    name: &str,
    config: Result<C, CE>,
    log_format: impl FnOnce(&C) -> LogFormat,
    run: impl FnOnce(C, Shutdown) -> Fut,
) -> ExitCode
where
    Fut: Future<Output = Result<(), E>>,
    CE: fmt::Display,
    E: fmt::Display,
{
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    crate::logging::init(log_format(&config), "info");
    let shutdown = Shutdown::new();
    if let Err(e) = shutdown.listen_for_signals() {
        tracing::error!(error = %e, "{name}: cannot install signal handlers");
        return ExitCode::FAILURE;
    }
    match run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints an anyhow error with its causes.
            tracing::error!(error = format!("{e:#}"), "{name} failed");
            ExitCode::FAILURE
        }
    }
}
