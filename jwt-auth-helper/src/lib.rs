//! `jwt-auth-helper`: an Envoy ext_authz v3 server that stamps (`jwt_injection`) or checks
//! (`jwt_svid_validator`) JWT-SVIDs, a drop-in for the spire-tutorials Go helper
//! (`docs/protocols.md#ext-authz-upstream-helper`) without a Workload API call on the request
//! path.
//!
//! - [`config`]: flags > environment > upstream HCL file > defaults;
//! - [`authz`]: the decision per request and its mapping to `CheckResponse`;
//! - `main.rs`: wiring only (listeners, health, admin, shutdown).

pub mod authz;
pub mod config;
pub mod hcl;
pub mod metrics;
