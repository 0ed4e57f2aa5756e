//! IAM Roles Anywhere: the `CreateSession` request signed with the X.509-SVID's own key
//! (`docs/protocols.md#roles-anywhere`), for clusters whose trust domain cannot publish an OIDC
//! issuer STS could reach.
//!
//! The signed part of the request is what AWS's own client, `aws_signing_helper`, signs (the
//! broker also sends an unsigned `Accept`, as the helper sends `User-Agent`): `POST /sessions?profileArn=…&roleArn=…&trustAnchorArn=…` (strict RFC 3986
//! encoding, sorted), body `{"durationSeconds":N}` (plus `roleSessionName`), headers
//! `Content-Type`, `Host`, `X-Amz-Date`, `X-Amz-X509` (the leaf, base64 DER) and, when the SVID
//! has intermediates, `X-Amz-X509-Chain`, all signed. The signature is SigV4's with the
//! certificate in place of an access key: `Credential=<serial, decimal>/<date>/<region>/
//! rolesanywhere/aws4_request`, and the string to sign signed with the private key (SHA-256
//! with ECDSA, DER, or RSA PKCS#1 v1.5), hex encoded.
//!
//! [`sign`] builds and signs; [`RolesAnywhereProvider`] sends, with a fresh signature (the
//! current SVID, the current time) on every attempt, so a rotated SVID is used from its first
//! refresh on. The key never leaves the [`X509Svid`] it came in, and nothing here logs it.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use sidecar_runtime::svid::current_x509;
use time::format_description::well_known::Rfc3339;
use workload_client::X509Watcher;

use super::exchange::{AwsCredentials, AwsSettings};
use super::metrics::StsCalls;
use crate::provider::https::HttpsClient;
use crate::provider::{CredentialProvider, ErrorKind, ProviderError};
use crate::secret::Secret;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine as _;
use time::OffsetDateTime;
use time::macros::format_description;
use workload_client::spiffe::X509Svid;

/// The body's type: signed, and sent as the client's own `Content-Type`.
const CONTENT_TYPE: &str = "application/json";

/// What a session is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRequest {
    /// `arn:aws:rolesanywhere:<region>:<account>:trust-anchor/<id>`.
    pub trust_anchor_arn: String,
    /// `arn:aws:rolesanywhere:<region>:<account>:profile/<id>`.
    pub profile_arn: String,
    /// `arn:aws:iam::<account>:role/<name>`, one of the profile's roles.
    pub role_arn: String,
    /// The signing region (the trust anchor's).
    pub region: String,
    /// `host[:port]` the request goes to and is signed for.
    pub host: String,
    /// `durationSeconds` (900 to 43,200).
    pub duration_seconds: u32,
    /// `roleSessionName`, if one is set.
    pub role_session_name: Option<String>,
}

/// A `CreateSession` request ready to send to `https://<host><target>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// `/sessions?…`.
    pub target: String,
    /// Header names (lowercase) and values, `Host` included, `Authorization` last.
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body.
    pub body: String,
}

impl std::fmt::Debug for SignedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The certificate is public and the signature single-use, but neither helps a reader.
        f.debug_struct("SignedRequest")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// The request could not be signed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignError {
    /// The SVID's key is neither EC P-256 nor RSA.
    #[error(
        "the X.509-SVID's key is neither EC P-256 nor RSA: Roles Anywhere signs with SHA-256 (AWS4-X509-ECDSA-SHA256 or AWS4-X509-RSA-SHA256), and P-384 with SHA-256 is not available here; issue P-256 or RSA SVIDs for this workload"
    )]
    UnsupportedKey,
    /// The key was recognised but signing failed.
    #[error("signing the CreateSession request failed")]
    Signing,
    /// The leaf certificate could not be read for its serial number.
    #[error("the X.509-SVID's certificate cannot be parsed: {0}")]
    Certificate(String),
    /// The time could not be formatted.
    #[error("formatting the request time: {0}")]
    Time(String),
}

/// The private key, by the algorithm Roles Anywhere names it with.
enum Key {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl Key {
    fn from_pkcs8(der: &[u8]) -> Result<Self, SignError> {
        if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der) {
            return Ok(Self::Ecdsa(k));
        }
        RsaKeyPair::from_pkcs8(der)
            .map(Self::Rsa)
            .map_err(|_| SignError::UnsupportedKey)
    }

    fn algorithm(&self) -> &'static str {
        match self {
            Self::Ecdsa(_) => "AWS4-X509-ECDSA-SHA256",
            Self::Rsa(_) => "AWS4-X509-RSA-SHA256",
        }
    }

    /// SHA-256 with the key over `message` (ECDSA: DER; RSA: PKCS#1 v1.5).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let rng = SystemRandom::new();
        match self {
            Self::Ecdsa(k) => k
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| SignError::Signing),
            Self::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .map_err(|_| SignError::Signing)?;
                Ok(sig)
            }
        }
    }
}

/// SigV4's encoding: every byte but `A-Z a-z 0-9 - _ . ~` as `%XX` (uppercase).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The leaf's serial number in decimal, as the credential names it.
fn serial_decimal(leaf_der: &[u8]) -> Result<String, SignError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf_der)
        .map_err(|e| SignError::Certificate(e.to_string()))?;
    Ok(cert.tbs_certificate.serial.to_string())
}

/// Builds and signs `CreateSession` for `request` with `svid` at `now`.
pub fn sign(
    request: &SessionRequest,
    svid: &X509Svid,
    now: OffsetDateTime,
) -> Result<SignedRequest, SignError> {
    let key = Key::from_pkcs8(svid.private_key().as_ref())?;
    let chain = svid.cert_chain();
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(SignError::Certificate("an empty chain".into()));
    };
    let serial = serial_decimal(leaf.as_ref())?;
    let now = now.to_offset(time::UtcOffset::UTC);
    let amz_date = now
        .format(format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .map_err(|e| SignError::Time(e.to_string()))?;
    let date = &amz_date[..8];

    // Sorted by name: profileArn < roleArn < trustAnchorArn.
    let query = format!(
        "profileArn={}&roleArn={}&trustAnchorArn={}",
        encode(&request.profile_arn),
        encode(&request.role_arn),
        encode(&request.trust_anchor_arn)
    );
    let mut body = serde_json::json!({ "durationSeconds": request.duration_seconds });
    if let Some(name) = &request.role_session_name {
        body["roleSessionName"] = serde_json::Value::from(name.as_str());
    }
    let body = body.to_string();

    let b64 = base64::engine::general_purpose::STANDARD;
    let mut headers: Vec<(&'static str, String)> = vec![
        ("content-type", CONTENT_TYPE.to_owned()),
        ("host", request.host.clone()),
        ("x-amz-date", amz_date.clone()),
        ("x-amz-x509", b64.encode(leaf.as_ref())),
    ];
    if !intermediates.is_empty() {
        let chain: Vec<String> = intermediates
            .iter()
            .map(|c| b64.encode(c.as_ref()))
            .collect();
        headers.push(("x-amz-x509-chain", chain.join(",")));
    }
    // Already in sorted order: every header we send is signed.
    let signed_headers = headers
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(";");
    let mut canonical = format!("POST\n/sessions\n{query}\n");
    for (name, value) in &headers {
        let _ = writeln!(canonical, "{name}:{}", value.trim());
    }
    let _ = write!(
        canonical,
        "\n{signed_headers}\n{}",
        hex(digest(&SHA256, body.as_bytes()).as_ref())
    );
    let scope = format!("{date}/{}/rolesanywhere/aws4_request", request.region);
    let string_to_sign = format!(
        "{}\n{amz_date}\n{scope}\n{}",
        key.algorithm(),
        hex(digest(&SHA256, canonical.as_bytes()).as_ref())
    );
    let signature = key.sign(string_to_sign.as_bytes())?;
    headers.push((
        "authorization",
        format!(
            "{} Credential={serial}/{scope}, SignedHeaders={signed_headers}, Signature={}",
            key.algorithm(),
            hex(&signature)
        ),
    ));
    Ok(SignedRequest {
        target: format!("/sessions?{query}"),
        headers,
        body,
    })
}

// === RolesAnywhereProvider ===

/// Where and what to ask Roles Anywhere (validated by [`super::config`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolesAnywhereSettings {
    /// The trust anchor holding the trust domain's CA.
    pub trust_anchor_arn: String,
    /// The profile naming the role.
    pub profile_arn: String,
    /// `https://rolesanywhere.<region>.amazonaws.com`, or an override (no path).
    pub endpoint: String,
    /// The endpoint's `host[:port]` as sent in `Host` (a default port left out).
    pub host: String,
}

/// How long the first attempts wait for the Workload API's first X.509-SVID.
const SVID_WAIT: Duration = Duration::from_secs(5);

/// `CreateSession` signed with the workload's X.509-SVID.
#[derive(Debug)]
pub struct RolesAnywhereProvider {
    settings: AwsSettings,
    roles_anywhere: RolesAnywhereSettings,
    svids: X509Watcher,
    client: HttpsClient,
    calls: StsCalls,
}

impl RolesAnywhereProvider {
    /// A provider asking `roles_anywhere` for `settings.role_arn` with the SVIDs of `svids`,
    /// counting calls in `calls` (the STS call counter: the same outcomes).
    pub fn new(
        settings: AwsSettings,
        roles_anywhere: RolesAnywhereSettings,
        svids: X509Watcher,
        client: HttpsClient,
        calls: StsCalls,
    ) -> Self {
        Self {
            settings,
            roles_anywhere,
            svids,
            client,
            calls,
        }
    }

    async fn create_session(&self) -> Result<AwsCredentials, ProviderError> {
        if self.svids.current().is_none() {
            // At start the stream may be a moment away; later `None` means withdrawn.
            let _ = tokio::time::timeout(SVID_WAIT, self.svids.first()).await;
        }
        // An expired or withdrawn SVID is not sent: it would only earn a 403.
        let context = current_x509(&self.svids, std::time::SystemTime::now())
            .map_err(|why| ProviderError::new(ErrorKind::Identity, why))?;
        let request = SessionRequest {
            trust_anchor_arn: self.roles_anywhere.trust_anchor_arn.clone(),
            profile_arn: self.roles_anywhere.profile_arn.clone(),
            role_arn: self.settings.role_arn.clone(),
            region: self.settings.region.clone(),
            host: self.roles_anywhere.host.clone(),
            duration_seconds: u32::try_from(self.settings.duration.as_secs()).unwrap_or(3600),
            role_session_name: self
                .settings
                .session_name
                .as_ref()
                .map(|n| n.as_str().to_owned()),
        };
        let signed = sign(
            &request,
            &context.default_svid().svid,
            OffsetDateTime::now_utc(),
        )
        .map_err(|e| {
            let kind = match e {
                // A key or certificate this provider cannot use: fixed by reissuing the SVID.
                SignError::UnsupportedKey | SignError::Certificate(_) => ErrorKind::Rejected,
                SignError::Signing | SignError::Time(_) => ErrorKind::Transient,
            };
            ProviderError::new(kind, e.to_string())
        })?;
        // Content-Type is the client's own header; every other signed header goes as signed.
        let headers: Vec<(&'static str, &str)> = signed
            .headers
            .iter()
            .filter(|(name, _)| *name != "content-type")
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let url = format!("{}{}", self.roles_anywhere.endpoint, signed.target);
        let reply = self
            .client
            .post_bytes_with(&url, CONTENT_TYPE, &headers, Bytes::from(signed.body))
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                self.calls.record("retryable_error");
                return Err(ProviderError::new(
                    ErrorKind::Transient,
                    format!("Roles Anywhere CreateSession: {e}"),
                ));
            }
        };
        if (200..300).contains(&reply.status) {
            let creds = credentials_from(&reply.body).inspect_err(|_| {
                self.calls.record("retryable_error");
            })?;
            self.calls.record("success");
            tracing::info!(
                assumed_role = creds.assumed_role_arn().unwrap_or("?"),
                spiffe_id = %context.default_svid().svid.spiffe_id(),
                expiration = %crate::provider::Expiring::expiration(&creds),
                "created a Roles Anywhere session with the X.509-SVID"
            );
            return Ok(creds);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .or_else(|| v.get("Message"))
                    .and_then(serde_json::Value::as_str)
                    .map(|m| m.chars().take(300).collect::<String>())
            })
            .unwrap_or_default();
        let (kind, outcome) = match reply.status {
            429 | 500..=599 => (ErrorKind::Transient, "retryable_error"),
            _ => (ErrorKind::Rejected, "rejected"),
        };
        self.calls.record(outcome);
        Err(ProviderError::new(
            kind,
            format!(
                "Roles Anywhere refused CreateSession (HTTP {}): {message}",
                reply.status
            ),
        ))
    }
}

impl CredentialProvider for RolesAnywhereProvider {
    type Credentials = AwsCredentials;

    fn name(&self) -> &'static str {
        "aws"
    }

    fn fetch(&self) -> BoxFuture<'_, Result<AwsCredentials, ProviderError>> {
        Box::pin(self.create_session())
    }
}

/// `credentialSet[0]` of a `CreateSession` answer.
fn credentials_from(body: &[u8]) -> Result<AwsCredentials, ProviderError> {
    let bad = |what: &str| {
        ProviderError::new(
            ErrorKind::Transient,
            format!("Roles Anywhere answered without {what}"),
        )
    };
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| bad("JSON"))?;
    let set = v
        .get("credentialSet")
        .and_then(|s| s.get(0))
        .ok_or_else(|| bad("a credentialSet"))?;
    let c = set.get("credentials").ok_or_else(|| bad("credentials"))?;
    let field = |name: &str| {
        c.get(name)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad(name))
    };
    let expiration = OffsetDateTime::parse(field("expiration")?, &Rfc3339)
        .map_err(|_| bad("an RFC 3339 expiration"))?;
    AwsCredentials::new(
        field("accessKeyId")?,
        Secret::new(field("secretAccessKey")?),
        Secret::new(field("sessionToken")?),
        expiration,
        set.get("assumedRoleUser")
            .and_then(|u| u.get("arn"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_are_encoded_as_sigv4_canonicalises() {
        assert_eq!(
            encode("arn:aws:iam::000000000000:role/a b~c"),
            "arn%3Aaws%3Aiam%3A%3A000000000000%3Arole%2Fa%20b~c"
        );
    }

    #[test]
    fn a_session_answer_gives_credentials_and_a_partial_one_an_error() {
        let ok = br#"{"credentialSet":[{"assumedRoleUser":{"arn":"arn:aws:sts::1:assumed-role/r/s"},"credentials":{"accessKeyId":"ASIA1","secretAccessKey":"s","sessionToken":"t","expiration":"2030-01-01T00:00:00Z"}}],"subjectArn":"x"}"#;
        let creds = credentials_from(ok).unwrap();
        assert_eq!(creds.access_key_id(), "ASIA1");
        assert_eq!(
            creds.assumed_role_arn(),
            Some("arn:aws:sts::1:assumed-role/r/s")
        );
        for partial in [
            &br#"{"credentialSet":[]}"#[..],
            br#"{"credentialSet":[{"credentials":{"accessKeyId":"A","secretAccessKey":"s","expiration":"2030-01-01T00:00:00Z"}}]}"#,
            br#"{"credentialSet":[{"credentials":{"accessKeyId":"A","secretAccessKey":"s","sessionToken":"t","expiration":1}}]}"#,
            b"not json",
        ] {
            let e = credentials_from(partial).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Transient, "{e:?}");
        }
    }

    #[test]
    fn keys_other_than_p256_and_rsa_are_refused_with_the_reason() {
        assert!(matches!(
            Key::from_pkcs8(b"not a key"),
            Err(SignError::UnsupportedKey)
        ));
        assert!(
            SignError::UnsupportedKey
                .to_string()
                .contains("P-256 or RSA")
        );
    }
}
