//! The ext_authz decision: what to do with one `CheckRequest`, in each mode.
//!
//! Decisions are computed by plain functions over the request headers (unit-testable, no gRPC),
//! then turned into a `CheckResponse` in one place ([`to_check_response`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use sidecar_runtime::host::HostPort;
use workload_client::spiffe::SpiffeId;
use workload_client::{
    JwtBundleWatcher, JwtKey, JwtSvidCache, TrustDomainPolicy, validate_jwt_svid,
};

use crate::config::{ExistingAuthorization, Mode};
use crate::metrics::Metrics;

/// The header a validator sets to the authenticated caller's SPIFFE ID.
pub const SPIFFE_ID_HEADER: &str = "x-spiffe-id";

/// The outcome of one check. `Debug` hides header values: an allowed injection carries a live
/// bearer token.
#[derive(Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward the request, overwriting these headers.
    Allow {
        /// `(name, value)` pairs set with OVERWRITE_IF_EXISTS_OR_ADD.
        set: Vec<(&'static str, String)>,
        /// Metrics reason (`stamped`, `kept_existing`, `valid`).
        reason: &'static str,
    },
    /// Answer the client directly.
    Deny {
        /// HTTP status (401, 403, 503).
        status: u16,
        /// One-line reason for the body (never a token).
        body: String,
        /// Metrics reason.
        reason: &'static str,
    },
}

impl std::fmt::Debug for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Allow { set, reason } => f
                .debug_struct("Allow")
                .field(
                    "set",
                    &set.iter()
                        .map(|(k, _)| (k, "<redacted>"))
                        .collect::<Vec<_>>(),
                )
                .field("reason", reason)
                .finish(),
            Self::Deny {
                status,
                body,
                reason,
            } => f
                .debug_struct("Deny")
                .field("status", status)
                .field("body", body)
                .field("reason", reason)
                .finish(),
        }
    }
}

impl Decision {
    fn deny(status: u16, reason: &'static str, body: impl Into<String>) -> Self {
        Self::Deny {
            status,
            body: body.into(),
            reason,
        }
    }

    /// `allowed` / `denied` / `unavailable`, for metrics.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Allow { .. } => "allowed",
            Self::Deny { status: 503, .. } => "unavailable",
            Self::Deny { .. } => "denied",
        }
    }

    /// The metrics reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Allow { reason, .. } | Self::Deny { reason, .. } => reason,
        }
    }
}

// === Injection ===

/// Stamps outbound requests with a JWT-SVID from the cache.
#[derive(Debug)]
pub struct Injector {
    cache: JwtSvidCache,
    default_key: JwtKey,
    by_host: HashMap<String, JwtKey>,
    existing: ExistingAuthorization,
    wait: Duration,
}

impl Injector {
    /// Builds the audience keys once and pins them, so the cache fetches them at start and the
    /// first request already finds a token.
    pub fn new(
        cache: JwtSvidCache,
        audience: &str,
        audience_for: impl IntoIterator<Item = (String, String)>,
        existing: ExistingAuthorization,
        wait: Duration,
    ) -> Result<Self, workload_client::CacheError> {
        let default_key = JwtKey::new([audience])?;
        cache.pin(&default_key);
        let mut by_host = HashMap::new();
        for (host, aud) in audience_for {
            let key = JwtKey::new([aud])?;
            cache.pin(&key);
            by_host.insert(host, key);
        }
        Ok(Self {
            cache,
            default_key,
            by_host,
            existing,
            wait,
        })
    }

    /// The key for a request's `:authority`: exact host:port, then host alone, then default.
    pub fn key_for(&self, authority: &str) -> &JwtKey {
        let host = authority.to_ascii_lowercase();
        self.by_host
            .get(&host)
            .or_else(|| self.by_host.get(strip_port(&host)))
            .unwrap_or(&self.default_key)
    }

    /// Decides one request.
    pub async fn decide(&self, headers: &HashMap<String, String>, authority: &str) -> Decision {
        if headers.contains_key("authorization") {
            match self.existing {
                ExistingAuthorization::Deny => {
                    return Decision::deny(
                        403,
                        "existing_authorization",
                        "request already carries an authorization header",
                    );
                }
                ExistingAuthorization::Keep => {
                    return Decision::Allow {
                        set: Vec::new(),
                        reason: "kept_existing",
                    };
                }
                ExistingAuthorization::Replace => {}
            }
        }
        match self.cache.get(self.key_for(authority), self.wait).await {
            Ok(token) => Decision::Allow {
                set: vec![("authorization", format!("Bearer {}", token.token()))],
                reason: "stamped",
            },
            Err(e) => {
                // The refresh task already warns once per distinct agent error.
                tracing::debug!(error = %e, "no JWT-SVID to stamp; failing closed");
                Decision::deny(
                    503,
                    "no_token",
                    "no JWT-SVID available from the SPIFFE Workload API",
                )
            }
        }
    }

    /// Ready once the default audience has a valid token.
    pub fn ready(&self) -> Result<(), String> {
        self.cache
            .peek(&self.default_key)
            .map(|_| ())
            .ok_or_else(|| "no valid JWT-SVID for the default audience yet".to_owned())
    }
}

/// `host:port` → `host` (`[v6]` keeps its brackets); anything that is not `host[:port]` as is.
fn strip_port(host: &str) -> &str {
    HostPort::parse(host).map_or(host, |h| h.host)
}

// === Validation ===

/// Checks inbound bearer JWT-SVIDs against the streamed JWT bundles.
#[derive(Debug)]
pub struct Validator {
    bundles: JwtBundleWatcher,
    audience: String,
    trust_domains: TrustDomainPolicy,
    allow_ids: BTreeSet<SpiffeId>,
}

impl Validator {
    /// A validator for `audience`; empty allow lists accept any trust domain with a bundle and
    /// any SPIFFE ID.
    pub fn new(
        bundles: JwtBundleWatcher,
        audience: String,
        trust_domains: BTreeSet<workload_client::spiffe::TrustDomain>,
        allow_ids: BTreeSet<SpiffeId>,
    ) -> Self {
        let trust_domains = if trust_domains.is_empty() {
            TrustDomainPolicy::AnyWithBundle
        } else {
            TrustDomainPolicy::Only(trust_domains)
        };
        Self {
            bundles,
            audience,
            trust_domains,
            allow_ids,
        }
    }

    /// Decides one request (synchronous: a lock-free snapshot read and local crypto).
    pub fn decide(&self, headers: &HashMap<String, String>) -> Decision {
        let Some(bundles) = self.bundles.current() else {
            return Decision::deny(
                503,
                "no_bundles",
                "no JWT bundles from the SPIFFE Workload API yet",
            );
        };
        let Some(value) = headers.get("authorization") else {
            return Decision::deny(401, "missing_token", "missing bearer token");
        };
        let Some(token) = bearer(value) else {
            return Decision::deny(401, "malformed", "authorization is not a Bearer token");
        };
        match validate_jwt_svid(token, &self.audience, &bundles, &self.trust_domains) {
            Ok(svid) if self.allow_ids.is_empty() || self.allow_ids.contains(svid.spiffe_id()) => {
                Decision::Allow {
                    set: vec![(SPIFFE_ID_HEADER, svid.spiffe_id().to_string())],
                    reason: "valid",
                }
            }
            Ok(svid) => Decision::deny(
                403,
                "spiffe_id_not_allowed",
                format!("SPIFFE ID {} is not allowed", svid.spiffe_id()),
            ),
            Err(e) if e.is_policy_refusal() => Decision::deny(403, e.label(), e.to_string()),
            Err(e) => Decision::deny(401, e.label(), e.to_string()),
        }
    }

    /// Ready once JWT bundles have arrived.
    pub fn ready(&self) -> Result<(), String> {
        match self.bundles.current() {
            Some(b) if !b.is_empty() => Ok(()),
            _ => Err("no JWT bundles yet".to_owned()),
        }
    }
}

/// The token after a case-insensitive `Bearer ` scheme (RFC 6750 §2.1), trimmed.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

// === The gRPC service ===

/// One mode's decider.
#[derive(Debug)]
pub enum Checker {
    /// `jwt_injection`.
    Inject(Injector),
    /// `jwt_svid_validator`.
    Validate(Validator),
}

impl Checker {
    /// The mode.
    pub fn mode(&self) -> Mode {
        match self {
            Self::Inject(_) => Mode::Injection,
            Self::Validate(_) => Mode::Validator,
        }
    }

    /// Readiness for `/readyz` and gRPC health.
    pub fn ready(&self) -> Result<(), String> {
        match self {
            Self::Inject(i) => i.ready(),
            Self::Validate(v) => v.ready(),
        }
    }

    /// Decides one request.
    pub async fn decide(&self, request: &CheckRequest) -> Decision {
        let headers = request_headers(request);
        let headers = &*headers;
        match self {
            Self::Inject(i) => {
                let authority = request
                    .attributes
                    .as_ref()
                    .and_then(|a| a.request.as_ref())
                    .and_then(|r| r.http.as_ref())
                    .map_or("", |h| h.host.as_str());
                i.decide(headers, authority).await
            }
            Self::Validate(v) => v.decide(headers),
        }
    }
}

/// The request headers, lower-case. Envoy sends them in `headers`, or in `header_map` when the
/// filter sets `encode_raw_headers` (values then in `raw_value`); repeated keys are joined with
/// `,` as Envoy does for `headers`.
fn request_headers(request: &CheckRequest) -> std::borrow::Cow<'_, HashMap<String, String>> {
    let http = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let Some(http) = http else {
        return std::borrow::Cow::Owned(HashMap::new());
    };
    let Some(raw) = http.header_map.as_ref().filter(|_| http.headers.is_empty()) else {
        return std::borrow::Cow::Borrowed(&http.headers);
    };
    let mut map: HashMap<String, String> = HashMap::new();
    for h in &raw.headers {
        let value = if h.raw_value.is_empty() {
            h.value.clone()
        } else {
            String::from_utf8_lossy(&h.raw_value).into_owned()
        };
        map.entry(h.key.to_ascii_lowercase())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    std::borrow::Cow::Owned(map)
}

/// The `envoy.service.auth.v3.Authorization` service.
#[derive(Debug, Clone)]
pub struct AuthzService {
    checker: Arc<Checker>,
    metrics: Arc<Metrics>,
}

impl AuthzService {
    /// Serves `checker`, recording into `metrics`.
    pub fn new(checker: Arc<Checker>, metrics: Arc<Metrics>) -> Self {
        Self { checker, metrics }
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let start = Instant::now();
        let decision = self.checker.decide(request.get_ref()).await;
        self.metrics
            .record(self.checker.mode(), &decision, start.elapsed());
        if let Decision::Deny { status, reason, .. } = &decision {
            tracing::debug!(status, reason, "denied");
        }
        Ok(tonic::Response::new(to_check_response(decision)))
    }
}

/// Maps a decision to Envoy's response: OK with header mutations, or a denial carrying the
/// HTTP status, a one-line body, and for 401 `www-authenticate` (RFC 6750 §3).
pub fn to_check_response(decision: Decision) -> CheckResponse {
    let mut response = CheckResponse::new();
    match decision {
        Decision::Allow { set, .. } => {
            let mut ok = OkHttpResponseBuilder::new();
            for (name, value) in set {
                ok.add_header(
                    name,
                    value,
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
            }
            response
                .set_status(tonic::Status::ok(""))
                .set_http_response(ok);
        }
        Decision::Deny { status, body, .. } => {
            let mut denied = DeniedHttpResponseBuilder::new();
            denied
                .set_http_status(http_status(status))
                .set_body(format!("{body}\n"))
                .add_header(
                    "content-type",
                    "text/plain",
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
            if status == 401 {
                denied.add_header(
                    "www-authenticate",
                    "Bearer error=\"invalid_token\"",
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
            }
            let grpc = if status == 503 {
                tonic::Status::unavailable(body)
            } else {
                tonic::Status::permission_denied(body)
            };
            response.set_status(grpc).set_http_response(denied);
        }
    }
    response
}

fn http_status(code: u16) -> HttpStatusCode {
    match code {
        401 => HttpStatusCode::Unauthorized,
        403 => HttpStatusCode::Forbidden,
        _ => HttpStatusCode::ServiceUnavailable,
    }
}

#[cfg(test)]
#[path = "authz_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_strict() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer   abc "), Some("abc"));
        assert_eq!(bearer("BEARER abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }

    #[test]
    fn debug_never_prints_the_stamped_token() {
        let d = Decision::Allow {
            set: vec![("authorization", "Bearer eyJsecret.payload.sig".into())],
            reason: "stamped",
        };
        let printed = format!("{d:?}");
        assert!(!printed.contains("eyJ"), "{printed}");
        assert!(printed.contains("authorization"));
    }

    #[test]
    fn raw_header_map_is_read_when_headers_is_empty() {
        use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
        use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
        let hv = |k: &str, v: &[u8]| HeaderValue {
            key: k.into(),
            value: String::new(),
            raw_value: v.to_vec(),
        };
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    http: Some(attribute_context::HttpRequest {
                        header_map: Some(HeaderMap {
                            headers: vec![
                                hv("Authorization", b"Bearer a"),
                                hv("x-a", b"1"),
                                hv("x-a", b"2"),
                            ],
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let headers = request_headers(&request);
        assert_eq!(headers["authorization"], "Bearer a");
        assert_eq!(headers["x-a"], "1,2");
    }

    #[test]
    fn ports_are_stripped_only_when_present() {
        assert_eq!(strip_port("api.internal:8443"), "api.internal");
        assert_eq!(strip_port("api.internal"), "api.internal");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn denial_carries_status_body_and_challenge() {
        let r = to_check_response(Decision::deny(401, "expired", "token has expired"));
        assert_eq!(
            r.status.as_ref().unwrap().code,
            tonic::Code::PermissionDenied as i32
        );
        let Some(envoy_types::ext_authz::v3::pb::HttpResponse::DeniedResponse(d)) = r.http_response
        else {
            panic!("denied response expected");
        };
        assert_eq!(d.status.unwrap().code, HttpStatusCode::Unauthorized as i32);
        assert_eq!(d.body, "token has expired\n");
        assert!(
            d.headers
                .iter()
                .any(|h| h.header.as_ref().unwrap().key == "www-authenticate")
        );

        let r = to_check_response(Decision::Allow {
            set: vec![("x-spiffe-id", "spiffe://example.org/a".into())],
            reason: "valid",
        });
        assert_eq!(r.status.unwrap().code, 0);
        let Some(envoy_types::ext_authz::v3::pb::HttpResponse::OkResponse(ok)) = r.http_response
        else {
            panic!("ok response expected");
        };
        let h = ok.headers[0].clone();
        assert_eq!(
            h.append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
        assert_eq!(h.header.unwrap().value, "spiffe://example.org/a");
    }
}
