//! SDS resource names and what they mean (REFERENCE §3).
//!
//! The names are the SPIRE agent's, because Envoy and Istio configurations already use them:
//!
//! | name | secret |
//! | --- | --- |
//! | `default` | the workload's default X.509-SVID (`TlsCertificate`) |
//! | `ROOTCA` | the own trust domain's bundle (all bundles with `--rootca-bundles all`) |
//! | `ALL` | own and federated bundles in one SPIFFE validator |
//! | `spiffe://<td>` | that trust domain's bundle |
//! | `spiffe://<td>/<path>` | that X.509-SVID, when the workload has several |

use std::fmt;

use workload_client::spiffe::{SpiffeId, TrustDomain};

/// The workload's default X.509-SVID.
pub const DEFAULT_SVID: &str = "default";
/// The own trust domain's bundle.
pub const ROOT_CA: &str = "ROOTCA";
/// Every bundle the workload trusts.
pub const ALL_BUNDLES: &str = "ALL";

/// A resource name Envoy asked for, parsed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceName {
    /// `default`.
    DefaultSvid,
    /// `ROOTCA`.
    RootCa,
    /// `ALL`.
    AllBundles,
    /// `spiffe://<td>`.
    TrustDomain(TrustDomain),
    /// `spiffe://<td>/<path>`.
    Svid(SpiffeId),
}

/// A name that can never name a secret: logged once per stream and otherwise ignored (the
/// stream stays open and the other names keep working).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Not one of the fixed names and not a `spiffe://` URI.
    #[error(
        "unknown resource name (expected default, ROOTCA, ALL, spiffe://<trust domain> or a SPIFFE ID)"
    )]
    Unknown,
    /// Looks like a SPIFFE ID or trust domain, but is not a valid one.
    #[error("malformed SPIFFE ID: {0}")]
    MalformedSpiffeId(String),
}

// === impl ResourceName ===

impl ResourceName {
    /// Parses one requested name. Case matters, as in SPIRE (`rootca` is not `ROOTCA`).
    pub fn parse(name: &str) -> Result<Self, NameError> {
        match name {
            DEFAULT_SVID => return Ok(Self::DefaultSvid),
            ROOT_CA => return Ok(Self::RootCa),
            ALL_BUNDLES => return Ok(Self::AllBundles),
            _ => {}
        }
        let Some(rest) = name.strip_prefix("spiffe://") else {
            return Err(NameError::Unknown);
        };
        let parsed = if rest.contains('/') {
            SpiffeId::new(name).map(Self::Svid)
        } else {
            TrustDomain::new(rest).map(Self::TrustDomain)
        }
        .map_err(|e| NameError::MalformedSpiffeId(e.to_string()))?;
        // The secret carries the name Envoy asked for; a name that only matches after
        // normalisation (e.g. upper case) would be answered under another name and never apply.
        if parsed.to_string() != name {
            return Err(NameError::MalformedSpiffeId(format!(
                "not in canonical form (did you mean {parsed}?)"
            )));
        }
        Ok(parsed)
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DefaultSvid => f.write_str(DEFAULT_SVID),
            Self::RootCa => f.write_str(ROOT_CA),
            Self::AllBundles => f.write_str(ALL_BUNDLES),
            Self::TrustDomain(td) => write!(f, "{}", td.id_string()),
            Self::Svid(id) => write!(f, "{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_names_and_spiffe_uris_parse_and_round_trip() {
        for name in [
            "default",
            "ROOTCA",
            "ALL",
            "spiffe://example.org",
            "spiffe://example.org/ns/default/sa/web",
        ] {
            let parsed = ResourceName::parse(name).unwrap();
            assert_eq!(parsed.to_string(), name);
        }
        assert_eq!(
            ResourceName::parse("spiffe://example.org").unwrap(),
            ResourceName::TrustDomain(TrustDomain::new("example.org").unwrap())
        );
    }

    #[test]
    fn unknown_and_malformed_names_are_errors() {
        assert_eq!(ResourceName::parse("rootca"), Err(NameError::Unknown));
        assert_eq!(ResourceName::parse(""), Err(NameError::Unknown));
        assert_eq!(
            ResourceName::parse("file-cert:/etc/cert.pem"),
            Err(NameError::Unknown)
        );
        assert!(matches!(
            ResourceName::parse("spiffe://Example.org"),
            Err(NameError::MalformedSpiffeId(_))
        ));
        assert!(matches!(
            ResourceName::parse("spiffe://example.org/a//b"),
            Err(NameError::MalformedSpiffeId(_))
        ));
    }
}
