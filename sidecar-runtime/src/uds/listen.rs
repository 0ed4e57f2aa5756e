//! Unix socket listeners created atomically, with their final mode from the first moment.
//!
//! Istio's pilot-agent looks for the SDS socket once at start with a short timeout and falls
//! back to its own CA if the file is absent or dead (docs/protocols.md#istio-sds-socket), and a workload that finds
//! the Workload API socket missing backs off. So the socket appears fully set up in one step:
//! it is bound inside a private (0700) directory next to the final path, given its mode,
//! then renamed over the final path. Nobody can connect to it before it has its mode (binding
//! in place and then chmod-ing leaves a window where the umask's mode applies), and a stale
//! socket left by a previous run is replaced in the same step.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

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
    /// Connecting to the existing socket failed for another reason than "nobody listens"
    /// (e.g. permission denied on another user's socket): it may be live, so it is kept.
    #[error("{path}: cannot tell whether the existing socket is live ({source}); not replacing it")]
    Undecided {
        /// The listen path.
        path: PathBuf,
        /// The error connecting to it.
        source: io::Error,
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

/// A bound Unix socket. Call [`SocketFile::remove`] at shutdown to delete its file.
#[derive(Debug)]
pub struct UnixSocket {
    /// The listener.
    pub listener: UnixListener,
    file: SocketFile,
}

// === impl UnixSocket ===

impl UnixSocket {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Splits off the listener, keeping what [`SocketFile::remove`] needs.
    pub fn into_parts(self) -> (UnixListener, SocketFile) {
        (self.listener, self.file)
    }
}

/// The socket file of a listener that has been handed to the server.
#[derive(Debug, Clone)]
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode of the file we bound, so we never delete a successor's socket.
    inode: (u64, u64),
}

// === impl SocketFile ===

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the socket file if it is still the one we bound (a restarted server may have
    /// replaced it already).
    pub async fn remove(self) {
        if let Ok(meta) = tokio::fs::symlink_metadata(&self.path).await
            && (meta.dev(), meta.ino()) == self.inode
        {
            let _ = tokio::fs::remove_file(&self.path).await;
        }
    }
}

/// Binds `path` atomically with permission bits `mode`, creating its directory if needed.
pub async fn bind_unix(path: &Path, mode: u32) -> Result<UnixSocket, ListenError> {
    let io_err = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| ListenError::Io {
            path: p,
            op,
            source,
        }
    };
    let (Some(dir), Some(_)) = (path.parent(), path.file_name()) else {
        return Err(ListenError::BadPath {
            path: path.to_path_buf(),
        });
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io_err("creating the socket directory", dir))?;
    // Whether a dead socket is there to be replaced; with none, the socket must not replace
    // whatever another instance starting at the same moment put there.
    let stale = match tokio::fs::symlink_metadata(path).await {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ListenError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Ok(_) => match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(ListenError::InUse {
                    path: path.to_path_buf(),
                });
            }
            // Only "nobody listens" and "gone meanwhile" mean stale. EACCES on another
            // user's live socket, for one, does not.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                ) =>
            {
                tracing::info!(path = %path.display(), "replacing a stale socket");
                true
            }
            Err(source) => {
                return Err(ListenError::Undecided {
                    path: path.to_path_buf(),
                    source,
                });
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err("inspecting", path)(e)),
    };

    // A private directory beside the final path (same file system, so rename works). Short
    // names: a socket path is limited to 107 bytes.
    let private = dir.join(format!(".{:08x}", fastrand::u32(..)));
    tokio::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .await
        .map_err(io_err("creating a private directory for binding", &private))?;
    let tmp = private.join("s");
    let placed = async {
        let listener = UnixListener::bind(&tmp).map_err(io_err("binding", &tmp))?;
        tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .await
            .map_err(io_err("setting permissions", &tmp))?;
        // The inode is read before the file moves (a rename keeps it): read after, it could
        // be a concurrent successor's, which shutdown would then delete.
        let meta = tokio::fs::symlink_metadata(&tmp)
            .await
            .map_err(io_err("inspecting", &tmp))?;
        if stale {
            tokio::fs::rename(&tmp, path)
                .await
                .map_err(io_err("renaming the socket into place", path))?;
        } else {
            // A hard link never replaces an existing path: two instances started together
            // cannot both win, the second is told the socket is in use.
            match tokio::fs::hard_link(&tmp, path).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(ListenError::InUse {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) => return Err(io_err("linking the socket into place", path)(e)),
            }
        }
        Ok((listener, (meta.dev(), meta.ino())))
    }
    .await;
    let _ = tokio::fs::remove_file(&tmp).await;
    let _ = tokio::fs::remove_dir(&private).await;
    let (listener, inode) = placed?;
    Ok(UnixSocket {
        listener,
        file: SocketFile {
            path: path.to_path_buf(),
            inode,
        },
    })
}
