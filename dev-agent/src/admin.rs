//! Admin HTTP: `GET /healthz`, `GET /metrics` (Prometheus text), and `POST /rotate/x509`,
//! `POST /rotate/jwt` to force rotations from shell scripts and non-Rust tests, and
//! `POST /retire/jwt` to retire the JWT signing key early (it leaves the bundle at once, as a
//! tainted or revoked SPIRE key does). These endpoints answer once the new material has been
//! pushed to the streams.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::{get, post},
};

use crate::agent::Shared;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/rotate/x509", post(rotate_x509))
        .route("/rotate/jwt", post(rotate_jwt))
        .route("/retire/jwt", post(retire_jwt))
        .with_state(shared)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
}

async fn rotate_x509(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    outcome(shared.rotate_x509().await)
}

async fn rotate_jwt(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    outcome(shared.rotate_jwt_key().await)
}

async fn retire_jwt(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    match shared.retire_jwt_key_now().await {
        Ok(kid) => (StatusCode::OK, format!("retired {kid}\n")),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

fn outcome(result: Result<(), crate::Error>) -> (StatusCode, String) {
    match result {
        Ok(()) => (StatusCode::OK, "rotated\n".into()),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}
