//! Workload API endpoint addresses and the one resolution order every sidecar uses.
//!
//! The SPIFFE Workload Endpoint spec (`docs/protocols.md#workload-api-endpoint`): an address is
//! `unix:///abs/path` (also `unix:/abs/path`) or `tcp://IP:PORT` with an IP literal. Anything
//! else is a configuration error whose message names the problem, so an operator can fix a
//! manifest from the log line alone.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// The standard variable every SPIFFE library reads (`docs/protocols.md#workload-api-endpoint`).
pub const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Where the Istio `spire` injection template mounts the SPIFFE CSI driver's socket
/// (`docs/protocols.md#istio-injection-template`).
pub const DEFAULT_ENDPOINT: &str = "unix:///run/secrets/workload-spiffe-uds/socket";

/// A parsed Workload API address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A Unix domain socket at an absolute path.
    Unix(PathBuf),
    /// A TCP address (IP literal and port).
    Tcp(SocketAddr),
}

/// Why an address could not be parsed. Each variant is one malformed form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The address is the empty string.
    #[error("address is empty; expected unix:///abs/path or tcp://IP:PORT")]
    Empty,
    /// No `scheme:` prefix (for example a bare path like `/run/agent.sock`).
    #[error("address {0:?} has no scheme; expected unix:///abs/path or tcp://IP:PORT")]
    MissingScheme(String),
    /// A scheme other than `unix` or `tcp`.
    #[error("scheme {0:?} is not supported; expected unix or tcp")]
    UnsupportedScheme(String),
    /// `?query` or `#fragment` present.
    #[error("address must not contain a query or fragment")]
    QueryOrFragment,
    /// `user@` present.
    #[error("address must not contain user info")]
    UserInfo,
    /// `unix://host/path`: a unix address has no authority.
    #[error("unix address must not have a host ({0:?}); use unix:///abs/path")]
    UnixHost(String),
    /// `unix:relative/path`.
    #[error("unix socket path {0:?} is not absolute; use unix:///abs/path")]
    UnixRelativePath(String),
    /// `unix://` or `unix:///`.
    #[error("unix address has no socket path")]
    UnixEmptyPath,
    /// `tcp:127.0.0.1:80` (no `//`).
    #[error("tcp address must have the form tcp://IP:PORT")]
    TcpNotHierarchical,
    /// `tcp://127.0.0.1:80/path`.
    #[error("tcp address must not have a path ({0:?})")]
    TcpPath(String),
    /// `tcp://127.0.0.1`.
    #[error("tcp address {0:?} has no port")]
    TcpMissingPort(String),
    /// `tcp://127.0.0.1:http` or a port outside 1..=65535.
    #[error("tcp port {0:?} is not a number in 1..=65535")]
    TcpInvalidPort(String),
    /// `tcp://localhost:80`: the Workload API spec requires an IP literal.
    #[error("tcp host {0:?} is not an IP address (host names are not allowed)")]
    TcpHostNotIp(String),
}

// === impl Endpoint ===

impl Endpoint {
    /// Parses an address (`docs/protocols.md#workload-api-endpoint`).
    pub fn parse(addr: &str) -> Result<Self, EndpointError> {
        if addr.is_empty() {
            return Err(EndpointError::Empty);
        }
        let Some((scheme, rest)) = addr.split_once(':') else {
            return Err(EndpointError::MissingScheme(addr.to_owned()));
        };
        if scheme.is_empty() || scheme.contains('/') {
            return Err(EndpointError::MissingScheme(addr.to_owned()));
        }
        if rest.contains(['?', '#']) {
            return Err(EndpointError::QueryOrFragment);
        }
        match scheme.to_ascii_lowercase().as_str() {
            "unix" => Self::parse_unix(rest),
            "tcp" => Self::parse_tcp(rest),
            _ => Err(EndpointError::UnsupportedScheme(scheme.to_owned())),
        }
    }

    /// The socket path, for a Unix endpoint.
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Unix(path) => Some(path),
            Self::Tcp(_) => None,
        }
    }

    fn parse_unix(rest: &str) -> Result<Self, EndpointError> {
        let path = if let Some(after) = rest.strip_prefix("//") {
            // `unix://authority/path`: the authority must be empty.
            let (authority, path) = match after.find('/') {
                Some(i) => after.split_at(i),
                None => (after, ""),
            };
            if authority.contains('@') {
                return Err(EndpointError::UserInfo);
            }
            if !authority.is_empty() {
                return Err(EndpointError::UnixHost(authority.to_owned()));
            }
            path
        } else if rest.starts_with('/') {
            rest
        } else if rest.is_empty() {
            return Err(EndpointError::UnixEmptyPath);
        } else {
            return Err(EndpointError::UnixRelativePath(rest.to_owned()));
        };
        if path.trim_matches('/').is_empty() {
            return Err(EndpointError::UnixEmptyPath);
        }
        Ok(Self::Unix(PathBuf::from(path)))
    }

    fn parse_tcp(rest: &str) -> Result<Self, EndpointError> {
        let Some(authority) = rest.strip_prefix("//") else {
            return Err(EndpointError::TcpNotHierarchical);
        };
        let (authority, path) = match authority.find('/') {
            Some(i) => authority.split_at(i),
            None => (authority, ""),
        };
        if !path.is_empty() {
            return Err(EndpointError::TcpPath(path.to_owned()));
        }
        if authority.contains('@') {
            return Err(EndpointError::UserInfo);
        }
        // `[v6]:port` or `v4:port`.
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err(EndpointError::TcpHostNotIp(authority.to_owned()));
            };
            match after.strip_prefix(':') {
                Some(port) => (host, port),
                None => return Err(EndpointError::TcpMissingPort(authority.to_owned())),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, port),
                _ => return Err(EndpointError::TcpMissingPort(authority.to_owned())),
            }
        };
        if port.is_empty() {
            return Err(EndpointError::TcpMissingPort(authority.to_owned()));
        }
        let ip: IpAddr = host
            .parse()
            .map_err(|_| EndpointError::TcpHostNotIp(host.to_owned()))?;
        // Digits only (RFC 3986 §3.2.3): `u16::from_str` also takes a leading `+`.
        let port: u16 = match port.parse() {
            Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => return Err(EndpointError::TcpInvalidPort(port.to_owned())),
        };
        Ok(Self::Tcp(SocketAddr::new(ip, port)))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

// === Environment ===

/// Where configuration reads environment variables from. The process environment in binaries,
/// a map in tests, so no test ever mutates the (process-global, racy) real environment.
pub trait Env {
    /// The value of `name`, or `None` when unset. Empty values count as unset, as in go-spiffe.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, v)| *k == name && !v.is_empty())
            .map(|(_, v)| (*v).to_owned())
    }
}

// === Resolution ===

/// Where a resolved endpoint came from, so errors and start-up logs can name the setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointSource {
    /// A command-line flag (its name, e.g. `--socket`).
    Flag(&'static str),
    /// An environment variable (its name).
    Env(String),
    /// Another setting, e.g. a key of a configuration file (`socket_path in helper.conf`).
    Setting(String),
    /// [`DEFAULT_ENDPOINT`].
    Default,
}

impl fmt::Display for EndpointSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag(name) => f.write_str(name),
            Self::Env(name) | Self::Setting(name) => f.write_str(name),
            Self::Default => f.write_str("default endpoint"),
        }
    }
}

/// An endpoint together with the setting that chose it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedEndpoint {
    /// The parsed address.
    pub endpoint: Endpoint,
    /// The setting it was read from.
    pub source: EndpointSource,
}

/// A malformed address, with the setting that held it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: invalid Workload API address {value:?}: {error}")]
pub struct ResolveError {
    /// The flag or variable name.
    pub source_name: String,
    /// The offending value.
    pub value: String,
    /// What is wrong with it.
    pub error: EndpointError,
}

/// The one resolution order every sidecar uses: its flag, its own variable, then
/// `SPIFFE_ENDPOINT_SOCKET`, then [`DEFAULT_ENDPOINT`]. The first setting present wins; if it
/// is malformed that is an error (we never fall through to a later source, which would hide a
/// typo in the manifest behind the default socket).
pub fn resolve_endpoint(
    flag: Option<(&'static str, &str)>,
    own_var: Option<&str>,
    env: &dyn Env,
) -> Result<ResolvedEndpoint, ResolveError> {
    let first = flag
        .filter(|(_, v)| !v.is_empty())
        .map(|(name, v)| (EndpointSource::Flag(name), v.to_owned()))
        .into_iter()
        .chain(own_var.and_then(|name| {
            env.var(name)
                .map(|v| (EndpointSource::Env(name.to_owned()), v))
        }));
    resolve_endpoint_from(first, env)
}

/// [`resolve_endpoint`] for sidecars with more sources of their own (e.g. a config file between
/// their variable and `SPIFFE_ENDPOINT_SOCKET`): `candidates` in precedence order, then
/// `SPIFFE_ENDPOINT_SOCKET`, then [`DEFAULT_ENDPOINT`]. Empty values count as unset.
pub fn resolve_endpoint_from(
    candidates: impl IntoIterator<Item = (EndpointSource, String)>,
    env: &dyn Env,
) -> Result<ResolvedEndpoint, ResolveError> {
    let (source, value) = candidates
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .chain(
            env.var(SPIFFE_ENDPOINT_SOCKET)
                .map(|v| (EndpointSource::Env(SPIFFE_ENDPOINT_SOCKET.to_owned()), v)),
        )
        .next()
        .unwrap_or((EndpointSource::Default, DEFAULT_ENDPOINT.to_owned()));
    match Endpoint::parse(&value) {
        Ok(endpoint) => Ok(ResolvedEndpoint { endpoint, source }),
        Err(error) => Err(ResolveError {
            source_name: source.to_string(),
            value,
            error,
        }),
    }
}

#[cfg(test)]
#[path = "endpoint_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_forms() {
        assert_eq!(
            Endpoint::parse("unix:///run/agent.sock"),
            Ok(Endpoint::Unix("/run/agent.sock".into()))
        );
        assert_eq!(
            Endpoint::parse("unix:/run/agent.sock"),
            Ok(Endpoint::Unix("/run/agent.sock".into()))
        );
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:8081"),
            Ok(Endpoint::Tcp("127.0.0.1:8081".parse().unwrap()))
        );
        assert_eq!(
            Endpoint::parse("tcp://[::1]:8081"),
            Ok(Endpoint::Tcp("[::1]:8081".parse().unwrap()))
        );
    }

    #[test]
    fn each_malformed_form_has_its_own_error() {
        use EndpointError as E;
        let cases: &[(&str, EndpointError)] = &[
            ("", E::Empty),
            (
                "/run/agent.sock",
                E::MissingScheme("/run/agent.sock".into()),
            ),
            ("http://127.0.0.1:80", E::UnsupportedScheme("http".into())),
            ("unix:///run/a.sock?x=1", E::QueryOrFragment),
            ("unix:///run/a.sock#frag", E::QueryOrFragment),
            ("unix://host/run/a.sock", E::UnixHost("host".into())),
            ("unix://user@/run/a.sock", E::UserInfo),
            ("unix:run/a.sock", E::UnixRelativePath("run/a.sock".into())),
            ("unix:", E::UnixEmptyPath),
            ("unix://", E::UnixEmptyPath),
            ("unix:///", E::UnixEmptyPath),
            ("tcp:127.0.0.1:80", E::TcpNotHierarchical),
            ("tcp://127.0.0.1:80/path", E::TcpPath("/path".into())),
            ("tcp://127.0.0.1", E::TcpMissingPort("127.0.0.1".into())),
            ("tcp://127.0.0.1:", E::TcpMissingPort("127.0.0.1:".into())),
            ("tcp://127.0.0.1:http", E::TcpInvalidPort("http".into())),
            ("tcp://127.0.0.1:0", E::TcpInvalidPort("0".into())),
            ("tcp://127.0.0.1:70000", E::TcpInvalidPort("70000".into())),
            // Found by the property tests: `u16::from_str` took the sign.
            ("tcp://127.0.0.1:+80", E::TcpInvalidPort("+80".into())),
            ("tcp://localhost:80", E::TcpHostNotIp("localhost".into())),
            ("tcp://u@127.0.0.1:80", E::UserInfo),
        ];
        for (input, want) in cases {
            assert_eq!(
                Endpoint::parse(input).as_ref(),
                Err(want),
                "input {input:?}"
            );
            // Every message is actionable on its own.
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn resolution_order_is_flag_own_var_spiffe_var_default() {
        let env = [
            ("OWN", "unix:///own.sock"),
            (SPIFFE_ENDPOINT_SOCKET, "unix:///std.sock"),
        ];
        let r =
            resolve_endpoint(Some(("--socket", "unix:///flag.sock")), Some("OWN"), &env).unwrap();
        assert_eq!(r.endpoint, Endpoint::Unix("/flag.sock".into()));
        assert_eq!(r.source, EndpointSource::Flag("--socket"));

        let r = resolve_endpoint(None, Some("OWN"), &env).unwrap();
        assert_eq!(r.endpoint, Endpoint::Unix("/own.sock".into()));

        let r = resolve_endpoint(None, Some("OTHER"), &env).unwrap();
        assert_eq!(r.endpoint, Endpoint::Unix("/std.sock".into()));
        assert_eq!(r.source, EndpointSource::Env(SPIFFE_ENDPOINT_SOCKET.into()));

        let r = resolve_endpoint(None, None, &[("X", "y")]).unwrap();
        assert_eq!(r.endpoint, Endpoint::parse(DEFAULT_ENDPOINT).unwrap());
        assert_eq!(r.source, EndpointSource::Default);
    }

    #[test]
    fn malformed_value_is_an_error_naming_the_setting_not_a_fallback() {
        let env = [
            ("OWN", "unix:relative"),
            (SPIFFE_ENDPOINT_SOCKET, "unix:///ok.sock"),
        ];
        let err = resolve_endpoint(None, Some("OWN"), &env).unwrap_err();
        assert_eq!(err.source_name, "OWN");
        let msg = err.to_string();
        assert!(
            msg.starts_with("OWN: invalid Workload API address \"unix:relative\""),
            "{msg}"
        );
        assert!(msg.contains("not absolute"), "{msg}");
    }

    #[test]
    fn empty_values_count_as_unset() {
        let env = [("OWN", ""), (SPIFFE_ENDPOINT_SOCKET, "unix:///std.sock")];
        let r = resolve_endpoint(Some(("--socket", "")), Some("OWN"), &env).unwrap();
        assert_eq!(r.endpoint, Endpoint::Unix("/std.sock".into()));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "unix:///run/a.sock",
            "tcp://127.0.0.1:8081",
            "tcp://[::1]:9",
        ] {
            assert_eq!(Endpoint::parse(s).unwrap().to_string(), s);
        }
    }
}
