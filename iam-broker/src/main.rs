//! `iam-broker` binary: wiring only. See the library for behaviour.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use iam_broker::cli::{Cli, Config};
use iam_broker::http::{Limits, Service};
use iam_broker::metrics::Metrics;
use iam_broker::provider::{Context, JwtSource};
use prometheus_client::registry::Registry;
use sidecar_runtime::metrics::JwtCacheCollector;
use sidecar_runtime::tls_roots::{self, RootsLocations};
use sidecar_runtime::{Admin, Readiness, Shutdown};
use tokio::net::TcpListener;
use workload_client::{
    CacheConfig as JwtCacheConfig, JwtKey, JwtSvidCache, ProcessEnv, WorkloadApiClient,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    sidecar_runtime::run_sidecar(
        "iam-broker",
        Config::load(&cli, &ProcessEnv),
        |c| c.common.log_format,
        run,
    )
    .await
}

async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let common = &config.common;

    // Bind first: a busy port is a start-up error, not a half-started sidecar.
    let listener = TcpListener::bind(common.listen)
        .await
        .with_context(|| format!("binding the credentials listener on {}", common.listen))?;
    common
        .listen_policy
        .warn_if_exposed("credentials", common.listen);
    let admin_listener =
        Admin::bind_setting(common.admin_listen, iam_broker::config::ENV_ADMIN_LISTEN).await?;

    // The client is lazy: the broker starts (and answers 503) before the agent is up.
    let client = WorkloadApiClient::new(common.socket.endpoint.clone());
    let jwt_cache = JwtSvidCache::new(client.clone(), JwtCacheConfig::default());
    let key = JwtKey::new([common.audience.clone()]).context("audience")?;
    let mut registry = Registry::with_prefix("iam_broker");
    let metrics = Metrics::register(&mut registry);
    registry.register_collector(Box::new(JwtCacheCollector(jwt_cache.clone())));
    let jwt = JwtSource::new(jwt_cache, client.clone(), key);
    let jwt_ready = jwt.clone();
    // CA roots for the provider's TLS (SSL_CERT_FILE/DIR, else the OpenShift-injected bundle,
    // else Debian's): an explicit setting that yields nothing stops the broker, naming it.
    let roots = tls_roots::load(RootsLocations::from_env(&ProcessEnv))
        .await
        .context("loading CA certificates for the provider")?;

    // What every provider shares; each provider logs its own settings when it starts.
    tracing::info!(
        listen = %common.listen,
        admin = ?common.admin_listen,
        workload_api = %common.socket.endpoint,
        workload_api_from = %common.socket.source,
        audience = %common.audience,
        "starting"
    );
    let service: Service = config.provider.service(Context {
        common,
        roots: &roots,
        jwt,
        workload_api: &client,
        registry: &mut registry,
    })?;

    let iam_broker::http::Parts {
        app,
        ready: provider_ready,
        on_shutdown,
        without_jwt_svid,
    } = service.into_parts(metrics);
    // Every provider: ready while a valid JWT-SVID is held (as the other sidecars: ready while
    // holding a valid SVID), and then whatever the provider fetches at start. Roles Anywhere
    // needs no JWT-SVID: its credentials, held, say the X.509-SVID worked.
    let ready = move || match jwt_ready.readiness() {
        _ if without_jwt_svid => provider_ready(),
        Readiness::Ready => provider_ready(),
        not_ready => not_ready,
    };
    if let Some(listener) = admin_listener {
        Admin::new(registry, ready).spawn(listener, shutdown.clone());
    }
    iam_broker::http::serve(listener, app, Limits::default(), shutdown)
        .await
        .context("credentials server")?;
    if let Some(cleanup) = on_shutdown {
        cleanup.await;
    }
    tracing::info!("stopped; in-flight requests drained");
    Ok(())
}
