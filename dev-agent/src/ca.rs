//! An X.509 certificate authority for one trust domain and X509-SVID issuance.
//!
//! The certificates follow the SPIFFE X509-SVID specification: the CA is a self-signed root
//! whose only URI SAN is the trust domain's SPIFFE ID; each leaf carries exactly one URI SAN
//! (the SVID's SPIFFE ID), `CA:FALSE`, `digitalSignature` (plus `keyEncipherment` and
//! `keyAgreement`, as SPIRE issues them) and both TLS EKUs, so it works as a client and as a
//! server certificate. All keys are ECDSA P-256.

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData as _, SanType,
    SerialNumber, string::Ia5String,
};
use spiffe::{SpiffeId, TrustDomain};
use time::OffsetDateTime;

use crate::secret::SecretBytes;

/// Leaves start this far in the past so that a peer whose clock is slightly behind still
/// accepts a freshly issued SVID.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(10);

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// rcgen rejected the parameters or failed to sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A duration does not fit into a certificate validity period.
    #[error("validity period {0:?} is out of range")]
    Validity(Duration),
    /// The stored CA certificate or key is unusable.
    #[error("stored CA for {trust_domain} is invalid: {reason}")]
    InvalidStored {
        /// The trust domain.
        trust_domain: String,
        /// What is wrong.
        reason: String,
    },
    /// Random number generation failed.
    #[error("random serial number generation failed")]
    Random,
}

// === IssuedX509Svid ===

/// A freshly issued X509-SVID: leaf certificate (DER), its private key (PKCS#8 DER).
#[derive(Clone, Debug)]
pub struct IssuedX509Svid {
    /// The SPIFFE ID in the URI SAN.
    pub spiffe_id: SpiffeId,
    /// The leaf certificate, DER. The chain is just the leaf: the CA is a self-signed root.
    pub cert_der: Vec<u8>,
    /// The leaf's private key, PKCS#8 DER.
    pub key_pkcs8: SecretBytes,
    /// When the leaf was issued (its notBefore is [`CLOCK_SKEW_ALLOWANCE`] earlier).
    pub issued_at: SystemTime,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
}

impl IssuedX509Svid {
    /// The leaf certificate as PEM (for an Envoy `tls_certificates` inline string).
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }

    /// The private key as PKCS#8 PEM: a secret, never log it.
    pub fn key_pem(&self) -> SecretBytes {
        SecretBytes::new(pem_encode("PRIVATE KEY", self.key_pkcs8.expose()).into_bytes())
    }
}

// === CertificateAuthority ===

/// A self-signed root CA for one trust domain.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
    not_after: SystemTime,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a new CA key and self-signed certificate valid for `validity`.
    pub fn generate(trust_domain: &TrustDomain, validity: Duration) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = ca_params(trust_domain)?;
        params.serial_number = Some(random_serial()?);
        params.not_before = now - to_time(CLOCK_SKEW_ALLOWANCE)?;
        params.not_after = params_not_after(now, validity)?;
        let not_after = SystemTime::from(params.not_after);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            trust_domain: trust_domain.clone(),
            issuer: Issuer::new(params, key),
            cert_der: cert.der().to_vec(),
            not_after,
        })
    }

    /// Loads a CA kept by the state directory: a PKCS#8 PEM key and a PEM certificate.
    ///
    /// Checks that the certificate is a CA for `trust_domain` and matches the key, so a
    /// mixed-up state directory fails loudly instead of issuing unverifiable SVIDs.
    pub fn from_pem(
        trust_domain: &TrustDomain,
        key_pem: &str,
        cert_pem: &str,
    ) -> Result<Self, CaError> {
        let invalid = |reason: String| CaError::InvalidStored {
            trust_domain: trust_domain.to_string(),
            reason,
        };
        let key = KeyPair::from_pem(key_pem).map_err(|e| invalid(format!("key: {e}")))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| invalid(format!("certificate PEM: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents)
            .map_err(|e| invalid(format!("certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(invalid("certificate is not a CA".into()));
        }
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(invalid("certificate does not match the key".into()));
        }
        let expected = trust_domain.id_string();
        if uri_sans(&cert) != [expected.as_str()] {
            return Err(invalid(format!("certificate URI SAN is not {expected}")));
        }
        let not_after = SystemTime::from(cert.validity().not_after.to_datetime());
        // The issuer name in leaves must equal the CA's subject; `ca_params` is deterministic
        // per trust domain, so rebuilding it reproduces the stored subject.
        let params = ca_params(trust_domain)?;
        Ok(Self {
            trust_domain: trust_domain.clone(),
            issuer: Issuer::new(params, key),
            cert_der: pem.contents,
            not_after,
        })
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificate, DER: the trust domain's X.509 bundle.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }

    /// The CA private key, PKCS#8 PEM, for the state directory only.
    pub fn key_pem(&self) -> SecretBytes {
        SecretBytes::new(self.issuer.key().serialize_pem().into_bytes())
    }

    /// The CA certificate's notAfter.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Issues an X509-SVID for `spiffe_id`, valid from now minus [`CLOCK_SKEW_ALLOWANCE`]
    /// until now plus `ttl`, with a fresh key and a random serial number.
    pub fn issue(&self, spiffe_id: &SpiffeId, ttl: Duration) -> Result<IssuedX509Svid, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "US");
        dn.push(DnType::OrganizationName, "SPIFFE");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(spiffe_id.to_string())?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(random_serial()?);
        params.not_before = now - to_time(CLOCK_SKEW_ALLOWANCE)?;
        params.not_after = params_not_after(now, ttl)?;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedX509Svid {
            spiffe_id: spiffe_id.clone(),
            cert_der: cert.der().to_vec(),
            key_pkcs8: SecretBytes::new(key.serialize_der()),
            issued_at: SystemTime::from(now),
            not_after: SystemTime::from(params.not_after),
        })
    }
}

/// Subject, key usages and constraints of the root; deterministic per trust domain.
fn ca_params(trust_domain: &TrustDomain) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::OrganizationName, "SPIFFE");
    dn.push(
        DnType::CommonName,
        format!("spiffe-dev-agent CA {trust_domain}"),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(trust_domain.id_string())?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn params_not_after(now: OffsetDateTime, ttl: Duration) -> Result<OffsetDateTime, CaError> {
    now.checked_add(to_time(ttl)?).ok_or(CaError::Validity(ttl))
}

fn to_time(d: Duration) -> Result<time::Duration, CaError> {
    time::Duration::try_from(d).map_err(|_| CaError::Validity(d))
}

/// 16 random bytes, positive: unique per issuance as RFC 5280 requires.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0_u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CaError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn uri_sans<'a>(cert: &'a x509_parser::certificate::X509Certificate<'_>) -> Vec<&'a str> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect()
}

/// PEM with 64-column lines (RFC 7468).
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature;
    use x509_parser::{certificate::X509Certificate, prelude::FromDer};

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn verify_signed_by(leaf: &X509Certificate<'_>, ca: &X509Certificate<'_>) {
        let sig = leaf.signature_value.data.as_ref();
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_ASN1,
            ca.public_key().subject_public_key.data.as_ref(),
        )
        .verify(leaf.tbs_certificate.as_ref(), sig)
        .expect("leaf signature verifies with the CA key");
        assert_eq!(leaf.issuer(), ca.subject());
    }

    #[test]
    fn ca_is_a_spiffe_root() {
        let ca = CertificateAuthority::generate(&td(), Duration::from_secs(86400)).unwrap();
        let (_, cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        assert!(cert.is_ca());
        assert_eq!(cert.subject(), cert.issuer());
        verify_signed_by(&cert, &cert);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert_eq!(uri_sans(&cert), ["spiffe://example.org"]);
    }

    #[test]
    fn leaf_is_a_valid_x509_svid() {
        let ca = CertificateAuthority::generate(&td(), Duration::from_secs(86400)).unwrap();
        let id = SpiffeId::new("spiffe://example.org/workload").unwrap();
        let svid = ca.issue(&id, Duration::from_secs(60)).unwrap();
        let (_, leaf) = X509Certificate::from_der(&svid.cert_der).unwrap();
        let (_, ca_cert) = X509Certificate::from_der(ca.cert_der()).unwrap();

        assert_eq!(uri_sans(&leaf), ["spiffe://example.org/workload"]);
        let bc = leaf.basic_constraints().unwrap().unwrap().value;
        assert!(!bc.ca);
        let ku = leaf.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature());
        assert!(!ku.key_cert_sign() && !ku.crl_sign());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        verify_signed_by(&leaf, &ca_cert);

        let now = OffsetDateTime::now_utc();
        let nb = leaf.validity().not_before.to_datetime();
        let na = leaf.validity().not_after.to_datetime();
        assert!(
            nb < now - time::Duration::seconds(5),
            "notBefore tolerates skew"
        );
        assert!((na - now - time::Duration::seconds(60)).abs() < time::Duration::seconds(3));

        // The key is PKCS#8 and belongs to the certificate.
        let key = KeyPair::try_from(svid.key_pkcs8.expose()).unwrap();
        assert_eq!(
            leaf.public_key().raw,
            key.subject_public_key_info().as_slice()
        );

        // spiffe's own X509-SVID parser accepts it.
        spiffe::X509Svid::parse_from_der(&svid.cert_der, svid.key_pkcs8.expose()).unwrap();
    }

    #[test]
    fn serials_are_unique() {
        let ca = CertificateAuthority::generate(&td(), Duration::from_secs(86400)).unwrap();
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let a = ca.issue(&id, Duration::from_secs(60)).unwrap();
        let b = ca.issue(&id, Duration::from_secs(60)).unwrap();
        let serial = |der: &[u8]| {
            X509Certificate::from_der(der)
                .unwrap()
                .1
                .raw_serial()
                .to_vec()
        };
        assert_ne!(serial(&a.cert_der), serial(&b.cert_der));
    }

    #[test]
    fn stored_ca_round_trips_and_keeps_issuing_verifiable_leaves() {
        let ca = CertificateAuthority::generate(&td(), Duration::from_secs(86400)).unwrap();
        let key_pem = String::from_utf8(ca.key_pem().expose().to_vec()).unwrap();
        let loaded = CertificateAuthority::from_pem(&td(), &key_pem, &ca.cert_pem()).unwrap();
        assert_eq!(loaded.cert_der(), ca.cert_der());
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let svid = loaded.issue(&id, Duration::from_secs(60)).unwrap();
        let (_, leaf) = X509Certificate::from_der(&svid.cert_der).unwrap();
        let (_, ca_cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        verify_signed_by(&leaf, &ca_cert);

        let other = TrustDomain::new("other.org").unwrap();
        assert!(CertificateAuthority::from_pem(&other, &key_pem, &ca.cert_pem()).is_err());
    }
}
