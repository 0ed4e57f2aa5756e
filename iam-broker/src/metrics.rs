//! Prometheus metrics (prefix `iam_broker_`): requests by route and result, token exchanges by
//! provider and outcome, credential cache counters and seconds until the held credentials
//! expire. A provider registers its own counters when it builds its service (AWS's
//! `sts_calls`: `provider/aws/metrics.rs`); shared Workload API metrics (the JWT cache) come
//! from `sidecar-runtime`.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::cache::{CacheStats, CredentialCache};
use crate::cache_set::CacheSet;
use crate::provider::Expiring;

type Labels = Vec<(&'static str, &'static str)>;

/// Counts token exchanges of the Entra ID, Google and Vault providers by provider and outcome
/// (`success`, `retryable_error`, `rejected`, …). One family for the three, as before the
/// providers registered their own metrics: `iam_broker_token_exchanges_total{provider,outcome}`
/// is what dashboards and alerts select on, so it is not renamed per provider.
#[derive(Clone, Default)]
pub struct ExchangeCalls(Family<Labels, Counter>);

impl ExchangeCalls {
    /// Registers `token_exchanges` in `registry` (one provider runs per process, so it is
    /// registered once).
    pub fn register(registry: &mut Registry) -> Self {
        let calls = Self::default();
        registry.register(
            "token_exchanges",
            "Token exchanges with Entra ID (azure) and Google STS / IAM Credentials (gcp) by provider and outcome (success, retryable_error, rejected, invalid_token: the JWT-SVID refused, retried once with a fresh one)",
            calls.0.clone(),
        );
        calls
    }

    /// Counts one call.
    pub fn record(&self, provider: &'static str, outcome: &'static str) {
        self.0
            .get_or_create(&vec![("provider", provider), ("outcome", outcome)])
            .inc();
    }
}

impl fmt::Debug for ExchangeCalls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExchangeCalls")
    }
}

/// Requests by route and result, every provider's; its own metrics a provider registers itself
/// when it builds its service.
#[derive(Clone)]
pub struct Metrics {
    requests: Family<Labels, Counter>,
    /// The `result="ok"` series of the provider's hot routes, resolved once: no label hashing
    /// or lock on the request path.
    hot: Arc<[(&'static str, Counter)]>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

// === impl Metrics ===

impl Metrics {
    /// Registers `requests` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by route (creds, container_creds, other) and result",
            requests.clone(),
        );
        Self::with(requests)
    }

    /// Metrics that are not exported (tests, embedding).
    pub fn unregistered() -> Self {
        Self::with(Family::default())
    }

    fn with(requests: Family<Labels, Counter>) -> Self {
        Self {
            requests,
            hot: Arc::from([]),
        }
    }

    /// Resolves the `ok` series of `routes` once (they then show from start-up, at 0).
    #[must_use]
    pub fn with_hot_routes(mut self, routes: &[&'static str]) -> Self {
        self.hot = routes
            .iter()
            .map(|route| {
                let ok = self
                    .requests
                    .get_or_create(&vec![("route", *route), ("result", "ok")])
                    .clone();
                (*route, ok)
            })
            .collect();
        self
    }

    /// Counts one HTTP request.
    pub fn request(&self, route: &'static str, result: &'static str) {
        if result == "ok"
            && let Some((_, ok)) = self.hot.iter().find(|(hot, _)| *hot == route)
        {
            ok.inc();
            return;
        }
        self.requests
            .get_or_create(&vec![("route", route), ("result", result)])
            .inc();
    }
}

/// Exports the credential cache's counters and the seconds left on the held credentials, read
/// at scrape time.
#[derive(Debug)]
pub struct CacheCollector<C>(pub CredentialCache<C>);

impl<C: Expiring + Send + Sync + fmt::Debug + 'static> Collector for CacheCollector<C> {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_stats(&self.0.stats(), encoder)
    }
}

/// [`CacheCollector`] for a [`CacheSet`] (one cache per resource or scope set): the counters
/// summed over the keys held, the soonest expiry, and how many keys are held.
#[derive(Debug)]
pub struct CacheSetCollector<C>(pub CacheSet<C>);

impl<C: Expiring + Send + Sync + fmt::Debug + 'static> Collector for CacheSetCollector<C> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let keys = ConstGauge::new(i64::try_from(self.0.len()).unwrap_or(i64::MAX));
        keys.encode(encoder.encode_descriptor(
            "cached_tokens",
            "Resources (Azure) or scope sets (GCP) with a token cache; capped, idle ones dropped",
            None,
            keys.metric_type(),
        )?)?;
        encode_stats(&self.0.stats(), encoder)
    }
}

fn encode_stats(stats: &CacheStats, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
    {
        for (name, help, value) in [
            (
                "cache_hits",
                "Requests answered from fresh cached credentials",
                stats.hits,
            ),
            (
                "cache_waits",
                "Requests that waited for an STS call in flight",
                stats.waits,
            ),
            (
                "cache_stale_served",
                "Requests answered with still-valid credentials inside the refresh window because refreshing failed",
                stats.stale_served,
            ),
            (
                "cache_unavailable",
                "Requests answered 5xx because no valid credentials were held",
                stats.unavailable,
            ),
            (
                "refreshes",
                "Credentials obtained from the provider",
                stats.refreshes,
            ),
            (
                "refresh_errors",
                "Failed provider attempts",
                stats.refresh_errors,
            ),
            (
                "cache_invalidations",
                "Held credentials dropped before their expiry because the issuer refused them (a revoked Vault token)",
                stats.invalidations,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        if let Some(left) = stats.expires_in {
            let gauge = ConstGauge::new(left.as_secs_f64());
            gauge.encode(encoder.encode_descriptor(
                "credentials_expiry_seconds",
                "Seconds until the held credentials expire",
                None,
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    fn exported(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn hot_routes_count_into_the_one_requests_family() {
        let mut registry = Registry::with_prefix("iam_broker");
        let metrics = Metrics::register(&mut registry).with_hot_routes(&["creds", "msi_token"]);
        let calls = ExchangeCalls::register(&mut registry);
        let text = exported(&registry);
        assert!(
            text.contains("iam_broker_requests_total{route=\"msi_token\",result=\"ok\"} 0"),
            "hot series show from the start: {text}"
        );
        metrics.request("creds", "ok");
        metrics.request("creds", "ok");
        metrics.request("creds", "unauthorized");
        metrics.request("other", "ok");
        calls.record("azure", "success");
        let text = exported(&registry);
        for line in [
            "iam_broker_requests_total{route=\"creds\",result=\"ok\"} 2",
            "iam_broker_requests_total{route=\"creds\",result=\"unauthorized\"} 1",
            "iam_broker_requests_total{route=\"other\",result=\"ok\"} 1",
            "iam_broker_token_exchanges_total{provider=\"azure\",outcome=\"success\"} 1",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
    }
}
