//! Metrics every sidecar exports the same way for the shared Workload API pieces.

use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use workload_client::{JwtSvidCache, X509Watcher};

/// Exports a [`JwtSvidCache`]'s counters and each key's seconds until expiry, read at scrape
/// time (the cache keeps plain atomics; nothing is updated on the request path for metrics).
#[derive(Debug)]
pub struct JwtCacheCollector(pub JwtSvidCache);

impl Collector for JwtCacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        for (name, help, value) in [
            (
                "jwt_cache_hits",
                "Token requests served from a valid cached JWT-SVID",
                stats.hits,
            ),
            (
                "jwt_cache_misses",
                "Token requests that had to wait for a fetch",
                stats.misses,
            ),
            (
                "jwt_cache_refreshes",
                "Successful FetchJWTSVID calls",
                stats.fetches,
            ),
            (
                "jwt_cache_refresh_errors",
                "Failed FetchJWTSVID calls",
                stats.fetch_errors,
            ),
            (
                "jwt_cache_evictions",
                "Audience keys dropped after being idle",
                stats.evictions,
            ),
            (
                "jwt_cache_key_removals",
                "Cached JWT-SVIDs dropped and refetched because their signing key left the bundle",
                stats.key_removals,
            ),
            (
                "jwt_cache_withdrawals",
                "Cached JWT-SVIDs dropped because the Workload API said this workload has no identity (its entry was deleted)",
                stats.withdrawals,
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
        let mut family = encoder.encode_descriptor(
            "jwt_svid_expiry_seconds",
            "Seconds until the cached JWT-SVID for an audience (and requested SPIFFE ID) expires",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for entry in &stats.entries {
            let Some(left) = entry.expires_in else {
                continue;
            };
            // The requested identity; empty for the workload's default SVID.
            let spiffe_id = entry
                .key
                .spiffe_id()
                .map(ToString::to_string)
                .unwrap_or_default();
            let labels = [
                ("audience", entry.key.audiences().join(",")),
                ("spiffe_id", spiffe_id),
            ];
            ConstGauge::new(left.as_secs_f64()).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Exports the X.509 watcher's state: seconds until the default SVID expires, stream
/// connectivity and updates received.
#[derive(Debug)]
pub struct X509Collector(pub X509Watcher);

impl Collector for X509Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.0.status();
        let connected = ConstGauge::new(i64::from(status.connected));
        connected.encode(encoder.encode_descriptor(
            "workload_api_x509_stream_connected",
            "1 while the FetchX509SVID stream is open",
            None,
            connected.metric_type(),
        )?)?;
        let updates = ConstCounter::new(status.updates);
        updates.encode(encoder.encode_descriptor(
            "workload_api_x509_updates",
            "X.509 SVID snapshots received",
            None,
            updates.metric_type(),
        )?)?;
        if let Some(at) = status.last_update {
            let age = ConstGauge::new(at.elapsed().as_secs_f64());
            age.encode(encoder.encode_descriptor(
                "workload_api_x509_last_update_age_seconds",
                "Seconds since the last X.509 SVID snapshot arrived",
                None,
                age.metric_type(),
            )?)?;
        }
        if let Some(ctx) = self.0.current() {
            let left = ConstGauge::new(ctx.remaining(SystemTime::now()).as_secs_f64());
            left.encode(encoder.encode_descriptor(
                "x509_svid_expiry_seconds",
                "Seconds until the default X.509-SVID expires",
                None,
                left.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Exports the tokio runtime's live task count, read at scrape time, so a leak of spawned
/// tasks (one per connection or stream that never ends) shows as a rising line; the soak run
/// (`cargo xtask soak`) checks it stays flat. Every sidecar's admin server registers it.
#[derive(Debug, Default)]
pub struct RuntimeCollector;

impl Collector for RuntimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Scrapes are served on the runtime itself; outside one (a unit test encoding the
        // registry by hand) there is nothing to report.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Ok(());
        };
        let metrics = handle.metrics();
        for (name, help, value) in [
            (
                "tokio_alive_tasks",
                "Tasks spawned on the runtime and not yet finished",
                metrics.num_alive_tasks(),
            ),
            (
                "tokio_workers",
                "Worker threads of the runtime",
                metrics.num_workers(),
            ),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}
