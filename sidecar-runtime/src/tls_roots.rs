//! The CA certificates every outbound TLS client of the sidecars trusts (AWS STS today; Azure,
//! GCP and Vault providers to come), loaded once, in one order, with one log line.
//!
//! Order (first that applies wins; no union):
//!
//! 1. **`SSL_CERT_FILE` and/or `SSL_CERT_DIR`** when set: the operator's explicit choice (a
//!    corporate proxy's CA, a pinned private CA), honoured exactly as OpenSSL does (both, when
//!    both are set). Set but unreadable or holding no certificate is an error naming the
//!    variable: silently falling back to public roots would hide the misconfiguration.
//! 2. **OpenShift's injected bundle** at [`OPENSHIFT_BUNDLE`] when present. A ConfigMap labelled
//!    `config.openshift.io/inject-trusted-cabundle=true` receives the cluster's trust (system
//!    roots plus the proxy's `additionalTrustBundle`) and is mounted at this path, as on UBI
//!    images. It is already a superset of the public roots, so adding Debian's on top would
//!    only undo an operator who mounted a narrower bundle on purpose.
//! 3. **Debian's bundle** at [`DEBIAN_BUNDLE`] (also Ubuntu's and Alpine's path): for binaries
//!    run outside the images.
//!
//! Our images carry Debian's Mozilla roots *at the OpenShift path* (see the Containerfile), so
//! one file is trusted by default and a mounted OpenShift bundle replaces it, exactly as on UBI.
//! This is also why we do not let rustls-native-certs (openssl-probe) search: with no
//! `SSL_CERT_*` set it takes the first existing file of a list that starts with
//! [`DEBIAN_BUNDLE`], so a default bundle there would shadow the OpenShift mount.
//!
//! Every certificate is checked as a trust anchor here (a malformed one is skipped and counted),
//! so a TLS client built from [`TrustRoots::pem`] never meets an unparsable root.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use workload_client::Env;

/// Variable naming a PEM bundle to trust instead of the defaults (OpenSSL's name).
pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";
/// Variable naming directories (`:`-separated) of PEM certificates to trust (OpenSSL's name).
pub const SSL_CERT_DIR: &str = "SSL_CERT_DIR";
/// Where OpenShift mounts the injected trusted CA bundle (and where UBI keeps its own).
pub const OPENSHIFT_BUNDLE: &str = "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem";
/// Debian's (and Ubuntu's, Alpine's) CA bundle.
pub const DEBIAN_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why the trust roots could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsRootsError {
    /// An explicitly configured file or directory could not be read.
    #[error("{setting}={path}: cannot read: {reason}")]
    Unreadable {
        /// `SSL_CERT_FILE` or `SSL_CERT_DIR`.
        setting: &'static str,
        /// The path that failed.
        path: String,
        /// What the OS said.
        reason: String,
    },
    /// The explicit configuration yielded no usable certificate.
    #[error("{setting}={path}: no usable PEM certificate found")]
    NoCertificates {
        /// `SSL_CERT_FILE` or `SSL_CERT_DIR`.
        setting: &'static str,
        /// The configured value.
        path: String,
    },
    /// The blocking loader task failed.
    #[error("loading CA certificates: {0}")]
    Task(String),
}

/// Where to look: explicit settings, then the defaults in order. Tests build it with temp
/// paths; [`RootsLocations::from_env`] reads the real variables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootsLocations {
    /// `SSL_CERT_FILE`.
    pub cert_file: Option<PathBuf>,
    /// `SSL_CERT_DIR`, split on `:`.
    pub cert_dirs: Vec<PathBuf>,
    /// Tried in order when nothing is explicit; the first with a usable certificate wins.
    pub defaults: Vec<PathBuf>,
}

impl RootsLocations {
    /// `SSL_CERT_FILE` / `SSL_CERT_DIR` from `env`, and the defaults
    /// [`OPENSHIFT_BUNDLE`], [`DEBIAN_BUNDLE`].
    pub fn from_env(env: &impl Env) -> Self {
        Self {
            cert_file: env.var(SSL_CERT_FILE).map(PathBuf::from),
            cert_dirs: env
                .var(SSL_CERT_DIR)
                .map(|v| {
                    v.split(':')
                        .filter(|p| !p.is_empty())
                        .map(PathBuf::from)
                        .collect()
                })
                .unwrap_or_default(),
            defaults: vec![
                PathBuf::from(OPENSHIFT_BUNDLE),
                PathBuf::from(DEBIAN_BUNDLE),
            ],
        }
    }
}

/// The loaded roots: DER trust anchors and where they came from.
#[derive(Clone, Default)]
pub struct TrustRoots {
    certificates: Vec<CertificateDer<'static>>,
    sources: Vec<PathBuf>,
    skipped: usize,
}

impl fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustRoots")
            .field("certificates", &self.certificates.len())
            .field("sources", &self.sources)
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl TrustRoots {
    /// The trust anchors, DER.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certificates
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.certificates.len()
    }

    /// None loaded: every TLS handshake will fail.
    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty()
    }

    /// The files (or directories) they came from.
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// Certificates found but not usable as trust anchors.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// All anchors as one PEM bundle (for TLS stacks configured with PEM, like aws-smithy's
    /// `TrustStore::with_pem_certificate`).
    pub fn pem(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for cert in &self.certificates {
            let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
            out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
            for line in b64.as_bytes().chunks(64) {
                out.extend_from_slice(line);
                out.push(b'\n');
            }
            out.extend_from_slice(b"-----END CERTIFICATE-----\n");
        }
        out
    }

    /// Adds the usable anchors of `pem` not seen yet; returns how many usable anchors `pem`
    /// holds, duplicates included, so a source whose roots were all loaded from another one
    /// (`SSL_CERT_FILE` and the `SSL_CERT_DIR` it came from) is not mistaken for an empty one.
    fn add_pem(&mut self, pem: &[u8], seen: &mut HashSet<Vec<u8>>) -> usize {
        let mut usable = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let Ok(cert) = cert else {
                self.skipped += 1;
                continue;
            };
            if webpki::anchor_from_trusted_cert(&cert).is_err() {
                self.skipped += 1;
                continue;
            }
            usable += 1;
            // SSL_CERT_DIR holds each certificate twice (file and hash link): keep one.
            if seen.insert(cert.as_ref().to_vec()) {
                self.certificates.push(cert);
            }
        }
        usable
    }
}

/// Loads the roots per the module's order, blocking (file reads): call it at start-up from
/// `spawn_blocking`, or use [`load`]. Logs at INFO what was loaded, at ERROR when nothing was.
pub fn load_blocking(locations: &RootsLocations) -> Result<TrustRoots, TlsRootsError> {
    let mut roots = TrustRoots::default();
    let mut seen = HashSet::new();
    let explicit = locations.cert_file.is_some() || !locations.cert_dirs.is_empty();
    if explicit {
        if let Some(file) = &locations.cert_file {
            let pem = std::fs::read(file).map_err(|e| TlsRootsError::Unreadable {
                setting: SSL_CERT_FILE,
                path: file.display().to_string(),
                reason: e.to_string(),
            })?;
            if roots.add_pem(&pem, &mut seen) == 0 {
                return Err(TlsRootsError::NoCertificates {
                    setting: SSL_CERT_FILE,
                    path: file.display().to_string(),
                });
            }
            roots.sources.push(file.clone());
        }
        for dir in &locations.cert_dirs {
            let added = add_dir(&mut roots, &mut seen, dir)?;
            if added == 0 {
                return Err(TlsRootsError::NoCertificates {
                    setting: SSL_CERT_DIR,
                    path: dir.display().to_string(),
                });
            }
            roots.sources.push(dir.clone());
        }
    } else {
        for path in &locations.defaults {
            let pem = match std::fs::read(path) {
                Ok(pem) => pem,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read CA bundle; trying the next one");
                    continue;
                }
            };
            if roots.add_pem(&pem, &mut seen) > 0 {
                roots.sources.push(path.clone());
                break;
            }
            tracing::warn!(path = %path.display(), "CA bundle holds no usable certificate; trying the next one");
        }
    }
    if roots.is_empty() {
        tracing::error!(
            searched = ?locations.defaults,
            "no CA certificates found: every TLS connection (e.g. to STS) will fail; mount a \
             bundle at {OPENSHIFT_BUNDLE} or set {SSL_CERT_FILE}"
        );
    } else {
        tracing::info!(
            sources = ?roots.sources,
            certificates = roots.len(),
            skipped = roots.skipped,
            explicit,
            "loaded CA certificates for outbound TLS"
        );
    }
    Ok(roots)
}

/// [`load_blocking`] on the blocking pool.
pub async fn load(locations: RootsLocations) -> Result<TrustRoots, TlsRootsError> {
    tokio::task::spawn_blocking(move || load_blocking(&locations))
        .await
        .map_err(|e| TlsRootsError::Task(e.to_string()))?
}

fn add_dir(
    roots: &mut TrustRoots,
    seen: &mut HashSet<Vec<u8>>,
    dir: &Path,
) -> Result<usize, TlsRootsError> {
    let unreadable = |e: std::io::Error| TlsRootsError::Unreadable {
        setting: SSL_CERT_DIR,
        path: dir.display().to_string(),
        reason: e.to_string(),
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let mut added = 0;
    for path in entries {
        // Not every file in a certificate directory is PEM; unreadable ones are skipped.
        if let Ok(pem) = std::fs::read(&path) {
            added += roots.add_pem(&pem, seen);
        }
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn ca_pem(name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
        fn defaults(&self) -> Vec<PathBuf> {
            vec![self.path("openshift.pem"), self.path("debian.crt")]
        }
    }

    #[test]
    fn openshift_bundle_wins_over_debian_without_union() {
        let f = Files::new();
        f.write(
            "openshift.pem",
            &(ca_pem("cluster proxy") + &ca_pem("public")),
        );
        f.write("debian.crt", &(ca_pem("a") + &ca_pem("b") + &ca_pem("c")));
        let roots = load_blocking(&RootsLocations {
            defaults: f.defaults(),
            ..RootsLocations::default()
        })
        .unwrap();
        assert_eq!(roots.len(), 2);
        assert_eq!(roots.sources(), [f.path("openshift.pem")]);
    }

    #[test]
    fn debian_bundle_when_openshift_is_absent_or_empty() {
        let f = Files::new();
        f.write("debian.crt", &ca_pem("a"));
        let locations = RootsLocations {
            defaults: f.defaults(),
            ..RootsLocations::default()
        };
        assert_eq!(
            load_blocking(&locations).unwrap().sources(),
            [f.path("debian.crt")]
        );
        f.write("openshift.pem", "not a certificate\n");
        let roots = load_blocking(&locations).unwrap();
        assert_eq!(roots.sources(), [f.path("debian.crt")]);
        assert_eq!(roots.len(), 1);
    }

    #[test]
    fn a_dir_whose_roots_the_file_already_loaded_is_not_empty() {
        // SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt with SSL_CERT_DIR=/etc/ssl/certs:
        // every root of the directory is a duplicate, and that is fine.
        let f = Files::new();
        let bundle = ca_pem("one") + &ca_pem("two");
        let file = f.write("certs/bundle.crt", &bundle);
        let roots = load_blocking(&RootsLocations {
            cert_file: Some(file),
            cert_dirs: vec![f.path("certs")],
            defaults: f.defaults(),
        })
        .unwrap();
        assert_eq!(roots.len(), 2);
    }

    #[test]
    fn explicit_file_and_dir_replace_the_defaults() {
        let f = Files::new();
        f.write("openshift.pem", &ca_pem("ignored"));
        let file = f.write("corp.pem", &ca_pem("corporate proxy"));
        f.write("certs/one.pem", &ca_pem("one"));
        f.write("certs/README", "not PEM");
        let dir = f.path("certs");
        // The same certificate twice (hash link next to the file) counts once.
        let one = std::fs::read_to_string(dir.join("one.pem")).unwrap();
        f.write("certs/1234abcd.0", &one);
        let env: HashMap<String, String> = [
            (SSL_CERT_FILE.to_owned(), file.display().to_string()),
            (SSL_CERT_DIR.to_owned(), dir.display().to_string()),
        ]
        .into();
        let mut locations = RootsLocations::from_env(&env);
        assert_eq!(locations.cert_file.as_ref(), Some(&file));
        assert_eq!(locations.cert_dirs, std::slice::from_ref(&dir));
        locations.defaults = f.defaults();
        let roots = load_blocking(&locations).unwrap();
        assert_eq!(roots.len(), 2);
        assert_eq!(roots.sources(), [file, dir]);
    }

    #[test]
    fn explicit_setting_that_yields_nothing_is_an_error_naming_it() {
        let f = Files::new();
        f.write("debian.crt", &ca_pem("a"));
        let missing = RootsLocations {
            cert_file: Some(f.path("nope.pem")),
            defaults: f.defaults(),
            ..RootsLocations::default()
        };
        let e = load_blocking(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with("SSL_CERT_FILE=") && e.contains("cannot read"),
            "{e}"
        );
        let empty = RootsLocations {
            cert_dirs: vec![f.dir.path().join("empty")],
            defaults: f.defaults(),
            ..RootsLocations::default()
        };
        std::fs::create_dir_all(f.dir.path().join("empty")).unwrap();
        let e = load_blocking(&empty).unwrap_err().to_string();
        assert!(
            e.starts_with("SSL_CERT_DIR=") && e.contains("no usable"),
            "{e}"
        );
    }

    #[test]
    fn nothing_anywhere_is_empty_not_an_error_and_pem_round_trips() {
        let f = Files::new();
        let none = load_blocking(&RootsLocations {
            defaults: f.defaults(),
            ..RootsLocations::default()
        })
        .unwrap();
        assert!(none.is_empty());
        f.write("debian.crt", &(ca_pem("a") + "garbage\n" + &ca_pem("b")));
        let roots = load_blocking(&RootsLocations {
            defaults: f.defaults(),
            ..RootsLocations::default()
        })
        .unwrap();
        assert_eq!(roots.len(), 2);
        let again: Vec<_> = CertificateDer::pem_slice_iter(&roots.pem())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(again, roots.certificates());
    }

    #[test]
    fn malformed_certificate_is_skipped_and_counted() {
        let f = Files::new();
        let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        f.write("debian.crt", &(bad.to_owned() + &ca_pem("good")));
        let roots = load_blocking(&RootsLocations {
            defaults: f.defaults(),
            ..RootsLocations::default()
        })
        .unwrap();
        assert_eq!((roots.len(), roots.skipped()), (1, 1));
    }
}
