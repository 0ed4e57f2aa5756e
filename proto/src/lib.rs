//! The SPIFFE Workload API (`workload.proto`), as prost messages and tonic client/server stubs.
//!
//! The proto has **no package**, so the gRPC paths are `/SpiffeWorkloadAPI/<Method>`
//! (`docs/protocols.md#workload-api-proto`). The Rust code in `src/generated/` is produced by
//! `tonic-prost-build` and committed so that building the workspace never needs `protoc`;
//! `tests/regen.rs` regenerates it into a temporary directory and fails on any difference
//! (`cargo xtask regen` rewrites it).

/// Generated messages, `spiffe_workload_api_client` and `spiffe_workload_api_server`.
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
mod generated {
    include!("generated/workload.rs");
}

pub use generated::*;

/// Metadata key every Workload API call must carry (value `true`); servers reject calls
/// without it with `InvalidArgument` (`docs/protocols.md#workload-api-security-header`).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
/// Value of [`SECURITY_HEADER`].
pub const SECURITY_HEADER_VALUE: &str = "true";

// === Redacting Debug impls ===
//
// The generated types below hold private keys and bearer tokens, so their derived `Debug` is
// switched off at generation time (`skip_debug` in tests/regen.rs) and replaced here: an
// accidental `?msg` in a log line must never print a secret.

const REDACTED: &str = "<redacted>";

impl std::fmt::Debug for X509svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509SVID")
            .field("spiffe_id", &self.spiffe_id)
            .field("x509_svid_len", &self.x509_svid.len())
            .field("x509_svid_key", &REDACTED)
            .field("bundle_len", &self.bundle.len())
            .field("hint", &self.hint)
            .finish()
    }
}

impl std::fmt::Debug for Jwtsvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JWTSVID")
            .field("spiffe_id", &self.spiffe_id)
            .field("svid", &REDACTED)
            .field("hint", &self.hint)
            .finish()
    }
}

impl std::fmt::Debug for ValidateJwtsvidRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidateJWTSVIDRequest")
            .field("audience", &self.audience)
            .field("svid", &REDACTED)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_secrets() {
        let svid = X509svid {
            spiffe_id: "spiffe://example.org/w".into(),
            x509_svid: vec![1, 2, 3],
            x509_svid_key: b"PRIVATE-KEY-BYTES".to_vec(),
            bundle: vec![4],
            hint: String::new(),
        };
        let jwt = Jwtsvid {
            spiffe_id: "spiffe://example.org/w".into(),
            svid: "eyJhbGciOiJFUzI1NiJ9.secret.sig".into(),
            hint: String::new(),
        };
        let req = ValidateJwtsvidRequest {
            audience: "aud".into(),
            svid: "eyJhbGciOiJFUzI1NiJ9.secret.sig".into(),
        };
        let printed = format!(
            "{svid:?} {jwt:?} {req:?} {:?}",
            X509svidResponse {
                svids: vec![svid.clone()],
                ..Default::default()
            }
        );
        assert!(!printed.contains("80, 82, 73")); // "PRI" as debug-printed bytes
        assert!(!printed.contains("secret"));
        assert!(printed.contains("spiffe://example.org/w"));
        assert!(printed.contains(REDACTED));
    }
}
