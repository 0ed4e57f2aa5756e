//! Admin HTTP: `GET /healthz`, `GET /metrics` (Prometheus text), and `POST /rotate/x509`,
//! `POST /rotate/jwt` to force rotations from shell scripts and non-Rust tests, and
//! `POST /retire/jwt` to retire the JWT signing key early (it leaves the bundle at once, as a
//! tainted or revoked SPIRE key does). Revocation after a compromise: `POST /retire/x509`
//! replaces the X.509 CA at once (new CA, SVIDs re-issued, the old CA out of the bundle), and
//! `POST /federation/drop/<trust domain>` stops federating with a partner (its X.509 and JWT
//! bundles leave every stream). These endpoints answer once the new material has been pushed
//! to the streams; with `--state-dir` it is on disk first (see [`crate::state`]), so a restart
//! does not undo a revocation.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Path, State},
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
        .route("/retire/x509", post(retire_x509))
        .route("/federation/drop/{trust_domain}", post(drop_federation))
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

async fn retire_x509(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    match shared.retire_x509_ca_now().await {
        Ok(()) => (StatusCode::OK, "retired the X.509 CA\n".into()),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

async fn drop_federation(
    State(shared): State<Arc<Shared>>,
    Path(trust_domain): Path<String>,
) -> (StatusCode, String) {
    let Ok(td) = spiffe::TrustDomain::new(&trust_domain) else {
        return (StatusCode::BAD_REQUEST, "not a trust domain name\n".into());
    };
    match shared.drop_federation(&td).await {
        Ok(true) => (StatusCode::OK, format!("dropped {td}\n")),
        Ok(false) => (StatusCode::NOT_FOUND, format!("{td} is not federated\n")),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

fn outcome(result: Result<(), crate::Error>) -> (StatusCode, String) {
    match result {
        Ok(()) => (StatusCode::OK, "rotated\n".into()),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}
