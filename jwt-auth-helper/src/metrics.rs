//! Prometheus metrics of the helper (shared Workload API metrics come from sidecar-runtime).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::authz::Decision;
use crate::config::Mode;

type Labels = Vec<(&'static str, &'static str)>;

/// Check counters and latency.
#[derive(Debug)]
pub struct Metrics {
    checks: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
}

fn latency_histogram() -> Histogram {
    // 20 µs … ~650 ms: local checks are tens of µs, a first-token wait up to the Envoy timeout.
    Histogram::new(exponential_buckets(0.000_02, 2.0, 16))
}

impl Metrics {
    /// Registers the metrics in `registry` (prefix `jwt_auth_helper_`).
    pub fn register(registry: &mut Registry) -> Self {
        let checks = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "checks",
            "ext_authz checks by mode, result (allowed, denied, unavailable) and reason",
            checks.clone(),
        );
        registry.register(
            "check_duration_seconds",
            "Time to decide one ext_authz check",
            latency.clone(),
        );
        Self { checks, latency }
    }

    /// Records one check.
    pub fn record(&self, mode: Mode, decision: &Decision, took: Duration) {
        self.checks
            .get_or_create(&vec![
                ("mode", mode.as_str()),
                ("result", decision.result()),
                ("reason", decision.reason()),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![("mode", mode.as_str())])
            .observe(took.as_secs_f64());
    }
}
