//! Counters of the agent, readable in-process (so Rust tests can assert "FetchJWTSVID was
//! called once" without HTTP) and rendered as Prometheus text on `/metrics`.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering},
};

/// A Workload API method, as counted in `dev_agent_rpc_total{method=...}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `FetchX509SVID`.
    FetchX509Svid,
    /// `FetchX509Bundles`.
    FetchX509Bundles,
    /// `FetchJWTSVID`.
    FetchJwtSvid,
    /// `FetchJWTBundles`.
    FetchJwtBundles,
    /// `ValidateJWTSVID`.
    ValidateJwtSvid,
}

impl Method {
    /// All methods, in proto order.
    pub const ALL: [Self; 5] = [
        Self::FetchX509Svid,
        Self::FetchX509Bundles,
        Self::FetchJwtSvid,
        Self::FetchJwtBundles,
        Self::ValidateJwtSvid,
    ];

    /// The gRPC method name (`/SpiffeWorkloadAPI/<name>`), also the metric label.
    pub fn grpc_name(self) -> &'static str {
        match self {
            Self::FetchX509Svid => "FetchX509SVID",
            Self::FetchX509Bundles => "FetchX509Bundles",
            Self::FetchJwtSvid => "FetchJWTSVID",
            Self::FetchJwtBundles => "FetchJWTBundles",
            Self::ValidateJwtSvid => "ValidateJWTSVID",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The agent's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    rpc: [AtomicU64; 5],
    x509_rotations: AtomicU64,
    jwt_key_rotations: AtomicU64,
}

impl Metrics {
    /// Counts a call that passed the security-header check.
    pub fn count_rpc(&self, method: Method) {
        self.rpc[method.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Accepted calls of `method` so far.
    pub fn rpc_count(&self, method: Method) -> u64 {
        self.rpc[method.index()].load(Ordering::Relaxed)
    }

    /// Counts a re-issuance of the X.509-SVIDs (not the initial issuance).
    pub fn count_x509_rotation(&self) {
        self.x509_rotations.fetch_add(1, Ordering::Relaxed);
    }

    /// X.509-SVID re-issuances so far.
    pub fn x509_rotations(&self) -> u64 {
        self.x509_rotations.load(Ordering::Relaxed)
    }

    /// Counts a JWT signing key rotation.
    pub fn count_jwt_key_rotation(&self) {
        self.jwt_key_rotations.fetch_add(1, Ordering::Relaxed);
    }

    /// JWT signing key rotations so far.
    pub fn jwt_key_rotations(&self) -> u64 {
        self.jwt_key_rotations.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP dev_agent_rpc_total Workload API calls accepted (security header present), by method.\n");
        out.push_str("# TYPE dev_agent_rpc_total counter\n");
        for method in Method::ALL {
            let _ = writeln!(
                out,
                "dev_agent_rpc_total{{method=\"{}\"}} {}",
                method.grpc_name(),
                self.rpc_count(method)
            );
        }
        out.push_str(
            "# HELP dev_agent_x509_rotations_total X.509-SVID re-issuances pushed to streams.\n",
        );
        out.push_str("# TYPE dev_agent_x509_rotations_total counter\n");
        let _ = writeln!(
            out,
            "dev_agent_x509_rotations_total {}",
            self.x509_rotations()
        );
        out.push_str("# HELP dev_agent_jwt_key_rotations_total JWT signing key rotations.\n");
        out.push_str("# TYPE dev_agent_jwt_key_rotations_total counter\n");
        let _ = writeln!(
            out,
            "dev_agent_jwt_key_rotations_total {}",
            self.jwt_key_rotations()
        );
        // What the Unix-socket adapter did (sidecar_runtime::uds), as the sidecars export it.
        let uds = sidecar_runtime::uds::counters();
        for (name, help, value) in [
            (
                "dev_agent_grpc_unix_connections_total",
                "gRPC connections accepted on the Unix socket.",
                uds.connections,
            ),
            (
                "dev_agent_grpc_unix_authority_rewrites_total",
                "Request header blocks whose :authority h2 would refuse was replaced with localhost.",
                uds.authority_rewrites,
            ),
            (
                "dev_agent_grpc_unix_passthrough_connections_total",
                "Connections handed to h2 unchanged after a frame the adapter does not rewrite.",
                uds.passthrough_connections,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_counter_per_method() {
        let m = Metrics::default();
        m.count_rpc(Method::FetchJwtSvid);
        m.count_rpc(Method::FetchJwtSvid);
        m.count_x509_rotation();
        let text = m.render();
        assert!(text.contains("dev_agent_rpc_total{method=\"FetchJWTSVID\"} 2\n"));
        assert!(text.contains("dev_agent_rpc_total{method=\"ValidateJWTSVID\"} 0\n"));
        assert!(text.contains("dev_agent_x509_rotations_total 1\n"));
        assert_eq!(m.rpc_count(Method::FetchJwtSvid), 2);
    }
}
