//! `jwt-auth-helper` binary: wiring only. See the library for behaviour.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use jwt_auth_helper::authz::{AuthzService, Checker, Injector, Validator};
use jwt_auth_helper::config::{Cli, Config, Mode};
use jwt_auth_helper::metrics::Metrics;
use prometheus_client::registry::Registry;
use sidecar_runtime::config::Listen;
use sidecar_runtime::metrics::JwtCacheCollector;
use sidecar_runtime::uds::{self, UnixGrpcCollector};
use sidecar_runtime::{Admin, Readiness, Shutdown};
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use workload_client::{CacheConfig, JwtBundleWatcher, JwtSvidCache, ProcessEnv, WorkloadApiClient};

enum Bound {
    Tcp(TcpListener),
    Unix(tokio::net::UnixListener, uds::SocketFile),
}

/// The gRPC service name Envoy health-checks (and `""`, the server as a whole).
const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    sidecar_runtime::run_sidecar(
        "jwt-auth-helper",
        Config::load(&cli, &ProcessEnv),
        |c| c.log_format,
        run,
    )
    .await
}

async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    // Bind first: a busy port is a start-up error, not a half-started sidecar.
    let listener = match &config.listen {
        Listen::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the ext_authz listener on {addr}"))?;
            config.listen_policy.warn_if_exposed("ext_authz", *addr);
            Bound::Tcp(listener)
        }
        Listen::Unix(path) => {
            let (listener, file) = uds::bind_unix(path, config.socket_mode)
                .await
                .context("ext_authz listener")?
                .into_parts();
            Bound::Unix(listener, file)
        }
    };
    let admin_listener = Admin::bind_setting(
        config.admin_listen,
        jwt_auth_helper::config::ENV_ADMIN_LISTEN,
    )
    .await?;

    // The client is lazy: the helper starts (and answers 503) before the agent is up.
    let client = WorkloadApiClient::new(config.socket.endpoint.clone());
    let mut registry = Registry::with_prefix("jwt_auth_helper");
    let metrics = Arc::new(Metrics::register(&mut registry));
    if matches!(config.listen, Listen::Unix(_)) {
        registry.register_collector(Box::new(UnixGrpcCollector));
    }
    let checker = Arc::new(match config.mode {
        Mode::Injection => {
            let cache = JwtSvidCache::new(client, CacheConfig::default());
            registry.register_collector(Box::new(JwtCacheCollector(cache.clone())));
            Checker::Inject(
                Injector::new(
                    cache,
                    &config.audience,
                    config.audience_for.clone(),
                    config.existing_authorization,
                    config.token_wait,
                )
                .context("audience")?,
            )
        }
        Mode::Validator => Checker::Validate(Validator::new(
            JwtBundleWatcher::jwt_bundles(client),
            config.audience.clone(),
            config.allow_trust_domains.clone(),
            config.allow_spiffe_ids.clone(),
        )),
    });

    if let Some(listener) = admin_listener {
        let ready = {
            let checker = checker.clone();
            move || match checker.ready() {
                Ok(()) => Readiness::Ready,
                Err(reason) => Readiness::NotReady(reason),
            }
        };
        Admin::new(registry, ready).spawn(listener, shutdown.clone());
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    tokio::spawn({
        let checker = checker.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut last = None;
            while !shutdown.is_triggered() {
                let status = if checker.ready().is_ok() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                if last != Some(status) {
                    health.set_service_status(AUTHZ_SERVICE, status).await;
                    health.set_service_status("", status).await;
                    last = Some(status);
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    () = shutdown.wait() => {}
                }
            }
        }
    });

    tracing::info!(
        mode = config.mode.as_str(),
        listen = %config.listen,
        admin = ?config.admin_listen,
        workload_api = %config.socket.endpoint,
        workload_api_from = %config.socket.source,
        audience = %config.audience,
        "serving ext_authz"
    );
    let router = tonic::transport::Server::builder()
        // Envoy multiplexes every check over one HTTP/2 connection: no small stream cap
        // (the upstream helper allows 10).
        .max_concurrent_streams(Some(4096))
        .add_service(health_service)
        .add_service(envoy_types::ext_authz::v3::pb::AuthorizationServer::new(
            AuthzService::new(checker, metrics),
        ));
    match listener {
        Bound::Tcp(listener) => router
            .serve_with_incoming_shutdown(
                // TCP_NODELAY: without it small check responses wait on Nagle + delayed ACK
                // (~40 ms per check, measured by `cargo xtask bench`).
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown.wait(),
            )
            .await
            .context("ext_authz server")?,
        Bound::Unix(listener, file) => {
            // Envoy's google_grpc client sends the socket path as :authority: the adapter
            // in uds::incoming makes it acceptable to h2 (docs/protocols.md#grpc-unix-authority;
            // docs/architecture.md's table of clients says which need it, measured).
            let served = router
                .serve_with_incoming_shutdown(
                    uds::incoming(listener, config.unix_authority_adapter),
                    shutdown.wait(),
                )
                .await;
            file.remove().await;
            served.context("ext_authz server")?;
        }
    }
    tracing::info!("stopped; in-flight checks drained");
    Ok(())
}
