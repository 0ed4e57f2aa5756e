//! `sds-bridge` binary: wiring only. See the library for behaviour.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _};
use prometheus_client::registry::Registry;
use sds_bridge::catalog;
use sds_bridge::config::{Cli, Command, Config, Listen};
use sds_bridge::ecds::{self, EcdsMetrics, EcdsService};
use sds_bridge::envoy_config::JwtAuthnConfig;
use sds_bridge::jwks::{self, JwksEndpoint};
use sds_bridge::jwt::JwtSecrets;
use sds_bridge::limits::{MAX_CONCURRENT_STREAMS, Refusals};
use sds_bridge::metrics::Metrics;
use sds_bridge::service::SdsService;
use sidecar_runtime::metrics::{JwtCacheCollector, X509Collector};
use sidecar_runtime::uds::{self, SocketFile, UnixGrpcCollector};
use sidecar_runtime::{Admin, Readiness, Shutdown, svid};
use workload_client::{
    CacheConfig, JwtBundleWatcher, JwtSvidCache, ProcessEnv, WorkloadApiClient, X509Watcher,
};

/// How long a unary FetchSecrets waits for the first SVID (Envoy's own fetch timeout is 5 s).
const FETCH_WAIT: Duration = Duration::from_secs(4);

#[tokio::main]
async fn main() -> ExitCode {
    // The environment part of `--help` comes from the settings table.
    let matches = Cli::command()
        .after_help(sds_bridge::config::after_help())
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Some(Command::JwtAuthnConfig(args)) = &cli.command {
        return match JwtAuthnConfig::from_args(args) {
            Ok(config) => {
                use std::io::Write as _;
                // The configuration is the command's output (stdout), not a log line.
                match writeln!(std::io::stdout().lock(), "{}", config.render(args.part)) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => {
                        eprintln!("sds-bridge jwt-authn-config: writing stdout: {error}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(error) => {
                eprintln!("sds-bridge jwt-authn-config: {error}");
                ExitCode::from(2)
            }
        };
    }
    sidecar_runtime::run_sidecar(
        "sds-bridge",
        Config::load(&cli, &ProcessEnv),
        |c| c.log_format,
        run,
    )
    .await
}

async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    // The SDS socket comes first, before the Workload API is even dialled: Istio's
    // pilot-agent probes for it once, early (docs/protocols.md#istio-sds-socket). Requests wait
    // for the first SVID.
    enum Bound {
        Unix(tokio::net::UnixListener, SocketFile),
        Tcp(tokio::net::TcpListener),
    }
    let bound = match &config.listen {
        Listen::Unix(path) => {
            let (l, f) = uds::bind_unix(path, config.socket_mode)
                .await
                .context("SDS listener")?
                .into_parts();
            Bound::Unix(l, f)
        }
        Listen::Tcp(addr) => Bound::Tcp(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("SDS listener: binding {addr}"))?,
        ),
    };
    let admin_listener =
        Admin::bind_setting(config.admin_listen, sds_bridge::config::ENV_ADMIN_LISTEN).await?;
    let jwks_listener = match config.jwks_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the JWKS listener on {addr}"))?,
        ),
        None => None,
    };

    let client = WorkloadApiClient::new(config.socket.endpoint.clone());
    let watcher = X509Watcher::x509(client.clone());
    let catalog = catalog::publish(&watcher, config.rootca_bundles);
    let mut registry = Registry::with_prefix("sds_bridge");
    let metrics = Arc::new(Metrics::register(&mut registry));
    let refusals = Refusals::default();
    refusals.register(&mut registry);
    // JWT-SVIDs are fetched only for audiences Envoy asks for (jwt-svid:<audience> names),
    // at most --max-jwt-keys of them.
    let jwt_cache = JwtSvidCache::new(client.clone(), CacheConfig::default());
    let jwt = JwtSecrets::new(
        jwt_cache.clone(),
        config.allow_jwt_audiences.clone(),
        config.max_jwt_keys,
        refusals,
    );
    registry.register_collector(Box::new(X509Collector(watcher.clone())));
    registry.register_collector(Box::new(JwtCacheCollector(jwt_cache)));
    registry.register_collector(Box::new(UnixGrpcCollector));
    // Only when asked for: the stream costs the agent little, but a bridge that serves no
    // JWKS and no ECDS config has no reason to hold one open.
    let bundles = (jwks_listener.is_some() || config.ecds.is_some()).then(|| {
        let bundles = JwtBundleWatcher::jwt_bundles(client.clone());
        let documents = jwks::publish(&bundles);
        (bundles, documents)
    });
    let tombstone = match &bundles {
        Some(_) => Some(jwks::tombstone()?),
        None => None,
    };
    let jwks = match (jwks_listener, &bundles, &tombstone) {
        (Some(listener), Some((bundles, documents)), Some(tombstone)) => {
            let endpoint = JwksEndpoint::new(documents.clone(), tombstone.clone());
            endpoint.register(&mut registry);
            Some((listener, bundles.clone(), endpoint))
        }
        _ => None,
    };
    let ecds = match (&config.ecds, &bundles, tombstone) {
        (Some(policy), Some((bundles, documents)), Some(tombstone)) => {
            let metrics = EcdsMetrics::register(&mut registry);
            let rendered = ecds::publish(policy.clone(), documents.clone(), tombstone);
            Some((
                bundles.clone(),
                EcdsService::new(rendered, metrics, shutdown.clone()),
            ))
        }
        _ => None,
    };

    if let Some(listener) = admin_listener {
        let checks = Checks {
            watcher: watcher.clone(),
            // With --jwks-listen, ready only once the JWKS can be served too.
            jwks: jwks
                .as_ref()
                .map(|(_, bundles, endpoint)| (bundles.clone(), endpoint.clone())),
            // With ECDS, ready only once an Envoy applied the jwt_authn config.
            ecds: ecds.clone(),
        };
        let startup = checks.clone();
        Admin::new(registry, move || checks.readiness(true))
            // Envoy starts after the bridge (it needs the SDS socket) and only then can ACK:
            // a start-up wait on the ACK would never end.
            .with_startup(move || startup.readiness(false))
            .spawn(listener, shutdown.clone());
    }

    if let Some((listener, bundles, endpoint)) = jwks {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // Keep the watcher alive as long as the endpoint serves.
            let _bundles = bundles;
            if let Err(error) = endpoint.serve(listener, shutdown).await {
                tracing::error!(%error, "JWKS listener failed");
            }
        });
    }

    let service = SdsService::new(
        catalog,
        jwt,
        config.validation_mode,
        FETCH_WAIT,
        metrics,
        shutdown.clone(),
    );
    let server = tonic::transport::Server::builder()
        // Envoy multiplexes all its SDS subscriptions over one connection; Istio's proxies
        // open one each. Keepalive finds Envoys that vanished without closing.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // One client must not park thousands of streams on one connection (see limits.rs
        // for why 128 fits Envoy).
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        .add_service(service.into_server())
        // The bundle watcher (`bundles`) lives until the server stops.
        .add_optional_service(
            ecds.as_ref()
                .map(|(_, service)| service.clone().into_server()),
        );

    if let Listen::Tcp(addr) = &config.listen {
        config.listen_policy.warn_if_exposed("SDS", *addr);
    }
    if let Some(addr) = config.jwks_listen {
        config.listen_policy.warn_if_exposed("JWKS", addr);
    }
    tracing::info!(
        listen = ?config.listen,
        admin = ?config.admin_listen,
        workload_api = %config.socket.endpoint,
        workload_api_from = %config.socket.source,
        validation_context = ?config.validation_mode,
        rootca_bundles = ?config.rootca_bundles,
        jwt_audiences = ?config.allow_jwt_audiences,
        max_jwt_keys = config.max_jwt_keys,
        jwks = ?config.jwks_listen,
        ecds = ?config.ecds,
        "serving SDS"
    );
    match bound {
        Bound::Unix(listener, file) => {
            let result = server
                .serve_with_incoming_shutdown(
                    uds::incoming(listener, config.unix_authority_adapter),
                    shutdown.wait(),
                )
                .await;
            file.remove().await;
            result.context("SDS server")?;
        }
        Bound::Tcp(listener) => {
            server
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown.wait(),
                )
                .await
                .context("SDS server")?;
        }
    }
    tracing::info!("stopped; SDS streams closed");
    Ok(())
}

/// What `/readyz` and `/startupz` look at.
#[derive(Clone)]
struct Checks {
    watcher: X509Watcher,
    jwks: Option<(JwtBundleWatcher, JwksEndpoint)>,
    ecds: Option<(JwtBundleWatcher, EcdsService)>,
}

// === impl Checks ===

impl Checks {
    /// An unexpired X.509-SVID, the JWT bundles the JWKS endpoint or ECDS serve, and, when
    /// `envoy_applied`, an Envoy's ACK of the ECDS config.
    fn readiness(&self, envoy_applied: bool) -> Readiness {
        if let not_ready @ Readiness::NotReady(_) = svid::x509_readiness(&self.watcher) {
            return not_ready;
        }
        if let Some((bundles, endpoint)) = &self.jwks
            && let not_ready @ Readiness::NotReady(_) = endpoint.readiness(&bundles.status())
        {
            return not_ready;
        }
        match &self.ecds {
            Some((bundles, service)) if envoy_applied => service.readiness(&bundles.status()),
            Some((bundles, service)) => service.startup(&bundles.status()),
            None => Readiness::Ready,
        }
    }
}
