//! The pieces every sidecar binary wires the same way:
//!
//! - [`logging`]: `tracing` to stderr, text or JSON, filtered by `RUST_LOG`;
//! - [`admin`]: the admin HTTP listener with `/healthz`, `/readyz` and `/metrics`;
//! - [`serve`]: the HTTP/1.1 server of every loopback listener, heads bounded in size and time;
//! - [`shutdown`]: SIGTERM/SIGINT as a future, fanned out to every server;
//! - [`config`]: typed values parsed from strings with errors that name the setting;
//! - [`settings`]: settings as rows (flag, variable, vendor variables, file key), every bad one
//!   reported at once, `--help`'s variable list generated from the rows;
//! - [`entry`]: config errors to exit code 2, logging, signals, the run's exit code;
//! - [`uds`]: gRPC on Unix sockets: atomic socket files, and every real client's `:authority`;
//! - [`tls_roots`]: the CA certificates outbound TLS clients trust (one order for every cloud);
//! - [`private_file`]: keys and tokens on disk, in directories nobody else can write.

pub mod admin;
pub mod config;
pub mod entry;
pub mod host;
pub mod logging;
pub mod metrics;
pub mod private_file;
pub mod serve;
pub mod settings;
pub mod shutdown;
pub mod svid;
pub mod tls_roots;
pub mod uds;

pub use admin::{Admin, Readiness};
pub use config::{ConfigError, ListenPolicy};
pub use entry::run_sidecar;
pub use logging::LogFormat;
pub use shutdown::Shutdown;
