//! `spiffe-dev-agent`: wiring only. Parse the configuration, set up logging, start the
//! agent, wait for SIGTERM/SIGINT (or the agent failing), shut down gracefully.

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _};
use std::io::Write as _;

use dev_agent::{Agent, Cli, Command};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The admin endpoints are listed from the router's own table.
    let matches = Cli::command()
        .after_help(dev_agent::admin::help())
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(Command::MintJwt(args)) = &cli.command {
        // The one thing this binary prints on stdout: a token asked for by name.
        let token = dev_agent::mint_jwt(args).context("mint-jwt")?;
        writeln!(std::io::stdout().lock(), "{token}").context("writing the token")?;
        return Ok(());
    }
    sidecar_runtime::logging::init(cli.log_format, "info");
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
