//! The admin listener every sidecar runs (loopback by default):
//!
//! - `GET /healthz`: 200 while the process serves HTTP at all (liveness);
//! - `GET /readyz`: 200 only once the sidecar holds what it needs to do its job (a valid SVID,
//!   token or bundle), else 503 with the reason (readiness);
//! - `GET /startupz`: 200 once the sidecar can serve the peers that start after it, else 503
//!   with the reason. The same as `/readyz` unless the sidecar says otherwise
//!   ([`Admin::with_startup`]): a sidecar whose readiness waits on a peer (sds-bridge's ECDS
//!   mode waits for Envoy's ACK) would deadlock a start-up order that waits for it, as
//!   Kubernetes does for native sidecars (the next container starts only once this one's
//!   startup probe passed);
//! - `GET /metrics`: Prometheus/OpenMetrics text.
//!
//! Kept off the data-plane port so that a probe or a scrape never competes with Envoy's calls.
//! Served by [`crate::serve`]: HTTP/1.1, request heads bounded in size (16 KiB, 64 headers)
//! and time (10 s), so a client trickling its head cannot hold a connection indefinitely.
//!
//! Every request passes a `Host` guard first: a web page whose DNS name was rebound to this
//! address still sends its own name as `Host`, and must not read `/readyz` (error text) or
//! `/metrics` (audiences, SPIFFE IDs). So `Host` must be an IP literal (kubelet probes and
//! Prometheus use the pod IP), `localhost`, or absent (HTTP/1.0); another name is refused with
//! 403, and more than one `Host` with 400 (RFC 9112 §3.2).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::host::HostPort;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::metrics::RuntimeCollector;
use crate::serve::Limits;
use crate::shutdown::Shutdown;

/// The answer of a readiness check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Able to serve.
    Ready,
    /// Not (yet, or no longer) able to serve, and why.
    NotReady(String),
}

type ReadyFn = dyn Fn() -> Readiness + Send + Sync;

/// The admin server's state.
#[derive(Clone)]
pub struct Admin {
    registry: Arc<Registry>,
    ready: Arc<ReadyFn>,
    /// `/startupz`, when it differs from `/readyz`.
    startup: Option<Arc<ReadyFn>>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

/// The admin address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error(
    "binding the admin listener on {addr} (set {setting} or --admin-listen to a free address, or off: each instance on a host needs its own)"
)]
pub struct AdminBindError {
    /// The address.
    pub addr: SocketAddr,
    /// The variable that sets it.
    pub setting: String,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

// === impl Admin ===

impl Admin {
    /// Serves `registry`, plus the runtime's task gauges ([`RuntimeCollector`]), and answers
    /// `/readyz` with `ready()`.
    pub fn new(
        mut registry: Registry,
        ready: impl Fn() -> Readiness + Send + Sync + 'static,
    ) -> Self {
        registry.register_collector(Box::new(RuntimeCollector));
        Self {
            registry: Arc::new(registry),
            ready: Arc::new(ready),
            startup: None,
        }
    }

    /// Answers `/startupz` with `startup()` instead of the readiness check: for a sidecar
    /// whose readiness needs a peer that starts after it.
    #[must_use]
    pub fn with_startup(mut self, startup: impl Fn() -> Readiness + Send + Sync + 'static) -> Self {
        self.startup = Some(Arc::new(startup));
        self
    }

    /// The router, for tests and for embedding.
    pub fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/startupz", get(startupz))
            .route("/metrics", get(metrics))
            .layer(middleware::from_fn(host_guard))
            .with_state(self)
    }

    /// Binds `addr` (so a port conflict fails start-up, before anything else runs).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
        TcpListener::bind(addr).await
    }

    /// Binds the admin address if there is one; the error says which setting moves it (a
    /// second instance on one host otherwise collides on the default port).
    pub async fn bind_setting(
        addr: Option<SocketAddr>,
        setting: &str,
    ) -> Result<Option<TcpListener>, AdminBindError> {
        let Some(addr) = addr else { return Ok(None) };
        TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| AdminBindError {
                addr,
                setting: setting.to_owned(),
                source,
            })
    }

    /// Serves on `listener` in the background until `shutdown` triggers; a failure is logged
    /// (the sidecar's own work goes on without its probes).
    pub fn spawn(self, listener: TcpListener, shutdown: Shutdown) {
        tokio::spawn(async move {
            if let Err(e) = self.serve(listener, shutdown).await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
    }

    /// Serves until `shutdown` triggers.
    pub async fn serve(self, listener: TcpListener, shutdown: Shutdown) -> std::io::Result<()> {
        crate::serve::serve(listener, self.router(), Limits::default(), shutdown).await
    }
}

/// Refuses requests whose `Host` (or absolute-form URI) names a host other than an IP literal
/// or `localhost`, and requests with several `Host` headers. Public so every loopback HTTP
/// listener of ours (e.g. sds-bridge's JWKS endpoint) layers the same guard:
/// `.layer(axum::middleware::from_fn(host_guard))`.
pub async fn host_guard(request: Request, next: Next) -> Response {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return (StatusCode::BAD_REQUEST, "more than one Host header\n").into_response();
    }
    let uri_host_ok = request
        .uri()
        .authority()
        .is_none_or(|a| is_admin_host(a.as_str()));
    let header_ok = first
        .map(HeaderValue::to_str)
        .is_none_or(|h| h.is_ok_and(is_admin_host));
    if !(uri_host_ok && header_ok) {
        return (
            StatusCode::FORBIDDEN,
            "the Host header must be an IP address or localhost\n",
        )
            .into_response();
    }
    next.run(request).await
}

/// An admin `Host` value: an IPv4 literal, a bracketed IPv6 literal or `localhost` (with or
/// without a trailing dot), each with an optional port. Any other DNS name is refused: the
/// names a rebinding attack can use are exactly the DNS names.
pub fn is_admin_host(host_port: &str) -> bool {
    HostPort::parse(host_port).is_some_and(|h| h.is_ip_or_localhost())
}

async fn readyz(State(admin): State<Admin>) -> Response {
    answer((admin.ready)(), "ready", "not ready")
}

async fn startupz(State(admin): State<Admin>) -> Response {
    let check = admin.startup.as_ref().unwrap_or(&admin.ready);
    answer(check(), "started", "not started")
}

fn answer(readiness: Readiness, ok: &str, not_ok: &str) -> Response {
    match readiness {
        Readiness::Ready => (StatusCode::OK, format!("{ok}\n")).into_response(),
        Readiness::NotReady(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{not_ok}: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &admin.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        raw(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n")).await
    }

    /// Sends `head` (request line and headers) and returns the whole response.
    async fn raw(addr: SocketAddr, head: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[test]
    fn admin_hosts_are_ip_literals_and_localhost() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9012",
            "10.244.1.7:9012",
            "[::1]",
            "[fd00::7]:9012",
            "localhost",
            "LOCALHOST:9012",
            "localhost.",
        ] {
            assert!(is_admin_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9012",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1.nip.io:9012",
            "fd00::7",
            "[fd00::7",
            "[::1]x",
            "127.0.0.1:",
            "127.0.0.1:abc",
            "",
        ] {
            assert!(!is_admin_host(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn dns_rebinding_hosts_are_refused_and_probes_by_ip_served() {
        let mut registry = Registry::default();
        registry.register("checks", "Checks", Counter::<u64>::default());
        let admin = Admin::new(registry, || Readiness::NotReady("STS said no".into()));
        let listener = Admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let server = tokio::spawn(admin.serve(listener, shutdown.clone()));

        for path in ["/metrics", "/readyz", "/startupz", "/healthz"] {
            let r = raw(
                addr,
                &format!("GET {path} HTTP/1.1\r\nHost: evil.example:80\r\n"),
            )
            .await;
            assert!(r.starts_with("HTTP/1.1 403"), "{path}: {r}");
            assert!(!r.contains("checks") && !r.contains("STS said no"), "{r}");
        }
        let absolute = "GET http://evil.example/metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n";
        assert!(raw(addr, absolute).await.starts_with("HTTP/1.1 403"));
        let two = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n";
        assert!(raw(addr, two).await.starts_with("HTTP/1.1 400"));

        // The pod IP (kubelet, Prometheus), localhost, IPv6, and HTTP/1.0 with no Host.
        for host in ["10.244.1.7:9012", "localhost:9012", "[fd00::7]:9012"] {
            let r = raw(addr, &format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n")).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{host}: {r}");
        }
        let r = raw(addr, "GET /healthz HTTP/1.0\r\n").await;
        assert!(
            r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"),
            "{r}"
        );

        shutdown.trigger();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics_then_shuts_down() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("checks", "Checks", counter.clone());
        counter.inc();
        let ready = Arc::new(AtomicBool::new(false));
        let admin = Admin::new(registry, {
            let ready = ready.clone();
            move || {
                if ready.load(Ordering::Relaxed) {
                    Readiness::Ready
                } else {
                    Readiness::NotReady("no SVID yet".into())
                }
            }
        });
        let listener = Admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let server = tokio::spawn(admin.serve(listener, shutdown.clone()));

        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let r = get(addr, "/readyz").await;
        assert!(
            r.starts_with("HTTP/1.1 503") && r.contains("no SVID yet"),
            "{r}"
        );
        // Without its own check, /startupz answers what /readyz answers.
        let r = get(addr, "/startupz").await;
        assert!(
            r.starts_with("HTTP/1.1 503") && r.contains("not started: no SVID yet"),
            "{r}"
        );
        ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/startupz").await.starts_with("HTTP/1.1 200"));
        let m = get(addr, "/metrics").await;
        assert!(m.contains("checks_total 1"), "{m}");
        // The runtime's live tasks: at least the admin server itself.
        let tasks = m
            .lines()
            .find_map(|l| l.strip_prefix("tokio_alive_tasks "))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(tasks.is_some_and(|n| n >= 1), "{m}");

        shutdown.trigger();
        server.await.unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn startupz_answers_its_own_check_when_given_one() {
        let admin = Admin::new(Registry::default(), || {
            Readiness::NotReady("no Envoy has applied the config yet".into())
        })
        .with_startup(|| Readiness::Ready);
        let listener = Admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let server = tokio::spawn(admin.serve(listener, shutdown.clone()));

        let r = get(addr, "/startupz").await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.contains("started"),
            "{r}"
        );
        let r = get(addr, "/readyz").await;
        assert!(
            r.starts_with("HTTP/1.1 503") && r.contains("no Envoy"),
            "{r}"
        );

        shutdown.trigger();
        server.await.unwrap().unwrap();
    }
}
