//! The agent's state, shared by the Workload API service, the OIDC and admin endpoints and the
//! rotation tasks: the authorities, the snapshots every stream sends, and the operations that
//! replace them. It imports none of its users, so each of them depends on it alone.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use spiffe::{JwtBundleSet, SpiffeId, TrustDomain};
use tokio::{
    sync::{Mutex, watch},
    time::Instant,
};
use workload_proto::{JwtBundlesResponse, X509BundlesResponse, X509svid, X509svidResponse};

use crate::{
    Error,
    authority::{Authority, DEFAULT_CA_VALIDITY},
    config::Config,
    jwt_keys::SigningKey,
    metrics::Metrics,
    schedule,
    state::StateDir,
};

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

// === impl Shared ===

impl Shared {
    /// The state of an agent about to start: the first X.509-SVIDs issued and the JWT bundles
    /// published, so that no stream can see an empty snapshot.
    pub(crate) fn new(
        config: &Config,
        spiffe_ids: Vec<SpiffeId>,
        own: Arc<Authority>,
        federated: Vec<Arc<Authority>>,
        state: Option<StateDir>,
    ) -> Result<Arc<Self>, Error> {
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
        let shared = Arc::new(Self {
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
        Ok(shared)
    }

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
            rotate_at: schedule::instant_after(schedule::x509_refresh_after(self.x509_ttl)),
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

/// Resolves when the agent starts stopping (or the agent is gone).
pub(crate) async fn stopping(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stopping| *stopping).await;
}
