//! What the AWS SDKs and CLI ask the broker (`docs/protocols.md#aws-credential-process`,
//! `docs/protocols.md#aws-container-credentials`):
//!
//! - `GET /v1/creds`: the `credential_process` document
//!   `{"Version":1,"AccessKeyId","SecretAccessKey","SessionToken","Expiration"}`;
//! - `GET /v1/container-creds`: `{"AccessKeyId","SecretAccessKey","Token","Expiration"}` for
//!   the SDKs' `AWS_CONTAINER_CREDENTIALS_FULL_URI` provider, only with
//!   `Authorization: <token>` equal to the configured token (401/403; 503 while a token file is
//!   unusable; 404 when none is configured).
//!
//! Errors are `{"error","message"}` ([`crate::http::error`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::get;

use super::exchange::AwsCredentials;
use crate::http::{self, Broker, error};
use crate::token::{TokenCheck, TokenMatch};

/// `credential_process` path (the Istio deployment's contract:
/// `docs/protocols.md#istio-injection-template`).
pub const CREDS_PATH: &str = "/v1/creds";
/// Container-credentials path.
pub const CONTAINER_CREDS_PATH: &str = "/v1/container-creds";

#[derive(Clone, Debug)]
struct Routes {
    broker: Broker<AwsCredentials>,
    token: Option<Arc<TokenCheck>>,
}

/// The AWS routes over `broker`; `/v1/container-creds` requires `token` (disabled when `None`).
pub fn router(broker: Broker<AwsCredentials>, token: Option<TokenCheck>) -> Router {
    let routes = Routes {
        broker,
        token: token.map(Arc::new),
    };
    Router::new()
        .route(CREDS_PATH, get(process_creds))
        .route(CONTAINER_CREDS_PATH, get(container_creds))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such path; use GET /v1/creds or /v1/container-creds",
            )
        })
        .with_state(routes)
}

/// The `route` label of request metrics.
pub fn route_label(path: &str) -> &'static str {
    match path {
        CREDS_PATH => "creds",
        CONTAINER_CREDS_PATH => "container_creds",
        _ => "other",
    }
}

async fn process_creds(State(routes): State<Routes>) -> Response {
    match routes.broker.get().await {
        Ok(held) => http::json(held.credentials().process_body()),
        Err(response) => response,
    }
}

async fn container_creds(State(routes): State<Routes>, headers: HeaderMap) -> Response {
    let Some(check) = &routes.token else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "container credentials are disabled: start the broker with AWS_CONTAINER_AUTHORIZATION_TOKEN or AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        );
    };
    let Some(presented) = headers.get(header::AUTHORIZATION) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing Authorization header (set AWS_CONTAINER_AUTHORIZATION_TOKEN for the SDK)",
        );
    };
    match check.matches(presented.as_bytes()).await {
        TokenMatch::Matches => {}
        TokenMatch::Differs => {
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the Authorization header does not match the configured token",
            );
        }
        TokenMatch::Unavailable => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "token_unavailable",
                "the container-credentials token file is missing, unreadable or invalid; \
                 no token is accepted until it holds one again",
            );
        }
    }
    match routes.broker.get().await {
        Ok(held) => http::json(held.credentials().container_body()),
        Err(response) => response,
    }
}

#[cfg(test)]
#[path = "routes_props.rs"]
mod props;
