//! The API proxy, as Vault Agent/Proxy's `api_proxy` serves it (REFERENCE §9): every method and
//! path is forwarded to Vault with the broker's token, so hvac, the Vault CLI and other clients
//! work with `VAULT_ADDR=http://127.0.0.1:8200` and no token of their own.
//!
//! - `X-Vault-Request: true` is required (412 otherwise: `require_request_header`), so a web page
//!   cannot make the browser send a "simple" cross-origin request through the proxy; the shared
//!   guards already refuse a foreign `Host`.
//! - [`AutoAuth::IfMissing`]: a request without `X-Vault-Token` gets the broker's, one with a
//!   token is forwarded untouched; [`AutoAuth::Force`]: the broker's token always replaces it.
//! - `X-Vault-Namespace` is added from `--namespace` when the client sends none.
//! - Bodies stream both ways, never held whole; a request body over [`MAX_REQUEST_BODY`] (Vault's
//!   own default `max_request_size`) is cut off. Hop-by-hop headers are not forwarded.
//!
//! Errors of the broker itself are Vault's shape, `{"errors": ["iam-broker: …"]}`, so clients
//! report them as they report Vault's.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse as _, Response};
use http_body_util::{BodyExt as _, Limited};

use super::config::AutoAuth;
use super::exchange::VaultToken;
use crate::http::{self, Broker};
use crate::provider::https::{HttpsClient, StreamBody};

/// Vault's default `max_request_size` (32 MiB).
pub const MAX_REQUEST_BODY: usize = 32 * 1024 * 1024;
/// How long the proxy waits for Vault's response head (Vault's default
/// `max_request_duration` is 90 s).
pub const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(90);

const X_VAULT_REQUEST: &str = "x-vault-request";
const X_VAULT_TOKEN: HeaderName = HeaderName::from_static("x-vault-token");
const X_VAULT_NAMESPACE: HeaderName = HeaderName::from_static("x-vault-namespace");

/// What the proxy needs.
#[derive(Clone, Debug)]
pub struct Routes {
    /// The token cache.
    pub broker: Broker<VaultToken>,
    /// The client to Vault.
    pub http: HttpsClient,
    /// Vault's address, no trailing slash.
    pub addr: Arc<str>,
    /// `X-Vault-Namespace` to add.
    pub namespace: Option<HeaderValue>,
    /// When to add the broker's token.
    pub auto_auth: AutoAuth,
}

/// Every path goes to the proxy.
pub fn router(routes: Routes) -> Router {
    Router::new().fallback(proxy).with_state(routes)
}

/// The `route` label of request metrics.
pub fn route_label(_path: &str) -> &'static str {
    "vault_proxy"
}

/// Vault's error shape, the broker's code leading the message.
pub fn render_error(status: StatusCode, code: &str, message: &str) -> Response {
    http::json_error(
        status,
        &serde_json::json!({ "errors": [format!("iam-broker: {code}: {message}")] }),
    )
}

async fn proxy(State(routes): State<Routes>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    if parts
        .headers
        .get(X_VAULT_REQUEST)
        .is_none_or(|v| !v.as_bytes().eq_ignore_ascii_case(b"true"))
    {
        return render_error(
            StatusCode::PRECONDITION_FAILED,
            "missing_request_header",
            "missing 'X-Vault-Request: true' header",
        );
    }
    if parts.method == Method::CONNECT {
        return render_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "CONNECT is not proxied",
        );
    }
    if let Some(length) = content_length(&parts.headers)
        && length > MAX_REQUEST_BODY as u64
    {
        return render_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "the request body exceeds 32 MiB",
        );
    }

    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    // hyper's server has already answered any `Expect: 100-continue` by reading the body; its
    // client does not wait for one, so the header would only mislead Vault.
    headers.remove(header::EXPECT);
    // An empty header counts as none, as in Vault Agent.
    let client_token = headers
        .get(X_VAULT_TOKEN)
        .is_some_and(|v| !v.as_bytes().is_empty());
    if routes.auto_auth == AutoAuth::Force || !client_token {
        let held = match routes.broker.get().await {
            Ok(held) => held,
            Err(response) => return response,
        };
        let Ok(mut value) = HeaderValue::from_str(held.credentials().secret().expose()) else {
            return render_error(
                StatusCode::BAD_GATEWAY,
                "bad_token",
                "Vault issued a token that is not a header value",
            );
        };
        value.set_sensitive(true);
        headers.insert(X_VAULT_TOKEN, value);
    }
    if let Some(ns) = &routes.namespace
        && !headers.contains_key(X_VAULT_NAMESPACE)
    {
        headers.insert(X_VAULT_NAMESPACE, ns.clone());
    }

    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{}{path}", routes.addr).parse::<Uri>() else {
        return render_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "unusable request path",
        );
    };
    let body: StreamBody = Limited::new(body, MAX_REQUEST_BODY).boxed_unsync();
    let mut upstream = hyper::Request::new(body);
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = uri;
    *upstream.headers_mut() = headers;

    let response =
        match tokio::time::timeout(RESPONSE_HEAD_TIMEOUT, routes.http.stream(upstream)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "forwarding to Vault failed");
                return render_error(
                    StatusCode::BAD_GATEWAY,
                    "vault_unreachable",
                    &format!("Vault at {} did not answer: {e}", routes.addr),
                );
            }
            Err(_) => {
                return render_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "vault_timeout",
                    &format!("no answer from Vault within {RESPONSE_HEAD_TIMEOUT:?}"),
                );
            }
        };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body)).into_response()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// RFC 9110 §7.6.1: `Connection` and the headers it names, and the classic hop-by-hop set,
/// belong to one connection and are not forwarded.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(X_VAULT_TOKEN, HeaderValue::from_static("t"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(X_VAULT_TOKEN));
    }

    #[test]
    fn broker_errors_are_in_vaults_shape() {
        let r = render_error(
            StatusCode::PRECONDITION_FAILED,
            "missing_request_header",
            "x",
        );
        assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    }
}
