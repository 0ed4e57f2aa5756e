//! SDS resource names and what they mean (`docs/protocols.md#sds-resource-names`).
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
//! | `jwt-svid:<aud>[,<aud>…][;spiffe_id=<id>]` | a JWT-SVID for those audiences (generic secret) |
//!
//! SDS requests carry only names, so a JWT-SVID's audiences travel in the name (spire#5931,
//! `docs/protocols.md#sds-jwt-svid`). Audiences are percent-decoded: write `%2C` for a comma, `%3B`
//! for a semicolon and `%25` for a percent sign inside one audience.

use std::fmt;

use workload_client::JwtKey;
use workload_client::spiffe::{SpiffeId, TrustDomain};

/// The workload's default X.509-SVID.
pub const DEFAULT_SVID: &str = "default";
/// The own trust domain's bundle.
pub const ROOT_CA: &str = "ROOTCA";
/// Every bundle the workload trusts.
pub const ALL_BUNDLES: &str = "ALL";
/// Prefix of JWT-SVID resource names.
pub const JWT_SVID_PREFIX: &str = "jwt-svid:";
/// At most this many audiences in one JWT-SVID name.
pub const MAX_AUDIENCES: usize = 16;
/// Longest accepted resource name, in bytes.
pub const MAX_NAME_LEN: usize = 2048;

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
    /// `jwt-svid:<audiences>[;spiffe_id=<id>]`.
    JwtSvid(JwtKey),
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
    /// A `jwt-svid:` name that does not follow the scheme.
    #[error(
        "malformed JWT-SVID name ({0}); expected jwt-svid:<audience>[,<audience>…][;spiffe_id=<SPIFFE ID>]"
    )]
    MalformedJwtSvid(String),
}

// === impl ResourceName ===

impl ResourceName {
    /// Parses one requested name. Case matters, as in SPIRE (`rootca` is not `ROOTCA`).
    pub fn parse(name: &str) -> Result<Self, NameError> {
        if let Some(rest) = name.strip_prefix(JWT_SVID_PREFIX) {
            return parse_jwt_svid(name, rest).map(Self::JwtSvid);
        }
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
            Self::JwtSvid(key) => {
                f.write_str(JWT_SVID_PREFIX)?;
                for (i, aud) in key.audiences().iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(&escape(aud))?;
                }
                if let Some(id) = key.spiffe_id() {
                    write!(f, ";spiffe_id={id}")?;
                }
                Ok(())
            }
        }
    }
}

fn parse_jwt_svid(name: &str, rest: &str) -> Result<JwtKey, NameError> {
    let bad = |why: &str| NameError::MalformedJwtSvid(why.to_owned());
    if name.len() > MAX_NAME_LEN {
        return Err(bad("name too long"));
    }
    let mut parts = rest.split(';');
    let audiences = parts.next().unwrap_or_default();
    let mut spiffe_id = None;
    for param in parts {
        match param.split_once('=') {
            Some(("spiffe_id", v)) if spiffe_id.is_none() => {
                spiffe_id = Some(SpiffeId::new(v).map_err(|e| bad(&format!("spiffe_id: {e}")))?);
            }
            _ => return Err(bad("unknown or repeated parameter")),
        }
    }
    let audiences = audiences
        .split(',')
        .map(unescape)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if audiences.len() > MAX_AUDIENCES {
        return Err(bad("too many audiences"));
    }
    if audiences.iter().any(|a| a.is_empty()) {
        return Err(bad("empty audience"));
    }
    if audiences
        .iter()
        .any(|a| a.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return Err(bad("whitespace or control character in an audience"));
    }
    let key = JwtKey::new(audiences).map_err(|e| bad(&e.to_string()))?;
    Ok(match spiffe_id {
        Some(id) => key.with_spiffe_id(id),
        None => key,
    })
}

/// Percent-decodes one audience (`%XX`, upper or lower case hex).
fn unescape(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "bad percent escape".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "audience is not UTF-8 after decoding".to_owned())
}

/// The inverse of [`unescape`] for the characters the scheme reserves.
fn escape(s: &str) -> String {
    s.replace('%', "%25")
        .replace(',', "%2C")
        .replace(';', "%3B")
}

#[cfg(test)]
#[path = "names_props.rs"]
mod props;

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
    fn jwt_svid_names_carry_audiences_and_an_optional_spiffe_id() {
        let ResourceName::JwtSvid(key) =
            ResourceName::parse("jwt-svid:https://sts.amazonaws.com").unwrap()
        else {
            panic!("not a JWT-SVID name");
        };
        assert_eq!(key.audiences(), ["https://sts.amazonaws.com"]);
        assert_eq!(key.spiffe_id(), None);

        let ResourceName::JwtSvid(key) =
            ResourceName::parse("jwt-svid:b,a%2Cc;spiffe_id=spiffe://example.org/web").unwrap()
        else {
            panic!("not a JWT-SVID name");
        };
        assert_eq!(key.audiences(), ["a,c", "b"]);
        assert_eq!(
            key.spiffe_id().unwrap().to_string(),
            "spiffe://example.org/web"
        );
        // Display is canonical (sorted, escaped) and parses back to the same key.
        let shown = ResourceName::JwtSvid(key.clone()).to_string();
        assert_eq!(shown, "jwt-svid:a%2Cc,b;spiffe_id=spiffe://example.org/web");
        assert_eq!(
            ResourceName::parse(&shown).unwrap(),
            ResourceName::JwtSvid(key)
        );
    }

    #[test]
    fn malformed_jwt_svid_names_are_refused() {
        for name in [
            "jwt-svid:",
            "jwt-svid:a,,b",
            "jwt-svid:a b",
            "jwt-svid:a%2",
            "jwt-svid:a%zz",
            "jwt-svid:a;spiffe_id=not-an-id",
            "jwt-svid:a;aud=b",
            "jwt-svid:a;spiffe_id=spiffe://x.org/a;spiffe_id=spiffe://x.org/b",
            "jwt-svid:%ff",
            "jwt-svid:%+F",
        ] {
            assert!(
                matches!(
                    ResourceName::parse(name),
                    Err(NameError::MalformedJwtSvid(_))
                ),
                "{name} accepted"
            );
        }
        let many = format!(
            "jwt-svid:{}",
            (0..17).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
        );
        assert!(ResourceName::parse(&many).is_err());
        let long = format!("jwt-svid:{}", "a".repeat(MAX_NAME_LEN));
        assert!(ResourceName::parse(&long).is_err());
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
