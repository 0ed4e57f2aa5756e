//! Configuration: flags > environment > defaults, read through [`Env`] so tests never touch
//! the process environment. Every error names the flag or variable and exits with code 2.
//!
//! This file holds what every provider shares (the Workload API, listeners, the JWT-SVID
//! audience, logging) and the subcommand that picks the provider; each provider's own settings
//! live in `provider/<cloud>/config.rs` (the layout rule: a provider owns its folder).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use sidecar_runtime::config::{self, pick};
use sidecar_runtime::{ConfigError, ListenPolicy, LogFormat};
use workload_client::Env;
use workload_client::endpoint::ResolvedEndpoint;

use crate::provider::aws::config::{AwsArgs, AwsConfig};
use crate::provider::azure::config::{self as azure, AzureArgs, AzureConfig};
use crate::provider::gcp::config::{GcpArgs, GcpConfig};
use crate::provider::vault::config::{self as vault, VaultArgs, VaultConfig};
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

const AFTER_HELP: &str = "\
Precedence: flag > environment > default. Environment: SPIFFE_IAM_BROKER_{AUDIENCE,ROLE_ARN,\n\
SOCKET_PATH,LISTEN,ADMIN_LISTEN,REGION,STS_ENDPOINT,DURATION,SESSION_NAME,FETCH_WAIT,LOG_FORMAT,\n\
ALLOW_NON_LOOPBACK_LISTEN};\n\
the socket falls back to SPIFFE_ENDPOINT_SOCKET, then unix:///run/secrets/workload-spiffe-uds/socket;\n\
the region to AWS_REGION, AWS_DEFAULT_REGION, then us-east-1; the container token comes from\n\
AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE or AWS_CONTAINER_AUTHORIZATION_TOKEN (as the SDKs read them).";

const AZURE_AFTER_HELP: &str = "\
Precedence: flag > environment > default. Environment: SPIFFE_IAM_BROKER_{AUDIENCE,TENANT_ID,\n\
CLIENT_ID,AUTHORITY_HOST,RESOURCES,IDENTITY_HEADER_FILE,SOCKET_PATH,LISTEN,ADMIN_LISTEN,FETCH_WAIT,\n\
LOG_FORMAT,ALLOW_NON_LOOPBACK_LISTEN}; the tenant, client and authority fall back to AZURE_TENANT_ID,\n\
AZURE_CLIENT_ID and AZURE_AUTHORITY_HOST; the X-IDENTITY-HEADER secret is IDENTITY_HEADER (as the SDKs\n\
read it) unless a file is given.";

const GCP_AFTER_HELP: &str = "\
Precedence: flag > environment > default. Environment: SPIFFE_IAM_BROKER_{AUDIENCE,SERVICE_ACCOUNT,\n\
PROJECT_ID,SCOPES,STS_ENDPOINT,IAM_CREDENTIALS_ENDPOINT,SOCKET_PATH,LISTEN,ADMIN_LISTEN,FETCH_WAIT,\n\
LOG_FORMAT,ALLOW_NON_LOOPBACK_LISTEN}. The audience is the workload identity pool provider; point\n\
the application at the broker with GCE_METADATA_HOST and GCE_METADATA_IP.";

const VAULT_AFTER_HELP: &str = "\
Precedence: flag > environment > default. Environment: SPIFFE_IAM_BROKER_{AUDIENCE,VAULT_ADDR,\n\
AUTH_MOUNT,ROLE,NAMESPACE,CA_FILE,USE_AUTO_AUTH_TOKEN,TOKEN_SINK,SOCKET_PATH,LISTEN,ADMIN_LISTEN,\n\
FETCH_WAIT,LOG_FORMAT,ALLOW_NON_LOOPBACK_LISTEN}; the address, namespace and CA file fall back to\n\
VAULT_ADDR, VAULT_NAMESPACE and VAULT_CACERT. Point clients at the proxy with\n\
VAULT_ADDR=http://127.0.0.1:8200 and no token.";

/// Command line: `iam-broker aws [flags]`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "iam-broker",
    version,
    about = "Trades the workload's JWT-SVID for cloud credentials and serves them on loopback",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// The cloud to get credentials from.
    #[command(subcommand)]
    pub command: Command,
}

/// One subcommand per cloud.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// AWS: AssumeRoleWithWebIdentity; serves credential_process JSON on /v1/creds and the
    /// container-credentials format on /v1/container-creds.
    #[command(after_help = AFTER_HELP)]
    Aws(AwsArgs),
    /// Azure: Entra ID token exchange (client assertion = JWT-SVID); serves the App Service
    /// managed identity endpoint GET /msi/token for ManagedIdentityCredential and
    /// DefaultAzureCredential (IDENTITY_ENDPOINT + IDENTITY_HEADER).
    #[command(after_help = AZURE_AFTER_HELP)]
    Azure(AzureArgs),
    /// Google Cloud: STS token exchange (+ optional service account impersonation); serves
    /// the GCE metadata server for google-auth / ADC (GCE_METADATA_HOST, GCE_METADATA_IP).
    #[command(after_help = GCP_AFTER_HELP)]
    Gcp(GcpArgs),
    /// Vault: JWT auth login with the JWT-SVID, the token renewed and re-logged; serves an API
    /// proxy like Vault Agent's (VAULT_ADDR=http://127.0.0.1:8200, X-Vault-Request: true).
    #[command(after_help = VAULT_AFTER_HELP)]
    Vault(VaultArgs),
}

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

/// Clap parser for secrets given as flags (kept out of `Debug`).
pub fn secret_arg(s: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(s))
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Settings every provider shares.
    pub common: Common,
    /// The provider and its settings.
    pub provider: ProviderConfig,
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

/// The provider chosen by the subcommand (exhaustive on purpose: a new provider must be wired).
#[derive(Clone, Debug)]
pub enum ProviderConfig {
    /// AWS STS.
    Aws(AwsConfig),
    /// Entra ID.
    Azure(AzureConfig),
    /// Google STS.
    Gcp(GcpConfig),
    /// Vault JWT auth.
    Vault(VaultConfig),
}

// === impl Config ===

impl Config {
    /// Builds the configuration from the command line and `env`.
    pub fn load(cli: &Cli, env: &dyn Env) -> Result<Self, ConfigError> {
        match &cli.command {
            Command::Aws(args) => {
                let common = Common::load(&args.common, env, None)?;
                let aws = AwsConfig::load(args, env)?;
                Ok(Self {
                    common,
                    provider: ProviderConfig::Aws(aws),
                })
            }
            Command::Azure(args) => {
                let common = Common::load(&args.common, env, Some(azure::DEFAULT_AUDIENCE))?;
                let azure = AzureConfig::load(args, env)?;
                Ok(Self {
                    common,
                    provider: ProviderConfig::Azure(azure),
                })
            }
            Command::Gcp(args) => {
                let common = Common::load(&args.common, env, None)?;
                let gcp = GcpConfig::load(args, env)?;
                Ok(Self {
                    common,
                    provider: ProviderConfig::Gcp(gcp),
                })
            }
            Command::Vault(args) => {
                let common = Common::load_with(
                    &args.common,
                    env,
                    Some(vault::DEFAULT_AUDIENCE),
                    vault::DEFAULT_LISTEN,
                )?;
                let vault = VaultConfig::load(args, env, common.listen)?;
                Ok(Self {
                    common,
                    provider: ProviderConfig::Vault(vault),
                })
            }
        }
    }
}

impl Common {
    /// Reads the shared settings; `default_audience` is the provider's conventional JWT-SVID
    /// audience (`None`: the operator must name one).
    pub fn load(
        args: &CommonArgs,
        env: &dyn Env,
        default_audience: Option<&str>,
    ) -> Result<Self, ConfigError> {
        Self::load_with(args, env, default_audience, DEFAULT_LISTEN)
    }

    /// [`Common::load`] for a provider that listens elsewhere by default (Vault's 8200).
    pub fn load_with(
        args: &CommonArgs,
        env: &dyn Env,
        default_audience: Option<&str>,
        default_listen: SocketAddr,
    ) -> Result<Self, ConfigError> {
        let audience = match pick(args.audience.as_deref(), "--audience", env, ENV_AUDIENCE) {
            Some((setting, v)) if v.trim().is_empty() => {
                return Err(ConfigError::new(setting, v, "audience must not be empty"));
            }
            Some((_, v)) => v,
            None => match default_audience {
                Some(default) => default.to_owned(),
                None => {
                    return Err(ConfigError::new(
                        ENV_AUDIENCE,
                        "",
                        "an audience is required (--audience or SPIFFE_IAM_BROKER_AUDIENCE)",
                    ));
                }
            },
        };

        let socket = config::workload_api(
            pick(args.socket.as_deref(), "--socket", env, ENV_SOCKET),
            env,
        )?;

        let listen_policy = ListenPolicy::load(
            args.allow_non_loopback_listen,
            env,
            ENV_ALLOW_NON_LOOPBACK_LISTEN,
        )?;
        let listen = match pick(args.listen.as_deref(), "--listen", env, ENV_LISTEN) {
            Some((setting, v)) => {
                listen_policy.check(&setting, config::socket_addr(&setting, &v)?)?
            }
            None => default_listen,
        };
        let admin_listen = match pick(
            args.admin_listen.as_deref(),
            "--admin-listen",
            env,
            ENV_ADMIN_LISTEN,
        ) {
            Some((setting, v)) => config::admin_listen(&setting, &v)?,
            None => Some(DEFAULT_ADMIN_LISTEN),
        };
        if admin_listen == Some(listen) {
            return Err(ConfigError::new(
                "--admin-listen",
                listen.to_string(),
                "must differ from the credentials listen address",
            ));
        }

        let fetch_wait = match pick(
            args.fetch_wait.as_deref(),
            "--fetch-wait",
            env,
            ENV_FETCH_WAIT,
        ) {
            Some((setting, v)) => {
                let d = config::duration(&setting, &v)?;
                if d > Duration::from_secs(60) {
                    return Err(ConfigError::new(
                        setting,
                        v,
                        "at most 60s (clients have their own timeouts)",
                    ));
                }
                d
            }
            None => DEFAULT_FETCH_WAIT,
        };

        let log_format = config::log_format(pick(
            args.log_format.as_deref(),
            "--log-format",
            env,
            ENV_LOG_FORMAT,
        ))?;

        Ok(Self {
            audience,
            socket,
            listen,
            admin_listen,
            fetch_wait,
            log_format,
            listen_policy,
        })
    }
}

/// `https://host[:port][/]`, or `http://` to a loopback address only: the request carries the
/// JWT-SVID, which must not cross a network in clear.
pub fn validate_endpoint(url: &str) -> Result<String, String> {
    validate_endpoint_for(url, "https://sts.eu-west-1.amazonaws.com")
}

/// [`validate_endpoint`] with `example` in its messages.
pub fn validate_endpoint_for(url: &str, example: &str) -> Result<String, String> {
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}): expected e.g. {example}"))?;
    let scheme = uri.scheme_str().unwrap_or("");
    let Some(host) = uri.host() else {
        return Err(format!("expected a URL with a host, e.g. {example}"));
    };
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err("expected no path or query".to_owned());
    }
    match scheme {
        "https" => {}
        "http" if is_loopback_name(host) => {}
        "http" => {
            return Err(
                "plain http is allowed only to a loopback address (the JWT-SVID would cross the network in clear)"
                    .to_owned(),
            );
        }
        _ => return Err("expected an https:// URL".to_owned()),
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// `localhost`, `127.0.0.0/8` or `::1` (brackets allowed).
pub fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::Parser;

    use super::*;
    use crate::provider::aws::config::*;

    const ARN: &str = "arn:aws:iam::123456789012:role/demo";

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let cli = Cli::try_parse_from(["iam-broker", "aws"].iter().chain(args.iter())).unwrap();
        Config::load(&cli, &env(vars))
    }

    fn aws(c: &Config) -> &AwsConfig {
        match &c.provider {
            ProviderConfig::Aws(a) => a,
            other => panic!("not aws: {other:?}"),
        }
    }

    const TEMPLATE: &[(&str, &str)] = &[(ENV_AUDIENCE, "sts.amazonaws.com"), (ENV_ROLE_ARN, ARN)];

    #[test]
    fn defaults_match_the_seed_template() {
        let c = load(&[], TEMPLATE).unwrap();
        assert_eq!(c.common.audience, "sts.amazonaws.com");
        assert_eq!(c.common.listen, "127.0.0.1:9876".parse().unwrap());
        assert_eq!(
            c.common.admin_listen,
            Some("127.0.0.1:9877".parse().unwrap())
        );
        assert_eq!(
            c.common.socket.endpoint.to_string(),
            "unix:///run/secrets/workload-spiffe-uds/socket"
        );
        assert_eq!(c.common.fetch_wait, DEFAULT_FETCH_WAIT);
        let a = aws(&c);
        assert_eq!(a.sts.role_arn, ARN);
        assert_eq!(a.sts.region, "us-east-1");
        assert_eq!(a.sts.duration, Duration::from_secs(3600));
        assert_eq!(a.sts.sts_endpoint, None);
        assert_eq!(a.sts.session_name, None);
        assert_eq!(a.container_token, None);
    }

    #[test]
    fn a_non_loopback_listen_address_needs_the_opt_in() {
        let err = load(&["--listen", "0.0.0.0:9876"], TEMPLATE).unwrap_err();
        assert_eq!(err.setting, "--listen");
        assert!(err.reason.contains(ENV_ALLOW_NON_LOOPBACK_LISTEN), "{err}");
        let err = load(&[], &[TEMPLATE, &[(ENV_LISTEN, "10.0.0.7:9876")]].concat()).unwrap_err();
        assert_eq!(err.setting, ENV_LISTEN);
        let c = load(
            &["--listen", "0.0.0.0:9876", "--allow-non-loopback-listen"],
            TEMPLATE,
        )
        .unwrap();
        assert_eq!(c.common.listen, "0.0.0.0:9876".parse().unwrap());
        let c = load(
            &["--listen", "[::]:9876"],
            &[TEMPLATE, &[(ENV_ALLOW_NON_LOOPBACK_LISTEN, "true")]].concat(),
        )
        .unwrap();
        assert_eq!(c.common.listen, "[::]:9876".parse().unwrap());
    }

    #[test]
    fn precedence_is_flag_env_default() {
        let c = load(
            &[
                "--audience",
                "flag-aud",
                "--socket",
                "unix:///flag.sock",
                "--region",
                "eu-west-1",
                "--duration",
                "2h",
                "--admin-listen",
                "off",
            ],
            &[
                (ENV_AUDIENCE, "env-aud"),
                (ENV_ROLE_ARN, ARN),
                (ENV_SOCKET, "unix:///env.sock"),
                ("AWS_REGION", "us-west-2"),
                (ENV_DURATION, "900"),
            ],
        )
        .unwrap();
        assert_eq!(c.common.audience, "flag-aud");
        assert_eq!(c.common.socket.endpoint.to_string(), "unix:///flag.sock");
        assert_eq!(c.common.admin_listen, None);
        assert_eq!(aws(&c).sts.region, "eu-west-1");
        assert_eq!(aws(&c).sts.duration, Duration::from_secs(7200));

        let c = load(
            &[],
            &[
                (ENV_AUDIENCE, "a"),
                (ENV_ROLE_ARN, ARN),
                ("SPIFFE_ENDPOINT_SOCKET", "unix:///std.sock"),
                ("AWS_DEFAULT_REGION", "ap-south-1"),
                ("AWS_REGION", "us-west-2"),
                (ENV_DURATION, "900"),
                (ENV_STS_ENDPOINT, "http://127.0.0.1:5000/"),
                (ENV_SESSION_NAME, "fixed@name"),
            ],
        )
        .unwrap();
        assert_eq!(c.common.socket.endpoint.to_string(), "unix:///std.sock");
        let a = aws(&c);
        assert_eq!(
            a.sts.region, "us-west-2",
            "AWS_REGION before AWS_DEFAULT_REGION"
        );
        assert_eq!(a.sts.duration, Duration::from_secs(900));
        assert_eq!(a.sts.sts_endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(a.sts.session_name.as_ref().unwrap().as_str(), "fixed@name");

        let own_var_first = load(
            &[],
            &[
                (ENV_AUDIENCE, "a"),
                (ENV_ROLE_ARN, ARN),
                (ENV_SOCKET, "unix:///own.sock"),
                ("SPIFFE_ENDPOINT_SOCKET", "unix:///std.sock"),
            ],
        )
        .unwrap();
        assert_eq!(
            own_var_first.common.socket.endpoint.to_string(),
            "unix:///own.sock"
        );
    }

    #[test]
    fn container_token_follows_the_sdk_variables() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "file-token\n").unwrap();
        let f = file.to_str().unwrap();

        let c = load(
            &[],
            &[TEMPLATE, &[(ENV_CONTAINER_TOKEN, "env-token")]].concat(),
        )
        .unwrap();
        assert_eq!(
            aws(&c).container_token,
            Some(ContainerToken::Value(Secret::new("env-token")))
        );
        // _FILE wins over the value, as in the SDKs.
        let c = load(
            &[],
            &[
                TEMPLATE,
                &[
                    (ENV_CONTAINER_TOKEN, "env-token"),
                    (ENV_CONTAINER_TOKEN_FILE, f),
                ],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(
            aws(&c).container_token,
            Some(ContainerToken::File(file.clone()))
        );
        // A flag wins over the environment.
        let c = load(
            &["--container-token", "flag-token"],
            &[TEMPLATE, &[(ENV_CONTAINER_TOKEN_FILE, f)]].concat(),
        )
        .unwrap();
        assert_eq!(
            aws(&c).container_token,
            Some(ContainerToken::Value(Secret::new("flag-token")))
        );
        assert!(!format!("{c:?}").contains("flag-token"), "Debug redacts");
    }

    #[test]
    fn bad_settings_refuse_to_start_naming_the_setting() {
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
        let t = TEMPLATE;
        let cases: &[Case<'_>] = &[
            (
                &[],
                &[(ENV_ROLE_ARN, ARN)],
                "SPIFFE_IAM_BROKER_AUDIENCE: an audience is required",
            ),
            (
                &["--audience", " "],
                &[(ENV_ROLE_ARN, ARN)],
                "--audience: audience must not be empty",
            ),
            (
                &[],
                &[(ENV_AUDIENCE, "a")],
                "SPIFFE_IAM_BROKER_ROLE_ARN: a role ARN is required",
            ),
            (
                &[],
                &[(ENV_AUDIENCE, "a"), (ENV_ROLE_ARN, "demo")],
                "SPIFFE_IAM_BROKER_ROLE_ARN: expected arn:aws:iam::",
            ),
            (
                &["--role-arn", "arn:aws:iam::12345:role/demo"],
                &[(ENV_AUDIENCE, "a")],
                "--role-arn: the account must be 12 digits",
            ),
            (
                &["--role-arn", "arn:aws:iam::123456789012:user/bob"],
                &[(ENV_AUDIENCE, "a")],
                "--role-arn: not a role",
            ),
            (
                &["--role-arn", "arn:aws:s3:::bucket"],
                &[(ENV_AUDIENCE, "a")],
                "--role-arn: not an IAM ARN",
            ),
            (
                &["--role-arn", "arn:aws:iam::123456789012:role/bad name"],
                &[(ENV_AUDIENCE, "a")],
                "--role-arn: invalid role name",
            ),
            (
                &["--duration", "899"],
                t,
                "--duration: must be whole seconds from 900",
            ),
            (
                &["--duration", "43201"],
                t,
                "--duration: must be whole seconds from 900",
            ),
            (
                &[],
                &[t[0], t[1], (ENV_DURATION, "13h")],
                "SPIFFE_IAM_BROKER_DURATION: must be",
            ),
            (
                &["--duration", "soon"],
                t,
                "--duration: expected a duration",
            ),
            (
                &["--region", "EU West"],
                t,
                "--region: expected a region name",
            ),
            (
                &["--sts-endpoint", "http://sts.example.com"],
                t,
                "--sts-endpoint: plain http is allowed only to a loopback address",
            ),
            (
                &["--sts-endpoint", "sts.amazonaws.com"],
                t,
                "--sts-endpoint: expected",
            ),
            (
                &["--sts-endpoint", "https://sts.amazonaws.com/path"],
                t,
                "--sts-endpoint: expected no path",
            ),
            (
                &["--session-name", "a"],
                t,
                "--session-name: must be 2 to 64",
            ),
            (
                &["--session-name", "a/b"],
                t,
                "--session-name: character '/'",
            ),
            (
                &["--listen", "localhost:9876"],
                t,
                "--listen: expected IP:PORT",
            ),
            (
                &["--admin-listen", "nope"],
                t,
                "--admin-listen: expected IP:PORT",
            ),
            (
                &["--listen", "127.0.0.1:9877"],
                t,
                "--admin-listen: must differ from the credentials listen address",
            ),
            (
                &[],
                &[t[0], t[1], (ENV_SOCKET, "unix:rel.sock")],
                "SPIFFE_IAM_BROKER_SOCKET_PATH: invalid",
            ),
            (&["--fetch-wait", "5m"], t, "--fetch-wait: at most 60s"),
            (
                &["--log-format", "xml"],
                t,
                "--log-format: unknown log format",
            ),
            (
                &["--container-token-file", "/nonexistent/token"],
                t,
                "--container-token-file: cannot read",
            ),
            (
                &[],
                &[t[0], t[1], (ENV_CONTAINER_TOKEN, "two\nlines")],
                "AWS_CONTAINER_AUTHORIZATION_TOKEN: the container-credentials token must be printable ASCII (it is sent as a header) (got \"<redacted>\")",
            ),
        ];
        for (args, vars, want) in cases {
            let err = load(args, vars).unwrap_err().to_string();
            assert!(err.contains(want), "{args:?} {vars:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn role_arns_in_other_partitions_and_with_paths_are_accepted() {
        for arn in [
            "arn:aws:iam::123456789012:role/demo",
            "arn:aws-cn:iam::123456789012:role/team/app/demo",
            "arn:aws-us-gov:iam::123456789012:role/a+b=c,d.e@f-g_h",
        ] {
            assert_eq!(validate_role_arn(arn), Ok(()), "{arn}");
        }
        assert!(validate_role_arn("arn:aws:iam::123456789012:role/").is_err());
        assert!(
            validate_role_arn(&format!(
                "arn:aws:iam::123456789012:role/{}",
                "a".repeat(65)
            ))
            .is_err()
        );
    }
}
