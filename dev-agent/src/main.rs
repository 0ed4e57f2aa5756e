//! `spiffe-dev-agent`: wiring only. Parse the configuration, set up logging, start the
//! agent, wait for SIGTERM/SIGINT (or the agent failing), shut down gracefully.

use anyhow::Context as _;
use clap::Parser as _;
use dev_agent::{Agent, Cli, LogFormat};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let config = cli.into_config().context("invalid configuration")?;

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let agent = Agent::start(config).await.context("starting the agent")?;

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM received, shutting down"),
        result = tokio::signal::ctrl_c() => {
            result.context("waiting for SIGINT")?;
            tracing::info!("SIGINT received, shutting down");
        }
        () = agent.stopped() => {
            agent.shutdown().await;
            anyhow::bail!("the agent stopped unexpectedly (see errors above)");
        }
    }
    agent.shutdown().await;
    Ok(())
}

/// Logs to stderr; `RUST_LOG` filters (default `info`).
fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
