//! The AWS provider's own metric: STS calls by outcome.

use std::fmt;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Counts STS calls by outcome (`success`, `retryable_error`, `invalid_token`, `rejected`).
#[derive(Clone, Default)]
pub struct StsCalls(Family<Labels, Counter>);

// === impl StsCalls ===

impl StsCalls {
    /// Registers `sts_calls` in `registry`: `iam_broker_sts_calls_total`, the name it had when
    /// the shared metrics held it (docs and alerts select on it), not an `aws_` one.
    pub fn register(registry: &mut Registry) -> Self {
        let calls = Self::default();
        registry.register(
            "sts_calls",
            "AssumeRoleWithWebIdentity (or, with Roles Anywhere, CreateSession) calls by outcome (success, retryable_error, invalid_token, rejected)",
            calls.0.clone(),
        );
        calls
    }

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

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn keeps_the_name_docs_and_alerts_use() {
        let mut registry = Registry::with_prefix("iam_broker");
        StsCalls::register(&mut registry).record("invalid_token");
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("iam_broker_sts_calls_total{outcome=\"invalid_token\"} 1"),
            "{text}"
        );
    }
}
