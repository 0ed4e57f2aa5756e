//! The loopback credentials server, as every provider shares it (REFERENCE §4, §7, §8): guards,
//! limits, error rendering, serving, and [`Broker`], the generic bridge from a provider's
//! credential cache to its routes. The routes and response formats themselves belong to each
//! provider (`provider/<cloud>/routes.rs`); adding a cloud does not touch this file.
//!
//! Every failure is a non-2xx status with a one-line JSON body in the provider's error format
//! ([`RenderError`]), never a partial document: `curl -sf` then exits non-zero and the SDK
//! reports the failure instead of parsing garbage.
//!
//! Guards, in order (the peers anchoring them: aws-vault's local server, eks-pod-identity-agent):
//! the `Host` must be a loopback name or address (403: a web page that rebinds its DNS name to
//! 127.0.0.1 still sends its own name) and appear once (400), the method must be GET (405), and
//! request heads are bounded by hyper (431 over [`Limits::max_header_bytes`] or
//! [`Limits::max_headers`]; a slow head is cut off after [`Limits::header_read_timeout`]). No
//! request body is read. Provider-specific checks (a shared-secret header, `Metadata-Flavor`)
//! run in the provider's routes, after these.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use sidecar_runtime::{Readiness, Shutdown};
use tokio::net::TcpListener;

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
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

impl Service {
    /// The routes behind the shared guards (counting requests in `metrics`), and readiness.
    pub fn into_parts(
        self,
        metrics: Metrics,
    ) -> (Router, Box<dyn Fn() -> Readiness + Send + Sync>) {
        let guard = Guard {
            metrics,
            route_label: self.route_label,
            render: self.render_error,
        };
        let router = self
            .routes
            // In an `Arc`: the state is cloned per request, and `Metrics` is seven `Arc`s.
            .layer(middleware::from_fn_with_state(Arc::new(guard), guard_layer));
        (router, self.ready)
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
}

/// Host and method checks in front of everything, and request metrics.
async fn guard_layer(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let route = (guard.route_label)(request.uri().path());
    let (response, result) = if let Some(response) = reject_host(&request, guard.render) {
        (response, "foreign_host")
    } else if request.method() != Method::GET {
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
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        // [v6]:port
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if !(after.is_empty() || is_port(after.strip_prefix(':').unwrap_or("x"))) {
            return false;
        }
        return v6
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return false, // a bare IPv6 address or garbage
            None => host_port,
        }
    };
    host.eq_ignore_ascii_case("localhost")
        || host.eq_ignore_ascii_case("localhost.")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| IpAddr::V4(ip).is_loopback())
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
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

/// Bounds on what a client may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line + headers, in bytes (hyper's minimum is 8 KiB).
    pub max_header_bytes: usize,
    /// Number of headers.
    pub max_headers: usize,
    /// Time to send the request head.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` (HTTP/1.1, keep-alive, `TCP_NODELAY`) until `shutdown`, then
/// lets requests in flight finish (at most 5 s).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.wait() => break,
        };
        // Small JSON answers must not wait on Nagle + delayed ACK.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(5)) => {
            tracing::warn!("requests still in flight after 5 s; closing");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
