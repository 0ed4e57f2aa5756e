//! Google Cloud (`docs/protocols.md#gcp`): workload identity federation of the JWT-SVID through
//! Google STS (and optionally impersonation of a service account), served as the GCE metadata
//! server, so google-auth / ADC, the Cloud client libraries and gcloud work unchanged.

pub mod config;
pub mod exchange;
pub mod routes;

use std::sync::Arc;

use sidecar_runtime::settings::{Reader, Setting};

pub use self::config::{GcpArgs, GcpConfig};
pub use self::exchange::{GcpToken, GoogleStsProvider};
use crate::cache_set::{CacheSet, SetLimits};
use crate::config::{Common, SharedRules};
use crate::http::{self, Service};
use crate::metrics::{CacheSetCollector, ExchangeCalls};
use crate::provider::https::HttpsClient;
use crate::provider::{Context, Provider};

// === impl Provider ===

impl Provider for GcpConfig {
    type Args = GcpArgs;

    const SETTINGS: &'static [&'static Setting] = config::SETTINGS;
    const SHARED: SharedRules = SharedRules {
        check_audience: config::check_audience,
        ..SharedRules::DEFAULT
    };
    const HELP: &'static str = "The audience is the workload identity pool provider; point the application at the broker with GCE_METADATA_HOST and GCE_METADATA_IP.";

    fn read(args: &Self::Args, common: Option<&Common>, r: &mut Reader<'_>) -> Option<Self> {
        GcpConfig::load(args, common, r)
    }

    /// Builds the GCP service: one exchange and token cache per scope set (the default set started
    /// now), and the metadata routes.
    fn service(&self, cx: Context<'_>) -> anyhow::Result<Service> {
        let Context {
            common,
            roots,
            jwt,
            registry,
            ..
        } = cx;
        let gcp = self;
        let client = HttpsClient::new(roots)?;
        let config = Arc::new(gcp.clone());
        let calls = ExchangeCalls::register(registry);
        let tokens = CacheSet::of_providers("scope sets", SetLimits::default(), {
            let config = config.clone();
            move |key: &str| {
                let scopes = key.split(',').map(str::to_owned).collect();
                GoogleStsProvider::new(
                    client.clone(),
                    config.clone(),
                    jwt.clone(),
                    scopes,
                    calls.clone(),
                )
            }
        });
        let default_key = gcp.scopes.join(",");
        let default_scopes = tokens.pin(&default_key)?;
        registry.register_collector(Box::new(CacheSetCollector(tokens.clone())));
        tracing::info!(
            provider = "gcp",
            project_id = %gcp.project_id,
            service_account = gcp.service_account.as_deref().unwrap_or("none (federated token)"),
            scopes = ?gcp.scopes,
            sts_endpoint = %gcp.sts_endpoint,
            iam_credentials_endpoint = %gcp.iam_credentials_endpoint,
            "serving the GCE metadata server"
        );
        let routes = routes::Routes {
            tokens,
            fetch_wait: common.fetch_wait,
            project_id: Arc::from(gcp.project_id.as_str()),
            project_number: Arc::from(gcp.project_number.as_str()),
            email: Arc::from(gcp.service_account.as_deref().unwrap_or("default")),
            scopes: Arc::from(gcp.scopes.clone()),
            default_key: Arc::from(default_key.as_str()),
        };
        Ok(Service {
            routes: routes::router(routes),
            route_label: routes::route_label,
            render_error: routes::render_error,
            ready: Box::new(move || http::readiness(&default_scopes)),
            options: http::ServiceOptions {
                hot_routes: &["gce_token"],
                ..http::ServiceOptions::default()
            },
        })
    }
}
