//! The JWT-SVID every provider presents (AWS as web identity token, Entra ID as client
//! assertion, Google STS as subject token).

use std::sync::Arc;
use std::time::Duration;

use workload_client::spiffe::JwtSvid;
use workload_client::{JwtKey, JwtSvidCache, WorkloadApiClient};

use super::{ErrorKind, JWT_WAIT, ProviderError};

/// Deadline for a FetchJWTSVID that bypasses the cache (after the provider refused a token).
const FRESH_TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the provider gets its JWT-SVIDs: the shared JWT cache (refreshed at half-life in the
/// background, so an STS attempt never waits on the agent), and the client itself for the one
/// fresh token after `InvalidIdentityToken`.
#[derive(Clone, Debug)]
pub struct JwtSource {
    cache: JwtSvidCache,
    client: WorkloadApiClient,
    key: JwtKey,
}

impl JwtSource {
    /// Pins `key` in `cache` (fetched now, kept fresh).
    pub fn new(cache: JwtSvidCache, client: WorkloadApiClient, key: JwtKey) -> Self {
        cache.pin(&key);
        Self { cache, client, key }
    }

    /// The cached JWT-SVID (waits at most [`JWT_WAIT`] for the first one).
    pub async fn cached(&self) -> Result<Arc<JwtSvid>, ProviderError> {
        self.cache.get(&self.key, JWT_WAIT).await.map_err(|e| {
            ProviderError::new(
                ErrorKind::Identity,
                format!("no JWT-SVID from the Workload API: {e}"),
            )
        })
    }

    /// A JWT-SVID fetched now, bypassing the cache (after the provider refused the cached one).
    pub async fn fresh(&self) -> Result<JwtSvid, ProviderError> {
        let call = self
            .client
            .fetch_jwt_svid(self.key.audiences(), self.key.spiffe_id());
        match tokio::time::timeout(FRESH_TOKEN_TIMEOUT, call).await {
            Ok(Ok(svid)) => Ok(svid),
            Ok(Err(e)) => Err(ProviderError::new(
                ErrorKind::Identity,
                format!("fetching a fresh JWT-SVID: {e}"),
            )),
            Err(_) => Err(ProviderError::new(
                ErrorKind::Identity,
                format!("fetching a fresh JWT-SVID timed out after {FRESH_TOKEN_TIMEOUT:?}"),
            )),
        }
    }
}
