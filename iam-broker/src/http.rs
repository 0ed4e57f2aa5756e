//! The loopback credentials server (REFERENCE §4).
//!
//! - `GET /v1/creds`: the `credential_process` document
//!   `{"Version":1,"AccessKeyId","SecretAccessKey","SessionToken","Expiration"}`;
//! - `GET /v1/container-creds`: `{"AccessKeyId","SecretAccessKey","Token","Expiration"}` for
//!   the SDKs' `AWS_CONTAINER_CREDENTIALS_FULL_URI` provider, only with
//!   `Authorization: <token>` equal to the configured token (404 when none is configured).
//!
//! Every failure is a non-2xx status with a one-line JSON body `{"error","message"}`, never a
//! partial document: `curl -sf` then exits non-zero and the SDK reports the failure instead of
//! parsing garbage.
//!
//! Guards, in order (the peers anchoring them: aws-vault's local server, eks-pod-identity-agent):
//! the `Host` must be a loopback name or address (403: a web page that rebinds its DNS name to
//! 127.0.0.1 still sends its own name) and appear once (400), the method must be GET (405),
//! `/v1/container-creds` needs the token (401/403; 503 while a token file is unusable), and
//! request heads are
//! bounded by hyper (431 over [`Limits::max_header_bytes`] or [`Limits::max_headers`]; a
//! slow head is cut off after [`Limits::header_read_timeout`]). No request body is read.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use sidecar_runtime::Shutdown;
use tokio::net::TcpListener;

use crate::cache::{CacheError, CredentialCache};
use crate::config::{ContainerToken, check_token};
use crate::metrics::Metrics;
use crate::provider::ErrorKind;
use crate::provider::aws::AwsCredentials;
use crate::secret::Secret;

/// `credential_process` path (the seed's contract).
pub const CREDS_PATH: &str = "/v1/creds";
/// Container-credentials path.
pub const CONTAINER_CREDS_PATH: &str = "/v1/container-creds";

/// What the handlers share.
#[derive(Clone)]
pub struct Broker {
    cache: CredentialCache<AwsCredentials>,
    token: Option<Arc<TokenCheck>>,
    fetch_wait: Duration,
    metrics: Metrics,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("container_token", &self.token.is_some())
            .field("fetch_wait", &self.fetch_wait)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Serves `cache`; `/v1/container-creds` requires `token` (disabled when `None`).
    pub fn new(
        cache: CredentialCache<AwsCredentials>,
        token: Option<TokenCheck>,
        fetch_wait: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            cache,
            token: token.map(Arc::new),
            fetch_wait,
            metrics,
        }
    }

    /// The router with its guards.
    pub fn router(self) -> Router {
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
            .layer(middleware::from_fn_with_state(self.clone(), guard))
            .with_state(self)
    }
}

// === Guards ===

/// Host and method checks in front of everything, and request metrics.
async fn guard(State(broker): State<Broker>, request: Request, next: Next) -> Response {
    let route = match request.uri().path() {
        CREDS_PATH => "creds",
        CONTAINER_CREDS_PATH => "container_creds",
        _ => "other",
    };
    let (response, result) = if let Some(response) = reject_host(&request) {
        (response, "foreign_host")
    } else if request.method() != Method::GET {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET is served",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        (response, "method_not_allowed")
    } else {
        let response = next.run(request).await;
        let result = result_label(response.status());
        (response, result)
    };
    broker.metrics.request(route, result);
    response
}

fn result_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "ok",
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        502 => "rejected",
        503 => "unavailable",
        s if s < 500 => "client_error",
        _ => "server_error",
    }
}

/// The `Host` header (and an absolute-form URI's authority, if any) must name loopback:
/// `Some(response)` rejects the request. More than one `Host` is a bad request (RFC 9112
/// §3.2): reading only the first would let `Host: localhost` vouch for a second, foreign one.
fn reject_host(request: &Request) -> Option<Response> {
    if request
        .headers()
        .get_all(header::HOST)
        .iter()
        .nth(1)
        .is_some()
    {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "more than one Host header",
        ));
    }
    if let Some(host) = request.uri().host()
        && !is_loopback_host(host)
    {
        return Some(foreign_host());
    }
    match request.headers().get(header::HOST).map(HeaderValue::to_str) {
        Some(Ok(host)) if is_loopback_host(host) => None,
        Some(_) => Some(foreign_host()),
        None if request.uri().host().is_some() => None,
        None => Some(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "missing Host header",
        )),
    }
}

fn foreign_host() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "forbidden_host",
        "the Host header must name a loopback address (localhost, 127.0.0.1, [::1])",
    )
}

/// `localhost`, an address in `127.0.0.0/8`, or `[::1]`, each with an optional port.
pub fn is_loopback_host(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        // [v6]:port
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if !(after.is_empty() || is_port(after.strip_prefix(':').unwrap_or("x"))) {
            return false;
        }
        return v6
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return false, // a bare IPv6 address or garbage
            None => host_port,
        }
    };
    host.eq_ignore_ascii_case("localhost")
        || host.eq_ignore_ascii_case("localhost.")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| IpAddr::V4(ip).is_loopback())
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

// === Handlers ===

async fn process_creds(State(broker): State<Broker>) -> Response {
    match broker.cache.get(broker.fetch_wait).await {
        Ok(held) => credentials(held.credentials().process_body()),
        Err(e) => cache_error(&e),
    }
}

async fn container_creds(State(broker): State<Broker>, headers: HeaderMap) -> Response {
    let Some(check) = &broker.token else {
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
    match broker.cache.get(broker.fetch_wait).await {
        Ok(held) => credentials(held.credentials().container_body()),
        Err(e) => cache_error(&e),
    }
}

fn credentials(body: Bytes) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// The one mapping from cache errors to HTTP: a rejection by the provider is 502 (retrying
/// soon will not help), everything else 503.
fn cache_error(e: &CacheError) -> Response {
    let CacheError::Unavailable { last_error } = e;
    let (status, code) = match last_error.as_ref().map(|e| e.kind) {
        Some(ErrorKind::Rejected) => (StatusCode::BAD_GATEWAY, "provider_rejected"),
        Some(ErrorKind::Identity) => (StatusCode::SERVICE_UNAVAILABLE, "identity_unavailable"),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "provider_unavailable"),
        None => (StatusCode::SERVICE_UNAVAILABLE, "credentials_pending"),
    };
    error(status, code, e)
}

/// A one-line JSON error.
fn error(status: StatusCode, code: &str, message: impl fmt::Display) -> Response {
    let body = serde_json::json!({ "error": code, "message": message.to_string() }).to_string();
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

// === TokenCheck ===

/// The container-credentials token, compared in constant time. A token file is re-read (at
/// most once a second), so a rotated file is picked up; a file that disappears, cannot be read
/// or holds no valid token fails closed: no token is accepted until it holds one again (the
/// operator deleting it means to revoke it).
pub struct TokenCheck {
    file: Option<PathBuf>,
    /// `None`: the file has no usable token right now.
    current: ArcSwapOption<Secret>,
    last_read: Mutex<std::time::Instant>,
}

/// The outcome of comparing a presented token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenMatch {
    /// The presented token is the configured one.
    Matches,
    /// It is not.
    Differs,
    /// The token file has no usable token: every request is refused.
    Unavailable,
}

impl fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCheck")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// How often a token file may be re-read.
const TOKEN_REREAD: Duration = Duration::from_secs(1);

impl TokenCheck {
    /// Reads the token (from the file, if it is one).
    pub fn new(token: &ContainerToken) -> std::io::Result<Self> {
        let (file, value) = match token {
            ContainerToken::Value(v) => (None, v.clone()),
            ContainerToken::File(path) => (
                Some(path.clone()),
                Secret::new(std::fs::read_to_string(path)?.trim()),
            ),
        };
        Ok(Self {
            file,
            current: ArcSwapOption::from_pointee(value),
            last_read: Mutex::new(std::time::Instant::now()),
        })
    }

    /// Compares `presented` with the token, re-reading a token file first when it is due.
    pub async fn matches(&self, presented: &[u8]) -> TokenMatch {
        // A token file is re-read at most once a second, whether or not this request matches:
        // a rotated-out token must stop working even if no client presents the new one yet.
        if let Some(path) = &self.file {
            let due = {
                let mut last = self
                    .last_read
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let due = last.elapsed() >= TOKEN_REREAD;
                if due {
                    *last = std::time::Instant::now();
                }
                due
            };
            if due {
                let problem = match tokio::fs::read_to_string(path).await {
                    Ok(text) if check_token(text.trim()).is_ok() => {
                        let was_unavailable = self.current.load().is_none();
                        self.current.store(Some(Arc::new(Secret::new(text.trim()))));
                        if was_unavailable {
                            tracing::info!(file = %path.display(), "container token file readable again");
                        }
                        None
                    }
                    Ok(_) => Some("holds no valid token".to_owned()),
                    Err(e) => Some(e.to_string()),
                };
                // Fail closed, and say so once per outage rather than once a second.
                if let Some(problem) = problem
                    && self.current.swap(None).is_some()
                {
                    tracing::warn!(
                        file = %path.display(),
                        error = %problem,
                        "container token file unusable; refusing /v1/container-creds until it holds a token"
                    );
                }
            }
        }
        match self.current.load().as_deref() {
            Some(token) if token.constant_time_eq(presented) => TokenMatch::Matches,
            Some(_) => TokenMatch::Differs,
            None => TokenMatch::Unavailable,
        }
    }
}

// === Server ===

/// Bounds on what a client may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line + headers, in bytes (hyper's minimum is 8 KiB).
    pub max_header_bytes: usize,
    /// Number of headers.
    pub max_headers: usize,
    /// Time to send the request head.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` (HTTP/1.1, keep-alive, `TCP_NODELAY`) until `shutdown`, then
/// lets requests in flight finish (at most 5 s).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.wait() => break,
        };
        // Small JSON answers must not wait on Nagle + delayed ACK.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(5)) => {
            tracing::warn!("requests still in flight after 5 s; closing");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "LOCALHOST:9876",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:9876",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:9876",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9876",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:9876",
            "169.254.170.2",
            "[::2]:9876",
            "::1",
            "[::1]x",
            "127.0.0.1:",
            "127.0.0.1:abc",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn token_file_is_reread_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let check = TokenCheck::new(&ContainerToken::File(path.clone())).unwrap();
        assert_eq!(check.matches(b"first").await, TokenMatch::Matches);
        assert_eq!(check.matches(b"second").await, TokenMatch::Differs);
        std::fs::write(&path, "second").unwrap();
        // Re-read at most once a second.
        *check.last_read.lock().unwrap() -= TOKEN_REREAD;
        assert_eq!(check.matches(b"second").await, TokenMatch::Matches);
        assert_eq!(check.matches(b"first").await, TokenMatch::Differs);
    }

    #[tokio::test]
    async fn a_deleted_or_unreadable_token_file_fails_closed_until_it_is_readable_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let check = TokenCheck::new(&ContainerToken::File(path.clone())).unwrap();
        assert_eq!(check.matches(b"first").await, TokenMatch::Matches);
        let reread = || *check.last_read.lock().unwrap() -= TOKEN_REREAD;

        // Deleted: the old token used to stay valid forever.
        std::fs::remove_file(&path).unwrap();
        reread();
        assert_eq!(check.matches(b"first").await, TokenMatch::Unavailable);
        // Still refused between re-reads.
        assert_eq!(check.matches(b"first").await, TokenMatch::Unavailable);
        // Unreadable (a directory in its place: EISDIR, even for root) or invalid content.
        std::fs::create_dir(&path).unwrap();
        reread();
        assert_eq!(check.matches(b"first").await, TokenMatch::Unavailable);
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, "").unwrap();
        reread();
        assert_eq!(check.matches(b"").await, TokenMatch::Unavailable);
        // Readable again: the new token works, the old one does not.
        std::fs::write(&path, "second").unwrap();
        reread();
        assert_eq!(check.matches(b"second").await, TokenMatch::Matches);
        assert_eq!(check.matches(b"first").await, TokenMatch::Differs);
    }

    #[tokio::test]
    async fn value_token_is_compared_and_never_printed() {
        let check = TokenCheck::new(&ContainerToken::Value(Secret::new("s3cret"))).unwrap();
        assert_eq!(check.matches(b"s3cret").await, TokenMatch::Matches);
        assert_eq!(check.matches(b"s3cre").await, TokenMatch::Differs);
        assert!(!format!("{check:?}").contains("s3cret"));
    }
}
