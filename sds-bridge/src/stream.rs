//! The state-of-the-world SDS state machine of one Envoy stream (`docs/protocols.md#sds-protocol`),
//! with no I/O: the service feeds it requests and catalog updates and sends whatever it returns.
//!
//! Rules it implements:
//! - `version_info` increases with every response; every response has a fresh nonce;
//! - a request whose `response_nonce` is not the last one sent is stale and ignored;
//! - the `node` is kept from the first request that has one (Istio sends it only once);
//! - only subscribed names are pushed, and only when their content changed since the last push
//!   on this stream (so a NACK is never answered with the same secret again: no push loop);
//! - an unknown or not-yet-available name is logged once and answered with nothing until it
//!   exists; the stream and its other names carry on.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::value::Kind;

use workload_client::JwtKey;

use crate::catalog::{Catalog, Rendered, ValidationMode};
use crate::limits::Refusal;
use crate::names::{NameError, ResourceName};

/// The only resource type SDS serves.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The node metadata key (SPIRE's) with which one Envoy asks for `trusted_ca` validation
/// contexts instead of the SPIFFE validator.
pub const DISABLE_SPIFFE_VALIDATION_KEY: &str = "disable_spiffe_cert_validation";

/// Where JWT-SVID secrets come from: the shared per-audience cache in the bridge.
pub trait JwtSource {
    /// Whether this workload's policy lets Envoy have tokens for `key` (audience allow-list).
    fn allowed(&self, key: &JwtKey) -> bool;
    /// The current token for `key` as a generic secret named `name`, if one is valid now.
    fn secret(&self, name: &str, key: &JwtKey) -> Option<Rendered>;
}

/// A source with no tokens, for streams that do not ask for any.
#[derive(Debug)]
pub struct NoJwt;

impl JwtSource for NoJwt {
    fn allowed(&self, _: &JwtKey) -> bool {
        false
    }
    fn secret(&self, _: &str, _: &JwtKey) -> Option<Rendered> {
        None
    }
}

/// What an incoming request turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// A request with no nonce: the first one, or a new subscription list before any response.
    Initial,
    /// Envoy applied our last response. `latency` runs from the snapshot (or request) that
    /// caused the push to this ACK.
    Ack {
        /// Time from the cause of the push to its ACK.
        latency: Duration,
    },
    /// Envoy rejected our last response.
    Nack {
        /// Envoy's `error_detail.message`.
        detail: String,
    },
    /// A reply to a response that is no longer the latest one: ignored.
    Stale,
    /// A request for another resource type: ignored.
    WrongType(String),
}

/// The outcome of one request: what it was, and the response to send, if any.
pub struct Handled {
    /// What the request was.
    pub kind: RequestKind,
    /// A response to send now.
    pub response: Option<DiscoveryResponse>,
    /// Names the per-request limits refused, by reason (for the refusal metric and its log).
    pub refused: Vec<(Refusal, usize)>,
}

// The response carries private keys and tokens: Debug shows only its shape.
impl std::fmt::Debug for Handled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handled")
            .field("kind", &self.kind)
            .field(
                "response",
                &self
                    .response
                    .as_ref()
                    .map(|r| (r.version_info.as_str(), r.resources.len())),
            )
            .field("refused", &self.refused)
            .finish()
    }
}

pub use crate::limits::{MAX_JWT_KEYS, MAX_NAMES};
/// Highest `version_info` taken over from a reconnecting Envoy. Versions are per-stream
/// counters that start near zero, so anything above this was not sent by a bridge; leaving
/// half the range above it means counting up from it can never overflow.
pub const MAX_PLAUSIBLE_VERSION: u64 = u64::MAX / 2;

#[derive(Debug, Default)]
enum Subscription {
    /// No request yet.
    #[default]
    Unset,
    /// The first request named nothing: everything, under canonical names (as SPIRE does).
    Wildcard,
    /// These names, parsed once.
    Names(BTreeMap<String, Result<ResourceName, NameError>>),
}

/// One stream's state.
#[derive(Debug)]
pub struct SdsStream {
    mode: ValidationMode,
    node: Option<Node>,
    subscription: Subscription,
    /// Fingerprint of what was last pushed per name.
    sent: HashMap<String, u64>,
    version: u64,
    last_nonce: Option<String>,
    /// What caused the last push, for the ACK latency.
    last_push_cause: Option<Instant>,
    /// Names already reported as unknown or unavailable on this stream.
    reported: HashSet<String>,
}

// === impl SdsStream ===

impl SdsStream {
    /// A new stream whose validation contexts use `default_mode` unless the node asks
    /// otherwise.
    pub fn new(default_mode: ValidationMode) -> Self {
        Self {
            mode: default_mode,
            node: None,
            subscription: Subscription::Unset,
            sent: HashMap::new(),
            version: 0,
            last_nonce: None,
            last_push_cause: None,
            reported: HashSet::new(),
        }
    }

    /// The node of the first request that carried one.
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// The validation mode in force.
    pub fn mode(&self) -> ValidationMode {
        self.mode
    }

    /// Handles one request; `catalog` is the current X.509 snapshot, if there is one yet.
    pub fn on_request(
        &mut self,
        req: DiscoveryRequest,
        catalog: Option<&Catalog>,
        jwt: &dyn JwtSource,
    ) -> Handled {
        if !req.type_url.is_empty() && req.type_url != SECRET_TYPE_URL {
            return Handled {
                kind: RequestKind::WrongType(req.type_url),
                response: None,
                refused: Vec::new(),
            };
        }
        if self.node.is_none()
            && let Some(node) = req.node
        {
            if disables_spiffe_validation(&node) {
                self.mode = ValidationMode::TrustedCa;
            }
            self.node = Some(node);
        }

        let kind = match &self.last_nonce {
            Some(sent) if !req.response_nonce.is_empty() => {
                if *sent != req.response_nonce {
                    return Handled {
                        kind: RequestKind::Stale,
                        response: None,
                        refused: Vec::new(),
                    };
                }
                match req.error_detail {
                    Some(status) => RequestKind::Nack {
                        detail: status.message,
                    },
                    None => RequestKind::Ack {
                        latency: self
                            .last_push_cause
                            .map(|at| at.elapsed())
                            .unwrap_or_default(),
                    },
                }
            }
            _ => {
                // A reconnecting Envoy reports the version it holds: continue above it so
                // versions keep increasing across streams. A value no bridge could have sent
                // (a client can put anything here, e.g. u64::MAX) is ignored, so the count
                // never overflows; the secrets are served either way.
                match req.version_info.parse::<u64>() {
                    Ok(v) if v <= MAX_PLAUSIBLE_VERSION => self.version = self.version.max(v),
                    Ok(v) => tracing::debug!(
                        version = v,
                        "ignoring an implausible version_info; counting from this stream's own"
                    ),
                    Err(_) => {}
                }
                RequestKind::Initial
            }
        };

        let refused = self.subscribe(req.resource_names);
        let response = self.push(catalog, jwt, Instant::now());
        Handled {
            kind,
            response,
            refused,
        }
    }

    /// A new X.509 snapshot: the response pushing whatever changed among the subscribed names.
    pub fn on_catalog(
        &mut self,
        catalog: &Catalog,
        jwt: &dyn JwtSource,
    ) -> Option<DiscoveryResponse> {
        self.push(Some(catalog), jwt, catalog.received)
    }

    /// A JWT-SVID was refreshed: the response pushing whichever subscribed token changed.
    pub fn on_jwt(
        &mut self,
        catalog: Option<&Catalog>,
        jwt: &dyn JwtSource,
    ) -> Option<DiscoveryResponse> {
        self.push(catalog, jwt, Instant::now())
    }

    /// The JWT-SVID keys this stream subscribes to and may have, so the service can watch
    /// their refreshes.
    pub fn jwt_keys(&self, jwt: &dyn JwtSource) -> Vec<JwtKey> {
        match &self.subscription {
            Subscription::Names(names) => names
                .values()
                .filter_map(|n| match n {
                    Ok(ResourceName::JwtSvid(key)) if jwt.allowed(key) => Some(key.clone()),
                    _ => None,
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Takes the request's names as the subscription, within the per-request limits; returns
    /// what the limits refused (the caller counts and logs it once, not per name or request).
    fn subscribe(&mut self, names: Vec<String>) -> Vec<(Refusal, usize)> {
        let mut refused = Vec::new();
        match (&self.subscription, names.is_empty()) {
            // xDS: an empty first request is a wildcard subscription.
            (Subscription::Unset, true) => self.subscription = Subscription::Wildcard,
            (Subscription::Wildcard, true) => {}
            _ => {
                refused.push((
                    Refusal::NamesPerRequest,
                    names.len().saturating_sub(MAX_NAMES),
                ));
                let mut parsed = BTreeMap::new();
                // Distinct keys: `x,y` and `y,x` (or a repeated name) are one key, one token.
                let mut jwt_keys = BTreeSet::new();
                let mut over_jwt_limit = Vec::new();
                for name in names.into_iter().take(MAX_NAMES) {
                    if parsed.contains_key(&name) {
                        continue; // a repeated name must not overwrite what it was given
                    }
                    // Reuse what was parsed before, but not a refusal: the limit may allow
                    // the name in this request.
                    let value = match &self.subscription {
                        Subscription::Names(old) => old.get(&name).filter(|v| v.is_ok()).cloned(),
                        _ => None,
                    }
                    .unwrap_or_else(|| ResourceName::parse(&name));
                    let value = match value {
                        Ok(ResourceName::JwtSvid(key))
                            if jwt_keys.len() >= MAX_JWT_KEYS && !jwt_keys.contains(&key) =>
                        {
                            over_jwt_limit.push(name.clone());
                            Err(NameError::MalformedJwtSvid(format!(
                                "more than {MAX_JWT_KEYS} JWT-SVID keys on one stream"
                            )))
                        }
                        Ok(ResourceName::JwtSvid(key)) => {
                            jwt_keys.insert(key.clone());
                            Ok(ResourceName::JwtSvid(key))
                        }
                        other => other,
                    };
                    parsed.insert(name, value);
                }
                // A name dropped and asked for again must be pushed again.
                self.sent.retain(|name, _| parsed.contains_key(name));
                self.reported.retain(|name| parsed.contains_key(name));
                // Refused by the limit, which the caller logs once: no warning per name.
                refused.push((Refusal::JwtKeysPerRequest, over_jwt_limit.len()));
                self.reported.extend(over_jwt_limit);
                self.subscription = Subscription::Names(parsed);
            }
        }
        refused.retain(|(_, n)| *n > 0);
        refused
    }

    /// Builds a response with every subscribed secret that differs from what this stream last
    /// got, or `None` if nothing changed.
    fn push(
        &mut self,
        catalog: Option<&Catalog>,
        jwt: &dyn JwtSource,
        cause: Instant,
    ) -> Option<DiscoveryResponse> {
        let wanted: Vec<(String, Result<ResourceName, NameError>)> = match &self.subscription {
            Subscription::Unset => return None,
            Subscription::Wildcard => catalog
                .into_iter()
                .flat_map(Catalog::canonical_names)
                .map(|n| (n.to_string(), Ok(n.clone())))
                .collect(),
            Subscription::Names(names) => {
                names.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            }
        };
        let mut resources = Vec::new();
        for (name, parsed) in wanted {
            let found = match parsed {
                Err(e) => {
                    if self.reported.insert(name.clone()) {
                        tracing::warn!(resource = %name, error = %e, "ignoring unknown SDS resource name");
                    }
                    continue;
                }
                Ok(ResourceName::JwtSvid(key)) => {
                    if !jwt.allowed(&key) {
                        if self.reported.insert(name.clone()) {
                            tracing::warn!(
                                resource = %name,
                                "refusing a JWT-SVID for an audience outside --allow-jwt-audience"
                            );
                        }
                        continue;
                    }
                    jwt.secret(&name, &key).map(std::sync::Arc::new)
                }
                Ok(parsed) => catalog.and_then(|c| c.get(&parsed, self.mode).cloned()),
            };
            let Some(rendered) = found else {
                // Before the first snapshot everything is pending, and a token is pending
                // until its first fetch completes: only warn about X.509 names a snapshot
                // exists for and still does not have.
                let pending_token = name.starts_with(crate::names::JWT_SVID_PREFIX);
                if catalog.is_some() && !pending_token && self.reported.insert(name.clone()) {
                    tracing::warn!(
                        resource = %name,
                        "the workload has no such secret (yet); will push it when it appears"
                    );
                }
                continue;
            };
            if self.sent.get(&name) == Some(&rendered.fingerprint) {
                continue;
            }
            self.sent.insert(name.clone(), rendered.fingerprint);
            self.reported.remove(&name);
            resources.push(rendered.any.clone());
        }
        if resources.is_empty() {
            return None;
        }
        // Saturating: cannot overflow given MAX_PLAUSIBLE_VERSION, but a stream must never
        // panic on arithmetic a client influences.
        self.version = self.version.saturating_add(1);
        let nonce = format!("{:016x}", fastrand::u64(..));
        self.last_nonce = Some(nonce.clone());
        self.last_push_cause = Some(cause);
        Some(DiscoveryResponse {
            version_info: self.version.to_string(),
            resources,
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce,
            ..Default::default()
        })
    }
}

/// The per-request limits for a unary FetchSecrets, the same as a stream's subscription:
/// at most [`MAX_NAMES`] names, of which at most [`MAX_JWT_KEYS`] JWT-SVIDs. A stream ignores
/// the excess and serves the rest; a unary call is refused whole (with how many were too many),
/// before any token is fetched, since a partial answer would be an error anyway.
pub fn check_fetch_limits(req: &DiscoveryRequest) -> Result<(), (Refusal, usize)> {
    let names = req.resource_names.len();
    if names > MAX_NAMES {
        return Err((Refusal::NamesPerRequest, names - MAX_NAMES));
    }
    // Distinct keys, as a stream counts them; names that do not parse are answered as
    // unknown by the fetch itself.
    let jwt_keys: BTreeSet<_> = req
        .resource_names
        .iter()
        .filter_map(|n| match ResourceName::parse(n) {
            Ok(ResourceName::JwtSvid(key)) => Some(key),
            _ => None,
        })
        .collect();
    if jwt_keys.len() > MAX_JWT_KEYS {
        return Err((Refusal::JwtKeysPerRequest, jwt_keys.len() - MAX_JWT_KEYS));
    }
    Ok(())
}

/// Answers a unary FetchSecrets: every requested name the catalog (or the JWT cache) has, with
/// no version and no nonce. Returns the names it could not serve as the error.
pub fn fetch(
    req: &DiscoveryRequest,
    catalog: &Catalog,
    jwt: &dyn JwtSource,
    default_mode: ValidationMode,
) -> Result<DiscoveryResponse, Vec<String>> {
    let mode = match &req.node {
        Some(node) if disables_spiffe_validation(node) => ValidationMode::TrustedCa,
        _ => default_mode,
    };
    let mut missing = Vec::new();
    let mut resources = Vec::new();
    if req.resource_names.is_empty() {
        for name in catalog.canonical_names() {
            if let Some(r) = catalog.get(name, mode) {
                resources.push(r.any.clone());
            }
        }
    }
    for name in &req.resource_names {
        let found = match ResourceName::parse(name) {
            Ok(ResourceName::JwtSvid(key)) if jwt.allowed(&key) => {
                jwt.secret(name, &key).map(|r| r.any)
            }
            Ok(ResourceName::JwtSvid(_)) | Err(_) => None,
            Ok(n) => catalog.get(&n, mode).map(|r| r.any.clone()),
        };
        match found {
            Some(any) => resources.push(any),
            None => missing.push(name.clone()),
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    Ok(DiscoveryResponse {
        resources,
        type_url: SECRET_TYPE_URL.to_owned(),
        ..Default::default()
    })
}

fn disables_spiffe_validation(node: &Node) -> bool {
    let Some(value) = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(DISABLE_SPIFFE_VALIDATION_KEY))
    else {
        return false;
    };
    match &value.kind {
        Some(Kind::BoolValue(b)) => *b,
        Some(Kind::StringValue(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
    use envoy_types::pb::google::protobuf::{Struct, Value};
    use envoy_types::pb::google::rpc::Status;
    use prost::Message as _;

    use super::*;
    use crate::catalog::RootCaBundles;
    use crate::testing::{authority, snapshot};

    fn req(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: version.to_owned(),
            resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            response_nonce: nonce.to_owned(),
            ..Default::default()
        }
    }

    fn istio_node(metadata: &[(&str, Kind)]) -> Node {
        Node {
            id: "sidecar~10.0.0.1~web.default~default.svc.cluster.local".to_owned(),
            metadata: Some(Struct {
                fields: metadata
                    .iter()
                    .map(|(k, v)| {
                        (
                            (*k).to_owned(),
                            Value {
                                kind: Some(v.clone()),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    fn names_of(resp: &DiscoveryResponse) -> Vec<String> {
        names(resp)
    }

    fn names(resp: &DiscoveryResponse) -> Vec<String> {
        resp.resources
            .iter()
            .map(|a| Secret::decode(a.value.as_slice()).unwrap().name)
            .collect()
    }

    /// The X.509-only paths, with no JWT source.
    trait X509Only {
        fn on_request_x(&mut self, r: DiscoveryRequest, c: Option<&Catalog>) -> Handled;
        fn on_catalog_x(&mut self, c: &Catalog) -> Option<DiscoveryResponse>;
    }

    impl X509Only for SdsStream {
        fn on_request_x(&mut self, r: DiscoveryRequest, c: Option<&Catalog>) -> Handled {
            self.on_request(r, c, &NoJwt)
        }
        fn on_catalog_x(&mut self, c: &Catalog) -> Option<DiscoveryResponse> {
            self.on_catalog(c, &NoJwt)
        }
    }

    /// Tokens by audience list, and an optional audience allow-list.
    #[derive(Default)]
    struct Tokens {
        tokens: std::collections::HashMap<JwtKey, String>,
        allow: Option<Vec<String>>,
    }

    impl JwtSource for Tokens {
        fn allowed(&self, key: &JwtKey) -> bool {
            self.allow
                .as_ref()
                .is_none_or(|a| key.audiences().iter().all(|k| a.contains(k)))
        }
        fn secret(&self, name: &str, key: &JwtKey) -> Option<Rendered> {
            self.tokens
                .get(key)
                .map(|t| crate::jwt::generic_secret(name, t))
        }
    }

    fn token_of(resp: &DiscoveryResponse, name: &str) -> String {
        use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
        for a in &resp.resources {
            let s = Secret::decode(a.value.as_slice()).unwrap();
            if s.name == name {
                let Some(secret::Type::GenericSecret(g)) = s.r#type else {
                    panic!("{name} is not a generic secret");
                };
                let Some(Specifier::InlineString(t)) = g.secret.unwrap().specifier else {
                    panic!("token not inline");
                };
                return t;
            }
        }
        panic!("{name} not in the response");
    }

    #[test]
    fn jwt_svid_names_are_served_without_x509_and_pushed_on_refresh() {
        let key = |a: &[&str]| JwtKey::new(a.iter().copied()).unwrap();
        let mut tokens = Tokens::default();
        tokens
            .tokens
            .insert(key(&["backend"]), "token-1".to_owned());
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        let names = ["jwt-svid:backend", "jwt-svid:other", "jwt-svid:a,,b"];
        let r1 = s
            .on_request(req(&names, "", ""), None, &tokens)
            .response
            .unwrap();
        assert_eq!(token_of(&r1, "jwt-svid:backend"), "token-1");
        assert_eq!(names_of(&r1), ["jwt-svid:backend"]);
        assert_eq!(s.jwt_keys(&tokens), [key(&["backend"]), key(&["other"])]);

        // The same token again: nothing. A refreshed one, and the other audience's first.
        assert!(s.on_jwt(None, &tokens).is_none());
        tokens
            .tokens
            .insert(key(&["backend"]), "token-2".to_owned());
        tokens.tokens.insert(key(&["other"]), "token-x".to_owned());
        let r2 = s.on_jwt(None, &tokens).unwrap();
        assert_eq!(token_of(&r2, "jwt-svid:backend"), "token-2");
        assert_eq!(token_of(&r2, "jwt-svid:other"), "token-x");
        assert_eq!(r2.version_info, "2");
    }

    #[test]
    fn jwt_keys_per_stream_are_capped_and_deduplicated() {
        let tokens = Tokens::default();
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        let mut names: Vec<String> = (0..40).map(|i| format!("jwt-svid:aud-{i}")).collect();
        names.push("jwt-svid:x,y".to_owned());
        names.push("jwt-svid:y,x".to_owned());
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        s.on_request(req(&refs, "", ""), None, &tokens);
        assert_eq!(s.jwt_keys(&tokens).len(), MAX_JWT_KEYS);
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        s.on_request(
            req(&["jwt-svid:x,y", "jwt-svid:y,x"], "", ""),
            None,
            &tokens,
        );
        assert_eq!(
            s.jwt_keys(&tokens).len(),
            1,
            "one key for the same audience set"
        );
    }

    #[test]
    fn names_over_the_per_request_limits_are_reported_as_refusals_once() {
        let tokens = Tokens::default();
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        // 5,000 audiences: the first 256 names are considered, 32 of them become keys.
        let names: Vec<String> = (0..5000).map(|i| format!("jwt-svid:aud-{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let h = s.on_request(req(&refs, "", ""), None, &tokens);
        assert_eq!(
            h.refused,
            [
                (Refusal::NamesPerRequest, 5000 - MAX_NAMES),
                (Refusal::JwtKeysPerRequest, MAX_NAMES - MAX_JWT_KEYS)
            ]
        );
        assert_eq!(s.jwt_keys(&tokens).len(), MAX_JWT_KEYS);
        // A later, smaller subscription gets a previously refused name.
        let h = s.on_request(req(&["jwt-svid:aud-4999"], "", ""), None, &tokens);
        assert!(h.refused.is_empty());
        assert_eq!(s.jwt_keys(&tokens), [JwtKey::new(["aud-4999"]).unwrap()]);
    }

    #[test]
    fn fetch_limits_match_the_stream_limits() {
        let names = |n: usize, prefix: &str| -> Vec<String> {
            (0..n).map(|i| format!("{prefix}{i}")).collect()
        };
        let request = |names: Vec<String>| DiscoveryRequest {
            resource_names: names,
            ..Default::default()
        };
        assert_eq!(
            check_fetch_limits(&request(names(MAX_NAMES, "spiffe://td/"))),
            Ok(())
        );
        assert_eq!(
            check_fetch_limits(&request(names(5000, "jwt-svid:a"))),
            Err((Refusal::NamesPerRequest, 5000 - MAX_NAMES))
        );
        assert_eq!(
            check_fetch_limits(&request(names(MAX_JWT_KEYS, "jwt-svid:a"))),
            Ok(())
        );
        assert_eq!(
            check_fetch_limits(&request(names(MAX_JWT_KEYS + 3, "jwt-svid:a"))),
            Err((Refusal::JwtKeysPerRequest, 3))
        );
        // One key under many spellings is one key.
        let mut same = names(MAX_JWT_KEYS, "jwt-svid:a");
        same.extend(["jwt-svid:x,y".to_owned(), "jwt-svid:y,x".to_owned()]);
        same.extend(std::iter::repeat_n("jwt-svid:a0".to_owned(), 50));
        assert_eq!(
            check_fetch_limits(&request(same)),
            Err((Refusal::JwtKeysPerRequest, 1))
        );
    }

    #[test]
    fn audiences_outside_the_allow_list_are_never_served() {
        let mut tokens = Tokens {
            allow: Some(vec!["backend".to_owned()]),
            ..Default::default()
        };
        tokens
            .tokens
            .insert(JwtKey::new(["secret-service"]).unwrap(), "t".to_owned());
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        let h = s.on_request(req(&["jwt-svid:secret-service"], "", ""), None, &tokens);
        assert!(h.response.is_none());
        assert!(s.jwt_keys(&tokens).is_empty(), "not even fetched");
    }

    struct World {
        own: dev_agent::Authority,
        generation: u64,
    }

    impl World {
        fn new() -> Self {
            Self {
                own: authority("example.org"),
                generation: 0,
            }
        }
        /// A fresh SVID (a rotation) with the same bundle.
        fn rotate(&mut self) -> Catalog {
            self.generation += 1;
            let ctx = snapshot(&self.own, &["spiffe://example.org/web"], &[]);
            Catalog::build(&ctx, RootCaBundles::Own, self.generation)
        }
    }

    #[test]
    fn istio_shape_node_once_then_acks_and_rotation_pushes_only_the_changed_secret() {
        let mut w = World::new();
        let cat = w.rotate();
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        let mut first = req(&["default", "ROOTCA"], "", "");
        first.node = Some(istio_node(&[]));
        let h = s.on_request_x(first, Some(&cat));
        assert_eq!(h.kind, RequestKind::Initial);
        let r1 = h.response.unwrap();
        assert_eq!(names(&r1), ["ROOTCA", "default"]);
        assert_eq!(r1.version_info, "1");
        assert_eq!(r1.type_url, SECRET_TYPE_URL);

        // ACK without node (Istio sends it once): the node is kept, nothing is re-sent.
        let h = s.on_request_x(req(&["default", "ROOTCA"], "1", &r1.nonce), Some(&cat));
        assert!(matches!(h.kind, RequestKind::Ack { .. }));
        assert!(h.response.is_none());
        assert!(s.node().unwrap().id.starts_with("sidecar~"));

        // Rotation: only `default` changed.
        let cat2 = w.rotate();
        let r2 = s.on_catalog_x(&cat2).unwrap();
        assert_eq!(names(&r2), ["default"]);
        assert_eq!(r2.version_info, "2");
        assert_ne!(r2.nonce, r1.nonce);
        // The same snapshot again pushes nothing.
        assert!(s.on_catalog_x(&cat2).is_none());
    }

    #[test]
    fn requests_before_the_first_svid_are_answered_when_it_arrives() {
        let mut w = World::new();
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        let h = s.on_request_x(req(&["default"], "", ""), None);
        assert!(h.response.is_none());
        let r = s.on_catalog_x(&w.rotate()).unwrap();
        assert_eq!(names(&r), ["default"]);
    }

    #[test]
    fn stale_replies_are_ignored() {
        let mut w = World::new();
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        let r1 = s
            .on_request_x(req(&["default"], "", ""), Some(&w.rotate()))
            .response
            .unwrap();
        let r2 = s.on_catalog_x(&w.rotate()).unwrap();
        // Envoy's ACK of r1 crosses r2 on the wire: stale, even if it changes names.
        let h = s.on_request_x(req(&["default", "ROOTCA"], "1", &r1.nonce), None);
        assert_eq!(h.kind, RequestKind::Stale);
        assert!(h.response.is_none());
        let h = s.on_request_x(req(&["default"], "2", &r2.nonce), None);
        assert!(matches!(h.kind, RequestKind::Ack { .. }));
    }

    #[test]
    fn a_nack_is_reported_and_not_answered_with_the_same_secret() {
        let mut w = World::new();
        let cat = w.rotate();
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        let r1 = s
            .on_request_x(req(&["default"], "", ""), Some(&cat))
            .response
            .unwrap();
        let mut nack = req(&["default"], "", &r1.nonce);
        nack.error_detail = Some(Status {
            code: 3,
            message: "Failed to load certificate chain".to_owned(),
            details: Vec::new(),
        });
        let h = s.on_request_x(nack.clone(), Some(&cat));
        assert_eq!(
            h.kind,
            RequestKind::Nack {
                detail: "Failed to load certificate chain".to_owned()
            }
        );
        assert!(h.response.is_none(), "no push loop on NACK");
        // The next rotation is pushed normally.
        assert!(s.on_catalog_x(&w.rotate()).is_some());
    }

    #[test]
    fn unknown_names_do_not_disturb_the_others() {
        let mut w = World::new();
        let cat = w.rotate();
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        let h = s.on_request_x(
            req(
                &[
                    "default",
                    "bogus",
                    "spiffe://other.test/x",
                    "spiffe://other.test",
                ],
                "",
                "",
            ),
            Some(&cat),
        );
        let r = h.response.unwrap();
        assert_eq!(names(&r), ["default"]);
        // An ACK with the unknown names still listed: nothing more, no spin.
        let h = s.on_request_x(
            req(
                &[
                    "default",
                    "bogus",
                    "spiffe://other.test/x",
                    "spiffe://other.test",
                ],
                "1",
                &r.nonce,
            ),
            Some(&cat),
        );
        assert!(h.response.is_none());
    }

    #[test]
    fn subscription_changes_push_new_names_and_re_added_names_again() {
        let mut w = World::new();
        let cat = w.rotate();
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        let r1 = s
            .on_request_x(req(&["default"], "", ""), Some(&cat))
            .response
            .unwrap();
        let r2 = s
            .on_request_x(req(&["default", "ROOTCA"], "1", &r1.nonce), Some(&cat))
            .response
            .unwrap();
        assert_eq!(names(&r2), ["ROOTCA"]);
        let r3 = s.on_request_x(req(&["ROOTCA"], "2", &r2.nonce), Some(&cat));
        assert!(r3.response.is_none());
        let r3_nonce = r2.nonce.clone();
        let r4 = s
            .on_request_x(req(&["ROOTCA", "default"], "2", &r3_nonce), Some(&cat))
            .response
            .unwrap();
        assert_eq!(names(&r4), ["default"]);
    }

    #[test]
    fn node_metadata_selects_trusted_ca() {
        let mut w = World::new();
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        let mut first = req(&["ROOTCA"], "", "");
        first.node = Some(istio_node(&[(
            DISABLE_SPIFFE_VALIDATION_KEY,
            Kind::BoolValue(true),
        )]));
        let r = s.on_request_x(first, Some(&w.rotate())).response.unwrap();
        let secret = Secret::decode(r.resources[0].value.as_slice()).unwrap();
        let Some(secret::Type::ValidationContext(vc)) = secret.r#type else {
            panic!("not a validation context");
        };
        assert!(vc.trusted_ca.is_some() && vc.custom_validator_config.is_none());
    }

    #[test]
    fn wildcard_first_request_gets_canonical_names() {
        let mut w = World::new();
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        let r = s
            .on_request_x(req(&[], "", ""), Some(&w.rotate()))
            .response
            .unwrap();
        assert_eq!(
            names(&r),
            ["spiffe://example.org", "spiffe://example.org/web"]
        );
    }

    #[test]
    fn versions_continue_above_what_a_reconnecting_envoy_holds() {
        let mut w = World::new();
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        let r = s
            .on_request_x(req(&["default"], "41", ""), Some(&w.rotate()))
            .response
            .unwrap();
        assert_eq!(r.version_info, "42");
    }

    #[test]
    fn an_implausible_version_from_envoy_is_ignored_and_the_secrets_still_served() {
        let mut w = World::new();
        let cat = w.rotate();
        // u64::MAX overflowed the count (a panic in debug builds, the stream ending with no
        // response); now the stream counts from its own versions instead.
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        let r = s
            .on_request_x(req(&["default"], &u64::MAX.to_string(), ""), Some(&cat))
            .response
            .unwrap();
        assert_eq!(names(&r), ["default"]);
        assert_eq!(r.version_info, "1");
        assert_eq!(s.on_catalog_x(&w.rotate()).unwrap().version_info, "2");
        // The highest plausible value is still continued above.
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        let r = s
            .on_request_x(
                req(&["default"], &MAX_PLAUSIBLE_VERSION.to_string(), ""),
                Some(&cat),
            )
            .response
            .unwrap();
        assert_eq!(r.version_info, (MAX_PLAUSIBLE_VERSION + 1).to_string());
    }

    #[test]
    fn other_types_are_ignored() {
        let mut s = SdsStream::new(ValidationMode::Spiffe);
        let mut r = req(&["default"], "", "");
        r.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_owned();
        assert!(matches!(
            s.on_request_x(r, None).kind,
            RequestKind::WrongType(_)
        ));
    }

    #[test]
    fn fetch_answers_known_names_and_lists_missing_ones() {
        let mut w = World::new();
        let cat = w.rotate();
        let ok = fetch(
            &req(&["default", "ROOTCA"], "", ""),
            &cat,
            &NoJwt,
            ValidationMode::Spiffe,
        )
        .unwrap();
        assert_eq!(names(&ok), ["default", "ROOTCA"]);
        assert!(ok.nonce.is_empty());
        let missing = fetch(
            &req(&["default", "nope"], "", ""),
            &cat,
            &NoJwt,
            ValidationMode::Spiffe,
        )
        .unwrap_err();
        assert_eq!(missing, ["nope"]);
    }
}
