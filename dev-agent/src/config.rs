//! Configuration: a plain, validated [`Config`] that tests build directly, and the [`Cli`]
//! (clap, flags + environment) that `main.rs` turns into one.
//!
//! Values are parsed once into types (SPIFFE IDs, trust domains, socket addresses,
//! durations); every error names the flag and the bad value.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

pub use sidecar_runtime::LogFormat;

use spiffe::{SpiffeId, TrustDomain};

use crate::jwt_keys::JwtAlg;

/// Why a configuration value was rejected. The message names the flag or variable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The Workload API address is not `unix:///abs/path` or `tcp://IP:PORT`.
    #[error("--socket: invalid Workload API address {addr:?}: {error}")]
    Endpoint {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        error: workload_client::EndpointError,
    },
    /// A value that must be a trust domain name is not one.
    #[error("invalid trust domain {value:?} in {flag}: {source}")]
    TrustDomain {
        /// The flag (or variable) the value came from.
        flag: &'static str,
        /// The value as given.
        value: String,
        /// The parse error.
        #[source]
        source: spiffe::SpiffeIdError,
    },
    /// A value that must be a SPIFFE ID is not one.
    #[error("invalid SPIFFE ID {value:?} in --spiffe-id: {source}")]
    SpiffeId {
        /// The value as given.
        value: String,
        /// The parse error.
        #[source]
        source: spiffe::SpiffeIdError,
    },
    /// A SPIFFE ID outside the agent's own trust domain: the agent can only sign for its own.
    #[error("--spiffe-id {id} is not in the trust domain {trust_domain}")]
    ForeignSpiffeId {
        /// The offending ID.
        id: String,
        /// The agent's trust domain.
        trust_domain: String,
    },
    /// No Workload API address to serve on.
    #[error("--socket (or SPIFFE_ENDPOINT_SOCKET) is required")]
    NoSocket,
    /// `--federate-with` named the agent's own trust domain.
    #[error("--federate-with {0} is the agent's own trust domain")]
    FederateWithSelf(String),
    /// A duration flag is zero or out of range.
    #[error("{flag} must be at least 1s, got {value:?}")]
    Duration {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: Duration,
    },
    /// `--oidc-listen` was given without `--jwt-issuer`: a discovery document needs an issuer.
    #[error("--oidc-listen requires --jwt-issuer (the discovery document's issuer)")]
    OidcWithoutIssuer,
    /// `--jwt-issuer` is not an `http(s)://` URL.
    #[error("--jwt-issuer {0:?} must be an http:// or https:// URL without query or fragment")]
    Issuer(String),
}

// === Endpoint ===

/// Where the Workload API listens: the same parser every sidecar uses for the address it dials
/// (`docs/protocols.md#workload-api-endpoint`), so an address the agent accepts is one the clients
/// accept.
pub use workload_client::Endpoint;

/// Parses `--socket` into a [`ConfigError`] naming the flag.
fn parse_endpoint(addr: &str) -> Result<Endpoint, ConfigError> {
    Endpoint::parse(addr).map_err(|error| ConfigError::Endpoint {
        addr: addr.to_owned(),
        error,
    })
}

// === Config ===

/// Everything the agent needs, already validated. Build it with [`Config::new`] and struct
/// update syntax in tests; `main.rs` builds it from [`Cli`].
///
/// There is no `Default`: a trust domain cannot be built without a fallible parse, and the
/// socket is always the caller's choice.
#[derive(Clone, Debug)]
pub struct Config {
    /// Workload API address.
    pub socket: Endpoint,
    /// Permission bits of the Unix socket file. Workloads run as other users than the agent,
    /// so the default is `0o660` (owner and group), not `0o600`.
    pub socket_mode: u32,
    /// The agent's own trust domain.
    pub trust_domain: TrustDomain,
    /// The identities handed out, first is the default. Empty means `spiffe://<td>/workload`.
    pub spiffe_ids: Vec<SpiffeId>,
    /// Lifetime of X.509-SVIDs; they are re-issued before half of it has passed.
    pub x509_ttl: Duration,
    /// Lifetime of JWT-SVIDs (SPIRE's default is 5 min: `docs/protocols.md#svid-lifetimes`).
    pub jwt_ttl: Duration,
    /// Foreign trust domains whose bundles the agent serves (each gets its own CA and JWT keys).
    pub federate_with: Vec<TrustDomain>,
    /// Where CA and JWT keys persist across restarts; `None` keeps everything in memory.
    pub state_dir: Option<PathBuf>,
    /// Where to serve OIDC discovery (`docs/protocols.md#oidc-discovery`); port 0 picks a free
    /// port.
    pub oidc_listen: Option<SocketAddr>,
    /// The `iss` claim of JWT-SVIDs and the discovery document's issuer.
    pub jwt_issuer: Option<String>,
    /// Signature algorithm of JWT-SVIDs.
    pub jwt_alg: JwtAlg,
    /// How often the JWT signing key is replaced.
    pub jwt_key_rotation: Duration,
    /// Where to serve `/metrics`, `/healthz` and `/rotate/*`; port 0 picks a free port.
    pub admin_listen: Option<SocketAddr>,
    /// Whether Unix-socket connections go through the `:authority` adapter that lets gRPC
    /// C-core and grpc-java clients in (`sidecar_runtime::uds`); off only for comparisons.
    pub unix_authority_adapter: bool,
}

/// Default Unix socket permission bits (see [`Config::socket_mode`]).
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// Default X.509-SVID lifetime (SPIRE's default: `docs/protocols.md#svid-lifetimes`).
pub const DEFAULT_X509_TTL: Duration = Duration::from_secs(3600);
/// Default JWT-SVID lifetime (SPIRE's default: `docs/protocols.md#svid-lifetimes`).
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// Default JWT signing key rotation interval.
pub const DEFAULT_JWT_KEY_ROTATION: Duration = Duration::from_secs(24 * 3600);

impl Config {
    /// A configuration with the documented defaults for everything but the socket and the
    /// trust domain.
    pub fn new(socket: Endpoint, trust_domain: TrustDomain) -> Self {
        Self {
            socket,
            socket_mode: DEFAULT_SOCKET_MODE,
            trust_domain,
            spiffe_ids: Vec::new(),
            x509_ttl: DEFAULT_X509_TTL,
            jwt_ttl: DEFAULT_JWT_TTL,
            federate_with: Vec::new(),
            state_dir: None,
            oidc_listen: None,
            jwt_issuer: None,
            jwt_alg: JwtAlg::Es256,
            jwt_key_rotation: DEFAULT_JWT_KEY_ROTATION,
            admin_listen: None,
            unix_authority_adapter: true,
        }
    }

    /// The identities the agent hands out, first is the default, after applying the
    /// `spiffe://<td>/workload` default.
    pub fn effective_spiffe_ids(&self) -> Result<Vec<SpiffeId>, ConfigError> {
        if !self.spiffe_ids.is_empty() {
            return Ok(self.spiffe_ids.clone());
        }
        let value = format!("{}/workload", self.trust_domain.id_string());
        SpiffeId::new(&value)
            .map(|id| vec![id])
            .map_err(|source| ConfigError::SpiffeId { value, source })
    }

    /// Checks the cross-field rules; [`Agent::start`](crate::Agent::start) calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for id in &self.spiffe_ids {
            if !id.is_member_of(&self.trust_domain) {
                return Err(ConfigError::ForeignSpiffeId {
                    id: id.to_string(),
                    trust_domain: self.trust_domain.to_string(),
                });
            }
        }
        if let Some(td) = self
            .federate_with
            .iter()
            .find(|td| **td == self.trust_domain)
        {
            return Err(ConfigError::FederateWithSelf(td.to_string()));
        }
        for (flag, value) in [
            ("--x509-ttl", self.x509_ttl),
            ("--jwt-ttl", self.jwt_ttl),
            ("--jwt-key-rotation", self.jwt_key_rotation),
        ] {
            // Whole seconds: JWT `exp` has second resolution and X.509 validity too.
            if value < Duration::from_secs(1) || value > Duration::from_secs(10 * 365 * 86400) {
                return Err(ConfigError::Duration { flag, value });
            }
        }
        if let Some(issuer) = &self.jwt_issuer {
            let ok = (issuer.starts_with("https://") || issuer.starts_with("http://"))
                && !issuer.contains(['?', '#']);
            if !ok {
                return Err(ConfigError::Issuer(issuer.clone()));
            }
        }
        if self.oidc_listen.is_some() && self.jwt_issuer.is_none() {
            return Err(ConfigError::OidcWithoutIssuer);
        }
        Ok(())
    }
}

// === Cli ===

/// Command line of `spiffe-dev-agent`; every flag also reads an environment variable.
#[derive(Debug, clap::Parser)]
#[command(
    name = "spiffe-dev-agent",
    version,
    about = "A small SPIFFE Workload API server for local runs, demos and tests",
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// Workload API address: unix:///abs/path or tcp://IP:PORT.
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", value_parser = parse_endpoint, required = true)]
    pub socket: Option<Endpoint>,
    /// Permission bits of the Unix socket file, octal.
    #[arg(long, env = "DEV_AGENT_SOCKET_MODE", default_value = "660", value_parser = parse_octal_mode)]
    pub socket_mode: u32,
    /// Trust domain of the agent.
    #[arg(long, env = "DEV_AGENT_TRUST_DOMAIN", default_value = "example.org")]
    pub trust_domain: String,
    /// SPIFFE ID to hand out (repeatable, comma separated in the environment); first is the
    /// default. Default: spiffe://<trust-domain>/workload.
    #[arg(long = "spiffe-id", env = "DEV_AGENT_SPIFFE_ID", value_delimiter = ',')]
    pub spiffe_ids: Vec<String>,
    /// Lifetime of X.509-SVIDs (humantime: 5s, 1h).
    #[arg(long, env = "DEV_AGENT_X509_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub x509_ttl: Duration,
    /// Lifetime of JWT-SVIDs.
    #[arg(long, env = "DEV_AGENT_JWT_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub jwt_ttl: Duration,
    /// Federated trust domain (repeatable, comma separated in the environment).
    #[arg(
        long = "federate-with",
        env = "DEV_AGENT_FEDERATE_WITH",
        value_delimiter = ','
    )]
    pub federate_with: Vec<String>,
    /// Directory that keeps CA and JWT keys across restarts.
    #[arg(long, env = "DEV_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// host:port for OIDC discovery (needs --jwt-issuer).
    #[arg(long, env = "DEV_AGENT_OIDC_LISTEN")]
    pub oidc_listen: Option<SocketAddr>,
    /// Issuer URL: the `iss` claim of JWT-SVIDs and of the discovery document.
    #[arg(long, env = "DEV_AGENT_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// JWT-SVID signature algorithm.
    #[arg(long, env = "DEV_AGENT_JWT_ALG", default_value = "ES256")]
    pub jwt_alg: JwtAlg,
    /// Interval of JWT signing key rotation.
    #[arg(long, env = "DEV_AGENT_JWT_KEY_ROTATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub jwt_key_rotation: Duration,
    /// host:port for /healthz, /metrics and the rotation and revocation endpoints listed below.
    #[arg(long, env = "DEV_AGENT_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Log format on stderr (filter with RUST_LOG).
    #[arg(long, env = "DEV_AGENT_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// The Unix-socket :authority adapter: on, or off (only to compare; gRPC C-core and
    /// grpc-java clients are then refused).
    #[arg(long, env = "SIDECAR_UNIX_AUTHORITY_ADAPTER", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub unix_authority_adapter: bool,
    /// Instead of serving: print something and exit.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What the agent can do besides serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Sign a JWT-SVID with the current key of its trust domain (the agent's own, or one it
    /// federates with) from a running agent's --state-dir, and print the whole token.
    MintJwt(crate::mint::MintJwtArgs),
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    sidecar_runtime::config::on_off("--unix-authority-adapter", s).map_err(|e| e.reason)
}

fn parse_octal_mode(s: &str) -> Result<u32, String> {
    sidecar_runtime::config::socket_mode("--socket-mode", s).map_err(|e| e.reason)
}

impl Cli {
    /// Validates the flags into a [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let trust_domain = parse_trust_domain("--trust-domain", &self.trust_domain)?;
        let spiffe_ids = self
            .spiffe_ids
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|value| {
                SpiffeId::new(value).map_err(|source| ConfigError::SpiffeId {
                    value: value.to_owned(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        let federate_with = self
            .federate_with
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|value| parse_trust_domain("--federate-with", value))
            .collect::<Result<_, _>>()?;
        let config = Config {
            socket: self.socket.ok_or(ConfigError::NoSocket)?,
            socket_mode: self.socket_mode,
            trust_domain,
            spiffe_ids,
            x509_ttl: self.x509_ttl,
            jwt_ttl: self.jwt_ttl,
            federate_with,
            state_dir: self.state_dir,
            oidc_listen: self.oidc_listen,
            jwt_issuer: self.jwt_issuer.map(|s| s.trim_end_matches('/').to_owned()),
            jwt_alg: self.jwt_alg,
            jwt_key_rotation: self.jwt_key_rotation,
            admin_listen: self.admin_listen,
            unix_authority_adapter: self.unix_authority_adapter,
        };
        config.validate()?;
        Ok(config)
    }
}

/// A trust domain must be given as a bare name (`example.org`), not as a SPIFFE ID.
fn parse_trust_domain(flag: &'static str, value: &str) -> Result<TrustDomain, ConfigError> {
    let value = value.strip_prefix("spiffe://").unwrap_or(value);
    TrustDomain::new(value).map_err(|source| ConfigError::TrustDomain {
        flag,
        value: value.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn socket_flag_errors_name_the_flag_and_the_problem() {
        let err = parse_endpoint("unix:run/agent.sock").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("--socket: invalid Workload API address"),
            "{msg}"
        );
        assert!(msg.contains("not absolute"), "{msg}");
        assert_eq!(
            parse_endpoint("unix:///run/agent.sock").unwrap(),
            Endpoint::Unix("/run/agent.sock".into())
        );
    }

    #[test]
    fn cli_defaults_and_env_style_lists() {
        let cli = Cli::try_parse_from([
            "spiffe-dev-agent",
            "--socket",
            "unix:///tmp/a.sock",
            "--spiffe-id",
            "spiffe://example.org/a,spiffe://example.org/b",
            "--federate-with",
            "other.org",
        ])
        .unwrap();
        let config = cli.into_config().unwrap();
        assert_eq!(config.trust_domain.as_str(), "example.org");
        assert_eq!(config.spiffe_ids.len(), 2);
        assert_eq!(config.federate_with[0].as_str(), "other.org");
        assert_eq!(config.x509_ttl, Duration::from_secs(3600));
        assert_eq!(config.jwt_ttl, Duration::from_secs(300));
        assert_eq!(config.socket_mode, 0o660);
        assert_eq!(config.jwt_alg, JwtAlg::Es256);
    }

    #[test]
    fn default_spiffe_id_is_workload_in_own_domain() {
        let config = Config::new(
            Endpoint::parse("unix:///tmp/a.sock").unwrap(),
            TrustDomain::new("example.org").unwrap(),
        );
        let ids = config.effective_spiffe_ids().unwrap();
        assert_eq!(ids[0].to_string(), "spiffe://example.org/workload");
    }

    #[test]
    fn foreign_spiffe_id_is_rejected() {
        let cli = Cli::try_parse_from([
            "spiffe-dev-agent",
            "--socket",
            "unix:///tmp/a.sock",
            "--spiffe-id",
            "spiffe://other.org/a",
        ])
        .unwrap();
        let err = cli.into_config().unwrap_err();
        assert!(matches!(err, ConfigError::ForeignSpiffeId { .. }), "{err}");
    }

    #[test]
    fn oidc_needs_issuer() {
        let cli = Cli::try_parse_from([
            "spiffe-dev-agent",
            "--socket",
            "unix:///tmp/a.sock",
            "--oidc-listen",
            "127.0.0.1:0",
        ])
        .unwrap();
        assert!(matches!(
            cli.into_config().unwrap_err(),
            ConfigError::OidcWithoutIssuer
        ));
    }
}
