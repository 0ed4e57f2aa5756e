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
use tonic::codec::BufferSettings;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};
use tracing::Instrument as _;

use crate::catalog::{Catalog, ValidationMode};
use crate::jwt::JwtSecrets;
use crate::limits::{MAX_JWT_KEYS, MAX_NAMES};
use crate::metrics::Metrics;
use crate::names::ResourceName;
use crate::stream::{self, JwtSource as _, RequestKind, SdsStream};
use workload_client::JwtKey;

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
    pub fn into_server(self) -> SdsServer {
        SdsServer {
            generated: SecretDiscoveryServiceServer::new(self.clone()),
            service: self,
        }
    }
}

// === impl SdsServer ===

/// The gRPC path of the one long-lived RPC.
const STREAM_SECRETS: &str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";

/// Codec buffers per stream. tonic's default is 8 KiB each way, allocated for the life of the
/// stream; SDS requests are a few hundred bytes and responses a few KiB, and one bridge may
/// hold thousands of streams (measured: 21.5 KiB per stream with the defaults). Buffers grow
/// when a message needs it.
fn stream_buffers() -> BufferSettings {
    BufferSettings::new(1024, 32 * 1024)
}

/// The generated SDS server, except that `StreamSecrets` runs with small codec buffers.
#[derive(Clone, Debug)]
pub struct SdsServer {
    service: SdsService,
    generated: SecretDiscoveryServiceServer<SdsService>,
}

impl NamedService for SdsServer {
    const NAME: &'static str = "envoy.service.secret.v3.SecretDiscoveryService";
}

impl<B> tower::Service<http::Request<B>> for SdsServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != STREAM_SECRETS {
            return self.generated.call(req);
        }
        let method = StreamSecretsMethod(self.service.clone());
        Box::pin(async move {
            let codec = SdsCodec;
            Ok(tonic::server::Grpc::new(codec).streaming(method, req).await)
        })
    }
}

struct StreamSecretsMethod(SdsService);

impl tonic::server::StreamingService<DiscoveryRequest> for StreamSecretsMethod {
    type Response = DiscoveryResponse;
    type ResponseStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type Future = tonic::codegen::BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.stream_secrets(request).await })
    }
}

/// Prost encoding with [`stream_buffers`].
#[derive(Clone, Copy, Debug)]
struct SdsCodec;

impl tonic::codec::Codec for SdsCodec {
    type Encode = DiscoveryResponse;
    type Decode = DiscoveryRequest;
    type Encoder = ProstEncoder<DiscoveryResponse>;
    type Decoder = ProstDecoder<DiscoveryRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<DiscoveryResponse, DiscoveryRequest>::raw_encoder(stream_buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<DiscoveryResponse, DiscoveryRequest>::raw_decoder(stream_buffers())
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
        // The same per-request limits as a stream, checked before waiting or fetching.
        if let Err((reason, excess)) = stream::check_fetch_limits(&req) {
            self.inner.jwt.refusals().refused(reason, excess);
            return Err(Status::invalid_argument(format!(
                "too many resource names: at most {MAX_NAMES}, of which at most \
                 {MAX_JWT_KEYS} jwt-svid: names, per request"
            )));
        }
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
        // A unary fetch may be the first to ask for a token: fetch it (bounded) before
        // answering, rather than answering NotFound from an empty cache forever. The keys
        // are warmed together, so a cold request waits for one fetch time, not the sum.
        let keys: std::collections::BTreeSet<JwtKey> = req
            .resource_names
            .iter()
            .filter_map(|name| match ResourceName::parse(name) {
                Ok(ResourceName::JwtSvid(key)) if self.inner.jwt.allowed(&key) => Some(key),
                _ => None,
            })
            .collect();
        let admitted = futures_util::future::join_all(
            keys.iter()
                .map(|key| self.inner.jwt.warm(key, self.inner.fetch_wait)),
        )
        .await;
        if admitted.contains(&false) {
            return Err(Status::resource_exhausted(
                "the bridge holds its maximum of distinct JWT-SVID audiences (--max-jwt-keys); \
                 retry later or ask for an audience already in use",
            ));
        }
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

/// Runs one stream until Envoy closes it, it breaks (a request that does not decode: the
/// stream ends with that status), or the bridge shuts down (then the response stream ends
/// with OK status, so Envoy reconnects to the next bridge cleanly).
async fn run_stream(
    inner: Arc<Inner>,
    mut requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let metrics = &inner.metrics;
    let _connected = metrics.stream_opened();
    let mut catalog = inner.catalog.clone();
    // The catalog closes only if the X.509 watcher gave up (the agent refused the request
    // itself); JWT-SVID names keep working then, so only that branch is switched off.
    let mut catalog_open = true;
    let mut state = SdsStream::new(inner.default_mode);
    // One refresh watch per subscribed JWT-SVID key.
    let mut jwt_keys = Vec::new();
    let mut jwt_watches: Vec<watch::Receiver<u64>> = Vec::new();
    tracing::debug!("stream opened");
    loop {
        let mut responses = Vec::with_capacity(2);
        tokio::select! {
            message = requests.message() => match message {
                Ok(Some(req)) => {
                    let names = req.resource_names.len();
                    let current = catalog.borrow_and_update().clone();
                    let handled = state.on_request(req, current.as_deref(), &inner.jwt);
                    record(&handled.kind, names, &state, metrics);
                    for (reason, count) in handled.refused {
                        inner.jwt.refusals().refused(reason, count);
                    }
                    responses.extend(handled.response);
                    let keys = state.jwt_keys(&inner.jwt);
                    if keys != jwt_keys {
                        // A key over the bridge-wide cap gets no watch and no token; the
                        // refusal is counted (and logged once) by `subscribe`. Only admitted
                        // keys are remembered, so the stream's next request tries the
                        // refused ones again (slots free up as idle keys are evicted).
                        let (admitted, watches): (Vec<_>, Vec<_>) = keys
                            .into_iter()
                            .filter_map(|k| inner.jwt.subscribe(&k).map(|w| (k, w)))
                            .unzip();
                        jwt_watches = watches;
                        jwt_keys = admitted;
                        // A fetch that completed between the response above and these
                        // subscriptions woke nobody: look again now that we are subscribed.
                        responses.extend(state.on_jwt(current.as_deref(), &inner.jwt));
                    }
                }
                Ok(None) => {
                    tracing::debug!("Envoy closed the stream");
                    break;
                }
                Err(status) => {
                    tracing::debug!(code = ?status.code(), message = status.message(), "stream broken");
                    // A request that does not decode ends the stream with that error, not
                    // with OK: the client learns why (if it is gone, nothing is sent).
                    let _ = tx.try_send(Err(status));
                    break;
                }
            },
            changed = catalog.changed(), if catalog_open => {
                if changed.is_err() {
                    catalog_open = false;
                    continue;
                }
                let current = catalog.borrow_and_update().clone();
                responses.extend(current.and_then(|c| state.on_catalog(&c, &inner.jwt)));
            }
            open = any_changed(&mut jwt_watches), if !jwt_watches.is_empty() => {
                // The cache keeps subscribed keys (no idle eviction), so a watch closes only
                // when the cache itself is going away: stop watching rather than spin.
                if !open {
                    jwt_watches.clear();
                }
                let current = catalog.borrow().clone();
                responses.extend(state.on_jwt(current.as_deref(), &inner.jwt));
            }
            () = inner.shutdown.wait() => break,
            () = tx.closed() => break,
        }
        for response in responses {
            let count = response.resources.len();
            tracing::debug!(version = %response.version_info, resources = count, "pushing secrets");
            metrics.pushed(count);
            // An Envoy that stops reading must not hold up shutdown.
            let sent = tokio::select! {
                sent = tx.send(Ok(response)) => sent.is_ok(),
                () = inner.shutdown.wait() => false,
            };
            if !sent {
                return;
            }
        }
    }
    tracing::debug!("stream closed");
}

/// Resolves when any of `watches` changes (`true`) or one's sender is gone (`false`).
async fn any_changed(watches: &mut [watch::Receiver<u64>]) -> bool {
    let changes = watches.iter_mut().map(|w| Box::pin(w.changed()));
    futures_util::future::select_all(changes).await.0.is_ok()
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
