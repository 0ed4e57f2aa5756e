//! The App Service managed identity protocol (`docs/protocols.md#azure-managed-identity`), which
//! `ManagedIdentityCredential` and `DefaultAzureCredential` of every Azure SDK (through MSAL) use
//! when only `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set:
//!
//! `GET /msi/token?api-version=2019-08-01&resource=<uri>[&client_id=…]` with
//! `X-IDENTITY-HEADER: $IDENTITY_HEADER` → `{"access_token", "expires_on" (epoch seconds as a
//! string), "resource", "token_type":"Bearer", "client_id"}`.
//!
//! Errors are non-2xx `{"statusCode":…,"message":…}`: MSAL ignores the status and builds its
//! error from those two fields; anything else (or a non-JSON body) would surface as a parse
//! failure instead of the reason.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;

use super::config::check_resource;
use super::exchange::AzureToken;
use crate::cache_set::CacheSet;
use crate::http::{self, Broker};
use crate::token::{TokenCheck, TokenMatch};

/// The token path (`IDENTITY_ENDPOINT=http://127.0.0.1:9876/msi/token`).
pub const TOKEN_PATH: &str = "/msi/token";
/// The App Service API version the SDKs send.
pub const API_VERSION: &str = "2019-08-01";
/// The header carrying the shared secret.
pub const IDENTITY_HEADER_NAME: &str = "x-identity-header";

/// What the token route needs.
#[derive(Clone, Debug)]
pub struct Routes {
    /// One token cache per resource.
    pub tokens: CacheSet<AzureToken>,
    /// How long a request waits for a token not held yet.
    pub fetch_wait: std::time::Duration,
    /// The `X-IDENTITY-HEADER` secret.
    pub identity: Arc<TokenCheck>,
    /// Resources clients may ask for (`None`: any, capped by the set).
    pub allowed: Option<Arc<[String]>>,
    /// The one identity served.
    pub client_id: Arc<str>,
}

/// The Azure routes.
pub fn router(routes: Routes) -> Router {
    Router::new()
        .route(TOKEN_PATH, get(token))
        .fallback(|| async {
            render_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such path; the managed identity endpoint is GET /msi/token",
            )
        })
        // One `Arc`: axum clones the state per request.
        .with_state(Arc::new(routes))
}

/// The `route` label of request metrics.
pub fn route_label(path: &str) -> &'static str {
    match path {
        TOKEN_PATH => "msi_token",
        _ => "other",
    }
}

/// MSAL's error shape: `{"statusCode", "message"}`, the code leading the message.
pub fn render_error(status: StatusCode, code: &str, message: &str) -> Response {
    http::json_error(
        status,
        &serde_json::json!({
            "statusCode": status.as_u16(),
            "message": format!("{code}: {message}"),
        }),
    )
}

/// Takes the whole request rather than `HeaderMap` / `RawQuery` extractors, which copy the
/// headers and the query on every request.
async fn token(State(routes): State<Arc<Routes>>, request: Request) -> Response {
    // The secret first: nothing about resources is revealed to a caller without it.
    let Some(presented) = request.headers().get(IDENTITY_HEADER_NAME) else {
        return render_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing X-IDENTITY-HEADER (set IDENTITY_HEADER for the SDK)",
        );
    };
    match routes.identity.matches(presented.as_bytes()).await {
        TokenMatch::Matches => {}
        TokenMatch::Differs => {
            return render_error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "X-IDENTITY-HEADER does not match the broker's IDENTITY_HEADER",
            );
        }
        TokenMatch::Unavailable => {
            return render_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "identity_header_unavailable",
                "the identity header file is missing, unreadable or invalid; no request is \
                 accepted until it holds a secret again",
            );
        }
    }
    let resource = match parse_query(request.uri().query().unwrap_or(""), &routes.client_id) {
        Ok(resource) => resource,
        Err(message) => return render_error(StatusCode::BAD_REQUEST, "bad_request", &message),
    };
    if let Some(allowed) = &routes.allowed
        && !allowed.contains(&resource)
    {
        return render_error(
            StatusCode::FORBIDDEN,
            "resource_not_allowed",
            &format!(
                "resource {resource:?} is not in the broker's allow-list (--resources / SPIFFE_IAM_BROKER_RESOURCES)"
            ),
        );
    }
    let cache = match routes.tokens.get(&resource) {
        Ok(cache) => cache,
        Err(full) => {
            return render_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_resources",
                &full.to_string(),
            );
        }
    };
    match Broker::new(cache, routes.fetch_wait, render_error)
        .get()
        .await
    {
        Ok(held) => http::json(held.credentials().body()),
        Err(response) => response,
    }
}

/// `api-version=2019-08-01&resource=…[&client_id=…]`: the resource, or what is wrong.
pub fn parse_query(query: &str, client_id: &str) -> Result<String, String> {
    let mut api_version = None;
    let mut resource = None;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "api-version" => api_version = Some(value),
            "resource" if resource.is_some() => {
                return Err("more than one resource".to_owned());
            }
            "resource" => resource = Some(value.into_owned()),
            "client_id" if !value.eq_ignore_ascii_case(client_id) => {
                return Err(format!(
                    "this broker serves client_id {client_id} only (asked for {:?})",
                    value.chars().take(64).collect::<String>()
                ));
            }
            "object_id" | "principal_id" | "mi_res_id" => {
                return Err(format!(
                    "{name} is not supported: this broker serves client_id {client_id} only"
                ));
            }
            _ => {}
        }
    }
    match api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => {
            return Err(format!(
                "api-version {:?} is not supported; use {API_VERSION}",
                other.chars().take(32).collect::<String>()
            ));
        }
        None => return Err(format!("api-version is required ({API_VERSION})")),
    }
    let resource = resource.ok_or_else(|| "resource is required".to_owned())?;
    check_resource(&resource)?;
    Ok(resource)
}

#[cfg(test)]
#[path = "routes_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "0a1b2c3d-0000-0000-0000-000000000001";

    #[test]
    fn parses_what_msal_sends() {
        assert_eq!(
            parse_query(
                "api-version=2019-08-01&resource=https%3A%2F%2Fstorage.azure.com",
                CID
            )
            .unwrap(),
            "https://storage.azure.com"
        );
        assert_eq!(
            parse_query(
                &format!("resource=https://vault.azure.net&api-version=2019-08-01&client_id={CID}"),
                CID
            )
            .unwrap(),
            "https://vault.azure.net"
        );
        for (query, want) in [
            ("resource=https://a.example", "api-version is required"),
            (
                "api-version=2017-09-01&resource=https://a.example",
                "not supported",
            ),
            ("api-version=2019-08-01", "resource is required"),
            ("api-version=2019-08-01&resource=x", "a resource is a URI"),
            (
                "api-version=2019-08-01&resource=https://a.example&client_id=other",
                "serves client_id",
            ),
            (
                "api-version=2019-08-01&resource=https://a.example&mi_res_id=/x",
                "mi_res_id is not supported",
            ),
            (
                "api-version=2019-08-01&resource=https://a.example&resource=https://b.example",
                "more than one",
            ),
        ] {
            let e = parse_query(query, CID).unwrap_err();
            assert!(e.contains(want), "{query}: {e}");
        }
    }

    #[test]
    fn errors_have_msals_shape() {
        let r = render_error(StatusCode::FORBIDDEN, "forbidden", "no");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
}
