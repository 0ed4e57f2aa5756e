//! The gRPC `SecretDiscoveryService`: one task per Envoy stream runs an [`SdsStream`] against
//! the shared catalog.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use sidecar_runtime::Shutdown;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::catalog::{Catalog, ValidationMode};
use crate::jwt::JwtSecrets;
use crate::metrics::Metrics;
use crate::stream::{self, RequestKind, SdsStream};

/// The catalog as streams see it: `None` until the first X.509 snapshot.
pub type CatalogRx = watch::Receiver<Option<Arc<Catalog>>>;

/// Responses buffered per stream before the stream task waits for Envoy to read.
const STREAM_BUFFER: usize = 4;

/// The SDS service; cheap to clone.
#[derive(Clone, Debug)]
pub struct SdsService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    catalog: CatalogRx,
    jwt: JwtSecrets,
    default_mode: ValidationMode,
    fetch_wait: Duration,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    next_stream: AtomicU64,
}

// === impl SdsService ===

impl SdsService {
    /// A service answering from `catalog`. `fetch_wait` bounds how long a FetchSecrets call
    /// waits for the first snapshot; streams wait as long as Envoy keeps them open.
    pub fn new(
        catalog: CatalogRx,
        jwt: JwtSecrets,
        default_mode: ValidationMode,
        fetch_wait: Duration,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                catalog,
                jwt,
                default_mode,
                fetch_wait,
                metrics,
                shutdown,
                next_stream: AtomicU64::new(1),
            }),
        }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> SecretDiscoveryServiceServer<Self> {
        // Secrets are a few KiB; bundles of large federations can be bigger than the 4 MiB
        // default decode limit only in theory, and requests are tiny.
        SecretDiscoveryServiceServer::new(self)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = BoxStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "sds-bridge serves state-of-the-world SDS only (StreamSecrets); \
             configure api_type: GRPC, not DELTA_GRPC",
        ))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let id = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let inner = self.inner.clone();
        let span = tracing::info_span!("sds_stream", stream = id);
        tokio::spawn(run_stream(inner, request.into_inner(), tx).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let req = request.into_inner();
        let mut rx = self.inner.catalog.clone();
        let catalog = tokio::time::timeout(self.inner.fetch_wait, async {
            rx.wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|c| c.clone())
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| {
            Status::unavailable("no X.509-SVID from the Workload API yet; retry shortly")
        })?;
        stream::fetch(&req, &catalog, &self.inner.jwt, self.inner.default_mode)
            .map(Response::new)
            .map_err(|missing| {
                Status::not_found(format!(
                    "the workload has no secret named {}",
                    missing.join(", ")
                ))
            })
    }
}

/// Runs one stream until Envoy closes it, it breaks, or the bridge shuts down (then the
/// response stream ends with OK status, so Envoy reconnects to the next bridge cleanly).
async fn run_stream(
    inner: Arc<Inner>,
    mut requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let metrics = &inner.metrics;
    let _connected = metrics.stream_opened();
    let mut catalog = inner.catalog.clone();
    let mut state = SdsStream::new(inner.default_mode);
    // One refresh watch per subscribed JWT-SVID key.
    let mut jwt_keys = Vec::new();
    let mut jwt_watches: Vec<watch::Receiver<u64>> = Vec::new();
    tracing::debug!("stream opened");
    loop {
        let response = tokio::select! {
            message = requests.message() => match message {
                Ok(Some(req)) => {
                    let names = req.resource_names.len();
                    let current = catalog.borrow_and_update().clone();
                    let handled = state.on_request(req, current.as_deref(), &inner.jwt);
                    record(&handled.kind, names, &state, metrics);
                    let keys = state.jwt_keys(&inner.jwt);
                    if keys != jwt_keys {
                        jwt_watches = keys.iter().map(|k| inner.jwt.subscribe(k)).collect();
                        jwt_keys = keys;
                    }
                    handled.response
                }
                Ok(None) => {
                    tracing::debug!("Envoy closed the stream");
                    break;
                }
                Err(status) => {
                    tracing::debug!(code = ?status.code(), message = status.message(), "stream broken");
                    break;
                }
            },
            changed = catalog.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = catalog.borrow_and_update().clone();
                current.and_then(|c| state.on_catalog(&c, &inner.jwt))
            }
            () = any_changed(&mut jwt_watches), if !jwt_watches.is_empty() => {
                // Re-subscribing marks the key used (no idle eviction while Envoy holds it)
                // and replaces a watch whose entry was evicted anyway.
                jwt_watches = jwt_keys.iter().map(|k| inner.jwt.subscribe(k)).collect();
                let current = catalog.borrow().clone();
                state.on_jwt(current.as_deref(), &inner.jwt)
            }
            () = inner.shutdown.wait() => break,
            () = tx.closed() => break,
        };
        if let Some(response) = response {
            let count = response.resources.len();
            tracing::debug!(version = %response.version_info, resources = count, "pushing secrets");
            metrics.pushed(count);
            if tx.send(Ok(response)).await.is_err() {
                break;
            }
        }
    }
    tracing::debug!("stream closed");
}

/// Resolves when any of `watches` changes or its sender is gone.
async fn any_changed(watches: &mut [watch::Receiver<u64>]) {
    let changes = watches.iter_mut().map(|w| Box::pin(w.changed()));
    let _ = futures_util::future::select_all(changes).await;
}

fn record(kind: &RequestKind, names: usize, state: &SdsStream, metrics: &Metrics) {
    match kind {
        RequestKind::Initial => {
            let node = state.node().map(|n| n.id.as_str()).unwrap_or_default();
            tracing::info!(node, names, mode = ?state.mode(), "SDS subscription");
        }
        RequestKind::Ack { latency } => {
            metrics.acked(*latency);
            let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            tracing::debug!(latency_us, "secrets acknowledged");
        }
        RequestKind::Nack { detail } => {
            metrics.nacked();
            let node = state.node().map(|n| n.id.as_str()).unwrap_or_default();
            tracing::warn!(node, error = %detail, "Envoy rejected pushed secrets (NACK); not re-sending them");
        }
        RequestKind::Stale => tracing::debug!("ignoring a reply to a superseded response"),
        RequestKind::WrongType(url) => {
            tracing::warn!(type_url = %url, "ignoring a request for a type other than Secret");
        }
    }
}
