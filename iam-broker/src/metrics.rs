//! Prometheus metrics (prefix `iam_broker_`): requests by route and result, STS calls by
//! outcome, credential cache counters and seconds until the held credentials expire. Shared
//! Workload API metrics (the JWT cache) come from `sidecar-runtime`.

use std::fmt;

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

/// Counts STS calls by outcome (`success`, `retryable_error`, `invalid_token`, `rejected`).
#[derive(Clone, Default)]
pub struct StsCalls(Family<Labels, Counter>);

impl StsCalls {
    /// Counts one call.
    pub fn record(&self, outcome: &'static str) {
        self.0.get_or_create(&vec![("outcome", outcome)]).inc();
    }
}

impl fmt::Debug for StsCalls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StsCalls")
    }
}

/// Counts token exchanges of the Entra ID and Google providers by provider and outcome
/// (`success`, `retryable_error`, `rejected`).
#[derive(Clone, Default)]
pub struct ExchangeCalls(Family<Labels, Counter>);

impl ExchangeCalls {
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

/// The broker's request and STS metrics.
#[derive(Clone)]
pub struct Metrics {
    requests: Family<Labels, Counter>,
    /// The hot series, resolved once: no label hashing or lock on the request path.
    creds_ok: Counter,
    container_creds_ok: Counter,
    msi_token_ok: Counter,
    gce_token_ok: Counter,
    /// STS calls by outcome.
    pub sts_calls: StsCalls,
    /// Entra ID / Google token exchanges by provider and outcome.
    pub exchanges: ExchangeCalls,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<Labels, Counter>::default();
        let sts_calls = StsCalls::default();
        registry.register(
            "requests",
            "HTTP requests by route (creds, container_creds, other) and result",
            requests.clone(),
        );
        registry.register(
            "sts_calls",
            "AssumeRoleWithWebIdentity calls by outcome (success, retryable_error, invalid_token, rejected)",
            sts_calls.0.clone(),
        );
        let exchanges = ExchangeCalls::default();
        registry.register(
            "token_exchanges",
            "Token exchanges with Entra ID (azure) and Google STS / IAM Credentials (gcp) by provider and outcome (success, retryable_error, rejected, invalid_token: the JWT-SVID refused, retried once with a fresh one)",
            exchanges.0.clone(),
        );
        Self::with(requests, sts_calls, exchanges)
    }

    /// Metrics that are not exported (tests, embedding).
    pub fn unregistered() -> Self {
        Self::with(
            Family::default(),
            StsCalls::default(),
            ExchangeCalls::default(),
        )
    }

    fn with(
        requests: Family<Labels, Counter>,
        sts_calls: StsCalls,
        exchanges: ExchangeCalls,
    ) -> Self {
        let series = |route| {
            requests
                .get_or_create(&vec![("route", route), ("result", "ok")])
                .clone()
        };
        Self {
            creds_ok: series("creds"),
            container_creds_ok: series("container_creds"),
            msi_token_ok: series("msi_token"),
            gce_token_ok: series("gce_token"),
            requests,
            sts_calls,
            exchanges,
        }
    }

    /// Counts one HTTP request.
    pub fn request(&self, route: &'static str, result: &'static str) {
        match (route, result) {
            ("creds", "ok") => self.creds_ok.inc(),
            ("container_creds", "ok") => self.container_creds_ok.inc(),
            ("msi_token", "ok") => self.msi_token_ok.inc(),
            ("gce_token", "ok") => self.gce_token_ok.inc(),
            _ => self
                .requests
                .get_or_create(&vec![("route", route), ("result", result)])
                .inc(),
        };
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
