//! [`Authority`]: everything that signs for one trust domain (X.509 CA + JWT keys).
//!
//! The agent holds one for its own trust domain and one per federated trust domain. Tests
//! build their own for any trust domain to mint SVIDs and JWTs the agent did not issue,
//! e.g. a foreign trust domain's token for the federation scenarios.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use spiffe::{JwtBundle, SpiffeId, TrustDomain};

use crate::{
    ca::{CaError, CertificateAuthority, IssuedX509Svid},
    jwt_keys::{JwtAlg, JwtClaims, JwtError, JwtKeySet, SigningKey},
};

/// Validity of a newly generated CA when nothing else asks for longer: one year.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(365 * 86400);

/// Why an authority operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// X.509 CA failure.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// JWT key or signing failure.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// The authority of one trust domain was asked to sign for another.
    #[error("{id} is not in trust domain {trust_domain}")]
    ForeignSpiffeId {
        /// The requested SPIFFE ID.
        id: String,
        /// This authority's trust domain.
        trust_domain: String,
    },
    /// The JWKS could not be turned into a `spiffe::JwtBundle`.
    #[error("building the JWT bundle failed: {0}")]
    Bundle(#[from] spiffe::JwtBundleError),
    /// A TTL does not fit a JWT `exp`.
    #[error("TTL {0:?} is out of range")]
    Ttl(Duration),
}

/// The signing authority of one trust domain: a root CA for X509-SVIDs and a rotating
/// JWT signing key set for JWT-SVIDs.
#[derive(Debug)]
pub struct Authority {
    trust_domain: TrustDomain,
    /// Replaced whole by [`Authority::retire_ca_now`] (a compromised CA), so behind a lock.
    ca: RwLock<Arc<CertificateAuthority>>,
    jwt: Mutex<JwtKeySet>,
    jwt_issuer: Option<String>,
}

impl Authority {
    /// A fresh in-memory authority: new CA (valid [`DEFAULT_CA_VALIDITY`]) and one JWT key.
    ///
    /// Blocking: generating an RS256 key takes up to a few hundred milliseconds, so call it
    /// from `spawn_blocking` when on a runtime and `alg` is RS256.
    pub fn new(trust_domain: TrustDomain, alg: JwtAlg) -> Result<Self, AuthorityError> {
        let ca = CertificateAuthority::generate(&trust_domain, DEFAULT_CA_VALIDITY)?;
        let keys = JwtKeySet::new(SigningKey::generate(alg)?, SigningKey::generate(alg)?);
        Ok(Self::from_parts(ca, keys))
    }

    /// Assembles an authority from loaded parts (the state directory does this).
    pub fn from_parts(ca: CertificateAuthority, keys: JwtKeySet) -> Self {
        Self {
            trust_domain: ca.trust_domain().clone(),
            ca: RwLock::new(Arc::new(ca)),
            jwt: Mutex::new(keys),
            jwt_issuer: None,
        }
    }

    /// Sets the `iss` claim of JWTs this authority signs.
    #[must_use]
    pub fn with_jwt_issuer(mut self, issuer: Option<String>) -> Self {
        self.jwt_issuer = issuer;
        self
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The X.509 CA (the current one: see [`Authority::retire_ca_now`]).
    pub fn ca(&self) -> Arc<CertificateAuthority> {
        Arc::clone(&self.ca.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The CA certificate, DER: the X.509 bundle of this trust domain.
    pub fn ca_der(&self) -> Vec<u8> {
        self.ca().cert_der().to_vec()
    }

    /// Replaces the CA with `next` at once, as after a CA compromise: the old CA leaves the
    /// bundle, so every SVID it issued stops being trusted as soon as peers get the new bundle.
    /// The caller re-issues the SVIDs. Errors if `next` is of another trust domain.
    pub fn retire_ca_now(&self, next: CertificateAuthority) -> Result<(), AuthorityError> {
        if next.trust_domain() != &self.trust_domain {
            return Err(AuthorityError::ForeignSpiffeId {
                id: next.trust_domain().id_string(),
                trust_domain: self.trust_domain.to_string(),
            });
        }
        *self.ca.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        Ok(())
    }

    /// Issues an X509-SVID. Errors if `spiffe_id` is not in this trust domain.
    pub fn issue_x509(
        &self,
        spiffe_id: &SpiffeId,
        ttl: Duration,
    ) -> Result<IssuedX509Svid, AuthorityError> {
        self.check_member(spiffe_id)?;
        Ok(self.ca().issue(spiffe_id, ttl)?)
    }

    /// Signs a JWT-SVID for `sub` with audiences `audience`, valid for `ttl` from now, with
    /// the current key (and `iss` if configured). The result is a bearer token: never log it.
    pub fn sign_jwt<A: AsRef<str>>(
        &self,
        sub: &SpiffeId,
        audience: &[A],
        ttl: Duration,
    ) -> Result<String, AuthorityError> {
        self.check_member(sub)?;
        let now = unix_now();
        let ttl_secs = i64::try_from(ttl.as_secs()).map_err(|_| AuthorityError::Ttl(ttl))?;
        let claims = JwtClaims {
            sub: sub.to_string(),
            aud: audience.iter().map(|a| a.as_ref().to_owned()).collect(),
            exp: now.checked_add(ttl_secs).ok_or(AuthorityError::Ttl(ttl))?,
            iat: now,
            iss: self.jwt_issuer.clone(),
            extra: serde_json::Map::new(),
        };
        self.sign_claims(&claims)
    }

    /// Signs arbitrary claims with the current key, unchecked: for tests that need expired
    /// tokens, foreign subjects or extra claims.
    pub fn sign_claims(&self, claims: &JwtClaims) -> Result<String, AuthorityError> {
        Ok(self.keys().sign(claims)?)
    }

    /// The `kid` of the key that signs new tokens.
    pub fn current_kid(&self) -> String {
        self.keys().current().kid().to_owned()
    }

    /// The JWKS of this trust domain (current and still-published retired keys).
    pub fn jwks(&self) -> Value {
        self.keys().jwks()
    }

    /// [`Authority::jwks`] serialized, as served by `FetchJWTBundles` and `/keys`.
    pub fn jwks_json(&self) -> String {
        self.jwks().to_string()
    }

    /// The JWKS as a `spiffe::JwtBundle`, for `JwtSvid::parse_and_validate`.
    pub fn jwt_bundle(&self) -> Result<JwtBundle, AuthorityError> {
        Ok(JwtBundle::from_jwt_authorities(
            self.trust_domain.clone(),
            self.jwks_json().as_bytes(),
        )?)
    }

    /// The pre-published next key starts signing and `new_next` is published in its place;
    /// the old key stays in the JWKS for `jwt_ttl` (or until the latest token it signed
    /// expires, whichever is later). See [`JwtKeySet`].
    pub fn rotate_jwt_key(&self, new_next: SigningKey, jwt_ttl: Duration) {
        let ttl = i64::try_from(jwt_ttl.as_secs()).unwrap_or(i64::MAX);
        self.keys().rotate(new_next, unix_now(), ttl);
    }

    /// Replaces the signing key and removes it from the JWKS at once (see
    /// [`JwtKeySet::retire_now`]); returns the removed `kid`.
    pub fn retire_jwt_key_now(&self, new_next: SigningKey) -> String {
        self.keys().retire_now(new_next)
    }

    /// Drops retired keys whose tokens have all expired; returns whether the JWKS changed.
    pub fn prune_jwt_keys(&self) -> bool {
        self.keys().prune(unix_now())
    }

    /// The signature algorithm of the current key.
    pub fn jwt_alg(&self) -> JwtAlg {
        self.keys().current().alg()
    }

    /// When the current key started signing and when the next retired key can be dropped.
    pub(crate) fn jwt_schedule(&self) -> (SystemTime, Option<i64>) {
        let keys = self.keys();
        (keys.current_since(), keys.next_prune())
    }

    /// Locks the key set. A poisoned lock only means another thread panicked mid-signing;
    /// the key set itself is never left half-updated, so keep using it.
    pub(crate) fn keys(&self) -> MutexGuard<'_, JwtKeySet> {
        self.jwt.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_member(&self, id: &SpiffeId) -> Result<(), AuthorityError> {
        if id.is_member_of(&self.trust_domain) {
            Ok(())
        } else {
            Err(AuthorityError::ForeignSpiffeId {
                id: id.to_string(),
                trust_domain: self.trust_domain.to_string(),
            })
        }
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use spiffe::{JwtBundleSet, JwtSvid};

    use super::*;

    fn authority(td: &str, alg: JwtAlg) -> Authority {
        Authority::new(TrustDomain::new(td).unwrap(), alg).unwrap()
    }

    fn bundles(authorities: &[&Authority]) -> JwtBundleSet {
        authorities
            .iter()
            .map(|a| a.jwt_bundle().unwrap())
            .collect()
    }

    #[test]
    fn es256_jwt_validates_with_spiffe() {
        let a = authority("example.org", JwtAlg::Es256)
            .with_jwt_issuer(Some("https://oidc.example.org".into()));
        let sub = SpiffeId::new("spiffe://example.org/w").unwrap();
        let token = a
            .sign_jwt(&sub, &["aud1", "aud2"], Duration::from_secs(60))
            .unwrap();
        let svid = JwtSvid::parse_and_validate(&token, &bundles(&[&a]), &["aud2"]).unwrap();
        assert_eq!(svid.spiffe_id(), &sub);
        assert_eq!(svid.key_id(), a.current_kid());
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["iss"], "https://oidc.example.org");
        assert!(claims["aud"].is_array());
        assert!(claims["iat"].is_i64());
    }

    #[test]
    fn rs256_jwt_validates_with_spiffe() {
        let a = authority("example.org", JwtAlg::Rs256);
        let sub = SpiffeId::new("spiffe://example.org/w").unwrap();
        let token = a.sign_jwt(&sub, &["aud"], Duration::from_secs(60)).unwrap();
        JwtSvid::parse_and_validate(&token, &bundles(&[&a]), &["aud"]).unwrap();
        assert_eq!(a.jwks()["keys"][0]["kty"], "RSA");
    }

    #[test]
    fn wrong_audience_and_wrong_domain_are_rejected() {
        let a = authority("example.org", JwtAlg::Es256);
        let b = authority("other.org", JwtAlg::Es256);
        let sub = SpiffeId::new("spiffe://example.org/w").unwrap();
        let token = a.sign_jwt(&sub, &["aud"], Duration::from_secs(60)).unwrap();
        assert!(JwtSvid::parse_and_validate(&token, &bundles(&[&a]), &["other"]).is_err());
        // Only the other trust domain's bundle: no authority for this token.
        assert!(JwtSvid::parse_and_validate(&token, &bundles(&[&b]), &["aud"]).is_err());
        // An authority refuses to sign for a foreign trust domain.
        assert!(matches!(
            b.sign_jwt(&sub, &["aud"], Duration::from_secs(60)),
            Err(AuthorityError::ForeignSpiffeId { .. })
        ));
    }

    #[test]
    fn token_signed_before_rotation_still_validates() {
        let a = authority("example.org", JwtAlg::Es256);
        let sub = SpiffeId::new("spiffe://example.org/w").unwrap();
        let old = a.sign_jwt(&sub, &["aud"], Duration::from_secs(60)).unwrap();
        let old_kid = a.current_kid();
        let before_rotation = bundles(&[&a]);
        a.rotate_jwt_key(
            SigningKey::generate(JwtAlg::Es256).unwrap(),
            Duration::from_secs(60),
        );
        assert_ne!(a.current_kid(), old_kid);
        assert!(!a.prune_jwt_keys());
        JwtSvid::parse_and_validate(&old, &bundles(&[&a]), &["aud"]).unwrap();
        let new = a.sign_jwt(&sub, &["aud"], Duration::from_secs(60)).unwrap();
        // A verifier that has not seen the rotation yet already knows the new key.
        JwtSvid::parse_and_validate(&new, &before_rotation, &["aud"]).unwrap();
    }

    #[test]
    fn expired_token_is_rejected() {
        let a = authority("example.org", JwtAlg::Es256);
        let now = unix_now();
        let token = a
            .sign_claims(&JwtClaims {
                sub: "spiffe://example.org/w".into(),
                aud: vec!["aud".into()],
                exp: now - 10,
                iat: now - 70,
                iss: None,
                extra: serde_json::Map::new(),
            })
            .unwrap();
        assert!(JwtSvid::parse_and_validate(&token, &bundles(&[&a]), &["aud"]).is_err());
    }
}
