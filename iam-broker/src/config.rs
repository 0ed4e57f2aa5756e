//! The settings every provider shares (the Workload API, listeners, the JWT-SVID audience,
//! logging) as rows read by one [`Reader`], and the validators providers' settings share.
//!
//! A leaf: nothing here knows a provider. A provider says what it changes in the shared
//! settings through [`SharedRules`] (a default audience, Vault's listen port), reads its own rows
//! from the same [`Reader`] (`provider/<cloud>/config.rs`), and `cli.rs` puts the two together,
//! so every bad setting, shared or the provider's, is reported at once.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sidecar_runtime::config;
use sidecar_runtime::host::HostPort;
use sidecar_runtime::settings::{Reader, Setting, reason};
use sidecar_runtime::{ConfigError, ListenPolicy, LogFormat};
use workload_client::ResolvedEndpoint;

use crate::secret::Secret;

/// Env: the JWT-SVID audience to request (what the cloud's trust policy expects).
pub const ENV_AUDIENCE: &str = "SPIFFE_IAM_BROKER_AUDIENCE";
/// Env: Workload API address.
pub const ENV_SOCKET: &str = "SPIFFE_IAM_BROKER_SOCKET_PATH";
/// Env: credentials listen address.
pub const ENV_LISTEN: &str = "SPIFFE_IAM_BROKER_LISTEN";
/// Env: admin listen address, or `off`.
pub const ENV_ADMIN_LISTEN: &str = "SPIFFE_IAM_BROKER_ADMIN_LISTEN";
/// Env: how long a request waits for credentials not held yet.
pub const ENV_FETCH_WAIT: &str = "SPIFFE_IAM_BROKER_FETCH_WAIT";
/// Env: `true` to allow a non-loopback credentials listen address.
pub const ENV_ALLOW_NON_LOOPBACK_LISTEN: &str = "SPIFFE_IAM_BROKER_ALLOW_NON_LOOPBACK_LISTEN";
/// Env: `text` or `json`.
pub const ENV_LOG_FORMAT: &str = "SPIFFE_IAM_BROKER_LOG_FORMAT";

/// The Istio deployment's contract: `credential_process = curl -s http://localhost:9876/v1/creds`
/// (`docs/protocols.md#istio-injection-template`).
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9876);
/// Admin (probes, metrics) next to it.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9877);
/// A cold request waits this long for the first credentials before answering 503.
pub const DEFAULT_FETCH_WAIT: Duration = Duration::from_secs(10);
/// Longest `--fetch-wait`: clients have their own timeouts.
pub const MAX_FETCH_WAIT: Duration = Duration::from_secs(60);

// === Settings ===

/// `--audience`.
pub const AUDIENCE: Setting = Setting::new(
    "--audience",
    ENV_AUDIENCE,
    "JWT-SVID audience to request (what the trust policy checks as aud)",
);
/// `--socket`; then `SPIFFE_ENDPOINT_SOCKET` and the CSI driver's default path, as every
/// sidecar resolves it ([`Reader::workload_api`]).
pub const SOCKET: Setting = Setting::workload_api(ENV_SOCKET);
/// `--listen`.
pub const LISTEN: Setting = Setting::new(
    "--listen",
    ENV_LISTEN,
    "credentials listen address, loopback unless allowed below",
);
/// `--allow-non-loopback-listen`: a switch, read by [`ListenPolicy::load`] (a flag without a
/// value, so not through [`Reader::get`]); a row for `--help`.
pub const ALLOW_NON_LOOPBACK_LISTEN: Setting = Setting::new(
    "--allow-non-loopback-listen",
    ENV_ALLOW_NON_LOOPBACK_LISTEN,
    "true to serve credentials beyond loopback (/v1/creds has no authentication)",
);
/// `--admin-listen`.
pub const ADMIN_LISTEN: Setting = Setting::new(
    "--admin-listen",
    ENV_ADMIN_LISTEN,
    "admin HTTP address for /healthz, /readyz, /metrics, or off [default: 127.0.0.1:9877]",
);
/// `--fetch-wait`.
pub const FETCH_WAIT: Setting = Setting::new(
    "--fetch-wait",
    ENV_FETCH_WAIT,
    "how long a request waits for credentials not held yet, at most 60s [default: 10s]",
);
/// `--log-format`.
pub const LOG_FORMAT: Setting = Setting::log_format(ENV_LOG_FORMAT);

/// The shared rows, in `--help`'s order.
pub const SETTINGS: &[&Setting] = &[
    &AUDIENCE,
    &SOCKET,
    &LISTEN,
    &ALLOW_NON_LOOPBACK_LISTEN,
    &ADMIN_LISTEN,
    &FETCH_WAIT,
    &LOG_FORMAT,
];

/// Flags every provider shares.
#[derive(Debug, Default, clap::Args)]
pub struct CommonArgs {
    /// JWT-SVID audience to request (what the role's trust policy checks as `aud`).
    #[arg(long)]
    pub audience: Option<String>,
    /// Workload API address: unix:///path or tcp://IP:PORT.
    #[arg(long)]
    pub socket: Option<String>,
    /// Credentials listen address (loopback!) [default: 127.0.0.1:9876].
    #[arg(long)]
    pub listen: Option<String>,
    /// Admin HTTP address for /healthz, /readyz, /metrics, or "off" [default: 127.0.0.1:9877].
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// How long a request waits for credentials not held yet before answering 503 [default: 10s].
    #[arg(long)]
    pub fetch_wait: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    pub log_format: Option<String>,
    /// Allow a non-loopback --listen address: whoever reaches it gets cloud credentials
    /// (/v1/creds has no authentication) [default: loopback only].
    #[arg(long)]
    pub allow_non_loopback_listen: bool,
}

/// What a provider decides about the shared settings.
#[derive(Clone, Copy, Debug)]
pub struct SharedRules {
    /// The audience when none is given (`None`: the operator must name one).
    pub default_audience: Option<&'static str>,
    /// The credentials listen address when none is given.
    pub default_listen: SocketAddr,
    /// What the audience must be besides not empty (GCP: a pool provider's name).
    pub check_audience: fn(&str) -> Result<(), String>,
}

impl SharedRules {
    /// No default audience, the broker's port, any audience.
    pub const DEFAULT: Self = Self {
        default_audience: None,
        default_listen: DEFAULT_LISTEN,
        check_audience: |_| Ok(()),
    };
}

/// Settings every provider shares.
#[derive(Clone, Debug)]
pub struct Common {
    /// JWT-SVID audience.
    pub audience: String,
    /// Workload API endpoint and the setting it came from.
    pub socket: ResolvedEndpoint,
    /// Credentials listen address.
    pub listen: SocketAddr,
    /// Admin listen address (`None`: off).
    pub admin_listen: Option<SocketAddr>,
    /// Cold-request wait bound.
    pub fetch_wait: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Whether `listen` may be non-loopback.
    pub listen_policy: ListenPolicy,
}

// === impl Common ===

impl Common {
    /// Reads the shared settings, recording every bad one in `r`. `None` when the audience,
    /// the Workload API or the listen address is bad; other bad values leave their default in
    /// place (the configuration is refused at [`Reader::finish`] either way).
    pub fn read(args: &CommonArgs, rules: &SharedRules, r: &mut Reader<'_>) -> Option<Self> {
        let audience_flag = args.audience.as_deref();
        let audience = match rules.default_audience {
            Some(default) if r.raw(&AUDIENCE, audience_flag).is_none() => Some(default.to_owned()),
            _ => required(r, &AUDIENCE, audience_flag, "an audience", |v| {
                if v.trim().is_empty() {
                    return Err("audience must not be empty".to_owned());
                }
                (rules.check_audience)(v)?;
                Ok(v.to_owned())
            }),
        };

        let socket = r.workload_api(&SOCKET, args.socket.as_deref());

        let listen_policy = r
            .check(ListenPolicy::load(
                args.allow_non_loopback_listen,
                r.env(),
                ENV_ALLOW_NON_LOOPBACK_LISTEN,
            ))
            .unwrap_or_default();
        let listen = match r.raw(&LISTEN, args.listen.as_deref()) {
            Some(s) => r.check(
                config::socket_addr(&s.setting, &s.value)
                    .and_then(|addr| listen_policy.check(&s.setting, addr)),
            ),
            None => Some(rules.default_listen),
        };
        let admin_listen = r.get_or(
            &ADMIN_LISTEN,
            args.admin_listen.as_deref(),
            Some(DEFAULT_ADMIN_LISTEN),
            reason(config::admin_listen),
        );
        if let Some(listen) = listen
            && admin_listen == Some(listen)
        {
            r.error(ConfigError::new(
                ADMIN_LISTEN.flag,
                listen.to_string(),
                "must differ from the credentials listen address",
            ));
        }

        let fetch_wait = r.get_or(
            &FETCH_WAIT,
            args.fetch_wait.as_deref(),
            DEFAULT_FETCH_WAIT,
            |v| {
                let wait = config::duration("", v).map_err(|e| e.reason)?;
                if wait > MAX_FETCH_WAIT {
                    return Err("at most 60s (clients have their own timeouts)".to_owned());
                }
                Ok(wait)
            },
        );
        let log_format = r.get_or(
            &LOG_FORMAT,
            args.log_format.as_deref(),
            LogFormat::Text,
            str::parse,
        );

        Some(Self {
            audience: audience?,
            socket: socket?,
            listen: listen?,
            admin_listen,
            fetch_wait,
            log_format,
            listen_policy,
        })
    }
}

/// `setting` parsed; unset is an error: "`what` is required (every place it can be given)",
/// named after the last of those places, the vendor's variable when there is one
/// (`AZURE_TENANT_ID`, `VAULT_ADDR`: what a pod spec written for that vendor sets). Not
/// [`Reader::required`], whose wording differs: these messages are what operators and the
/// end-to-end tests already know.
pub fn required<T>(
    r: &mut Reader<'_>,
    setting: &Setting,
    flag: Option<&str>,
    what: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    if r.raw(setting, flag).is_some() {
        return r.get(setting, flag, parse);
    }
    r.error(missing(setting, what));
    None
}

/// The error for `setting` unset: see [`required`].
pub fn missing(setting: &Setting, what: &str) -> ConfigError {
    let mut places = vec![setting.flag, setting.env];
    places.extend(setting.fallbacks);
    let named = places.last().copied().unwrap_or(setting.env);
    let listed = match places.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => named.to_owned(),
    };
    ConfigError::new(named, "", format!("{what} is required ({listed})"))
}

/// A path setting and where it came from: the flag as clap parsed it (not through a `String`,
/// so a path that is not UTF-8 survives), else the row's variables. Empty counts as unset.
pub fn path_setting(
    r: &Reader<'_>,
    setting: &Setting,
    flag: Option<&Path>,
) -> Option<(String, PathBuf)> {
    match flag.filter(|p| !p.as_os_str().is_empty()) {
        Some(path) => Some((setting.flag.to_owned(), path.to_path_buf())),
        None => r
            .raw(setting, None)
            .map(|s| (s.setting, PathBuf::from(s.value))),
    }
}

/// Clap parser for secrets given as flags (kept out of `Debug`).
pub fn secret_arg(s: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(s))
}

// === Validators ===

/// Why a token service's URL is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Not a URL at all.
    #[error("not a URL ({reason}): expected e.g. {example}")]
    NotUrl {
        /// The parser's words.
        reason: String,
        /// A URL of the right shape.
        example: String,
    },
    /// A URL without a host.
    #[error("expected a URL with a host, e.g. {example}")]
    NoHost {
        /// A URL of the right shape.
        example: String,
    },
    /// A path or query (the provider appends its own).
    #[error("expected no path or query")]
    PathOrQuery,
    /// `http://` to a host that is not loopback.
    #[error(
        "plain http is allowed only to a loopback address (the JWT-SVID would cross the network in clear)"
    )]
    PlainHttp,
    /// Another scheme.
    #[error("expected an https:// URL")]
    NotHttps,
}

/// `https://host[:port][/]`, or `http://` to a loopback address only: the request carries the
/// JWT-SVID, which must not cross a network in clear.
pub fn validate_endpoint(url: &str) -> Result<String, EndpointError> {
    validate_endpoint_for(url, "https://sts.eu-west-1.amazonaws.com")
}

/// [`validate_endpoint`] with `example` in its messages.
pub fn validate_endpoint_for(url: &str, example: &str) -> Result<String, EndpointError> {
    let uri: axum::http::Uri = url.parse().map_err(|e| EndpointError::NotUrl {
        reason: format!("{e}"),
        example: example.to_owned(),
    })?;
    let scheme = uri.scheme_str().unwrap_or("");
    let Some(host) = uri.host() else {
        return Err(EndpointError::NoHost {
            example: example.to_owned(),
        });
    };
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(EndpointError::PathOrQuery);
    }
    match scheme {
        "https" => {}
        "http" if is_loopback_name(host) => {}
        "http" => return Err(EndpointError::PlainHttp),
        _ => return Err(EndpointError::NotHttps),
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// A URL's host (`Uri::host`: IPv6 in brackets) that is exactly `localhost`, in `127.0.0.0/8`
/// or `[::1]`. Not `localhost.`: a resolver may send a fully qualified name to DNS rather than
/// to `/etc/hosts`, and a plain-http JWT-SVID would then leave the machine.
pub fn is_loopback_name(host: &str) -> bool {
    HostPort::parse(host).is_some_and(|h| {
        h.port.is_none()
            && (h.host.eq_ignore_ascii_case("localhost")
                || h.ip().is_some_and(|ip| ip.is_loopback()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_goes_only_to_localhost_and_loopback_literals() {
        for ok in [
            "http://localhost:4566",
            "http://LOCALHOST:4566",
            "http://127.0.0.1:8200",
            "http://[::1]:8200",
            "https://sts.eu-west-1.amazonaws.com",
        ] {
            assert!(validate_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://localhost.:4566",
            "http://localhost.evil.example",
            "http://10.0.0.1:8200",
            "http://[::2]:8200",
        ] {
            assert!(validate_endpoint(bad).is_err(), "{bad}");
        }
    }
}
