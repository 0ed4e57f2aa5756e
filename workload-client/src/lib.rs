//! The one SPIFFE Workload API client every sidecar in this suite uses.
//!
//! - [`endpoint`]: parsing `unix:///…` / `tcp://IP:PORT` and the shared resolution order
//!   (flag → sidecar variable → `SPIFFE_ENDPOINT_SOCKET` → the CSI socket path).
//! - [`client`]: the gRPC client; the `workload.spiffe.io: true` header on every call.
//! - [`watcher`]: the reconnecting stream supervisor, with [`X509Watcher`] and
//!   [`JwtBundleWatcher`] built on it.
//! - [`jwt::cache`]: the per-audience JWT-SVID cache (no agent call on a request path).
//! - [`jwt::validate`]: local JWT-SVID validation against watched bundles.
//! - [`backoff`]: the jittered exponential backoff all retry loops share.
//! - [`clock`]: the wall clock every validity/refresh decision reads (suspend, clock steps).
//!
//! The protocol facts and peer behaviours this crate relies on are described, with upstream
//! links, in `docs/protocols.md`; comments cite its sections as `docs/protocols.md#<anchor>`.

pub mod backoff;
pub mod client;
pub mod clock;
pub mod endpoint;
pub mod jwt;
pub mod watcher;
pub mod x509;

pub use client::{ClientError, WorkloadApiClient, lazy_channel};
pub use clock::{Clock, SharedClock, TestClock, WallClock};
pub use endpoint::{
    Endpoint, EndpointError, EndpointSource, Env, ProcessEnv, ResolveError, resolve_endpoint,
    resolve_endpoint_from,
};
pub use jwt::bundles::JwtBundleWatcher;
pub use jwt::cache::{CacheConfig, CacheError, CacheStats, JwtKey, JwtSvidCache};
pub use jwt::validate::{TrustDomainPolicy, ValidationError, validate_jwt_svid};
pub use watcher::{StreamStatus, Watcher};
pub use x509::{X509Context, X509Watcher};

/// Re-exported so sidecars name one set of SPIFFE types.
pub use spiffe;
