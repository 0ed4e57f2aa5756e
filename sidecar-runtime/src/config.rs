//! Parsing typed configuration values so that every error names the setting and the value.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use workload_client::{Endpoint, EndpointSource, ResolvedEndpoint};
use workload_client::{Env, resolve_endpoint_from};

use crate::LogFormat;

/// A configuration value that cannot be used. Printed as one line at start-up, after which the
/// sidecar exits non-zero: a misconfigured sidecar must not come up half-working.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {reason} (got {value:?})")]
pub struct ConfigError {
    /// The flag, variable or file key (e.g. `SPIRE_ENVOY_JWT_HELPER_JWT_MODE`).
    pub setting: String,
    /// The offending value.
    pub value: String,
    /// What is wrong, and what is expected.
    pub reason: String,
}

impl ConfigError {
    /// A new error.
    pub fn new(
        setting: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            setting: setting.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// The first of a flag and its environment variable that is set (non-empty), with the name of
/// the one that was: flag > environment, the precedence every sidecar uses.
pub fn pick(
    flag: Option<&str>,
    flag_name: &str,
    env: &dyn Env,
    env_name: &str,
) -> Option<(String, String)> {
    match flag.filter(|v| !v.is_empty()) {
        Some(v) => Some((flag_name.to_owned(), v.to_owned())),
        None => env.var(env_name).map(|v| (env_name.to_owned(), v)),
    }
}

/// An admin listener address, or `off` (any case) for none.
pub fn admin_listen(setting: &str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    socket_addr(setting, value)
        .map(Some)
        .map_err(|e| ConfigError::new(setting, value, format!("{} or off", e.reason)))
}

/// The Workload API endpoint: `picked` (the sidecar's flag, variable or file key, already chosen),
/// else `SPIFFE_ENDPOINT_SOCKET`, else the CSI default (`docs/protocols.md#workload-api-endpoint`);
/// a malformed address is an error naming the setting it came from, never a fall-through.
pub fn workload_api(
    picked: Option<(String, String)>,
    env: &dyn Env,
) -> Result<ResolvedEndpoint, ConfigError> {
    let candidates = picked.map(|(setting, v)| (EndpointSource::Setting(setting), v));
    resolve_endpoint_from(candidates, env).map_err(|e| {
        ConfigError::new(
            e.source_name,
            e.value,
            format!("invalid Workload API address: {}", e.error),
        )
    })
}

/// `text` or `json`; unset means text.
pub fn log_format(picked: Option<(String, String)>) -> Result<LogFormat, ConfigError> {
    match picked {
        None => Ok(LogFormat::Text),
        Some((setting, v)) => v
            .parse()
            .map_err(|e: String| ConfigError::new(setting, &v, e)),
    }
}

/// `IP:PORT` (IP literal; a sidecar binds loopback by default and must not resolve names).
pub fn socket_addr(setting: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::new(setting, value, "expected IP:PORT, e.g. 127.0.0.1:9010"))
}

/// Where a gRPC server of ours listens: a Unix socket (served through [`crate::uds`]) or TCP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket file (`unix:///path`).
    Unix(PathBuf),
    /// A TCP address (`IP:PORT` or `tcp://IP:PORT`).
    Tcp(SocketAddr),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// `unix:///absolute/path`, `tcp://IP:PORT` or plain `IP:PORT`, with the Workload API's
/// address rules (absolute paths, IP literals, no query or fragment:
/// `docs/protocols.md#workload-api-endpoint`).
pub fn listen(setting: &str, value: &str) -> Result<Listen, ConfigError> {
    if let Ok(addr) = value.parse() {
        return Ok(Listen::Tcp(addr));
    }
    match Endpoint::parse(value) {
        Ok(Endpoint::Unix(path)) => Ok(Listen::Unix(path)),
        Ok(Endpoint::Tcp(addr)) => Ok(Listen::Tcp(addr)),
        Err(e) => Err(ConfigError::new(
            setting,
            value,
            format!("expected unix:///path, tcp://IP:PORT or IP:PORT: {e}"),
        )),
    }
}

/// Octal permission bits for a socket file (`0600`, `0o660`); the owner must keep read and
/// write, and nothing past `0777` (no setuid, sticky) is accepted.
pub fn socket_mode(setting: &str, value: &str) -> Result<u32, ConfigError> {
    let digits = value.strip_prefix("0o").unwrap_or(value);
    // Octal digits only: `from_str_radix` also takes a leading `+`.
    let octal = digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match u32::from_str_radix(digits, 8) {
        Ok(m) if octal && m <= 0o777 && m & 0o600 == 0o600 => Ok(m),
        _ => Err(ConfigError::new(
            setting,
            value,
            "expected octal permission bits with owner read/write, e.g. 0600 or 0660",
        )),
    }
}

/// Env, read by every gRPC server on a Unix socket: `off` turns the `:authority` adapter
/// ([`crate::uds::GrpcUnixStream`]) off. An escape hatch, and the benchmarks' baseline; with it
/// off, gRPC C-core and grpc-java clients are refused again
/// (`docs/protocols.md#grpc-unix-authority`; docs/architecture.md's table of clients says
/// which, measured).
pub const ENV_UNIX_AUTHORITY_ADAPTER: &str = "SIDECAR_UNIX_AUTHORITY_ADAPTER";

/// `on` or `off` (any case).
pub fn on_off(setting: &str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(ConfigError::new(setting, value, "expected on or off")),
    }
}

/// Whether Unix-socket connections go through the `:authority` adapter (default on).
pub fn unix_authority_adapter(env: &dyn Env) -> Result<bool, ConfigError> {
    env.var(ENV_UNIX_AUTHORITY_ADAPTER)
        .map_or(Ok(true), |v| on_off(ENV_UNIX_AUTHORITY_ADAPTER, &v))
}

/// The flag every sidecar takes to serve on a non-loopback address.
pub const ALLOW_NON_LOOPBACK_LISTEN_FLAG: &str = "--allow-non-loopback-listen";

/// Whether a sidecar may serve its data-plane port beyond loopback, and which setting said so.
///
/// Every sidecar's port hands out credentials (JWT-SVIDs, private keys, cloud keys) to whoever
/// connects, unauthenticated and in cleartext: its only boundary is that nothing off the host
/// (or pod) can connect. So a non-loopback address (a pod IP, `0.0.0.0`, `[::]`) is refused at
/// start unless explicitly allowed, and logged as a warning when it is. Admin listeners are not
/// checked: kubelet probes and Prometheus reach them on the pod IP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenPolicy {
    /// The flag or variable that allowed non-loopback addresses (`None`: loopback only).
    allowed_by: Option<String>,
    /// The sidecar's variable, named in refusals so the operator knows both ways to opt in.
    env_name: String,
}

// === impl ListenPolicy ===

impl ListenPolicy {
    /// Reads the opt-in: the `--allow-non-loopback-listen` flag, else `env_name` (the sidecar's
    /// `<PREFIX>_ALLOW_NON_LOOPBACK_LISTEN`) set to `true`/`false` (also `1`/`0`, `yes`/`no`).
    pub fn load(flag: bool, env: &dyn Env, env_name: &str) -> Result<Self, ConfigError> {
        let allowed_by = if flag {
            Some(ALLOW_NON_LOOPBACK_LISTEN_FLAG.to_owned())
        } else {
            match env.var(env_name) {
                None => None,
                Some(v) => boolean(env_name, &v)?.then(|| env_name.to_owned()),
            }
        };
        Ok(Self {
            allowed_by,
            env_name: env_name.to_owned(),
        })
    }

    /// `addr` if it is loopback or non-loopback addresses are allowed; otherwise an error
    /// naming `setting` (the flag, variable or file key the address came from).
    pub fn check(&self, setting: &str, addr: SocketAddr) -> Result<SocketAddr, ConfigError> {
        if addr.ip().is_loopback() || self.allowed_by.is_some() {
            return Ok(addr);
        }
        Err(ConfigError::new(
            setting,
            addr.to_string(),
            format!(
                "not a loopback address: anyone who can reach it would get this sidecar's \
                 credentials, unauthenticated; use 127.0.0.1 or [::1], or opt in with \
                 {ALLOW_NON_LOOPBACK_LISTEN_FLAG} or {}=true",
                self.env_name
            ),
        ))
    }

    /// Logs the start-up warning for a listener `what` on `addr` that is served beyond
    /// loopback (only possible with the opt-in); nothing for a loopback address.
    pub fn warn_if_exposed(&self, what: &str, addr: SocketAddr) {
        if addr.ip().is_loopback() {
            return;
        }
        tracing::warn!(
            listener = what,
            listen = %addr,
            allowed_by = self.allowed_by.as_deref().unwrap_or("nothing"),
            "serving on a non-loopback address: anyone who can reach it gets credentials, \
             unauthenticated and in cleartext; restrict access with a network policy"
        );
    }
}

/// `true`/`false` (any case), `1`/`0`, `yes`/`no`.
pub fn boolean(setting: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ConfigError::new(setting, value, "expected true or false")),
    }
}

/// A duration like `500ms`, `30s`, `5m`.
pub fn duration(setting: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value).map_err(|e| {
        ConfigError::new(
            setting,
            value,
            format!("expected a duration like 500ms or 5m: {e}"),
        )
    })
}

#[cfg(test)]
#[path = "config_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_setting_and_value() {
        let e = socket_addr("--listen", "localhost:9010").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--listen: expected IP:PORT, e.g. 127.0.0.1:9010 (got \"localhost:9010\")"
        );
        assert_eq!(duration("X", "250ms").unwrap(), Duration::from_millis(250));
        assert!(
            duration("X", "soon")
                .unwrap_err()
                .to_string()
                .starts_with("X: ")
        );
    }

    #[test]
    fn flag_wins_over_env_and_empty_counts_as_unset() {
        let env = [("SIDECAR_X", "from-env")];
        assert_eq!(
            pick(Some("from-flag"), "--x", &env, "SIDECAR_X"),
            Some(("--x".to_owned(), "from-flag".to_owned()))
        );
        assert_eq!(
            pick(Some(""), "--x", &env, "SIDECAR_X"),
            Some(("SIDECAR_X".to_owned(), "from-env".to_owned()))
        );
        assert_eq!(pick(None, "--x", &env, "OTHER"), None);
    }

    #[test]
    fn workload_api_and_log_format_errors_name_the_setting() {
        let env = [("SPIFFE_ENDPOINT_SOCKET", "unix:///run/agent.sock")];
        let e = workload_api(Some(("--socket".into(), "unix://rel".into())), &env).unwrap_err();
        assert_eq!(e.setting, "--socket");
        let ok = workload_api(None, &env).unwrap();
        assert_eq!(ok.endpoint.to_string(), "unix:///run/agent.sock");
        assert_eq!(log_format(None).unwrap(), LogFormat::Text);
        let e = log_format(Some(("X_LOG".into(), "xml".into()))).unwrap_err();
        assert_eq!(e.setting, "X_LOG");
    }

    #[test]
    fn listen_takes_unix_tcp_and_bare_addresses_and_names_the_setting() {
        assert_eq!(
            listen("L", "unix:///run/x.sock").unwrap(),
            Listen::Unix("/run/x.sock".into())
        );
        assert_eq!(
            listen("L", "tcp://127.0.0.1:1").unwrap(),
            Listen::Tcp("127.0.0.1:1".parse().unwrap())
        );
        assert_eq!(
            listen("L", "[::1]:2").unwrap(),
            Listen::Tcp("[::1]:2".parse().unwrap())
        );
        assert_eq!(listen("L", "unix:///a").unwrap().to_string(), "unix:///a");
        for bad in [
            "unix://relative",
            "localhost:1",
            "tcp://host:1",
            "/run/x.sock",
            "",
        ] {
            assert_eq!(listen("L", bad).unwrap_err().setting, "L", "{bad}");
        }
        assert_eq!(socket_mode("M", "0o660").unwrap(), 0o660);
        assert!(unix_authority_adapter(&[("OTHER", "x")]).unwrap());
        assert!(!unix_authority_adapter(&[(ENV_UNIX_AUTHORITY_ADAPTER, "OFF")]).unwrap());
        let e = unix_authority_adapter(&[(ENV_UNIX_AUTHORITY_ADAPTER, "no")]).unwrap_err();
        assert_eq!(e.setting, ENV_UNIX_AUTHORITY_ADAPTER);
        // "+600" and "0o+600": found by the property tests (from_str_radix took the sign).
        for bad in ["0400", "1777", "rw", "0", "+600", "0o+600"] {
            assert_eq!(socket_mode("M", bad).unwrap_err().setting, "M", "{bad}");
        }
    }

    #[test]
    fn non_loopback_listen_is_refused_unless_opted_in() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let strict = ListenPolicy::load(false, &[("OTHER", "true")], "X_ALLOW").unwrap();
        for ok in ["127.0.0.1:9010", "127.0.0.2:1", "[::1]:9010"] {
            assert_eq!(strict.check("--listen", addr(ok)).unwrap(), addr(ok));
        }
        for bad in ["0.0.0.0:9010", "[::]:9010", "10.1.2.3:9010", "[fd00::1]:1"] {
            let e = strict.check("X_LISTEN", addr(bad)).unwrap_err();
            assert_eq!(e.setting, "X_LISTEN");
            assert_eq!(e.value, bad);
            assert!(e.reason.contains("--allow-non-loopback-listen"), "{e}");
            assert!(e.reason.contains("X_ALLOW=true"), "{e}");
        }
        let by_flag = ListenPolicy::load(true, &[("X_ALLOW", "false")], "X_ALLOW").unwrap();
        let by_env = ListenPolicy::load(false, &[("X_ALLOW", "TRUE")], "X_ALLOW").unwrap();
        for policy in [by_flag, by_env] {
            assert!(policy.check("--listen", addr("0.0.0.0:9010")).is_ok());
        }
        let off = ListenPolicy::load(false, &[("X_ALLOW", "no")], "X_ALLOW").unwrap();
        assert!(off.check("--listen", addr("0.0.0.0:9010")).is_err());
        let e = ListenPolicy::load(false, &[("X_ALLOW", "sure")], "X_ALLOW").unwrap_err();
        assert_eq!(e.setting, "X_ALLOW");
    }

    #[test]
    fn admin_listen_accepts_off() {
        assert_eq!(admin_listen("A", "OFF").unwrap(), None);
        assert_eq!(
            admin_listen("A", "127.0.0.1:1").unwrap(),
            Some("127.0.0.1:1".parse().unwrap())
        );
        assert!(
            admin_listen("A", "nope")
                .unwrap_err()
                .reason
                .ends_with("or off")
        );
    }
}
