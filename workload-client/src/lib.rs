//! The one SPIFFE Workload API client every sidecar in this suite uses.
//!
//! - endpoints: parsing `unix:///…` / `tcp://IP:PORT` and the shared resolution order
//!   (flag → sidecar variable → `SPIFFE_ENDPOINT_SOCKET` → the CSI socket path):
//!   [`Endpoint`], [`resolve_endpoint`];
//! - the gRPC client, with the `workload.spiffe.io: true` header on every call:
//!   [`WorkloadApiClient`];
//! - the reconnecting stream supervisor ([`Watcher`]), with [`X509Watcher`] and
//!   [`JwtBundleWatcher`] built on it;
//! - the per-audience JWT-SVID cache, so no request path calls the agent: [`JwtSvidCache`];
//! - local JWT-SVID validation against watched bundles: [`validate_jwt_svid`];
//! - [`backoff`]: the jittered exponential backoff all retry loops share;
//! - [`clock`]: the wall clock every validity/refresh decision reads (suspend, clock steps).
//!
//! Only what callers need is public, re-exported here; the modules are private but for
//! `backoff` and `clock`, which are namespaces of their own.
//!
//! The protocol facts and peer behaviours this crate relies on are described, with upstream
//! links, in `docs/protocols.md`; comments cite its sections as `docs/protocols.md#<anchor>`.

pub mod backoff;
mod client;
pub mod clock;
mod endpoint;
mod jwt;
mod snapshot_error;
mod watcher;
mod x509;

pub use backoff::{Backoff, BackoffPolicy, jitter};
pub use client::{
    ClientError, DEFAULT_UNARY_TIMEOUT, SecurityHeader, WorkloadApiClient, lazy_channel,
};
pub use clock::{Clock, SharedClock, TestClock, WallClock};
pub use endpoint::{
    DEFAULT_ENDPOINT, Endpoint, EndpointError, EndpointSource, Env, ProcessEnv, ResolveError,
    ResolvedEndpoint, SPIFFE_ENDPOINT_SOCKET, resolve_endpoint, resolve_endpoint_from,
};
pub use jwt::bundles::{JwtBundleWatcher, bundles_from_response};
pub use jwt::cache::{CacheConfig, CacheError, CacheStats, EntryStatus, JwtKey, JwtSvidCache};
pub use jwt::validate::{MAX_TOKEN_LEN, TrustDomainPolicy, ValidationError, validate_jwt_svid};
pub use snapshot_error::SnapshotError;
pub use watcher::{StreamStatus, Watcher};
pub use x509::{SvidEntry, X509Context, X509Watcher};

/// Re-exported so sidecars name one set of SPIFFE types.
pub use spiffe;
