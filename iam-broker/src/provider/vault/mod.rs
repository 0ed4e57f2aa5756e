//! HashiCorp Vault (`docs/protocols.md#vault`): JWT auth with the JWT-SVID (Vault trusting SPIRE's
//! OIDC discovery provider), one token kept alive by renewal and re-login, served through an API
//! proxy like Vault Agent/Proxy's `api_proxy`, so hvac and the Vault CLI work with
//! `VAULT_ADDR=http://127.0.0.1:8200` and no token of their own.

pub mod config;
pub mod exchange;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use sidecar_runtime::settings::{Reader, Setting};

pub use self::config::{VaultArgs, VaultConfig};
pub use self::exchange::{SharedProvider, VaultProvider, VaultToken};
use crate::cache::{CacheConfig, CredentialCache};
use crate::config::{Common, SharedRules};
use crate::http::{Broker, Methods, Service, ServiceOptions};
use crate::metrics::{CacheCollector, ExchangeCalls};
use crate::provider::https::HttpsClient;
use crate::provider::{Context, Provider};

/// The cache timing for Vault tokens: renew at half-life (Vault Agent renews at about two
/// thirds; half leaves room for a retry or two), hand out while more than 40 % is left, never
/// with less than 10 % or 10 s. The SDK refresh windows of the clouds do not apply: the proxy
/// uses the token at once.
pub fn cache_config() -> CacheConfig {
    CacheConfig {
        refresh_margin: Duration::MAX,
        serve_margin: Duration::MAX,
        expiry_margin: Duration::from_secs(10),
        ..CacheConfig::default()
    }
}

// === impl Provider ===

impl Provider for VaultConfig {
    type Args = VaultArgs;

    const SETTINGS: &'static [&'static Setting] = config::SETTINGS;
    const SHARED: SharedRules = SharedRules {
        default_audience: Some(config::DEFAULT_AUDIENCE),
        default_listen: config::DEFAULT_LISTEN,
        ..SharedRules::DEFAULT
    };
    const HELP: &'static str =
        "Point clients at the proxy with VAULT_ADDR=http://127.0.0.1:8200 and no token.";

    fn read(args: &Self::Args, common: Option<&Common>, r: &mut Reader<'_>) -> Option<Self> {
        VaultConfig::load(args, common, r)
    }

    /// Builds the Vault service: the login/renew provider, its cache (started now), the proxy, and
    /// `revoke-self` on shutdown.
    fn service(&self, cx: Context<'_>) -> anyhow::Result<Service> {
        let Context {
            common,
            roots,
            jwt,
            registry,
            ..
        } = cx;
        let vault = self;
        let extra = vault
            .ca_file
            .as_ref()
            .map(|(_, certs)| certs.as_slice())
            .unwrap_or_default();
        let http = HttpsClient::with_extra_roots(roots, extra)?;
        let namespace = vault
            .namespace
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()?;
        let provider = Arc::new(VaultProvider::new(
            http.clone(),
            Arc::new(vault.clone()),
            jwt,
            ExchangeCalls::register(registry),
        ));
        let cache = CredentialCache::start(SharedProvider(provider.clone()), cache_config());
        registry.register_collector(Box::new(CacheCollector(cache.clone())));
        tracing::info!(
            provider = "vault",
            listen = %common.listen,
            admin = ?common.admin_listen,
            workload_api = %common.socket.endpoint,
            workload_api_from = %common.socket.source,
            audience = %common.audience,
            vault_addr = %vault.addr,
            auth_mount = %vault.auth_mount,
            role = %vault.role,
            namespace = vault.namespace.as_deref().unwrap_or("none"),
            ca_file = ?vault.ca_file.as_ref().map(|(p, _)| p),
            use_auto_auth_token = ?vault.auto_auth,
            token_sink = ?vault.token_sink,
            proxy_paths = ?vault.proxy_paths,
            "serving the Vault API proxy"
        );
        let broker = Broker::new(cache, common.fetch_wait, routes::render_error);
        let ready = broker.clone();
        let routes = routes::Routes {
            broker,
            http,
            upstream: routes::Upstream::parse(&vault.addr).map_err(anyhow::Error::msg)?,
            paths: vault.proxy_paths.clone().into(),
            namespace,
            auto_auth: vault.auto_auth,
        };
        Ok(Service {
            routes: routes::router(routes),
            route_label: routes::route_label,
            render_error: routes::render_error,
            ready: Box::new(move || ready.readiness()),
            options: ServiceOptions {
                methods: Methods::Any,
                on_shutdown: Some(Box::pin(async move { provider.revoke().await })),
                hot_routes: &[],
                without_jwt_svid: false,
            },
        })
    }
}
