//! The HTTP client of the token exchanges that are plain OAuth-style POSTs (Entra ID, Google
//! STS and IAM Credentials, Vault's login) and of the Vault API proxy
//! ([`HttpsClient::stream`]): hyper 1 + hyper-rustls over the rustls the AWS SDK already links,
//! trusting exactly [`sidecar_runtime::tls_roots`] (as the STS client does), with a connect
//! timeout, an attempt deadline and a bound on the response body. No retries: the cache owns
//! the retry schedule.
//!
//! Plain `http://` is only ever configured for loopback endpoints (the settings refuse
//! anything else), so the connector may accept both schemes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::Request;
use hyper::header::{self, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sidecar_runtime::tls_roots::TrustRoots;

/// Connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One attempt, including reading the response.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Token responses are small; a bigger body is not one.
const MAX_BODY: usize = 256 * 1024;

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpsClientError {
    /// No usable trust anchor among the roots.
    #[error("building the TLS client: {0}")]
    Tls(String),
}

/// A request that got no usable response (transport failure, timeout, oversized body).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(String);

/// A response: status and body.
#[derive(Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body (bounded).
    pub body: Bytes,
}

impl fmt::Debug for Reply {
    // The body may hold a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// The connector every client here uses: rustls over the given anchors, http for loopback.
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The HTTPS client.
#[derive(Clone)]
pub struct HttpsClient {
    client: Client<Connector, Full<Bytes>>,
    /// The same connector, for requests whose body is streamed (the Vault API proxy).
    streaming: Client<Connector, StreamBody>,
}

/// A request body passed through as it arrives (bounded by its producer).
pub type StreamBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
/// The error type of [`StreamBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HttpsClient")
    }
}

impl HttpsClient {
    /// A client trusting exactly `roots`.
    pub fn new(roots: &TrustRoots) -> Result<Self, HttpsClientError> {
        Self::with_extra_roots(roots, &[])
    }

    /// A client trusting `roots` and `extra` (a service's own CA, e.g. Vault's `--ca-file`).
    pub fn with_extra_roots(
        roots: &TrustRoots,
        extra: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Self, HttpsClientError> {
        let mut store = rustls::RootCertStore::empty();
        let (added, _ignored) =
            store.add_parsable_certificates(roots.certificates().iter().chain(extra).cloned());
        if added == 0 {
            return Err(HttpsClientError::Tls(
                "no usable CA certificate among the trust roots".to_owned(),
            ));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpsClientError::Tls(e.to_string()))?
            .with_root_certificates(store)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector.clone()),
            streaming: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Sends `request` as it is, its body streamed, and returns the response head as soon as
    /// it arrives (the body streams on). Only the connect timeout applies here: the caller
    /// bounds the wait for the head.
    pub async fn stream(
        &self,
        request: Request<StreamBody>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, TransportError> {
        self.streaming
            .request(request)
            .await
            .map_err(|e| TransportError(one_line(&e)))
    }

    /// `POST url` with a JSON body and extra headers (marked sensitive: they may carry a
    /// token).
    pub async fn post_json_with(
        &self,
        url: &str,
        headers: &[(&'static str, &str)],
        json: &serde_json::Value,
    ) -> Result<Reply, TransportError> {
        self.post_bytes_with(
            url,
            "application/json",
            headers,
            Bytes::from(json.to_string()),
        )
        .await
    }

    /// `POST url` with `body` exactly as given (a signed request's body must not be
    /// re-serialised) and extra headers, marked sensitive; `content_type` is sent as given.
    pub async fn post_bytes_with(
        &self,
        url: &str,
        content_type: &'static str,
        headers: &[(&'static str, &str)],
        body: Bytes,
    ) -> Result<Reply, TransportError> {
        let mut values = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| TransportError(format!("{name} is not a header value")))?;
            value.set_sensitive(true);
            values.push((*name, value));
        }
        self.send_with(url, content_type, values, body).await
    }

    /// `POST url` with a form body (`application/x-www-form-urlencoded`).
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<Reply, TransportError> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.send(
            url,
            "application/x-www-form-urlencoded",
            None,
            Bytes::from(body),
        )
        .await
    }

    /// `POST url` with a JSON body and an `Authorization: Bearer` token.
    pub async fn post_json_bearer(
        &self,
        url: &str,
        bearer: &str,
        json: &serde_json::Value,
    ) -> Result<Reply, TransportError> {
        self.send(
            url,
            "application/json",
            Some(bearer),
            Bytes::from(json.to_string()),
        )
        .await
    }

    async fn send(
        &self,
        url: &str,
        content_type: &'static str,
        bearer: Option<&str>,
        body: Bytes,
    ) -> Result<Reply, TransportError> {
        let mut headers = Vec::new();
        if let Some(token) = bearer {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| TransportError("the bearer token is not a header value".into()))?;
            value.set_sensitive(true);
            headers.push((header::AUTHORIZATION.as_str(), value));
        }
        self.send_with(url, content_type, headers, body).await
    }

    async fn send_with(
        &self,
        url: &str,
        content_type: &'static str,
        headers: Vec<(&'static str, HeaderValue)>,
        body: Bytes,
    ) -> Result<Reply, TransportError> {
        let mut request = Request::post(url)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::ACCEPT, "application/json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| TransportError(format!("building the request: {e}")))?;
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| TransportError(one_line(&e)))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| TransportError(format!("reading the response: {e}")))?
                .to_bytes();
            Ok(Reply { status, body })
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, call).await {
            Ok(result) => result,
            Err(_) => Err(TransportError(format!(
                "no response within {ATTEMPT_TIMEOUT:?}"
            ))),
        }
    }
}

/// An error and its sources on one line (hyper's own message is only "client error (Connect)").
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.replace(['\n', '\r'], " ")
}
