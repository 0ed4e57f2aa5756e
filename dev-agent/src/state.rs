//! `--state-dir`: keeps each trust domain's CA and JWT keys across restarts, like a real
//! SPIFFE server, so bundles that peers pinned (and tokens already issued) stay valid.
//!
//! Layout, one directory per trust domain (mode 0700), files mode 0600, written atomically
//! (temporary file + rename) so a crash never leaves half a key. The state directory and each
//! trust domain's must be owned by the agent's user and writable by nobody else: the agent
//! refuses to start otherwise (`sidecar_runtime::private_file`).
//!
//! ```text
//! <state-dir>/<trust-domain>/ca-key.pem     PKCS#8 PEM
//! <state-dir>/<trust-domain>/ca-cert.pem    PEM
//! <state-dir>/<trust-domain>/jwt-keys.json  {"alg","current":{pkcs8,since,max_exp},"next":{pkcs8},"retired":[...]}
//! <state-dir>/<trust-domain>/federation-dropped  {"dropped_at": <Unix seconds>}
//! ```
//!
//! Operator revocations are written here before they take effect, so a restart never undoes
//! them: a CA retired early (`/retire/x509`) is replaced on disk, a JWT key retired early
//! (`/retire/jwt`) leaves `jwt-keys.json`, and a dropped federation (`/federation/drop/<td>`)
//! leaves a `federation-dropped` marker that keeps the trust domain out even while
//! `--federate-with` still names it. Deleting the marker (agent stopped) federates again.
//!
//! All functions here do blocking file I/O: call them from `spawn_blocking`.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};
use sidecar_runtime::private_file::{PrivateFileError, ensure_private_dir, write_private};
use spiffe::TrustDomain;

use crate::{
    authority::{Authority, AuthorityError, unix_now},
    ca::CertificateAuthority,
    jwt_keys::{JwtAlg, JwtKeySet, RetiredKey, SigningKey},
    secret::SecretBytes,
};

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Reading or writing a file failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file exists but its content is unusable.
    #[error("state file {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The directory is not private, or a private write failed.
    #[error(transparent)]
    Private(#[from] PrivateFileError),
    /// Generating a missing key failed.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
}

#[derive(Serialize, Deserialize)]
struct StoredJwtKeys {
    alg: JwtAlg,
    current: StoredKey,
    next: StoredKey,
    #[serde(default)]
    retired: Vec<RetiredKey>,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    /// PKCS#8 DER, standard base64.
    pkcs8: String,
    /// When the key started signing, Unix seconds (current key only).
    #[serde(default)]
    since: u64,
    /// Latest `exp` signed, Unix seconds (current key only).
    #[serde(default)]
    max_exp: i64,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// A state directory at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn domain_dir(&self, td: &TrustDomain) -> PathBuf {
        self.root.join(td.as_str())
    }

    /// Creates or checks the root and `dir` under it: both owned by this user, writable by
    /// nobody else, since whoever can write there could plant links where keys are written.
    fn private_dir(&self, dir: &Path) -> Result<(), StateError> {
        ensure_private_dir(&self.root)?;
        ensure_private_dir(dir)?;
        Ok(())
    }

    /// Loads the authority of `td`, creating whatever is missing.
    ///
    /// A stored CA that expires within `min_remaining` is replaced (with a warning): it could
    /// not sign SVIDs for their full TTL. A stored JWT key of another algorithm than `alg` is
    /// rotated out the normal way, so tokens it signed keep validating for `jwt_ttl`.
    pub fn load_or_create(
        &self,
        td: &TrustDomain,
        alg: JwtAlg,
        ca_validity: Duration,
        min_remaining: Duration,
        jwt_ttl: Duration,
    ) -> Result<Authority, StateError> {
        let dir = self.domain_dir(td);
        self.private_dir(&dir)?;
        let ca = self.load_or_create_ca(&dir, td, ca_validity, min_remaining)?;
        let (keys, dirty) = load_or_create_jwt_keys(&dir, alg, jwt_ttl)?;
        let authority = Authority::from_parts(ca, keys);
        if dirty {
            self.save_jwt_keys(&authority)?;
        }
        Ok(authority)
    }

    /// The authority of `td` as stored, if this directory holds its CA and JWT keys (`None`
    /// otherwise): what `mint-jwt` signs with. Reads only: nothing is created, pruned or
    /// rewritten, since the running agent owns these files. A stored CA that has expired is an
    /// error (the agent replaces it at its next start). `jwt_ttl` is the lifetime of the
    /// tokens about to be signed.
    pub fn load_existing(
        &self,
        td: &TrustDomain,
        jwt_ttl: Duration,
    ) -> Result<Option<Authority>, StateError> {
        let dir = self.domain_dir(td);
        let key_path = dir.join("ca-key.pem");
        let cert_path = dir.join("ca-cert.pem");
        let keys_path = dir.join("jwt-keys.json");
        let (Some(key), Some(cert), Some(keys)) = (
            read_optional(&key_path)?,
            read_optional(&cert_path)?,
            read_optional(&keys_path)?,
        ) else {
            return Ok(None);
        };
        let key = String::from_utf8(key).map_err(|_| invalid(&key_path, "not UTF-8"))?;
        let cert = String::from_utf8(cert).map_err(|_| invalid(&cert_path, "not UTF-8"))?;
        let ca = CertificateAuthority::from_pem(td, &key, &cert)
            .map_err(|e| invalid(&cert_path, &e.to_string()))?;
        if ca.not_after() <= SystemTime::now() {
            return Err(invalid(&cert_path, "the CA has expired"));
        }
        let (keys, _) = parse_jwt_keys(&keys_path, &keys, jwt_ttl)?;
        Ok(Some(Authority::from_parts(ca, keys)))
    }

    fn load_or_create_ca(
        &self,
        dir: &Path,
        td: &TrustDomain,
        ca_validity: Duration,
        min_remaining: Duration,
    ) -> Result<CertificateAuthority, StateError> {
        let key_path = dir.join("ca-key.pem");
        let cert_path = dir.join("ca-cert.pem");
        if let (Some(key), Some(cert)) = (read_optional(&key_path)?, read_optional(&cert_path)?) {
            let key = String::from_utf8(key).map_err(|_| invalid(&key_path, "not UTF-8"))?;
            let cert = String::from_utf8(cert).map_err(|_| invalid(&cert_path, "not UTF-8"))?;
            let ca = CertificateAuthority::from_pem(td, &key, &cert)
                .map_err(|e| invalid(&cert_path, &e.to_string()))?;
            if ca.not_after() > SystemTime::now() + min_remaining {
                return Ok(ca);
            }
            tracing::warn!(trust_domain = %td, "stored CA expires too soon, generating a new one");
        }
        let ca = CertificateAuthority::generate(td, ca_validity).map_err(AuthorityError::from)?;
        write_private(&key_path, ca.key_pem().expose())?;
        write_private(&cert_path, ca.cert_pem().as_bytes())?;
        Ok(ca)
    }

    /// Persists `ca` as `td`'s CA (a CA retired early must stay retired across restarts).
    /// The key is written first: a crash between the two writes leaves a pair that does not
    /// load (an error at start), never the retired CA.
    pub fn save_ca(&self, td: &TrustDomain, ca: &CertificateAuthority) -> Result<(), StateError> {
        let dir = self.domain_dir(td);
        write_private(&dir.join("ca-key.pem"), ca.key_pem().expose())?;
        write_private(&dir.join("ca-cert.pem"), ca.cert_pem().as_bytes())?;
        Ok(())
    }

    /// Records that the federation with `td` was dropped by an operator.
    pub fn mark_federation_dropped(&self, td: &TrustDomain) -> Result<(), StateError> {
        let dir = self.domain_dir(td);
        self.private_dir(&dir)?;
        let body = serde_json::json!({ "dropped_at": unix_now() }).to_string();
        write_private(&dir.join(FEDERATION_DROPPED), body.as_bytes())?;
        Ok(())
    }

    /// Whether the federation with `td` was dropped (see [`Self::mark_federation_dropped`]).
    pub fn federation_dropped(&self, td: &TrustDomain) -> Result<bool, StateError> {
        Ok(read_optional(&self.domain_dir(td).join(FEDERATION_DROPPED))?.is_some())
    }

    /// Persists the JWT key set of `authority` (after a rotation or prune).
    pub fn save_jwt_keys(&self, authority: &Authority) -> Result<(), StateError> {
        let path = self
            .domain_dir(authority.trust_domain())
            .join("jwt-keys.json");
        let stored = {
            let keys = authority.keys();
            StoredJwtKeys {
                alg: keys.current().alg(),
                current: StoredKey {
                    pkcs8: STANDARD.encode(keys.current().pkcs8().expose()),
                    since: keys
                        .current_since()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    max_exp: keys.current_max_exp(),
                },
                next: StoredKey {
                    pkcs8: STANDARD.encode(keys.next().pkcs8().expose()),
                    since: 0,
                    max_exp: 0,
                },
                retired: keys.retired().to_vec(),
            }
        };
        let json = serde_json::to_vec_pretty(&stored)
            .map_err(|e| invalid(&path, &format!("serializing: {e}")))?;
        write_private(&path, &json)?;
        Ok(())
    }
}

/// Returns the key set and whether it changed from what is on disk.
fn load_or_create_jwt_keys(
    dir: &Path,
    alg: JwtAlg,
    jwt_ttl: Duration,
) -> Result<(JwtKeySet, bool), StateError> {
    let path = dir.join("jwt-keys.json");
    let generate = || SigningKey::generate(alg).map_err(AuthorityError::from);
    let Some(bytes) = read_optional(&path)? else {
        return Ok((JwtKeySet::new(generate()?, generate()?), true));
    };
    let (mut keys, stored_alg) = parse_jwt_keys(&path, &bytes, jwt_ttl)?;
    let ttl = i64::try_from(jwt_ttl.as_secs()).unwrap_or(i64::MAX);
    let mut dirty = keys.prune(unix_now());
    if stored_alg != alg {
        // Two rotations: the old-algorithm signing key and the old-algorithm prepared key
        // are retired (published for jwt_ttl as usual), two new-algorithm keys take over.
        tracing::info!(from = %stored_alg, to = %alg, "JWT algorithm changed, rotating the keys");
        keys.rotate(generate()?, unix_now(), ttl);
        keys.rotate(generate()?, unix_now(), ttl);
        dirty = true;
    }
    Ok((keys, dirty))
}

/// The key set stored in `path` (its bytes), as stored: no prune, no rotation; and the
/// algorithm its keys were made with.
fn parse_jwt_keys(
    path: &Path,
    bytes: &[u8],
    jwt_ttl: Duration,
) -> Result<(JwtKeySet, JwtAlg), StateError> {
    let stored: StoredJwtKeys =
        serde_json::from_slice(bytes).map_err(|e| invalid(path, &e.to_string()))?;
    let load = |key: &StoredKey| {
        let pkcs8 = STANDARD
            .decode(&key.pkcs8)
            .map_err(|e| invalid(path, &format!("pkcs8: {e}")))?;
        SigningKey::from_pkcs8(stored.alg, SecretBytes::new(pkcs8))
            .map_err(|e| invalid(path, &e.to_string()))
    };
    let current = load(&stored.current)?;
    let next = load(&stored.next)?;
    let since = UNIX_EPOCH + Duration::from_secs(stored.current.since);
    // The agent may have signed tokens right before it stopped without persisting their
    // expiry: assume the worst, a token of full TTL signed just now.
    let ttl = i64::try_from(jwt_ttl.as_secs()).unwrap_or(i64::MAX);
    let max_exp = stored.current.max_exp.max(unix_now().saturating_add(ttl));
    let keys = JwtKeySet::from_parts(current, since, max_exp, next, stored.retired);
    Ok((keys, stored.alg))
}

/// The marker file of a dropped federation.
const FEDERATION_DROPPED: &str = "federation-dropped";

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn invalid(path: &Path, reason: &str) -> StateError {
    StateError::Invalid {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const YEAR: Duration = Duration::from_secs(365 * 86400);
    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn restart_gives_the_same_ca_and_jwt_key() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let state = StateDir::new(dir.path());
        let first = state
            .load_or_create(&td, JwtAlg::Es256, YEAR, HOUR, HOUR)
            .unwrap();
        let second = state
            .load_or_create(&td, JwtAlg::Es256, YEAR, HOUR, HOUR)
            .unwrap();
        assert_eq!(first.ca_der(), second.ca_der());
        assert_eq!(first.current_kid(), second.current_kid());
        assert_eq!(first.jwks()["keys"], second.jwks()["keys"]);

        for name in ["ca-key.pem", "ca-cert.pem", "jwt-keys.json"] {
            let mode = fs::metadata(dir.path().join("example.org").join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    #[test]
    fn a_state_directory_others_can_write_is_refused_before_any_key_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let root = tmp.path().join("state");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        let err = StateDir::new(&root)
            .load_or_create(&td, JwtAlg::Es256, YEAR, HOUR, HOUR)
            .unwrap_err();
        assert!(err.to_string().contains("chmod 700"), "{err}");
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0, "nothing written");
        // The same for a trust domain's directory left open by hand.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir(root.join("example.org")).unwrap();
        fs::set_permissions(root.join("example.org"), fs::Permissions::from_mode(0o757)).unwrap();
        let err = StateDir::new(&root)
            .load_or_create(&td, JwtAlg::Es256, YEAR, HOUR, HOUR)
            .unwrap_err();
        assert!(err.to_string().contains("example.org"), "{err}");
        assert_eq!(fs::read_dir(root.join("example.org")).unwrap().count(), 0);
    }

    #[test]
    fn rotated_keys_persist_and_algorithm_change_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let state = StateDir::new(dir.path());
        let first = state
            .load_or_create(&td, JwtAlg::Es256, YEAR, HOUR, HOUR)
            .unwrap();
        let old_kid = first.current_kid();
        first.rotate_jwt_key(SigningKey::generate(JwtAlg::Es256).unwrap(), HOUR);
        state.save_jwt_keys(&first).unwrap();

        let second = state
            .load_or_create(&td, JwtAlg::Rs256, YEAR, HOUR, HOUR)
            .unwrap();
        assert_eq!(second.jwt_alg(), JwtAlg::Rs256);
        let kids: Vec<String> = second.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert!(kids.contains(&old_kid), "retired key survives the restart");
        assert!(
            kids.contains(&first.current_kid()),
            "ES256 key retired, still published"
        );
        assert_eq!(second.jwks()["keys"][0]["kty"], "RSA");
        assert_eq!(second.jwks()["keys"][1]["kty"], "RSA");
        // current + next (RSA); retired: the first key, the ES256 signing key and the ES256
        // prepared key.
        assert_eq!(kids.len(), 5);
    }
}
