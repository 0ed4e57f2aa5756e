//! Entra ID: the client-credentials grant with the JWT-SVID as client assertion
//! (`docs/protocols.md#entra-exchange`):
//! `POST {authority}/{tenant}/oauth2/v2.0/token`, form `client_id`, `scope=<resource>/.default`,
//! `grant_type=client_credentials`,
//! `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`,
//! `client_assertion=<JWT-SVID>`. One provider per resource (Entra issues a token for one
//! resource at a time); the cache set keeps one of them per resource.
//!
//! Errors: throttling (429), 5xx, `temporarily_unavailable` and transport failures are transient
//! (backoff, stale tokens served meanwhile); any other answer (an `AADSTS…` code: invalid
//! assertion, no matching federated credential, unknown application) is a rejection, reported
//! with its code and not retried on a timer.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use time::OffsetDateTime;
use workload_client::spiffe::JwtSvid;

use super::config::AzureSettings;
use crate::metrics::ExchangeCalls;
use crate::provider::https::HttpsClient;
use crate::provider::{CredentialProvider, ErrorKind, Expiring, JwtSource, ProviderError, Refused};
use crate::secret::Secret;

/// RFC 7523's assertion type.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest error description kept (Entra's run to several hundred characters with trace IDs).
const MAX_DESCRIPTION: usize = 300;

// === AzureToken ===

/// An Entra access token for one resource, with its App Service answer rendered once.
#[derive(Clone)]
pub struct AzureToken {
    access_token: Secret,
    expires_on: OffsetDateTime,
    body: Bytes,
}

impl AzureToken {
    /// Builds the token and its managed-identity answer: `{"access_token", "expires_on"
    /// (integer epoch seconds, as a string: MSAL does `int(expires_on)`), "resource",
    /// "token_type":"Bearer", "client_id"}`.
    pub fn new(
        access_token: Secret,
        expires_on: OffsetDateTime,
        resource: &str,
        client_id: &str,
    ) -> Result<Self, ProviderError> {
        let body = serde_json::to_vec(&serde_json::json!({
            "access_token": access_token.expose(),
            "expires_on": expires_on.unix_timestamp().to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": client_id,
        }))
        .map_err(|_| {
            ProviderError::new(
                ErrorKind::Transient,
                "the token could not be encoded as JSON",
            )
        })?;
        Ok(Self {
            access_token,
            expires_on,
            body: Bytes::from(body),
        })
    }

    /// The access token.
    pub fn access_token(&self) -> &Secret {
        &self.access_token
    }

    /// The App Service managed-identity answer.
    pub fn body(&self) -> Bytes {
        self.body.clone()
    }
}

impl Expiring for AzureToken {
    fn expiration(&self) -> OffsetDateTime {
        self.expires_on
    }
}

impl fmt::Debug for AzureToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureToken")
            .field("expires_on", &self.expires_on)
            .finish_non_exhaustive()
    }
}

// === EntraProvider ===

/// The client-credentials exchange for one resource.
#[derive(Debug)]
pub struct EntraProvider {
    http: HttpsClient,
    settings: Arc<AzureSettings>,
    jwt: JwtSource,
    resource: String,
    calls: ExchangeCalls,
}

impl EntraProvider {
    /// An exchange for `resource`.
    pub fn new(
        http: HttpsClient,
        settings: Arc<AzureSettings>,
        jwt: JwtSource,
        resource: String,
        calls: ExchangeCalls,
    ) -> Self {
        Self {
            http,
            settings,
            jwt,
            resource,
            calls,
        }
    }

    fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.settings.authority_host, self.settings.tenant_id
        )
    }

    async fn exchange(&self) -> Result<AzureToken, ProviderError> {
        let url = self.token_url();
        let scope = format!("{}/.default", self.resource);
        let (url, scope) = (url.as_str(), scope.as_str());
        self.jwt
            .present(|svid| Box::pin(async move { self.request(url, scope, &svid).await }))
            .await
    }

    /// One token request with `svid` as the client assertion.
    async fn request(&self, url: &str, scope: &str, svid: &JwtSvid) -> Result<AzureToken, Refused> {
        let reply = self
            .http
            .post_form(
                url,
                &[
                    ("client_id", self.settings.client_id.as_str()),
                    ("scope", scope),
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", svid.token()),
                ],
            )
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                self.calls.record("azure", "retryable_error");
                return Err(Refused::Other(ProviderError::new(
                    ErrorKind::Transient,
                    format!("Entra ID token endpoint: no response: {e}"),
                )));
            }
        };
        match parse_reply(reply.status, &reply.body, OffsetDateTime::now_utc()) {
            Ok((token, expires_on)) => {
                self.calls.record("azure", "success");
                tracing::info!(
                    resource = %self.resource,
                    expires_on = %expires_on,
                    "got an Entra ID access token"
                );
                Ok(AzureToken::new(
                    token,
                    expires_on,
                    &self.resource,
                    &self.settings.client_id,
                )?)
            }
            Err(refused) => {
                self.calls.record(
                    "azure",
                    match &refused {
                        Refused::Token(_) => "invalid_token",
                        Refused::Other(e) if e.kind == ErrorKind::Rejected => "rejected",
                        Refused::Other(_) => "retryable_error",
                    },
                );
                Err(refused)
            }
        }
    }
}

impl CredentialProvider for EntraProvider {
    type Credentials = AzureToken;

    fn name(&self) -> &'static str {
        "azure"
    }

    fn fetch(&self) -> BoxFuture<'_, Result<AzureToken, ProviderError>> {
        Box::pin(self.exchange())
    }
}

#[derive(serde::Deserialize)]
struct Success {
    access_token: String,
    token_type: String,
    expires_in: NumberOrString,
}

/// Entra writes `expires_in` as a number (v2.0); older answers and proxies as a string.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(i64),
    Text(String),
}

#[derive(serde::Deserialize, Default)]
struct Failure {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<i64>,
}

/// Entra codes refusing the assertion itself, where a freshly fetched JWT-SVID may pass:
/// `AADSTS700024` (not within its valid time range: expired, or not yet valid by Entra's clock)
/// and `AADSTS700027` (signature validation failed: signed with a key Entra no longer finds in
/// the issuer's JWKS, e.g. after a rotation).
pub const FRESH_ASSERTION_CODES: &[i64] = &[700_024, 700_027];

/// Reads Entra's answer: the token and its expiry (`now + expires_in`), or the classified
/// error (`docs/protocols.md#entra-exchange`).
pub fn parse_reply(
    status: u16,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<(Secret, OffsetDateTime), Refused> {
    if status == 200 {
        let ok: Success = serde_json::from_slice(body).map_err(|e| {
            ProviderError::new(
                ErrorKind::Transient,
                format!("Entra ID answered 200 without a token document: {e}"),
            )
        })?;
        let expires_in = match ok.expires_in {
            NumberOrString::Number(n) => Some(n),
            NumberOrString::Text(t) => t.parse().ok(),
        };
        let Some(expires_in) = expires_in.filter(|n| *n > 0) else {
            return Err(Refused::Other(ProviderError::new(
                ErrorKind::Transient,
                "Entra ID answered a token without a valid expires_in",
            )));
        };
        if !ok.token_type.eq_ignore_ascii_case("bearer") || ok.access_token.is_empty() {
            return Err(Refused::Other(ProviderError::new(
                ErrorKind::Transient,
                format!(
                    "Entra ID answered an unusable token (token_type {:?})",
                    ok.token_type
                ),
            )));
        }
        return Ok((
            Secret::new(ok.access_token),
            now + time::Duration::seconds(expires_in),
        ));
    }
    let failure: Failure = serde_json::from_slice(body).unwrap_or_default();
    let description: String = failure
        .error_description
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(MAX_DESCRIPTION)
        .collect();
    let code = failure
        .error_codes
        .first()
        .map(|c| format!("AADSTS{c}"))
        .unwrap_or_default();
    let message = if failure.error.is_empty() {
        format!("Entra ID token endpoint: HTTP {status}")
    } else if description.starts_with(&code) || code.is_empty() {
        format!(
            "Entra ID token endpoint: {}: {description} (HTTP {status})",
            failure.error
        )
    } else {
        format!(
            "Entra ID token endpoint: {}: {code}: {description} (HTTP {status})",
            failure.error
        )
    };
    let transient = status == 429
        || status >= 500
        || failure.error == "temporarily_unavailable"
        // Not an OAuth error document at all (a proxy's page): nothing says the request is wrong.
        || failure.error.is_empty();
    if !transient
        && failure
            .error_codes
            .iter()
            .any(|c| FRESH_ASSERTION_CODES.contains(c))
    {
        return Err(Refused::Token(message));
    }
    let kind = if transient {
        ErrorKind::Transient
    } else {
        ErrorKind::Rejected
    };
    Err(Refused::Other(ProviderError::new(kind, message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of a reply that is not a token refusal.
    fn error(status: u16, body: &[u8]) -> ProviderError {
        match parse_reply(status, body, now()) {
            Err(Refused::Other(e)) => e,
            Err(Refused::Token(m)) => panic!("a token refusal: {m}"),
            Ok(_) => panic!("a token"),
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap()
    }

    #[test]
    fn reads_a_token_and_renders_the_app_service_answer() {
        let body = br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0.secret"}"#;
        let (token, exp) = parse_reply(200, body, now()).unwrap();
        assert_eq!(token.expose(), "eyJ0.secret");
        assert_eq!(exp.unix_timestamp(), 1_900_003_599);
        let t = AzureToken::new(token, exp, "https://storage.azure.com", "cid").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&t.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "access_token": "eyJ0.secret",
                "expires_on": "1900003599",
                "resource": "https://storage.azure.com",
                "token_type": "Bearer",
                "client_id": "cid",
            })
        );
        assert!(!format!("{t:?}").contains("secret"));
        let (_, exp) = parse_reply(
            200,
            br#"{"token_type":"Bearer","expires_in":"60","access_token":"x"}"#,
            now(),
        )
        .unwrap();
        assert_eq!(exp.unix_timestamp(), 1_900_000_060);
    }

    #[test]
    fn classifies_entra_errors() {
        let aadsts = br#"{"error":"invalid_client","error_description":"AADSTS700213: No matching federated identity record found for presented assertion subject 'spiffe://x'.\r\nTrace ID: 1","error_codes":[700213],"timestamp":"t","trace_id":"1","correlation_id":"2"}"#;
        let e = error(400, aadsts);
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert!(e.message.contains("AADSTS700213"), "{e}");
        assert!(!e.message.contains("Trace ID"), "one line: {e}");
        let e = error(
            401,
            br#"{"error":"invalid_client","error_description":"bad","error_codes":[7000215]}"#,
        );
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert!(e.message.contains("AADSTS7000215: bad"), "{e}");
        for (status, body) in [
            (
                429,
                &br#"{"error":"invalid_request","error_description":"AADSTS50196"}"#[..],
            ),
            (503, b"Service Unavailable"),
            (500, br#"{"error":"server_error"}"#),
            (400, br#"{"error":"temporarily_unavailable"}"#),
            (400, b"<html>proxy</html>"),
            (200, b"{}"),
            (
                200,
                br#"{"token_type":"Bearer","expires_in":0,"access_token":"x"}"#,
            ),
        ] {
            let e = error(status, body);
            assert_eq!(e.kind, ErrorKind::Transient, "{status} {e}");
        }
    }

    #[test]
    fn assertion_time_and_signature_refusals_ask_for_a_fresh_token() {
        for code in FRESH_ASSERTION_CODES {
            let body = format!(
                r#"{{"error":"invalid_client","error_description":"AADSTS{code}: Client assertion is not within its valid time range.","error_codes":[{code}]}}"#
            );
            match parse_reply(400, body.as_bytes(), now()) {
                Err(Refused::Token(m)) => assert!(m.contains(&format!("AADSTS{code}")), "{m}"),
                other => panic!("{code}: {other:?}"),
            }
        }
        // Throttled, whatever the code: backoff, not a second request at once.
        let e = error(
            429,
            br#"{"error":"invalid_client","error_description":"x","error_codes":[700024]}"#,
        );
        assert_eq!(e.kind, ErrorKind::Transient);
    }
}
