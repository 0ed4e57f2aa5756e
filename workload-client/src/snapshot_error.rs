//! Why a Workload API message could not become a snapshot. The watcher logs it, counts it and
//! keeps the last good snapshot: a bad update never replaces a good one.

/// A message that does not parse into a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A FetchX509SVID message with no SVID: there is nothing to serve.
    #[error("no SVIDs in response")]
    NoSvids,
    /// An SVID's certificate chain or key does not parse, or they do not match.
    #[error("SVID {spiffe_id}: {reason}")]
    Svid {
        /// The SPIFFE ID the message gave for it.
        spiffe_id: String,
        /// What the parser said.
        reason: String,
    },
    /// The certificate's URI SAN is not the SPIFFE ID the message gave for it.
    #[error("SVID {spiffe_id}: certificate URI SAN is {san}")]
    SanMismatch {
        /// The SPIFFE ID the message gave.
        spiffe_id: String,
        /// The one in the certificate.
        san: String,
    },
    /// The leaf certificate's validity cannot be read (or is before 1970).
    #[error("leaf certificate: {0}")]
    Validity(String),
    /// A bundle's key is not a trust domain (`spiffe://<td>` or `<td>`).
    #[error("{what} key {key:?}: {reason}")]
    BundleKey {
        /// `federated bundle` or `bundle`.
        what: &'static str,
        /// The key as sent.
        key: String,
        /// What the parser said.
        reason: String,
    },
    /// A bundle (DER certificates, or a JWKS) does not parse.
    #[error("{what} of {trust_domain}: {reason}")]
    Bundle {
        /// `bundle`, `federated bundle` or `JWKS`.
        what: &'static str,
        /// Whose bundle.
        trust_domain: String,
        /// What the parser said.
        reason: String,
    },
}
