//! Parsing typed configuration values so that every error names the setting and the value.

use std::net::SocketAddr;
use std::time::Duration;

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

/// `IP:PORT` (IP literal; a sidecar binds loopback by default and must not resolve names).
pub fn socket_addr(setting: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::new(setting, value, "expected IP:PORT, e.g. 127.0.0.1:9010"))
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
}
