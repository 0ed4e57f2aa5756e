//! Configuration: flags > `SDS_BRIDGE_*` environment > defaults, parsed once into typed values.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};

use sidecar_runtime::config;
use sidecar_runtime::settings::{self, ConfigErrors, Reader, Setting, reason};
use sidecar_runtime::{ConfigError, ListenPolicy, LogFormat};
use workload_client::Env;
use workload_client::ResolvedEndpoint;

use workload_client::spiffe::TrustDomain;

use crate::catalog::{RootCaBundles, ValidationMode};
use crate::ecds::EcdsPolicy;
use crate::limits::DEFAULT_MAX_JWT_KEYS_TOTAL;

/// Env: where to serve SDS.
pub const ENV_LISTEN: &str = "SDS_BRIDGE_LISTEN";
/// Env: permission bits of the SDS socket file.
pub const ENV_SOCKET_MODE: &str = "SDS_BRIDGE_SOCKET_MODE";
/// Env: Workload API address.
pub const ENV_SOCKET: &str = "SDS_BRIDGE_SOCKET_PATH";
/// Env: admin listen address or `off`.
pub const ENV_ADMIN_LISTEN: &str = "SDS_BRIDGE_ADMIN_LISTEN";
/// Env: `spiffe` or `trusted_ca`.
pub const ENV_VALIDATION_CONTEXT: &str = "SDS_BRIDGE_VALIDATION_CONTEXT";
/// Env: `own` or `all`.
pub const ENV_ROOTCA_BUNDLES: &str = "SDS_BRIDGE_ROOTCA_BUNDLES";
/// Env: comma-separated audiences Envoy may have JWT-SVIDs for (default: any).
pub const ENV_ALLOW_JWT_AUDIENCES: &str = "SDS_BRIDGE_ALLOW_JWT_AUDIENCES";
/// Env: `text` or `json`.
pub const ENV_LOG_FORMAT: &str = "SDS_BRIDGE_LOG_FORMAT";
/// Env: most distinct JWT-SVID keys (audience sets) the bridge holds.
pub const ENV_MAX_JWT_KEYS: &str = "SDS_BRIDGE_MAX_JWT_KEYS";
/// Env: JWKS endpoint listen address or `off`.
pub const ENV_JWKS_LISTEN: &str = "SDS_BRIDGE_JWKS_LISTEN";
/// Env: comma-separated audiences of the jwt_authn config served over ECDS (sets ECDS on).
pub const ENV_ECDS_AUDIENCES: &str = "SDS_BRIDGE_ECDS_AUDIENCES";
/// Env: comma-separated trust domains whose JWT-SVIDs the ECDS jwt_authn config accepts.
pub const ENV_ECDS_TRUST_DOMAINS: &str = "SDS_BRIDGE_ECDS_TRUST_DOMAINS";
/// Env: `true` to allow `--listen tcp://` on a non-loopback address.
pub const ENV_ALLOW_NON_LOOPBACK_LISTEN: &str = "SDS_BRIDGE_ALLOW_NON_LOOPBACK_LISTEN";

/// Istio's `WORKLOAD_IDENTITY_SOCKET_FILE` directory and default file name.
pub const DEFAULT_LISTEN: &str = "unix:///var/run/secrets/workload-spiffe-uds/socket";
/// Admin (probes, metrics); 9010/9011 are jwt-auth-helper's.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9012);
/// Highest `--max-jwt-keys`: each key is a token refreshed at the agent at every half-life.
pub const MAX_JWT_KEYS_SETTING: usize = 65_536;
/// Owner only: the socket hands out private keys (and, later, bearer tokens). Run the bridge
/// as Envoy's user (1337 in Istio), or widen to 0660 with a shared group.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// Command-line flags; each has an environment variable (see `--help`).
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "sds-bridge",
    version,
    about = "Envoy SDS v3 server fed by the SPIFFE Workload API: serves X.509-SVIDs and trust \
             bundles under the SPIRE agent's resource names and pushes every rotation"
)]
pub struct Cli {
    /// Where to serve SDS: unix:///path or tcp://127.0.0.1:PORT
    /// [default: unix:///var/run/secrets/workload-spiffe-uds/socket].
    #[arg(long)]
    pub listen: Option<String>,
    /// Permission bits of the SDS socket, octal [default: 0600].
    #[arg(long)]
    pub socket_mode: Option<String>,
    /// Workload API address: unix:///path or tcp://IP:PORT.
    #[arg(long)]
    pub socket: Option<String>,
    /// Admin HTTP address for /healthz, /readyz, /metrics, or "off" [default: 127.0.0.1:9012].
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Validation contexts as the SPIFFE cert validator (spiffe) or plain trusted_ca PEM
    /// (trusted_ca); one Envoy can ask for trusted_ca with node metadata
    /// disable_spiffe_cert_validation: true [default: spiffe].
    #[arg(long)]
    pub validation_context: Option<String>,
    /// What ROOTCA holds: own (this trust domain's bundle) or all (own and federated)
    /// [default: own].
    #[arg(long)]
    pub rootca_bundles: Option<String>,
    /// Only serve JWT-SVIDs (jwt-svid:<audience> names) for this audience; repeatable
    /// [default: any audience: the socket's permissions are the boundary].
    #[arg(long)]
    pub allow_jwt_audience: Vec<String>,
    /// Most distinct JWT-SVID audience sets served at once, all clients together (each is a
    /// token kept fresh at the agent); new ones are refused beyond it [default: 256].
    #[arg(long)]
    pub max_jwt_keys: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    pub log_format: Option<String>,
    /// Allow --listen tcp:// on a non-loopback address: whoever reaches it gets this
    /// workload's private keys and tokens, unauthenticated [default: loopback only].
    #[arg(long)]
    pub allow_non_loopback_listen: bool,
    /// Serve each trust domain's JWT-SVID keys as a JWKS for Envoy's jwt_authn at
    /// http://ADDR/jwks/<trust domain> (loopback only, like --listen), or "off"
    /// [default: off]. `sds-bridge jwt-authn-config` prints the matching Envoy filters.
    /// When set, /readyz also waits for the first JWT bundle set (until then every token
    /// would be refused).
    #[arg(long)]
    pub jwks_listen: Option<String>,
    /// Serve Envoy's jwt_authn filter over ECDS (resource spiffe-jwt-authn, keys inline,
    /// pushed on every JWT bundle change) accepting tokens for this audience; repeatable.
    /// Setting it turns ECDS on; /readyz then waits until an Envoy ACKed the config
    /// [default: ECDS off].
    #[arg(long)]
    pub ecds_audience: Vec<String>,
    /// A trust domain whose JWT-SVIDs the ECDS config accepts (one provider each);
    /// repeatable; required with --ecds-audience.
    #[arg(long)]
    pub ecds_trust_domain: Vec<String>,
    /// Print configuration instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands: print configuration, do not serve.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print Envoy's jwt_authn (one provider per trust domain, JWKS from --jwks-listen),
    /// the x-spiffe-id header scrubbing and optional RBAC filter, the JWKS cluster, and the
    /// connection manager's local_reply_config (wrong audience → 401); with --ecds, the
    /// filter takes its config from the bridge over ECDS instead.
    JwtAuthnConfig(crate::envoy_config::JwtAuthnArgs),
}

/// Where SDS is served: the listen address every gRPC server of ours parses alike.
pub use sidecar_runtime::config::Listen;

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// SDS listener.
    pub listen: Listen,
    /// Socket file permission bits.
    pub socket_mode: u32,
    /// Workload API endpoint and where it came from.
    pub socket: ResolvedEndpoint,
    /// Admin listener (`None`: off).
    pub admin_listen: Option<SocketAddr>,
    /// Validation context form for streams whose node does not choose.
    pub validation_mode: ValidationMode,
    /// What ROOTCA carries.
    pub rootca_bundles: RootCaBundles,
    /// Audiences JWT-SVIDs may be served for (`None`: any).
    pub allow_jwt_audiences: Option<BTreeSet<String>>,
    /// Most distinct JWT-SVID keys held at once.
    pub max_jwt_keys: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// Whether Unix-socket connections go through the `:authority` adapter
    /// (`SIDECAR_UNIX_AUTHORITY_ADAPTER`, default on).
    pub unix_authority_adapter: bool,
    /// Whether `listen` may be a non-loopback TCP address.
    pub listen_policy: ListenPolicy,
    /// JWKS endpoint for Envoy's jwt_authn (`None`: off).
    pub jwks_listen: Option<SocketAddr>,
    /// The jwt_authn policy served over ECDS (`None`: ECDS off).
    pub ecds: Option<EcdsPolicy>,
}

// === Settings ===

/// `--listen`.
pub const LISTEN: Setting = Setting::new(
    "--listen",
    ENV_LISTEN,
    "where to serve SDS: unix:///path or tcp://127.0.0.1:PORT [default: unix:///var/run/secrets/workload-spiffe-uds/socket]",
);
/// `--socket-mode`.
pub const SOCKET_MODE: Setting = Setting::new(
    "--socket-mode",
    ENV_SOCKET_MODE,
    "permission bits of the SDS socket, octal [default: 0600]",
);
/// `--socket`.
pub const SOCKET: Setting = Setting::workload_api(ENV_SOCKET);
/// `--admin-listen`.
pub const ADMIN_LISTEN: Setting = Setting::new(
    "--admin-listen",
    ENV_ADMIN_LISTEN,
    "admin HTTP address, or off [default: 127.0.0.1:9012]",
);
/// `--validation-context`.
pub const VALIDATION_CONTEXT: Setting = Setting::new(
    "--validation-context",
    ENV_VALIDATION_CONTEXT,
    "spiffe or trusted_ca [default: spiffe]",
);
/// `--rootca-bundles`.
pub const ROOTCA_BUNDLES: Setting = Setting::new(
    "--rootca-bundles",
    ENV_ROOTCA_BUNDLES,
    "what ROOTCA holds: own or all [default: own]",
);
/// `--allow-jwt-audience`.
pub const ALLOW_JWT_AUDIENCES: Setting = Setting::new(
    "--allow-jwt-audience",
    ENV_ALLOW_JWT_AUDIENCES,
    "comma-separated audiences JWT-SVIDs are served for [default: any]",
);
/// `--max-jwt-keys`.
pub const MAX_JWT_KEYS: Setting = Setting::new(
    "--max-jwt-keys",
    ENV_MAX_JWT_KEYS,
    "most JWT-SVID audience sets held at once [default: 256]",
);
/// `--jwks-listen`.
pub const JWKS_LISTEN: Setting = Setting::new(
    "--jwks-listen",
    ENV_JWKS_LISTEN,
    "JWKS endpoint for Envoy's jwt_authn, or off [default: off]",
);
/// `--ecds-audience`.
pub const ECDS_AUDIENCES: Setting = Setting::new(
    "--ecds-audience",
    ENV_ECDS_AUDIENCES,
    "comma-separated audiences of the jwt_authn config served over ECDS; sets ECDS on [default: off]",
);
/// `--ecds-trust-domain`.
pub const ECDS_TRUST_DOMAINS: Setting = Setting::new(
    "--ecds-trust-domain",
    ENV_ECDS_TRUST_DOMAINS,
    "comma-separated trust domains the ECDS jwt_authn config accepts [required with ECDS]",
);
/// `--log-format`.
pub const LOG_FORMAT: Setting = Setting::log_format(ENV_LOG_FORMAT);

/// Every setting, in `--help`'s order.
pub const SETTINGS: &[&Setting] = &[
    &LISTEN,
    &SOCKET_MODE,
    &SOCKET,
    &ADMIN_LISTEN,
    &VALIDATION_CONTEXT,
    &ROOTCA_BUNDLES,
    &ALLOW_JWT_AUDIENCES,
    &MAX_JWT_KEYS,
    &JWKS_LISTEN,
    &ECDS_AUDIENCES,
    &ECDS_TRUST_DOMAINS,
    &LOG_FORMAT,
];

/// `--help`'s text after the flags: resource names and the environment, from [`SETTINGS`].
pub fn after_help() -> String {
    format!(
        "Resource names: default, ROOTCA, ALL, spiffe://<trust domain>, <SPIFFE ID>, \
         jwt-svid:<audience>; over ECDS (with --ecds-audience): spiffe-jwt-authn.\n\n{}  {ENV_ALLOW_NON_LOOPBACK_LISTEN}  --allow-non-loopback-listen: true to serve tcp:// beyond loopback\n\n\
         In Istio the Workload API's default path is also the SDS socket path: mount the Workload\n\
         API elsewhere for the bridge and point --socket at it.",
        settings::env_help(SETTINGS)
    )
}

// === impl Config ===

impl Config {
    /// Builds the configuration from flags and environment; every bad setting is reported.
    pub fn load(cli: &Cli, env: &dyn Env) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(env);
        let listen_policy = r
            .check(ListenPolicy::load(
                cli.allow_non_loopback_listen,
                env,
                ENV_ALLOW_NON_LOOPBACK_LISTEN,
            ))
            .unwrap_or_default();
        let listen = match r.raw(&LISTEN, cli.listen.as_deref()) {
            Some(s) => r.check(config::listen(&s.setting, &s.value).and_then(|l| match l {
                Listen::Tcp(addr) => listen_policy.check(&s.setting, addr).map(Listen::Tcp),
                unix @ Listen::Unix(_) => Ok(unix),
            })),
            None => r.check(config::listen("default --listen", DEFAULT_LISTEN)),
        };
        let socket_mode = r.get_or(
            &SOCKET_MODE,
            cli.socket_mode.as_deref(),
            DEFAULT_SOCKET_MODE,
            reason(config::socket_mode),
        );
        let socket = r.workload_api(&SOCKET, cli.socket.as_deref());
        if let (Some(Listen::Unix(ours)), Some(socket)) = (&listen, &socket)
            && let Some(theirs) = socket.endpoint.unix_path()
            && same_path(ours, theirs)
        {
            r.error(ConfigError::new(
                socket.source.to_string(),
                socket.endpoint.to_string(),
                "the Workload API socket is the SDS listen socket; mount the Workload API \
                 elsewhere (e.g. /run/secrets/spiffe-workload-api/socket) and set --socket",
            ));
        }

        let admin_listen = r.get_or(
            &ADMIN_LISTEN,
            cli.admin_listen.as_deref(),
            Some(DEFAULT_ADMIN_LISTEN),
            reason(config::admin_listen),
        );
        if let (Some(Listen::Tcp(sds)), Some(admin)) = (&listen, admin_listen)
            && *sds == admin
        {
            r.error(ConfigError::new(
                "--admin-listen",
                admin.to_string(),
                "must differ from the SDS listen address",
            ));
        }

        let jwks_listen = match r.raw(&JWKS_LISTEN, cli.jwks_listen.as_deref()) {
            None => None,
            Some(s) => r
                .check(
                    config::admin_listen(&s.setting, &s.value).and_then(|a| match a {
                        None => Ok(None),
                        // The JWKS is public, but it decides which tokens Envoy accepts: serve it
                        // only where this pod's Envoy, and nothing else, reaches it.
                        Some(addr) => listen_policy.check(&s.setting, addr).map(Some),
                    }),
                )
                .flatten(),
        };
        if let Some(jwks) = jwks_listen
            && (admin_listen == Some(jwks)
                || matches!(&listen, Some(Listen::Tcp(sds)) if *sds == jwks))
        {
            r.error(ConfigError::new(
                "--jwks-listen",
                jwks.to_string(),
                "must differ from the SDS and admin listen addresses",
            ));
        }

        let validation_mode = r.get_or(
            &VALIDATION_CONTEXT,
            cli.validation_context.as_deref(),
            ValidationMode::Spiffe,
            |v| match v.to_ascii_lowercase().replace('-', "_").as_str() {
                "spiffe" => Ok(ValidationMode::Spiffe),
                "trusted_ca" => Ok(ValidationMode::TrustedCa),
                _ => Err("expected spiffe or trusted_ca".to_owned()),
            },
        );
        let rootca_bundles = r.get_or(
            &ROOTCA_BUNDLES,
            cli.rootca_bundles.as_deref(),
            RootCaBundles::Own,
            |v| match v.to_ascii_lowercase().as_str() {
                "own" => Ok(RootCaBundles::Own),
                "all" => Ok(RootCaBundles::All),
                _ => Err("expected own or all".to_owned()),
            },
        );

        // Unset: any audience. Set to nothing but commas: refused below.
        let allow_jwt_audiences = (!cli.allow_jwt_audience.is_empty()
            || r.raw(&ALLOW_JWT_AUDIENCES, None).is_some())
        .then(|| {
            r.list(&ALLOW_JWT_AUDIENCES, &cli.allow_jwt_audience, |a| {
                Ok::<_, String>(a.to_owned())
            })
            .into_iter()
            .collect::<BTreeSet<_>>()
        });
        if allow_jwt_audiences.as_ref().is_some_and(BTreeSet::is_empty) {
            r.error(ConfigError::new(
                ENV_ALLOW_JWT_AUDIENCES,
                "",
                "the audience allow-list is empty; unset it to allow any audience",
            ));
        }

        let max_jwt_keys = r.get_or(
            &MAX_JWT_KEYS,
            cli.max_jwt_keys.as_deref(),
            DEFAULT_MAX_JWT_KEYS_TOTAL,
            |v| match v.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_JWT_KEYS_SETTING).contains(&n) => Ok(n),
                _ => Err(format!(
                    "expected a number of JWT-SVID keys from 1 to {MAX_JWT_KEYS_SETTING} \
                     (to serve no tokens, use --allow-jwt-audience)"
                )),
            },
        );
        let ecds = load_ecds(&mut r, cli);
        let log_format = r.get_or(
            &LOG_FORMAT,
            cli.log_format.as_deref(),
            LogFormat::Text,
            str::parse,
        );
        let unix_authority_adapter = r.check(config::unix_authority_adapter(env));

        r.finish()?;
        // Every `None` below was an error recorded above, and `finish` returned it.
        let (Some(listen), Some(socket), Some(unix_authority_adapter)) =
            (listen, socket, unix_authority_adapter)
        else {
            return Err(ConfigErrors(Vec::new()));
        };
        Ok(Self {
            listen,
            socket_mode,
            socket,
            admin_listen,
            validation_mode,
            rootca_bundles,
            allow_jwt_audiences,
            max_jwt_keys,
            log_format,
            unix_authority_adapter,
            listen_policy,
            jwks_listen,
            ecds,
        })
    }
}

/// ECDS is on when audiences are set; then trust domains are required too (there is no
/// sensible default for either: they are this Envoy's policy, not the bridge's).
fn load_ecds(r: &mut Reader<'_>, cli: &Cli) -> Option<EcdsPolicy> {
    let audiences = r.list(&ECDS_AUDIENCES, &cli.ecds_audience, |a| {
        Ok::<_, String>(a.to_owned())
    });
    let mut trust_domains = Vec::new();
    for td in r.list(&ECDS_TRUST_DOMAINS, &cli.ecds_trust_domain, |v| {
        v.parse::<TrustDomain>()
            .map_err(|e| format!("not a trust domain: {e}"))
    }) {
        if !trust_domains.contains(&td) {
            trust_domains.push(td);
        }
    }
    match (audiences.is_empty(), trust_domains.is_empty()) {
        (true, true) => None,
        (false, false) => Some(EcdsPolicy {
            trust_domains,
            audiences,
        }),
        (true, false) => {
            r.error(ConfigError::new(
                if cli.ecds_trust_domain.is_empty() {
                    ENV_ECDS_TRUST_DOMAINS
                } else {
                    "--ecds-trust-domain"
                },
                trust_domains
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                "needs --ecds-audience (ECDS is on only with an audience to accept)",
            ));
            None
        }
        (false, true) => {
            r.error(ConfigError::new(
                if cli.ecds_audience.is_empty() {
                    ENV_ECDS_AUDIENCES
                } else {
                    "--ecds-audience"
                },
                audiences.join(","),
                "needs --ecds-trust-domain: which trust domains' JWT-SVIDs to accept",
            ));
            None
        }
    }
}

/// `/var/run` is a symlink to `/run` on every current distribution (and in Istio's images):
/// compare the lexically normalised paths with that prefix folded.
fn same_path(a: &Path, b: &Path) -> bool {
    fn norm(p: &Path) -> PathBuf {
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        match out.strip_prefix("/var/run") {
            Ok(rest) => Path::new("/run").join(rest),
            Err(_) => out,
        }
    }
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        load_all(args, env).map_err(|mut e| e.0.remove(0))
    }

    fn load_all(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        use clap::Parser as _;
        let cli =
            Cli::try_parse_from(std::iter::once("sds-bridge").chain(args.iter().copied())).unwrap();
        let env: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load(&cli, &env)
    }

    #[test]
    fn defaults_refuse_to_serve_sds_on_the_workload_api_socket() {
        let err = load(&[], &[]).unwrap_err();
        assert_eq!(err.setting, "default endpoint");
        assert!(
            err.reason.contains("mount the Workload API elsewhere"),
            "{err}"
        );
    }

    #[test]
    fn istio_shape_parses_with_defaults() {
        let c = load(
            &[],
            &[("SPIFFE_ENDPOINT_SOCKET", "unix:///run/secrets/spire/socket")],
        )
        .unwrap();
        assert_eq!(
            c.listen,
            Listen::Unix("/var/run/secrets/workload-spiffe-uds/socket".into())
        );
        assert_eq!(c.socket_mode, 0o600);
        assert_eq!(c.admin_listen, Some(DEFAULT_ADMIN_LISTEN));
        assert_eq!(c.validation_mode, ValidationMode::Spiffe);
        assert_eq!(c.rootca_bundles, RootCaBundles::Own);
    }

    #[test]
    fn flags_win_and_values_are_typed() {
        let c = load(
            &[
                "--listen",
                "tcp://127.0.0.1:8300",
                "--socket",
                "unix:///tmp/agent.sock",
                "--socket-mode",
                "0660",
                "--validation-context",
                "trusted-ca",
                "--rootca-bundles",
                "all",
                "--admin-listen",
                "off",
            ],
            &[(ENV_LISTEN, "unix:///elsewhere")],
        )
        .unwrap();
        assert_eq!(c.listen, Listen::Tcp("127.0.0.1:8300".parse().unwrap()));
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(c.validation_mode, ValidationMode::TrustedCa);
        assert_eq!(c.rootca_bundles, RootCaBundles::All);
        assert_eq!(c.admin_listen, None);
        assert_eq!(c.allow_jwt_audiences, None);
        assert_eq!(c.max_jwt_keys, DEFAULT_MAX_JWT_KEYS_TOTAL);
        let c = load(
            &["--socket", "unix:///tmp/a.sock"],
            &[(ENV_ALLOW_JWT_AUDIENCES, "backend, sts.amazonaws.com")],
        )
        .unwrap();
        assert_eq!(
            c.allow_jwt_audiences
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            ["backend", "sts.amazonaws.com"]
        );
    }

    #[test]
    fn bad_values_name_their_setting() {
        let agent = ("SPIFFE_ENDPOINT_SOCKET", "unix:///run/agent.sock");
        for (env, setting) in [
            ((ENV_LISTEN, "http://x"), ENV_LISTEN),
            ((ENV_SOCKET_MODE, "0777x"), ENV_SOCKET_MODE),
            ((ENV_SOCKET_MODE, "0400"), ENV_SOCKET_MODE),
            ((ENV_SOCKET, "unix://relative"), ENV_SOCKET),
            ((ENV_ADMIN_LISTEN, "localhost:1"), ENV_ADMIN_LISTEN),
            ((ENV_VALIDATION_CONTEXT, "x509"), ENV_VALIDATION_CONTEXT),
            ((ENV_ROOTCA_BUNDLES, "some"), ENV_ROOTCA_BUNDLES),
            ((ENV_LOG_FORMAT, "xml"), ENV_LOG_FORMAT),
            ((ENV_ALLOW_JWT_AUDIENCES, " , "), ENV_ALLOW_JWT_AUDIENCES),
            (
                (ENV_ALLOW_NON_LOOPBACK_LISTEN, "maybe"),
                ENV_ALLOW_NON_LOOPBACK_LISTEN,
            ),
            ((ENV_MAX_JWT_KEYS, "0"), ENV_MAX_JWT_KEYS),
            ((ENV_MAX_JWT_KEYS, "lots"), ENV_MAX_JWT_KEYS),
        ] {
            let err = load(&[], &[agent, env]).unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
        }
    }

    #[test]
    fn every_bad_setting_is_reported_together() {
        let agent = ("SPIFFE_ENDPOINT_SOCKET", "unix:///run/agent.sock");
        let errors = load_all(
            &["--rootca-bundles", "some"],
            &[
                agent,
                (ENV_SOCKET_MODE, "9"),
                (ENV_LOG_FORMAT, "xml"),
                (ENV_JWKS_LISTEN, "127.0.0.1:9012"),
            ],
        )
        .unwrap_err();
        let settings: Vec<&str> = errors.0.iter().map(|e| e.setting.as_str()).collect();
        assert_eq!(
            settings,
            [
                ENV_SOCKET_MODE,
                "--jwks-listen",
                "--rootca-bundles",
                ENV_LOG_FORMAT
            ]
        );
    }

    #[test]
    fn help_lists_every_variable_the_code_reads() {
        let help = after_help();
        for s in SETTINGS {
            assert!(help.contains(s.env), "{}", s.env);
        }
        assert!(help.contains(ENV_ALLOW_NON_LOOPBACK_LISTEN));
    }

    #[test]
    fn max_jwt_keys_from_flag_or_env() {
        let agent = ("SPIFFE_ENDPOINT_SOCKET", "unix:///run/agent.sock");
        let c = load(&["--max-jwt-keys", "64"], &[agent, (ENV_MAX_JWT_KEYS, "8")]).unwrap();
        assert_eq!(c.max_jwt_keys, 64);
        let c = load(&[], &[agent, (ENV_MAX_JWT_KEYS, "8")]).unwrap();
        assert_eq!(c.max_jwt_keys, 8);
    }

    #[test]
    fn ecds_is_off_by_default_and_needs_audiences_and_trust_domains() {
        let agent = ("SPIFFE_ENDPOINT_SOCKET", "unix:///run/agent.sock");
        assert!(load(&[], &[agent]).unwrap().ecds.is_none());
        let on = load(
            &["--ecds-audience", "a", "--ecds-audience", "b"],
            &[
                agent,
                (
                    ENV_ECDS_TRUST_DOMAINS,
                    "example.org, partner.org,example.org",
                ),
            ],
        )
        .unwrap()
        .ecds
        .unwrap();
        assert_eq!(on.audiences, ["a", "b"]);
        assert_eq!(on.trust_domains.len(), 2);
        let err = load(&["--ecds-audience", "a"], &[agent]).unwrap_err();
        assert_eq!(err.setting, "--ecds-audience");
        let err = load(&["--ecds-trust-domain", "example.org"], &[agent]).unwrap_err();
        assert_eq!(err.setting, "--ecds-trust-domain");
        let err = load(
            &["--ecds-audience", "a", "--ecds-trust-domain", "Not A TD"],
            &[agent],
        )
        .unwrap_err();
        assert_eq!(err.setting, "--ecds-trust-domain");
    }

    #[test]
    fn jwks_listen_is_off_by_default_loopback_only_and_apart_from_admin() {
        let agent = ("SPIFFE_ENDPOINT_SOCKET", "unix:///run/agent.sock");
        assert_eq!(load(&[], &[agent]).unwrap().jwks_listen, None);
        let on = load(&[], &[agent, (ENV_JWKS_LISTEN, "127.0.0.1:9013")]).unwrap();
        assert_eq!(on.jwks_listen, Some("127.0.0.1:9013".parse().unwrap()));
        assert_eq!(
            load(&["--jwks-listen", "off"], &[agent])
                .unwrap()
                .jwks_listen,
            None
        );
        let err = load(&["--jwks-listen", "0.0.0.0:9013"], &[agent]).unwrap_err();
        assert_eq!(err.setting, "--jwks-listen");
        assert!(err.reason.contains("loopback"), "{err}");
        let err = load(&["--jwks-listen", "127.0.0.1:9012"], &[agent]).unwrap_err();
        assert_eq!(
            err.setting, "--jwks-listen",
            "the admin default port: {err}"
        );
        let err = load(&["--jwks-listen", "localhost:9013"], &[agent]).unwrap_err();
        assert_eq!(err.setting, "--jwks-listen");
    }

    #[test]
    fn a_non_loopback_tcp_listener_needs_the_opt_in() {
        let agent = ("SPIFFE_ENDPOINT_SOCKET", "unix:///run/agent.sock");
        let err = load(&["--listen", "tcp://0.0.0.0:8300"], &[agent]).unwrap_err();
        assert_eq!(err.setting, "--listen");
        assert!(err.reason.contains(ENV_ALLOW_NON_LOOPBACK_LISTEN), "{err}");
        let err = load(&[], &[agent, (ENV_LISTEN, "tcp://10.0.0.7:8300")]).unwrap_err();
        assert_eq!(err.setting, ENV_LISTEN);
        let by_flag = load(
            &[
                "--listen",
                "tcp://0.0.0.0:8300",
                "--allow-non-loopback-listen",
            ],
            &[agent],
        )
        .unwrap();
        assert_eq!(by_flag.listen, Listen::Tcp("0.0.0.0:8300".parse().unwrap()));
        let by_env = load(
            &["--listen", "tcp://[::]:8300"],
            &[agent, (ENV_ALLOW_NON_LOOPBACK_LISTEN, "true")],
        )
        .unwrap();
        assert_eq!(by_env.listen, Listen::Tcp("[::]:8300".parse().unwrap()));
        // Loopback and Unix sockets need nothing.
        assert!(load(&["--listen", "tcp://127.0.0.1:8300"], &[agent]).is_ok());
        assert!(load(&["--listen", "unix:///tmp/sds.sock"], &[agent]).is_ok());
    }

    #[test]
    fn var_run_and_run_are_the_same_directory() {
        assert!(same_path(
            Path::new("/var/run/secrets/x/socket"),
            Path::new("/run/secrets/x/./socket")
        ));
        assert!(!same_path(
            Path::new("/run/secrets/x/socket"),
            Path::new("/run/secrets/y/socket")
        ));
    }
}
