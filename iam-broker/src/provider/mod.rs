//! Credential providers: something that turns the workload's identity into short-lived cloud
//! credentials. The cache ([`crate::cache`]) is the only caller, one call at a time, and owns
//! retry timing; a provider makes *one* attempt per call and says how it failed, so the cache
//! can pick the retry schedule (for STS: `docs/protocols.md#aws-sts`).
//!
//! Each cloud owns a folder (the layout rule: a provider owns its folder): `config.rs` (its
//! settings and validators), `exchange.rs` (its token exchange, a [`CredentialProvider`]) and
//! `routes.rs` (the HTTP routes and formats its SDKs expect); its `mod.rs` wires them into a
//! [`crate::http::Service`]. All share the shape: a JWT-SVID in ([`JwtSource`]), an expiring
//! credential out, as in every federation the zero trust workload identity manager documents
//! (`docs/protocols.md#ztwim`).

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use time::OffsetDateTime;

pub mod aws;
pub mod azure;
pub mod gcp;
pub mod https;
mod jwt;
pub mod vault;

pub use jwt::{JwtSource, Refused};

/// Credentials that expire at a known instant.
pub trait Expiring {
    /// When the credentials stop working (the provider's clock).
    fn expiration(&self) -> OffsetDateTime;
}

/// A source of short-lived credentials.
pub trait CredentialProvider: Send + Sync + 'static {
    /// What it hands out.
    type Credentials: Expiring + Send + Sync + 'static;

    /// A short name for logs and metrics (`aws`).
    fn name(&self) -> &'static str;

    /// One attempt (a provider may make a second call inside it where its protocol says so:
    /// a refused token retried once with a fresh one, [`JwtSource::present`]).
    fn fetch(&self) -> BoxFuture<'_, Result<Self::Credentials, ProviderError>>;
}

/// How an attempt failed, which decides what the cache does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No JWT-SVID (agent not up yet, workload not attested): local and cheap to retry soon.
    Identity,
    /// The provider failed in a way that may pass (throttling, 5xx, transport, its IdP
    /// unreachable): retry with jittered backoff while still-valid credentials are served.
    Transient,
    /// The provider refused the request (`AccessDenied`, `ValidationError`): retrying the same
    /// request cannot help, so the next attempt waits for a client to ask, after a cool-down.
    Rejected,
}

impl ErrorKind {
    /// A label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity_unavailable",
            Self::Transient => "provider_unavailable",
            Self::Rejected => "provider_rejected",
        }
    }
}

/// A failed attempt. The message never holds a token or a key.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// A one-line description an operator can act on.
    pub message: String,
}

impl ProviderError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Debug for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

/// How long a provider waits for the JWT cache to produce a token before reporting
/// [`ErrorKind::Identity`] (the cache keeps fetching; the next attempt finds the token).
pub const JWT_WAIT: Duration = Duration::from_secs(5);
