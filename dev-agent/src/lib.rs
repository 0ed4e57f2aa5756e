//! `spiffe-dev-agent`: a small but honest SPIFFE Workload API server for local runs, demos
//! and tests that need no SPIRE server (the sidecars are tested against SPIRE too).
//!
//! It speaks the real protocol (`docs/protocols.md#workload-api`): all five RPCs, the security
//! header, streamed full snapshots, X509-SVIDs re-issued before half-life, rotating JWT signing
//! keys whose retired keys stay published until their tokens expire, federated trust domains, and
//! OIDC discovery (`docs/protocols.md#oidc-discovery`).
//!
//! Tests run it in-process:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use dev_agent::{Agent, Config, Endpoint, Method};
//! let dir = tempfile::tempdir()?;
//! let socket = Endpoint::Unix(dir.path().join("agent.sock"));
//! let config = Config::new(socket, "example.org".parse()?);
//! let agent = Agent::start(config).await?;
//! // ... point a client at agent.endpoint() ...
//! assert_eq!(agent.rpc_count(Method::FetchJwtSvid), 0);
//! agent.shutdown().await;
//! # Ok(()) }
//! ```

pub mod admin;
mod agent;
mod authority;
mod ca;
mod config;
mod discovery;
mod jwt_keys;
mod listen;
mod metrics;
mod mint;
mod oidc;
mod rotation;
mod schedule;
mod secret;
mod service;
mod shared;
mod state;

pub use agent::{Agent, RunningAgent};
pub use authority::{Authority, AuthorityError, DEFAULT_CA_VALIDITY};
pub use ca::{CLOCK_SKEW_ALLOWANCE, CaError, CertificateAuthority, IssuedX509Svid};
pub use config::{
    Cli, Command, Config, ConfigError, DEFAULT_JWT_KEY_ROTATION, DEFAULT_JWT_TTL,
    DEFAULT_SOCKET_MODE, DEFAULT_X509_TTL, Endpoint, LogFormat,
};
pub use jwt_keys::{JwtAlg, JwtClaims, JwtError, JwtKeySet, RetiredKey, SigningKey};
pub use metrics::{Method, Metrics};
pub use mint::{MintError, MintJwtArgs, mint_jwt};
pub use oidc::{discovery_document, oidc_jwks};
pub use secret::SecretBytes;
pub use service::check_security_header;
pub use state::{StateDir, StateError};

/// Why the agent could not start or an operation on it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Generating or using a signing authority failed.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// The state directory is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which server.
        what: &'static str,
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The Workload API socket could not be created: another server answers on it, the
    /// path is not a socket, or the file system refused.
    #[error("Workload API socket: {0}")]
    Listen(#[from] sidecar_runtime::uds::ListenError),
    /// A background task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}
