//! JWT-SVID signing keys: generation, JWKS publication, compact JWS signing, and the
//! rotation rule that keeps a retired key published until every token it signed expired.
//!
//! JWT-SVIDs are compact JWS with a `kid` header and `sub`/`aud`/`exp` claims
//! (`docs/protocols.md#jwt-svid`);
//! the JWKS entries carry `use: "jwt-svid"` as SPIFFE bundles do.

use std::{fmt, str::FromStr, time::SystemTime};

use aws_lc_rs::{
    digest,
    encoding::AsDer,
    rand::SystemRandom,
    rsa::KeySize,
    signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::secret::SecretBytes;

/// Why a JWT key operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Key generation failed in the crypto library.
    #[error("generating a {0} JWT signing key failed")]
    Generate(JwtAlg),
    /// A stored private key could not be parsed.
    #[error("stored {alg} JWT signing key is invalid: {reason}")]
    InvalidKey {
        /// The algorithm the key was expected to be for.
        alg: JwtAlg,
        /// What the crypto library said.
        reason: String,
    },
    /// Signing failed in the crypto library.
    #[error("signing a JWT failed")]
    Sign,
    /// The claims could not be serialized.
    #[error("serializing JWT claims failed: {0}")]
    Json(#[from] serde_json::Error),
}

// === JwtAlg ===

/// The JWT-SVID signature algorithms the agent can issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlg {
    /// ECDSA P-256 / SHA-256 (default: small keys, fast generation).
    #[serde(rename = "ES256")]
    Es256,
    /// RSASSA-PKCS1-v1_5 / SHA-256 with a 2048-bit key (what AWS STS and older verifiers like).
    #[serde(rename = "RS256")]
    Rs256,
}

impl JwtAlg {
    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Rs256 => "RS256",
        }
    }
}

impl fmt::Display for JwtAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JwtAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "ES256" => Ok(Self::Es256),
            "RS256" => Ok(Self::Rs256),
            _ => Err(format!("unsupported JWT algorithm {s:?} (ES256 or RS256)")),
        }
    }
}

// === JwtClaims ===

/// Claims of a JWT-SVID. Public so tests can mint unusual tokens (expired, extra claims)
/// with [`Authority::sign_claims`](crate::Authority::sign_claims).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JwtClaims {
    /// The SPIFFE ID.
    pub sub: String,
    /// Audiences; serialized as an array, which every verifier accepts.
    pub aud: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: i64,
    /// Issuer, when the agent is configured with one (OIDC federation needs it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iss: Option<String>,
    /// Any further claims.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

// === SigningKey ===

enum KeyMaterial {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// One JWT signing key with its `kid` and public JWK.
///
/// The `kid` is the RFC 7638 thumbprint of the public key, so it is stable across restarts
/// with `--state-dir` and never collides between keys.
pub struct SigningKey {
    alg: JwtAlg,
    kid: String,
    key: KeyMaterial,
    pkcs8: SecretBytes,
    jwk: Value,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a fresh key. RSA generation takes tens to hundreds of milliseconds: call it
    /// from `spawn_blocking` on a runtime.
    pub fn generate(alg: JwtAlg) -> Result<Self, JwtError> {
        let pkcs8 = match alg {
            JwtAlg::Es256 => EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                .and_then(|k| k.to_pkcs8v1())
                .map(|doc| doc.as_ref().to_vec()),
            JwtAlg::Rs256 => RsaKeyPair::generate(KeySize::Rsa2048)
                .and_then(|k| k.as_der())
                .map(|der| der.as_ref().to_vec()),
        }
        .map_err(|_| JwtError::Generate(alg))?;
        Self::from_pkcs8(alg, SecretBytes::new(pkcs8))
    }

    /// Loads a key from its PKCS#8 DER encoding (as kept in the state directory).
    pub fn from_pkcs8(alg: JwtAlg, pkcs8: SecretBytes) -> Result<Self, JwtError> {
        let invalid = |reason: String| JwtError::InvalidKey { alg, reason };
        let (key, thumbprint_input, mut jwk) = match alg {
            JwtAlg::Es256 => {
                let key = EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8.expose(),
                )
                .map_err(|e| invalid(e.to_string()))?;
                // Uncompressed SEC1 point: 0x04 || X (32 bytes) || Y (32 bytes).
                let point = key.public_key().as_ref();
                let (x, y) = match point {
                    [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
                    _ => return Err(invalid("unexpected EC public key encoding".into())),
                };
                let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
                // RFC 7638: required members only, lexicographic order, no whitespace.
                let thumb = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
                let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
                (KeyMaterial::Ec(key), thumb, jwk)
            }
            JwtAlg::Rs256 => {
                let key =
                    RsaKeyPair::from_pkcs8(pkcs8.expose()).map_err(|e| invalid(e.to_string()))?;
                let public = key.public_key();
                let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
                let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
                let thumb = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
                let jwk = json!({"kty": "RSA", "n": n, "e": e});
                (KeyMaterial::Rsa(key), thumb, jwk)
            }
        };
        let kid =
            URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, thumbprint_input.as_bytes()));
        if let Some(obj) = jwk.as_object_mut() {
            obj.insert("kid".into(), Value::String(kid.clone()));
            obj.insert("use".into(), Value::String("jwt-svid".into()));
            obj.insert("alg".into(), Value::String(alg.as_str().into()));
        }
        Ok(Self {
            alg,
            kid,
            key,
            pkcs8,
            jwk,
        })
    }

    /// The key ID, as it appears in the JWS header and the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The signature algorithm.
    pub fn alg(&self) -> JwtAlg {
        self.alg
    }

    /// The public JWK (`kty`, `kid`, `use: "jwt-svid"`, `alg`, and `crv`/`x`/`y` or `n`/`e`).
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// The private key, PKCS#8 DER, for the state directory.
    pub fn pkcs8(&self) -> &SecretBytes {
        &self.pkcs8
    }

    /// Signs `claims` as a compact JWS with header `{alg, kid, typ: "JWT"}`.
    pub fn sign(&self, claims: &JwtClaims) -> Result<String, JwtError> {
        let header = json!({"alg": self.alg.as_str(), "kid": self.kid, "typ": "JWT"});
        let mut token = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?));
        let rng = SystemRandom::new();
        let sig = match &self.key {
            // FIXED signing yields r || s, the JWS encoding (RFC 7518 §3.4), not ASN.1 DER.
            KeyMaterial::Ec(key) => key
                .sign(&rng, token.as_bytes())
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| JwtError::Sign)?,
            KeyMaterial::Rsa(key) => {
                let mut sig = vec![0; key.public_modulus_len()];
                key.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    token.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| JwtError::Sign)?;
                sig
            }
        };
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(token)
    }
}

// === JwtKeySet ===

/// A public key that no longer signs but stays in the JWKS until `until` (Unix seconds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetiredKey {
    /// The key ID.
    pub kid: String,
    /// The public JWK.
    pub jwk: Value,
    /// Unix seconds after which no token it signed is valid any more.
    pub until: i64,
}

/// The JWT keys of a trust domain: the signing key, the next one, and retired ones.
///
/// Two rules keep verifiers that cache the JWKS (from `FetchJWTBundles` or `/keys`) from
/// ever seeing a token whose `kid` they do not know yet, or no longer know:
///
/// - **Pre-publication**: the *next* key is in the JWKS a whole rotation period before it
///   signs anything (SPIRE prepares keys the same way).
/// - **Retirement**: a key retired at time `t` stays published until `max(t + jwt_ttl,
///   latest exp it signed)`, so a token minted just before a rotation validates until expiry.
#[derive(Debug)]
pub struct JwtKeySet {
    current: SigningKey,
    /// When `current` started signing; the rotation schedule counts from here.
    current_since: SystemTime,
    /// Latest `exp` signed with `current` (Unix seconds).
    current_max_exp: i64,
    next: SigningKey,
    retired: Vec<RetiredKey>,
}

impl JwtKeySet {
    /// A key set with a signing key, a pre-published next key, and nothing retired.
    pub fn new(current: SigningKey, next: SigningKey) -> Self {
        Self {
            current,
            current_since: SystemTime::now(),
            current_max_exp: 0,
            next,
            retired: Vec::new(),
        }
    }

    /// Rebuilds a key set from the state directory.
    pub(crate) fn from_parts(
        current: SigningKey,
        current_since: SystemTime,
        current_max_exp: i64,
        next: SigningKey,
        retired: Vec<RetiredKey>,
    ) -> Self {
        Self {
            current,
            current_since,
            current_max_exp,
            next,
            retired,
        }
    }

    /// The key that signs new tokens.
    pub fn current(&self) -> &SigningKey {
        &self.current
    }

    /// When the current key started signing.
    pub fn current_since(&self) -> SystemTime {
        self.current_since
    }

    /// Latest `exp` signed with the current key.
    pub fn current_max_exp(&self) -> i64 {
        self.current_max_exp
    }

    /// The published key that takes over at the next rotation.
    pub fn next(&self) -> &SigningKey {
        &self.next
    }

    /// Keys still published but no longer signing.
    pub fn retired(&self) -> &[RetiredKey] {
        &self.retired
    }

    /// Signs with the current key and remembers the expiry for the retirement rule.
    pub fn sign(&mut self, claims: &JwtClaims) -> Result<String, JwtError> {
        let token = self.current.sign(claims)?;
        self.current_max_exp = self.current_max_exp.max(claims.exp);
        Ok(token)
    }

    /// The pre-published next key starts signing, `new_next` is published in its place, and
    /// the old signing key is retired per the rule on [`JwtKeySet`].
    pub fn rotate(&mut self, new_next: SigningKey, now: i64, jwt_ttl_secs: i64) {
        let next = std::mem::replace(&mut self.next, new_next);
        let old = std::mem::replace(&mut self.current, next);
        self.retired.push(RetiredKey {
            kid: old.kid().to_owned(),
            jwk: old.jwk().clone(),
            until: now.saturating_add(jwt_ttl_secs).max(self.current_max_exp),
        });
        self.current_since = SystemTime::now();
        self.current_max_exp = 0;
    }

    /// Like [`JwtKeySet::rotate`], but the old signing key leaves the JWKS at once instead of
    /// staying until its tokens expire: what SPIRE does when a key is tainted or revoked, so
    /// verifiers reject every token it signed from the next bundle update on. Returns the
    /// removed key's `kid`.
    pub fn retire_now(&mut self, new_next: SigningKey) -> String {
        let next = std::mem::replace(&mut self.next, new_next);
        let old = std::mem::replace(&mut self.current, next);
        self.current_since = SystemTime::now();
        self.current_max_exp = 0;
        old.kid().to_owned()
    }

    /// Drops retired keys whose tokens have all expired; returns whether anything changed.
    pub fn prune(&mut self, now: i64) -> bool {
        let before = self.retired.len();
        self.retired.retain(|k| k.until > now);
        before != self.retired.len()
    }

    /// When the next retired key may be dropped (Unix seconds).
    pub fn next_prune(&self) -> Option<i64> {
        self.retired.iter().map(|k| k.until).min()
    }

    /// The JWKS document (`{"keys": [...]}`): current key first, then the next key, then
    /// retired ones.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = [self.current.jwk().clone(), self.next.jwk().clone()]
            .into_iter()
            .chain(self.retired.iter().map(|k| k.jwk.clone()))
            .collect();
        json!({ "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> JwtClaims {
        JwtClaims {
            sub: "spiffe://example.org/w".into(),
            aud: vec!["a".into()],
            exp,
            iat: 0,
            iss: None,
            extra: Default::default(),
        }
    }

    #[test]
    fn es256_signature_is_fixed_width_and_verifies() {
        let key = SigningKey::generate(JwtAlg::Es256).unwrap();
        let token = key.sign(&claims(4_000_000_000)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(sig.len(), 64, "JWS ES256 is r||s, not DER");
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], key.kid());
        assert_eq!(header["typ"], "JWT");
        let point = match &key.key {
            KeyMaterial::Ec(k) => k.public_key().as_ref().to_vec(),
            KeyMaterial::Rsa(_) => unreachable!(),
        };
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
    }

    #[test]
    fn kid_is_stable_for_the_same_key() {
        let key = SigningKey::generate(JwtAlg::Es256).unwrap();
        let again = SigningKey::from_pkcs8(JwtAlg::Es256, key.pkcs8().clone()).unwrap();
        assert_eq!(key.kid(), again.kid());
        assert_eq!(key.jwk(), again.jwk());
        assert_eq!(key.jwk()["use"], "jwt-svid");
    }

    #[test]
    fn next_key_is_published_before_it_signs() {
        let set = JwtKeySet::new(
            SigningKey::generate(JwtAlg::Es256).unwrap(),
            SigningKey::generate(JwtAlg::Es256).unwrap(),
        );
        let jwks = set.jwks();
        assert_eq!(jwks["keys"][0]["kid"], set.current().kid());
        assert_eq!(jwks["keys"][1]["kid"], set.next().kid());
    }

    #[test]
    fn retiring_now_removes_the_old_key_from_the_jwks_in_the_same_step() {
        let key = || SigningKey::generate(JwtAlg::Es256).unwrap();
        let mut set = JwtKeySet::new(key(), key());
        let old_kid = set.current().kid().to_owned();
        let prepared_kid = set.next().kid().to_owned();
        set.sign(&claims(1_000 + 600)).unwrap();
        assert_eq!(set.retire_now(key()), old_kid);
        assert_eq!(set.current().kid(), prepared_kid);
        let jwks = set.jwks().to_string();
        assert!(!jwks.contains(&old_kid), "retired key still published");
        assert!(set.retired().is_empty());
    }

    #[test]
    fn rotation_keeps_old_key_until_its_tokens_expire() {
        let key = || SigningKey::generate(JwtAlg::Es256).unwrap();
        let mut set = JwtKeySet::new(key(), key());
        let old_kid = set.current().kid().to_owned();
        let prepared_kid = set.next().kid().to_owned();
        set.sign(&claims(1_000 + 600)).unwrap();
        set.rotate(key(), 1_000, 300);
        assert_eq!(
            set.current().kid(),
            prepared_kid,
            "the pre-published key takes over"
        );
        let kids = |set: &JwtKeySet| -> Vec<String> {
            set.jwks()["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_owned())
                .collect()
        };
        assert!(kids(&set).contains(&old_kid));
        // Longest token it signed expires at 1600, later than rotation + ttl (1300).
        assert_eq!(set.next_prune(), Some(1_600));
        assert!(!set.prune(1_599));
        assert!(kids(&set).contains(&old_kid));
        assert!(set.prune(1_600));
        assert_eq!(
            kids(&set),
            vec![set.current().kid().to_owned(), set.next().kid().to_owned()]
        );
    }
}
