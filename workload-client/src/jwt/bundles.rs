//! JWT bundle snapshots (JWKS per trust domain) from the FetchJWTBundles stream.

use spiffe::{JwtBundle, JwtBundleSet, TrustDomain};
use workload_proto::JwtBundlesResponse;

use crate::client::{ClientError, WorkloadApiClient};
use crate::snapshot_error::SnapshotError;
use crate::watcher::{StreamKind, Watcher};

/// Parses a FetchJWTBundles message: keys are `spiffe://<td>`, values JWKS documents.
pub fn bundles_from_response(response: JwtBundlesResponse) -> Result<JwtBundleSet, SnapshotError> {
    let mut set = JwtBundleSet::new();
    for (key, jwks) in response.bundles {
        let td = TrustDomain::new(&key).map_err(|e| SnapshotError::BundleKey {
            what: "bundle",
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let bundle = JwtBundle::from_jwt_authorities(td.clone(), &jwks).map_err(|e| {
            SnapshotError::Bundle {
                what: "JWKS",
                trust_domain: td.to_string(),
                reason: e.to_string(),
            }
        })?;
        set.add_bundle(bundle);
    }
    Ok(set)
}

/// Watches FetchJWTBundles: see [`Watcher`].
pub type JwtBundleWatcher = Watcher<JwtBundleSet>;

pub(crate) struct JwtBundleStream;

impl StreamKind for JwtBundleStream {
    type Message = JwtBundlesResponse;
    type Snapshot = JwtBundleSet;
    const METHOD: &'static str = "FetchJWTBundles";

    async fn open(
        client: &WorkloadApiClient,
    ) -> Result<tonic::Streaming<Self::Message>, ClientError> {
        client.stream_jwt_bundles().await
    }

    fn parse(message: Self::Message) -> Result<Self::Snapshot, SnapshotError> {
        bundles_from_response(message)
    }

    fn describe(set: &JwtBundleSet) -> String {
        set.iter()
            .map(|(td, b)| format!("{td}: {} key(s)", b.jwt_authorities().count()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl JwtBundleWatcher {
    /// Starts watching JWT bundles at `client`'s endpoint.
    pub fn jwt_bundles(client: WorkloadApiClient) -> Self {
        Watcher::spawn::<JwtBundleStream>(client)
    }
}
