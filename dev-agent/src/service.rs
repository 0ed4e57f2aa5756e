//! The five Workload API RPCs (`docs/protocols.md#workload-api-proto`).
//!
//! Streams are views of `tokio::sync::watch` channels holding the latest full snapshot: a
//! new stream gets the current snapshot at once, then every new one, and ends when the agent
//! shuts down (so graceful shutdown does not wait forever on open streams).

use std::{pin::Pin, sync::Arc};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use futures_util::{Stream, StreamExt as _};
use spiffe::SpiffeId;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status, metadata::MetadataMap};
use workload_proto::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    SECURITY_HEADER, SECURITY_HEADER_VALUE, ValidateJwtsvidRequest, ValidateJwtsvidResponse,
    X509BundlesRequest, X509BundlesResponse, X509svidRequest, X509svidResponse,
    spiffe_workload_api_server::SpiffeWorkloadApi,
};

use crate::{metrics::Method, shared::Shared};

/// A server stream of snapshots.
pub(crate) type SnapshotStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The Workload API service; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct WorkloadApiService {
    shared: Arc<Shared>,
}

impl WorkloadApiService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Rejects calls without the security header, then counts the call. Counting after the
    /// check means the metric shows calls a real client made, not probes.
    fn accept<T>(&self, request: &Request<T>, method: Method) -> Result<(), Status> {
        check_security_header(request.metadata())?;
        self.shared.metrics.count_rpc(method);
        tracing::debug!(method = method.grpc_name(), "accepted Workload API call");
        Ok(())
    }

    fn snapshot_stream<S, T>(
        &self,
        rx: watch::Receiver<Arc<S>>,
        project: fn(&S) -> T,
    ) -> SnapshotStream<T>
    where
        S: Send + Sync + 'static,
        T: Send + 'static,
    {
        let mut shutdown = self.shared.shutdown.subscribe();
        let stop = async move {
            // An error means the agent is gone: stop too.
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        };
        Box::pin(
            WatchStream::new(rx)
                .map(move |snapshot| Ok(project(&snapshot)))
                .take_until(stop),
        )
    }
}

/// The security header check every Workload API server must do
/// (`docs/protocols.md#workload-api-security-header`).
pub fn check_security_header(metadata: &MetadataMap) -> Result<(), Status> {
    match metadata.get(SECURITY_HEADER) {
        Some(value) if value == SECURITY_HEADER_VALUE => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApiService {
    type FetchX509SVIDStream = SnapshotStream<X509svidResponse>;
    type FetchX509BundlesStream = SnapshotStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = SnapshotStream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        self.accept(&request, Method::FetchX509Svid)?;
        let rx = self.shared.x509.subscribe();
        Ok(Response::new(
            self.snapshot_stream(rx, |s| s.response.clone()),
        ))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.accept(&request, Method::FetchX509Bundles)?;
        let rx = self.shared.x509_bundles.subscribe();
        Ok(Response::new(self.snapshot_stream(rx, Clone::clone)))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        self.accept(&request, Method::FetchJwtSvid)?;
        let req = request.into_inner();
        if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let ids: Vec<&SpiffeId> = if req.spiffe_id.is_empty() {
            self.shared.spiffe_ids.iter().collect()
        } else {
            let wanted = SpiffeId::new(&req.spiffe_id).map_err(|e| {
                Status::invalid_argument(format!("invalid spiffe_id {:?}: {e}", req.spiffe_id))
            })?;
            let found = self.shared.spiffe_ids.iter().find(|id| **id == wanted);
            vec![found.ok_or_else(|| {
                Status::permission_denied(format!(
                    "no identity issued: {wanted} is not one of this workload's SPIFFE IDs"
                ))
            })?]
        };
        let svids = ids
            .into_iter()
            .map(|id| {
                let token = self
                    .shared
                    .own
                    .sign_jwt(id, &req.audience, self.shared.jwt_ttl)
                    .map_err(|error| {
                        tracing::error!(%error, "signing a JWT-SVID failed");
                        Status::internal("signing the JWT-SVID failed")
                    })?;
                Ok(Jwtsvid {
                    spiffe_id: id.to_string(),
                    svid: token,
                    hint: String::new(),
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.accept(&request, Method::FetchJwtBundles)?;
        let rx = self.shared.jwt_bundles.subscribe();
        Ok(Response::new(
            self.snapshot_stream(rx, |s| s.response.clone()),
        ))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        self.accept(&request, Method::ValidateJwtSvid)?;
        let req = request.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let bundles = Arc::clone(&self.shared.jwt_bundles.borrow());
        // The same validator the sidecars use; its errors name the failed check, never the token.
        let svid = workload_client::validate_jwt_svid(
            &req.svid,
            &req.audience,
            &bundles.bundle_set,
            &workload_client::TrustDomainPolicy::AnyWithBundle,
        )
        .map_err(|e| Status::invalid_argument(format!("invalid JWT-SVID: {e}")))?;
        let claims = payload_claims(&req.svid)
            .ok_or_else(|| Status::invalid_argument("invalid JWT-SVID: undecodable claims"))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: svid.spiffe_id().to_string(),
            claims: Some(claims),
        }))
    }
}

/// The (already verified) JWT payload as a protobuf `Struct`.
fn payload_claims(token: &str) -> Option<prost_types::Struct> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes).ok()?;
    Some(json_object_to_struct(map))
}

fn json_object_to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match value {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        J::String(s) => Kind::StringValue(s),
        J::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        J::Object(map) => Kind::StructValue(json_object_to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    #[test]
    fn security_header_must_be_true() {
        let mut md = MetadataMap::new();
        let err = check_security_header(&md).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        md.insert(SECURITY_HEADER, MetadataValue::from_static("false"));
        assert!(check_security_header(&md).is_err());
        md.insert(SECURITY_HEADER, MetadataValue::from_static("true"));
        assert!(check_security_header(&md).is_ok());
    }

    #[test]
    fn claims_convert_to_struct() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"spiffe://x/y","aud":["a"],"exp":5}"#);
        let s = payload_claims(&format!("h.{payload}.s")).unwrap();
        use prost_types::value::Kind;
        assert_eq!(s.fields["exp"].kind, Some(Kind::NumberValue(5.0)));
        assert!(matches!(&s.fields["aud"].kind, Some(Kind::ListValue(l)) if l.values.len() == 1));
    }
}
