//! The SDS listener: a Unix socket created atomically, or loopback TCP.
//!
//! Istio's pilot-agent looks for the socket once at start with a short timeout and falls back
//! to its own CA if the file is absent or dead (REFERENCE §3). So the socket must appear fast,
//! fully set up: it is bound under a temporary name, given its permissions, then renamed over
//! the final path, which also replaces a stale socket left by a previous run in one step.

use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener, UnixStream};

/// Why the listener could not be set up. Each names the path and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// The path exists and is not a socket: refusing to replace a file we did not create.
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// The listen path.
        path: PathBuf,
    },
    /// Another process accepts connections on the socket.
    #[error("{path}: another process is serving on this socket")]
    InUse {
        /// The listen path.
        path: PathBuf,
    },
    /// The path has no parent directory or file name.
    #[error("{path}: not a socket file path")]
    BadPath {
        /// The listen path.
        path: PathBuf,
    },
    /// A file system or socket call failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// A bound Unix socket. Call [`UnixSocket::remove`] at shutdown to delete its file.
#[derive(Debug)]
pub struct UnixSocket {
    /// The listener.
    pub listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the file we bound, so we never delete a successor's socket.
    inode: (u64, u64),
}

impl UnixSocket {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Splits off the listener, keeping what [`SocketFile::remove`] needs.
    pub fn into_parts(self) -> (UnixListener, SocketFile) {
        (
            self.listener,
            SocketFile {
                path: self.path,
                inode: self.inode,
            },
        )
    }
}

/// The socket file of a listener that has been handed to the server.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    inode: (u64, u64),
}

impl SocketFile {
    /// Deletes the socket file if it is still the one we bound (a restarted bridge may have
    /// replaced it already).
    pub async fn remove(self) {
        if let Ok(meta) = tokio::fs::symlink_metadata(&self.path).await
            && (meta.dev(), meta.ino()) == self.inode
        {
            let _ = tokio::fs::remove_file(&self.path).await;
        }
    }
}

/// Binds `path` atomically with permission bits `mode`.
pub async fn bind_unix(path: &Path, mode: u32) -> Result<UnixSocket, ListenError> {
    let io_err = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| ListenError::Io {
            path: p,
            op,
            source,
        }
    };
    let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
        return Err(ListenError::BadPath {
            path: path.to_path_buf(),
        });
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io_err("creating the socket directory", dir))?;
    match tokio::fs::symlink_metadata(path).await {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ListenError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Ok(_) => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ListenError::InUse {
                    path: path.to_path_buf(),
                });
            }
            tracing::info!(path = %path.display(), "replacing a stale socket");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspecting", path)(e)),
    }

    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    match tokio::fs::remove_file(&tmp).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing a leftover temporary socket", &tmp)(e)),
    }
    let listener = UnixListener::bind(&tmp).map_err(io_err("binding", &tmp))?;
    let result = async {
        tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .await
            .map_err(io_err("setting permissions", &tmp))?;
        tokio::fs::rename(&tmp, path)
            .await
            .map_err(io_err("renaming the socket into place", path))
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    let meta = tokio::fs::symlink_metadata(path)
        .await
        .map_err(io_err("inspecting", path))?;
    Ok(UnixSocket {
        listener,
        path: path.to_path_buf(),
        inode: (meta.dev(), meta.ino()),
    })
}

/// Binds a TCP address (loopback is the only sane choice: secrets travel in clear text).
pub async fn bind_tcp(addr: std::net::SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Io {
            path: PathBuf::from(addr.to_string()),
            op: "binding",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_with_mode_refuses_a_live_socket_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/socket");
        let _first = bind_unix(&path, 0o600).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = bind_unix(&path, 0o600).await.unwrap_err();
        assert!(matches!(err, ListenError::InUse { .. }), "{err}");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("socket")]);
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_removed_at_shutdown_only_if_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        // A socket file nobody listens on, as a crashed bridge leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let (listener, file) = bind_unix(&path, 0o600).await.unwrap().into_parts();
        assert!(UnixStream::connect(&path).await.is_ok());
        drop(listener);
        // A successor replaced the file: ours must not delete it.
        let successor = bind_unix(&path, 0o600).await.unwrap();
        file.remove().await;
        assert!(path.exists(), "successor's socket kept");
        let (_l, file) = successor.into_parts();
        file.remove().await;
        assert!(!path.exists(), "own socket removed");
    }

    #[tokio::test]
    async fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        std::fs::write(&path, b"not a socket").unwrap();
        let err = bind_unix(&path, 0o600).await.unwrap_err();
        assert!(matches!(err, ListenError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }
}
