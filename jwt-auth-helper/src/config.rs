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
use sidecar_runtime::{ConfigError, ListenPolicy, LogFormat, config};
use workload_client::Env;
use workload_client::endpoint::ResolvedEndpoint;
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

/// Command-line flags. Every flag has an environment variable (see `--help`), read through
/// [`Env`] rather than clap so that the HCL file can sit between the two in precedence.
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "jwt-auth-helper",
    version,
    about = "Envoy ext_authz server that stamps (jwt_injection) or checks (jwt_svid_validator) JWT-SVIDs from the SPIFFE Workload API",
    after_help = "Precedence: flag > environment > --config file > default.\n\
Environment: SPIRE_ENVOY_JWT_HELPER_{AUDIENCE,JWT_MODE,SOCKET_PATH,CONFIG,LISTEN,SOCKET_MODE,ADMIN_LISTEN,\n\
EXISTING_AUTHORIZATION,AUDIENCE_FOR,ALLOW_SPIFFE_IDS,ALLOW_TRUST_DOMAINS,TOKEN_WAIT,LOG_FORMAT,\n\
ALLOW_NON_LOOPBACK_LISTEN};\n\
the socket falls back to SPIFFE_ENDPOINT_SOCKET, then unix:///run/secrets/workload-spiffe-uds/socket."
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

/// One value and the setting it came from (for error messages).
type Sourced = Option<(String, String)>;

struct Sources<'a> {
    env: &'a dyn Env,
    file: BTreeMap<String, String>,
    file_name: String,
}

impl Sources<'_> {
    /// flag > env > file key.
    fn pick(
        &self,
        flag: Option<&String>,
        flag_name: &str,
        env: &str,
        key: Option<&str>,
    ) -> Sourced {
        if let Some(v) = flag.filter(|v| !v.is_empty()) {
            return Some((flag_name.to_owned(), v.clone()));
        }
        if let Some(v) = self.env.var(env) {
            return Some((env.to_owned(), v));
        }
        let key = key?;
        self.file
            .get(key)
            .map(|v| (format!("{key} in {}", self.file_name), v.clone()))
    }

    /// A repeatable flag, else a comma-separated variable.
    fn list(&self, flag: &[String], flag_name: &str, env: &str) -> Vec<(String, String)> {
        if !flag.is_empty() {
            return flag
                .iter()
                .map(|v| (flag_name.to_owned(), v.clone()))
                .collect();
        }
        self.env
            .var(env)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| (env.to_owned(), s.to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

// === impl Config ===

impl Config {
    /// Builds the configuration from flags, environment and (if named) the HCL file.
    pub fn load(cli: &Cli, env: &dyn Env) -> Result<Self, ConfigError> {
        let (file, file_name) = match cli
            .config
            .as_ref()
            .map(|p| ("--config".to_owned(), p.display().to_string()))
            .or_else(|| env.var(ENV_CONFIG).map(|p| (ENV_CONFIG.to_owned(), p)))
        {
            Some((setting, path)) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError::new(&setting, &path, format!("cannot read: {e}")))?;
                let file = crate::hcl::parse(&text)
                    .map_err(|e| ConfigError::new(&setting, &path, e.to_string()))?;
                (file, path)
            }
            None => (BTreeMap::new(), String::new()),
        };
        let src = Sources {
            env,
            file,
            file_name,
        };

        let mode = match src.pick(cli.mode.as_ref(), "--mode", ENV_MODE, Some("jwt_mode")) {
            None => Mode::Injection,
            Some((setting, v)) => match v.as_str() {
                "jwt_injection" => Mode::Injection,
                "jwt_svid_validator" => Mode::Validator,
                _ => {
                    return Err(ConfigError::new(
                        setting,
                        v,
                        "unknown mode (expected jwt_injection or jwt_svid_validator)",
                    ));
                }
            },
        };

        let audience = match src.pick(
            cli.audience.as_ref(),
            "--audience",
            ENV_AUDIENCE,
            Some("audience"),
        ) {
            Some((setting, v)) if v.trim().is_empty() => {
                return Err(ConfigError::new(setting, v, "audience must not be empty"));
            }
            Some((_, v)) => v,
            None => {
                return Err(ConfigError::new(
                    ENV_AUDIENCE,
                    "",
                    "an audience is required (--audience, SPIRE_ENVOY_JWT_HELPER_AUDIENCE or `audience` in the config file)",
                ));
            }
        };

        let socket = config::workload_api(
            src.pick(
                cli.socket.as_ref(),
                "--socket",
                ENV_SOCKET,
                Some("socket_path"),
            ),
            env,
        )?;

        let listen_policy = ListenPolicy::load(
            cli.allow_non_loopback_listen,
            env,
            ENV_ALLOW_NON_LOOPBACK_LISTEN,
        )?;
        let (listen_setting, listen) =
            match src.pick(cli.listen.as_ref(), "--listen", ENV_LISTEN, None) {
                Some((setting, v)) => {
                    let listen = config::listen(&setting, &v)?;
                    (setting, listen)
                }
                None => {
                    let (setting, addr) = listen_from_file(&src)?;
                    (setting, Listen::Tcp(addr))
                }
            };
        let listen = match listen {
            Listen::Tcp(addr) => Listen::Tcp(listen_policy.check(&listen_setting, addr)?),
            unix @ Listen::Unix(_) => unix,
        };
        let socket_mode = match src.pick(
            cli.socket_mode.as_ref(),
            "--socket-mode",
            ENV_SOCKET_MODE,
            None,
        ) {
            Some((setting, v)) => config::socket_mode(&setting, &v)?,
            None => DEFAULT_SOCKET_MODE,
        };

        let admin_listen = match src.pick(
            cli.admin_listen.as_ref(),
            "--admin-listen",
            ENV_ADMIN_LISTEN,
            None,
        ) {
            Some((_, v)) if v.eq_ignore_ascii_case("off") => None,
            Some((setting, v)) => Some(config::socket_addr(&setting, &v)?),
            None => Some(default_admin_listen(&listen, &listen_setting)?),
        };
        if let (Some(admin), Listen::Tcp(ext_authz)) = (admin_listen, &listen)
            && admin == *ext_authz
        {
            return Err(ConfigError::new(
                "--admin-listen",
                admin.to_string(),
                "must differ from the ext_authz listen address",
            ));
        }

        let existing_authorization = match src.pick(
            cli.existing_authorization.as_ref(),
            "--existing-authorization",
            ENV_EXISTING_AUTHORIZATION,
            None,
        ) {
            None => ExistingAuthorization::Deny,
            Some((setting, v)) => match v.to_ascii_lowercase().as_str() {
                "deny" => ExistingAuthorization::Deny,
                "keep" => ExistingAuthorization::Keep,
                "replace" => ExistingAuthorization::Replace,
                _ => {
                    return Err(ConfigError::new(
                        setting,
                        v,
                        "expected deny, keep or replace",
                    ));
                }
            },
        };

        let mut audience_for = BTreeMap::new();
        for (setting, rule) in src.list(&cli.audience_for, "--audience-for", ENV_AUDIENCE_FOR) {
            let Some((host, aud)) = rule.split_once('=') else {
                return Err(ConfigError::new(setting, rule, "expected HOST=AUDIENCE"));
            };
            let (host, aud) = (host.trim().to_ascii_lowercase(), aud.trim());
            if host.is_empty() || aud.is_empty() || host.contains(['/', ' ']) {
                return Err(ConfigError::new(
                    setting,
                    rule,
                    "expected HOST=AUDIENCE with a non-empty host and audience",
                ));
            }
            if audience_for.insert(host, aud.to_owned()).is_some() {
                return Err(ConfigError::new(setting, rule, "host given twice"));
            }
        }

        let mut allow_spiffe_ids = BTreeSet::new();
        for (setting, v) in src.list(
            &cli.allow_spiffe_id,
            "--allow-spiffe-id",
            ENV_ALLOW_SPIFFE_IDS,
        ) {
            let id = SpiffeId::new(&v).map_err(|e| {
                ConfigError::new(setting.clone(), &v, format!("not a SPIFFE ID: {e}"))
            })?;
            // A JWT-SVID's `sub` always has a path: the trust domain's own ID matches nothing.
            if id.path().is_empty() {
                return Err(ConfigError::new(
                    setting,
                    &v,
                    "names a trust domain, not a workload: JWT-SVIDs always have a path, so no token could match (--allow-trust-domain accepts a whole trust domain)",
                ));
            }
            allow_spiffe_ids.insert(id);
        }
        let mut allow_trust_domains = BTreeSet::new();
        for (setting, v) in src.list(
            &cli.allow_trust_domain,
            "--allow-trust-domain",
            ENV_ALLOW_TRUST_DOMAINS,
        ) {
            let td = TrustDomain::new(&v)
                .map_err(|e| ConfigError::new(setting, &v, format!("not a trust domain: {e}")))?;
            allow_trust_domains.insert(td);
        }

        match mode {
            Mode::Injection if !allow_spiffe_ids.is_empty() || !allow_trust_domains.is_empty() => {
                return Err(ConfigError::new(
                    "--allow-spiffe-id/--allow-trust-domain",
                    mode.as_str(),
                    "allow lists only apply in jwt_svid_validator mode",
                ));
            }
            Mode::Validator if !audience_for.is_empty() => {
                return Err(ConfigError::new(
                    "--audience-for",
                    mode.as_str(),
                    "per-host audiences only apply in jwt_injection mode",
                ));
            }
            _ => {}
        }

        let token_wait = match src.pick(
            cli.token_wait.as_ref(),
            "--token-wait",
            ENV_TOKEN_WAIT,
            None,
        ) {
            Some((setting, v)) => config::duration(&setting, &v)?,
            None => DEFAULT_TOKEN_WAIT,
        };
        let log_format = config::log_format(src.pick(
            cli.log_format.as_ref(),
            "--log-format",
            ENV_LOG_FORMAT,
            None,
        ))?;

        let unix_authority_adapter = config::unix_authority_adapter(env)?;

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

/// The admin address when none is set: the port after a TCP ext_authz port, on loopback, so
/// that any number of helpers configured the upstream way (an HCL file with only `port`) can
/// share a network namespace (a pod that stamps outbound and checks inbound runs two).
fn default_admin_listen(listen: &Listen, setting: &str) -> Result<SocketAddr, ConfigError> {
    match listen {
        Listen::Unix(_) => Ok(DEFAULT_ADMIN_LISTEN),
        // Port 0 (the OS picks one, in tests) gets an OS-picked admin port too.
        Listen::Tcp(addr) if addr.port() == 0 => Ok(SocketAddr::new(DEFAULT_ADMIN_LISTEN.ip(), 0)),
        Listen::Tcp(addr) => addr
            .port()
            .checked_add(1)
            .map(|port| SocketAddr::new(DEFAULT_ADMIN_LISTEN.ip(), port))
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
fn listen_from_file(src: &Sources<'_>) -> Result<(String, SocketAddr), ConfigError> {
    let setting = |key: &str| format!("{key} in {}", src.file_name);
    let ip = match src.file.get("host").map(String::as_str) {
        None => DEFAULT_LISTEN.ip(),
        // Upstream examples use "localhost"; we bind IP literals only (no resolver at start).
        Some("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(h) => h.parse().map_err(|_| {
            ConfigError::new(setting("host"), h, "expected an IP address or localhost")
        })?,
    };
    let port =
        match src.file.get("port") {
            None => DEFAULT_LISTEN.port(),
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                ConfigError::new(setting("port"), p, "expected a port in 1..=65535")
            })?,
        };
    let setting = if src.file.contains_key("host") {
        setting("host")
    } else {
        "default --listen".to_owned()
    };
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
        Config::load(&cli(args), &env(vars))
    }

    #[test]
    fn defaults_match_the_seed() {
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
                "SPIRE_ENVOY_JWT_HELPER_AUDIENCE: an audience is required",
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
        ];
        for (args, vars, want) in cases {
            let err = load(args, vars).unwrap_err().to_string();
            assert!(err.contains(want), "{args:?} {vars:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
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
