//! `iam-broker`: trades the workload's JWT-SVID for cloud credentials and serves them on
//! loopback, so that tools and SDKs get credentials with no secret in the pod (REFERENCE §4).
//!
//! - [`config`]: flags > environment > defaults, one validated [`config::Config`];
//! - [`provider`]: the [`provider::CredentialProvider`] trait and its AWS STS implementation
//!   (`AssumeRoleWithWebIdentity`, unsigned); other clouds (Vault, GCP, Entra ID) plug in there;
//! - [`session_name`]: `RoleSessionName` derived from the SPIFFE ID;
//! - [`cache`]: the credential cache (background refresh before clients' refresh window, single
//!   flight, stale-but-valid credentials served while STS fails);
//! - [`http`]: the loopback HTTP server (`/v1/creds` for `credential_process`,
//!   `/v1/container-creds` for the SDKs' container provider), with its guards;
//! - [`metrics`]: Prometheus metrics of the above;
//! - [`secret`]: a string type whose `Debug`/`Display` never show the value;
//! - `main.rs`: wiring only.

pub mod cache;
pub mod config;
pub mod http;
pub mod metrics;
pub mod provider;
pub mod secret;
pub mod session_name;
