//! Configuration: flags > environment > the upstream helper's HCL file > defaults.
//!
//! The environment names are the compatibility contract with the spire-tutorials helper and the
//! Istio `spire` injection template (`SPIRE_ENVOY_JWT_HELPER_AUDIENCE`, `_JWT_MODE`,
//! `_SOCKET_PATH`; `docs/protocols.md#istio-injection-template`); our additions use the same
//! prefix. For the Workload API socket `SPIFFE_ENDPOINT_SOCKET` comes after the file and before
//! the default, as in every sidecar of this suite.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use sidecar_runtime::config::Listen;
use sidecar_runtime::settings::{self, ConfigErrors, Reader, Setting, reason};
use sidecar_runtime::{ConfigError, ListenPolicy, LogFormat, config};
use workload_client::Env;
use workload_client::ResolvedEndpoint;
use workload_client::spiffe::{SpiffeId, TrustDomain};

/// Env: the audience to request (injection) or require (validation).
pub const ENV_AUDIENCE: &str = "SPIRE_ENVOY_JWT_HELPER_AUDIENCE";
/// Env: `jwt_injection` or `jwt_svid_validator`.
pub const ENV_MODE: &str = "SPIRE_ENVOY_JWT_HELPER_JWT_MODE";
/// Env: Workload API address.
pub const ENV_SOCKET: &str = "SPIRE_ENVOY_JWT_HELPER_SOCKET_PATH";
/// Env: path of an upstream-format HCL file.
pub const ENV_CONFIG: &str = "SPIRE_ENVOY_JWT_HELPER_CONFIG";
/// Env: ext_authz gRPC listen address (`IP:PORT` or `unix:///path`).
pub const ENV_LISTEN: &str = "SPIRE_ENVOY_JWT_HELPER_LISTEN";
/// Env: permission bits of the ext_authz Unix socket.
pub const ENV_SOCKET_MODE: &str = "SPIRE_ENVOY_JWT_HELPER_SOCKET_MODE";
/// Env: admin HTTP listen address, or `off`.
pub const ENV_ADMIN_LISTEN: &str = "SPIRE_ENVOY_JWT_HELPER_ADMIN_LISTEN";
/// Env: `deny`, `keep` or `replace`.
pub const ENV_EXISTING_AUTHORIZATION: &str = "SPIRE_ENVOY_JWT_HELPER_EXISTING_AUTHORIZATION";
/// Env: comma-separated `HOST=AUDIENCE` rules.
pub const ENV_AUDIENCE_FOR: &str = "SPIRE_ENVOY_JWT_HELPER_AUDIENCE_FOR";
/// Env: comma-separated SPIFFE IDs a validator accepts.
pub const ENV_ALLOW_SPIFFE_IDS: &str = "SPIRE_ENVOY_JWT_HELPER_ALLOW_SPIFFE_IDS";
/// Env: comma-separated trust domains a validator accepts.
pub const ENV_ALLOW_TRUST_DOMAINS: &str = "SPIRE_ENVOY_JWT_HELPER_ALLOW_TRUST_DOMAINS";
/// Env: how long a check may wait for the first token.
pub const ENV_TOKEN_WAIT: &str = "SPIRE_ENVOY_JWT_HELPER_TOKEN_WAIT";
/// Env: `text` or `json`.
pub const ENV_LOG_FORMAT: &str = "SPIRE_ENVOY_JWT_HELPER_LOG_FORMAT";
/// Env: `true` to allow a non-loopback ext_authz listen address.
pub const ENV_ALLOW_NON_LOOPBACK_LISTEN: &str = "SPIRE_ENVOY_JWT_HELPER_ALLOW_NON_LOOPBACK_LISTEN";

/// The Istio deployment's EnvoyFilter points ext_authz at this address (`google_grpc`,
/// `target_uri: 127.0.0.1:9010`: `docs/protocols.md#ext-authz-envoyfilter`).
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9010);
/// Admin (probes, metrics) next to it: by default one port above a TCP ext_authz port (so two
/// helpers started from upstream HCL files on 9010 and 9020 get 9011 and 9021), and this
/// address when ext_authz is on a Unix socket.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9011);
/// The ext_authz socket carries JWT-SVIDs for anyone who connects: owner only by default.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;
/// That EnvoyFilter gives ext_authz a 0.5 s timeout (`docs/protocols.md#ext-authz-envoyfilter`);
/// a check answers 503 itself before that.
pub const DEFAULT_TOKEN_WAIT: Duration = Duration::from_millis(400);

/// Command-line flags. Every flag has an environment variable ([`SETTINGS`], listed by `--help`),
/// read through [`Env`] rather than clap so that the HCL file can sit between the two in
/// precedence.
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "jwt-auth-helper",
    version,
    about = "Envoy ext_authz server that stamps (jwt_injection) or checks (jwt_svid_validator) JWT-SVIDs from the SPIFFE Workload API",
    after_help = after_help()
)]
pub struct Cli {
    /// Upstream-format HCL file (socket_path, host, port, jwt_mode, audience).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// jwt_injection (stamp outbound requests) or jwt_svid_validator (check inbound ones).
    #[arg(long)]
    pub mode: Option<String>,
    /// Audience to request (injection) or require (validation).
    #[arg(long)]
    pub audience: Option<String>,
    /// Workload API address: unix:///path or tcp://IP:PORT.
    #[arg(long)]
    pub socket: Option<String>,
    /// ext_authz gRPC listen address: IP:PORT or unix:///path [default: 127.0.0.1:9010].
    #[arg(long)]
    pub listen: Option<String>,
    /// Permission bits of the ext_authz Unix socket, octal [default: 0600].
    #[arg(long)]
    pub socket_mode: Option<String>,
    /// Admin HTTP address for /healthz, /readyz, /metrics, or "off" [default: the ext_authz
    /// port + 1 on 127.0.0.1, e.g. 127.0.0.1:9011; 127.0.0.1:9011 with a Unix socket].
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Injection: what to do when the request already has an authorization header:
    /// deny (403, as upstream), keep (forward unchanged) or replace [default: deny].
    #[arg(long)]
    pub existing_authorization: Option<String>,
    /// Injection: HOST=AUDIENCE, matched on the request's :authority (with or without port);
    /// repeatable. Other hosts get --audience.
    #[arg(long)]
    pub audience_for: Vec<String>,
    /// Validation: accept only this SPIFFE ID (repeatable).
    #[arg(long)]
    pub allow_spiffe_id: Vec<String>,
    /// Validation: accept only this trust domain (repeatable; default: any with a bundle).
    #[arg(long)]
    pub allow_trust_domain: Vec<String>,
    /// How long a check may wait for a token that is not cached yet [default: 400ms].
    #[arg(long)]
    pub token_wait: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    pub log_format: Option<String>,
    /// Allow a non-loopback ext_authz address (--listen or the file's host): whoever reaches
    /// it gets JWT-SVIDs stamped, unauthenticated [default: loopback only].
    #[arg(long)]
    pub allow_non_loopback_listen: bool,
}

/// What the helper does with each request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Stamp `authorization: Bearer <JWT-SVID>` on outbound requests.
    Injection,
    /// Validate the bearer JWT-SVID of inbound requests.
    Validator,
}

impl Mode {
    /// The upstream name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injection => "jwt_injection",
            Self::Validator => "jwt_svid_validator",
        }
    }
}

/// Injection when the request already carries `authorization`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExistingAuthorization {
    /// 403, as the upstream helper does.
    Deny,
    /// Forward the request unchanged.
    Keep,
    /// Overwrite it with our JWT-SVID.
    Replace,
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Injection or validation.
    pub mode: Mode,
    /// Default audience.
    pub audience: String,
    /// Workload API endpoint and where it came from.
    pub socket: ResolvedEndpoint,
    /// ext_authz listen address.
    pub listen: Listen,
    /// Permission bits of the ext_authz socket when `listen` is a Unix socket.
    pub socket_mode: u32,
    /// Admin listen address (`None`: off).
    pub admin_listen: Option<SocketAddr>,
    /// Injection: existing authorization header policy.
    pub existing_authorization: ExistingAuthorization,
    /// Injection: lower-case host (with or without port) → audience.
    pub audience_for: BTreeMap<String, String>,
    /// Validation: accepted SPIFFE IDs (empty: any).
    pub allow_spiffe_ids: BTreeSet<SpiffeId>,
    /// Validation: accepted trust domains (empty: any with a bundle).
    pub allow_trust_domains: BTreeSet<TrustDomain>,
    /// Maximum wait for an uncached token on the request path.
    pub token_wait: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Whether Unix-socket connections go through the `:authority` adapter
    /// (`SIDECAR_UNIX_AUTHORITY_ADAPTER`, default on).
    pub unix_authority_adapter: bool,
    /// Whether `listen` may be non-loopback.
    pub listen_policy: ListenPolicy,
}

// === Settings ===
//
// One row per setting: its flag, its variable, its key in the upstream HCL file, and the line
// `--help` prints. `Config::load` reads them all, so every bad one is reported at once.

/// `--config`.
pub const CONFIG: Setting = Setting::new(
    "--config",
    ENV_CONFIG,
    "upstream-format HCL file (socket_path, host, port, jwt_mode, audience)",
);
/// `--mode`.
pub const MODE: Setting = Setting::new(
    "--mode",
    ENV_MODE,
    "jwt_injection or jwt_svid_validator [default: jwt_injection]",
)
.file_key("jwt_mode");
/// `--audience`.
pub const AUDIENCE: Setting = Setting::new(
    "--audience",
    ENV_AUDIENCE,
    "audience to request (injection) or require (validation) [required]",
)
.file_key("audience");
/// `--socket`.
pub const SOCKET: Setting = Setting::workload_api(ENV_SOCKET).file_key("socket_path");
/// `--listen` (the file's `host` and `port` come after it: [`listen_from_file`]).
pub const LISTEN: Setting = Setting::new(
    "--listen",
    ENV_LISTEN,
    "ext_authz address: IP:PORT or unix:///path [default: `host`:`port` in the file, else 127.0.0.1:9010]",
);
/// `--socket-mode`.
pub const SOCKET_MODE: Setting = Setting::new(
    "--socket-mode",
    ENV_SOCKET_MODE,
    "permission bits of the ext_authz Unix socket, octal [default: 0600]",
);
/// `--admin-listen`.
pub const ADMIN_LISTEN: Setting = Setting::new(
    "--admin-listen",
    ENV_ADMIN_LISTEN,
    "admin HTTP address, or off [default: the ext_authz port + 1 on 127.0.0.1]",
);
/// `--existing-authorization`.
pub const EXISTING_AUTHORIZATION: Setting = Setting::new(
    "--existing-authorization",
    ENV_EXISTING_AUTHORIZATION,
    "injection, when a request has authorization: deny, keep or replace [default: deny]",
);
/// `--audience-for`.
pub const AUDIENCE_FOR: Setting = Setting::new(
    "--audience-for",
    ENV_AUDIENCE_FOR,
    "injection: comma-separated HOST=AUDIENCE rules",
);
/// `--allow-spiffe-id`.
pub const ALLOW_SPIFFE_IDS: Setting = Setting::new(
    "--allow-spiffe-id",
    ENV_ALLOW_SPIFFE_IDS,
    "validation: comma-separated SPIFFE IDs accepted [default: any]",
);
/// `--allow-trust-domain`.
pub const ALLOW_TRUST_DOMAINS: Setting = Setting::new(
    "--allow-trust-domain",
    ENV_ALLOW_TRUST_DOMAINS,
    "validation: comma-separated trust domains accepted [default: any with a bundle]",
);
/// `--token-wait`.
pub const TOKEN_WAIT: Setting = Setting::new(
    "--token-wait",
    ENV_TOKEN_WAIT,
    "how long a check waits for a token not cached yet [default: 400ms]",
);
/// `--log-format`.
pub const LOG_FORMAT: Setting = Setting::log_format(ENV_LOG_FORMAT);

/// Every setting, in `--help`'s order.
pub const SETTINGS: &[&Setting] = &[
    &CONFIG,
    &MODE,
    &AUDIENCE,
    &SOCKET,
    &LISTEN,
    &SOCKET_MODE,
    &ADMIN_LISTEN,
    &EXISTING_AUTHORIZATION,
    &AUDIENCE_FOR,
    &ALLOW_SPIFFE_IDS,
    &ALLOW_TRUST_DOMAINS,
    &TOKEN_WAIT,
    &LOG_FORMAT,
];

/// `--help`'s text after the flags, from [`SETTINGS`].
pub fn after_help() -> String {
    format!(
        "Precedence: flag > environment > --config file > default.\n\n{}  \
         {ENV_ALLOW_NON_LOOPBACK_LISTEN}  --allow-non-loopback-listen: true to serve ext_authz beyond loopback",
        settings::env_help(SETTINGS)
    )
}

// === impl Config ===

impl Config {
    /// Builds the configuration from flags, environment and (if named) the HCL file; every bad
    /// setting is reported.
    pub fn load(cli: &Cli, env: &dyn Env) -> Result<Self, ConfigErrors> {
        let config_flag = cli.config.as_ref().map(|p| p.display().to_string());
        let mut r = Reader::new(env);
        let mut file_failed = false;
        if let Some(s) = r.raw(&CONFIG, config_flag.as_deref()) {
            // An unreadable file is reported with the rest; the settings are read without it.
            let file = std::fs::read_to_string(&s.value)
                .map_err(|e| ConfigError::new(&s.setting, &s.value, format!("cannot read: {e}")))
                .and_then(|text| {
                    crate::hcl::parse(&text)
                        .map_err(|e| ConfigError::new(&s.setting, &s.value, e.to_string()))
                });
            r = match file {
                Ok(file) => r.with_file(file, s.value),
                Err(e) => {
                    r.error(e);
                    file_failed = true;
                    r
                }
            };
        }

        let mode = r.get_or(&MODE, cli.mode.as_deref(), Mode::Injection, |v| match v {
            "jwt_injection" => Ok(Mode::Injection),
            "jwt_svid_validator" => Ok(Mode::Validator),
            _ => Err("unknown mode (expected jwt_injection or jwt_svid_validator)".to_owned()),
        });
        let parse_audience = |v: &str| {
            if v.trim().is_empty() {
                Err("audience must not be empty".to_owned())
            } else {
                Ok(v.to_owned())
            }
        };
        // An unreadable file is already reported; "required" would only repeat it when the
        // audience was in that file.
        let audience = if file_failed {
            r.get(&AUDIENCE, cli.audience.as_deref(), parse_audience)
        } else {
            r.required(&AUDIENCE, cli.audience.as_deref(), parse_audience)
        };
        let socket = r.workload_api(&SOCKET, cli.socket.as_deref());

        let listen_policy = r
            .check(ListenPolicy::load(
                cli.allow_non_loopback_listen,
                env,
                ENV_ALLOW_NON_LOOPBACK_LISTEN,
            ))
            .unwrap_or_default();
        let picked = match r.raw(&LISTEN, cli.listen.as_deref()) {
            Some(s) => config::listen(&s.setting, &s.value).map(|l| (s.setting, l)),
            None => listen_from_file(&r).map(|(setting, addr)| (setting, Listen::Tcp(addr))),
        }
        .and_then(|(setting, listen)| match listen {
            Listen::Tcp(addr) => listen_policy
                .check(&setting, addr)
                .map(|addr| (setting, Listen::Tcp(addr))),
            unix @ Listen::Unix(_) => Ok((setting, unix)),
        });
        let (listen_setting, listen) = r.check(picked).unzip();
        let socket_mode = r.get_or(
            &SOCKET_MODE,
            cli.socket_mode.as_deref(),
            DEFAULT_SOCKET_MODE,
            reason(config::socket_mode),
        );

        let admin_listen = match (r.raw(&ADMIN_LISTEN, cli.admin_listen.as_deref()), &listen) {
            (Some(s), _) => r
                .check(config::admin_listen(&s.setting, &s.value))
                .flatten(),
            (None, Some(listen)) => r
                .check(default_admin_listen(
                    listen,
                    listen_setting.as_deref().unwrap_or_default(),
                ))
                .flatten(),
            // The listen address was refused (recorded): no default to derive.
            (None, None) => None,
        };
        if let (Some(admin), Some(Listen::Tcp(ext_authz))) = (admin_listen, &listen)
            && admin == *ext_authz
        {
            r.error(ConfigError::new(
                "--admin-listen",
                admin.to_string(),
                "must differ from the ext_authz listen address",
            ));
        }

        let existing_authorization = r.get_or(
            &EXISTING_AUTHORIZATION,
            cli.existing_authorization.as_deref(),
            ExistingAuthorization::Deny,
            |v| match v.to_ascii_lowercase().as_str() {
                "deny" => Ok(ExistingAuthorization::Deny),
                "keep" => Ok(ExistingAuthorization::Keep),
                "replace" => Ok(ExistingAuthorization::Replace),
                _ => Err("expected deny, keep or replace".to_owned()),
            },
        );

        let mut audience_for = BTreeMap::new();
        r.list(&AUDIENCE_FOR, &cli.audience_for, |rule| {
            let (host, aud) = audience_rule(rule)?;
            match audience_for.insert(host, aud) {
                None => Ok(()),
                Some(_) => Err("host given twice".to_owned()),
            }
        });
        let allow_spiffe_ids: BTreeSet<SpiffeId> = r
            .list(&ALLOW_SPIFFE_IDS, &cli.allow_spiffe_id, allowed_spiffe_id)
            .into_iter()
            .collect();
        let allow_trust_domains: BTreeSet<TrustDomain> = r
            .list(&ALLOW_TRUST_DOMAINS, &cli.allow_trust_domain, |v| {
                TrustDomain::new(v).map_err(|e| format!("not a trust domain: {e}"))
            })
            .into_iter()
            .collect();
        match mode {
            Mode::Injection if !allow_spiffe_ids.is_empty() || !allow_trust_domains.is_empty() => {
                r.error(ConfigError::new(
                    "--allow-spiffe-id/--allow-trust-domain",
                    mode.as_str(),
                    "allow lists only apply in jwt_svid_validator mode",
                ));
            }
            Mode::Validator if !audience_for.is_empty() => {
                r.error(ConfigError::new(
                    "--audience-for",
                    mode.as_str(),
                    "per-host audiences only apply in jwt_injection mode",
                ));
            }
            _ => {}
        }

        let token_wait = r.get_or(
            &TOKEN_WAIT,
            cli.token_wait.as_deref(),
            DEFAULT_TOKEN_WAIT,
            reason(config::duration),
        );
        let log_format = r.get_or(
            &LOG_FORMAT,
            cli.log_format.as_deref(),
            LogFormat::Text,
            str::parse,
        );
        let unix_authority_adapter = r.check(config::unix_authority_adapter(env));

        r.finish()?;
        // Every `None` below was an error recorded above, and `finish` returned it.
        let (Some(audience), Some(socket), Some(listen), Some(unix_authority_adapter)) =
            (audience, socket, listen, unix_authority_adapter)
        else {
            return Err(ConfigErrors(Vec::new()));
        };
        Ok(Self {
            mode,
            audience,
            socket,
            listen,
            socket_mode,
            admin_listen,
            existing_authorization,
            audience_for,
            allow_spiffe_ids,
            allow_trust_domains,
            token_wait,
            log_format,
            unix_authority_adapter,
            listen_policy,
        })
    }
}

/// `HOST=AUDIENCE`: the host lower-cased (it is matched against `:authority`), both trimmed.
fn audience_rule(rule: &str) -> Result<(String, String), String> {
    let Some((host, aud)) = rule.split_once('=') else {
        return Err("expected HOST=AUDIENCE".to_owned());
    };
    let (host, aud) = (host.trim().to_ascii_lowercase(), aud.trim());
    if host.is_empty() || aud.is_empty() || host.contains(['/', ' ']) {
        return Err("expected HOST=AUDIENCE with a non-empty host and audience".to_owned());
    }
    Ok((host, aud.to_owned()))
}

/// A SPIFFE ID a validator may accept: a workload's, not a trust domain's.
fn allowed_spiffe_id(v: &str) -> Result<SpiffeId, String> {
    let id = SpiffeId::new(v).map_err(|e| format!("not a SPIFFE ID: {e}"))?;
    // A JWT-SVID's `sub` always has a path: the trust domain's own ID matches nothing.
    if id.path().is_empty() {
        return Err(
            "names a trust domain, not a workload: JWT-SVIDs always have a path, so no \
                    token could match (--allow-trust-domain accepts a whole trust domain)"
                .to_owned(),
        );
    }
    Ok(id)
}

/// The admin address when none is set: the port after a TCP ext_authz port, on loopback, so
/// that any number of helpers configured the upstream way (an HCL file with only `port`) can
/// share a network namespace (a pod that stamps outbound and checks inbound runs two).
fn default_admin_listen(listen: &Listen, setting: &str) -> Result<Option<SocketAddr>, ConfigError> {
    match listen {
        Listen::Unix(_) => Ok(Some(DEFAULT_ADMIN_LISTEN)),
        // Port 0 (the OS picks one, in tests) gets an OS-picked admin port too.
        Listen::Tcp(addr) if addr.port() == 0 => {
            Ok(Some(SocketAddr::new(DEFAULT_ADMIN_LISTEN.ip(), 0)))
        }
        Listen::Tcp(addr) => addr
            .port()
            .checked_add(1)
            .map(|port| Some(SocketAddr::new(DEFAULT_ADMIN_LISTEN.ip(), port)))
            .ok_or_else(|| {
                ConfigError::new(
                    setting,
                    addr.to_string(),
                    "the admin port defaults to the ext_authz port + 1, which does not exist \
                     for 65535: set --admin-listen",
                )
            }),
    }
}

/// `host` + `port` from the upstream file, each defaulting to 127.0.0.1 / 9010, with the
/// setting that chose the address (for the loopback check's error).
fn listen_from_file(r: &Reader<'_>) -> Result<(String, SocketAddr), ConfigError> {
    let ip = match r.file_value("host") {
        None => DEFAULT_LISTEN.ip(),
        // Upstream examples use "localhost"; we bind IP literals only (no resolver at start).
        Some(s) if s.value == "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(s) => s.value.parse().map_err(|_| {
            ConfigError::new(&s.setting, &s.value, "expected an IP address or localhost")
        })?,
    };
    let port = match r.file_value("port") {
        None => DEFAULT_LISTEN.port(),
        Some(s) => s
            .value
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                ConfigError::new(&s.setting, &s.value, "expected a port in 1..=65535")
            })?,
    };
    let setting = r
        .file_value("host")
        .map_or_else(|| "default --listen".to_owned(), |s| s.setting);
    Ok((setting, SocketAddr::new(ip, port)))
}

#[cfg(test)]
#[path = "config_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::Parser;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("jwt-auth-helper").chain(args.iter().copied())).unwrap()
    }

    fn load(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(&cli(args), &env(vars)).map_err(|mut e| {
            assert_eq!(e.0.len(), 1, "one bad setting, one error: {e}");
            e.0.remove(0)
        })
    }

    #[test]
    fn defaults_match_the_istio_deployment() {
        let c = load(&[], &[(ENV_AUDIENCE, "spiffe://example.org/backend")]).unwrap();
        assert_eq!(c.mode, Mode::Injection);
        assert_eq!(c.listen, Listen::Tcp("127.0.0.1:9010".parse().unwrap()));
        assert_eq!(c.admin_listen, Some("127.0.0.1:9011".parse().unwrap()));
        assert_eq!(c.socket_mode, 0o600);
        assert_eq!(
            c.socket.endpoint.to_string(),
            "unix:///run/secrets/workload-spiffe-uds/socket"
        );
        assert_eq!(c.existing_authorization, ExistingAuthorization::Deny);
        assert_eq!(c.token_wait, DEFAULT_TOKEN_WAIT);
    }

    #[test]
    fn the_admin_port_follows_the_ext_authz_port_unless_set() {
        let at = |args: &[&str]| load(args, &[(ENV_AUDIENCE, "a")]).unwrap();
        let second = at(&["--listen", "127.0.0.1:9020"]);
        assert_eq!(second.admin_listen, Some("127.0.0.1:9021".parse().unwrap()));
        let unix = at(&["--listen", "unix:///run/authz.sock"]);
        assert_eq!(unix.listen, Listen::Unix("/run/authz.sock".into()));
        assert_eq!(unix.admin_listen, Some(DEFAULT_ADMIN_LISTEN));
        let explicit = at(&[
            "--listen",
            "127.0.0.1:9020",
            "--admin-listen",
            "127.0.0.1:9999",
        ]);
        assert_eq!(
            explicit.admin_listen,
            Some("127.0.0.1:9999".parse().unwrap())
        );
        let from_env = load(
            &[],
            &[
                (ENV_AUDIENCE, "a"),
                (ENV_LISTEN, "unix:///x"),
                (ENV_SOCKET_MODE, "0660"),
            ],
        )
        .unwrap();
        assert_eq!(from_env.socket_mode, 0o660);
    }

    #[test]
    fn precedence_is_flag_env_file_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("helper.conf");
        std::fs::write(
            &file,
            "socket_path = \"unix:///file.sock\"\nhost = \"127.0.0.2\"\nport = 7000\njwt_mode = \"jwt_svid_validator\"\naudience = \"file-aud\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();

        let only_file = load(&["--config", f], &[(ENV_AUDIENCE, "")]).unwrap();
        assert_eq!(only_file.audience, "file-aud");
        assert_eq!(only_file.mode, Mode::Validator);
        assert_eq!(
            only_file.listen,
            Listen::Tcp("127.0.0.2:7000".parse().unwrap())
        );
        assert_eq!(
            only_file.admin_listen,
            Some("127.0.0.1:7001".parse().unwrap())
        );
        assert_eq!(only_file.socket.endpoint.to_string(), "unix:///file.sock");

        let env_over_file = load(
            &["--config", f],
            &[
                (ENV_AUDIENCE, "env-aud"),
                (ENV_MODE, "jwt_injection"),
                (ENV_SOCKET, "unix:///env.sock"),
                ("SPIFFE_ENDPOINT_SOCKET", "unix:///std.sock"),
            ],
        )
        .unwrap();
        assert_eq!(env_over_file.audience, "env-aud");
        assert_eq!(env_over_file.mode, Mode::Injection);
        assert_eq!(
            env_over_file.socket.endpoint.to_string(),
            "unix:///env.sock"
        );

        let flag_over_env = load(
            &[
                "--config",
                f,
                "--audience",
                "flag-aud",
                "--socket",
                "unix:///flag.sock",
                "--listen",
                "127.0.0.1:7100",
            ],
            &[(ENV_AUDIENCE, "env-aud"), (ENV_SOCKET, "unix:///env.sock")],
        )
        .unwrap();
        assert_eq!(flag_over_env.audience, "flag-aud");
        assert_eq!(
            flag_over_env.socket.endpoint.to_string(),
            "unix:///flag.sock"
        );
        assert_eq!(
            flag_over_env.listen,
            Listen::Tcp("127.0.0.1:7100".parse().unwrap())
        );

        // The file beats SPIFFE_ENDPOINT_SOCKET; SPIFFE_ENDPOINT_SOCKET beats the default.
        let std_after_file = load(
            &["--config", f],
            &[("SPIFFE_ENDPOINT_SOCKET", "unix:///std.sock")],
        )
        .unwrap();
        assert_eq!(
            std_after_file.socket.endpoint.to_string(),
            "unix:///file.sock"
        );
        let std_only = load(
            &["--audience", "a"],
            &[("SPIFFE_ENDPOINT_SOCKET", "unix:///std.sock")],
        )
        .unwrap();
        assert_eq!(std_only.socket.endpoint.to_string(), "unix:///std.sock");
    }

    #[test]
    fn bad_settings_refuse_to_start_naming_the_setting() {
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            (
                &[],
                &[(ENV_AUDIENCE, "a"), (ENV_MODE, "jwt_magic")],
                "SPIRE_ENVOY_JWT_HELPER_JWT_MODE: unknown mode",
            ),
            (
                &[],
                &[],
                "SPIRE_ENVOY_JWT_HELPER_AUDIENCE: required: give it with --audience or SPIRE_ENVOY_JWT_HELPER_AUDIENCE",
            ),
            (
                &["--audience", " "],
                &[],
                "--audience: audience must not be empty",
            ),
            (
                &["--audience", "a", "--listen", "localhost:9010"],
                &[],
                "--listen: expected unix:///path, tcp://IP:PORT or IP:PORT",
            ),
            (
                &["--audience", "a", "--listen", "unix://relative.sock"],
                &[],
                "--listen: expected unix:///path",
            ),
            (
                &[
                    "--audience",
                    "a",
                    "--listen",
                    "unix:///s",
                    "--socket-mode",
                    "0400",
                ],
                &[],
                "--socket-mode: expected octal permission bits",
            ),
            (
                &["--audience", "a", "--listen", "127.0.0.1:65535"],
                &[],
                "--listen: the admin port defaults to the ext_authz port + 1",
            ),
            (
                &[],
                &[(ENV_AUDIENCE, "a"), (ENV_SOCKET, "unix:relative.sock")],
                "SPIRE_ENVOY_JWT_HELPER_SOCKET_PATH: invalid Workload API address",
            ),
            (
                &["--audience", "a", "--existing-authorization", "merge"],
                &[],
                "--existing-authorization: expected deny, keep or replace",
            ),
            (
                &["--audience", "a", "--audience-for", "api.internal"],
                &[],
                "--audience-for: expected HOST=AUDIENCE",
            ),
            (
                &[
                    "--audience",
                    "a",
                    "--mode",
                    "jwt_svid_validator",
                    "--allow-spiffe-id",
                    "not-an-id",
                ],
                &[],
                "--allow-spiffe-id: not a SPIFFE ID",
            ),
            (
                &[
                    "--audience",
                    "a",
                    "--mode",
                    "jwt_svid_validator",
                    "--allow-spiffe-id",
                    "spiffe://example.org",
                ],
                &[],
                "no token could match",
            ),
            (
                &["--audience", "a", "--allow-trust-domain", "example.org"],
                &[],
                "allow lists only apply in jwt_svid_validator mode",
            ),
            (
                &["--audience", "a", "--token-wait", "soon"],
                &[],
                "--token-wait: expected a duration",
            ),
            (
                &["--audience", "a", "--config", "/nonexistent/helper.conf"],
                &[],
                "--config: cannot read",
            ),
            // The audience may have been in the file: no second, misleading error.
            (
                &["--config", "/nonexistent/helper.conf"],
                &[],
                "--config: cannot read",
            ),
        ];
        for (args, vars, want) in cases {
            let err = load(args, vars).unwrap_err().to_string();
            assert!(err.contains(want), "{args:?} {vars:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn every_bad_setting_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("helper.conf");
        std::fs::write(&file, "port = 70000\njwt_mode = \"jwt_magic\"\n").unwrap();
        let f = file.to_str().unwrap();
        let err = Config::load(
            &cli(&["--config", f, "--token-wait", "soon"]),
            &env(&[(ENV_EXISTING_AUTHORIZATION, "merge")]),
        )
        .unwrap_err();
        let settings: Vec<&str> = err.0.iter().map(|e| e.setting.as_str()).collect();
        assert_eq!(
            settings,
            [
                format!("jwt_mode in {f}").as_str(),
                ENV_AUDIENCE,
                &format!("port in {f}"),
                ENV_EXISTING_AUTHORIZATION,
                "--token-wait",
            ],
            "{err}"
        );
        assert!(
            err.to_string().starts_with("5 settings are invalid:"),
            "{err}"
        );
    }

    #[test]
    fn help_names_every_variable_the_helper_reads() {
        let help = after_help();
        for s in SETTINGS {
            assert!(
                help.contains(s.env) && help.contains(s.flag),
                "{}: {help}",
                s.env
            );
        }
        for key in ["jwt_mode", "audience", "socket_path"] {
            assert!(
                help.contains(&format!("`{key}` in the file")),
                "{key}: {help}"
            );
        }
        assert!(help.contains(ENV_ALLOW_NON_LOOPBACK_LISTEN), "{help}");
        // Every `ENV_*` constant of this file is a row or named beside them.
        let source = include_str!("config.rs");
        for line in source.lines().filter(|l| l.starts_with("pub const ENV_")) {
            let name = line.split('"').nth(1).unwrap();
            assert!(help.contains(name), "{name} missing from --help");
        }
    }

    #[test]
    fn a_non_loopback_listen_address_needs_the_opt_in() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("helper.conf");
        std::fs::write(&file, "host = \"0.0.0.0\"\nport = 7000\naudience = \"a\"\n").unwrap();
        let f = file.to_str().unwrap();
        let err = load(&["--config", f], &[]).unwrap_err();
        assert_eq!(err.setting, format!("host in {f}"));
        assert!(err.reason.contains(ENV_ALLOW_NON_LOOPBACK_LISTEN), "{err}");
        let err = load(&["--audience", "a", "--listen", "0.0.0.0:9010"], &[]).unwrap_err();
        assert_eq!(err.setting, "--listen");
        let err = load(&[], &[(ENV_AUDIENCE, "a"), (ENV_LISTEN, "10.0.0.7:9010")]).unwrap_err();
        assert_eq!(err.setting, ENV_LISTEN);

        let by_flag = load(&["--config", f, "--allow-non-loopback-listen"], &[]).unwrap();
        assert_eq!(by_flag.listen, Listen::Tcp("0.0.0.0:7000".parse().unwrap()));
        let by_env = load(
            &["--audience", "a", "--listen", "[::]:9010"],
            &[(ENV_ALLOW_NON_LOOPBACK_LISTEN, "1")],
        )
        .unwrap();
        assert_eq!(by_env.listen, Listen::Tcp("[::]:9010".parse().unwrap()));
        let err = load(
            &["--audience", "a"],
            &[(ENV_ALLOW_NON_LOOPBACK_LISTEN, "perhaps")],
        )
        .unwrap_err();
        assert_eq!(err.setting, ENV_ALLOW_NON_LOOPBACK_LISTEN);
    }

    #[test]
    fn audience_rules_and_allow_lists_parse_from_env_lists() {
        let c = load(
            &[],
            &[
                (ENV_AUDIENCE, "default-aud"),
                (
                    ENV_AUDIENCE_FOR,
                    "Billing.internal=billing, api.internal:8443=api",
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.audience_for["billing.internal"], "billing");
        assert_eq!(c.audience_for["api.internal:8443"], "api");

        let v = load(
            &["--mode", "jwt_svid_validator", "--audience", "me"],
            &[
                (
                    ENV_ALLOW_SPIFFE_IDS,
                    "spiffe://example.org/a,spiffe://example.org/b",
                ),
                (ENV_ALLOW_TRUST_DOMAINS, "example.org"),
            ],
        )
        .unwrap();
        assert_eq!(v.allow_spiffe_ids.len(), 2);
        assert_eq!(v.allow_trust_domains.len(), 1);
    }
}
