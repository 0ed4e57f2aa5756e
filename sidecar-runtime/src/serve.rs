//! The HTTP/1.1 server every loopback listener of ours uses (iam-broker's credentials port,
//! the admin port, sds-bridge's JWKS endpoint): request heads bounded in size, count and time,
//! so a client that trickles a head (a byte every few hundred milliseconds) is cut off after
//! [`Limits::header_read_timeout`] instead of holding its connection for as long as it likes
//! (`axum::serve` sets no head deadline). `TCP_NODELAY`, accept errors backed off, and a
//! graceful stop of at most 5 s.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::Shutdown;

/// Bounds on what a client may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line + headers, in bytes (hyper's minimum is 8 KiB).
    pub max_header_bytes: usize,
    /// Number of headers.
    pub max_headers: usize,
    /// Time to send the request head.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` (HTTP/1.1, keep-alive, `TCP_NODELAY`) until `shutdown`, then
/// lets requests in flight finish (at most 5 s).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.wait() => break,
        };
        // Small JSON answers must not wait on Nagle + delayed ACK.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(5)) => {
            tracing::warn!("requests still in flight after 5 s; closing");
        }
    }
    Ok(())
}
