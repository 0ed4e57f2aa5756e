//! A thin Workload API client: one lazily connected channel, the security header on every call,
//! and per-call deadlines. Higher layers (watchers, the JWT cache) add retries and state.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};
use tracing::Instrument;
use workload_proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use workload_proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, X509svidRequest, X509svidResponse,
};

use crate::endpoint::Endpoint;

/// Errors talking to the Workload API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The agent answered with a gRPC error (or the connection failed, as `Unavailable`).
    #[error("workload API call {method} failed: {code:?}: {message}")]
    Status {
        /// The RPC.
        method: &'static str,
        /// The gRPC code.
        code: tonic::Code,
        /// The agent's message (never contains secrets: it is the agent's own text).
        message: String,
    },
    /// The call did not finish within its deadline.
    #[error("workload API call {method} timed out after {timeout:?}")]
    Timeout {
        /// The RPC.
        method: &'static str,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The agent answered, but with something that is not a valid SVID or bundle.
    #[error("workload API call {method} returned invalid data: {reason}")]
    InvalidResponse {
        /// The RPC.
        method: &'static str,
        /// What was wrong.
        reason: String,
    },
}

impl ClientError {
    pub(crate) fn status(method: &'static str, status: &tonic::Status) -> Self {
        Self::Status {
            method,
            code: status.code(),
            message: status.message().to_owned(),
        }
    }

    /// Whether the agent is unreachable (socket missing, refused, reset) rather than answering
    /// with an error. Reconnects for the former are cheap and fast.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Status {
                code: tonic::Code::Unavailable | tonic::Code::Cancelled,
                ..
            } | Self::Timeout { .. }
        )
    }

    /// The agent has no identity for this caller (`PermissionDenied`, SPIRE's "no identity
    /// issued"): not registered yet, or its entry was deleted. Retried, since an entry may be
    /// created at any time.
    pub fn is_no_identity(&self) -> bool {
        matches!(
            self,
            Self::Status {
                code: tonic::Code::PermissionDenied,
                ..
            }
        )
    }

    /// Errors a client must not retry: the agent rejected the request itself
    /// (`InvalidArgument` means the security header is missing; retrying cannot help:
    /// `docs/protocols.md#workload-api-security-header`).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Status {
                code: tonic::Code::InvalidArgument,
                ..
            }
        )
    }
}

/// Adds `workload.spiffe.io: true` to every call
/// (`docs/protocols.md#workload-api-security-header`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SecurityHeader;

impl Interceptor for SecurityHeader {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(
            workload_proto::SECURITY_HEADER,
            MetadataValue::from_static(workload_proto::SECURITY_HEADER_VALUE),
        );
        Ok(req)
    }
}

type Inner = SpiffeWorkloadApiClient<InterceptedService<Channel, SecurityHeader>>;

/// Default deadline for unary calls. SPIRE can block FetchJWTSVID for ~30 s when its cached
/// token is past half-life (spiffe/spire#5994, `docs/protocols.md#fetchjwtsvid-blocking`), so
/// callers on a request path must never wait on this: they read the JWT cache instead.
pub const DEFAULT_UNARY_TIMEOUT: Duration = Duration::from_secs(30);

/// A gRPC channel to `endpoint` (Unix socket or TCP) that dials on first use and re-dials after
/// a broken connection: how every client in this suite reaches a local gRPC server.
pub fn lazy_channel(endpoint: &Endpoint) -> Channel {
    match endpoint {
        Endpoint::Unix(path) => {
            let path = path.clone();
            // The URI is a placeholder: the connector ignores it and dials the socket.
            TonicEndpoint::from_static("http://workload-api.invalid")
                .connect_timeout(Duration::from_secs(2))
                .connect_with_connector_lazy(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
        }
        Endpoint::Tcp(addr) => {
            // An IP:port always forms a valid authority, so this cannot fail; fall back to a
            // closed port rather than panicking if it ever did.
            let uri = format!("http://{addr}");
            TonicEndpoint::from_shared(uri)
                .unwrap_or_else(|_| TonicEndpoint::from_static("http://127.0.0.1:1"))
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                // A half-open TCP connection would otherwise look "connected" forever, with
                // a stale snapshot; pings detect it. (A Unix socket cannot be half-open.)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
                .connect_lazy()
        }
    }
}

/// A cheap-to-clone handle to the Workload API at one endpoint.
#[derive(Clone, Debug)]
pub struct WorkloadApiClient {
    endpoint: Endpoint,
    inner: Inner,
    unary_timeout: Duration,
}

impl WorkloadApiClient {
    /// A client for `endpoint`. Nothing is dialled until the first call, and a broken connection
    /// is re-dialled on the next call, so this succeeds even while the agent is down.
    pub fn new(endpoint: Endpoint) -> Self {
        let channel = lazy_channel(&endpoint);
        Self {
            endpoint,
            inner: SpiffeWorkloadApiClient::with_interceptor(channel, SecurityHeader),
            unary_timeout: DEFAULT_UNARY_TIMEOUT,
        }
    }

    /// Sets the deadline for unary calls.
    #[must_use]
    pub fn with_unary_timeout(mut self, timeout: Duration) -> Self {
        self.unary_timeout = timeout;
        self
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Opens the FetchX509SVID stream.
    pub async fn stream_x509_svids(
        &self,
    ) -> Result<tonic::Streaming<X509svidResponse>, ClientError> {
        const METHOD: &str = "FetchX509SVID";
        let mut inner = self.inner.clone();
        inner
            .fetch_x509svid(X509svidRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| ClientError::status(METHOD, &s))
    }

    /// Opens the FetchJWTBundles stream.
    pub async fn stream_jwt_bundles(
        &self,
    ) -> Result<tonic::Streaming<JwtBundlesResponse>, ClientError> {
        const METHOD: &str = "FetchJWTBundles";
        let mut inner = self.inner.clone();
        inner
            .fetch_jwt_bundles(JwtBundlesRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| ClientError::status(METHOD, &s))
    }

    /// One FetchJWTSVID call: a JWT-SVID for `audience`, for `spiffe_id` if given, otherwise
    /// the workload's default (first) identity. Prefer [`crate::JwtSvidCache`] everywhere but
    /// start-up: this call may block for seconds on a real agent.
    pub async fn fetch_jwt_svid(
        &self,
        audience: &[String],
        spiffe_id: Option<&spiffe::SpiffeId>,
    ) -> Result<spiffe::JwtSvid, ClientError> {
        const METHOD: &str = "FetchJWTSVID";
        let mut inner = self.inner.clone();
        let request = JwtsvidRequest {
            audience: audience.to_vec(),
            spiffe_id: spiffe_id.map(ToString::to_string).unwrap_or_default(),
        };
        let call = inner.fetch_jwtsvid(request);
        let response = tokio::time::timeout(self.unary_timeout, call)
            .instrument(tracing::debug_span!("fetch_jwt_svid", ?audience))
            .await
            .map_err(|_| ClientError::Timeout {
                method: METHOD,
                timeout: self.unary_timeout,
            })?
            .map_err(|s| ClientError::status(METHOD, &s))?
            .into_inner();
        let wanted = spiffe_id.map(ToString::to_string);
        let svid = response
            .svids
            .into_iter()
            .find(|s| wanted.as_ref().is_none_or(|w| *w == s.spiffe_id))
            .ok_or_else(|| ClientError::InvalidResponse {
                method: METHOD,
                reason: "response holds no JWT-SVID for the requested identity".to_owned(),
            })?;
        let parsed = spiffe::JwtSvid::from_workload_api_token(&svid.svid).map_err(|e| {
            ClientError::InvalidResponse {
                method: METHOD,
                reason: e.to_string(),
            }
        })?;
        if parsed.spiffe_id().to_string() != svid.spiffe_id {
            return Err(ClientError::InvalidResponse {
                method: METHOD,
                reason: "token subject differs from the SVID's spiffe_id".to_owned(),
            });
        }
        Ok(parsed)
    }
}
