//! Azure (`docs/protocols.md#azure`): Entra ID workload identity federation with the JWT-SVID as
//! client assertion, served as the App Service managed identity endpoint, so the Azure SDKs' own
//! `ManagedIdentityCredential` / `DefaultAzureCredential` work with no code and no secret in the
//! application.

pub mod config;
pub mod exchange;
pub mod routes;

use std::sync::Arc;

use anyhow::Context as _;
use sidecar_runtime::Readiness;
use sidecar_runtime::settings::{Reader, Setting};

pub use self::config::{AzureArgs, AzureConfig, AzureSettings};
pub use self::exchange::{AzureToken, EntraProvider};
use crate::cache_set::{CacheSet, SetLimits};
use crate::config::{Common, SharedRules};
use crate::http::{self, Service};
use crate::metrics::{CacheSetCollector, ExchangeCalls};
use crate::provider::https::HttpsClient;
use crate::provider::{Context, Provider};
use crate::token::TokenCheck;

// === impl Provider ===

impl Provider for AzureConfig {
    type Args = AzureArgs;

    const SETTINGS: &'static [&'static Setting] = config::SETTINGS;
    const SHARED: SharedRules = SharedRules {
        default_audience: Some(config::DEFAULT_AUDIENCE),
        ..SharedRules::DEFAULT
    };
    const HELP: &'static str = "Point the application at the broker with IDENTITY_ENDPOINT=http://127.0.0.1:9876/msi/token and the same IDENTITY_HEADER.";

    fn read(args: &Self::Args, _common: Option<&Common>, r: &mut Reader<'_>) -> Option<Self> {
        AzureConfig::load(args, r)
    }

    /// Builds the Azure service: one Entra exchange and token cache per resource (allow-listed ones
    /// started now), and the managed-identity route.
    fn service(&self, cx: Context<'_>) -> anyhow::Result<Service> {
        let Context {
            common,
            roots,
            jwt,
            registry,
            ..
        } = cx;
        let azure = self;
        let client = HttpsClient::new(roots)?;
        let settings = Arc::new(azure.entra.clone());
        let calls = ExchangeCalls::register(registry);
        let limits = SetLimits {
            max_keys: SetLimits::default()
                .max_keys
                .max(azure.resources.as_ref().map_or(0, Vec::len)),
            ..SetLimits::default()
        };
        let tokens = CacheSet::of_providers("resources", limits, {
            let settings = settings.clone();
            move |resource: &str| {
                EntraProvider::new(
                    client.clone(),
                    settings.clone(),
                    jwt.clone(),
                    resource.to_owned(),
                    calls.clone(),
                )
            }
        });
        let mut pinned = Vec::new();
        for resource in azure.resources.iter().flatten() {
            pinned.push(tokens.pin(resource)?);
        }
        registry.register_collector(Box::new(CacheSetCollector(tokens.clone())));
        let identity =
            TokenCheck::new(&azure.identity_header).context("reading the identity header")?;
        tracing::info!(
            provider = "azure",
            tenant_id = %settings.tenant_id,
            client_id = %settings.client_id,
            authority_host = %settings.authority_host,
            resources = ?azure.resources,
            "serving Entra ID tokens on /msi/token"
        );
        let routes = routes::Routes {
            tokens,
            fetch_wait: common.fetch_wait,
            identity: Arc::new(identity),
            allowed: azure.resources.clone().map(Arc::from),
            client_id: Arc::from(settings.client_id.as_str()),
        };
        Ok(Service {
            routes: routes::router(routes),
            route_label: routes::route_label,
            render_error: routes::render_error,
            // With an allow-list, ready once every listed resource has a token. Without one the
            // broker cannot know what will be asked for: ready with the JWT-SVID (main checks it
            // for every provider), as that is all a first request needs.
            ready: Box::new(move || {
                pinned
                    .iter()
                    .map(http::readiness)
                    .find(|r| !matches!(r, Readiness::Ready))
                    .unwrap_or(Readiness::Ready)
            }),
            options: http::ServiceOptions {
                hot_routes: &["msi_token"],
                ..http::ServiceOptions::default()
            },
        })
    }
}
