//! The GCE metadata server, as google-auth / ADC, the Cloud client libraries and gcloud use it
//! (`docs/protocols.md#gce-metadata`), with only `GCE_METADATA_HOST` and `GCE_METADATA_IP` pointing
//! here:
//!
//! - every request must carry `Metadata-Flavor: Google` and no `X-Forwarded-For`, else 403: the
//!   metadata server's own SSRF guard (a proxied or browser-forged request lacks the header);
//! - every answer carries `Metadata-Flavor: Google` (google-auth's detection ping checks it);
//! - `GET /` → 200 (the ping); `computeMetadata/v1/project/project-id` and
//!   `…/numeric-project-id` (text); `…/instance/service-accounts/default/?recursive=true`
//!   (JSON `email`, `scopes`, `aliases`), `…/default/email`, `…/default/scopes`,
//!   `…/default/token[?scopes=a,b]` (JSON `access_token`, integer `expires_in`, `token_type`;
//!   `scopes` a subset of `--scopes`, 403 otherwise); `default` or the account's email name the
//!   one account;
//! - 404, never 5xx, for paths not emulated (`universe/universe-domain` 404 means
//!   googleapis.com). Identity tokens (`…/identity`) are not served; see docs/iam-broker/gcp.md.
//!
//! Errors are one-line `text/plain` (what the metadata server sends; google-auth shows the body).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use time::OffsetDateTime;

use super::config::parse_scopes;
use super::exchange::GcpToken;
use crate::cache_set::CacheSet;
use crate::http::Broker;

/// The header the metadata server requires and answers with.
pub const FLAVOR: &str = "metadata-flavor";
const GOOGLE: &str = "Google";
const PREFIX: &str = "/computeMetadata/v1/";
const ACCOUNTS: &str = "instance/service-accounts/";

/// What the metadata routes need.
#[derive(Clone, Debug)]
pub struct Routes {
    /// One token cache per scope set.
    pub tokens: CacheSet<GcpToken>,
    /// How long a request waits for a token not held yet.
    pub fetch_wait: std::time::Duration,
    /// Project ID.
    pub project_id: Arc<str>,
    /// Project number.
    pub project_number: Arc<str>,
    /// The account's email (`default` without impersonation: a federated principal has none).
    pub email: Arc<str>,
    /// Default scopes.
    pub scopes: Arc<[String]>,
    /// Their cache key (`a,b`), so a request without `scopes=` builds none.
    pub default_key: Arc<str>,
}

/// The metadata server routes.
pub fn router(routes: Routes) -> Router {
    // One `Arc`: axum clones the state per request.
    Router::new()
        .fallback(metadata)
        .with_state(Arc::new(routes))
}

/// The `route` label of request metrics.
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/" => "gce_ping",
        p if p.starts_with(PREFIX) && p.ends_with("/token") => "gce_token",
        p if p.starts_with(PREFIX) => "gce_metadata",
        _ => "other",
    }
}

/// A one-line text error with `Metadata-Flavor: Google`.
pub fn render_error(status: StatusCode, code: &str, message: &str) -> Response {
    with_flavor((status, text(format!("{code}: {message}\n"))).into_response())
}

fn text(body: String) -> ([(header::HeaderName, HeaderValue); 1], String) {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
}

fn with_flavor(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(FLAVOR, HeaderValue::from_static(GOOGLE));
    response
}

/// The SSRF guard: `Some(refusal)` unless exactly one `Metadata-Flavor: Google` and no
/// `X-Forwarded-For`. (Checked in the handler, not a middleware layer: every path goes through
/// it anyway, and a layer costs a boxed future per request on the hot path.)
fn ssrf_guard(headers: &HeaderMap) -> Option<Response> {
    if headers.contains_key("x-forwarded-for") {
        return Some(render_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "requests with X-Forwarded-For are refused (the metadata server's SSRF guard)",
        ));
    }
    let mut flavors = headers.get_all(FLAVOR).iter();
    match (flavors.next(), flavors.next()) {
        (Some(flavor), None) if flavor == GOOGLE => None,
        _ => Some(render_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "missing Metadata-Flavor: Google header (the metadata server's SSRF guard)",
        )),
    }
}

fn not_found(what: &str) -> Response {
    render_error(StatusCode::NOT_FOUND, "not_found", what)
}

fn ok_text(body: String) -> Response {
    (StatusCode::OK, text(body)).into_response()
}

fn ok_json(body: impl Into<Bytes>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.into(),
    )
        .into_response()
}

async fn metadata(State(routes): State<Arc<Routes>>, request: Request) -> Response {
    if let Some(refused) = ssrf_guard(request.headers()) {
        return refused;
    }
    // Every answer carries the header (google-auth's detection ping checks it).
    with_flavor(answer(&routes, request.uri()).await)
}

async fn answer(routes: &Routes, uri: &Uri) -> Response {
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    if path == "/" {
        return ok_text("computeMetadata/\n".to_owned());
    }
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return not_found("not emulated");
    };
    match rest {
        "project/project-id" => return ok_text(routes.project_id.to_string()),
        "project/numeric-project-id" => return ok_text(routes.project_number.to_string()),
        "instance/service-accounts" | "instance/service-accounts/" => {
            return ok_text(format!("default/\n{}/\n", routes.email));
        }
        _ => {}
    }
    let Some(account_path) = rest.strip_prefix(ACCOUNTS) else {
        return not_found("not emulated");
    };
    let (account, item) = account_path.split_once('/').unwrap_or((account_path, ""));
    if account != "default" && account != &*routes.email {
        return not_found("no such service account");
    }
    let recursive = form_urlencoded::parse(query.as_bytes())
        .any(|(k, v)| k == "recursive" && v.eq_ignore_ascii_case("true"));
    match item {
        "" if recursive => ok_json(
            serde_json::json!({
                "aliases": ["default"],
                "email": &*routes.email,
                "scopes": &*routes.scopes,
            })
            .to_string(),
        ),
        "" => ok_text("aliases\nemail\nscopes\ntoken\n".to_owned()),
        "email" => ok_text(routes.email.to_string()),
        "aliases" => ok_text("default\n".to_owned()),
        "scopes" => ok_text(routes.scopes.iter().map(|s| format!("{s}\n")).collect()),
        "token" => token(routes, query).await,
        "identity" => {
            not_found("identity tokens are not served by this broker (see docs/iam-broker/gcp.md)")
        }
        _ => not_found("not emulated"),
    }
}

async fn token(routes: &Routes, query: &str) -> Response {
    let asked = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "scopes")
        .map(|(_, v)| v.into_owned());
    let parsed;
    let key: &str = match asked {
        Some(list) => match parse_scopes(&list) {
            Ok(scopes) => {
                // `--scopes` is the ceiling as well as the default: a narrower set is fine, a
                // scope outside it would mint a token the operator did not grant.
                if let Some(extra) = scopes.iter().find(|s| !routes.scopes.contains(s)) {
                    return render_error(
                        StatusCode::FORBIDDEN,
                        "scope_not_allowed",
                        &format!(
                            "scope {extra:?} is not among the broker's scopes (--scopes / SPIFFE_IAM_BROKER_SCOPES); ask for a subset of them"
                        ),
                    );
                }
                parsed = scopes.join(",");
                &parsed
            }
            Err(e) => return render_error(StatusCode::BAD_REQUEST, "bad_request", &e),
        },
        None => &routes.default_key,
    };
    let cache = match routes.tokens.get(key) {
        Ok(cache) => cache,
        Err(full) => {
            return render_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_scope_sets",
                &full.to_string(),
            );
        }
    };
    match Broker::new(cache, routes.fetch_wait, render_error)
        .get()
        .await
    {
        Ok(held) => ok_json(held.credentials().body(OffsetDateTime::now_utc())),
        Err(response) => response,
    }
}

#[cfg(test)]
#[path = "routes_props.rs"]
mod props;
