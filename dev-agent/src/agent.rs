//! [`Agent::start`] binds the sockets and spawns the servers and rotation tasks;
//! [`RunningAgent`] is the handle tests and `main.rs` hold.

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use spiffe::{JwtBundleSet, SpiffeId, TrustDomain};
use tokio::{
    sync::{Mutex, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_stream::wrappers::TcpListenerStream;
use workload_proto::{
    JwtBundlesResponse, X509BundlesResponse, X509svid, X509svidResponse,
    spiffe_workload_api_server::SpiffeWorkloadApiServer,
};

use crate::{
    Error,
    authority::{Authority, DEFAULT_CA_VALIDITY},
    config::{Config, Endpoint},
    jwt_keys::SigningKey,
    listen::{Incoming, bind_tcp, bind_workload_api},
    metrics::{Method, Metrics},
    rotation,
    service::WorkloadApiService,
    state::StateDir,
};

/// How long [`RunningAgent::shutdown`] waits for connections to drain before aborting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

// === Snapshots ===

/// What every `FetchX509SVID` stream sends: a full snapshot, re-issued before half-life.
#[derive(Debug)]
pub(crate) struct X509Snapshot {
    pub(crate) response: X509svidResponse,
    /// When the background task re-issues these SVIDs.
    pub(crate) rotate_at: Instant,
}

/// What every `FetchJWTBundles` stream sends, plus the parsed bundles `ValidateJWTSVID` uses.
#[derive(Debug)]
pub(crate) struct JwtBundlesSnapshot {
    pub(crate) response: JwtBundlesResponse,
    pub(crate) bundle_set: JwtBundleSet,
    /// JWKS of the own trust domain as served on the OIDC `/keys` endpoint.
    pub(crate) oidc_jwks: String,
}

// === Shared ===

/// State shared by the gRPC service, the HTTP endpoints and the rotation tasks.
pub(crate) struct Shared {
    pub(crate) spiffe_ids: Vec<SpiffeId>,
    pub(crate) x509_ttl: Duration,
    pub(crate) jwt_ttl: Duration,
    pub(crate) jwt_key_rotation: Duration,
    pub(crate) jwt_issuer: Option<String>,
    pub(crate) own: Arc<Authority>,
    /// Federated trust domains; an operator can drop one at run time (a compromised partner).
    federated: RwLock<Vec<Arc<Authority>>>,
    state: Option<StateDir>,
    pub(crate) metrics: Metrics,
    pub(crate) x509: watch::Sender<Arc<X509Snapshot>>,
    pub(crate) x509_bundles: watch::Sender<Arc<X509BundlesResponse>>,
    pub(crate) jwt_bundles: watch::Sender<Arc<JwtBundlesSnapshot>>,
    /// `true` once the agent is stopping; streams and servers end on it.
    pub(crate) shutdown: watch::Sender<bool>,
    /// Serialize rotations so a forced one and a scheduled one cannot interleave.
    x509_lock: Mutex<()>,
    jwt_lock: Mutex<()>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("trust_domain", self.own.trust_domain())
            .field("spiffe_ids", &self.spiffe_ids)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Re-issues every X.509-SVID and pushes the snapshot to all streams.
    pub(crate) async fn rotate_x509(&self) -> Result<(), Error> {
        let _guard = self.x509_lock.lock().await;
        let snapshot = self.issue_x509()?;
        self.x509.send_replace(Arc::new(snapshot));
        self.metrics.count_x509_rotation();
        tracing::info!(count = self.spiffe_ids.len(), "rotated X.509-SVIDs");
        Ok(())
    }

    /// Replaces the own trust domain's JWT signing key and pushes the new JWKS.
    pub(crate) async fn rotate_jwt_key(&self) -> Result<(), Error> {
        let _guard = self.jwt_lock.lock().await;
        let next = self.generate_jwt_key().await?;
        self.own.rotate_jwt_key(next, self.jwt_ttl);
        self.metrics.count_jwt_key_rotation();
        tracing::info!(kid = %self.own.current_kid(), "rotated JWT signing key");
        self.publish_jwt_bundles()?;
        self.persist_own_jwt_keys().await
    }

    /// A new signing key of the own trust domain's algorithm, for the next rotation.
    async fn generate_jwt_key(&self) -> Result<SigningKey, Error> {
        let alg = self.own.jwt_alg();
        // RSA key generation is slow: keep it off the async workers.
        Ok(
            tokio::task::spawn_blocking(move || SigningKey::generate(alg))
                .await
                .map_err(|e| Error::Task(e.to_string()))?
                .map_err(crate::authority::AuthorityError::from)?,
        )
    }

    /// Retires the own trust domain's JWT signing key early: a new key signs, and the old one
    /// leaves the JWKS in the same update (a tainted or revoked key). Returns the removed kid.
    pub(crate) async fn retire_jwt_key_now(&self) -> Result<String, Error> {
        let _guard = self.jwt_lock.lock().await;
        let next = self.generate_jwt_key().await?;
        let retired = self.own.retire_jwt_key_now(next);
        self.metrics.count_jwt_key_rotation();
        tracing::info!(
            retired_kid = %retired,
            kid = %self.own.current_kid(),
            "retired the JWT signing key early: removed from the bundle"
        );
        self.publish_jwt_bundles()?;
        self.persist_own_jwt_keys().await?;
        Ok(retired)
    }

    /// The federated trust domains' authorities now.
    pub(crate) fn federated(&self) -> Vec<Arc<Authority>> {
        self.federated
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops federating with `trust_domain`, as after a partner's compromise: its X.509 and JWT
    /// bundles leave every stream in one push (X.509-SVID, X.509 bundles and JWT bundles
    /// streams). Returns `false` if it was not federated. With `--state-dir` the drop is
    /// recorded first and survives restarts (even with `--federate-with` still naming it);
    /// without, a restart federates again, with new keys for every trust domain.
    pub(crate) async fn drop_federation(&self, trust_domain: &TrustDomain) -> Result<bool, Error> {
        let _x509 = self.x509_lock.lock().await;
        let _jwt = self.jwt_lock.lock().await;
        if !self
            .federated()
            .iter()
            .any(|a| a.trust_domain() == trust_domain)
        {
            return Ok(false);
        }
        // On disk before in memory: if recording fails, nothing changed and the operator
        // sees the error.
        if let Some(state) = self.state.clone() {
            let td = trust_domain.clone();
            tokio::task::spawn_blocking(move || state.mark_federation_dropped(&td))
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
        }
        self.federated
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|a| a.trust_domain() != trust_domain);
        // The SVIDs themselves are unchanged: push the current ones with the new bundle map.
        let current = self.x509.borrow().clone();
        let mut response = current.response.clone();
        response.federated_bundles = self.federated_x509_bundles();
        self.x509.send_replace(Arc::new(X509Snapshot {
            response,
            rotate_at: current.rotate_at,
        }));
        self.publish_x509_bundles();
        self.publish_jwt_bundles()?;
        tracing::warn!(%trust_domain, "dropped federated trust domain: its bundles are gone");
        Ok(true)
    }

    /// Replaces the own trust domain's CA now and re-issues every X.509-SVID with the new one;
    /// the old CA leaves the bundle in the same push (SPIRE's X.509 authority taint + revoke).
    pub(crate) async fn retire_x509_ca_now(&self) -> Result<(), Error> {
        let _guard = self.x509_lock.lock().await;
        let td = self.own.trust_domain().clone();
        let validity = DEFAULT_CA_VALIDITY.max(self.x509_ttl.saturating_mul(10));
        // Key generation: off the async workers.
        let next = tokio::task::spawn_blocking(move || {
            crate::ca::CertificateAuthority::generate(&td, validity)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(crate::authority::AuthorityError::from)?;
        // On disk before in memory, so a restart never brings the retired CA back.
        let next = match self.state.clone() {
            Some(state) => {
                let td = self.own.trust_domain().clone();
                tokio::task::spawn_blocking(move || state.save_ca(&td, &next).map(|()| next))
                    .await
                    .map_err(|e| Error::Task(e.to_string()))??
            }
            None => next,
        };
        self.own.retire_ca_now(next)?;
        let snapshot = self.issue_x509()?;
        self.x509.send_replace(Arc::new(snapshot));
        self.publish_x509_bundles();
        self.metrics.count_x509_rotation();
        tracing::warn!(
            "retired the X.509 CA early: new CA, SVIDs re-issued, old CA out of the bundle"
        );
        Ok(())
    }

    fn federated_x509_bundles(&self) -> HashMap<String, Vec<u8>> {
        self.federated()
            .iter()
            .map(|a| (a.trust_domain().id_string(), a.ca_der()))
            .collect()
    }

    fn publish_x509_bundles(&self) {
        self.x509_bundles
            .send_replace(Arc::new(x509_bundles(&self.own, &self.federated())));
    }

    /// Drops retired JWT keys whose tokens have expired; pushes the JWKS if it changed.
    pub(crate) async fn prune_jwt_keys(&self) -> Result<(), Error> {
        let _guard = self.jwt_lock.lock().await;
        if self.own.prune_jwt_keys() {
            tracing::info!("removed expired JWT signing key from the bundle");
            self.publish_jwt_bundles()?;
            self.persist_own_jwt_keys().await?;
        }
        Ok(())
    }

    fn issue_x509(&self) -> Result<X509Snapshot, Error> {
        let bundle = self.own.ca_der();
        let svids = self
            .spiffe_ids
            .iter()
            .map(|id| {
                let issued = self.own.issue_x509(id, self.x509_ttl)?;
                Ok(X509svid {
                    spiffe_id: id.to_string(),
                    x509_svid: issued.cert_der,
                    x509_svid_key: issued.key_pkcs8.expose().to_vec(),
                    bundle: bundle.clone(),
                    hint: String::new(),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let federated_bundles = self.federated_x509_bundles();
        Ok(X509Snapshot {
            response: X509svidResponse {
                svids,
                crl: Vec::new(),
                federated_bundles,
            },
            rotate_at: rotation::instant_after(rotation::x509_refresh_after(self.x509_ttl)),
        })
    }

    fn jwt_bundles_snapshot(&self) -> Result<JwtBundlesSnapshot, Error> {
        let own_jwks = self.own.jwks();
        let mut bundles = HashMap::new();
        let mut bundle_set = JwtBundleSet::new();
        let federated = self.federated();
        for authority in std::iter::once(&self.own).chain(&federated) {
            let jwks = if Arc::ptr_eq(authority, &self.own) {
                own_jwks.to_string()
            } else {
                authority.jwks_json()
            };
            bundle_set.add_bundle(
                spiffe::JwtBundle::from_jwt_authorities(
                    authority.trust_domain().clone(),
                    jwks.as_bytes(),
                )
                .map_err(crate::authority::AuthorityError::from)?,
            );
            bundles.insert(authority.trust_domain().id_string(), jwks.into_bytes());
        }
        Ok(JwtBundlesSnapshot {
            response: JwtBundlesResponse { bundles },
            bundle_set,
            oidc_jwks: crate::oidc::oidc_jwks(&own_jwks),
        })
    }

    fn publish_jwt_bundles(&self) -> Result<(), Error> {
        let snapshot = self.jwt_bundles_snapshot()?;
        self.jwt_bundles.send_replace(Arc::new(snapshot));
        Ok(())
    }

    async fn persist_own_jwt_keys(&self) -> Result<(), Error> {
        let Some(state) = self.state.clone() else {
            return Ok(());
        };
        let own = Arc::clone(&self.own);
        tokio::task::spawn_blocking(move || state.save_jwt_keys(&own))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        Ok(())
    }
}

fn x509_bundles(own: &Authority, federated: &[Arc<Authority>]) -> X509BundlesResponse {
    let bundles = std::iter::once(own)
        .chain(federated.iter().map(AsRef::as_ref))
        .map(|a| (a.trust_domain().id_string(), a.ca_der()))
        .collect();
    X509BundlesResponse {
        crl: Vec::new(),
        bundles,
    }
}

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

        let (shutdown, _) = watch::channel(false);
        let x509_bundles = watch::Sender::new(Arc::new(x509_bundles(&own, &federated)));
        // Placeholders, replaced below before anything can subscribe.
        let x509 = watch::Sender::new(Arc::new(X509Snapshot {
            response: X509svidResponse::default(),
            rotate_at: Instant::now(),
        }));
        let jwt_bundles = watch::Sender::new(Arc::new(JwtBundlesSnapshot {
            response: JwtBundlesResponse::default(),
            bundle_set: JwtBundleSet::new(),
            oidc_jwks: String::new(),
        }));
        let shared = Arc::new(Shared {
            spiffe_ids,
            x509_ttl: config.x509_ttl,
            jwt_ttl: config.jwt_ttl,
            jwt_key_rotation: config.jwt_key_rotation,
            jwt_issuer: config.jwt_issuer.clone(),
            own,
            federated: RwLock::new(federated),
            state,
            metrics: Metrics::default(),
            x509,
            x509_bundles,
            jwt_bundles,
            shutdown,
            x509_lock: Mutex::new(()),
            jwt_lock: Mutex::new(()),
        });
        shared.x509.send_replace(Arc::new(shared.issue_x509()?));
        shared.publish_jwt_bundles()?;

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
                let app = crate::oidc::router(Arc::clone(&shared));
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

/// Resolves when the agent starts stopping (or the agent is gone).
pub(crate) async fn stopping(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stopping| *stopping).await;
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
