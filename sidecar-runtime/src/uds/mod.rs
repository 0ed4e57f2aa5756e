//! gRPC servers on Unix sockets, the same way for every binary:
//!
//! - [`bind_unix`]: the socket file appears atomically, with its final mode, and only a dead
//!   socket is ever replaced (Istio's pilot-agent dials it once, early: docs/protocols.md#istio-sds-socket);
//! - [`incoming`]: accepted connections wrapped in [`GrpcUnixStream`], which makes the
//!   `:authority` that gRPC C-core and grpc-java send on Unix sockets acceptable to h2 (see
//!   the table of clients in docs/architecture.md), so every real gRPC client works with its
//!   default options;
//! - [`UnixGrpcCollector`]: what the adapter did, for `/metrics`.

mod authority;
mod hpack;
mod huffman;
mod listen;

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::UnixListenerStream;

pub use authority::GrpcUnixStream;
pub use hpack::header_block;
pub use listen::{ListenError, SocketFile, UnixSocket, bind_unix};

/// Process-wide counters: each binary serves gRPC on at most one socket, and plain atomics
/// keep the per-connection cost at one relaxed add.
struct Stats {
    connections: AtomicU64,
    rewritten: AtomicU64,
    passthrough: AtomicU64,
}

static STATS: Stats = Stats {
    connections: AtomicU64::new(0),
    rewritten: AtomicU64::new(0),
    passthrough: AtomicU64::new(0),
};

/// The listener's connections, each wrapped in [`GrpcUnixStream`], for tonic's
/// `serve_with_incoming*`. With `adapter` false (see
/// [`crate::config::ENV_UNIX_AUTHORITY_ADAPTER`]) every byte passes through untouched.
pub fn incoming(
    listener: UnixListener,
    adapter: bool,
) -> impl tokio_stream::Stream<Item = io::Result<GrpcUnixStream<UnixStream>>> {
    UnixListenerStream::new(listener).map(move |conn| {
        conn.map(|io| {
            if adapter {
                GrpcUnixStream::new(io)
            } else {
                GrpcUnixStream::passthrough(io)
            }
        })
    })
}

/// The adapter's counters so far, for binaries that render metrics by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// gRPC connections accepted on the Unix socket.
    pub connections: u64,
    /// Header blocks whose `:authority` was replaced with `localhost`.
    pub authority_rewrites: u64,
    /// Connections handed to h2 unchanged after a frame the adapter does not rewrite.
    pub passthrough_connections: u64,
}

/// Reads the counters.
pub fn counters() -> Counters {
    Counters {
        connections: STATS.connections.load(Relaxed),
        authority_rewrites: STATS.rewritten.load(Relaxed),
        passthrough_connections: STATS.passthrough.load(Relaxed),
    }
}

/// Exports the adapter's counters: connections accepted, `:authority` values replaced, and
/// connections handed to h2 unchanged after a frame the adapter would not rewrite.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixGrpcCollector;

impl Collector for UnixGrpcCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, counter) in [
            (
                "grpc_unix_connections",
                "gRPC connections accepted on the Unix socket",
                &STATS.connections,
            ),
            (
                "grpc_unix_authority_rewrites",
                "Request header blocks whose :authority h2 would refuse (a socket path from gRPC \
                 C-core or grpc-java) and was replaced with localhost",
                &STATS.rewritten,
            ),
            (
                "grpc_unix_passthrough_connections",
                "Connections handed to h2 unchanged after a frame or header block the adapter \
                 does not rewrite (h2 then refuses it)",
                &STATS.passthrough,
            ),
        ] {
            let value = ConstCounter::new(counter.load(Relaxed));
            value.encode(encoder.encode_descriptor(name, help, None, value.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
