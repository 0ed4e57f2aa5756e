//! Google Cloud: STS token exchange of the JWT-SVID (`docs/protocols.md#google-sts`), then, with
//! a service account, `generateAccessToken` impersonating it with the federated token
//! (`docs/protocols.md#google-impersonation`). One provider per scope set; the cache set keeps
//! one of them per set.
//!
//! Errors: 429, 5xx and transport failures are transient; any other answer (`invalid_grant`:
//! the token's issuer, audience or attribute condition refused; `PERMISSION_DENIED`: the
//! principal may not impersonate the account) is a rejection carrying Google's message.

use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::config::{CLOUD_PLATFORM, GcpConfig};
use crate::metrics::ExchangeCalls;
use crate::provider::https::{HttpsClient, Reply};
use crate::provider::{CredentialProvider, ErrorKind, Expiring, JwtSource, ProviderError};
use crate::secret::Secret;

/// Longest error text kept from Google's answers.
const MAX_MESSAGE: usize = 300;
/// Lifetime asked of `generateAccessToken` (its default and maximum without an org policy).
const SA_TOKEN_LIFETIME: &str = "3600s";

// === GcpToken ===

/// A Google access token, with the constant part of its metadata-server answer rendered once.
#[derive(Clone)]
pub struct GcpToken {
    access_token: Secret,
    expires_at: OffsetDateTime,
    /// `{"access_token":…,"token_type":"Bearer","expires_in":` (holds the token).
    head: Bytes,
}

impl GcpToken {
    /// A token expiring at `expires_at`.
    pub fn new(access_token: Secret, expires_at: OffsetDateTime) -> Self {
        // `Value`'s Display is serde_json's escaping and cannot fail.
        let head = format!(
            r#"{{"access_token":{},"token_type":"Bearer","expires_in":"#,
            serde_json::Value::from(access_token.expose())
        );
        Self {
            access_token,
            expires_at,
            head: Bytes::from(head),
        }
    }

    /// The metadata server's token answer `{"access_token", "token_type", "expires_in"}`, with
    /// `expires_in` counted from `now` (it shrinks, so only the number is written per request).
    pub fn body(&self, now: OffsetDateTime) -> Bytes {
        let expires_in = (self.expires_at - now).whole_seconds().max(0).to_string();
        let mut body = BytesMut::with_capacity(self.head.len() + expires_in.len() + 1);
        body.extend_from_slice(&self.head);
        body.extend_from_slice(expires_in.as_bytes());
        body.extend_from_slice(b"}");
        body.freeze()
    }
}

impl Expiring for GcpToken {
    fn expiration(&self) -> OffsetDateTime {
        self.expires_at
    }
}

impl fmt::Debug for GcpToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

// === GoogleStsProvider ===

/// STS exchange (+ impersonation) for one scope set.
#[derive(Debug)]
pub struct GoogleStsProvider {
    http: HttpsClient,
    config: Arc<GcpConfig>,
    jwt: JwtSource,
    scopes: Vec<String>,
    calls: ExchangeCalls,
}

impl GoogleStsProvider {
    /// An exchange for `scopes`.
    pub fn new(
        http: HttpsClient,
        config: Arc<GcpConfig>,
        jwt: JwtSource,
        scopes: Vec<String>,
        calls: ExchangeCalls,
    ) -> Self {
        Self {
            http,
            config,
            jwt,
            scopes,
            calls,
        }
    }

    async fn exchange(&self) -> Result<GcpToken, ProviderError> {
        let result = self.exchange_inner().await;
        self.calls.record(
            "gcp",
            match &result {
                Ok(_) => "success",
                Err(e) if e.kind == ErrorKind::Rejected => "rejected",
                Err(_) => "retryable_error",
            },
        );
        result
    }

    async fn exchange_inner(&self) -> Result<GcpToken, ProviderError> {
        let svid = self.jwt.cached().await?;
        // Impersonation needs cloud-platform on the federated token (to call IAM Credentials);
        // the account's token then carries the scopes asked for.
        let sts_scope = if self.config.service_account.is_some() {
            CLOUD_PLATFORM.to_owned()
        } else {
            self.scopes.join(" ")
        };
        let reply = self
            .http
            .post_form(
                &format!("{}/v1/token", self.config.sts_endpoint),
                &[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    ("audience", self.config.audience.as_str()),
                    ("scope", sts_scope.as_str()),
                    (
                        "requested_token_type",
                        "urn:ietf:params:oauth:token-type:access_token",
                    ),
                    ("subject_token", svid.token()),
                    ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ],
            )
            .await
            .map_err(|e| {
                ProviderError::new(
                    ErrorKind::Transient,
                    format!("Google STS: no response: {e}"),
                )
            })?;
        let now = OffsetDateTime::now_utc();
        let federated = parse_sts(&reply, now)?;
        let Some(account) = &self.config.service_account else {
            tracing::info!(scopes = ?self.scopes, expires_at = %federated.expires_at, "got a federated Google access token");
            return Ok(federated);
        };
        let reply = self
            .http
            .post_json_bearer(
                &format!(
                    "{}/v1/projects/-/serviceAccounts/{account}:generateAccessToken",
                    self.config.iam_credentials_endpoint
                ),
                federated.access_token.expose(),
                &serde_json::json!({ "scope": self.scopes, "lifetime": SA_TOKEN_LIFETIME }),
            )
            .await
            .map_err(|e| {
                ProviderError::new(
                    ErrorKind::Transient,
                    format!("IAM Credentials generateAccessToken: no response: {e}"),
                )
            })?;
        let token = parse_generate_access_token(&reply)?;
        tracing::info!(service_account = %account, scopes = ?self.scopes, expires_at = %token.expires_at, "impersonated the service account");
        Ok(token)
    }
}

impl CredentialProvider for GoogleStsProvider {
    type Credentials = GcpToken;

    fn name(&self) -> &'static str {
        "gcp"
    }

    fn fetch(&self) -> BoxFuture<'_, Result<GcpToken, ProviderError>> {
        Box::pin(self.exchange())
    }
}

fn kind_of(status: u16) -> ErrorKind {
    if status == 429 || status >= 500 {
        ErrorKind::Transient
    } else {
        ErrorKind::Rejected
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
        .chars()
        .take(MAX_MESSAGE)
        .collect()
}

/// STS's answer: `{access_token, issued_token_type, token_type, expires_in}` or
/// `{error, error_description}`.
pub fn parse_sts(reply: &Reply, now: OffsetDateTime) -> Result<GcpToken, ProviderError> {
    #[derive(serde::Deserialize)]
    struct TokenOk {
        access_token: String,
        expires_in: i64,
    }
    #[derive(serde::Deserialize, Default)]
    struct OAuthError {
        #[serde(default)]
        error: String,
        #[serde(default)]
        error_description: String,
    }
    if reply.status == 200 {
        let ok: TokenOk = serde_json::from_slice(&reply.body).map_err(|e| {
            ProviderError::new(
                ErrorKind::Transient,
                format!("Google STS answered 200 without a token: {e}"),
            )
        })?;
        if ok.expires_in <= 0 || ok.access_token.is_empty() {
            return Err(ProviderError::new(
                ErrorKind::Transient,
                "Google STS answered an unusable token",
            ));
        }
        return Ok(GcpToken::new(
            Secret::new(ok.access_token),
            now + time::Duration::seconds(ok.expires_in),
        ));
    }
    let e: OAuthError = serde_json::from_slice(&reply.body).unwrap_or_default();
    let kind = if e.error.is_empty() {
        // Not an OAuth error (a proxy's page): nothing says the request is wrong.
        ErrorKind::Transient
    } else {
        kind_of(reply.status)
    };
    Err(ProviderError::new(
        kind,
        format!(
            "Google STS: {}: {} (HTTP {})",
            if e.error.is_empty() {
                "error"
            } else {
                &e.error
            },
            one_line(&e.error_description),
            reply.status
        ),
    ))
}

/// `generateAccessToken`'s answer: `{accessToken, expireTime}` or Google's
/// `{"error":{code,message,status}}`.
pub fn parse_generate_access_token(reply: &Reply) -> Result<GcpToken, ProviderError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct TokenOk {
        access_token: String,
        expire_time: String,
    }
    if reply.status == 200 {
        let ok: TokenOk = serde_json::from_slice(&reply.body).map_err(|e| {
            ProviderError::new(
                ErrorKind::Transient,
                format!("generateAccessToken answered 200 without a token: {e}"),
            )
        })?;
        let expires_at = OffsetDateTime::parse(&ok.expire_time, &Rfc3339).map_err(|e| {
            ProviderError::new(
                ErrorKind::Transient,
                format!("generateAccessToken answered an invalid expireTime: {e}"),
            )
        })?;
        return Ok(GcpToken::new(Secret::new(ok.access_token), expires_at));
    }
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    let status = v["error"]["status"].as_str().unwrap_or("error");
    let message = v["error"]["message"].as_str().unwrap_or("");
    let kind = if v["error"].is_object() {
        kind_of(reply.status)
    } else {
        ErrorKind::Transient
    };
    Err(ProviderError::new(
        kind,
        format!(
            "IAM Credentials generateAccessToken: {status}: {} (HTTP {})",
            one_line(message),
            reply.status
        ),
    ))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn reads_sts_and_iam_credentials_answers() {
        let now = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
        let t = parse_sts(
            &reply(200, r#"{"access_token":"ya29.x","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3600}"#),
            now,
        )
        .unwrap();
        assert_eq!(t.expiration().unix_timestamp(), 1_900_003_600);
        let body: serde_json::Value =
            serde_json::from_slice(&t.body(now + time::Duration::seconds(600))).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"access_token":"ya29.x","expires_in":3000,"token_type":"Bearer"})
        );
        assert!(!format!("{t:?}").contains("ya29"));
        let e = parse_sts(
            &reply(400, r#"{"error":"invalid_grant","error_description":"The audience in ID Token [x] does not match the expected audience."}"#),
            now,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert!(e.message.contains("invalid_grant: The audience"), "{e}");
        for (s, b) in [
            (503, "unavailable"),
            (429, r#"{"error":"rate_limited"}"#),
            (400, "<html>"),
        ] {
            assert_eq!(
                parse_sts(&reply(s, b), now).unwrap_err().kind,
                ErrorKind::Transient,
                "{s}"
            );
        }
        let t = parse_generate_access_token(&reply(
            200,
            r#"{"accessToken":"ya29.sa","expireTime":"2030-03-17T18:46:40Z"}"#,
        ))
        .unwrap();
        assert_eq!(t.expiration().unix_timestamp(), 1_900_003_600);
        let e = parse_generate_access_token(&reply(
            403,
            r#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied","status":"PERMISSION_DENIED"}}"#,
        ))
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert!(e.message.contains("PERMISSION_DENIED: Permission"), "{e}");
    }
}
