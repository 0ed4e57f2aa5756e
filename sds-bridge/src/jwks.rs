//! A loopback JWKS endpoint for Envoy's `jwt_authn` filter, fed by the Workload API's
//! `FetchJWTBundles` stream (`docs/protocols.md#jwt-bundles`, `docs/protocols.md#jwt-authn`):
//! `GET /jwks/<trust-domain>` answers that trust domain's JWT-SVID signing keys, one document
//! per trust domain (own and federated).
//!
//! One JWKS per trust domain is the point: `jwt_authn` does not tie a key to the `sub`'s trust
//! domain (envoy#31455), so one provider per trust domain, each with its own JWKS and a
//! `subjects: {prefix: "spiffe://<td>/"}`, is what stops trust domain B's key from vouching for
//! a SPIFFE ID of trust domain A. [`crate::envoy_config`] prints that configuration.
//!
//! - Documents are rendered once per bundle snapshot and shared by every request; a request is
//!   a map lookup.
//! - Only public JWT-SVID keys are served: a key whose `use` is something else (`x509-svid`)
//!   or that carries private members is dropped; `use` is rewritten to `sig` (RFC 7517 §4.2),
//!   as SPIRE's OIDC discovery provider does.
//! - `ETag` is a hash of the body and `Cache-Control: no-cache`: a client that revalidates
//!   (`If-None-Match`) gets `304` until the keys change. Envoy's `remote_jwks` does not send
//!   conditional requests; it refetches the whole document every `cache_duration − 5 s` with
//!   `async_fetch`, which from loopback memory costs about a millisecond.
//! - A trust domain without a bundle (never federated, or federation dropped) answers a JWKS
//!   holding only a *tombstone* key: a P-256 public key whose private half was discarded at
//!   start. Envoy treats an empty JWKS or an error answer as a failed fetch and keeps the keys
//!   it had, so a revoked trust domain's keys would stay trusted; a valid document with no
//!   usable key replaces them, and every token of that trust domain fails with 401.
//! - Before the first bundle snapshot the endpoint answers 503 (Envoy retries after
//!   `failed_refetch_duration`), never a tombstone: that would look like a revocation. Until
//!   then the bridge is not ready ([`JwksEndpoint::readiness`]): Envoy has no keys, so every
//!   token would get 401, and the pod must not receive traffic yet.
//! - The same `Host` guard as the admin server (DNS rebinding).
//! - `sds_bridge_jwks_requests_total{result}` counts answers: `ok`, `not_modified`,
//!   `no_bundle` (tombstone served: a revoked or unknown trust domain), `not_ready`,
//!   `bad_name`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value, json};
use sidecar_runtime::Shutdown;
use sidecar_runtime::admin::Readiness;
use sidecar_runtime::serve::Limits;
use tokio::net::TcpListener;
use tokio::sync::watch;
use workload_client::spiffe::{JwtBundle, JwtBundleSet, TrustDomain};
use workload_client::{JwtBundleWatcher, StreamStatus};

/// The path prefix; the trust domain name follows (`/jwks/example.org`).
pub const PATH_PREFIX: &str = "/jwks/";

/// The `kid` of the tombstone key served for trust domains without a bundle.
pub const TOMBSTONE_KID: &str = "sds-bridge-no-bundle";

/// JWK members that only a private key has (RFC 7518 §6.2.2, §6.3.2, §6.4).
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

/// Why the endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// Generating the tombstone key failed (the system RNG or the crypto library).
    #[error("generating the tombstone key: {0}")]
    Tombstone(String),
}

/// One rendered JWKS document and its entity tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// The JSON body, `{"keys":[…]}`.
    pub body: Arc<str>,
    /// A strong entity tag (quoted), derived from the body.
    pub etag: String,
    /// How many keys it holds.
    pub keys: usize,
}

impl Document {
    fn new(keys: Vec<Value>) -> Self {
        let count = keys.len();
        let body = json!({ "keys": keys }).to_string();
        let hash = digest::digest(&digest::SHA256, body.as_bytes());
        let etag = hash.as_ref()[..16]
            .iter()
            .fold(String::from("\""), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
            + "\"";
        Self {
            body: body.into(),
            etag,
            keys: count,
        }
    }
}

#[cfg(test)]
impl Document {
    /// A document holding one made-up key with `kid`.
    pub(crate) fn new_for_tests(kid: &str) -> Self {
        Self::new(vec![json!({ "kty": "EC", "kid": kid })])
    }
}

/// Every trust domain's document from one bundle snapshot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Documents {
    by_trust_domain: BTreeMap<String, Document>,
}

impl Documents {
    /// Renders every bundle of `set`.
    pub fn render(set: &JwtBundleSet) -> Self {
        let by_trust_domain = set
            .iter()
            .map(|(td, bundle)| (td.to_string(), render_bundle(bundle)))
            .collect();
        Self { by_trust_domain }
    }

    /// The document of trust domain `name` (e.g. `example.org`).
    pub fn get(&self, name: &str) -> Option<&Document> {
        self.by_trust_domain.get(name)
    }

    /// Documents by trust domain name, for tests.
    #[cfg(test)]
    pub(crate) fn from_for_tests<'a>(
        entries: impl IntoIterator<Item = (&'a str, Document)>,
    ) -> Self {
        Self {
            by_trust_domain: entries
                .into_iter()
                .map(|(td, d)| (td.to_owned(), d))
                .collect(),
        }
    }

    /// The trust domains with a bundle.
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.by_trust_domain.keys().map(String::as_str)
    }
}

/// The public JWT-SVID keys of `bundle`, sorted by `kid` so equal key sets give equal bodies
/// (and ETags) whatever order the agent sent them in.
fn render_bundle(bundle: &JwtBundle) -> Document {
    let mut keys: Vec<(String, Value)> = bundle
        .jwt_authorities()
        .filter_map(|authority| {
            let Ok(Value::Object(mut jwk)) = serde_json::from_slice::<Value>(authority.jwk_json())
            else {
                return None;
            };
            let is_jwt_svid_key = jwk
                .get("use")
                .is_none_or(|u| u.as_str() == Some("jwt-svid") || u.as_str() == Some("sig"));
            // A JWT bundle never holds private keys; if one ever did, publishing it would
            // hand out the trust domain's signing key.
            let is_public = !PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m));
            if !(is_jwt_svid_key && is_public) {
                tracing::warn!(
                    kid = authority.key_id(),
                    "JWT bundle key is not a public JWT-SVID key; not served"
                );
                return None;
            }
            jwk.insert("use".into(), Value::String("sig".into()));
            Some((authority.key_id().to_owned(), Value::Object(jwk)))
        })
        .collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    Document::new(keys.into_iter().map(|(_, k)| k).collect())
}

/// The document served for a trust domain with no bundle: one P-256 public key nobody can sign
/// with (its private half is dropped as soon as it is generated).
pub fn tombstone() -> Result<Document, JwksError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|e| JwksError::Tombstone(e.to_string()))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .map_err(|e| JwksError::Tombstone(e.to_string()))?;
    // Uncompressed point: 0x04 ‖ X (32 bytes) ‖ Y (32 bytes).
    let point = pair.public_key().as_ref();
    if point.len() != 65 {
        return Err(JwksError::Tombstone(format!(
            "unexpected public key length {}",
            point.len()
        )));
    }
    let mut jwk = Map::new();
    for (k, v) in [
        ("kty", "EC".to_owned()),
        ("crv", "P-256".to_owned()),
        ("alg", "ES256".to_owned()),
        ("use", "sig".to_owned()),
        ("kid", TOMBSTONE_KID.to_owned()),
        ("x", URL_SAFE_NO_PAD.encode(&point[1..33])),
        ("y", URL_SAFE_NO_PAD.encode(&point[33..65])),
    ] {
        jwk.insert(k.into(), Value::String(v));
    }
    Ok(Document::new(vec![Value::Object(jwk)]))
}

/// Renders the documents for every snapshot `watcher` delivers, in the background; `None`
/// until the first snapshot.
pub fn publish(watcher: &JwtBundleWatcher) -> watch::Receiver<Option<Arc<Documents>>> {
    let (tx, rx) = watch::channel(None);
    let mut snapshots = watcher.subscribe();
    tokio::spawn(async move {
        loop {
            let set = snapshots.borrow_and_update().clone();
            if let Some(set) = set {
                let documents = Documents::render(&set);
                let changed = tx.borrow().as_deref() != Some(&documents);
                if changed {
                    tracing::info!(
                        trust_domains = ?documents.trust_domains().collect::<Vec<_>>(),
                        "JWKS documents updated"
                    );
                    if tx.send(Some(Arc::new(documents))).is_err() {
                        return;
                    }
                }
            }
            if snapshots.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// The endpoint's state: the current documents, the tombstone and the request counter.
#[derive(Clone, Debug)]
pub struct JwksEndpoint {
    documents: watch::Receiver<Option<Arc<Documents>>>,
    tombstone: Arc<Document>,
    requests: Family<ResultLabels, Counter>,
}

impl JwksEndpoint {
    /// Serves `documents` (see [`publish`]), answering `tombstone` for unknown trust domains.
    pub fn new(documents: watch::Receiver<Option<Arc<Documents>>>, tombstone: Document) -> Self {
        let requests = Family::<ResultLabels, Counter>::default();
        // Every result shows 0 from the start, so an alert can use rate() without absent().
        for result in ["ok", "not_modified", "no_bundle", "not_ready", "bad_name"] {
            let _ = requests.get_or_create(&ResultLabels {
                result: result.to_owned(),
            });
        }
        Self {
            documents,
            tombstone: Arc::new(tombstone),
            requests,
        }
    }

    /// Registers `jwks_requests_total{result}` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "jwks_requests",
            "JWKS endpoint answers by result (no_bundle: the tombstone was served)",
            self.requests.clone(),
        );
    }

    /// `/readyz`'s view of the endpoint: ready once the first JWT bundle set has arrived
    /// (before it Envoy's `jwt_authn` holds no keys and refuses every token), and not once the
    /// bundle stream gave up (revocations would no longer reach Envoy).
    pub fn readiness(&self, stream: &StreamStatus) -> Readiness {
        if stream.gave_up {
            return Readiness::NotReady(format!(
                "the Workload API refused the JWT bundle stream (--jwks-listen): {}",
                stream.last_error.clone().unwrap_or_default()
            ));
        }
        if self.documents.borrow().is_none() {
            return Readiness::NotReady(
                "no JWT bundles from the Workload API yet (--jwks-listen): every token would be \
                 refused"
                    .into(),
            );
        }
        Readiness::Ready
    }

    fn count(&self, result: &str) {
        self.requests
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// The router (`GET /jwks/{trust_domain}` behind the `Host` guard).
    pub fn router(self) -> Router {
        Router::new()
            .route("/jwks/{trust_domain}", get(jwks))
            .layer(axum::middleware::from_fn(
                sidecar_runtime::admin::host_guard,
            ))
            .with_state(self)
    }

    /// Serves on `listener` until `shutdown` triggers.
    pub async fn serve(self, listener: TcpListener, shutdown: Shutdown) -> std::io::Result<()> {
        sidecar_runtime::serve::serve(listener, self.router(), Limits::default(), shutdown).await
    }
}

async fn jwks(
    State(endpoint): State<JwksEndpoint>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(documents) = endpoint.documents.borrow().clone() else {
        endpoint.count("not_ready");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::RETRY_AFTER, "1"),
            ],
            "no JWT bundles from the Workload API yet\n",
        )
            .into_response();
    };
    let Ok(td) = TrustDomain::new(&name) else {
        endpoint.count("bad_name");
        return (StatusCode::NOT_FOUND, "not a trust domain name\n").into_response();
    };
    let (document, result) = match documents.get(td.as_ref()) {
        Some(document) => (document, "ok"),
        None => (endpoint.tombstone.as_ref(), "no_bundle"),
    };
    let etag = HeaderValue::from_str(&document.etag).unwrap_or(HeaderValue::from_static("\"\""));
    let cache = HeaderValue::from_static("no-cache");
    if if_none_match(&headers, &document.etag) {
        endpoint.count("not_modified");
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag), (header::CACHE_CONTROL, cache)],
        )
            .into_response();
    }
    endpoint.count(result);
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache),
        ],
        document.body.to_string(),
    )
        .into_response()
}

/// Whether an `If-None-Match` header names `etag` (or is `*`); weak comparison, RFC 9110
/// §13.1.2.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(bundles: &[(&str, Value)]) -> JwtBundleSet {
        let mut set = JwtBundleSet::new();
        for (td, jwks) in bundles {
            set.add_bundle(
                JwtBundle::from_jwt_authorities(
                    TrustDomain::new(td).unwrap(),
                    jwks.to_string().as_bytes(),
                )
                .unwrap(),
            );
        }
        set
    }

    fn ec_key(kid: &str, usage: &str) -> Value {
        let tomb: Value = serde_json::from_str(&tombstone().unwrap().body).unwrap();
        let mut key = tomb["keys"][0].clone();
        key["kid"] = kid.into();
        key["use"] = usage.into();
        key
    }

    #[test]
    fn one_document_per_trust_domain_with_only_public_jwt_svid_keys() {
        let own = json!({"keys": [ec_key("b", "jwt-svid"), ec_key("a", "jwt-svid"), ec_key("x", "x509-svid")]});
        let partner = json!({"keys": [ec_key("p", "jwt-svid")]});
        let docs = Documents::render(&set(&[("example.org", own), ("partner.org", partner)]));
        assert_eq!(
            docs.trust_domains().collect::<Vec<_>>(),
            ["example.org", "partner.org"]
        );
        let own: Value = serde_json::from_str(&docs.get("example.org").unwrap().body).unwrap();
        let kids: Vec<&str> = own["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, ["a", "b"], "sorted, x509-svid key dropped");
        assert!(
            own["keys"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["use"] == "sig")
        );
        assert_eq!(docs.get("partner.org").unwrap().keys, 1);
    }

    #[test]
    fn etag_follows_the_keys_not_their_order() {
        let (ka, kb) = (ec_key("a", "jwt-svid"), ec_key("b", "jwt-svid"));
        let render = |keys: Vec<Value>| {
            Documents::render(&set(&[("example.org", json!({ "keys": keys }))]))
                .get("example.org")
                .unwrap()
                .etag
                .clone()
        };
        let ab = render(vec![ka.clone(), kb.clone()]);
        assert_eq!(ab, render(vec![kb, ka.clone()]), "same keys, same tag");
        assert_ne!(ab, render(vec![ka]), "a key left: new tag");
        assert!(ab.len() == 34 && ab.starts_with('"') && ab.ends_with('"'));
    }

    #[test]
    fn tombstones_hold_one_key_nobody_can_use_and_differ_per_start() {
        let (a, b) = (tombstone().unwrap(), tombstone().unwrap());
        assert_eq!(a.keys, 1);
        assert_ne!(a.body, b.body, "a fresh key each start");
        let jwk: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(jwk["keys"][0]["kid"], TOMBSTONE_KID);
        assert!(jwk["keys"][0].get("d").is_none());
    }

    #[test]
    fn ready_once_the_first_bundle_set_arrived_and_while_the_stream_lives() {
        let (tx, rx) = watch::channel(None);
        let endpoint = JwksEndpoint::new(rx, tombstone().unwrap());
        let live = StreamStatus::default();
        let reason = |r: Readiness| match r {
            Readiness::Ready => None,
            Readiness::NotReady(why) => Some(why),
        };
        assert!(
            reason(endpoint.readiness(&live)).is_some_and(|r| r.contains("no JWT bundles")),
            "before the first bundle set"
        );
        tx.send(Some(Arc::new(Documents::render(&set(&[(
            "example.org",
            json!({"keys": [ec_key("k1", "jwt-svid")]}),
        )])))))
        .unwrap();
        assert_eq!(reason(endpoint.readiness(&live)), None);
        let gave_up = StreamStatus {
            gave_up: true,
            last_error: Some("PermissionDenied".into()),
            ..StreamStatus::default()
        };
        assert!(
            reason(endpoint.readiness(&gave_up)).is_some_and(|r| r.contains("PermissionDenied"))
        );
    }

    #[test]
    fn conditional_requests_match_the_etag_or_a_star() {
        let mut h = HeaderMap::new();
        assert!(!if_none_match(&h, "\"abc\""));
        h.insert(header::IF_NONE_MATCH, "\"x\", W/\"abc\"".parse().unwrap());
        assert!(if_none_match(&h, "\"abc\""));
        assert!(!if_none_match(&h, "\"abd\""));
        h.insert(header::IF_NONE_MATCH, "*".parse().unwrap());
        assert!(if_none_match(&h, "\"abd\""));
    }
}
