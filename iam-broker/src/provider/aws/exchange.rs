//! AWS: `AssumeRoleWithWebIdentity` with the JWT-SVID as web identity token
//! (`docs/protocols.md#aws-sts`).
//!
//! - The STS client has **no credentials provider**: the call is unsigned (the operation is
//!   modelled without auth), and the broker must never resolve credentials from the
//!   environment, a profile, or, worst, its own endpoint.
//! - TLS trusts exactly the roots of [`sidecar_runtime::tls_roots`] (SSL_CERT_FILE/DIR, else
//!   the OpenShift-injected bundle, else Debian's), never rustls-native-certs' own search,
//!   whose first-file-wins order would let the image's default bundle shadow an OpenShift mount.
//! - The SDK's own retries are off: the cache owns the retry schedule, so every attempt is
//!   counted and backed off in one place.
//! - Errors are classified: `IDPCommunicationError`, throttling, 5xx and transport failures are
//!   transient; `InvalidIdentityToken` / `ExpiredTokenException` are retried once at once with
//!   a freshly fetched JWT-SVID (bypassing the JWT cache), then count as transient; everything
//!   else the service answered (`AccessDenied`, `ValidationError`, `IDPRejectedClaim`, …) is a
//!   rejection and is not retried.

use std::fmt;
use std::time::Duration;

use aws_sdk_sts::config::retry::RetryConfig;
use aws_sdk_sts::config::timeout::TimeoutConfig;
use aws_sdk_sts::config::{BehaviorVersion, Region};
use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::assume_role_with_web_identity::{
    AssumeRoleWithWebIdentityError, AssumeRoleWithWebIdentityOutput,
};
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use sidecar_runtime::tls_roots::TrustRoots;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use workload_client::spiffe::JwtSvid;

use super::metrics::StsCalls;
use super::session_name::SessionName;
use crate::provider::{CredentialProvider, ErrorKind, Expiring, JwtSource, ProviderError, Refused};
use crate::secret::Secret;

/// Connect timeout to STS.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One STS attempt, including reading the response.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

// === AwsCredentials ===

/// Temporary AWS credentials, with both JSON bodies rendered once when they arrive, so serving
/// them is a pointer copy.
#[derive(Clone)]
pub struct AwsCredentials {
    access_key_id: String,
    secret_access_key: Secret,
    session_token: Secret,
    expiration: OffsetDateTime,
    assumed_role_arn: Option<String>,
    process_body: Bytes,
    container_body: Bytes,
}

impl AwsCredentials {
    /// Builds the credentials. `expiration` is truncated to whole seconds (RFC 3339 without
    /// fraction, as STS itself writes it).
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: Secret,
        session_token: Secret,
        expiration: OffsetDateTime,
        assumed_role_arn: Option<String>,
    ) -> Result<Self, ProviderError> {
        let access_key_id = access_key_id.into();
        let expiration = expiration
            .to_offset(time::UtcOffset::UTC)
            .replace_nanosecond(0)
            .unwrap_or(expiration);
        let rfc3339 = expiration.format(&Rfc3339).map_err(|e| {
            ProviderError::new(
                ErrorKind::Transient,
                format!("STS returned an expiration that cannot be formatted: {e}"),
            )
        })?;
        // The credential_process format (docs/protocols.md#aws-credential-process): Version 1,
        // RFC 3339 UTC expiration.
        let process_body = serde_json::to_vec(&ProcessDocument {
            version: 1,
            access_key_id: &access_key_id,
            secret_access_key: secret_access_key.expose(),
            session_token: session_token.expose(),
            expiration: &rfc3339,
        });
        // The container-credentials format every SDK's container provider reads.
        let container_body = serde_json::to_vec(&ContainerDocument {
            access_key_id: &access_key_id,
            secret_access_key: secret_access_key.expose(),
            token: session_token.expose(),
            expiration: &rfc3339,
        });
        let (Ok(process_body), Ok(container_body)) = (process_body, container_body) else {
            return Err(ProviderError::new(
                ErrorKind::Transient,
                "credentials could not be encoded as JSON",
            ));
        };
        Ok(Self {
            access_key_id,
            secret_access_key,
            session_token,
            expiration,
            assumed_role_arn,
            process_body: Bytes::from(process_body),
            container_body: Bytes::from(container_body),
        })
    }

    /// The access key ID.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The secret access key.
    pub fn secret_access_key(&self) -> &Secret {
        &self.secret_access_key
    }

    /// The session token.
    pub fn session_token(&self) -> &Secret {
        &self.session_token
    }

    /// The assumed-role ARN STS reported (for logs: it names role and session).
    pub fn assumed_role_arn(&self) -> Option<&str> {
        self.assumed_role_arn.as_deref()
    }

    /// `{"Version":1,"AccessKeyId",…,"Expiration"}` for `credential_process`.
    pub fn process_body(&self) -> Bytes {
        self.process_body.clone()
    }

    /// `{"AccessKeyId","SecretAccessKey","Token","Expiration"}` for the container provider.
    pub fn container_body(&self) -> Bytes {
        self.container_body.clone()
    }
}

/// `credential_process` output, fields in the documented order.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessDocument<'a> {
    version: u8,
    access_key_id: &'a str,
    secret_access_key: &'a str,
    session_token: &'a str,
    expiration: &'a str,
}

/// Container-credentials output.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerDocument<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    expiration: &'a str,
}

impl Expiring for AwsCredentials {
    fn expiration(&self) -> OffsetDateTime {
        self.expiration
    }
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("assumed_role_arn", &self.assumed_role_arn)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

// === AwsStsProvider ===

/// Settings of the AWS provider (validated by [`super::config`]).
#[derive(Clone, Debug)]
pub struct AwsSettings {
    /// `arn:aws:iam::123456789012:role/name`.
    pub role_arn: String,
    /// Signing region / regional endpoint.
    pub region: String,
    /// Endpoint override (local STS, VPC endpoint).
    pub sts_endpoint: Option<String>,
    /// `DurationSeconds`.
    pub duration: Duration,
    /// Fixed `RoleSessionName`; derived from the SPIFFE ID when `None`.
    pub session_name: Option<SessionName>,
}

/// `AssumeRoleWithWebIdentity` with the JWT-SVID.
#[derive(Debug)]
pub struct AwsStsProvider {
    sts: aws_sdk_sts::Client,
    settings: AwsSettings,
    jwt: JwtSource,
    calls: StsCalls,
}

impl AwsStsProvider {
    /// A provider calling STS as configured (trusting `roots` for TLS), with tokens from
    /// `jwt`, counting calls in `calls`.
    pub fn new(
        settings: AwsSettings,
        roots: &TrustRoots,
        jwt: JwtSource,
        calls: StsCalls,
    ) -> Result<Self, StsClientError> {
        Ok(Self {
            sts: sts_client(&settings.region, settings.sts_endpoint.as_deref(), roots)?,
            settings,
            jwt,
            calls,
        })
    }

    async fn fetch_once(&self) -> Result<AwsCredentials, ProviderError> {
        self.jwt
            .present(|token| {
                Box::pin(async move { self.assume(&token).await.map_err(Failure::into_refused) })
            })
            .await
    }

    async fn assume(&self, token: &JwtSvid) -> Result<AwsCredentials, Failure> {
        let session_name = self
            .settings
            .session_name
            .clone()
            .unwrap_or_else(|| SessionName::derive(&token.spiffe_id().to_string()));
        let duration = i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX);
        let result = self
            .sts
            .assume_role_with_web_identity()
            .role_arn(&self.settings.role_arn)
            .role_session_name(session_name.as_str())
            .web_identity_token(token.token())
            .duration_seconds(duration)
            .send()
            .await;
        match result {
            Ok(out) => {
                self.calls.record("success");
                let creds = credentials_from(&out).map_err(Failure::Other)?;
                tracing::info!(
                    assumed_role = creds.assumed_role_arn().unwrap_or("?"),
                    session_name = %session_name,
                    expiration = %creds.expiration,
                    "assumed role with web identity"
                );
                Ok(creds)
            }
            Err(err) => {
                let failure = Failure::from_sdk(&err);
                self.calls.record(failure.outcome());
                Err(failure)
            }
        }
    }
}

impl CredentialProvider for AwsStsProvider {
    type Credentials = AwsCredentials;

    fn name(&self) -> &'static str {
        "aws"
    }

    fn fetch(&self) -> BoxFuture<'_, Result<AwsCredentials, ProviderError>> {
        Box::pin(self.fetch_once())
    }
}

/// The STS client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StsClientError {
    /// The TLS context rejected the trust store.
    #[error("building the STS client's TLS context: {0}")]
    Tls(String),
}

/// The STS client: region, optional endpoint, no credentials provider, SDK retries off,
/// timeouts so a black-holed endpoint cannot hold an attempt forever, and TLS trusting exactly
/// `roots` (native-root discovery off).
pub fn sts_client(
    region: &str,
    endpoint: Option<&str>,
    roots: &TrustRoots,
) -> Result<aws_sdk_sts::Client, StsClientError> {
    // `roots` holds only certificates already checked as trust anchors, so the connector's
    // own parsing of this PEM (which panics on a bad one) cannot fail.
    let trust = TrustStore::empty()
        .with_native_roots(false)
        .with_pem_certificate(roots.pem());
    let tls_context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| StsClientError::Tls(e.to_string()))?;
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(tls_context)
        .build_https();
    let mut builder = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http_client)
        .region(Region::new(region.to_owned()))
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(ATTEMPT_TIMEOUT)
                .build(),
        );
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    Ok(aws_sdk_sts::Client::from_conf(builder.build()))
}

fn credentials_from(
    out: &AssumeRoleWithWebIdentityOutput,
) -> Result<AwsCredentials, ProviderError> {
    let c = out.credentials().ok_or_else(|| {
        ProviderError::new(
            ErrorKind::Transient,
            "STS AssumeRoleWithWebIdentity answered without credentials",
        )
    })?;
    let expiration = OffsetDateTime::from_unix_timestamp(c.expiration().secs()).map_err(|e| {
        ProviderError::new(
            ErrorKind::Transient,
            format!("STS returned an invalid expiration: {e}"),
        )
    })?;
    AwsCredentials::new(
        c.access_key_id(),
        Secret::new(c.secret_access_key()),
        Secret::new(c.session_token()),
        expiration,
        out.assumed_role_user().map(|u| u.arn().to_owned()),
    )
}

// === Error classification ===

/// What to do about an STS answer (or the lack of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StsErrorClass {
    /// Throttling, 5xx, `IDPCommunicationError`, transport: back off and retry.
    Retry,
    /// The token was refused (`InvalidIdentityToken`, `ExpiredTokenException`): retry once
    /// with a fresh token.
    FreshToken,
    /// Anything else the service answered: do not retry.
    Reject,
}

/// Classifies an error by its AWS error code and HTTP status (`None` status: no response at
/// all, a transport failure), as `docs/protocols.md#aws-sts` describes.
pub fn classify(code: Option<&str>, status: Option<u16>) -> StsErrorClass {
    const RETRY_CODES: &[&str] = &[
        "IDPCommunicationError",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    ];
    const FRESH_TOKEN_CODES: &[&str] = &["InvalidIdentityToken", "ExpiredTokenException"];
    if let Some(code) = code {
        if FRESH_TOKEN_CODES.contains(&code) {
            return StsErrorClass::FreshToken;
        }
        if RETRY_CODES.contains(&code) {
            return StsErrorClass::Retry;
        }
    }
    match status {
        None => StsErrorClass::Retry,
        Some(s) if s >= 500 || s == 429 => StsErrorClass::Retry,
        // A reply that did not parse although the status was not an error (cut off mid-body,
        // a proxy's page): nothing says the request is wrong, so it is worth another try.
        Some(s) if s < 400 => StsErrorClass::Retry,
        // A 4xx without a code we know, or with one we do not retry.
        Some(_) => StsErrorClass::Reject,
    }
}

/// One failed STS call.
#[derive(Debug)]
enum Failure {
    Retry(String),
    InvalidToken(String),
    Reject(String),
    Other(ProviderError),
}

impl Failure {
    fn from_sdk(err: &SdkError<AssumeRoleWithWebIdentityError>) -> Self {
        let (code, message, status) = match err {
            SdkError::ServiceError(se) => (
                se.err().code().map(str::to_owned),
                se.err().message().unwrap_or("").to_owned(),
                Some(se.raw().status().as_u16()),
            ),
            SdkError::ResponseError(re) => (
                None,
                "unreadable response".to_owned(),
                Some(re.raw().status().as_u16()),
            ),
            SdkError::ConstructionFailure(_) => {
                return Self::Reject(format!(
                    "STS request could not be built: {}",
                    DisplayErrorContext(err)
                ));
            }
            // Timeouts, connection failures, anything without a response.
            _ => (None, DisplayErrorContext(err).to_string(), None),
        };
        let text = match (&code, status) {
            (Some(code), Some(status)) => {
                format!("STS AssumeRoleWithWebIdentity: {code}: {message} (HTTP {status})")
            }
            (None, Some(status)) => {
                format!("STS AssumeRoleWithWebIdentity: HTTP {status}: {message}")
            }
            (_, None) => format!("STS AssumeRoleWithWebIdentity: no response: {message}"),
        };
        // Error texts are one line in logs and JSON bodies.
        let text = text.replace(['\n', '\r'], " ");
        match classify(code.as_deref(), status) {
            StsErrorClass::Retry => Self::Retry(text),
            StsErrorClass::FreshToken => Self::InvalidToken(text),
            StsErrorClass::Reject => Self::Reject(text),
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            Self::Retry(_) | Self::Other(_) => "retryable_error",
            Self::InvalidToken(_) => "invalid_token",
            Self::Reject(_) => "rejected",
        }
    }

    fn into_refused(self) -> Refused {
        match self {
            // Retried once with a fresh token by `JwtSource::present`.
            Self::InvalidToken(m) => Refused::Token(m),
            Self::Retry(m) => Refused::Other(ProviderError::new(ErrorKind::Transient, m)),
            Self::Reject(m) => Refused::Other(ProviderError::new(ErrorKind::Rejected, m)),
            Self::Other(e) => Refused::Other(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_per_reference() {
        use StsErrorClass::*;
        let cases: &[(Option<&str>, Option<u16>, StsErrorClass)] = &[
            (Some("IDPCommunicationError"), Some(400), Retry),
            (Some("Throttling"), Some(400), Retry),
            (Some("ThrottlingException"), Some(400), Retry),
            (Some("RequestLimitExceeded"), Some(400), Retry),
            (Some("InternalFailure"), Some(500), Retry),
            (None, Some(503), Retry),
            (None, Some(502), Retry),
            (None, Some(429), Retry),
            (None, None, Retry),
            (Some("InvalidIdentityToken"), Some(400), FreshToken),
            (Some("ExpiredTokenException"), Some(400), FreshToken),
            (Some("AccessDenied"), Some(403), Reject),
            (Some("ValidationError"), Some(400), Reject),
            (Some("IDPRejectedClaim"), Some(403), Reject),
            (Some("MalformedPolicyDocument"), Some(400), Reject),
            (Some("RegionDisabledException"), Some(403), Reject),
            (None, Some(400), Reject),
            (None, Some(404), Reject),
            // An unparseable reply with a success status (cut off, a proxy's page).
            (None, Some(200), Retry),
            // A code we do not know on a 5xx is still a server failure.
            (Some("SomethingNew"), Some(500), Retry),
        ];
        for (code, status, want) in cases {
            assert_eq!(classify(*code, *status), *want, "{code:?} {status:?}");
        }
    }

    #[test]
    fn a_refused_token_asks_for_a_fresh_one_and_the_rest_keep_their_kind() {
        assert!(matches!(
            Failure::InvalidToken("x".into()).into_refused(),
            Refused::Token(_)
        ));
        for (failure, kind) in [
            (Failure::Reject("AccessDenied".into()), ErrorKind::Rejected),
            (Failure::Retry("Throttling".into()), ErrorKind::Transient),
        ] {
            let Refused::Other(e) = failure.into_refused() else {
                panic!("not a token refusal")
            };
            assert_eq!(e.kind, kind);
        }
    }

    #[test]
    fn renders_both_formats_and_redacts_debug() {
        let exp = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap()
            + time::Duration::nanoseconds(123_456);
        let c = AwsCredentials::new(
            "ASIAEXAMPLE",
            Secret::new("s3cr3t/key"),
            Secret::new("sess+token="),
            exp,
            Some("arn:aws:sts::123456789012:assumed-role/demo/x".into()),
        )
        .unwrap();
        let p: serde_json::Value = serde_json::from_slice(&c.process_body()).unwrap();
        assert_eq!(
            p,
            serde_json::json!({
                "Version": 1,
                "AccessKeyId": "ASIAEXAMPLE",
                "SecretAccessKey": "s3cr3t/key",
                "SessionToken": "sess+token=",
                "Expiration": "2030-03-17T17:46:40Z",
            })
        );
        let k: serde_json::Value = serde_json::from_slice(&c.container_body()).unwrap();
        assert_eq!(k["Token"], "sess+token=");
        assert_eq!(k["Expiration"], "2030-03-17T17:46:40Z");
        assert!(k.get("SessionToken").is_none() && k.get("Version").is_none());
        assert!(!c.process_body().contains(&b'\n'), "one line");
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s3cr3t") && !debug.contains("sess+token"),
            "{debug}"
        );
    }
}
