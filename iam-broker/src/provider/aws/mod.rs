//! AWS (`docs/protocols.md#aws`): `AssumeRoleWithWebIdentity` with the JWT-SVID, served as
//! `credential_process` JSON and the SDKs' container-credentials format.

pub mod config;
pub mod exchange;
pub mod routes;
pub mod session_name;

use anyhow::Context as _;
use sidecar_runtime::tls_roots::TrustRoots;

pub use self::config::AwsConfig;
pub use self::exchange::{AwsCredentials, AwsSettings, AwsStsProvider};
use crate::cache::{CacheConfig, CredentialCache};
use crate::config::Common;
use crate::http::{self, Broker, Service};
use crate::metrics::{CacheCollector, Metrics};
use crate::provider::JwtSource;
use crate::token::TokenCheck;

/// Builds the AWS service: the STS provider, its cache (started now), and the routes.
pub fn service(
    common: &Common,
    aws: &AwsConfig,
    roots: &TrustRoots,
    jwt: JwtSource,
    metrics: &Metrics,
    registry: &mut prometheus_client::registry::Registry,
) -> anyhow::Result<Service> {
    if aws.sts.duration < std::time::Duration::from_secs(30 * 60) {
        // The SDKs refresh when less than 15 minutes remain, and the broker refreshes at
        // half-life for short sessions: clients would shell out on nearly every AWS call.
        tracing::warn!(
            duration = ?aws.sts.duration,
            "sessions under 30 minutes reach the SDKs' 15-minute refresh window early; prefer 1h"
        );
    }
    let provider = AwsStsProvider::new(aws.sts.clone(), roots, jwt, metrics.sts_calls.clone())?;
    let cache = CredentialCache::start(provider, CacheConfig::default());
    registry.register_collector(Box::new(CacheCollector(cache.clone())));
    let token = aws
        .container_token
        .as_ref()
        .map(TokenCheck::new)
        .transpose()
        .context("reading the container-credentials token")?;
    tracing::info!(
        provider = "aws",
        role_arn = %aws.sts.role_arn,
        region = %aws.sts.region,
        sts_endpoint = aws.sts.sts_endpoint.as_deref().unwrap_or("default"),
        duration = ?aws.sts.duration,
        container_credentials = token.is_some(),
        "serving credentials"
    );
    let broker = Broker::new(cache, common.fetch_wait, http::error);
    let ready = broker.clone();
    Ok(Service {
        routes: routes::router(broker, token),
        route_label: routes::route_label,
        render_error: http::error,
        ready: Box::new(move || ready.readiness()),
        options: http::ServiceOptions::default(),
    })
}
