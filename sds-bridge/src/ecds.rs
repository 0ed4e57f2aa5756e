//! Envoy's Extension Config Discovery Service (ECDS, `docs/protocols.md#ecds`): the
//! `jwt_authn` filter's whole configuration, with every trust domain's JWT-SVID keys inline,
//! served on the SDS socket and pushed the moment the Workload API's JWT bundles change.
//!
//! Why: with `remote_jwks` Envoy's verified-token cache must stay off (a JWKS refresh keeps
//! the cache, so a token of a removed key stays accepted), and a removed key is only noticed
//! at Envoy's next poll. A filter config that arrives over ECDS and differs from the last one
//! is built anew, and with it a new, empty token cache per worker: the cache can be on, and a
//! revocation takes effect when Envoy applies the push.
//!
//! - One resource, [`RESOURCE_NAME`]: a `TypedExtensionConfig` holding a `JwtAuthentication`
//!   with one provider per configured trust domain (`subjects` prefix `spiffe://<td>/`, as
//!   `sds-bridge jwt-authn-config` prints for the JWKS mode), keys in `local_jwks`, and
//!   `jwt_cache_config` on.
//! - A trust domain with no bundle (never federated, or dropped) gets the JWKS endpoint's
//!   tombstone key ([`crate::jwks::tombstone`]): Envoy rejects a provider with no keys and
//!   would keep the old ones, so "no keys" must be a key nobody can sign with.
//! - `version_info` is a hash of what the config is made of (policy and key documents), so a
//!   bundle update that changes nothing Envoy uses pushes nothing.
//! - State of the world, one stream per Envoy: the resource is re-sent only when its version
//!   differs from the last one sent on that stream. A NACK is logged and counted, and the same
//!   version is never sent again on that stream (no push loop); the next change is.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, Node, TypedExtensionConfig, data_source,
};
use envoy_types::pb::envoy::config::route::v3::{RouteMatch, route_match};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtCacheConfig, JwtClaimToHeader, JwtHeader, JwtProvider, JwtRequirement,
    JwtRequirementOrList, RequirementRule, jwt_provider, jwt_requirement, requirement_rule,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::extension::v3::extension_config_discovery_service_server::{
    ExtensionConfigDiscoveryService, ExtensionConfigDiscoveryServiceServer,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::Any;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use prost::Message as _;
use sidecar_runtime::Shutdown;
use sidecar_runtime::admin::Readiness;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;
use workload_client::StreamStatus;
use workload_client::spiffe::TrustDomain;

use crate::envoy_config::{PAYLOAD_METADATA_KEY, SPIFFE_ID_HEADER, provider_name};
use crate::jwks::{Document, Documents};

/// The ECDS resource name, which is also the name of Envoy's `HttpFilter` that asks for it.
pub const RESOURCE_NAME: &str = "spiffe-jwt-authn";
/// The type of ECDS resources.
pub const TYPED_EXTENSION_CONFIG_TYPE_URL: &str =
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
/// The type of the filter config inside it (Envoy's `config_discovery.type_urls`).
pub const JWT_AUTHN_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
/// Verified tokens each worker's cache holds per provider (Envoy's default). Entries are
/// small; the cache is emptied by every config update anyway.
pub const JWT_CACHE_SIZE: u32 = 100;

/// Responses buffered per stream before the stream task waits for Envoy to read.
const STREAM_BUFFER: usize = 2;
/// Longest resource name or node ID echoed into a log line (they come from the client).
const MAX_LOGGED_NAME: usize = 100;
/// Longest NACK message logged: Envoy's are a line or two.
const MAX_LOGGED_DETAIL: usize = 1_000;

/// What the ECDS config accepts: from `--ecds-audience` and `--ecds-trust-domain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcdsPolicy {
    /// One provider each, in this order.
    pub trust_domains: Vec<TrustDomain>,
    /// A token's `aud` must hold one of these.
    pub audiences: Vec<String>,
}

/// The resource as sent, rendered once per change and shared by every stream.
#[derive(Clone)]
pub struct Rendered {
    /// `version_info`: a hash of the policy and the key documents.
    pub version: String,
    /// The `TypedExtensionConfig`, packed.
    pub resource: Any,
    /// Trust domains served the tombstone key (no bundle).
    pub placeholders: Vec<String>,
    /// When the bundles that made it arrived, for the ACK latency.
    pub received: Instant,
}

// Keys are public, but Debug stays short.
impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered")
            .field("version", &self.version)
            .field("placeholders", &self.placeholders)
            .finish_non_exhaustive()
    }
}

// === impl Rendered ===

impl Rendered {
    /// The config for `policy` with the keys of `documents`; `tombstone` stands in for a trust
    /// domain with no bundle or no usable key.
    pub fn render(policy: &EcdsPolicy, documents: &Documents, tombstone: &Document) -> Self {
        let mut hash = digest::Context::new(&digest::SHA256);
        let mut placeholders = Vec::new();
        let mut providers = std::collections::HashMap::new();
        for aud in &policy.audiences {
            hash.update(b"aud\0");
            hash.update(aud.as_bytes());
            hash.update(b"\0");
        }
        for td in &policy.trust_domains {
            let name = td.to_string();
            let document = match documents.get(&name) {
                Some(d) if d.keys > 0 => d,
                _ => {
                    placeholders.push(name.clone());
                    tombstone
                }
            };
            hash.update(b"td\0");
            hash.update(name.as_bytes());
            hash.update(b"\0");
            hash.update(document.body.as_bytes());
            hash.update(b"\0");
            providers.insert(provider_name(td), provider(td, &policy.audiences, document));
        }
        let requires = match policy.trust_domains.as_slice() {
            [one] => jwt_requirement::RequiresType::ProviderName(provider_name(one)),
            many => jwt_requirement::RequiresType::RequiresAny(JwtRequirementOrList {
                requirements: many
                    .iter()
                    .map(|td| JwtRequirement {
                        requires_type: Some(jwt_requirement::RequiresType::ProviderName(
                            provider_name(td),
                        )),
                    })
                    .collect(),
            }),
        };
        let config = JwtAuthentication {
            providers,
            rules: vec![RequirementRule {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                requirement_type: Some(requirement_rule::RequirementType::Requires(
                    JwtRequirement {
                        requires_type: Some(requires),
                    },
                )),
            }],
            ..Default::default()
        };
        let extension = TypedExtensionConfig {
            name: RESOURCE_NAME.to_owned(),
            typed_config: Some(Any {
                type_url: JWT_AUTHN_TYPE_URL.to_owned(),
                value: config.encode_to_vec(),
            }),
        };
        let digest = hash.finish();
        let version = digest.as_ref()[..12]
            .iter()
            .fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            });
        Self {
            version,
            resource: Any {
                type_url: TYPED_EXTENSION_CONFIG_TYPE_URL.to_owned(),
                value: extension.encode_to_vec(),
            },
            placeholders,
            received: Instant::now(),
        }
    }
}

/// One trust domain's provider: the same rules as `jwt-authn-config`'s JWKS mode, with the
/// keys inline and the verified-token cache on (safe here: new keys mean a new cache).
fn provider(td: &TrustDomain, audiences: &[String], keys: &Document) -> JwtProvider {
    JwtProvider {
        audiences: audiences.to_vec(),
        subjects: Some(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Prefix(format!(
                "spiffe://{td}/"
            ))),
            ..Default::default()
        }),
        require_expiration: true,
        // Envoy's default (0) means 60 s past `exp`; injectors refresh at half-life.
        clock_skew_seconds: 1,
        jwks_source_specifier: Some(jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(keys.body.to_string())),
            ..Default::default()
        })),
        from_headers: vec![JwtHeader {
            name: "authorization".into(),
            value_prefix: "Bearer ".into(),
        }],
        forward: false,
        claim_to_headers: vec![JwtClaimToHeader {
            header_name: SPIFFE_ID_HEADER.into(),
            claim_name: "sub".into(),
            ..Default::default()
        }],
        payload_in_metadata: PAYLOAD_METADATA_KEY.into(),
        jwt_cache_config: Some(JwtCacheConfig {
            jwt_cache_size: JWT_CACHE_SIZE,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Renders the config for every change of `documents` in the background; `None` until the
/// first bundle set. A new value is published only when the version changes.
pub fn publish(
    policy: EcdsPolicy,
    mut documents: watch::Receiver<Option<Arc<Documents>>>,
    tombstone: Document,
) -> watch::Receiver<Option<Arc<Rendered>>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            let current = documents.borrow_and_update().clone();
            if let Some(current) = current {
                let rendered = Rendered::render(&policy, &current, &tombstone);
                let changed = tx
                    .borrow()
                    .as_ref()
                    .is_none_or(|old: &Arc<Rendered>| old.version != rendered.version);
                if changed {
                    tracing::info!(
                        version = %rendered.version,
                        no_bundle = ?rendered.placeholders,
                        "ECDS jwt_authn config updated"
                    );
                    if tx.send(Some(Arc::new(rendered))).is_err() {
                        return;
                    }
                }
            }
            if documents.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}

// === impl EcdsStream ===

/// What an incoming request turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// No nonce: the first request of a stream (or a new subscription before any response).
    Initial,
    /// Envoy applied the last response.
    Ack {
        /// From the bundle change (or request) that caused the push to this ACK.
        latency: Duration,
    },
    /// Envoy rejected the last response.
    Nack {
        /// Envoy's `error_detail.message`.
        detail: String,
        /// The version it rejected.
        version: String,
    },
    /// A reply to a superseded response: ignored.
    Stale,
    /// A request for another resource type: ignored.
    WrongType(String),
}

/// One ECDS stream's state (no I/O).
#[derive(Debug, Default)]
pub struct EcdsStream {
    node: Option<Node>,
    /// Whether the last request asked for [`RESOURCE_NAME`].
    subscribed: bool,
    /// Whether any request did: from then on an empty name list unsubscribes.
    ever_subscribed: bool,
    /// Names other than ours already logged on this stream.
    reported_other: bool,
    /// The version last sent on this stream.
    sent_version: Option<String>,
    last_nonce: Option<String>,
    last_cause: Option<Instant>,
}

impl EcdsStream {
    /// A stream that has seen no request yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The node of the first request that carried one.
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// Handles one request against the current config (`None` before the first bundle set).
    pub fn on_request(
        &mut self,
        req: DiscoveryRequest,
        current: Option<&Rendered>,
    ) -> (RequestKind, Option<DiscoveryResponse>) {
        if !req.type_url.is_empty() && req.type_url != TYPED_EXTENSION_CONFIG_TYPE_URL {
            return (RequestKind::WrongType(req.type_url), None);
        }
        if self.node.is_none() {
            self.node = req.node;
        }
        let kind = match &self.last_nonce {
            Some(sent) if !req.response_nonce.is_empty() => {
                if *sent != req.response_nonce {
                    return (RequestKind::Stale, None);
                }
                match req.error_detail {
                    Some(status) => RequestKind::Nack {
                        detail: status.message,
                        version: self.sent_version.clone().unwrap_or_default(),
                    },
                    None => RequestKind::Ack {
                        latency: self.last_cause.map(|at| at.elapsed()).unwrap_or_default(),
                    },
                }
            }
            _ => RequestKind::Initial,
        };
        // xDS: an empty list on a stream's first request is a wildcard (ECDS clients name their
        // filter, but the one resource is the whole wildcard either way); after that it is
        // the client dropping its last watch, and nothing more is pushed until it asks again.
        let wanted = (req.resource_names.is_empty() && !self.ever_subscribed)
            || req.resource_names.iter().any(|n| n == RESOURCE_NAME);
        self.ever_subscribed |= wanted;
        if !self.reported_other
            && let Some(other) = req.resource_names.iter().find(|n| *n != RESOURCE_NAME)
        {
            self.reported_other = true;
            let name: String = other.chars().take(MAX_LOGGED_NAME).collect();
            tracing::warn!(
                resource = %name,
                serving = RESOURCE_NAME,
                "ignoring an ECDS resource name this bridge does not serve (name the HttpFilter {RESOURCE_NAME})"
            );
        }
        if !wanted {
            // Unsubscribed: asking again later must get the config again.
            self.sent_version = None;
        }
        self.subscribed = wanted;
        let response = self.push(current, Instant::now());
        (kind, response)
    }

    /// A new config: the response pushing it, if this stream wants it and has not had it.
    pub fn on_update(&mut self, current: &Rendered) -> Option<DiscoveryResponse> {
        self.push(Some(current), current.received)
    }

    fn push(&mut self, current: Option<&Rendered>, cause: Instant) -> Option<DiscoveryResponse> {
        let current = current.filter(|_| self.subscribed)?;
        if self.sent_version.as_deref() == Some(current.version.as_str()) {
            return None;
        }
        self.sent_version = Some(current.version.clone());
        let nonce = format!("{:016x}", fastrand::u64(..));
        self.last_nonce = Some(nonce.clone());
        self.last_cause = Some(cause);
        Some(DiscoveryResponse {
            version_info: current.version.clone(),
            resources: vec![current.resource.clone()],
            type_url: TYPED_EXTENSION_CONFIG_TYPE_URL.to_owned(),
            nonce,
            ..Default::default()
        })
    }
}

// === impl EcdsMetrics ===

/// ECDS stream, push, ACK and NACK counts, the time from a bundle change to Envoy's ACK, and
/// whether any Envoy has ACKed yet.
#[derive(Debug)]
pub struct EcdsMetrics {
    streams: Gauge,
    pushes: Counter,
    acks: Counter,
    nacks: Counter,
    ack_latency: Histogram,
    acked: AtomicBool,
}

impl Default for EcdsMetrics {
    fn default() -> Self {
        Self {
            streams: Gauge::default(),
            pushes: Counter::default(),
            acks: Counter::default(),
            nacks: Counter::default(),
            // 100 µs … ~3.3 s, as SDS: this is the revocation delay the bridge adds.
            ack_latency: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            acked: AtomicBool::new(false),
        }
    }
}

impl EcdsMetrics {
    /// Registers `ecds_streams`, `ecds_pushes_total`, `ecds_acks_total`, `ecds_nacks_total`
    /// and `ecds_ack_latency_seconds`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Arc::new(Self::default());
        registry.register(
            "ecds_streams",
            "ECDS streams currently open",
            m.streams.clone(),
        );
        registry.register(
            "ecds_pushes",
            "jwt_authn configs sent on ECDS streams",
            m.pushes.clone(),
        );
        registry.register(
            "ecds_acks",
            "jwt_authn configs Envoy applied (ACK)",
            m.acks.clone(),
        );
        registry.register(
            "ecds_nacks",
            "jwt_authn configs Envoy rejected (NACK); it keeps the previous one",
            m.nacks.clone(),
        );
        registry.register_with_unit(
            "ecds_ack_latency",
            "From the JWT bundle change (or Envoy's request) that caused a jwt_authn config push to its ACK",
            prometheus_client::registry::Unit::Seconds,
            m.ack_latency.clone(),
        );
        m
    }

    /// Whether any Envoy has ACKed a config since start.
    pub fn acked(&self) -> bool {
        self.acked.load(Ordering::Relaxed)
    }
}

// === impl EcdsService ===

/// The ECDS gRPC service; cheap to clone.
#[derive(Clone, Debug)]
pub struct EcdsService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: watch::Receiver<Option<Arc<Rendered>>>,
    metrics: Arc<EcdsMetrics>,
    shutdown: Shutdown,
    next_stream: AtomicU64,
}

impl EcdsService {
    /// Serves `config` (see [`publish`]).
    pub fn new(
        config: watch::Receiver<Option<Arc<Rendered>>>,
        metrics: Arc<EcdsMetrics>,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                metrics,
                shutdown,
                next_stream: AtomicU64::new(1),
            }),
        }
    }

    /// The tonic server.
    pub fn into_server(self) -> ExtensionConfigDiscoveryServiceServer<Self> {
        ExtensionConfigDiscoveryServiceServer::new(self)
    }

    /// `/readyz`'s view: ready once an Envoy ACKed the config (until then its listener waits,
    /// or after Envoy's initial fetch timeout refuses every token), not once the bundle stream
    /// gave up.
    pub fn readiness(&self, bundles: &StreamStatus) -> Readiness {
        if let not_ready @ Readiness::NotReady(_) = self.startup(bundles) {
            return not_ready;
        }
        if !self.inner.metrics.acked() {
            return Readiness::NotReady(
                "no Envoy has applied the ECDS jwt_authn config yet: it refuses every token".into(),
            );
        }
        Readiness::Ready
    }

    /// `/startupz`'s view: a config to serve, without waiting for an Envoy to apply it (Envoy
    /// starts after the bridge whose socket it needs).
    pub fn startup(&self, bundles: &StreamStatus) -> Readiness {
        if bundles.gave_up {
            return Readiness::NotReady(format!(
                "the Workload API refused the JWT bundle stream (ECDS): {}",
                bundles.last_error.clone().unwrap_or_default()
            ));
        }
        if self.inner.config.borrow().is_none() {
            return Readiness::NotReady(
                "no JWT bundles from the Workload API yet (ECDS): no jwt_authn config to serve"
                    .into(),
            );
        }
        Readiness::Ready
    }
}

type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ExtensionConfigDiscoveryService for EcdsService {
    type StreamExtensionConfigsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaExtensionConfigsStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_extension_configs(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamExtensionConfigsStream>, Status> {
        let id = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let span = tracing::info_span!("ecds_stream", stream = id);
        tokio::spawn(run_stream(self.inner.clone(), request.into_inner(), tx).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_extension_configs(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaExtensionConfigsStream>, Status> {
        Err(Status::unimplemented(
            "sds-bridge serves state-of-the-world ECDS only; configure api_type: GRPC",
        ))
    }

    async fn fetch_extension_configs(
        &self,
        _request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        // A fetched config is never updated: revocations would not reach it.
        Err(Status::unimplemented(
            "sds-bridge pushes the jwt_authn config on a stream only (revocations must reach \
             Envoy); configure api_type: GRPC",
        ))
    }
}

/// Runs one stream until Envoy closes it, it breaks, or the bridge shuts down.
async fn run_stream(
    inner: Arc<Inner>,
    mut requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let metrics = &inner.metrics;
    metrics.streams.inc();
    let _open = StreamGuard(metrics.streams.clone());
    let mut config = inner.config.clone();
    let mut config_open = true;
    let mut state = EcdsStream::new();
    loop {
        let response = tokio::select! {
            message = requests.message() => match message {
                Ok(Some(req)) => {
                    let current = config.borrow_and_update().clone();
                    let (kind, response) = state.on_request(req, current.as_deref());
                    record(&kind, &state, metrics);
                    response
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(code = ?status.code(), message = status.message(), "ECDS stream broken");
                    let _ = tx.try_send(Err(status));
                    break;
                }
            },
            changed = config.changed(), if config_open => {
                if changed.is_err() {
                    config_open = false;
                    continue;
                }
                let current = config.borrow_and_update().clone();
                current.and_then(|c| state.on_update(&c))
            }
            () = inner.shutdown.wait() => break,
            () = tx.closed() => break,
        };
        if let Some(response) = response {
            tracing::debug!(version = %response.version_info, "pushing the jwt_authn config");
            metrics.pushes.inc();
            let sent = tokio::select! {
                sent = tx.send(Ok(response)) => sent.is_ok(),
                () = inner.shutdown.wait() => false,
            };
            if !sent {
                return;
            }
        }
    }
    tracing::debug!("ECDS stream closed");
}

/// Decrements the open-streams gauge however the stream task ends.
struct StreamGuard(Gauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn record(kind: &RequestKind, state: &EcdsStream, metrics: &EcdsMetrics) {
    // Client-supplied text: bounded before it reaches a log line.
    let node: String = state
        .node()
        .map(|n| n.id.chars().take(MAX_LOGGED_NAME).collect())
        .unwrap_or_default();
    let node = node.as_str();
    match kind {
        RequestKind::Initial => tracing::info!(node, "ECDS subscription"),
        RequestKind::Ack { latency } => {
            metrics.acks.inc();
            metrics.ack_latency.observe(latency.as_secs_f64());
            metrics.acked.store(true, Ordering::Relaxed);
            let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            tracing::debug!(latency_us, "jwt_authn config applied");
        }
        RequestKind::Nack { detail, version } => {
            metrics.nacks.inc();
            let detail: String = detail.chars().take(MAX_LOGGED_DETAIL).collect();
            tracing::warn!(node, %version, error = %detail, "Envoy rejected the jwt_authn config (NACK); it keeps the previous one; not re-sending this version");
        }
        RequestKind::Stale => tracing::debug!("ignoring a reply to a superseded ECDS response"),
        RequestKind::WrongType(url) => {
            let url: String = url.chars().take(MAX_LOGGED_NAME).collect();
            tracing::warn!(type_url = %url, "ignoring an ECDS request for a type other than TypedExtensionConfig");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    fn policy(tds: &[&str]) -> EcdsPolicy {
        EcdsPolicy {
            trust_domains: tds.iter().map(|t| TrustDomain::new(t).unwrap()).collect(),
            audiences: vec!["aud".into()],
        }
    }

    fn doc(kid: &str) -> Document {
        Document::new_for_tests(kid)
    }

    fn documents(entries: &[(&str, &str)]) -> Documents {
        Documents::from_for_tests(entries.iter().map(|(td, kid)| (*td, doc(kid))))
    }

    fn decode(r: &Rendered) -> JwtAuthentication {
        let ext = TypedExtensionConfig::decode(r.resource.value.as_slice()).unwrap();
        assert_eq!(ext.name, RESOURCE_NAME);
        let any = ext.typed_config.unwrap();
        assert_eq!(any.type_url, JWT_AUTHN_TYPE_URL);
        JwtAuthentication::decode(any.value.as_slice()).unwrap()
    }

    fn request(nonce: &str, names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: TYPED_EXTENSION_CONFIG_TYPE_URL.into(),
            response_nonce: nonce.into(),
            resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn one_provider_per_trust_domain_with_inline_keys_and_a_tombstone_for_missing_ones() {
        let tomb = doc("tomb");
        let r = Rendered::render(
            &policy(&["example.org", "partner.org"]),
            &documents(&[("example.org", "k1")]),
            &tomb,
        );
        assert_eq!(r.placeholders, ["partner.org"]);
        let c = decode(&r);
        assert_eq!(c.providers.len(), 2);
        let own = &c.providers["example.org"];
        assert!(own.require_expiration && !own.forward && own.jwt_cache_config.is_some());
        assert_eq!(
            own.subjects.as_ref().unwrap().match_pattern,
            Some(string_matcher::MatchPattern::Prefix(
                "spiffe://example.org/".into()
            ))
        );
        let inline = |p: &JwtProvider| match &p.jwks_source_specifier {
            Some(jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
                specifier: Some(data_source::Specifier::InlineString(s)),
                ..
            })) => s.clone(),
            other => panic!("{other:?}"),
        };
        assert!(inline(own).contains("k1"));
        assert!(inline(&c.providers["partner.org"]).contains("tomb"));
        assert!(matches!(
            c.rules[0].requirement_type,
            Some(requirement_rule::RequirementType::Requires(
                JwtRequirement {
                    requires_type: Some(jwt_requirement::RequiresType::RequiresAny(_))
                }
            ))
        ));
    }

    #[test]
    fn the_version_follows_the_keys_and_the_policy_only() {
        let tomb = doc("tomb");
        let p = policy(&["example.org"]);
        let a = Rendered::render(&p, &documents(&[("example.org", "k1")]), &tomb);
        let same = Rendered::render(
            &p,
            &documents(&[("example.org", "k1"), ("unrelated.org", "x")]),
            &tomb,
        );
        let rotated = Rendered::render(&p, &documents(&[("example.org", "k2")]), &tomb);
        let mut other_aud = p.clone();
        other_aud.audiences = vec!["else".into()];
        let aud = Rendered::render(&other_aud, &documents(&[("example.org", "k1")]), &tomb);
        assert_eq!(a.version, same.version);
        assert_ne!(a.version, rotated.version);
        assert_ne!(a.version, aud.version);
    }

    #[test]
    fn pushes_on_subscribe_and_change_only_and_never_resends_a_nacked_version() {
        let tomb = doc("tomb");
        let p = policy(&["example.org"]);
        let v1 = Rendered::render(&p, &documents(&[("example.org", "k1")]), &tomb);
        let v2 = Rendered::render(&p, &documents(&[("example.org", "k2")]), &tomb);
        let mut s = EcdsStream::new();
        // Before the first bundle set: nothing to send.
        let (kind, r) = s.on_request(request("", &[RESOURCE_NAME]), None);
        assert_eq!((kind, r.is_some()), (RequestKind::Initial, false));
        let r1 = s.on_update(&v1).unwrap();
        assert_eq!(r1.version_info, v1.version);
        assert!(s.on_update(&v1).is_none(), "same version: no push");
        let (kind, r) = s.on_request(request(&r1.nonce, &[RESOURCE_NAME]), Some(&v1));
        assert!(matches!(kind, RequestKind::Ack { .. }) && r.is_none());
        let r2 = s.on_update(&v2).unwrap();
        let mut nack = request(&r2.nonce, &[RESOURCE_NAME]);
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: "bad".into(),
            ..Default::default()
        });
        let (kind, r) = s.on_request(nack, Some(&v2));
        assert!(matches!(kind, RequestKind::Nack { ref version, .. } if *version == v2.version));
        assert!(r.is_none(), "a NACKed version is not sent again");
        assert!(s.on_update(&v2).is_none());
        // A stale nonce is ignored.
        let (kind, _) = s.on_request(request("old", &[RESOURCE_NAME]), Some(&v2));
        assert_eq!(kind, RequestKind::Stale);
        // The next change is sent.
        assert!(s.on_update(&v1).is_some());
    }

    #[tokio::test]
    async fn ready_only_with_a_config_and_an_ack_started_with_the_config_alone() {
        let (tx, rx) = watch::channel(None);
        let metrics = Arc::new(EcdsMetrics::default());
        let service = EcdsService::new(rx, metrics.clone(), Shutdown::new());
        let ok = StreamStatus::default();
        assert!(matches!(service.readiness(&ok), Readiness::NotReady(_)));
        assert!(matches!(service.startup(&ok), Readiness::NotReady(_)));
        let tomb = doc("tomb");
        let v1 = Rendered::render(
            &policy(&["example.org"]),
            &documents(&[("example.org", "k1")]),
            &tomb,
        );
        tx.send_replace(Some(Arc::new(v1)));
        assert!(matches!(service.readiness(&ok), Readiness::NotReady(r) if r.contains("no Envoy")));
        // Started: Envoy, which starts after the bridge, can now be served.
        assert_eq!(service.startup(&ok), Readiness::Ready);
        let mut s = EcdsStream::new();
        record(&RequestKind::Initial, &s, &metrics);
        let _ = s.on_request(request("", &[RESOURCE_NAME]), None);
        record(
            &RequestKind::Ack {
                latency: Duration::from_millis(1),
            },
            &s,
            &metrics,
        );
        assert_eq!(service.readiness(&ok), Readiness::Ready);
        let gave_up = StreamStatus {
            gave_up: true,
            ..Default::default()
        };
        assert!(matches!(
            service.readiness(&gave_up),
            Readiness::NotReady(_)
        ));
        assert!(matches!(service.startup(&gave_up), Readiness::NotReady(_)));
    }

    #[test]
    fn other_names_and_types_get_nothing() {
        let tomb = doc("tomb");
        let v1 = Rendered::render(
            &policy(&["example.org"]),
            &documents(&[("example.org", "k1")]),
            &tomb,
        );
        let mut s = EcdsStream::new();
        let (_, r) = s.on_request(request("", &["something-else"]), Some(&v1));
        assert!(r.is_none());
        assert!(s.on_update(&v1).is_none());
        let (_, r) = s.on_request(request("", &["something-else", RESOURCE_NAME]), Some(&v1));
        assert!(r.is_some());
        let mut wrong = request("", &[RESOURCE_NAME]);
        wrong.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
        let mut fresh = EcdsStream::new();
        let (kind, r) = fresh.on_request(wrong, Some(&v1));
        assert!(matches!(kind, RequestKind::WrongType(_)) && r.is_none());
        // Wildcard (no names): the one resource.
        let mut wild = EcdsStream::new();
        assert!(wild.on_request(request("", &[]), Some(&v1)).1.is_some());
    }

    #[test]
    fn an_empty_name_list_after_a_subscription_unsubscribes() {
        let tomb = doc("tomb");
        let p = policy(&["example.org"]);
        let v1 = Rendered::render(&p, &documents(&[("example.org", "k1")]), &tomb);
        let v2 = Rendered::render(&p, &documents(&[("example.org", "k2")]), &tomb);
        let mut s = EcdsStream::new();
        let r1 = s
            .on_request(request("", &[RESOURCE_NAME]), Some(&v1))
            .1
            .unwrap();
        // The filter went away: Envoy drops its last watch.
        let (kind, r) = s.on_request(request(&r1.nonce, &[]), Some(&v1));
        assert!(matches!(kind, RequestKind::Ack { .. }) && r.is_none());
        assert!(
            s.on_update(&v2).is_none(),
            "nothing pushed once unsubscribed"
        );
        // Asking again gets the current config.
        let (_, r) = s.on_request(request(&r1.nonce, &[RESOURCE_NAME]), Some(&v2));
        assert_eq!(r.unwrap().version_info, v2.version);
    }
}
