//! X.509-SVID snapshots from the FetchX509SVID stream.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use spiffe::{SpiffeId, TrustDomain, X509Bundle, X509BundleSet, X509Svid};
use workload_proto::X509svidResponse;

use crate::client::{ClientError, WorkloadApiClient};
use crate::snapshot_error::SnapshotError;
use crate::watcher::{StreamKind, Watcher};

/// One X.509-SVID with its validity window (read from the leaf certificate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvidEntry {
    /// The SVID (chain and PKCS#8 key; the key is redacted in `Debug`).
    pub svid: X509Svid,
    /// The leaf's `notBefore`.
    pub not_before: SystemTime,
    /// The leaf's `notAfter`.
    pub not_after: SystemTime,
}

/// Everything one FetchX509SVID message carries: the workload's SVIDs (default first), its own
/// trust domain's bundle and the federated bundles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X509Context {
    svids: Vec<SvidEntry>,
    bundles: X509BundleSet,
    federated: BTreeSet<TrustDomain>,
}

// === impl X509Context ===

impl X509Context {
    /// Parses a FetchX509SVID message. Rejects an empty SVID list and any certificate, key or
    /// bundle that does not parse, so a bad update never replaces a good snapshot.
    pub fn from_response(response: X509svidResponse) -> Result<Self, SnapshotError> {
        if response.svids.is_empty() {
            return Err(SnapshotError::NoSvids);
        }
        let mut bundles = X509BundleSet::new();
        let mut svids = Vec::with_capacity(response.svids.len());
        let mut own = BTreeSet::new();
        for s in response.svids {
            let hint = (!s.hint.is_empty()).then(|| std::sync::Arc::<str>::from(s.hint.as_str()));
            let svid = X509Svid::parse_from_der_with_hint(&s.x509_svid, &s.x509_svid_key, hint)
                .map_err(|e| SnapshotError::Svid {
                    spiffe_id: s.spiffe_id.clone(),
                    reason: e.to_string(),
                })?;
            if svid.spiffe_id().to_string() != s.spiffe_id {
                return Err(SnapshotError::SanMismatch {
                    spiffe_id: s.spiffe_id,
                    san: svid.spiffe_id().to_string(),
                });
            }
            let td = svid.spiffe_id().trust_domain().clone();
            if own.insert(td.clone()) {
                let bundle = X509Bundle::parse_from_der(td.clone(), &s.bundle).map_err(|e| {
                    SnapshotError::Bundle {
                        what: "bundle",
                        trust_domain: td.to_string(),
                        reason: e.to_string(),
                    }
                })?;
                bundles.add_bundle(bundle);
            }
            let (not_before, not_after) = validity(svid.leaf().as_bytes())?;
            svids.push(SvidEntry {
                svid,
                not_before,
                not_after,
            });
        }
        let mut federated = BTreeSet::new();
        for (key, der) in response.federated_bundles {
            let td = TrustDomain::new(&key).map_err(|e| SnapshotError::BundleKey {
                what: "federated bundle",
                key: key.clone(),
                reason: e.to_string(),
            })?;
            if own.contains(&td) {
                continue;
            }
            let bundle = X509Bundle::parse_from_der(td.clone(), &der).map_err(|e| {
                SnapshotError::Bundle {
                    what: "federated bundle",
                    trust_domain: td.to_string(),
                    reason: e.to_string(),
                }
            })?;
            bundles.add_bundle(bundle);
            federated.insert(td);
        }
        Ok(Self {
            svids,
            bundles,
            federated,
        })
    }

    /// The default SVID (the first one the agent sent).
    pub fn default_svid(&self) -> &SvidEntry {
        // `from_response` guarantees at least one SVID; `svids` is never empty.
        &self.svids[0]
    }

    /// All SVIDs, default first.
    pub fn svids(&self) -> &[SvidEntry] {
        &self.svids
    }

    /// The SVID with this SPIFFE ID.
    pub fn svid_for(&self, id: &SpiffeId) -> Option<&SvidEntry> {
        self.svids.iter().find(|s| s.svid.spiffe_id() == id)
    }

    /// Own and federated bundles.
    pub fn bundles(&self) -> &X509BundleSet {
        &self.bundles
    }

    /// The trust domain of the default SVID.
    pub fn trust_domain(&self) -> &TrustDomain {
        self.default_svid().svid.spiffe_id().trust_domain()
    }

    /// Trust domains whose bundles came as federated bundles.
    pub fn federated_trust_domains(&self) -> &BTreeSet<TrustDomain> {
        &self.federated
    }

    /// Time left on the default SVID (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.default_svid()
            .not_after
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }
}

fn validity(leaf_der: &[u8]) -> Result<(SystemTime, SystemTime), SnapshotError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf_der)
        .map_err(|e| SnapshotError::Validity(e.to_string()))?;
    let to_system = |t: i64| {
        u64::try_from(t)
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .map_err(|_| SnapshotError::Validity("validity before 1970".to_owned()))
    };
    Ok((
        to_system(cert.validity().not_before.timestamp())?,
        to_system(cert.validity().not_after.timestamp())?,
    ))
}

/// Watches FetchX509SVID: see [`Watcher`].
pub type X509Watcher = Watcher<X509Context>;

pub(crate) struct X509Stream;

impl StreamKind for X509Stream {
    type Message = X509svidResponse;
    type Snapshot = X509Context;
    const METHOD: &'static str = "FetchX509SVID";
    const WITHDRAWN_ON_PERMISSION_DENIED: bool = true;

    async fn open(
        client: &WorkloadApiClient,
    ) -> Result<tonic::Streaming<Self::Message>, ClientError> {
        client.stream_x509_svids().await
    }

    fn parse(message: Self::Message) -> Result<Self::Snapshot, SnapshotError> {
        X509Context::from_response(message)
    }

    fn describe(ctx: &X509Context) -> String {
        let mut out = String::new();
        for (i, s) in ctx.svids.iter().enumerate() {
            let secs = s
                .not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(out, "{sep}{} (expires unix {secs})", s.svid.spiffe_id());
        }
        let _ = write!(out, "; {} bundle(s)", ctx.bundles.len());
        out
    }
}

impl X509Watcher {
    /// Starts watching X.509 SVIDs at `client`'s endpoint.
    pub fn x509(client: WorkloadApiClient) -> Self {
        Watcher::spawn::<X509Stream>(client)
    }
}
