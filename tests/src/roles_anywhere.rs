//! A strict stand-in for AWS IAM Roles Anywhere's `CreateSession` over HTTPS: it checks what
//! the service checks (docs/iam-broker/aws.md#roles-anywhere) and answers in its shape.
//!
//! - The request: `POST /sessions`, `profileArn`, `roleArn` and `trustAnchorArn` in the query,
//!   a JSON body with `durationSeconds` (900–43,200, default 3,600).
//! - The signature: `Authorization: AWS4-X509-{ECDSA,RSA}-SHA256 Credential=<serial>/<date>/
//!   <region>/rolesanywhere/aws4_request, SignedHeaders=…, Signature=<hex>` over SigV4's
//!   canonical request rebuilt from the wire (the headers named in `SignedHeaders`, which must
//!   include `host`, `x-amz-date`, `x-amz-x509` and, when sent, `x-amz-x509-chain`), checked with
//!   the public key of the certificate in `X-Amz-X509`: SHA-256 with ECDSA (DER) or RSA
//!   PKCS#1 v1.5, whatever the curve. The algorithm must match the key, the serial in the
//!   credential must be the certificate's (decimal), the scope's date the request's and its
//!   region the stand-in's; `X-Amz-Date` within 5 minutes of now.
//! - The certificate: a chain from `X-Amz-X509` through `X-Amz-X509-Chain` to the trust
//!   anchor the request names (rustls-webpki's path building: signatures, CA constraints,
//!   validity windows at the time of the request), an end entity (`CA:FALSE`) whose key usage
//!   allows `digitalSignature`.
//! - The answer: 201 `{"credentialSet":[{"credentials":{…},…}],"subjectArn"}`, or the service's
//!   error shape (`x-amzn-ErrorType` and `{"message"}`): 403 `AccessDeniedException` for a bad
//!   signature, an untrusted or expired certificate, a role the profile does not hold or a
//!   stale date; 400 `ValidationException` for a malformed request; 404
//!   `ResourceNotFoundException` for an unknown profile or trust anchor.
//!
//! Every request is recorded as received (method, target, headers, body) with the answer, so
//! a test can send a changed copy of a real client's request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};

use crate::aws::{FakeHttps, TestCa};
use crate::{free_port, root};

/// The `aws_signing_helper` release `cargo xtask signing-helper` builds.
pub const SIGNING_HELPER_VERSION: &str = "1.4.0";

/// AWS's own Roles Anywhere client (`SUITE_SIGNING_HELPER`, else where `cargo xtask
/// signing-helper` puts it); panics with the command that builds it if it is missing.
pub fn signing_helper() -> std::path::PathBuf {
    let path = std::env::var_os("SUITE_SIGNING_HELPER").map_or_else(
        || {
            root().join(format!(
                ".tools/aws-signing-helper-{SIGNING_HELPER_VERSION}/bin/rolesanywhere-credential-helper"
            ))
        },
        std::path::PathBuf::from,
    );
    assert!(
        path.is_file(),
        "{} is missing: build aws_signing_helper {SIGNING_HELPER_VERSION} with `cargo xtask \
         signing-helper` (Go and gcc needed; `cargo xtask test` does it)",
        path.display()
    );
    path
}

/// The region the stand-in serves.
pub const REGION: &str = "us-east-1";
/// The profile it knows.
pub const PROFILE_ARN: &str =
    "arn:aws:rolesanywhere:us-east-1:123456789012:profile/0f4b1c2d-3e5f-4a6b-8c7d-9e0f1a2b3c4d";
/// The trust anchor it knows.
pub const TRUST_ANCHOR_ARN: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d";
/// The one role the profile holds (the role the broker harness configures).
pub const ROLE_ARN: &str = crate::aws::ROLE_ARN;
/// How far `X-Amz-Date` may be from the stand-in's clock.
const MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// One request as received, and the stand-in's answer.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `POST`, …
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// Headers as sent, in order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
    /// The status answered.
    pub status: u16,
    /// The error code answered (`AccessDeniedException`, …), if any.
    pub error: Option<String>,
    /// The error message, if any.
    pub message: Option<String>,
    /// The access key id handed out, on success.
    pub access_key_id: Option<String>,
}

impl Seen {
    /// A header's value as sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct State {
    /// Trust anchor ARN → its CA certificates (DER).
    anchors: BTreeMap<String, Vec<Vec<u8>>>,
    seen: Vec<Seen>,
    issued: u64,
    /// Credentials' lifetime override (default: the requested duration).
    lifetime: Option<Duration>,
}

/// The stand-in, over HTTPS with a [`TestCa`] certificate; stopped when dropped.
#[derive(Debug)]
pub struct RolesAnywhere {
    https: FakeHttps,
    /// The TLS CA its clients must trust.
    pub tls: Arc<TestCa>,
    state: Arc<Mutex<State>>,
}

impl RolesAnywhere {
    /// Starts the stand-in with [`TRUST_ANCHOR_ARN`] holding `anchor_der` (a CA certificate).
    pub fn start(anchor_der: &[u8]) -> Self {
        let tls = Arc::new(TestCa::new());
        let state = Arc::new(Mutex::new(State::default()));
        state
            .lock()
            .unwrap()
            .anchors
            .insert(TRUST_ANCHOR_ARN.to_owned(), vec![anchor_der.to_vec()]);
        let handler_state = state.clone();
        let https = FakeHttps::start(
            "roles-anywhere",
            free_port(),
            &tls,
            move |method, uri, headers, body| {
                let now = SystemTime::now();
                let mut state = handler_state.lock().unwrap();
                let outcome = create_session(&state, method, uri, headers, body, now);
                let mut seen = Seen {
                    method: method.to_string(),
                    target: uri
                        .path_and_query()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    headers: headers
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_owned(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    body: body.to_vec(),
                    status: 0,
                    error: None,
                    message: None,
                    access_key_id: None,
                };
                let response = match outcome {
                    Ok(session) => {
                        state.issued += 1;
                        let n = state.issued;
                        let lifetime = state.lifetime.unwrap_or(session.duration);
                        let key = format!("ASIARA{n:014}");
                        seen.status = 201;
                        seen.access_key_id = Some(key.clone());
                        answer_session(&key, n, lifetime, &session, now)
                    }
                    Err(refusal) => {
                        seen.status = refusal.status.as_u16();
                        seen.error = Some(refusal.code.to_owned());
                        seen.message = Some(refusal.message.clone());
                        refusal.into_response()
                    }
                };
                state.seen.push(seen);
                response
            },
        );
        Self { https, tls, state }
    }

    /// `https://127.0.0.1:<port>`: the endpoint clients are given.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.https.addr)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Sessions created so far.
    pub fn issued(&self) -> u64 {
        self.state.lock().unwrap().issued
    }

    /// Replaces the trust anchor's CA certificates (a rotated or revoked CA).
    pub fn set_anchor(&self, anchors: &[Vec<u8>]) {
        self.state
            .lock()
            .unwrap()
            .anchors
            .insert(TRUST_ANCHOR_ARN.to_owned(), anchors.to_vec());
    }

    /// `iam-broker aws` in the Roles Anywhere mode against this stand-in, fed by the agent at
    /// `workload_api`, trusting the stand-in's TLS CA (`SSL_CERT_FILE`), with `args` and `env`
    /// added; listening, not yet ready.
    pub fn broker(
        &self,
        dir: &std::path::Path,
        workload_api: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> crate::aws::Broker {
        let tls = dir.join(format!(
            "roles-anywhere-tls-ca-{}.pem",
            self.https.addr.port()
        ));
        std::fs::write(&tls, &self.tls.ca_pem).unwrap();
        let tls = tls.display().to_string();
        let endpoint = self.endpoint();
        let mut all_args = vec![
            "--trust-anchor-arn",
            TRUST_ANCHOR_ARN,
            "--profile-arn",
            PROFILE_ARN,
            "--roles-anywhere-endpoint",
            &endpoint,
        ];
        all_args.extend_from_slice(args);
        let mut all_env = vec![("SSL_CERT_FILE", tls.as_str())];
        all_env.extend_from_slice(env);
        // No STS endpoint: the mode refuses one.
        crate::aws::Broker::start(dir, workload_api, "", &all_args, &all_env)
    }

    /// Hands out credentials living `lifetime` instead of the requested duration.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.state.lock().unwrap().lifetime = Some(lifetime);
    }
}

/// A refusal in the service's shape.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn denied(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: "AccessDeniedException",
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "ValidationException",
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "ResourceNotFoundException",
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            serde_json::json!({ "message": self.message }).to_string(),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("x-amzn-errortype", HeaderValue::from_static(self.code));
        response
    }
}

/// What a verified request asked for.
#[derive(Debug)]
struct Session {
    duration: Duration,
    subject: String,
    role_session_name: Option<String>,
}

/// The parsed `Authorization` header.
#[derive(Debug)]
struct Authorization<'a> {
    algorithm: &'a str,
    serial: &'a str,
    date: &'a str,
    region: &'a str,
    signed_headers: Vec<&'a str>,
    signature: Vec<u8>,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, Refusal> {
    let bad = || Refusal::denied("Authorization header is malformed");
    let (algorithm, rest) = value.split_once(' ').ok_or_else(bad)?;
    if algorithm != "AWS4-X509-ECDSA-SHA256" && algorithm != "AWS4-X509-RSA-SHA256" {
        return Err(Refusal::denied(format!(
            "unsupported signing algorithm {algorithm}"
        )));
    }
    let mut parts = rest.split(", ");
    let credential = parts
        .next()
        .and_then(|p| p.strip_prefix("Credential="))
        .ok_or_else(bad)?;
    let signed = parts
        .next()
        .and_then(|p| p.strip_prefix("SignedHeaders="))
        .ok_or_else(bad)?;
    let signature = parts
        .next()
        .and_then(|p| p.strip_prefix("Signature="))
        .ok_or_else(bad)?;
    if parts.next().is_some() {
        return Err(bad());
    }
    let scope: Vec<&str> = credential.split('/').collect();
    let [serial, date, region, "rolesanywhere", "aws4_request"] = scope[..] else {
        return Err(Refusal::denied("credential scope is malformed"));
    };
    let signed_headers: Vec<&str> = signed.split(';').collect();
    let mut sorted = signed_headers.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted != signed_headers
        || signed_headers
            .iter()
            .any(|h| h.is_empty() || h.chars().any(|c| c.is_ascii_uppercase()))
    {
        return Err(Refusal::denied(
            "SignedHeaders must be lowercase, sorted, unique",
        ));
    }
    if signature.len() % 2 != 0
        || !signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Refusal::denied("signature is not lowercase hex"));
    }
    let signature = (0..signature.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&signature[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    Ok(Authorization {
        algorithm,
        serial,
        date,
        region,
        signed_headers,
        signature,
    })
}

/// RFC 3986 percent-encoding of everything but unreserved characters, as SigV4 canonicalises.
fn sigv4_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Result<String, Refusal> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| Refusal::invalid("bad percent-encoding in the query"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| Refusal::invalid("the query is not UTF-8"))
}

/// The query's parameters, decoded, and SigV4's canonical query string.
fn query(uri: &Uri) -> Result<(BTreeMap<String, String>, String), Refusal> {
    let mut params = BTreeMap::new();
    let mut pairs = Vec::new();
    for part in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let (k, v) = (percent_decode(k)?, percent_decode(v)?);
        pairs.push((sigv4_encode(&k), sigv4_encode(&v)));
        if params.insert(k.clone(), v).is_some() {
            return Err(Refusal::invalid(format!("{k} given twice")));
        }
    }
    pairs.sort();
    let canonical = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    Ok((params, canonical))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// `YYYYMMDDTHHMMSSZ` → Unix seconds.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3_600 + mi * 60 + se;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

fn b64(value: &str) -> Result<Vec<u8>, Refusal> {
    base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| Refusal::denied("certificate header is not base64"))
}

/// Verifies the request as Roles Anywhere does; the session it asks for, or the refusal.
fn create_session(
    state: &State,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    now: SystemTime,
) -> Result<Session, Refusal> {
    if method != Method::POST || uri.path() != "/sessions" {
        return Err(Refusal::not_found(format!(
            "no such operation: {method} {}",
            uri.path()
        )));
    }
    let header = |name: &str| -> Result<Option<&str>, Refusal> {
        let mut values = headers.get_all(name).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(Refusal::denied(format!("{name} given twice")));
        }
        first
            .map(|v| {
                v.to_str()
                    .map_err(|_| Refusal::denied(format!("{name} is not ASCII")))
            })
            .transpose()
    };
    let auth =
        header("authorization")?.ok_or_else(|| Refusal::denied("missing Authorization header"))?;
    let auth = parse_authorization(auth)?;

    // The date: well-formed, the scope's, within the skew.
    let amz_date = header("x-amz-date")?.ok_or_else(|| Refusal::denied("missing X-Amz-Date"))?;
    let signed_at =
        parse_amz_date(amz_date).ok_or_else(|| Refusal::denied("X-Amz-Date is malformed"))?;
    if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
        return Err(Refusal::denied(
            "the credential scope's date is not X-Amz-Date's",
        ));
    }
    let skew = now
        .duration_since(signed_at)
        .unwrap_or_else(|e| e.duration());
    if skew > MAX_SKEW {
        return Err(Refusal::denied(format!(
            "Signature expired or not yet valid: X-Amz-Date {amz_date} is {}s from now",
            skew.as_secs()
        )));
    }
    if auth.region != REGION {
        return Err(Refusal::denied(format!(
            "credential scope region {} is not {REGION}",
            auth.region
        )));
    }
    for required in ["host", "x-amz-date", "x-amz-x509"] {
        if !auth.signed_headers.contains(&required) {
            return Err(Refusal::denied(format!("{required} is not signed")));
        }
    }
    let chain_header = header("x-amz-x509-chain")?;
    if chain_header.is_some() && !auth.signed_headers.contains(&"x-amz-x509-chain") {
        return Err(Refusal::denied("x-amz-x509-chain is sent but not signed"));
    }

    // The canonical request, from the wire.
    let (params, canonical_query) = query(uri)?;
    let mut canonical_headers = String::new();
    for name in &auth.signed_headers {
        let value = header(name)?
            .ok_or_else(|| Refusal::denied(format!("signed header {name} is missing")))?;
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let canonical_request = format!(
        "POST\n/sessions\n{canonical_query}\n{canonical_headers}\n{}\n{}",
        auth.signed_headers.join(";"),
        sha256_hex(body)
    );
    let string_to_sign = format!(
        "{}\n{amz_date}\n{}/{}/rolesanywhere/aws4_request\n{}",
        auth.algorithm,
        auth.date,
        auth.region,
        sha256_hex(canonical_request.as_bytes())
    );

    // The certificate, its serial and key.
    let leaf_der = b64(header("x-amz-x509")?.unwrap_or_default())?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der)
        .map_err(|_| Refusal::denied("X-Amz-X509 is not a certificate"))?;
    if leaf.tbs_certificate.serial.to_string() != auth.serial {
        return Err(Refusal::denied(
            "the credential's serial number is not the certificate's",
        ));
    }
    let is_rsa =
        leaf.public_key().algorithm.algorithm == x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
    let verify: &dyn tokio_rustls::rustls::pki_types::SignatureVerificationAlgorithm =
        match (auth.algorithm, is_rsa) {
            ("AWS4-X509-RSA-SHA256", true) => webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
            ("AWS4-X509-ECDSA-SHA256", false) => match leaf.public_key().parsed() {
                Ok(x509_parser::public_key::PublicKey::EC(p)) if p.key_size() == 384 => {
                    webpki::aws_lc_rs::ECDSA_P384_SHA256
                }
                Ok(x509_parser::public_key::PublicKey::EC(_)) => {
                    webpki::aws_lc_rs::ECDSA_P256_SHA256
                }
                _ => return Err(Refusal::denied("unsupported certificate key")),
            },
            _ => {
                return Err(Refusal::denied(
                    "the signing algorithm does not match the certificate's key",
                ));
            }
        };
    let leaf_cert = CertificateDer::from(leaf_der.as_slice());
    let end_entity = webpki::EndEntityCert::try_from(&leaf_cert)
        .map_err(|e| Refusal::denied(format!("X-Amz-X509: {e}")))?;
    end_entity
        .verify_signature(verify, string_to_sign.as_bytes(), &auth.signature)
        .map_err(|_| Refusal::denied("Signature validation failed"))?;

    // An end entity allowed to sign.
    let end_entity_ok = leaf
        .basic_constraints()
        .ok()
        .flatten()
        .is_none_or(|bc| !bc.value.ca)
        && leaf
            .key_usage()
            .ok()
            .flatten()
            .is_none_or(|ku| ku.value.digital_signature());
    if !end_entity_ok {
        return Err(Refusal::denied(
            "the signing certificate is a CA or may not sign (keyUsage)",
        ));
    }

    // The profile, role and trust anchor.
    let profile = params
        .get("profileArn")
        .ok_or_else(|| Refusal::invalid("profileArn is required"))?;
    let role = params
        .get("roleArn")
        .ok_or_else(|| Refusal::invalid("roleArn is required"))?;
    let anchor_arn = params
        .get("trustAnchorArn")
        .ok_or_else(|| Refusal::invalid("trustAnchorArn is required"))?;
    if profile != PROFILE_ARN {
        return Err(Refusal::not_found(format!("profile {profile} not found")));
    }
    let anchors = state
        .anchors
        .get(anchor_arn)
        .ok_or_else(|| Refusal::not_found(format!("trust anchor {anchor_arn} not found")))?;
    if role != ROLE_ARN {
        return Err(Refusal::denied(format!(
            "role {role} is not in the profile's roles"
        )));
    }

    // The chain, at the time of the request.
    let intermediates: Vec<CertificateDer<'static>> = match chain_header {
        Some(chain) => chain
            .split(',')
            .map(|c| b64(c).map(CertificateDer::from))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let anchor_ders: Vec<CertificateDer<'static>> = anchors
        .iter()
        .map(|a| CertificateDer::from(a.clone()))
        .collect();
    let trust_anchors = anchor_ders
        .iter()
        .map(|a| webpki::anchor_from_trusted_cert(a).map(|t| t.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Refusal::denied(format!("trust anchor: {e}")))?;
    let time = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &trust_anchors,
            &intermediates,
            time,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| {
            Refusal::denied(format!(
                "Untrusted signing certificate (not valid for the trust anchor: {e})"
            ))
        })?;

    // The body.
    let json: serde_json::Value = if body.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_slice(body).map_err(|_| Refusal::invalid("the body is not JSON"))?
    };
    let duration = match json.get("durationSeconds") {
        None => 3_600,
        Some(v) => v
            .as_u64()
            .filter(|d| (900..=43_200).contains(d))
            .ok_or_else(|| Refusal::invalid("durationSeconds must be 900 to 43200"))?,
    };
    let role_session_name = json
        .get("roleSessionName")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    let subject = leaf.subject().to_string();
    Ok(Session {
        duration: Duration::from_secs(duration),
        subject,
        role_session_name,
    })
}

fn answer_session(
    key: &str,
    n: u64,
    lifetime: Duration,
    session: &Session,
    now: SystemTime,
) -> Response {
    let expiration = now + lifetime;
    let secs = expiration
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let expiration = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap())
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let session_name = session
        .role_session_name
        .clone()
        .unwrap_or_else(|| format!("ra-{n}"));
    let body = serde_json::json!({
        "credentialSet": [{
            "assumedRoleUser": {
                "arn": format!("arn:aws:sts::123456789012:assumed-role/demo/{session_name}"),
                "assumedRoleId": format!("AROARA{n:014}:{session_name}"),
            },
            "credentials": {
                "accessKeyId": key,
                "secretAccessKey": format!("roles-anywhere-secret-{n}"),
                "sessionToken": format!("roles-anywhere-session-token-{n}"),
                "expiration": expiration,
            },
            "packedPolicySize": 0,
            "roleArn": ROLE_ARN,
            "sourceIdentity": session.subject,
        }],
        "subjectArn": "arn:aws:rolesanywhere:us-east-1:123456789012:subject/7d8e9f0a-1b2c-4d3e-8f4a-5b6c7d8e9f0a",
    });
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_parse_to_unix_time() {
        let t = parse_amz_date("20241210T163139Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_733_848_299
        );
        assert!(parse_amz_date("20241310T163139Z").is_none());
        assert!(parse_amz_date("2024-12-10T16:31:39Z").is_none());
    }

    #[test]
    fn the_canonical_query_is_sorted_and_strictly_encoded() {
        let uri: Uri = "/sessions?trustAnchorArn=arn%3Aa%2Fb&profileArn=p+q&roleArn=r~s"
            .parse()
            .unwrap();
        let (params, canonical) = query(&uri).unwrap();
        assert_eq!(params["trustAnchorArn"], "arn:a/b");
        assert_eq!(
            canonical,
            "profileArn=p%20q&roleArn=r~s&trustAnchorArn=arn%3Aa%2Fb"
        );
    }

    #[test]
    fn authorization_headers_parse_strictly() {
        let ok = "AWS4-X509-ECDSA-SHA256 Credential=123/20241210/us-east-1/rolesanywhere/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-x509, Signature=0a0b";
        let a = parse_authorization(ok).unwrap();
        assert_eq!(
            (a.serial, a.date, a.region),
            ("123", "20241210", "us-east-1")
        );
        assert_eq!(a.signature, vec![10, 11]);
        for bad in [
            ok.replace("ECDSA", "HMAC"),
            ok.replace("rolesanywhere", "sts"),
            ok.replace("host;x-amz-date", "x-amz-date;host"),
            ok.replace("0a0b", "0A0B"),
            ok.replace(", Signature", ",Signature"),
        ] {
            assert!(parse_authorization(&bad).is_err(), "{bad}");
        }
    }
}
