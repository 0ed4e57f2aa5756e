//! The admin listener every sidecar runs (loopback by default):
//!
//! - `GET /healthz`: 200 while the process serves HTTP at all (liveness);
//! - `GET /readyz`: 200 only once the sidecar holds what it needs to do its job (a valid SVID,
//!   token or bundle), else 503 with the reason (readiness);
//! - `GET /metrics`: Prometheus/OpenMetrics text.
//!
//! Kept off the data-plane port so that a probe or a scrape never competes with Envoy's calls.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

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
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

// === impl Admin ===

impl Admin {
    /// Serves `registry` and answers `/readyz` with `ready()`.
    pub fn new(registry: Registry, ready: impl Fn() -> Readiness + Send + Sync + 'static) -> Self {
        Self {
            registry: Arc::new(registry),
            ready: Arc::new(ready),
        }
    }

    /// The router, for tests and for embedding.
    pub fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self)
    }

    /// Binds `addr` (so a port conflict fails start-up, before anything else runs).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
        TcpListener::bind(addr).await
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
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await
    }
}

async fn readyz(State(admin): State<Admin>) -> Response {
    match (admin.ready)() {
        Readiness::Ready => (StatusCode::OK, "ready\n").into_response(),
        Readiness::NotReady(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
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
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
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
        ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let m = get(addr, "/metrics").await;
        assert!(m.contains("checks_total 1"), "{m}");

        shutdown.trigger();
        server.await.unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
