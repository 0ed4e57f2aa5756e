//! The OIDC discovery endpoint: `GET /.well-known/openid-configuration` and `GET /keys`, served
//! from the agent's state (the documents themselves are built in [`crate::oidc`]).

use std::sync::Arc;

use axum::{Json, Router, extract::State, http::header, response::IntoResponse, routing::get};
use serde_json::Value;

use crate::oidc::discovery_document;
use crate::shared::Shared;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/keys", get(keys))
        .with_state(shared)
}

async fn openid_configuration(State(shared): State<Arc<Shared>>) -> Json<Value> {
    // `Config::validate` guarantees an issuer when OIDC is served.
    Json(discovery_document(
        shared.jwt_issuer.as_deref().unwrap_or_default(),
    ))
}

async fn keys(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let jwks = shared.jwt_bundles.borrow().oidc_jwks.clone();
    ([(header::CONTENT_TYPE, "application/json")], jwks)
}
