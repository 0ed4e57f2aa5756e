//! `iam-broker` binary: wiring only. See the library for behaviour.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use iam_broker::cache::{CacheConfig, CredentialCache};
use iam_broker::config::{Cli, Config, ProviderConfig};
use iam_broker::http::{Broker, Limits, TokenCheck};
use iam_broker::metrics::{CacheCollector, Metrics};
use iam_broker::provider::aws::{AwsStsProvider, JwtSource};
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
    let admin_listener = match common.admin_listen {
        Some(addr) => Some(
            Admin::bind(addr)
                .await
                .with_context(|| format!("binding the admin listener on {addr}"))?,
        ),
        None => None,
    };

    // The client is lazy: the broker starts (and answers 503) before the agent is up.
    let client = WorkloadApiClient::new(common.socket.endpoint.clone());
    let jwt_cache = JwtSvidCache::new(client.clone(), JwtCacheConfig::default());
    let key = JwtKey::new([common.audience.clone()]).context("audience")?;
    let mut registry = Registry::with_prefix("iam_broker");
    let metrics = Metrics::register(&mut registry);
    registry.register_collector(Box::new(JwtCacheCollector(jwt_cache.clone())));

    let ProviderConfig::Aws(aws) = &config.provider;
    if aws.sts.duration < std::time::Duration::from_secs(30 * 60) {
        // The SDKs refresh when less than 15 minutes remain, and the broker refreshes at
        // half-life for short sessions: clients would shell out on nearly every AWS call.
        tracing::warn!(
            duration = ?aws.sts.duration,
            "sessions under 30 minutes reach the SDKs' 15-minute refresh window early; prefer 1h"
        );
    }
    // CA roots for STS over TLS (SSL_CERT_FILE/DIR, else the OpenShift-injected bundle, else
    // Debian's): an explicit setting that yields nothing stops the broker, naming it.
    let roots = tls_roots::load(RootsLocations::from_env(&ProcessEnv))
        .await
        .context("loading CA certificates for STS")?;
    let provider = AwsStsProvider::new(
        aws.sts.clone(),
        &roots,
        JwtSource::new(jwt_cache, client, key),
        metrics.sts_calls.clone(),
    )?;
    let cache = CredentialCache::start(provider, CacheConfig::default());
    registry.register_collector(Box::new(CacheCollector(cache.clone())));
    let token = aws
        .container_token
        .as_ref()
        .map(TokenCheck::new)
        .transpose()
        .context("reading the container-credentials token")?;

    if let Some(listener) = admin_listener {
        let ready = {
            let cache = cache.clone();
            move || match cache.peek() {
                Some(_) => Readiness::Ready,
                None => Readiness::NotReady(match cache.stats().last_error {
                    Some(e) => format!("no valid credentials: {e}"),
                    None => "no credentials yet".to_owned(),
                }),
            }
        };
        Admin::new(registry, ready).spawn(listener, shutdown.clone());
    }

    tracing::info!(
        provider = "aws",
        listen = %common.listen,
        admin = ?common.admin_listen,
        workload_api = %common.socket.endpoint,
        workload_api_from = %common.socket.source,
        audience = %common.audience,
        role_arn = %aws.sts.role_arn,
        region = %aws.sts.region,
        sts_endpoint = aws.sts.sts_endpoint.as_deref().unwrap_or("default"),
        duration = ?aws.sts.duration,
        container_credentials = token.is_some(),
        "serving credentials"
    );
    let app = Broker::new(cache, token, common.fetch_wait, metrics).router();
    iam_broker::http::serve(listener, app, Limits::default(), shutdown)
        .await
        .context("credentials server")?;
    tracing::info!("stopped; in-flight requests drained");
    Ok(())
}
