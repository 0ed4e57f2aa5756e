//! `iam-broker`: trades the workload's JWT-SVID for cloud credentials and serves them on
//! loopback, so that tools and SDKs get credentials with no secret in the pod
//! (`docs/protocols.md#aws`, `#azure`, `#gcp`, `#vault`).
//!
//! - [`config`]: the settings every provider shares, as rows, and shared validators (a leaf:
//!   it knows no provider);
//! - [`cli`]: the command line, the one list of clouds, and one validated [`cli::Config`] with
//!   every bad setting reported at once;
//! - [`provider`]: the [`provider::Provider`] plug-in trait, the
//!   [`provider::CredentialProvider`] trait, and one folder per cloud with its settings, token
//!   exchange, routes and metrics ([`provider::aws`]: `AssumeRoleWithWebIdentity`);
//! - [`cache`]: the credential cache (background refresh before clients' refresh window, single
//!   flight, stale-but-valid credentials served while STS fails);
//! - [`cache_set`]: one cache per key (Azure resource, Google scope set), capped, idle ones
//!   dropped;
//! - [`http`]: the loopback HTTP server every provider shares: guards, limits, error rendering,
//!   serving, and the generic [`http::Broker`] from a cache to a provider's routes;
//! - [`token`]: a shared-secret header (container token, identity header), constant-time;
//! - [`metrics`]: Prometheus metrics of the above;
//! - [`secret`]: a string type whose `Debug`/`Display` never show the value;
//! - `main.rs`: wiring only.

pub mod cache;
pub mod cache_set;
pub mod cli;
pub mod config;
pub mod http;
pub mod metrics;
pub mod provider;
pub mod secret;
pub mod token;
