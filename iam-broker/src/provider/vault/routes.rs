//! The API proxy, as Vault Agent/Proxy's `api_proxy` serves it: requests are forwarded to Vault
//! with the broker's token, so hvac, the Vault CLI and other clients work with
//! `VAULT_ADDR=http://127.0.0.1:8200` and no token of their own.
//!
//! - `X-Vault-Request: true` is required (412 otherwise: `require_request_header`), so a web page
//!   cannot make the browser send a "simple" cross-origin request through the proxy; the shared
//!   guards already refuse a foreign `Host`.
//! - Only origin-form request targets (`/v1/…`) are forwarded. The upstream URI is built from
//!   Vault's configured scheme, host and port ([`Upstream`]) and checked against them before
//!   anything is sent: the broker's token goes to the configured Vault and nowhere else.
//! - The path Vault will act on (percent-decoded, as Vault's router sees it) must lie under one
//!   of `--proxy-paths` (default `/v1`, the whole API); paths with empty, `.` or `..` segments
//!   are refused (Vault would only redirect them).
//! - [`AutoAuth::IfMissing`]: a request without `X-Vault-Token` gets the broker's, one with a
//!   token is forwarded untouched; [`AutoAuth::Force`]: the broker's token always replaces it.
//! - `auth/token/revoke-self` with the broker's token is refused (403): that token is shared by
//!   every client of the proxy, and one client revoking it would break the others. A client
//!   revoking its own token is forwarded.
//! - A 403 whose errors say `invalid token` for a request that carried the broker's token (it
//!   was revoked or expired behind the broker's back) drops the token from the cache, so the
//!   next request waits for a new login and `/readyz` reports not ready until then, as Vault
//!   Proxy re-triggers its auto-auth on the same answer.
//! - `X-Vault-Namespace` is added from `--namespace` when the client sends none.
//! - Forwarding headers (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) are dropped: Vault trusts
//!   them only from addresses listed in its `x_forwarded_for_authorized_addrs`, and where the
//!   broker's address is listed a client could otherwise choose the source address Vault checks
//!   against `token_bound_cidrs` and writes in its audit log.
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
use axum::http::uri::{Authority, Scheme};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};

use super::config::AutoAuth;
use super::exchange::VaultToken;
use crate::cache::Held;
use crate::http::{self, Broker};
use crate::provider::https::{HttpsClient, StreamBody};

/// Vault's default `max_request_size` (32 MiB).
pub const MAX_REQUEST_BODY: usize = 32 * 1024 * 1024;
/// How long the proxy waits for Vault's response head (Vault's default
/// `max_request_duration` is 90 s).
pub const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(90);
/// The largest 403 body read to see whether Vault refused the token itself (Vault's error
/// bodies are a few hundred bytes); a larger one is passed through unread.
const MAX_REFUSAL_BODY: u64 = 64 * 1024;

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
    /// Where Vault is.
    pub upstream: Upstream,
    /// Path prefixes forwarded (whole segments, no trailing slash).
    pub paths: Arc<[String]>,
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

// === Upstream ===

/// Vault's scheme, host and port, parsed once. Every upstream URI is built from them and the
/// request's own path, never by joining strings, and checked against them before it is used.
#[derive(Clone, Debug)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    port: u16,
}

/// Why a request is not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// An absolute-form, authority-form or asterisk-form request target.
    NotOriginForm,
    /// The URI built would not name the configured Vault.
    NotVault,
    /// Not percent-decodable to UTF-8, or an empty, `.` or `..` segment.
    BadPath,
    /// Outside every `--proxy-paths` prefix.
    PathNotAllowed,
}

impl Upstream {
    /// Parses Vault's address (`https://host[:port]`, validated by the settings).
    pub fn parse(addr: &str) -> Result<Self, String> {
        let uri: Uri = addr
            .parse()
            .map_err(|e| format!("Vault's address {addr:?} is not a URL: {e}"))?;
        let (Some(scheme), Some(authority), Some(port)) =
            (uri.scheme(), uri.authority(), default_port(&uri))
        else {
            return Err(format!(
                "Vault's address {addr:?} needs an http or https scheme and a host"
            ));
        };
        Ok(Self {
            scheme: scheme.clone(),
            authority: authority.clone(),
            port,
        })
    }

    /// The URI to send a request for `target` to, if `target` is origin-form.
    pub fn uri_for(&self, target: &Uri) -> Result<Uri, Refusal> {
        if target.scheme().is_some()
            || target.authority().is_some()
            || !target.path().starts_with('/')
        {
            return Err(Refusal::NotOriginForm);
        }
        let path_and_query = target
            .path_and_query()
            .cloned()
            .ok_or(Refusal::NotOriginForm)?;
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| Refusal::NotOriginForm)?;
        let same = uri.scheme() == Some(&self.scheme)
            && uri.host() == Some(self.authority.host())
            && default_port(&uri) == Some(self.port);
        if same {
            Ok(uri)
        } else {
            Err(Refusal::NotVault)
        }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// The port a client connects to for `uri`: its own, or its scheme's.
fn default_port(uri: &Uri) -> Option<u16> {
    uri.port_u16().or(match uri.scheme_str() {
        Some("http") => Some(80),
        Some("https") => Some(443),
        _ => None,
    })
}

/// The percent-decoded path Vault will route on, if it lies under one of `allowed`.
pub fn check_path(raw: &str, allowed: &[String]) -> Result<String, Refusal> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Refusal::BadPath)?;
    let rest = decoded.strip_prefix('/').ok_or(Refusal::BadPath)?;
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        // A trailing slash (Vault's LIST paths) is the only empty segment Vault serves.
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == "." || segment == ".." {
            return Err(Refusal::BadPath);
        }
    }
    let under = |prefix: &String| {
        decoded
            .strip_prefix(prefix.as_str())
            .is_some_and(|tail| tail.is_empty() || tail.starts_with('/'))
    };
    if allowed.iter().any(under) {
        Ok(decoded.into_owned())
    } else {
        Err(Refusal::PathNotAllowed)
    }
}

/// `auth/token/revoke-self`, in the root namespace or under one (`/v1/<ns>/auth/token/…`).
fn revokes_self(path: &str) -> bool {
    path.trim_end_matches('/')
        .to_ascii_lowercase()
        .ends_with("/auth/token/revoke-self")
}

// === The proxy ===

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
    let uri = match routes.upstream.uri_for(&parts.uri) {
        Ok(uri) => uri,
        Err(refusal) => return refused(refusal),
    };
    let path = match check_path(parts.uri.path(), &routes.paths) {
        Ok(path) => path,
        Err(refusal) => return refused(refusal),
    };
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
    strip_forwarding(&mut headers);
    headers.remove(header::HOST);
    // hyper's server has already answered any `Expect: 100-continue` by reading the body; its
    // client does not wait for one, so the header would only mislead Vault.
    headers.remove(header::EXPECT);
    // An empty header counts as none, as in Vault Agent.
    let client_token = headers
        .get(X_VAULT_TOKEN)
        .filter(|v| !v.as_bytes().is_empty())
        .cloned();
    let inject = routes.auto_auth == AutoAuth::Force || client_token.is_none();
    // The held token this request carries, if any: the one injected, or the client's own when
    // it is the broker's (read from a token sink), as Vault Proxy compares them.
    let carried: Option<Arc<Held<VaultToken>>> = if inject {
        if revokes_self(&path) {
            return revoke_refused();
        }
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
        Some(held)
    } else {
        routes.broker.peek().filter(|held| {
            client_token
                .as_ref()
                .is_some_and(|t| t.as_bytes() == held.credentials().secret().expose().as_bytes())
        })
    };
    if carried.is_some() && !inject && revokes_self(&path) {
        return revoke_refused();
    }
    if let Some(ns) = &routes.namespace
        && !headers.contains_key(X_VAULT_NAMESPACE)
    {
        headers.insert(X_VAULT_NAMESPACE, ns.clone());
    }

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
                    &format!("Vault at {} did not answer: {e}", routes.upstream),
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
    let readable = content_length(&parts.headers).is_none_or(|n| n <= MAX_REFUSAL_BODY);
    let Some(held) = carried.filter(|_| parts.status == StatusCode::FORBIDDEN && readable) else {
        return Response::from_parts(parts, Body::new(body)).into_response();
    };
    // A 403 to the broker's token: read it to tell "invalid token" from a policy denial.
    let Ok(collected) = Limited::new(body, MAX_REFUSAL_BODY as usize)
        .collect()
        .await
    else {
        return render_error(
            StatusCode::BAD_GATEWAY,
            "vault_unreadable",
            "Vault's 403 answer could not be read",
        );
    };
    let bytes = collected.to_bytes();
    if says_invalid_token(&bytes) && routes.broker.invalidate(&held) {
        tracing::warn!(
            "Vault refused the broker's token as invalid (revoked or expired early); logging in again"
        );
    }
    Response::from_parts(parts, Body::from(bytes)).into_response()
}

/// Whether Vault's `errors` list says the token itself is invalid (Vault answers an unknown,
/// revoked or expired token with `permission denied` and `invalid token`; a token that lacks
/// a policy gets `permission denied` alone).
fn says_invalid_token(body: &Bytes) -> bool {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<String>,
    }
    serde_json::from_slice::<Errors>(body)
        .is_ok_and(|e| e.errors.iter().any(|m| m.contains("invalid token")))
}

fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::NotOriginForm => render_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "only origin-form request targets (/v1/…) are proxied",
        ),
        Refusal::NotVault => render_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request target does not name a path on the configured Vault",
        ),
        Refusal::BadPath => render_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the path has an empty, '.' or '..' segment, or is not UTF-8 once decoded",
        ),
        Refusal::PathNotAllowed => render_error(
            StatusCode::FORBIDDEN,
            "path_not_allowed",
            "the path is outside the proxied paths (--proxy-paths)",
        ),
    }
}

fn revoke_refused() -> Response {
    render_error(
        StatusCode::FORBIDDEN,
        "revoke_refused",
        "the broker's token is shared by every client of this proxy and is not revoked through it; send your own X-Vault-Token to revoke that one",
    )
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

/// Headers that carry a client's address or the original host: a client must not choose
/// what Vault believes about where a request came from.
fn strip_forwarding(headers: &mut HeaderMap) {
    let forwarded: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-forwarded-"))
        .cloned()
        .collect();
    for name in forwarded {
        headers.remove(name);
    }
    headers.remove(header::FORWARDED);
    headers.remove("x-real-ip");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec!["/v1".to_owned()]
    }

    #[test]
    fn only_origin_form_targets_reach_the_configured_vault() {
        let vault = Upstream::parse("http://127.0.0.1:18200").unwrap();
        let ok = vault.uri_for(&"/v1/secret/data/x?version=2".parse().unwrap());
        assert_eq!(
            ok.unwrap().to_string(),
            "http://127.0.0.1:18200/v1/secret/data/x?version=2"
        );
        for target in ["*", "http://127.0.0.1:80/v1/x", "127.0.0.1:80"] {
            let uri: Uri = target.parse().unwrap();
            assert_eq!(vault.uri_for(&uri), Err(Refusal::NotOriginForm), "{target}");
        }
        let https = Upstream::parse("https://vault.example.com").unwrap();
        let uri = https.uri_for(&"/v1/sys/health".parse().unwrap()).unwrap();
        assert_eq!(uri.to_string(), "https://vault.example.com/v1/sys/health");
        assert_eq!(https.to_string(), "https://vault.example.com");
    }

    #[test]
    fn paths_are_checked_as_vault_decodes_them() {
        assert_eq!(
            check_path("/v1/secret/data/a%20b", &allowed()).unwrap(),
            "/v1/secret/data/a b"
        );
        assert!(check_path("/v1/secret/metadata/", &allowed()).is_ok());
        for bad in [
            "/v1//x",
            "/v1/./x",
            "/v1/a/../../sys",
            "/v1/%2e%2e/x",
            "/v1/%ff",
        ] {
            assert_eq!(check_path(bad, &allowed()), Err(Refusal::BadPath), "{bad}");
        }
        let kv = vec!["/v1/secret/data/app".to_owned()];
        assert!(check_path("/v1/secret/data/app", &kv).is_ok());
        assert!(check_path("/v1/secret/data/app/db", &kv).is_ok());
        for outside in ["/v1/secret/data/apps", "/v1/sys/seal", "/", "/v2/x"] {
            assert_eq!(
                check_path(outside, &kv),
                Err(Refusal::PathNotAllowed),
                "{outside}"
            );
        }
        assert_eq!(check_path("/ui/", &allowed()), Err(Refusal::PathNotAllowed));
    }

    #[test]
    fn revoke_self_is_recognised_in_any_namespace_and_spelling() {
        for p in [
            "/v1/auth/token/revoke-self",
            "/v1/auth/token/revoke-self/",
            "/v1/team-a/auth/token/Revoke-Self",
        ] {
            assert!(revokes_self(p), "{p}");
        }
        assert!(!revokes_self("/v1/auth/token/revoke-accessor"));
    }

    #[test]
    fn forwarding_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for name in [
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "forwarded",
            "x-real-ip",
        ] {
            h.insert(name, HeaderValue::from_static("10.0.0.1"));
        }
        h.insert(X_VAULT_TOKEN, HeaderValue::from_static("t"));
        strip_forwarding(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn invalid_token_is_told_from_a_policy_denial() {
        let revoked = Bytes::from_static(
            br#"{"errors":["2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n"]}"#,
        );
        assert!(says_invalid_token(&revoked));
        assert!(!says_invalid_token(&Bytes::from_static(
            br#"{"errors":["permission denied"]}"#
        )));
        assert!(!says_invalid_token(&Bytes::from_static(b"invalid token")));
    }

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
