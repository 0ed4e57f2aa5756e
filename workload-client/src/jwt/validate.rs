//! Local JWT-SVID validation against watched JWT bundles: no Workload API call per token.
//!
//! Rules (SPIFFE JWT-SVID spec, `docs/protocols.md#jwt-svid`): `alg` in RS/ES/PS 256/384/512
//! (`none` and the HMAC family are refused before any key is looked up: HS256 "signed" with a
//! public key is the classic algorithm-confusion forgery), `kid` required and present in the bundle
//! of the `sub`'s trust domain, signature valid, `exp` in the future, `aud` containing the expected
//! audience, `sub` a SPIFFE ID of an accepted trust domain.
//!
//! Signature, `kid`, `aud` and `exp` checks are delegated to `spiffe::JwtSvid::parse_and_validate`
//! (spiffe 0.19, aws-lc-rs backend). It compares `exp` with no leeway: a token is refused from
//! the second it expires. Our injectors never send a token that close to expiry (they refresh at
//! half-life), so the only effect is strictness; ES512 is not supported by that backend and is
//! refused as an unsupported algorithm.

use std::collections::BTreeSet;

use base64::Engine as _;
use spiffe::{JwtBundleSet, JwtSvid, JwtSvidError, JwtVerificationErrorKind, TrustDomain};

/// Tokens larger than this are refused unparsed (bounded work per request).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

const ALLOWED_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
];

/// Which `sub` trust domains a validator accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TrustDomainPolicy {
    /// Any trust domain we hold a JWT bundle for (own and federated).
    #[default]
    AnyWithBundle,
    /// Only these (a bundle is still required).
    Only(BTreeSet<TrustDomain>),
}

/// Why a token was refused. Each reason is its own variant so that callers can map it to the
/// right response (401 for a bad token, 403 for a good token from a refused identity) and
/// metrics can count reasons. Messages never include the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// Not three base64url segments of JSON, or too large.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `alg` outside the JWT-SVID allow-list (`none`, HS*, …) or unsupported by the backend.
    #[error("algorithm {0:?} is not allowed for JWT-SVIDs")]
    UnsupportedAlgorithm(String),
    /// No `kid` in the header.
    #[error("token header has no kid")]
    MissingKeyId,
    /// `sub` is absent or not a SPIFFE ID.
    #[error("token subject is not a SPIFFE ID: {0}")]
    InvalidSubject(String),
    /// No JWT bundle for the subject's trust domain.
    #[error("no JWT bundle for trust domain {0}")]
    UnknownTrustDomain(String),
    /// The trust domain is known but not accepted by policy.
    #[error("trust domain {0} is not accepted")]
    TrustDomainNotAllowed(String),
    /// The `kid` is not in the trust domain's bundle.
    #[error("no JWT authority with kid {0:?}")]
    UnknownKeyId(String),
    /// The signature does not verify with the selected key.
    #[error("signature verification failed")]
    InvalidSignature,
    /// `exp` has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `aud` does not contain the expected audience.
    #[error("token audience does not include {expected:?}")]
    AudienceMismatch {
        /// The audience we required.
        expected: String,
    },
    /// The key in the bundle is unusable for this token (wrong curve, weak RSA, …).
    #[error("bundle key unusable: {0}")]
    BadKey(String),
}

impl ValidationError {
    /// A short stable label for metrics (`reason="expired"`).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnsupportedAlgorithm(_) => "unsupported_alg",
            Self::MissingKeyId => "missing_kid",
            Self::InvalidSubject(_) => "invalid_sub",
            Self::UnknownTrustDomain(_) => "unknown_trust_domain",
            Self::TrustDomainNotAllowed(_) => "trust_domain_not_allowed",
            Self::UnknownKeyId(_) => "unknown_kid",
            Self::InvalidSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::AudienceMismatch { .. } => "wrong_audience",
            Self::BadKey(_) => "bad_key",
        }
    }

    /// Whether the token itself is bad (HTTP 401) as opposed to good but refused by policy (403).
    pub fn is_policy_refusal(&self) -> bool {
        matches!(self, Self::TrustDomainNotAllowed(_))
    }
}

/// Validates `token` for `audience` against `bundles` and `policy`; returns the verified SVID.
pub fn validate_jwt_svid(
    token: &str,
    audience: &str,
    bundles: &JwtBundleSet,
    policy: &TrustDomainPolicy,
) -> Result<JwtSvid, ValidationError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(ValidationError::Malformed(format!(
            "token longer than {MAX_TOKEN_LEN} bytes"
        )));
    }
    check_header(token)?;
    let svid = JwtSvid::parse_and_validate(token, bundles, &[audience])
        .map_err(|e| map_error(e, audience))?;
    // The spiffe crate lower-cases an upper-case trust domain in `sub` and accepts it; the
    // SPIFFE ID spec (and go-spiffe) refuse it. Refuse it too, so the identity we report and
    // match allow lists against is exactly the one the token carries.
    if svid.claims().sub() != svid.spiffe_id().to_string() {
        return Err(ValidationError::InvalidSubject(format!(
            "not in canonical form (trust domains are lower case: {})",
            svid.spiffe_id()
        )));
    }
    let td = svid.spiffe_id().trust_domain();
    if let TrustDomainPolicy::Only(allowed) = policy
        && !allowed.contains(td)
    {
        return Err(ValidationError::TrustDomainNotAllowed(td.to_string()));
    }
    Ok(svid)
}

/// Checks the JOSE header ourselves first, so `alg: none` and HS* get their own precise error
/// and never reach key lookup.
fn check_header(token: &str) -> Result<(), ValidationError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ValidationError::Malformed(
            "expected three dot-separated segments".to_owned(),
        ));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| ValidationError::Malformed("header is not base64url".to_owned()))?;
    let header: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| ValidationError::Malformed("header is not JSON".to_owned()))?;
    let alg = header
        .get("alg")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| ValidationError::Malformed("header has no alg".to_owned()))?;
    if !ALLOWED_ALGS.contains(&alg) {
        // Truncate: the value is attacker-controlled and ends up in logs.
        return Err(ValidationError::UnsupportedAlgorithm(
            alg.chars().take(16).collect(),
        ));
    }
    match header.get("kid").and_then(serde_json::Value::as_str) {
        Some(kid) if !kid.is_empty() => Ok(()),
        _ => Err(ValidationError::MissingKeyId),
    }
}

fn map_error(e: JwtSvidError, audience: &str) -> ValidationError {
    use ValidationError as V;
    match e {
        JwtSvidError::InvalidSubject(e) => V::InvalidSubject(e.to_string()),
        JwtSvidError::MissingKeyId => V::MissingKeyId,
        JwtSvidError::UnsupportedAlgorithm => V::UnsupportedAlgorithm("unknown".to_owned()),
        JwtSvidError::BackendUnsupportedAlgorithm(alg) => {
            V::UnsupportedAlgorithm(format!("{alg:?}"))
        }
        JwtSvidError::BundleNotFound(td) => V::UnknownTrustDomain(td.to_string()),
        JwtSvidError::AuthorityNotFound(kid) => V::UnknownKeyId(kid.chars().take(64).collect()),
        JwtSvidError::InvalidAudience(..) => V::AudienceMismatch {
            expected: audience.to_owned(),
        },
        JwtSvidError::InvalidToken(e) => match e.kind() {
            JwtVerificationErrorKind::Expired => V::Expired,
            JwtVerificationErrorKind::NotYetValid => V::NotYetValid,
            JwtVerificationErrorKind::AudienceMismatch => V::AudienceMismatch {
                expected: audience.to_owned(),
            },
            JwtVerificationErrorKind::InvalidSignature => V::InvalidSignature,
            _ => V::Malformed(e.to_string()),
        },
        JwtSvidError::InvalidAuthorityJwk(_)
        | JwtSvidError::InvalidAuthorityMetadata(_)
        | JwtSvidError::AuthorityAlgorithmMismatch { .. }
        | JwtSvidError::UnsupportedAuthorityPurpose
        | JwtSvidError::AuthorityVerificationNotPermitted
        | JwtSvidError::AuthorityCurveMismatch(_)
        | JwtSvidError::InvalidAuthorityKeyComponent(_)
        | JwtSvidError::NonCanonicalRsaComponent(_)
        | JwtSvidError::WeakRsaAuthority(_) => V::BadKey(e.to_string()),
        other => V::Malformed(other.to_string()),
    }
}

#[cfg(test)]
#[path = "validate_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
    };
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use serde_json::json;
    use spiffe::JwtBundle;

    const AUD: &str = "backend";

    struct EcKey {
        kid: &'static str,
        pair: EcdsaKeyPair,
    }

    impl EcKey {
        fn new(kid: &'static str) -> Self {
            Self {
                kid,
                pair: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            }
        }

        fn jwk(&self) -> serde_json::Value {
            let point = self.pair.public_key().as_ref();
            json!({"kty":"EC","crv":"P-256","kid":self.kid,"use":"jwt-svid",
                   "x":B64.encode(&point[1..33]),"y":B64.encode(&point[33..65])})
        }

        fn sign(&self, header: serde_json::Value, claims: serde_json::Value) -> String {
            let input = format!(
                "{}.{}",
                B64.encode(header.to_string()),
                B64.encode(claims.to_string())
            );
            let sig = self
                .pair
                .sign(&SystemRandom::new(), input.as_bytes())
                .unwrap();
            format!("{input}.{}", B64.encode(sig.as_ref()))
        }

        fn token(&self, claims: serde_json::Value) -> String {
            self.sign(json!({"alg":"ES256","kid":self.kid,"typ":"JWT"}), claims)
        }
    }

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    fn claims(sub: &str, aud: &str, exp_in: i64) -> serde_json::Value {
        json!({"sub": sub, "aud": [aud], "exp": now() + exp_in, "iat": now()})
    }

    fn bundles(keys: &[(&str, serde_json::Value)]) -> JwtBundleSet {
        let mut set = JwtBundleSet::new();
        for (td, jwk) in keys {
            let jwks = json!({"keys":[jwk]}).to_string();
            set.add_bundle(
                JwtBundle::from_jwt_authorities(TrustDomain::new(td).unwrap(), jwks.as_bytes())
                    .unwrap(),
            );
        }
        set
    }

    fn check(token: &str, set: &JwtBundleSet) -> Result<JwtSvid, ValidationError> {
        validate_jwt_svid(token, AUD, set, &TrustDomainPolicy::AnyWithBundle)
    }

    #[test]
    fn accepts_a_valid_token_and_returns_its_subject() {
        let key = EcKey::new("k1");
        let set = bundles(&[("example.org", key.jwk())]);
        let svid = check(
            &key.token(claims("spiffe://example.org/web", AUD, 300)),
            &set,
        )
        .unwrap();
        assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/web");
    }

    #[test]
    fn accepts_rs256() {
        let pair = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let public = pair.public_key();
        let jwk = json!({"kty":"RSA","kid":"r1",
            "n": B64.encode(public.modulus().big_endian_without_leading_zero()),
            "e": B64.encode(public.exponent().big_endian_without_leading_zero())});
        let set = bundles(&[("example.org", jwk)]);
        let input = format!(
            "{}.{}",
            B64.encode(json!({"alg":"RS256","kid":"r1"}).to_string()),
            B64.encode(claims("spiffe://example.org/web", AUD, 300).to_string())
        );
        let mut sig = vec![0; pair.public_modulus_len()];
        pair.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .unwrap();
        let token = format!("{input}.{}", B64.encode(sig));
        assert!(check(&token, &set).is_ok());
    }

    #[test]
    fn rejects_wrong_signature() {
        let key = EcKey::new("k1");
        let forger = EcKey::new("k1"); // same kid, different key
        let set = bundles(&[("example.org", key.jwk())]);
        let token = forger.token(claims("spiffe://example.org/web", AUD, 300));
        assert_eq!(
            check(&token, &set).unwrap_err(),
            ValidationError::InvalidSignature
        );
    }

    #[test]
    fn rejects_tampered_claims() {
        let key = EcKey::new("k1");
        let set = bundles(&[("example.org", key.jwk())]);
        let token = key.token(claims("spiffe://example.org/web", AUD, 300));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = B64.encode(claims("spiffe://example.org/admin", AUD, 300).to_string());
        parts[1] = &forged;
        assert_eq!(
            check(&parts.join("."), &set).unwrap_err(),
            ValidationError::InvalidSignature
        );
    }

    #[test]
    fn rejects_unknown_kid() {
        let key = EcKey::new("k1");
        let other = EcKey::new("k2");
        let set = bundles(&[("example.org", key.jwk())]);
        let token = other.token(claims("spiffe://example.org/web", AUD, 300));
        assert_eq!(
            check(&token, &set).unwrap_err(),
            ValidationError::UnknownKeyId("k2".into())
        );
    }

    #[test]
    fn rejects_missing_kid() {
        let key = EcKey::new("k1");
        let set = bundles(&[("example.org", key.jwk())]);
        let token = key.sign(
            json!({"alg":"ES256"}),
            claims("spiffe://example.org/w", AUD, 300),
        );
        assert_eq!(
            check(&token, &set).unwrap_err(),
            ValidationError::MissingKeyId
        );
    }

    #[test]
    fn rejects_expired() {
        let key = EcKey::new("k1");
        let set = bundles(&[("example.org", key.jwk())]);
        let token = key.token(claims("spiffe://example.org/web", AUD, -5));
        assert_eq!(check(&token, &set).unwrap_err(), ValidationError::Expired);
    }

    #[test]
    fn rejects_wrong_audience() {
        let key = EcKey::new("k1");
        let set = bundles(&[("example.org", key.jwk())]);
        let token = key.token(claims("spiffe://example.org/web", "someone-else", 300));
        assert_eq!(
            check(&token, &set).unwrap_err(),
            ValidationError::AudienceMismatch {
                expected: AUD.into()
            }
        );
    }

    #[test]
    fn rejects_a_subject_with_an_upper_case_trust_domain() {
        // Found by the property tests: spiffe lower-cases the trust domain and accepted it.
        let key = EcKey::new("k1");
        let set = bundles(&[("example.org", key.jwk())]);
        let token = key.token(claims("spiffe://Example.org/web", AUD, 300));
        let err = check(&token, &set).unwrap_err();
        assert!(matches!(err, ValidationError::InvalidSubject(_)), "{err:?}");
        assert_eq!(err.label(), "invalid_sub");
    }

    #[test]
    fn rejects_foreign_trust_domain_without_bundle() {
        let key = EcKey::new("k1");
        let set = bundles(&[("example.org", key.jwk())]);
        let token = key.token(claims("spiffe://evil.org/web", AUD, 300));
        assert_eq!(
            check(&token, &set).unwrap_err(),
            ValidationError::UnknownTrustDomain("evil.org".into())
        );
    }

    #[test]
    fn policy_refuses_federated_trust_domain_not_listed() {
        let own = EcKey::new("k1");
        let fed = EcKey::new("f1");
        let set = bundles(&[("example.org", own.jwk()), ("partner.org", fed.jwk())]);
        let token = fed.token(claims("spiffe://partner.org/api", AUD, 300));
        assert!(
            check(&token, &set).is_ok(),
            "federated bundle is accepted by default"
        );
        let only_own = TrustDomainPolicy::Only([TrustDomain::new("example.org").unwrap()].into());
        let err = validate_jwt_svid(&token, AUD, &set, &only_own).unwrap_err();
        assert_eq!(
            err,
            ValidationError::TrustDomainNotAllowed("partner.org".into())
        );
        assert!(err.is_policy_refusal());
    }

    #[test]
    fn rejects_alg_none() {
        let key = EcKey::new("k1");
        let set = bundles(&[("example.org", key.jwk())]);
        let token = format!(
            "{}.{}.",
            B64.encode(json!({"alg":"none","kid":"k1"}).to_string()),
            B64.encode(claims("spiffe://example.org/web", AUD, 300).to_string())
        );
        assert_eq!(
            check(&token, &set).unwrap_err(),
            ValidationError::UnsupportedAlgorithm("none".into())
        );
    }

    #[test]
    fn rejects_hs256_signed_with_the_public_key() {
        // Algorithm confusion: an attacker HMACs the token with the (public) JWK as secret.
        let key = EcKey::new("k1");
        let set = bundles(&[("example.org", key.jwk())]);
        let input = format!(
            "{}.{}",
            B64.encode(json!({"alg":"HS256","kid":"k1"}).to_string()),
            B64.encode(claims("spiffe://example.org/web", AUD, 300).to_string())
        );
        let mac_key =
            aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key.pair.public_key().as_ref());
        let tag = aws_lc_rs::hmac::sign(&mac_key, input.as_bytes());
        let token = format!("{input}.{}", B64.encode(tag.as_ref()));
        assert_eq!(
            check(&token, &set).unwrap_err(),
            ValidationError::UnsupportedAlgorithm("HS256".into())
        );
    }

    #[test]
    fn rejects_malformed_segments() {
        let set = bundles(&[("example.org", EcKey::new("k1").jwk())]);
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!!.e30.sig",
            "e30x.e30.sig",
            "bm90anNvbg.e30.sig",
        ] {
            let err = check(bad, &set).unwrap_err();
            assert!(
                matches!(err, ValidationError::Malformed(_)),
                "{bad:?} gave {err:?}"
            );
        }
        let huge = "a".repeat(MAX_TOKEN_LEN + 1);
        assert!(matches!(
            check(&huge, &set),
            Err(ValidationError::Malformed(_))
        ));
    }

    #[test]
    fn errors_never_echo_the_token() {
        let key = EcKey::new("k1");
        let set = bundles(&[("example.org", key.jwk())]);
        let token = key.token(claims("spiffe://example.org/web", "other", 300));
        let err = check(&token, &set).unwrap_err();
        let sig = token.rsplit('.').next().unwrap();
        assert!(!err.to_string().contains(sig));
        assert!(!format!("{err:?}").contains(sig));
    }
}
