//! Listeners: the Workload API socket (Unix or TCP) and the HTTP listeners.
//!
//! The Unix socket is created by `sidecar_runtime::uds::bind_unix`, atomically and with its
//! final mode, as every server of ours creates its socket.

use std::net::SocketAddr;

use sidecar_runtime::uds::{SocketFile, bind_unix};
use tokio::net::{TcpListener, UnixListener};

use crate::{
    Error,
    config::{Config, Endpoint},
};

pub(crate) enum Incoming {
    /// The listener, its file, and whether the `:authority` adapter is on.
    Unix(UnixListener, SocketFile, bool),
    Tcp(TcpListener),
}

pub(crate) async fn bind_workload_api(config: &Config) -> Result<(Incoming, Endpoint), Error> {
    match &config.socket {
        Endpoint::Unix(path) => {
            let (listener, file) = bind_unix(path, config.socket_mode).await?.into_parts();
            Ok((
                Incoming::Unix(listener, file, config.unix_authority_adapter),
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
