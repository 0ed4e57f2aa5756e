//! [`Agent::start`] binds the sockets and spawns the servers and rotation tasks;
//! [`RunningAgent`] is the handle tests and `main.rs` hold.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use spiffe::{SpiffeId, TrustDomain};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use workload_proto::spiffe_workload_api_server::SpiffeWorkloadApiServer;

use crate::{
    Error,
    authority::{Authority, DEFAULT_CA_VALIDITY},
    config::{Config, Endpoint},
    listen::{Incoming, bind_tcp, bind_workload_api},
    metrics::Method,
    rotation,
    service::WorkloadApiService,
    shared::{Shared, stopping},
    state::StateDir,
};

/// How long [`RunningAgent::shutdown`] waits for connections to drain before aborting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

// === Agent ===

/// The development SPIFFE agent. See [`Agent::start`].
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// Validates `config`, loads or creates the signing authorities, binds the Workload API
    /// socket (and the OIDC / admin listeners), and spawns the servers and rotation tasks.
    ///
    /// Returns once everything listens, so a client may connect right away. Must be called
    /// on a multi-threaded tokio runtime or a current-thread one; key generation and state
    /// I/O run on the blocking pool.
    pub async fn start(config: Config) -> Result<RunningAgent, Error> {
        config.validate()?;
        let spiffe_ids = config.effective_spiffe_ids()?;
        let (own, federated) = load_authorities(&config).await?;
        let state = config.state_dir.as_ref().map(StateDir::new);

        let shared = Shared::new(&config, spiffe_ids, own, federated, state)?;

        // Bind everything before spawning anything, so a bind error leaves nothing running.
        let (incoming, endpoint) = bind_workload_api(&config).await?;
        let socket_file = match &incoming {
            Incoming::Unix(_, file, _) => Some(file.clone()),
            Incoming::Tcp(_) => None,
        };
        let oidc = match config.oidc_listen {
            Some(addr) => Some(bind_tcp("OIDC discovery", addr).await?),
            None => None,
        };
        let admin = match config.admin_listen {
            Some(addr) => Some(bind_tcp("admin", addr).await?),
            None => None,
        };

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(serve_workload_api(
            Arc::clone(&shared),
            incoming,
        )));
        let oidc_addr = match oidc {
            Some((listener, addr)) => {
                let app = crate::discovery::router(Arc::clone(&shared));
                tasks.push(tokio::spawn(serve_http(
                    "OIDC discovery",
                    Arc::clone(&shared),
                    listener,
                    app,
                )));
                tracing::info!(%addr, "serving OIDC discovery");
                Some(addr)
            }
            None => None,
        };
        let admin_addr = match admin {
            Some((listener, addr)) => {
                let app = crate::admin::router(Arc::clone(&shared));
                tasks.push(tokio::spawn(serve_http(
                    "admin",
                    Arc::clone(&shared),
                    listener,
                    app,
                )));
                tracing::info!(%addr, "serving admin endpoints");
                Some(addr)
            }
            None => None,
        };
        tasks.push(tokio::spawn(rotation::x509_loop(Arc::clone(&shared))));
        tasks.push(tokio::spawn(rotation::jwt_loop(Arc::clone(&shared))));

        tracing::info!(
            socket = %endpoint,
            trust_domain = %shared.own.trust_domain(),
            spiffe_ids = ?shared.spiffe_ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "serving SPIFFE Workload API"
        );
        Ok(RunningAgent {
            shared,
            endpoint,
            socket_file,
            oidc_addr,
            admin_addr,
            tasks,
        })
    }
}

async fn load_authorities(config: &Config) -> Result<(Arc<Authority>, Vec<Arc<Authority>>), Error> {
    let mut domains = vec![config.trust_domain.clone()];
    domains.extend(config.federate_with.iter().cloned());
    let alg = config.jwt_alg;
    let state = config.state_dir.clone().map(StateDir::new);
    // A CA must outlive many SVIDs; a year unless the TTL is extreme.
    let ca_validity = DEFAULT_CA_VALIDITY.max(config.x509_ttl.saturating_mul(10));
    let (x509_ttl, jwt_ttl) = (config.x509_ttl, config.jwt_ttl);
    let authorities = tokio::task::spawn_blocking(move || {
        let mut authorities = Vec::new();
        for (i, td) in domains.into_iter().enumerate() {
            authorities.push(match &state {
                // An operator's drop outlives the --federate-with that still names it.
                Some(state) if i > 0 && state.federation_dropped(&td)? => {
                    tracing::warn!(
                        trust_domain = %td,
                        "not federating: an operator dropped this trust domain (delete \
                         <state-dir>/<trust-domain>/federation-dropped to federate again)"
                    );
                    continue;
                }
                Some(state) => state.load_or_create(&td, alg, ca_validity, x509_ttl, jwt_ttl)?,
                None => Authority::new(td, alg)?,
            });
        }
        Ok::<_, Error>(authorities)
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))??;
    let mut authorities = authorities.into_iter();
    let own = authorities
        .next()
        .ok_or_else(|| Error::Task("no authority for the own trust domain".into()))?
        .with_jwt_issuer(config.jwt_issuer.clone());
    Ok((Arc::new(own), authorities.map(Arc::new).collect()))
}

/// Streams one connection may hold open. tonic's default is no limit, and every parked stream
/// costs ~7 KiB, so one client opening 10,000 streams grew the agent by 70 MiB. A sidecar
/// needs a few watches plus one unary call per JWT key being fetched (sds-bridge: at most 256
/// keys); clients queue whatever is over the limit rather than fail.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

async fn serve_workload_api(shared: Arc<Shared>, incoming: Incoming) {
    let service = SpiffeWorkloadApiServer::new(WorkloadApiService::new(Arc::clone(&shared)));
    let signal = stopping(shared.shutdown.subscribe());
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(service);
    let (result, socket_file) = match incoming {
        Incoming::Unix(listener, file, adapter) => (
            router
                .serve_with_incoming_shutdown(
                    sidecar_runtime::uds::incoming(listener, adapter),
                    signal,
                )
                .await,
            Some(file),
        ),
        Incoming::Tcp(listener) => (
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
                .await,
            None,
        ),
    };
    if let Err(error) = result {
        tracing::error!(%error, "Workload API server failed");
        shared.shutdown.send_replace(true);
    }
    if let Some(file) = socket_file {
        file.remove().await;
    }
}

/// Serves an HTTP router until the agent stops; a failure stops the agent (a dev agent with a
/// dead OIDC or admin listener would make tests fail in confusing ways later).
async fn serve_http(
    what: &str,
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    app: axum::Router,
) {
    let signal = stopping(shared.shutdown.subscribe());
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
    {
        tracing::error!(%error, server = what, "HTTP server failed");
        shared.shutdown.send_replace(true);
    }
}

// === RunningAgent ===

/// A running agent. Dropping it starts a shutdown; [`RunningAgent::shutdown`] also waits for
/// it to finish.
#[derive(Debug)]
pub struct RunningAgent {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    /// The socket file, removed at shutdown if the server task was aborted before it could.
    socket_file: Option<sidecar_runtime::uds::SocketFile>,
    oidc_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningAgent {
    /// The Workload API address clients use (`tcp://` with the actually bound port).
    /// Its `Display` is the `SPIFFE_ENDPOINT_SOCKET` value.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The bound OIDC discovery address, if configured.
    pub fn oidc_addr(&self) -> Option<SocketAddr> {
        self.oidc_addr
    }

    /// The bound admin address, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Accepted calls of `method` (after the security header check).
    pub fn rpc_count(&self, method: Method) -> u64 {
        self.shared.metrics.rpc_count(method)
    }

    /// X.509-SVID re-issuances so far (the initial issuance is not counted).
    pub fn x509_rotations(&self) -> u64 {
        self.shared.metrics.x509_rotations()
    }

    /// JWT signing key rotations so far.
    pub fn jwt_key_rotations(&self) -> u64 {
        self.shared.metrics.jwt_key_rotations()
    }

    /// The authority of the agent's own trust domain, e.g. to sign a token out of band.
    pub fn authority(&self) -> &Arc<Authority> {
        &self.shared.own
    }

    /// The authority of a federated trust domain, to mint its SVIDs and tokens in tests.
    pub fn federated_authority(&self, trust_domain: &TrustDomain) -> Option<Arc<Authority>> {
        self.shared
            .federated()
            .into_iter()
            .find(|a| a.trust_domain() == trust_domain)
    }

    /// Stops federating with `trust_domain` now (see `POST /federation/drop`); `false` if it
    /// was not federated. Returns once the bundles without it were pushed.
    pub async fn drop_federation(&self, trust_domain: &TrustDomain) -> Result<bool, Error> {
        self.shared.drop_federation(trust_domain).await
    }

    /// Replaces the X.509 CA now and re-issues every SVID (see `POST /retire/x509`).
    pub async fn retire_x509_ca_now(&self) -> Result<(), Error> {
        self.shared.retire_x509_ca_now().await
    }

    /// The identities handed out, first is the default.
    pub fn spiffe_ids(&self) -> &[SpiffeId] {
        &self.shared.spiffe_ids
    }

    /// Re-issues all X.509-SVIDs now and pushes them to every stream; returns once pushed.
    pub async fn rotate_x509(&self) -> Result<(), Error> {
        self.shared.rotate_x509().await
    }

    /// Rotates the JWT signing key now and pushes the new JWKS; returns once pushed.
    pub async fn rotate_jwt_key(&self) -> Result<(), Error> {
        self.shared.rotate_jwt_key().await
    }

    /// Retires the JWT signing key now: a new key signs and the old one leaves the JWKS in
    /// the same push (SPIRE's taint/revoke). Returns the removed kid once pushed.
    pub async fn retire_jwt_key_now(&self) -> Result<String, Error> {
        self.shared.retire_jwt_key_now().await
    }

    /// Resolves when the agent stops on its own (a server failed) or a shutdown began.
    pub async fn stopped(&self) {
        stopping(self.shared.shutdown.subscribe()).await;
    }

    /// Graceful shutdown: stop accepting, end all streams, let in-flight calls finish (at
    /// most a few seconds), and remove the Unix socket file.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut self.tasks);
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
            tracing::warn!("connections did not drain in time, aborting");
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
        if let Some(file) = self.socket_file.take() {
            file.remove().await;
        }
        tracing::info!("stopped");
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}
