//! AWS (`docs/protocols.md#aws`): `AssumeRoleWithWebIdentity` with the JWT-SVID, served as
//! `credential_process` JSON and the SDKs' container-credentials format.

pub mod config;
pub mod exchange;
pub mod metrics;
pub mod roles_anywhere;
pub mod routes;
pub mod session_name;

use anyhow::Context as _;
use sidecar_runtime::settings::{Reader, Setting};

pub use self::config::{AwsArgs, AwsConfig};
pub use self::exchange::{AwsCredentials, AwsSettings, AwsStsProvider};
use self::metrics::StsCalls;
use crate::cache::{CacheConfig, CredentialCache};
use crate::config::Common;
use crate::http::{self, Broker, Service};
use crate::metrics::CacheCollector;
use crate::provider::{Context, Provider};
use crate::token::TokenCheck;

// === impl Provider ===

impl Provider for AwsConfig {
    type Args = AwsArgs;

    const SETTINGS: &'static [&'static Setting] = config::SETTINGS;

    fn read(args: &Self::Args, _common: Option<&Common>, r: &mut Reader<'_>) -> Option<Self> {
        AwsConfig::load(args, r)
    }

    /// Builds the AWS service: the STS provider, its cache (started now), and the routes.
    fn service(&self, cx: Context<'_>) -> anyhow::Result<Service> {
        let Context {
            common,
            roots,
            jwt,
            registry,
        } = cx;
        let aws = self;
        if aws.sts.duration < std::time::Duration::from_secs(30 * 60) {
            // The SDKs refresh when less than 15 minutes remain, and the broker refreshes at
            // half-life for short sessions: clients would shell out on nearly every AWS call.
            tracing::warn!(
                duration = ?aws.sts.duration,
                "sessions under 30 minutes reach the SDKs' 15-minute refresh window early; prefer 1h"
            );
        }
        let calls = StsCalls::register(registry);
        let provider = AwsStsProvider::new(aws.sts.clone(), roots, jwt, calls)?;
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
            options: http::ServiceOptions {
                hot_routes: &["creds", "container_creds"],
                ..http::ServiceOptions::default()
            },
        })
    }
}
