//! AWS (`docs/protocols.md#aws`): `AssumeRoleWithWebIdentity` with the JWT-SVID, or IAM Roles
//! Anywhere's `CreateSession` signed with the X.509-SVID (`--trust-anchor-arn`), served as
//! `credential_process` JSON and the SDKs' container-credentials format.

pub mod config;
pub mod exchange;
pub mod metrics;
pub mod roles_anywhere;
pub mod routes;
pub mod session_name;

use anyhow::Context as _;
use sidecar_runtime::settings::{Reader, Setting};
use sidecar_runtime::svid;
use workload_client::X509Watcher;

pub use self::config::{AwsArgs, AwsConfig};
pub use self::exchange::{AwsCredentials, AwsSettings, AwsStsProvider};
use self::metrics::StsCalls;
use self::roles_anywhere::RolesAnywhereProvider;
use crate::cache::{CacheConfig, CredentialCache};
use crate::config::Common;
use crate::http::{self, Broker, Service};
use crate::metrics::CacheCollector;
use crate::provider::https::HttpsClient;
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
            workload_api,
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
        let (cache, svids) = match &aws.roles_anywhere {
            None => {
                let provider = AwsStsProvider::new(aws.sts.clone(), roots, jwt, calls)?;
                (
                    CredentialCache::start(provider, CacheConfig::default()),
                    None,
                )
            }
            Some(ra) => {
                // The X.509-SVID stream: each CreateSession is signed with the current SVID.
                let svids = X509Watcher::x509(workload_api.clone());
                let client = HttpsClient::new(roots).context("building the HTTPS client")?;
                let provider = RolesAnywhereProvider::new(
                    aws.sts.clone(),
                    ra.clone(),
                    svids.clone(),
                    client,
                    calls,
                );
                (
                    CredentialCache::start(provider, CacheConfig::default()),
                    Some(svids),
                )
            }
        };
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
            roles_anywhere_trust_anchor = aws.roles_anywhere.as_ref().map(|r| r.trust_anchor_arn.as_str()),
            roles_anywhere_profile = aws.roles_anywhere.as_ref().map(|r| r.profile_arn.as_str()),
            roles_anywhere_endpoint = aws.roles_anywhere.as_ref().map(|r| r.endpoint.as_str()),
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
            // Roles Anywhere: the X.509-SVID in place of the JWT-SVID the shared check asks for.
            ready: Box::new(move || match svids.as_ref().map(svid::x509_readiness) {
                Some(not_ready @ sidecar_runtime::Readiness::NotReady(_)) => not_ready,
                _ => ready.readiness(),
            }),
            options: http::ServiceOptions {
                hot_routes: &["creds", "container_creds"],
                // Roles Anywhere signs with the X.509-SVID: no JWT-SVID is needed to be ready.
                without_jwt_svid: aws.roles_anywhere.is_some(),
                ..http::ServiceOptions::default()
            },
        })
    }
}
