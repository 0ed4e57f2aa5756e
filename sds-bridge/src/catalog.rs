//! Every secret one X.509 snapshot yields, rendered once and shared by all streams.
//!
//! A rotation pushed to a thousand Envoy streams must not PEM-encode a thousand times: the
//! catalog renders each resource (under each name it can be asked for, in each validation
//! mode) when the snapshot arrives, and streams only look up and compare fingerprints.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TypedExtensionConfig, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use workload_client::X509Context;
use workload_client::spiffe::{TrustDomain, X509Bundle};

use crate::names::{DEFAULT_SVID, ResourceName};

/// The extension name of Envoy's SPIFFE certificate validator.
pub const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";

/// How a validation context is expressed (`docs/protocols.md#sds-secrets`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ValidationMode {
    /// `custom_validator_config` with `envoy.tls.cert_validator.spiffe`: each bundle is bound to
    /// its trust domain, so a federated CA cannot vouch for our own trust domain's IDs.
    #[default]
    Spiffe,
    /// Plain `trusted_ca` PEM, for Envoy configurations that add their own SAN matchers.
    TrustedCa,
}

/// What `ROOTCA` carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RootCaBundles {
    /// The own trust domain's bundle (the SPIRE agent's behaviour).
    #[default]
    Own,
    /// Own and federated bundles (Istio federation setups that only know `ROOTCA`).
    All,
}

/// One rendered secret: the packed `Secret` and a fingerprint of its bytes. Key material is in
/// `any`, so `Debug` prints only the fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The `Secret`, packed for a `DiscoveryResponse`.
    pub any: Any,
    /// Hash of the encoded secret: streams push a name only when this changes.
    pub fingerprint: u64,
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendered")
            .field("type_url", &self.any.type_url)
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint))
            .field("value", &"<redacted>")
            .finish()
    }
}

/// Every secret of one snapshot, by name and validation mode.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// Counts snapshots since start; `version_info` of pushes is per stream, this is for logs.
    pub generation: u64,
    /// When the snapshot reached the bridge (push-to-ACK latency is measured from here).
    pub received: Instant,
    entries: BTreeMap<(ResourceName, ValidationMode), Arc<Rendered>>,
    /// The names a wildcard (empty-names) request gets: every trust domain and every SVID by
    /// its own ID, as the SPIRE agent answers.
    canonical: BTreeSet<ResourceName>,
}

// === impl Catalog ===

impl Catalog {
    /// Renders every secret `ctx` yields.
    pub fn build(ctx: &X509Context, rootca: RootCaBundles, generation: u64) -> Self {
        let mut catalog = Self {
            generation,
            received: Instant::now(),
            entries: BTreeMap::new(),
            canonical: BTreeSet::new(),
        };

        // TLS certificates do not depend on the validation mode: one rendering per name.
        let default = &ctx.default_svid().svid;
        catalog.insert(
            ResourceName::DefaultSvid,
            ValidationMode::Spiffe,
            tls_certificate(DEFAULT_SVID, default),
        );
        for entry in ctx.svids() {
            let name = ResourceName::Svid(entry.svid.spiffe_id().clone());
            let secret = tls_certificate(&name.to_string(), &entry.svid);
            catalog.canonical.insert(name.clone());
            catalog.insert(name, ValidationMode::Spiffe, secret);
        }

        // Validation contexts, in both modes: a stream's mode comes from its node metadata.
        let all: Vec<(&TrustDomain, &X509Bundle)> = ctx
            .bundles()
            .iter()
            .map(|(td, b)| (td, b.as_ref()))
            .collect();
        let only = |td: &TrustDomain| -> Vec<(&TrustDomain, &X509Bundle)> {
            all.iter().copied().filter(|(t, _)| *t == td).collect()
        };
        let mut contexts: Vec<(ResourceName, Vec<(&TrustDomain, &X509Bundle)>)> = all
            .iter()
            .map(|(td, _)| (ResourceName::TrustDomain((*td).clone()), only(td)))
            .collect();
        catalog
            .canonical
            .extend(contexts.iter().map(|(name, _)| name.clone()));
        let rootca_bundles = match rootca {
            RootCaBundles::Own => only(ctx.trust_domain()),
            RootCaBundles::All => all.clone(),
        };
        contexts.push((ResourceName::RootCa, rootca_bundles));
        contexts.push((ResourceName::AllBundles, all.clone()));
        for (name, bundles) in contexts {
            for mode in [ValidationMode::Spiffe, ValidationMode::TrustedCa] {
                let secret = validation_context(&name.to_string(), &bundles, mode);
                catalog.insert(name.clone(), mode, secret);
            }
        }
        catalog
    }

    fn insert(&mut self, name: ResourceName, mode: ValidationMode, secret: Secret) {
        self.entries.insert((name, mode), Arc::new(render(secret)));
    }

    /// The secret for `name` in `mode`, if this snapshot has it. TLS certificates are the same
    /// in both modes.
    pub fn get(&self, name: &ResourceName, mode: ValidationMode) -> Option<&Arc<Rendered>> {
        self.entries
            .get(&(name.clone(), mode))
            .or_else(|| self.entries.get(&(name.clone(), ValidationMode::Spiffe)))
    }

    /// The names a wildcard request is answered with.
    pub fn canonical_names(&self) -> impl Iterator<Item = &ResourceName> {
        self.canonical.iter()
    }
}

/// Packs `secret` and fingerprints its bytes.
pub(crate) fn render(secret: Secret) -> Rendered {
    let any = pack_any(secret);
    let mut h = DefaultHasher::new();
    any.value.hash(&mut h);
    Rendered {
        fingerprint: h.finish(),
        any,
    }
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
        watched_directory: None,
    })
}

/// A `TlsCertificate` secret: the chain (leaf first) and the PKCS#8 key, inline PEM.
fn tls_certificate(name: &str, svid: &workload_client::spiffe::X509Svid) -> Secret {
    let chain = pem(
        "CERTIFICATE",
        svid.cert_chain().iter().map(|c| c.as_bytes()),
    );
    let key = pem("PRIVATE KEY", [svid.private_key().as_bytes()]);
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain),
            private_key: inline(key),
            ..Default::default()
        })),
    }
}

/// A validation context over `bundles`: the SPIFFE validator with one entry per trust
/// domain, or all authorities concatenated as `trusted_ca`.
fn validation_context(
    name: &str,
    bundles: &[(&TrustDomain, &X509Bundle)],
    mode: ValidationMode,
) -> Secret {
    let context = match mode {
        ValidationMode::TrustedCa => CertificateValidationContext {
            trusted_ca: inline(pem(
                "CERTIFICATE",
                bundles
                    .iter()
                    .flat_map(|(_, b)| b.authorities().iter().map(|c| c.as_bytes())),
            )),
            ..Default::default()
        },
        ValidationMode::Spiffe => {
            let mut sorted: Vec<_> = bundles.to_vec();
            sorted.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            let config = SpiffeCertValidatorConfig {
                trust_domains: sorted
                    .iter()
                    .map(|(td, b)| spiffe_cert_validator_config::TrustDomain {
                        name: td.as_str().to_owned(),
                        trust_bundle: inline(pem(
                            "CERTIFICATE",
                            b.authorities().iter().map(|c| c.as_bytes()),
                        )),
                        ..Default::default()
                    })
                    .collect(),
                trust_bundles: None,
            };
            CertificateValidationContext {
                custom_validator_config: Some(TypedExtensionConfig {
                    name: SPIFFE_VALIDATOR.to_owned(),
                    typed_config: Some(pack_any(config)),
                }),
                ..Default::default()
            }
        }
    };
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(context)),
    }
}

/// PEM blocks with the standard 64-column base64 body.
fn pem<'a>(label: &str, ders: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = String::new();
    for der in ders {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        out.push_str("-----BEGIN ");
        out.push_str(label);
        out.push_str("-----\n");
        for line in b64.as_bytes().chunks(64) {
            // base64 output is ASCII, so every chunk is valid UTF-8.
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END ");
        out.push_str(label);
        out.push_str("-----\n");
    }
    out.into_bytes()
}

/// Rebuilds the catalog on every X.509 snapshot the watcher publishes. The task ends when the
/// watcher's stream supervisor is dropped.
pub fn publish(
    watcher: &workload_client::X509Watcher,
    rootca: RootCaBundles,
) -> tokio::sync::watch::Receiver<Option<Arc<Catalog>>> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let mut snapshots = watcher.subscribe();
    tokio::spawn(async move {
        let mut generation = 0;
        loop {
            let ctx = snapshots.borrow_and_update().clone();
            if let Some(ctx) = ctx {
                generation += 1;
                let catalog = Catalog::build(&ctx, rootca, generation);
                tracing::debug!(generation, "secrets catalog rebuilt");
                if tx.send(Some(Arc::new(catalog))).is_err() {
                    return;
                }
            }
            if snapshots.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::testing::{authority, snapshot};

    fn secret(c: &Catalog, name: &str, mode: ValidationMode) -> Secret {
        let name = ResourceName::parse(name).unwrap();
        Secret::decode(c.get(&name, mode).unwrap().any.value.as_slice()).unwrap()
    }

    fn spiffe_trust_domains(s: &Secret) -> Vec<String> {
        let Some(secret::Type::ValidationContext(vc)) = &s.r#type else {
            panic!("not a validation context: {s:?}");
        };
        let ext = vc.custom_validator_config.as_ref().unwrap();
        assert_eq!(ext.name, SPIFFE_VALIDATOR);
        let cfg =
            SpiffeCertValidatorConfig::decode(ext.typed_config.as_ref().unwrap().value.as_slice())
                .unwrap();
        cfg.trust_domains.into_iter().map(|t| t.name).collect()
    }

    #[test]
    fn names_map_to_the_spire_agent_meanings() {
        let own = authority("example.org");
        let partner = authority("partner.test");
        let ctx = snapshot(
            &own,
            &["spiffe://example.org/web", "spiffe://example.org/admin"],
            &[&partner],
        );
        let c = Catalog::build(&ctx, RootCaBundles::Own, 1);
        let spiffe = ValidationMode::Spiffe;

        let default = secret(&c, "default", spiffe);
        assert_eq!(default.name, "default");
        let Some(secret::Type::TlsCertificate(tls)) = default.r#type else {
            panic!("default is not a TLS certificate");
        };
        let Some(data_source::Specifier::InlineBytes(chain)) =
            tls.certificate_chain.unwrap().specifier
        else {
            panic!("chain not inline");
        };
        let chain = String::from_utf8(chain).unwrap();
        assert!(chain.starts_with("-----BEGIN CERTIFICATE-----\n"));
        let Some(data_source::Specifier::InlineBytes(key)) = tls.private_key.unwrap().specifier
        else {
            panic!("key not inline");
        };
        assert!(
            String::from_utf8(key)
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );

        // The second SVID by its ID; `default` is the first.
        assert_eq!(
            secret(&c, "spiffe://example.org/admin", spiffe).name,
            "spiffe://example.org/admin"
        );
        assert_ne!(
            c.get(&ResourceName::DefaultSvid, spiffe).unwrap().any.value,
            c.get(
                &ResourceName::parse("spiffe://example.org/admin").unwrap(),
                spiffe
            )
            .unwrap()
            .any
            .value
        );

        assert_eq!(
            spiffe_trust_domains(&secret(&c, "ROOTCA", spiffe)),
            ["example.org"]
        );
        assert_eq!(
            spiffe_trust_domains(&secret(&c, "ALL", spiffe)),
            ["example.org", "partner.test"]
        );
        assert_eq!(
            spiffe_trust_domains(&secret(&c, "spiffe://partner.test", spiffe)),
            ["partner.test"]
        );
        assert!(
            c.get(&ResourceName::parse("spiffe://other.test").unwrap(), spiffe)
                .is_none()
        );
        let canonical: Vec<String> = c.canonical_names().map(ToString::to_string).collect();
        assert_eq!(
            canonical,
            [
                "spiffe://example.org",
                "spiffe://partner.test",
                "spiffe://example.org/admin",
                "spiffe://example.org/web",
            ]
        );
    }

    #[test]
    fn trusted_ca_mode_and_rootca_all() {
        let own = authority("example.org");
        let partner = authority("partner.test");
        let ctx = snapshot(&own, &["spiffe://example.org/web"], &[&partner]);
        let c = Catalog::build(&ctx, RootCaBundles::All, 1);
        let rootca = secret(&c, "ROOTCA", ValidationMode::TrustedCa);
        let Some(secret::Type::ValidationContext(vc)) = rootca.r#type else {
            panic!("ROOTCA is not a validation context");
        };
        assert!(vc.custom_validator_config.is_none());
        let Some(data_source::Specifier::InlineBytes(pem)) = vc.trusted_ca.unwrap().specifier
        else {
            panic!("trusted_ca not inline");
        };
        let pem = String::from_utf8(pem).unwrap();
        assert_eq!(
            pem.matches("BEGIN CERTIFICATE").count(),
            2,
            "own + federated"
        );
        assert_eq!(
            spiffe_trust_domains(&secret(&c, "ROOTCA", ValidationMode::Spiffe)),
            ["example.org", "partner.test"]
        );
        // TLS certificates are the same in either mode.
        assert_eq!(
            c.get(&ResourceName::DefaultSvid, ValidationMode::TrustedCa),
            c.get(&ResourceName::DefaultSvid, ValidationMode::Spiffe)
        );
    }

    #[test]
    fn debug_never_shows_key_material() {
        let own = authority("example.org");
        let c = Catalog::build(
            &snapshot(&own, &["spiffe://example.org/w"], &[]),
            RootCaBundles::Own,
            1,
        );
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("PRIVATE KEY") && !dbg.contains("BEGIN"),
            "{dbg}"
        );
        assert!(dbg.contains("<redacted>"));
    }
}
