//! `sds-bridge`: an Envoy SDS v3 server fed by the SPIFFE Workload API
//! (`docs/protocols.md#sds`).
//!
//! - [`config`]: flags and `SDS_BRIDGE_*` variables, parsed once;
//! - [`names`]: SDS resource names and their meaning (SPIRE agent compatible);
//! - [`catalog`]: every secret of one X.509 snapshot, rendered once for all streams;
//! - [`ecds`]: the `jwt_authn` filter config with inline keys over ECDS, pushed on key changes;
//! - [`jwks`]: the loopback JWKS endpoint (one document per trust domain) for `jwt_authn`;
//! - [`envoy_config`]: `sds-bridge jwt-authn-config`, the matching Envoy filters;
//! - [`jwt`]: JWT-SVIDs from the shared cache as generic secrets (credential_injector);
//! - [`limits`]: per-request, bridge-wide and per-connection bounds on what clients can ask for;
//! - [`stream`]: the state-of-the-world state machine of one Envoy stream;
//! - [`service`]: the gRPC service running one stream task per Envoy stream;
//! - [`metrics`]: stream, push, ACK and NACK metrics.

pub mod catalog;
pub mod config;
pub mod ecds;
pub mod envoy_config;
pub mod jwks;
pub mod jwt;
pub mod limits;
pub mod metrics;
pub mod names;
pub mod service;
pub mod stream;

#[cfg(test)]
mod testing;
