//! The loopback credentials server, as every provider shares it (`docs/protocols.md#aws`, `#azure`,
//! `#gcp`, `#vault`): guards, limits, error rendering, serving, and [`Broker`], the generic bridge
//! from a provider's credential cache to its routes. The routes and response formats themselves
//! belong to each provider (`provider/<cloud>/routes.rs`); adding a cloud does not touch this file.
//!
//! Every failure is a non-2xx status with a one-line JSON body in the provider's error format
//! ([`RenderError`]), never a partial document: `curl -sf` then exits non-zero and the SDK
//! reports the failure instead of parsing garbage.
//!
//! Guards, in order (the peers anchoring them: aws-vault's local server, eks-pod-identity-agent):
//! the `Host` must be a loopback name or address (403: a web page that rebinds its DNS name to
//! 127.0.0.1 still sends its own name) and appear once (400), the method must be GET (405) unless
//! the provider serves any method ([`Methods::Any`]: Vault's API proxy), and request heads are
//! bounded by hyper (431 over [`Limits::max_header_bytes`] or [`Limits::max_headers`]; a slow head
//! is cut off after [`Limits::header_read_timeout`]). Only a proxy reads a request body, and
//! streams it. Provider-specific checks (a shared-secret header, `Metadata-Flavor`)
//! run in the provider's routes, after these.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sidecar_runtime::Readiness;
use sidecar_runtime::host::HostPort;

use crate::cache::{CacheError, CredentialCache, Held};
use crate::metrics::Metrics;
use crate::provider::ErrorKind;

/// Renders an error in the format a provider's SDKs read: `(status, code, message)`.
pub type RenderError = fn(StatusCode, &str, &str) -> Response;

/// What a provider hands to [`serve`]: its routes and how to label and render them.
pub struct Service {
    /// The provider's routes, state applied.
    pub routes: Router,
    /// The `route` label of request metrics for a path (`other` for unknown paths).
    pub route_label: fn(&str) -> &'static str,
    /// The provider's error format (guards answer in it too).
    pub render_error: RenderError,
    /// Admin `/readyz`.
    pub ready: Box<dyn Fn() -> Readiness + Send + Sync>,
    /// What only some providers need.
    pub options: ServiceOptions,
}

/// The methods the guards let through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Methods {
    /// GET only (credential endpoints: nothing else is ever needed).
    #[default]
    GetOnly,
    /// Any method (an API proxy forwards what the client sends).
    Any,
}

/// Per-provider choices of the shared server.
#[derive(Default)]
pub struct ServiceOptions {
    /// The methods the guards let through.
    pub methods: Methods,
    /// Run once after the server has drained (best-effort clean-up such as revoking a token).
    pub on_shutdown: Option<futures_util::future::BoxFuture<'static, ()>>,
    /// Routes (`route_label` values) whose `result="ok"` request counter is resolved once at
    /// start: the busy ones, counted without a label lookup.
    pub hot_routes: &'static [&'static str],
    /// The provider needs no JWT-SVID (AWS Roles Anywhere signs with the X.509-SVID), so
    /// readiness does not ask for one.
    pub without_jwt_svid: bool,
}

impl fmt::Debug for ServiceOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceOptions")
            .field("methods", &self.methods)
            .field("on_shutdown", &self.on_shutdown.is_some())
            .field("hot_routes", &self.hot_routes)
            .field("without_jwt_svid", &self.without_jwt_svid)
            .finish()
    }
}

/// What [`Service::into_parts`] hands to `main`: the guarded routes, readiness, and the
/// clean-up to run after draining.
pub struct Parts {
    /// The routes behind the guards.
    pub app: Router,
    /// Admin `/readyz`.
    pub ready: Box<dyn Fn() -> Readiness + Send + Sync>,
    /// Clean-up after draining, if any.
    pub on_shutdown: Option<futures_util::future::BoxFuture<'static, ()>>,
    /// Readiness does not ask for a JWT-SVID ([`ServiceOptions::without_jwt_svid`]).
    pub without_jwt_svid: bool,
}

impl fmt::Debug for Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parts").finish_non_exhaustive()
    }
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

impl Service {
    /// The routes behind the shared guards (counting requests in `metrics`), readiness, and
    /// the clean-up to run after draining.
    pub fn into_parts(self, metrics: Metrics) -> Parts {
        let guard = Guard {
            metrics: metrics.with_hot_routes(self.options.hot_routes),
            route_label: self.route_label,
            render: self.render_error,
            methods: self.options.methods,
        };
        let app = self
            .routes
            // In an `Arc`: the state is cloned per request, and `Metrics` holds `Arc`s.
            .layer(middleware::from_fn_with_state(Arc::new(guard), guard_layer));
        Parts {
            app,
            ready: self.ready,
            on_shutdown: self.options.on_shutdown,
            without_jwt_svid: self.options.without_jwt_svid,
        }
    }
}

// === Broker ===

/// The bridge from a provider's credential cache to its routes, generic over the credential
/// type: a request waits at most `fetch_wait` for credentials not held yet, and failures map to
/// HTTP in one place ([`Broker::get`]).
pub struct Broker<C> {
    cache: CredentialCache<C>,
    fetch_wait: Duration,
    render: RenderError,
}

impl<C> Clone for Broker<C> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            fetch_wait: self.fetch_wait,
            render: self.render,
        }
    }
}

impl<C> fmt::Debug for Broker<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("fetch_wait", &self.fetch_wait)
            .finish_non_exhaustive()
    }
}

impl<C: crate::provider::Expiring + Send + Sync + 'static> Broker<C> {
    /// Serves `cache`, rendering errors with `render`.
    pub fn new(cache: CredentialCache<C>, fetch_wait: Duration, render: RenderError) -> Self {
        Self {
            cache,
            fetch_wait,
            render,
        }
    }

    /// Credentials to hand out, or the error response.
    pub async fn get(&self) -> Result<Arc<Held<C>>, Response> {
        self.cache
            .get(self.fetch_wait)
            .await
            .map_err(|e| cache_error(&e, self.render))
    }

    /// The held credentials if they may be handed out now, without waiting or waking anything.
    pub fn peek(&self) -> Option<Arc<Held<C>>> {
        self.cache.peek()
    }

    /// The issuer refused `held` before its expiry: drop it and fetch new credentials now
    /// ([`CredentialCache::invalidate`]).
    pub fn invalidate(&self, held: &Arc<Held<C>>) -> bool {
        self.cache.invalidate(held)
    }

    /// `/readyz`: ready while valid credentials are held.
    pub fn readiness(&self) -> Readiness {
        readiness(&self.cache)
    }
}

/// Ready while `cache` holds credentials that may be handed out.
pub fn readiness<C: crate::provider::Expiring + Send + Sync + 'static>(
    cache: &CredentialCache<C>,
) -> Readiness {
    match cache.peek() {
        Some(_) => Readiness::Ready,
        None => Readiness::NotReady(match cache.stats().last_error {
            Some(e) => format!("no valid credentials: {e}"),
            None => "no credentials yet".to_owned(),
        }),
    }
}

// === Guards ===

struct Guard {
    metrics: Metrics,
    route_label: fn(&str) -> &'static str,
    render: RenderError,
    methods: Methods,
}

/// Host and method checks in front of everything, and request metrics.
async fn guard_layer(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let route = (guard.route_label)(request.uri().path());
    let (response, result) = if let Some(response) = reject_host(&request, guard.render) {
        (response, "foreign_host")
    } else if guard.methods == Methods::GetOnly && request.method() != Method::GET {
        let mut response = (guard.render)(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET is served",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        (response, "method_not_allowed")
    } else {
        let response = next.run(request).await;
        let result = result_label(response.status());
        (response, result)
    };
    guard.metrics.request(route, result);
    response
}

fn result_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "ok",
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        502 => "rejected",
        503 => "unavailable",
        s if s < 500 => "client_error",
        _ => "server_error",
    }
}

/// The `Host` header (and an absolute-form URI's authority, if any) must name loopback:
/// `Some(response)` rejects the request. More than one `Host` is a bad request (RFC 9112
/// §3.2): reading only the first would let `Host: localhost` vouch for a second, foreign one.
fn reject_host(request: &Request, render: RenderError) -> Option<Response> {
    if request
        .headers()
        .get_all(header::HOST)
        .iter()
        .nth(1)
        .is_some()
    {
        return Some(render(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "more than one Host header",
        ));
    }
    if let Some(host) = request.uri().host()
        && !is_loopback_host(host)
    {
        return Some(foreign_host(render));
    }
    match request.headers().get(header::HOST).map(HeaderValue::to_str) {
        Some(Ok(host)) if is_loopback_host(host) => None,
        Some(_) => Some(foreign_host(render)),
        None if request.uri().host().is_some() => None,
        None => Some(render(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "missing Host header",
        )),
    }
}

fn foreign_host(render: RenderError) -> Response {
    render(
        StatusCode::FORBIDDEN,
        "forbidden_host",
        "the Host header must name a loopback address (localhost, 127.0.0.1, [::1])",
    )
}

/// `localhost`, an address in `127.0.0.0/8`, or `[::1]`, each with an optional port.
pub fn is_loopback_host(host_port: &str) -> bool {
    HostPort::parse(host_port).is_some_and(|h| h.is_loopback())
}

// === Error rendering ===

/// The one mapping from cache errors to HTTP: a rejection by the provider is 502 (retrying
/// soon will not help), everything else 503.
pub fn cache_error(e: &CacheError, render: RenderError) -> Response {
    let CacheError::Unavailable { last_error } = e;
    let (status, code) = match last_error.as_ref().map(|e| e.kind) {
        Some(ErrorKind::Rejected) => (StatusCode::BAD_GATEWAY, "provider_rejected"),
        Some(ErrorKind::Identity) => (StatusCode::SERVICE_UNAVAILABLE, "identity_unavailable"),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "provider_unavailable"),
        None => (StatusCode::SERVICE_UNAVAILABLE, "credentials_pending"),
    };
    render(status, code, &e.to_string())
}

/// `body` as an uncacheable JSON answer.
pub fn json(body: Bytes) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// `status` with a one-line JSON `body`.
pub fn json_error(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = json(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response
}

/// The broker's own error format: `{"error": code, "message": …}` (AWS's routes use it).
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json_error(
        status,
        &serde_json::json!({ "error": code, "message": message }),
    )
}

// === Server ===

/// The server and its limits live in `sidecar_runtime::serve` (the admin and JWKS listeners
/// use them too); re-exported for the broker's wiring.
pub use sidecar_runtime::serve::{Limits, serve};

#[cfg(test)]
#[path = "http_props.rs"]
pub(crate) mod props;

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves a one-route service (every path answers 200) behind the guards with `methods`;
    /// returns its address.
    async fn guarded(methods: Methods) -> std::net::SocketAddr {
        let service = Service {
            routes: Router::new().fallback(|| async { "ok" }),
            route_label: |_| "test",
            render_error: error,
            ready: Box::new(|| Readiness::Ready),
            options: ServiceOptions {
                methods,
                on_shutdown: None,
                hot_routes: &[],
                without_jwt_svid: false,
            },
        };
        let parts = service.into_parts(Metrics::unregistered());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            parts.app,
            Limits::default(),
            sidecar_runtime::Shutdown::new(),
        ));
        addr
    }

    async fn status(addr: std::net::SocketAddr, method: Method, host: &str) -> u16 {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<Bytes>>();
        let request = axum::http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}/v1/anything"))
            .header(header::HOST, host)
            .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        client.request(request).await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn the_method_rule_is_the_providers_choice_and_the_host_rule_is_not() {
        let get_only = guarded(Methods::GetOnly).await;
        let any = guarded(Methods::Any).await;
        assert_eq!(status(get_only, Method::GET, "localhost").await, 200);
        assert_eq!(status(get_only, Method::POST, "localhost").await, 405);
        for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
            assert_eq!(
                status(any, method.clone(), "127.0.0.1").await,
                200,
                "{method}"
            );
            assert_eq!(
                status(any, method.clone(), "evil.example").await,
                403,
                "{method}"
            );
        }
        assert_eq!(status(get_only, Method::GET, "evil.example").await, 403);
    }

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "LOCALHOST:9876",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:9876",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:9876",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9876",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:9876",
            "169.254.170.2",
            "[::2]:9876",
            "::1",
            "[::1]x",
            "127.0.0.1:",
            "127.0.0.1:abc",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
