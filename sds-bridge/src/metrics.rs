//! Prometheus metrics of the bridge (the X.509 watcher's own come from sidecar-runtime).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Stream, push, ACK and NACK counters.
#[derive(Debug)]
pub struct Metrics {
    streams: Gauge,
    streams_total: Counter,
    pushes: Counter,
    pushed_resources: Counter,
    nacks: Counter,
    ack_latency: Histogram,
}

/// Decrements the connected-streams gauge when the stream task ends, however it ends.
#[derive(Debug)]
pub struct StreamGuard(Gauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// === impl Metrics ===

impl Metrics {
    /// Registers the metrics in `registry` (prefix `sds_bridge_`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            streams: Gauge::default(),
            streams_total: Counter::default(),
            pushes: Counter::default(),
            pushed_resources: Counter::default(),
            nacks: Counter::default(),
            // 100 µs … ~3.3 s: a local push is ACKed in about a millisecond; seconds mean an
            // Envoy that is stuck or overloaded.
            ack_latency: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
        };
        registry.register("streams", "SDS streams currently open", m.streams.clone());
        registry.register(
            "streams_opened",
            "SDS streams opened since start",
            m.streams_total.clone(),
        );
        registry.register(
            "pushes",
            "DiscoveryResponses sent on SDS streams",
            m.pushes.clone(),
        );
        registry.register(
            "pushed_secrets",
            "Secrets sent in DiscoveryResponses",
            m.pushed_resources.clone(),
        );
        registry.register(
            "nacks",
            "Pushes Envoy rejected (see the warning log for Envoy's reason)",
            m.nacks.clone(),
        );
        registry.register(
            "push_ack_seconds",
            "Time from a new SVID snapshot (or a request) to Envoy's ACK of the push",
            m.ack_latency.clone(),
        );
        m
    }

    /// A stream opened; the guard counts it closed when dropped.
    pub fn stream_opened(&self) -> StreamGuard {
        self.streams.inc();
        self.streams_total.inc();
        StreamGuard(self.streams.clone())
    }

    /// A response with `resources` secrets was sent.
    pub fn pushed(&self, resources: usize) {
        self.pushes.inc();
        self.pushed_resources
            .inc_by(u64::try_from(resources).unwrap_or(u64::MAX));
    }

    /// Envoy ACKed a push.
    pub fn acked(&self, latency: Duration) {
        self.ack_latency.observe(latency.as_secs_f64());
    }

    /// Envoy NACKed a push.
    pub fn nacked(&self) {
        self.nacks.inc();
    }
}
