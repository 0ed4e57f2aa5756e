//! Listeners: the Workload API socket (Unix or TCP) and the HTTP listeners.
//!
//! The Unix socket is created atomically (bind to a temporary name in the same directory,
//! set the mode, rename into place) so a client never finds the path without a listener.

use std::{
    fs::Permissions,
    io,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use tokio::net::{TcpListener, UnixListener};

use crate::{
    Error,
    config::{Config, Endpoint},
};

pub(crate) enum Incoming {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

pub(crate) async fn bind_workload_api(config: &Config) -> Result<(Incoming, Endpoint), Error> {
    match &config.socket {
        Endpoint::Unix(path) => {
            let listener = bind_unix(path, config.socket_mode).await?;
            Ok((
                Incoming::Unix(listener, path.clone()),
                config.socket.clone(),
            ))
        }
        Endpoint::Tcp(addr) => {
            let (listener, bound) = bind_tcp("Workload API", *addr).await?;
            Ok((Incoming::Tcp(listener), Endpoint::Tcp(bound)))
        }
    }
}

pub(crate) async fn bind_tcp(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), Error> {
    let bind_err = |source| Error::Bind {
        what,
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    Ok((listener, bound))
}

/// Binds the Unix socket atomically: a client never sees a path without a listener behind
/// it (Istio dials once, REFERENCE §3). A stale socket file is removed; a live one (another
/// agent answers) or a non-socket file is an error rather than silently replaced.
async fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, Error> {
    let bind_err = |source| Error::Bind {
        what: "Workload API",
        addr: format!("unix://{}", path.display()),
        source,
    };
    let dir = path.parent().ok_or_else(|| {
        bind_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no parent directory",
        ))
    })?;
    match tokio::fs::symlink_metadata(path).await {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(Error::SocketInUse(path.to_owned()));
            }
            match tokio::fs::remove_file(path).await {
                Ok(()) => tracing::info!(path = %path.display(), "removed stale socket"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(bind_err(e)),
            }
        }
        Ok(_) => return Err(Error::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    // Short temporary name: socket paths are limited to ~108 bytes.
    let tmp = dir.join(format!(".sda{:08x}", fastrand::u32(..)));
    let listener = UnixListener::bind(&tmp).map_err(bind_err)?;
    let placed = async {
        tokio::fs::set_permissions(&tmp, Permissions::from_mode(mode)).await?;
        tokio::fs::rename(&tmp, path).await
    }
    .await;
    if let Err(e) = placed {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(bind_err(e));
    }
    Ok(listener)
}

pub(crate) async fn remove_socket(path: &Path) {
    match tokio::fs::remove_file(path).await {
        Ok(()) => tracing::debug!(path = %path.display(), "removed socket"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(path = %path.display(), %error, "could not remove socket"),
    }
}
