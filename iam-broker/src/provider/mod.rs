//! Credential providers: something that turns the workload's identity into short-lived cloud
//! credentials. The cache ([`crate::cache`]) is the only caller, one call at a time, and owns
//! retry timing; a provider makes *one* attempt per call and says how it failed, so the cache
//! can pick the retry schedule (for STS: `docs/protocols.md#aws-sts`).
//!
//! Each cloud owns a folder (the layout rule: a provider owns its folder): `config.rs` (its
//! settings as rows, and validators), `exchange.rs` (its token exchange, a
//! [`CredentialProvider`]) and `routes.rs` (the HTTP routes and formats its SDKs expect); its
//! `mod.rs` implements [`Provider`], which is all the rest of the broker knows of it: its
//! flags, rows and shared-setting defaults, reading its settings, and building its
//! [`crate::http::Service`] with its own metrics. The subcommand list in `cli.rs` names
//! each [`Provider`] once. All share the shape: a JWT-SVID in ([`JwtSource`]), an expiring
//! credential out, as in every federation the zero trust workload identity manager documents
//! (`docs/protocols.md#ztwim`).

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use prometheus_client::registry::Registry;
use sidecar_runtime::settings::{Reader, Setting};
use sidecar_runtime::tls_roots::TrustRoots;
use time::OffsetDateTime;

use crate::config::{Common, SharedRules};
use crate::http::Service;

pub mod aws;
pub mod azure;
pub mod gcp;
pub mod https;
mod jwt;
pub mod vault;

pub use jwt::{JwtSource, Refused};

/// A cloud the broker serves credentials of, as a plug-in: everything the subcommand, the
/// configuration and `main` need from it.
pub trait Provider: Clone + fmt::Debug + Sized + 'static {
    /// Its flags, after the shared ones.
    type Args: clap::Args + fmt::Debug;

    /// Its settings, in `--help`'s order; its help's environment list is generated from these
    /// after the shared ones ([`crate::config::SETTINGS`]).
    const SETTINGS: &'static [&'static Setting];

    /// What it changes in the shared settings (a default audience, its own listen port).
    const SHARED: SharedRules = SharedRules::DEFAULT;

    /// Closing words of its `--help`, such as how to point the application at the broker.
    const HELP: &'static str = "";

    /// Reads its settings from `r`, recording every bad one; `None` when one is bad. `common`
    /// holds the shared settings, read first, or `None` when one of those was bad (its own
    /// settings are read and reported all the same).
    fn read(args: &Self::Args, common: Option<&Common>, r: &mut Reader<'_>) -> Option<Self>;

    /// Builds its service: its exchange and cache (started now), its routes, and its own
    /// metrics, registered in `cx.registry`.
    fn service(&self, cx: Context<'_>) -> anyhow::Result<Service>;
}

/// What a provider builds its service from.
#[derive(Debug)]
pub struct Context<'a> {
    /// The shared settings.
    pub common: &'a Common,
    /// CA roots for its TLS.
    pub roots: &'a TrustRoots,
    /// The workload's JWT-SVIDs.
    pub jwt: JwtSource,
    /// The Workload API (lazy), for a provider that needs more than JWT-SVIDs.
    pub workload_api: &'a workload_client::WorkloadApiClient,
    /// Where it registers its metrics (prefix `iam_broker_`).
    pub registry: &'a mut Registry,
}

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
