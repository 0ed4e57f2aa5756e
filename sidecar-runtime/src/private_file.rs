//! Secrets on disk (the dev agent's CA and JWT signing keys, the Vault token sink), written so
//! that no other local user can read them or redirect the write.
//!
//! - A directory that holds them must be owned by this process's user and writable by nobody
//!   else ([`ensure_private_dir`]): whoever can write in it can plant a file or a link where the
//!   next write goes, or swap the file between write and read.
//! - A file is written whole to a new temporary file in the same directory and renamed over its
//!   name ([`write_private`]): readers see the old content or the new, never half of it. The
//!   temporary file is created exclusively (`O_CREAT | O_EXCL`, which also refuses to follow a
//!   link at that name) with mode 0600, under a random name, so a file planted at a guessable
//!   name can neither receive the secret nor block the write.
//!
//! Everything here is blocking file I/O: call it from `spawn_blocking` on a runtime.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// How many random temporary names to try before giving up (each is 64 random bits: a
/// collision means someone is racing us).
const TEMP_ATTEMPTS: usize = 8;

/// Why a private directory or file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrivateFileError {
    /// Reading, creating or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The directory exists but others could write in it.
    #[error("{path}: {reason}")]
    Insecure {
        /// The directory.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

/// Creates `dir` (and its missing parents) with mode 0700, or checks an existing one: a
/// directory (links followed), owned by this process's user, not writable by group or others.
pub fn ensure_private_dir(dir: &Path) -> Result<(), PrivateFileError> {
    let io_err = |source| PrivateFileError::Io {
        path: dir.to_owned(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err)?;
    let meta = fs::metadata(dir).map_err(io_err)?;
    let insecure = |reason: String| PrivateFileError::Insecure {
        path: dir.to_owned(),
        reason,
    };
    if !meta.is_dir() {
        return Err(insecure("not a directory".to_owned()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(insecure(format!(
            "owned by uid {}, not by this process's uid {me}: another user could replace the keys kept here (chown it, or pick a directory of this user's)",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(insecure(format!(
            "mode {mode:04o} lets group or others write in it, so they could plant files or links where keys are written (chmod 700 it)"
        )));
    }
    Ok(())
}

/// Writes `bytes` to `path` with mode 0600 through an exclusive temporary file and a rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PrivateFileError> {
    let io_err = |source| PrivateFileError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let mut attempt = 0;
    let (tmp, mut file) = loop {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp{:016x}", fastrand::u64(..)));
        let tmp = dir.join(tmp_name);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(file) => break (tmp, file),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt + 1 < TEMP_ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => return Err(io_err(e)),
        }
    };
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    // The rename is durable once the directory is synced; a failure here loses nothing that
    // a crash would not (the old file or the new one is there), so it is not an error.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_directory_is_0700_and_files_are_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/example.org");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("state")), 0o700);
        let key = dir.join("key.pem");
        write_private(&key, b"first").unwrap();
        write_private(&key, b"second").unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"second");
        assert_eq!(mode(&key), 0o600);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["key.pem"], "no temporary file left behind");
    }

    #[test]
    fn a_directory_others_can_write_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in [0o777, 0o770, 0o702, 0o1777] {
            let dir = tmp.path().join(format!("d{bad:o}"));
            fs::create_dir(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(bad)).unwrap();
            let err = ensure_private_dir(&dir).unwrap_err();
            assert!(
                matches!(&err, PrivateFileError::Insecure { reason, .. } if reason.contains("chmod 700")),
                "{bad:o}: {err}"
            );
            assert_eq!(mode(&dir), bad, "the check changed nothing");
        }
        let ok = tmp.path().join("ok");
        fs::create_dir(&ok).unwrap();
        fs::set_permissions(&ok, fs::Permissions::from_mode(0o750)).unwrap();
        ensure_private_dir(&ok).unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(ensure_private_dir(&file).is_err());
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        // As root, a directory given away to `nobody`; as anyone else, `/` (root's).
        let tmp = tempfile::tempdir().unwrap();
        let dir = if rustix::process::geteuid().is_root() {
            let dir = tmp.path().join("theirs");
            fs::create_dir(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
            dir
        } else {
            PathBuf::from("/")
        };
        let err = ensure_private_dir(&dir).unwrap_err();
        assert!(
            matches!(&err, PrivateFileError::Insecure { reason, .. } if reason.contains("owned by uid")),
            "{err}"
        );
    }

    #[test]
    fn planted_temporary_files_and_links_receive_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let elsewhere = dir.join("elsewhere");
        fs::write(&elsewhere, b"untouched").unwrap();
        // Every name a pid-based scheme would pick, as a world-readable file and as a link.
        let pid = std::process::id();
        fs::write(dir.join(format!("key.pem.tmp{pid}")), b"").unwrap();
        fs::set_permissions(
            dir.join(format!("key.pem.tmp{pid}")),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join(format!(".key.pem.tmp{pid}"))).unwrap();
        let key = dir.join("key.pem");
        write_private(&key, b"secret").unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"secret");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(fs::read(&elsewhere).unwrap(), b"untouched");
        assert!(
            fs::read(dir.join(format!("key.pem.tmp{pid}")))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_link_at_the_files_own_name_is_replaced_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        fs::write(&elsewhere, b"untouched").unwrap();
        let key = tmp.path().join("key.pem");
        std::os::unix::fs::symlink(&elsewhere, &key).unwrap();
        write_private(&key, b"secret").unwrap();
        assert!(!fs::symlink_metadata(&key).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&elsewhere).unwrap(), b"untouched");
    }
}
