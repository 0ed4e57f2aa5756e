//! The JWT-SVID every provider presents (AWS as web identity token, Entra ID as client
//! assertion, Google STS as subject token), and the one retry every provider makes when the
//! token itself is refused ([`JwtSource::present`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sidecar_runtime::Readiness;
use workload_client::spiffe::JwtSvid;
use workload_client::{JwtKey, JwtSvidCache, WorkloadApiClient};

use super::{ErrorKind, JWT_WAIT, ProviderError};

/// Deadline for a FetchJWTSVID that bypasses the cache (after the provider refused a token).
const FRESH_TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How a provider answered a JWT-SVID it was shown, when it did not accept it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Refused {
    /// The token itself was refused as invalid, expired or not yet valid (STS
    /// `InvalidIdentityToken` / `ExpiredTokenException`, Entra `AADSTS700024` / `AADSTS700027`):
    /// a freshly fetched one may pass (the cached one aged past the provider's clock skew, or
    /// was signed with a key the provider no longer trusts). The message describes the refusal.
    Token(String),
    /// Anything else: the attempt's outcome as it is.
    Other(ProviderError),
}

impl From<ProviderError> for Refused {
    fn from(e: ProviderError) -> Self {
        Self::Other(e)
    }
}

/// Where the provider gets its JWT-SVIDs: the shared JWT cache (refreshed at half-life in the
/// background, so an exchange never waits on the agent), and the client itself for the one
/// fresh token after the provider refused the cached one ([`JwtSource::present`]).
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

    /// Ready while a valid JWT-SVID for the audience is held (the sidecars' common rule: ready
    /// while holding a valid SVID). Without one the broker can exchange nothing new.
    pub fn readiness(&self) -> Readiness {
        if self.cache.peek(&self.key).is_some() {
            return Readiness::Ready;
        }
        let last_error = self
            .cache
            .stats()
            .entries
            .into_iter()
            .find(|e| e.key == self.key)
            .and_then(|e| e.last_error);
        Readiness::NotReady(match last_error {
            Some(e) => format!("no valid JWT-SVID from the Workload API: {e}"),
            None => "no JWT-SVID from the Workload API yet".to_owned(),
        })
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

    /// One attempt: shows the cached JWT-SVID to the provider with `exchange`; if the provider
    /// refuses the token itself ([`Refused::Token`]), fetches a fresh one from the agent
    /// (bypassing the cache) and shows that once more. If the agent hands back the same token
    /// (SPIRE serves its cached token until half its life) or the fresh one is refused too, the
    /// attempt fails as transient: the cache backs off and the JWT cache refreshes meanwhile.
    ///
    /// `exchange` takes the token by `Arc` and returns a boxed future: a closure over borrowed
    /// tokens makes the attempt's future `Send` only for one lifetime, and the cache needs it
    /// `Send` for all.
    pub async fn present<'a, T>(
        &self,
        exchange: impl Fn(Arc<JwtSvid>) -> BoxFuture<'a, Result<T, Refused>>,
    ) -> Result<T, ProviderError> {
        let token = self.cached().await?;
        let message = match exchange(token.clone()).await {
            Ok(v) => return Ok(v),
            Err(Refused::Other(e)) => return Err(e),
            Err(Refused::Token(message)) => message,
        };
        tracing::warn!(
            error = %message,
            "the provider refused the JWT-SVID; retrying once with a freshly fetched one"
        );
        let fresh = self.fresh().await?;
        if fresh.token() == token.token() {
            return Err(ProviderError::new(
                ErrorKind::Transient,
                format!("{message}; the agent returned the same JWT-SVID"),
            ));
        }
        match exchange(Arc::new(fresh)).await {
            Ok(v) => Ok(v),
            Err(Refused::Other(e)) => Err(e),
            // E.g. the provider still holding the issuer's old keys: back off, not give up.
            Err(Refused::Token(message)) => Err(ProviderError::new(ErrorKind::Transient, message)),
        }
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
